"""Image-level labels without masks: every source, image resolution, bad input, and the training views."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mcc.data import (
    TagImages,
    TagTrainViews,
    VOCSegmentation,
    VOCTrainViews,
    make_synthetic_voc,
    read_classes_file,
    read_tags,
    tags_from_mapping,
)
from mcc.data.layout import VOC_CLASSES

CLASSES = ["cat", "dog", "bird"]
TRUTH = {"a": ["cat"], "b": ["dog", "bird"], "sub/c": [], "d": ["cat", "bird"]}


@pytest.fixture
def images(tmp_path):
    """Four images in a folder (one in a sub-folder, one a PNG, one with an upper-case extension)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "sub/c.jpeg", "d.JPG"):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            folder / name, format="PNG" if name.endswith("png") else "JPEG"
        )
    (tmp_path / "classes.txt").write_text("background\n" + "\n".join(CLASSES) + "\n")
    return folder


def _expected_labels(ids):
    return np.array([[float(c in TRUTH[i]) for c in CLASSES] for i in ids], dtype=np.float32)


def _check(tags, folder):
    assert tags.class_names == ["background", *CLASSES]
    assert sorted(tags.ids) == sorted(TRUTH)
    np.testing.assert_array_equal(tags.labels, _expected_labels(tags.ids))
    assert tags.labels.dtype == np.float32
    suffixes = {i: p.relative_to(folder).as_posix() for i, p in zip(tags.ids, tags.paths)}
    assert suffixes == {"a": "a.jpg", "b": "b.png", "sub/c": "sub/c.jpeg", "d": "d.JPG"}


def test_csv_long_form(images, tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("image,labels\na,cat\nb.png,dog; bird\nsub/c,\nd,cat;bird\n")
    _check(read_tags(path, images, tmp_path / "classes.txt"), images)


def test_csv_wide_form_fixes_the_classes(images, tmp_path):
    path = tmp_path / "wide.csv"
    lines = ["image,cat,dog,bird"] + [
        f"{i},{','.join(str(int(c in t)) for c in CLASSES)}" for i, t in TRUTH.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the header gives the order: no warning
        _check(read_tags(path, images), images)


def test_json_mapping_and_in_memory(images, tmp_path):
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(TRUTH))
    _check(read_tags(path, images, CLASSES), images)
    _check(tags_from_mapping(TRUTH, images, CLASSES), images)


def test_inferred_classes_are_sorted_with_a_warning(images, tmp_path):
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(TRUTH))
    with pytest.warns(UserWarning, match="order is inferred"):
        tags = read_tags(path, images)
    assert tags.class_names == ["background", "bird", "cat", "dog"]
    assert tags.labels[tags.ids.index("b")].tolist() == [1, 0, 1]


def test_published_onehot_npy(tmp_path):
    folder = tmp_path / "JPEGImages"
    folder.mkdir()
    rng = np.random.default_rng(1)
    labels = {}
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"2007_00{index}.jpg")
        vector = np.zeros(20, dtype=np.float32)
        vector[[index, 14]] = 1  # aeroplane/bicycle/bird + person
        labels[f"2007_00{index}"] = vector
    np.save(tmp_path / "cls_labels_onehot.npy", labels)  # as the published repositories write it
    tags = read_tags(tmp_path / "cls_labels_onehot.npy", folder)
    assert tags.class_names == list(VOC_CLASSES)
    np.testing.assert_array_equal(tags.labels, np.stack(list(labels.values())))
    with pytest.raises(
        ValueError, match=r"cls_labels_onehot.npy entry '2007_000': 20 labels, but there are 3"
    ):
        read_tags(tmp_path / "cls_labels_onehot.npy", folder, CLASSES)


