"""mcc-train: training from image-level tags, its validation options, bad input, the module form."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from mcc.cli import train as train_cli
from mcc.data import VOCSegmentation
from mcc.training import load_checkpoint

TINY = [
    "--model", "test_vit", "--pretrained", "false", "--crop-size", "64", "--batch-size", "2",
    "--max-iters", "2", "--schedule", "scaled", "--num-workers", "0", "--device", "cpu", "--log-every", "1",
    "--mcc", "decoder_dim=32", "--mcc", "projector_dim=32", "--mcc", "projector_hidden_dim=64",
    "--mcc", "projector_bottleneck_dim=16",
]  # fmt: skip


@pytest.fixture
def tagged(synthetic, tmp_path):
    """A plain folder of the synthetic training images (no masks), tags.csv and classes.txt."""
    root, _ = synthetic
    dataset = VOCSegmentation(root, "train")
    names = dataset.class_names[1:]
    photos = tmp_path / "photos"
    photos.mkdir()
    with (tmp_path / "tags.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "labels"])
        for image_id, label in zip(dataset.ids, dataset.labels):
            shutil.copy(root / "JPEGImages" / f"{image_id}.jpg", photos / f"{image_id}.jpg")
            writer.writerow([image_id, ";".join(n for n, on in zip(names, label) if on)])
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    return photos, tmp_path / "tags.csv", tmp_path / "classes.txt"


def test_train_from_tags_equals_train_voc(synthetic, tagged, tmp_path, capsys):
    """Same images, same labels, same seed: mcc-train and mcc-train-voc write the same weights."""
    root, _ = synthetic
    photos, tags, classes = tagged
    train_cli.main_tags(
        ["--images", str(photos), "--labels", str(tags), "--classes", str(classes), "--val-labels", str(tags),
         "--val-root", str(root), "--val-split", "val", "--work-dir", str(tmp_path / "tags"), *TINY]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "4 training images, 5 classes" in out and "mAP" in out
    train_cli.main_voc(
        ["--data-root", str(root), "--train-split", "train", "--val-split", "val",
         "--work-dir", str(tmp_path / "voc"), *TINY]
    )  # fmt: skip
    a = load_checkpoint(tmp_path / "tags" / "last.pt")
    b = load_checkpoint(tmp_path / "voc" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    names = ["background", "disc", "box", "tri", "ring", "cross"]
    assert a["config"]["extra"]["class_names"] == b["config"]["extra"]["class_names"] == names
    assert a["config"]["extra"]["dataset"] == "tags"
    metrics = json.loads((tmp_path / "tags" / "metrics.json").read_text())
    voc_metrics = json.loads((tmp_path / "voc" / "metrics.json").read_text())
    assert metrics["last"]["scores"] == voc_metrics["last"]["scores"]  # --val-root scores as mcc-train-voc
    tag_scores = metrics["tags"]["scores"]
    assert metrics["tags"]["iteration"] == 2 and tag_scores["num_images"] == 4
    assert 0 <= tag_scores["map"] <= 100 and set(tag_scores["per_class"]) == set(names[1:])


def _fails(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main_tags(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 or err.startswith("usage:"), err
    return err


def test_bad_tags_exit_with_one_line_before_any_work(synthetic, tagged, tmp_path, capsys):
    root, _ = synthetic
    photos, tags, classes = tagged
    base = ["--images", str(photos), "--classes", str(classes), "--work-dir", str(tmp_path / "w"), *TINY]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,labels\ntrain_000000,disc\ntrain_000001,dsic\n")
    _fails(capsys, [*base, "--labels", str(bad)], "bad.csv row 3: tag 'dsic' is not one of the 5 classes")
    bad.write_text("image,labels\ntrain_000000,disc\ntrain_000009,box\n")
    _fails(capsys, [*base, "--labels", str(bad)], "row 3: train_000009.jpg/.jpeg/.png")
    bad.write_text("image,labels\ntrain_000000,disc\ntrain_000000,box\n")
    _fails(capsys, [*base, "--labels", str(bad)], "listed again with other tags")
    _fails(capsys, [*base, "--labels", str(tmp_path / "none.csv")], "label file not found")
    (tmp_path / "other.txt").write_text("a\nb\nc\nd\ne\n")
    _fails(
        capsys,
        ["--images", str(photos), "--labels", str(tags), "--classes", str(tmp_path / "other.txt"), *TINY],
        "tag 'disc' is not one of",
    )
    _fails(capsys, [*base, "--labels", str(tags), "--val-root", str(root), "--classes", str(tmp_path / "c2")],
           "classes file not found")  # fmt: skip
    (tmp_path / "shuffled.txt").write_text("box\ndisc\ntri\nring\ncross\n")
    _fails(
        capsys,
        ["--images", str(photos), "--labels", str(tags), "--classes", str(tmp_path / "shuffled.txt"),
         "--val-root", str(root), *TINY],
        "must be the same, in the same order",
    )  # fmt: skip
    _fails(capsys, TINY, "--images and --labels required")
    assert not (tmp_path / "w").exists()  # nothing was started


def test_module_form_trains_from_tags_and_keeps_voc(tagged, tmp_path, capsys):
    photos, tags, classes = tagged
    train_cli._module_main(["--help"])
    text = capsys.readouterr().out
    assert "{voc,coco}" in text and "--labels" in text and "--val-labels" in text
    with pytest.warns(UserWarning, match="order is inferred"):
        train_cli._module_main(
            ["--images", str(photos), "--labels", str(tags), "--work-dir", str(tmp_path / "m"), *TINY]
        )
    names = load_checkpoint(tmp_path / "m" / "last.pt")["config"]["extra"]["class_names"]
    rows = list(csv.DictReader(tags.open()))
    found = sorted({tag for row in rows for tag in row["labels"].split(";") if tag})
    assert names == ["background", *found]  # the names the tags use, sorted, as warned
    with pytest.raises(SystemExit):
        train_cli._module_main(["voc", "--max-iters", "3"])  # the VOC form still needs --data-root
    assert "--data-root is required" in capsys.readouterr().err


@pytest.mark.slow
def test_tags_vs_voc_script_in_miniature(tmp_path, capsys, monkeypatch):
    """examples/tags_vs_voc.py (the measurement of docs/own-data.md) on 4 images for 2 steps."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "tags_vs_voc.py"
    argv = [
        "--work-dir",
        str(tmp_path / "w"),
        "--steps",
        "2",
        "--num-train",
        "4",
        "--num-val",
        "2",
        "--batch-size",
        "2",
    ]
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    runpy.run_path(str(script), run_name="__main__")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["max_weight_difference"] == 0.0 and result["tags_seg_miou"] == result["voc_seg_miou"]
    assert result["num_val"] == 2 and 0 <= result["all_background_miou"] <= 100


def test_pseudo_labels_of_tagged_images(synthetic, tagged, tmp_path):
    """make_pseudo_labels takes TagImages: pseudo labels for a second stage need no VOC layout either."""
    from mcc.data import TagImages, read_tags
    from mcc.training import make_pseudo_labels, net_from_checkpoint, read_label_png

    _, checkpoint = synthetic
    photos, tags, classes = tagged
    net = net_from_checkpoint(checkpoint)
    dataset = TagImages(read_tags(tags, photos, classes))
    record = make_pseudo_labels(net, dataset, tmp_path / "pl", scales=(1.0,))
    assert record["written"] == 4 and "scores" not in record  # no masks: nothing to score
    for image_id, label in zip(dataset.ids, dataset.labels):
        values = set(read_label_png(tmp_path / "pl" / f"{image_id}.png").ravel().tolist())
        allowed = {0, *(1 + i for i in range(len(label)) if label[i])}  # background and the image's tags
        assert values <= allowed
