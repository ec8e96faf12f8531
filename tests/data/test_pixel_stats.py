"""Pixel statistics other than ImageNet's (CLIP, EVA-02): transforms and datasets take mean/std."""

from __future__ import annotations

import pytest
import torch

from mcc.data import IMAGENET_MEAN, IMAGENET_STD, VOCSegmentation, VOCTrainViews, denormalize, normalize
from mcc.data.transforms import pixel_stats

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_round_trip_with_clip_statistics():
    rgb = torch.rand(2, 3, 8, 9)
    clip = normalize(rgb, CLIP_MEAN, CLIP_STD)
    expected = (rgb - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(clip, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(denormalize(clip, CLIP_MEAN, CLIP_STD), rgb, rtol=0, atol=1e-6)
    # the ImageNet inverse of CLIP-normalised pixels is a different image: the statistics matter
    assert (denormalize(clip) - rgb).abs().max() > 1e-2
    # every accepted input form takes them (uint8 array as from a PIL image)
    array = (rgb[0].permute(1, 2, 0) * 255).round().byte().numpy()
    from_array = normalize(array, mean=CLIP_MEAN, std=CLIP_STD)
    torch.testing.assert_close(denormalize(from_array, CLIP_MEAN, CLIP_STD), torch.from_numpy(
        array).permute(2, 0, 1).float() / 255, rtol=0, atol=1e-6)  # fmt: skip


def test_defaults_are_imagenet_bit_for_bit():
    rgb = torch.rand(3, 5, 7)
    by_hand = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.equal(normalize(rgb), by_hand)
    assert torch.equal(normalize(rgb, IMAGENET_MEAN, IMAGENET_STD), by_hand)
    back = by_hand * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.equal(denormalize(by_hand), back.clamp(0, 1))


@pytest.mark.parametrize(
    ("mean", "std", "name"),
    [((0.5, 0.5), IMAGENET_STD, "mean"), (IMAGENET_MEAN, (0.2, 0.0, 0.2), "std"),
     ("abc", IMAGENET_STD, "mean"), (IMAGENET_MEAN, (0.2, float("nan"), 0.2), "std")],
)  # fmt: skip
def test_bad_statistics_are_value_errors_naming_the_argument(mean, std, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        pixel_stats(mean, std)
    with pytest.raises(ValueError, match=f"^{name}:"):
        normalize(torch.rand(3, 4, 4), mean, std)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from mcc.data import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("stats") / "voc", 2, 1, 64, seed=0)


def test_datasets_normalise_with_the_given_statistics(synthetic_root):
    default = VOCSegmentation(synthetic_root, "val")
    assert (default.mean, default.std) == (IMAGENET_MEAN, IMAGENET_STD)
    clip = VOCSegmentation(synthetic_root, "val", mean=CLIP_MEAN, std=CLIP_STD)
    rgb = VOCSegmentation(synthetic_root, "val", normalize_images=False)[0]["image"]
    assert torch.equal(default[0]["image"], normalize(rgb))
    torch.testing.assert_close(denormalize(clip[0]["image"], CLIP_MEAN, CLIP_STD), rgb, rtol=0, atol=1e-6)
    assert not torch.allclose(clip[0]["image"], default[0]["image"])
    with pytest.raises(ValueError, match="^std:"):
        VOCSegmentation(synthetic_root, "val", std=(1.0, -1.0, 1.0))


def test_training_views_normalise_with_the_given_statistics(synthetic_root):
    # 64-pixel images in 96-pixel crops at scale 1: every crop is padded
    options = dict(crop_size=96, scale_range=(1.0, 1.0), seed=3)
    views = VOCTrainViews(synthetic_root, "train", **options)
    clip_views = VOCTrainViews(synthetic_root, "train", mean=CLIP_MEAN, std=CLIP_STD, **options)
    assert (views.mean, views.std) == (IMAGENET_MEAN, IMAGENET_STD)
    a, b = views[0], clip_views[0]
    assert torch.equal(a["img_box"], b["img_box"])  # the same views: only the normalisation differs
    y0, y1, x0, x1 = b["img_box"].tolist()
    for key in ("x", "v1", "v2"):
        rgb_a, rgb_b = denormalize(a[key]), denormalize(b[key], CLIP_MEAN, CLIP_STD)
        if key != "v1":  # v1 is a resized crop without padding
            rgb_a, rgb_b = rgb_a[:, y0:y1, x0:x1], rgb_b[:, y0:y1, x0:x1]
        torch.testing.assert_close(rgb_a, rgb_b, rtol=0, atol=1e-5)
        assert not torch.allclose(a[key], b[key])
    outside = torch.ones(96, 96, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any()  # zero padding after normalisation: the mean colour of the statistics
    padding = denormalize(b["x"], CLIP_MEAN, CLIP_STD)[:, outside]
    torch.testing.assert_close(
        padding, torch.tensor(CLIP_MEAN).view(3, 1).expand_as(padding), rtol=0, atol=1e-6
    )