def test_voc_xml_annotations_include_difficult_objects(tmp_path):
    folder, annotations = tmp_path / "JPEGImages", tmp_path / "Annotations"
    folder.mkdir()
    annotations.mkdir()
    objects = {"2008_000001": [("dog", 0), ("person", 1), ("dog", 0)], "2008_000002": [("car", 1)]}
    for image_id, items in objects.items():
        Image.new("RGB", (8, 8)).save(folder / f"{image_id}.jpg")
        body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in items)
        (annotations / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{body}</annotation>"
        )
    tags = read_tags(annotations, folder)
    assert tags.class_names == list(VOC_CLASSES) and tags.ids == ["2008_000001", "2008_000002"]
    present = {i: [VOC_CLASSES[1 + j] for j in np.flatnonzero(row)] for i, row in zip(tags.ids, tags.labels)}
    assert present == {"2008_000001": ["dog", "person"], "2008_000002": ["car"]}
    (annotations / "2008_000003.xml").write_text("<annotation><object><name>car</name>")
    with pytest.raises(ValueError, match="cannot read annotation .*2008_000003.xml"):
        read_tags(annotations, folder)


def test_coco_instances_json(tmp_path):
    pytest.importorskip("pycocotools")
    folder = tmp_path / "train2014"
    folder.mkdir()
    images, annotations = [], []
    for image_id in (9, 25, 30):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.new("RGB", (10, 10)).save(folder / name)
        images.append({"id": image_id, "file_name": name, "width": 10, "height": 10})
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    for number, (image_id, category) in enumerate([(9, 18), (9, 1), (25, 3), (9, 18)], 1):
        annotations.append(
            {"id": number, "image_id": image_id, "category_id": category, "bbox": [0, 0, 2, 2], "area": 4,
             "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]}
        )  # fmt: skip
    path = tmp_path / "instances_train2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    tags = read_tags(path, folder)
    assert tags.class_names == ["background", "person", "car", "dog"]  # category-id order
    assert tags.ids == ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]  # 30: no instance
    assert tags.labels.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_classes_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\ndog\n")
    assert read_classes_file(path) == ["background", "cat", "dog"]
    for text, message in [
        ("cat\ncat\n", "listed twice"),
        ("\n", "no foreground"),
        ("cat\nbackground\n", "first"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_classes_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,labels\na,cat\nb,dgo\n", r"tags.csv row 3: tag 'dgo' is not one of the 3 classes"),
        ("image,labels\na,cat\nb,dog\na,dog\n", r"tags.csv row 4: image 'a' is listed again with other tags "
         r"\(dog\) than at .*tags.csv row 2 \(cat\)"),
        ("image,labels\na,cat\nb,dog,bird\n", r"tags.csv row 3: 3 fields, the header has 2"),
        ("image,labels\na,cat;;dog\n", r"tags.csv row 2: empty tag"),
        ("name,labels\na,cat\n", r"tags.csv row 1: the header .* has no 'image' column"),
        ("image,cat,dog,bird\na,1,0,2\n", r"tags.csv row 2: column 'bird' holds '2', expected 0 or 1"),
        ("", r"tags.csv: empty file"),
    ],
)  # fmt: skip
def test_bad_csv_names_file_row_and_value(images, tmp_path, text, message):
    path = tmp_path / "tags.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_tags(path, images, CLASSES)


def test_missing_images_are_all_named_with_their_rows(images, tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("image,labels\na,cat\nnope,dog\ngone.png,cat\n")
    with pytest.raises(
        FileNotFoundError, match=r"2 image\(s\) .* row 3: nope.jpg/.jpeg/.png; .*row 4: gone.png"
    ):
        read_tags(path, images, CLASSES)
    path.write_text("image,labels\na,cat\na.jpg,cat\n")  # the same image twice with the same tags: once
    assert read_tags(path, images, CLASSES).ids == ["a"]


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("tags.json", "{not json", ValueError, r"tags.json line 1: not valid JSON"),
        ("tags.json", '["a", "b"]', ValueError, r"expected an object"),
        ("tags.json", '{"a": "cat"}', ValueError, r"tags.json entry 'a': expected a list of class names"),
        ("tags.npy", b"\x00garbage", ValueError, r"cannot read label file .*tags.npy"),
        ("tags.txt", "a cat", ValueError, r"unknown label format '.txt'"),
        ("none.csv", None, FileNotFoundError, r"label file not found: .*none.csv"),
    ],
)
def test_unreadable_label_files(images, tmp_path, name, content, error, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(error, match=message):
        read_tags(path, images, CLASSES)


def test_ids_select_and_order(images, tmp_path):
    tags = tags_from_mapping(TRUTH, images, CLASSES)
    assert tags.subset(["d", "a"]).ids == ["d", "a"]
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(TRUTH))
    assert read_tags(path, images, CLASSES, ids=["b", "a"]).ids == ["b", "a"]
    with pytest.raises(ValueError, match=r"1 id\(s\) have no labels .*zz"):
        read_tags(path, images, CLASSES, ids=["a", "zz"])


