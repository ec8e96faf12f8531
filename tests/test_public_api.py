"""The contract names are exported from the top level, documented, and nothing else is."""

import inspect

import mcc

API_NAMES = {
    "ScaledBernoulliKeyMask",
    "KeyMaskedAttention",
    "patch_vit",
    "KeyMaskedViT",
    "ViTTokens",
    "multi_scale_cam",
    "cam_to_label",
    "PAR",
    "refine_cams_with_background",
    "DenseCRF",
    "affinity_labels",
    "affinity_loss",
    "segmentation_loss",
    "positive_views",
    "MomentumProjector",
    "mcc_infonce",
    "poly_warmup_lr",
    "bilateral_filter",
    "dense_energy_loss",
}


def test_contract_names_are_exported():
    assert API_NAMES <= set(mcc.__all__)
    for name in mcc.__all__:
        assert hasattr(mcc, name), name


def test_every_public_name_has_a_docstring():
    for name in mcc.__all__:
        assert inspect.getdoc(getattr(mcc, name)), name


def test_signatures_keep_the_contract_defaults():
    defaults = {
        "patch_vit": {"aux_layer": -3, "antialias_pos_embed": False},
        "multi_scale_cam": {"scales": (1.0, 0.5, 1.5), "flip": True},
        "refine_cams_with_background": {
            "high_thre": 0.7,
            "low_thre": 0.25,
            "ignore_index": 255,
            "down_scale": 2,
        },
        "positive_views": {"low_thre": 0.25, "high_thre": 0.7, "mu": 0.2},
        "mcc_infonce": {"temperature": 0.5, "eps": 1e-4, "variant": "reference"},
        "poly_warmup_lr": {"warmup_iters": 1500, "warmup_ratio": 1e-6, "max_iters": 20000, "power": 0.9},
        "affinity_loss": {"absolute": True},
    }
    for name, expected in defaults.items():
        params = inspect.signature(getattr(mcc, name)).parameters
        for arg, value in expected.items():
            assert params[arg].default == value, (name, arg)
    init = {
        "ScaledBernoulliKeyMask": {"ratio": 0.75, "scale": 4},
        "PAR": {"dilations": (1, 2, 4, 8, 12, 24), "num_iter": 10, "w1": 0.3, "w2": 0.01},
        "DenseCRF": {
            "iter_max": 10,
            "pos_xy_std": 1,
            "pos_w": 1,
            "bi_xy_std": 121,
            "bi_rgb_std": 5,
            "bi_w": 4,
        },
        "MomentumProjector": {
            "out_dim": 1024,
            "hidden_dim": 2048,
            "bottleneck_dim": 256,
            "num_layers": 3,
            "momentum": 0.9,
        },
        "KeyMaskedAttention": {"num_heads": 8, "qkv_bias": False, "qk_norm": False},
    }
    for name, expected in init.items():
        params = inspect.signature(getattr(mcc, name).__init__).parameters
        for arg, value in expected.items():
            assert params[arg].default == value, (name, arg)
