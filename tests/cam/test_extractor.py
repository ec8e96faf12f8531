"""CAMExtractor: the same CAMs as a hand-written hook + cam_fn through multi_scale_cam, for three kinds."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mcc import (
    PAR,
    CAMExtractor,
    MCCNet,
    cam_to_label,
    extract_cams,
    multi_scale_cam,
    refine_cams_with_background,
)
from mcc.network import MCCConfig

SCALES = (1.0, 0.5, 1.5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _resnet(num_classes: int = 5) -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def _hand_written_resnet_cams(resnet: nn.Module, images: torch.Tensor, scales, flip=True) -> torch.Tensor:
    """The usual user code: a hook on layer4, fc weights, multi_scale_cam."""
    features = {}
    handle = resnet.layer4.register_forward_hook(lambda m, i, o: features.__setitem__("map", o))

    def cam_fn(x):
        resnet(x)
        return torch.einsum("cd,ndhw->nchw", resnet.fc.weight, features["map"]), None

    resnet.eval()
    try:
        return multi_scale_cam(cam_fn, images, scales, flip)[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("flip", [True, False])
def test_resnet_equals_hand_written_hook_and_cam_fn(flip):
    resnet = _resnet()
    images = torch.randn(2, 3, 48, 32)
    expected = _hand_written_resnet_cams(resnet, images, SCALES, flip)
    resnet.train()  # the extractor switches to eval and back
    cams = CAMExtractor(resnet, flip=flip)(images)
    assert resnet.training and not resnet.layer4._forward_hooks  # mode restored, hook removed
    assert cams.shape == (2, 5, 48, 32) and cams.dtype == torch.float32 and not cams.requires_grad
    assert cams.min() >= 0 and cams.max() < 1 and cams.amax(dim=(-2, -1)).min() > 0.99
    torch.testing.assert_close(cams, expected, rtol=0, atol=1e-6)
    # explicit names and modules select the same maps; the function form agrees
    by_name = CAMExtractor(resnet, feature_layer="layer4", classifier="fc", flip=flip)(images)
    by_module = extract_cams(resnet, images, feature_layer=resnet.layer4, classifier=resnet.fc, flip=flip)
    torch.testing.assert_close(by_name, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(by_module, expected, rtol=0, atol=1e-6)


def test_batched_equals_one_image_at_a_time_and_classes_select_maps():
    resnet = _resnet(num_classes=7)
    images = torch.randn(3, 3, 40, 56)
    extractor = CAMExtractor(resnet, scales=(1.0, 0.75))
    cams = extractor(images)
    singles = torch.cat([extractor(image[None]) for image in images])
    torch.testing.assert_close(cams, singles, rtol=0, atol=1e-5)
    picked = CAMExtractor(resnet, scales=(1.0, 0.75), classes=[4, 1])
    assert picked.num_classes == 2 and extractor.num_classes == 7
    torch.testing.assert_close(picked(images), cams[:, [4, 1]], rtol=0, atol=1e-6)


def _vit(dynamic: bool, num_classes: int = 6, **kwargs) -> nn.Module:
    return timm.create_model(
        "test_vit", pretrained=False, num_classes=num_classes, dynamic_img_size=dynamic, **kwargs
    )


def _hand_written_vit_cams(vit: nn.Module, images: torch.Tensor, scales) -> torch.Tensor:
    """Patch tokens of timm's own forward_features (dynamic size) times the head weights."""

    def cam_fn(x):
        tokens = vit.fc_norm(vit.forward_features(x)[:, vit.num_prefix_tokens :])
        h, w = x.shape[-2] // 16, x.shape[-1] // 16
        maps = tokens.transpose(1, 2).reshape(len(x), -1, h, w)
        return torch.einsum("cd,ndhw->nchw", vit.head.weight, maps), None

    vit.eval()
    return multi_scale_cam(cam_fn, images, scales)[0]


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_timm_vit_equals_hand_written_cam_fn(global_pool):
    dynamic = _vit(True, global_pool=global_pool)
    images = torch.randn(2, 3, 64, 96)
    expected = _hand_written_vit_cams(dynamic, images, SCALES)
    cams = CAMExtractor(dynamic)(images)
    assert cams.shape == (2, 6, 64, 96)
    torch.testing.assert_close(cams, expected, rtol=0, atol=1e-5)
    # A fixed-size model with the same weights runs every scale through KeyMaskedViT: same maps.
    fixed = _vit(False, global_pool=global_pool)
    fixed.load_state_dict(dynamic.state_dict())
    extractor = CAMExtractor(fixed)
    assert extractor.kind == "vit"
    torch.testing.assert_close(extractor(images), expected, rtol=0, atol=1e-4)


def test_timm_vit_sides_off_the_patch_grid_are_resized():
    vit = _vit(True)
    images = torch.randn(1, 3, 70, 50)
    cams = CAMExtractor(vit, scales=(1.0,))(images)

    def cam_fn(x):
        return CAMExtractor(vit).raw_cams(
            F.interpolate(x, size=(64, 48), mode="bilinear", align_corners=False)
        ), None

    assert cams.shape == (1, 6, 70, 50)
    vit.eval()
    torch.testing.assert_close(cams, multi_scale_cam(cam_fn, images, (1.0,))[0], rtol=0, atol=1e-6)


