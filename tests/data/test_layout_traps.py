"""VOC-layout traps: other image extensions, CSV split lists, defaulted class names."""

from __future__ import annotations

import shutil
import warnings

import pytest
from PIL import Image

from mcc.data import VOCSegmentation, make_synthetic_voc
from mcc.data.layout import DatasetRoot, read_split
from mcc.training.outputs import check_split_files


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("voc") / "voc", 3, 2, 32, seed=0)


@pytest.mark.parametrize("suffix", [".png", ".jpeg", ".JPG", ".PNG"])
def test_images_with_other_extensions_are_found(root, tmp_path, suffix):
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    reference = VOCSegmentation(root, "train")[1]["image"]
    for path in sorted((copy / "JPEGImages").glob("*.jpg")):
        image = Image.open(path)
        path.unlink()
        image.save(path.with_suffix(suffix), format="PNG" if "png" in suffix.lower() else "JPEG", quality=100)
    dataset = VOCSegmentation(copy, "train")  # validates every id
    check_split_files(dataset)
    assert dataset.data.image_path(dataset.ids[1]).suffix == suffix
    assert dataset[1]["image"].shape == reference.shape


def test_a_missing_image_says_which_names_were_looked_for(root, tmp_path):
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "JPEGImages" / "train_000000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"looked for <id>\.jpg, <id>\.jpeg, <id>\.png"):
        DatasetRoot(copy, "train")
    data = DatasetRoot(copy, "train", validate=False)
    with pytest.raises(FileNotFoundError, match=r"\(looked for <id>\.jpg, .*\): .train_000000."):
        check_split_files(data)


def test_a_csv_given_as_split_list_is_explained(root, tmp_path):
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "ImageSets" / "Segmentation" / "mine.txt").write_text("id,labels\ntrain_000000,1\n")
    with pytest.raises(ValueError, match="a split list is one image id per line"):
        read_split(copy, "mine")


def test_defaulted_class_names_are_said_once(root, tmp_path):
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "classes.txt").unlink()
    with pytest.warns(UserWarning, match="classes.txt not found: using the 21 PASCAL VOC class names"):
        names = DatasetRoot(copy, "train").class_names
    assert len(names) == 21
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DatasetRoot(root, "train")  # a root with classes.txt: no warning
