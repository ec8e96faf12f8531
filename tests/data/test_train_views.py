"""Training views: shapes, the valid box, x/v2/mask alignment, photometric-only v2, determinism."""

import numpy as np
import pytest
import torch
from PIL import Image
from voc_helpers import write_mask, write_voc_root

from mcc.data import (
    CropGeometry,
    PhotometricAugment,
    VOCTrainViews,
    denormalize,
    normalize,
    seed_worker,
)

COLORS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def write_block_root(root, height=36, width=52):
    """One image whose colours are a function of its (left/right and top/bottom asymmetric) mask."""
    write_voc_root(root, num_images=1, height=height, width=width, class_names=["bg", "r", "g", "b"])
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[4:20, 2:18] = 1
    mask[10:34, 30:48] = 2
    mask[24:32, 6:26] = 3
    Image.fromarray(COLORS[mask]).save(root / "JPEGImages/img_000.jpg", quality=100, subsampling=0)
    write_mask(root / "SegmentationClassAug/img_000.png", mask)
    return mask


def nearest_color_class(view):
    """Class of each pixel of a normalised view by its nearest block colour, (S, S) int64."""
    rgb = denormalize(view).permute(1, 2, 0) * 255
    return torch.cdist(rgb.reshape(-1, 3), torch.from_numpy(COLORS).float()).argmin(1).view(rgb.shape[:2])


def test_sample_contents(voc_root):
    dataset = VOCTrainViews(voc_root, "train", crop_size=24, global_size=16, seed=0, return_mask=True)
    sample = dataset[0]
    assert set(sample) == {"x", "v1", "v2", "cls_label", "img_box", "id", "mask"}
    assert sample["x"].shape == sample["v2"].shape == (3, 24, 24) and sample["x"].dtype == torch.float32
    assert sample["v1"].shape == (3, 16, 16)
    assert sample["cls_label"].shape == (20,) and sample["cls_label"][0] == 1
    assert sample["img_box"].dtype == torch.long and sample["mask"].shape == (24, 24)
    assert sample["mask"].dtype == torch.long