def _mcc_net() -> MCCNet:
    vit = timm.create_model("test_vit", pretrained=False, img_size=64)
    return MCCNet(vit, num_classes=4, config=MCCConfig.released("voc"))


def test_mcc_net_equals_multi_scale_cams():
    net = _mcc_net()
    images = torch.randn(2, 3, 64, 64)  # every scale on the 16-pixel patch grid, as multi_scale_cams needs
    net.eval()
    cam, cam_aux = net.multi_scale_cams(images)
    net.train()
    extractor = CAMExtractor(net)
    assert extractor.kind == "mcc" and extractor.scales == tuple(net.config.cam_scales)
    torch.testing.assert_close(extractor(images), cam, rtol=0, atol=0)
    torch.testing.assert_close(CAMExtractor(net, aux=True)(images), cam_aux, rtol=0, atol=0)
    assert net.training


def test_cams_feed_labels_par_and_background_refinement():
    resnet = _resnet(num_classes=3)
    images = torch.rand(2, 3, 32, 40)
    cls_label = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    cams = extract_cams(resnet, images, scales=(1.0,))
    label = cam_to_label(cams, cls_label, bkg_thre=0.5)
    assert label.shape == (2, 32, 40) and label.dtype == torch.long
    assert set(label[1].unique().tolist()) <= {0, 2}  # only the present class or background
    refined = PAR(num_iter=2)(images, cams)
    assert refined.shape == cams.shape
    pseudo = refine_cams_with_background(PAR(num_iter=2), images, cams, cls_label)
    assert pseudo.shape == (2, 32, 40)
    assert set(pseudo[0].unique().tolist()) <= {0, 1, 3, 255}


def test_cams_feed_dense_crf():
    pytest.importorskip("pydensecrf")
    from mcc import DenseCRF

    resnet = _resnet(num_classes=2)
    images = torch.rand(1, 3, 24, 24)
    cams = extract_cams(resnet, images, scales=(1.0,))
    background = torch.full_like(cams[:, :1], 0.5)
    probs = torch.cat([background, cams], 1).softmax(1)[0].numpy()
    rgb = (images[0].permute(1, 2, 0) * 255).byte().numpy()
    out = DenseCRF(iter_max=2)(rgb, probs)
    assert out.shape == probs.shape


class _NoNames(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.tokens = nn.Flatten(2)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.tokens(self.body(x)).mean(-1))


def test_clear_errors_for_models_whose_feature_map_cannot_be_found():
    model = _NoNames()
    with pytest.raises(ValueError, match="feature_layer= .* classifier="):
        CAMExtractor(model)
    # a working explicit choice
    cams = CAMExtractor(model, feature_layer="body", classifier="head", scales=(1.0,))(torch.rand(1, 3, 8, 8))
    assert cams.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="no sub-module 'layer9'.*body"):
        CAMExtractor(model, feature_layer="layer9", classifier="head")
    with pytest.raises(ValueError, match="together"):
        CAMExtractor(model, feature_layer="body")
    with pytest.raises(ValueError, match="classifier must be an nn.Linear"):
        CAMExtractor(model, feature_layer="body", classifier="tokens")
    with pytest.raises(ValueError, match=r"feature_layer must output a \(B, D, h, w\)"):
        CAMExtractor(model, feature_layer="tokens", classifier="head")(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="not part of the model"):
        CAMExtractor(model, feature_layer=nn.Conv2d(3, 8, 1), classifier="head")
    resnet = _resnet()
    with pytest.raises(ValueError, match="takes 512 features but feature_layer outputs 256"):
        CAMExtractor(resnet, feature_layer="layer3", classifier="fc")(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="did not run"):
        unused = nn.Sequential(nn.Conv2d(3, 4, 1))
        resnet.unused = unused
        CAMExtractor(resnet, feature_layer="unused", classifier="fc")(torch.rand(1, 3, 32, 32))


def test_bad_arguments_name_themselves():
    resnet = _resnet()
    with pytest.raises(ValueError, match="classes"):
        CAMExtractor(resnet, classes=[5])
    with pytest.raises(ValueError, match="scales"):
        CAMExtractor(resnet, scales=())
    with pytest.raises(ValueError, match="aux"):
        CAMExtractor(resnet, aux=True)
    with pytest.raises(ValueError, match="images"):
        CAMExtractor(resnet)(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="linear classification head"):
        CAMExtractor(_vit(True, num_classes=0))
    with pytest.raises(ValueError, match="model"):
        CAMExtractor("resnet18")


@pytest.mark.cuda
def test_cuda_cams_on_the_model_device_match_cpu():
    resnet = _resnet()
    images = torch.randn(2, 3, 64, 48)
    expected = CAMExtractor(resnet)(images)
    cams = CAMExtractor(resnet.cuda())(images)  # CPU images are moved to the model
    assert cams.is_cuda
    torch.testing.assert_close(cams.cpu(), expected, rtol=0, atol=1e-4)