def test_tag_views_equal_voc_views(tmp_path):
    """For the same images, labels and seed, TagTrainViews yields exactly VOCTrainViews' tensors."""
    root = make_synthetic_voc(tmp_path / "voc", 5, 0, 48, seed=2)
    voc = VOCTrainViews(root, "train", crop_size=32, seed=7)
    truth = VOCSegmentation(root, "train")
    mapping = {
        i: [n for n, on in zip(truth.class_names[1:], row) if on] for i, row in zip(truth.ids, truth.labels)
    }
    tags = tags_from_mapping(mapping, root / "JPEGImages", truth.class_names[1:])
    for dataset in (
        TagTrainViews(tags, crop_size=32, seed=7),
        TagTrainViews(
            paths=tags.paths, labels=tags.labels, class_names=tags.class_names, crop_size=32, seed=7
        ),
    ):
        assert len(dataset) == len(voc) and dataset.num_foreground_classes == voc.num_foreground_classes
        for epoch in (0, 3):
            voc.set_epoch(epoch)
            dataset.set_epoch(epoch)
            for index in range(len(voc)):
                a, b = voc[index], dataset[index]
                assert a.keys() == b.keys() == {"x", "v1", "v2", "cls_label", "img_box", "id"}
                assert a["id"] == b["id"]
                for key in ("x", "v1", "v2", "cls_label", "img_box"):
                    assert torch.equal(a[key], b[key]), (epoch, index, key)


def test_tag_images_and_bad_in_memory_labels(images, tmp_path):
    tags = tags_from_mapping(TRUTH, images, CLASSES)
    sample = TagImages(tags)[tags.ids.index("b")]
    assert sample["image"].shape == (3, 20, 24) and sample["cls_label"].tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match=r"labels must have shape \(N, C - 1\)"):
        TagTrainViews(paths=tags.paths, labels=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="multi-hot"):
        TagTrainViews(paths=tags.paths[:1], labels=[[0.5, 0, 0]])
    with pytest.raises(FileNotFoundError, match="1 image"):
        TagTrainViews(paths=[images / "missing.jpg"], labels=[[1, 0, 0]])
    with pytest.raises(ValueError, match="tag 'cow' is not one of"):
        tags_from_mapping({"a": ["cow"]}, images, CLASSES)


def test_tag_views_offer_the_strong_view_as_voc_views_do(tmp_path):
    """DuPL's strong view: the same extra tensor from tags as from the VOC layout, the others unchanged."""
    from mcc.data import StrongAugment

    root = make_synthetic_voc(tmp_path / "voc", 3, 0, 48, seed=4)
    truth = VOCSegmentation(root, "train")
    mapping = {
        i: [n for n, on in zip(truth.class_names[1:], row) if on] for i, row in zip(truth.ids, truth.labels)
    }
    tags = tags_from_mapping(mapping, root / "JPEGImages", truth.class_names[1:])
    voc = VOCTrainViews(root, "train", crop_size=32, seed=3, strong_view=StrongAugment())
    ours = TagTrainViews(tags, crop_size=32, seed=3, strong_view=StrongAugment())
    for index in range(len(voc)):
        a, b = voc[index], ours[index]
        assert "strong" in a and a.keys() == b.keys()
        for key in ("x", "v1", "v2", "strong", "cls_label", "img_box"):
            assert torch.equal(a[key], b[key]), (index, key)