@pytest.mark.parametrize("index", range(12))
def test_padding_lies_outside_the_box(tmp_path, index):
    write_voc_root(tmp_path, num_images=12, height=20, width=28)
    # scales up to 2 put 40x56 against a 48 crop: both padding and cropping occur across samples
    sample = VOCTrainViews(tmp_path, "train", crop_size=48, seed=3, return_mask=True)[index]
    y0, y1, x0, x1 = sample["img_box"].tolist()
    assert 0 <= y0 < y1 <= 48 and 0 <= x0 < x1 <= 48
    inside = torch.zeros(48, 48, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    for view in (sample["x"], sample["v2"]):
        assert (view[:, ~inside] == 0).all()
    assert (sample["mask"][~inside] == 255).all() and (sample["mask"][inside] != 255).any()


def test_box_when_cropping_and_padding():
    crop = CropGeometry(scaled_size=(30, 60), flip=False, top=-5, left=7, crop_size=40)
    assert crop.box == (5, 35, 0, 40)
    region = crop.crop(Image.new("RGB", (60, 30)), Image.Resampling.NEAREST)
    assert region.size == (40, 30)
    assert crop.paste(torch.ones(3, 30, 40)).sum() == 3 * 30 * 40


@pytest.mark.parametrize("seed", range(6))
def test_x_v2_and_mask_share_geometry_exactly(tmp_path, seed):
    write_block_root(tmp_path)
    dataset = VOCTrainViews(
        tmp_path, "train", crop_size=48, x_photometric=None, v2_photometric=None, seed=seed, return_mask=True
    )
    sample = dataset[0]
    assert torch.equal(sample["x"], sample["v2"])
    y0, y1, x0, x1 = sample["img_box"].tolist()
    predicted = nearest_color_class(sample["x"])[y0:y1, x0:x1]
    # bilinear image vs nearest mask differ only on a thin band at block edges
    assert (predicted == sample["mask"][y0:y1, x0:x1]).float().mean() > 0.9


def test_flip_and_scale_are_shared(tmp_path):
    mask = torch.from_numpy(write_block_root(tmp_path)).long()
    dataset = VOCTrainViews(
        tmp_path,
        "train",
        crop_size=64,
        scale_range=(1.0, 1.0),
        flip_p=1.0,
        seed=0,
        return_mask=True,
        x_photometric=None,
    )
    sample = dataset[0]
    y0, y1, x0, x1 = sample["img_box"].tolist()
    assert (y1 - y0, x1 - x0) == (36, 52)  # scale 1 inside a larger crop: the whole image
    assert torch.equal(sample["mask"][y0:y1, x0:x1], mask.flip(-1))
    assert (nearest_color_class(sample["x"])[y0:y1, x0:x1] == mask.flip(-1)).float().mean() > 0.97


@pytest.mark.parametrize("seed", range(4))
def test_v2_differs_from_x_only_photometrically(tmp_path, seed):
    write_block_root(tmp_path)
    no_blur = PhotometricAugment(blur_p=0.0)
    dataset = VOCTrainViews(
        tmp_path, "train", crop_size=48, x_photometric=no_blur, v2_photometric=no_blur, seed=seed,
        return_mask=True,
    )  # fmt: skip
    sample = dataset[0]
    assert not torch.equal(sample["x"], sample["v2"])
    y0, y1, x0, x1 = sample["img_box"].tolist()
    foreground = sample["mask"][y0:y1, x0:x1] > 0
    for view in (sample["x"], sample["v2"]):
        # the black background stays one uniform colour under jitter and grayscale, distinct from blocks
        rgb = denormalize(view)[:, y0:y1, x0:x1]
        background = rgb[:, ~foreground].median(dim=1).values
        away = (rgb - background[:, None, None]).abs().amax(0) > 8 / 255
        assert (away == foreground).float().mean() > 0.9


def test_seeded_views_are_reproducible_and_vary(voc_root):
    first = VOCTrainViews(voc_root, "train", crop_size=24, seed=7)
    second = VOCTrainViews(voc_root, "train", crop_size=24, seed=7)
    a, b = first[1], second[1]
    for key in ("x", "v1", "v2", "img_box"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["x"], first[2]["x"])
    second.set_epoch(1)
    assert not torch.equal(a["x"], second[1]["x"])


def test_unseeded_views_follow_torch_manual_seed(voc_root):
    dataset = VOCTrainViews(voc_root, "train", crop_size=24)
    torch.manual_seed(3)
    a = dataset[0]["v1"]
    torch.manual_seed(3)
    assert torch.equal(a, dataset[0]["v1"])
    assert not torch.equal(a, dataset[0]["v1"])


def _batches(dataset, workers, loader_seed=None):
    generator = None if loader_seed is None else torch.Generator().manual_seed(loader_seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        shuffle=True,
        num_workers=workers,
        generator=generator,
        worker_init_fn=seed_worker,
    )
    return [(batch["id"], batch["x"], batch["v1"]) for batch in loader]


def _same(run_a, run_b):
    return all(
        ids_a == ids_b and torch.equal(x_a, x_b) and torch.equal(v1_a, v1_b)
        for (ids_a, x_a, v1_a), (ids_b, x_b, v1_b) in zip(run_a, run_b, strict=True)
    )


def test_dataloader_determinism(tmp_path):
    write_voc_root(tmp_path, num_images=4, height=12, width=16)
    seeded = VOCTrainViews(tmp_path, "train", crop_size=16, seed=5)
    # a seeded dataset: the same batches whatever the worker count
    assert _same(_batches(seeded, 0, loader_seed=1), _batches(seeded, 2, loader_seed=1))
    # an unseeded one: the DataLoader's generator seeds every worker
    unseeded = VOCTrainViews(tmp_path, "train", crop_size=16)
    assert _same(_batches(unseeded, 2, loader_seed=1), _batches(unseeded, 2, loader_seed=1))
    assert not _same(_batches(unseeded, 2, loader_seed=1), _batches(unseeded, 2, loader_seed=2))


def test_photometric_augment():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8))
    augment = PhotometricAugment()
    first = augment(image, torch.Generator().manual_seed(1))
    assert np.array_equal(np.asarray(first), np.asarray(augment(image, torch.Generator().manual_seed(1))))
    identity = PhotometricAugment(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    assert np.array_equal(np.asarray(identity(image, torch.Generator())), np.asarray(image))
    gray = np.asarray(PhotometricAugment(jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)(image, torch.Generator()))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    solarized = PhotometricAugment(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=1.0)
    pixels = np.asarray(image)
    expected = np.where(pixels >= 128, 255 - pixels, pixels)
    assert np.array_equal(np.asarray(solarized(image, torch.Generator())), expected)
    with pytest.raises(ValueError, match="jitter"):
        PhotometricAugment(jitter=(0.4, 0.4, 0.2, 0.6))
    with pytest.raises(ValueError, match="blur_p"):
        PhotometricAugment(blur_p=1.5)


def test_normalize_roundtrip():
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    tensor = normalize(Image.fromarray(pixels))
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    assert torch.allclose(denormalize(tensor), expected, atol=1e-6)
    with pytest.raises(ValueError, match="images"):
        denormalize(torch.zeros(4, 5))
