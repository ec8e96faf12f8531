"""DuPL's strong view: its seven operations at DuPL's magnitudes, and the dataset's extra, mirrored view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mcc.data import PhotometricAugment, StrongAugment, VOCTrainViews, normalize


def test_magnitudes_are_duplas_table():
    # m / 30 * (max - min) + min at m = 10: the four enhancement factors 0.7, posterize 6 * 10 / 30 = 2 bits
    strong = StrongAugment()
    for name in ("color", "contrast", "brightness", "sharpness"):
        assert strong.value(name) == pytest.approx(0.7)
    assert strong.value("posterize") == pytest.approx(2.0)
    assert StrongAugment(magnitude=30).value("brightness") == pytest.approx(1.9)
    assert StrongAugment(magnitude=0).value("posterize") == 0.0


def test_draws_five_of_seven_with_replacement():
    strong = StrongAugment()
    draws = [tuple(strong.ops(torch.Generator().manual_seed(s))) for s in range(200)]
    assert all(len(d) == 5 for d in draws)
    names = {name for d in draws for name in d}
    assert names == {"autocontrast", "equalize", "posterize", "color", "contrast", "brightness", "sharpness"}
    assert any(len(set(d)) < 5 for d in draws)  # with replacement


def _one_op(name: str) -> StrongAugment:
    strong = StrongAugment(num_ops=1)
    strong.ops = lambda generator=None: [name]
    return strong


def test_each_operation_by_hand():
    image = torch.from_numpy(np.random.RandomState(0).randint(20, 230, (3, 16, 16)).astype(np.uint8))
    # brightness 0.7: x * 0.7, truncated to uint8 (torchvision's blend with black)
    assert torch.equal(_one_op("brightness")(image), (image.float() * 0.7).to(torch.uint8))
    # posterize to 2 bits: keep the two high bits
    assert torch.equal(_one_op("posterize")(image), image & 0b11000000)
    # autocontrast stretches each channel to 0..255 (torchvision truncates: the top lands on 254 or 255);
    # PIL's ImageOps.autocontrast, DuPL's, is the same map up to that rounding
    stretched = _one_op("autocontrast")(image)
    assert stretched.amin(dim=(1, 2)).tolist() == [0, 0, 0] and stretched.amax(dim=(1, 2)).min() >= 254
    pil = np.asarray(ImageOps.autocontrast(Image.fromarray(image.permute(1, 2, 0).numpy())))
    assert np.abs(stretched.permute(1, 2, 0).numpy().astype(int) - pil).max() <= 1
    # colour 0.7 moves every pixel towards its grey level
    grey = (0.2989 * image[0] + 0.587 * image[1] + 0.114 * image[2]).float()
    toward = _one_op("color")(image).float()
    assert ((toward - grey).abs() <= (image.float() - grey).abs() + 1).all()


def test_same_generator_same_view_and_the_input_is_kept():
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    copy = image.clone()
    a = StrongAugment()(image, torch.Generator().manual_seed(9))
    b = StrongAugment()(Image.fromarray(image.permute(1, 2, 0).numpy()), torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and torch.equal(image, copy) and a.dtype == torch.uint8


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_ops": -1}, "num_ops"), ({"magnitude": 31}, "magnitude")]
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StrongAugment(**kwargs)


def test_bad_image():
    with pytest.raises(ValueError, match="image"):
        StrongAugment()(torch.rand(3, 8, 8))


def test_dataset_offers_the_mirrored_strong_view(voc_root):
    plain = VOCTrainViews(voc_root, "train", crop_size=24, global_size=16, seed=0)
    strong = VOCTrainViews(
        voc_root, "train", crop_size=24, global_size=16, seed=0, strong_view=StrongAugment()
    )
    identity = VOCTrainViews(
        voc_root, "train", crop_size=24, global_size=16, seed=0, strong_view=StrongAugment(num_ops=0)
    )
    for index in range(len(plain)):
        a, b, c = plain[index], strong[index], identity[index]
        assert "strong" not in a and b["strong"].shape == b["x"].shape == (3, 24, 24)
        for key in ("x", "v1", "v2", "cls_label", "img_box"):  # the other views do not change
            assert torch.equal(a[key], b[key]), key
        # without operations the strong view is x (before normalisation: its uint8 image) mirrored
        assert torch.allclose(c["strong"], a["x"].flip(-1), atol=1e-6)
    assert not torch.allclose(b["strong"], a["x"].flip(-1), atol=1e-3)


def test_dataset_strong_view_follows_x_photometric(voc_root):
    photometric = PhotometricAugment(jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
    a = VOCTrainViews(voc_root, "train", crop_size=24, seed=1, x_photometric=photometric,
                      strong_view=StrongAugment(num_ops=0))[0]  # fmt: skip
    assert torch.allclose(a["strong"], a["x"].flip(-1), atol=1e-6)
    assert normalize(torch.zeros(3, 1, 1, dtype=torch.uint8)).shape == (3, 1, 1)


def test_dataset_rejects_a_non_callable_strong_view(voc_root):
    with pytest.raises(ValueError, match="strong_view"):
        VOCTrainViews(voc_root, "train", crop_size=24, strong_view=5)
