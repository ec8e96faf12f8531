"""COCO -> VOC-layout conversion on a tiny COCO-format JSON, then the shared reader."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from mcc.data import VOCSegmentation, coco_to_voc
from mcc.data.coco_to_voc import main

pycocotools_mask = pytest.importorskip("pycocotools.mask")

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
H, W = 16, 20


def _rle(mask):
    rle = pycocotools_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _box(y0, y1, x0, x1):
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _annotation(ann_id, image_id, category, mask, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": _rle(mask),
            "area": float(mask.sum()), "bbox": [0, 0, 1, 1], "iscrowd": crowd}  # fmt: skip


def write_coco(root):
    """train2014: image 9 (overlaps + a crowd), image 10 (unannotated); val2014: image 42 (a polygon)."""
    big, small, crowd = _box(2, 14, 2, 16), _box(5, 9, 6, 10), _box(0, 16, 12, 20)
    splits = {
        "train2014": (
            [9, 10],
            [_annotation(1, 9, 3, small), _annotation(2, 9, 1, big), _annotation(3, 9, 90, crowd, crowd=1)],
        ),
        "val2014": (
            [42],
            [
                {
                    "id": 4,
                    "image_id": 42,
                    "category_id": 90,
                    "segmentation": [[4, 4, 14, 4, 14, 12, 4, 12]],
                    "area": 80.0,
                    "bbox": [4, 4, 10, 8],
                    "iscrowd": 0,
                }
            ],
        ),  # fmt: skip
    }
    (root / "annotations").mkdir(parents=True)
    for split, (image_ids, annotations) in splits.items():
        (root / split).mkdir()
        images = []
        for image_id in image_ids:
            name = f"COCO_{split}_{image_id:012d}.jpg"
            Image.new("RGB", (W, H), (image_id, 50, 90)).save(root / split / name)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
        payload = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))
    return big, small, crowd


def test_masks_lists_and_reader(tmp_path):
    big, small, crowd = write_coco(tmp_path / "coco")
    out = coco_to_voc(tmp_path / "coco", tmp_path / "out", progress=False)
    # class = 1 + index in the sorted category ids: person (1) -> 1, car (3) -> 2, toothbrush (90) -> 3
    assert (out / "classes.txt").read_text().split() == ["background", "person", "car", "toothbrush"]
    mask = np.asarray(Image.open(out / "SegmentationClass/train2014/COCO_train2014_000000000009.png"))
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[crowd] = 255  # crowd-only pixels are ignored
    expected[big] = 1  # the larger instance first ...
    expected[small] = 2  # ... the smaller one on top
    assert np.array_equal(mask, expected)
    empty = np.asarray(Image.open(out / "SegmentationClass/train2014/COCO_train2014_000000000010.png"))
    assert (empty == 0).all()

    lists = out / "ImageSets/Segmentation"
    assert (lists / "train.txt").read_text().split() == ["COCO_train2014_000000000009"]  # unannotated dropped
    assert (lists / "val.txt").read_text().split() == ["COCO_val2014_000000000042"]
    assert (lists / "val_part.txt").read_text().split() == [
        "COCO_val2014_000000000042"
    ]  # shipped and converted

    train = VOCSegmentation(out, "train")
    sample = train[0]
    assert sample["image"].shape == (3, H, W) and sample["id"] == "COCO_train2014_000000000009"
    assert sample["cls_label"].tolist() == [1.0, 1.0, 0.0]  # the crowd toothbrush is not an image label
    assert train.data.image_path(sample["id"]).parent.name == "train2014"
    val = VOCSegmentation(out, "val_part")[0]
    assert val["mask"][8, 8] == 3 and val["mask"][0, 0] == 0 and val["cls_label"].tolist() == [0.0, 0.0, 1.0]


def test_plain_progress_without_tqdm(tmp_path, monkeypatch, capsys):
    write_coco(tmp_path / "coco")
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    main(["--coco-root", str(tmp_path / "coco"), "--out", str(tmp_path / "out"), "--splits", "val2014"])
    captured = capsys.readouterr()
    assert "masks val2014: 1/1" in captured.err and "wrote" in captured.out
    assert not (tmp_path / "out/ImageSets/Segmentation/train.txt").exists()
    assert (tmp_path / "out/JPEGImages/val2014/COCO_val2014_000000000042.jpg").is_file()


def test_copy_images(tmp_path):
    write_coco(tmp_path / "coco")
    out = coco_to_voc(tmp_path / "coco", tmp_path / "out", ["val2014"], copy_images=True, progress=False)
    assert not (out / "JPEGImages/val2014").is_symlink()
    assert (out / "JPEGImages/val2014/COCO_val2014_000000000042.jpg").is_file()


def test_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO root not found"):
        coco_to_voc(tmp_path / "nowhere", tmp_path / "out")
    write_coco(tmp_path / "coco")
    (tmp_path / "coco/annotations/instances_val2014.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances_val2014\.json"):
        coco_to_voc(tmp_path / "coco", tmp_path / "out", ["val2014"], progress=False)
    with pytest.raises(ValueError, match="splits"):
        coco_to_voc(tmp_path / "coco", tmp_path / "out", ["test2015"], progress=False)
