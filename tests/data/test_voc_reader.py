"""The VOC-layout reader: samples, class names, split lists, the label cache, and every bad-data error."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from voc_helpers import write_mask, write_voc_root

from mcc.data import VOC_CLASSES, VOCSegmentation, VOCTrainViews, read_class_names, read_split
from mcc.data.layout import LABEL_CACHE_FILE


def test_segmentation_samples_match_files(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    assert len(dataset) == 3 and dataset.num_classes == 21
    for index in range(3):
        sample = dataset[index]
        image_id = f"img_{index:03d}"
        assert sample["id"] == image_id
        assert sample["image"].shape == (3, 20, 28) and sample["image"].dtype == torch.float32
        expected = np.array(Image.open(voc_root / "SegmentationClassAug" / f"{image_id}.png"))
        assert sample["mask"].dtype == torch.long
        assert torch.equal(sample["mask"], torch.from_numpy(expected).long())
        label = torch.zeros(20)
        label[index] = 1.0  # image i holds class i + 1
        assert torch.equal(sample["cls_label"], label)


def test_unnormalised_images_are_the_decoded_jpeg(voc_root):
    sample = VOCSegmentation(voc_root, "train", normalize_images=False)[1]
    decoded = np.asarray(Image.open(voc_root / "JPEGImages" / "img_001.jpg").convert("RGB"))
    assert torch.allclose(sample["image"], torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255)


def test_class_names_come_from_classes_txt(tmp_path):
    names = ["background", "cat", "dog", "bird"]
    write_voc_root(tmp_path, class_names=names)
    assert read_class_names(tmp_path) == names
    dataset = VOCSegmentation(tmp_path, "train")
    assert dataset.num_classes == 4 and dataset[2]["cls_label"].tolist() == [0.0, 0.0, 1.0]


def test_default_class_names_are_voc(voc_root):
    assert read_class_names(voc_root) == list(VOC_CLASSES) and len(VOC_CLASSES) == 21


def test_shipped_split_lists_fill_in(voc_root, tmp_path):
    ids = read_split(voc_root, "val")  # the root has only train.txt
    assert len(ids) == 1449 and ids[0] == "2007_000033"
    assert len(read_split(voc_root, "train_aug")) == 10582
    assert read_split(voc_root, "train") == ["img_000", "img_001", "img_002"]  # the root's own list wins
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "classes.txt").write_text("\n".join(["background"] + [f"c{i}" for i in range(80)]))
    val_part = read_split(coco, "val_part")
    assert val_part[0] == "COCO_val2014_000000000042" and val_part[-1] == "COCO_val2014_000000071857"
    with pytest.raises(FileNotFoundError, match="val_part"):
        read_split(voc_root, "val_part")  # a VOC root gets no COCO list


def test_segmentation_class_folder_and_masks_off(voc_root):
    shutil.move(voc_root / "SegmentationClassAug", voc_root / "SegmentationClass")
    assert VOCSegmentation(voc_root, "train").data.mask_dir.name == "SegmentationClass"
    shutil.rmtree(voc_root / "SegmentationClass")
    sample = VOCSegmentation(voc_root, "train", masks=False)[0]
    assert set(sample) == {"image", "id"}


def test_label_cache_is_used_and_rebuilt_when_stale(voc_root):
    VOCSegmentation(voc_root, "train")
    cache_path = voc_root / LABEL_CACHE_FILE
    cache = json.loads(cache_path.read_text())
    key = "SegmentationClassAug/img_000.png"
    assert cache["masks"][key][2] == [0, 1]
    # a forged entry with the right stamp is trusted: proof that the cache, not the mask, was read
    cache["masks"][key][2] = [0, 7]
    cache_path.write_text(json.dumps(cache))
    assert VOCSegmentation(voc_root, "train").labels[0].nonzero()[0].tolist() == [6]
    # a changed mask (new mtime) is re-read
    mask = np.zeros((20, 28), dtype=np.uint8)
    mask[5:9, 5:9] = 4
    path = voc_root / key
    write_mask(path, mask)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert VOCSegmentation(voc_root, "train").labels[0].nonzero()[0].tolist() == [3]


def test_dataloader_batches_views(voc_root):
    dataset = VOCTrainViews(voc_root, "train", crop_size=16, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["x"].shape == (3, 3, 16, 16) and batch["img_box"].shape == (3, 4)
    assert batch["cls_label"].shape == (3, 20) and batch["id"] == ["img_000", "img_001", "img_002"]


# ---- bad data: a clear error naming the culprit, when the dataset is built or the sample read


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found.*nowhere"):
        VOCSegmentation(tmp_path / "nowhere", "val")


@pytest.mark.parametrize("folder", ["JPEGImages", "SegmentationClassAug"])
def test_missing_folder(voc_root, folder):
    shutil.rmtree(voc_root / folder)
    with pytest.raises(FileNotFoundError, match=folder):
        VOCSegmentation(voc_root, "train")


def test_missing_list(tmp_path):
    write_voc_root(tmp_path, class_names=["background", "a", "b"])
    with pytest.raises(FileNotFoundError, match=r"split list not found: .*val\.txt"):
        VOCSegmentation(tmp_path, "val")


def test_empty_list(voc_root):
    (voc_root / "ImageSets/Segmentation/train.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        VOCSegmentation(voc_root, "train")


@pytest.mark.parametrize("validate", [True, False])
def test_id_without_image(voc_root, validate):
    (voc_root / "JPEGImages/img_001.jpg").unlink()
    if validate:
        with pytest.raises(FileNotFoundError, match=r"img_001\.jpg"):
            VOCSegmentation(voc_root, "train")
    else:
        dataset = VOCSegmentation(voc_root, "train", validate=False)
        with pytest.raises(FileNotFoundError, match=r"img_001\.jpg"):
            dataset[1]


@pytest.mark.parametrize("validate", [True, False])
def test_id_without_mask(voc_root, validate):
    (voc_root / "SegmentationClassAug/img_002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_002\.png"):
        VOCSegmentation(voc_root, "train", validate=validate)


def test_unreadable_image(voc_root):
    (voc_root / "JPEGImages/img_000.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"cannot read image .*img_000\.jpg"):
        VOCSegmentation(voc_root, "train")


@pytest.mark.parametrize("dataset_class", [VOCSegmentation, VOCTrainViews])
def test_truncated_image_fails_when_read(voc_root, dataset_class):
    path = voc_root / "JPEGImages/img_001.jpg"
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # cut inside the entropy-coded data, after the header
    kwargs = {"crop_size": 16} if dataset_class is VOCTrainViews else {}
    dataset = dataset_class(voc_root, "train", **kwargs)  # the header is intact: building succeeds
    dataset[0]
    with pytest.raises(ValueError, match=r"img_001\.jpg"):
        dataset[1]


@pytest.mark.parametrize("value", [21, 254])
def test_mask_values_out_of_range(voc_root, value):
    mask = np.zeros((20, 28), dtype=np.uint8)
    mask[0, 0] = value
    write_mask(voc_root / "SegmentationClassAug/img_001.png", mask)
    with pytest.raises(ValueError, match=rf"img_001\.png has values \[{value}\]"):
        VOCSegmentation(voc_root, "train", validate=False)


def test_mask_values_checked_against_classes_txt_even_when_cached(voc_root):
    VOCSegmentation(voc_root, "train")  # fills the cache with values up to 3
    (voc_root / "classes.txt").write_text("background\ncat\ndog\n")
    with pytest.raises(ValueError, match=r"img_002\.png has values \[3\] outside \[0, 3\)"):
        VOCSegmentation(voc_root, "train")


@pytest.mark.parametrize("validate", [True, False])
def test_mask_size_differs_from_image(voc_root, validate):
    write_mask(voc_root / "SegmentationClassAug/img_000.png", np.zeros((20, 27), dtype=np.uint8))
    if validate:
        with pytest.raises(ValueError, match=r"img_000\.png is 27x20"):
            VOCSegmentation(voc_root, "train")
    else:
        dataset = VOCSegmentation(voc_root, "train", validate=False)
        with pytest.raises(ValueError, match=r"img_000\.png is 27x20"):
            dataset[0]


def test_rgb_mask_is_rejected(voc_root):
    Image.new("RGB", (28, 20)).save(voc_root / "SegmentationClassAug/img_000.png")
    with pytest.raises(ValueError, match=r"img_000\.png has mode 'RGB'"):
        VOCSegmentation(voc_root, "train")


@pytest.mark.parametrize(
    ("text", "message"), [("background\n", "at least one class"), ("background\ncat\ncat\n", "duplicate")]
)
def test_bad_classes_txt(voc_root, text, message):
    (voc_root / "classes.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        VOCSegmentation(voc_root, "train")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"crop_size": 0}, "crop_size"), ({"scale_range": (2.0, 1.0)}, "scale_range"),
     ({"global_scale": (0.4, 1.5)}, "global_scale"), ({"flip_p": 2.0}, "flip_p")],
)  # fmt: skip
def test_bad_view_arguments(voc_root, kwargs, name):
    with pytest.raises(ValueError, match=name):
        VOCTrainViews(voc_root, "train", **kwargs)
