"""The synthetic VOC: determinism, layout, mask/image agreement, ignore borders, command line."""

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from mcc.data import SYNTHETIC_CLASSES, VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.data.synthetic import main
from mcc.data.synthetic_voc import _HUES, render_synthetic_sample


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_prefix_stable(tmp_path):
    a = _files(make_synthetic_voc(tmp_path / "a", num_train=4, num_val=2, size=48, seed=3))
    b = _files(make_synthetic_voc(tmp_path / "b", num_train=4, num_val=2, size=48, seed=3))
    assert a == b
    c = _files(make_synthetic_voc(tmp_path / "c", num_train=4, num_val=2, size=48, seed=4))
    assert a["JPEGImages/train_000000.jpg"] != c["JPEGImages/train_000000.jpg"]
    # image i depends on (seed, split, i) only, not on how many images are written
    d = _files(make_synthetic_voc(tmp_path / "d", num_train=2, num_val=1, size=48, seed=3))
    assert d["JPEGImages/train_000001.jpg"] == a["JPEGImages/train_000001.jpg"]
    assert d["SegmentationClassAug/val_000000.png"] == a["SegmentationClassAug/val_000000.png"]


def test_layout_is_read_by_the_datasets(tmp_path):
    root = make_synthetic_voc(tmp_path, num_train=6, num_val=3, size=64, seed=0)
    split_dir = root / "ImageSets/Segmentation"
    assert (split_dir / "train_aug.txt").read_text() == (split_dir / "train.txt").read_text()
    val = VOCSegmentation(root, "val")
    assert val.class_names == list(SYNTHETIC_CLASSES) and len(val) == 3
    assert Image.open(root / "SegmentationClassAug/val_000000.png").mode == "P"
    for sample in (val[i] for i in range(3)):
        assert sample["image"].shape == (3, 64, 64)
        assert sample["mask"].max() < len(SYNTHETIC_CLASSES) and sample["cls_label"].sum() >= 1
        present = sample["mask"].unique()
        assert torch.equal(sample["cls_label"].nonzero()[:, 0] + 1, present[present > 0])
    views = VOCTrainViews(root, "train_aug", crop_size=48, seed=0)
    assert len(views) == 6 and views[0]["x"].shape == (3, 48, 48)


def _hue_distance(a, b):
    return min(abs(a - b) % 1.0, 1 - abs(a - b) % 1.0)


def test_image_colours_agree_with_the_mask(tmp_path):
    root = make_synthetic_voc(tmp_path, num_train=20, num_val=0, size=96, seed=1)
    checked = set()
    for index in range(20):
        image = np.asarray(Image.open(root / f"JPEGImages/train_{index:06d}.jpg").convert("RGB")) / 255.0
        mask = np.asarray(Image.open(root / f"SegmentationClassAug/train_{index:06d}.png"))
        for cls in np.unique(mask[mask > 0]).tolist():
            region = mask == cls
            # keep pixels whose 4 neighbours share the class: JPEG ringing stays at edges
            interior = region.copy()
            interior[1:-1, 1:-1] &= (
                region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
            )
            if interior.sum() < 30:
                continue
            hue = colorsys.rgb_to_hsv(*np.median(image[interior], axis=0))[0]
            assert _hue_distance(hue, _HUES[cls]) < 0.09, (index, cls, hue)
            checked.add(cls)
    assert checked == set(range(1, len(SYNTHETIC_CLASSES)))


def test_several_objects_and_overlaps_occur():
    counts, touching = [], 0
    for index in range(60):
        _, mask = render_synthetic_sample(np.random.default_rng([0, index]), 96)
        present = np.unique(mask)
        counts.append(len(present) - 1)
        assert present[0] == 0 and present[-1] < len(SYNTHETIC_CLASSES) and len(present) > 1
        # two different foreground classes side by side: in practice one object overlapping another
        left, right = mask[:, :-1], mask[:, 1:]
        touching += bool(((left > 0) & (right > 0) & (left != right)).any())
    assert max(counts) >= 3 and np.mean(counts) > 1.5
    assert touching >= 5


@pytest.mark.parametrize("border", [1, 2])
def test_ignore_border_marks_class_boundaries(border):
    rng_args = [5, 0]
    _, exact = render_synthetic_sample(np.random.default_rng(rng_args), 64)
    _, bordered = render_synthetic_sample(np.random.default_rng(rng_args), 64, ignore_border=border)
    assert (exact != 255).all()
    ignored = bordered == 255
    assert ignored.any() and (bordered[~ignored] == exact[~ignored]).all()
    # a pixel is ignored iff another class lies within `border` pixels (Chebyshev)
    padded = np.pad(exact, border, mode="edge")
    near_other = np.zeros_like(ignored)
    for dy in range(2 * border + 1):
        for dx in range(2 * border + 1):
            near_other |= padded[dy : dy + 64, dx : dx + 64] != exact
    assert np.array_equal(ignored, near_other)


def test_command_line(tmp_path, capsys):
    main(
        ["--out", str(tmp_path / "cli"), "--num-train", "3", "--num-val", "2", "--size", "40", "--seed", "2"]
    )
    assert "3 train + 2 val" in capsys.readouterr().out
    assert len(list((tmp_path / "cli/JPEGImages").glob("*.jpg"))) == 5
    assert (tmp_path / "cli/ImageSets/Segmentation/val.txt").read_text().split() == [
        "val_000000",
        "val_000001",
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_train": 0}, "num_train"), ({"size": 16}, "size"), ({"ignore_border": -1}, "ignore_border")],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_voc(tmp_path, **{"num_train": 2, "num_val": 1, "size": 48, **kwargs})
