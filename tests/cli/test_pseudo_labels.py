"""Pseudo-label export: files, scores equal to evaluate's, resume, CRF, fill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mcc.cli import pseudo_labels as pseudo_cli
from mcc.data import VOCSegmentation
from mcc.data.layout import read_mask
from mcc.training import ConfusionMatrix, evaluate, make_pseudo_labels, net_from_checkpoint, read_label_png


def _run(root, checkpoint, out, *argv):
    return pseudo_cli.run(
        ["--checkpoint", str(checkpoint), "--data-root", str(root), "--split", "train", "--device", "cpu",
         "--out-dir", str(out), "--scales", "1.0", *argv]
    )  # fmt: skip


SCALES = (1.0,)  # one CAM scale keeps the tests fast; the code path is the same


@pytest.fixture(scope="module")
def net_and_data(synthetic):
    root, checkpoint = synthetic
    return net_from_checkpoint(checkpoint), VOCSegmentation(root, "train")


@pytest.fixture(scope="module")
def written(net_and_data, tmp_path_factory):
    """The three kinds of label written once: (folder, {kind: metrics record})."""
    net, dataset = net_and_data
    folder = tmp_path_factory.mktemp("pseudo")
    records = {
        name: make_pseudo_labels(net, dataset, folder / name, scales=SCALES, **options)
        for name, options in (
            ("complete", {"kind": "complete"}),
            ("train", {"kind": "train"}),
            ("filled", {"kind": "train", "fill_ignore": True}),
        )
    }
    return folder, records


def test_scores_equal_evaluate_and_the_written_files(net_and_data, written):
    net, dataset = net_and_data
    folder, records = written
    expected = evaluate(
        net, dataset, cams=False, pseudo_labels=True, segmentation=False, bkg_thre=0.5, cam_scales=SCALES
    )
    complete, train = records["complete"], records["train"]
    assert complete["scores"]["pseudo"]["miou"] == pytest.approx(100 * expected["pseudo"].miou, abs=1e-9)
    assert train["scores"]["pseudo_train"]["miou"] == pytest.approx(
        100 * expected["pseudo_train"].miou, abs=1e-9
    )
    assert train["scores"]["pseudo_train"]["coverage"] == pytest.approx(
        100 * expected["pseudo_train_coverage"].pixel_accuracy, abs=1e-9
    )
    # recomputed from the PNGs: the complete label has no 255, the training target does
    matrix = ConfusionMatrix(dataset.num_classes)
    ignored = 0
    for image_id in dataset.ids:
        label = read_label_png(folder / "complete" / f"{image_id}.png")
        truth = read_mask(dataset.data.mask_path(image_id), dataset.num_classes)
        assert label.shape == truth.shape and 255 not in label
        matrix.update(torch.from_numpy(label).long(), torch.from_numpy(truth).long())
        ignored += int((read_label_png(folder / "train" / f"{image_id}.png") == 255).sum())
    assert 100 * matrix.compute().miou == pytest.approx(complete["scores"]["pseudo"]["miou"], abs=1e-9)
    assert ignored > 0
    assert json.loads((folder / "train" / "metrics.json").read_text())["kind"] == "train"


def test_fill_ignore_uses_the_complete_label(net_and_data, written):
    _, dataset = net_and_data
    folder, _ = written
    for image_id in dataset.ids:
        complete, train, filled = (
            read_label_png(folder / kind / f"{image_id}.png") for kind in ("complete", "train", "filled")
        )
        assert 255 not in filled
        assert np.array_equal(filled, np.where(train == 255, complete, train))


def test_resume_skips_what_is_written(synthetic, tmp_path, capsys):
    root, checkpoint = synthetic
    out = tmp_path / "pl"
    first = _run(root, checkpoint, out, "--max-images", "2")  # an "interrupted" run
    assert (first["written"], first["skipped"]) == (2, 0)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    (out / ".train_000002.png.123.tmp").write_bytes(b"half a file")  # left by a crash: not a label
    second = _run(root, checkpoint, out)
    assert (second["written"], second["skipped"], second["num_images"]) == (2, 2, 4)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in stamps} == stamps
    fresh = _run(root, checkpoint, tmp_path / "fresh")  # the same labels and score in one go
    assert second["scores"] == fresh["scores"]
    for path in (tmp_path / "fresh").glob("*.png"):
        assert path.read_bytes() == (out / path.name).read_bytes()
    third = _run(root, checkpoint, out, "--overwrite")
    assert (third["written"], third["skipped"]) == (4, 0)
    assert "4 written" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # labels of another kind never mix into the folder
        _run(root, checkpoint, out, "--kind", "train")
    assert "kind 'complete' -> 'train'" in capsys.readouterr().err
    assert json.loads((out / "settings.json").read_text())["kind"] == "complete"


def test_crf_keeps_the_image_classes(net_and_data, written, tmp_path):
    pytest.importorskip("pydensecrf")
    from mcc.refine import DenseCRF

    net, dataset = net_and_data
    crf = DenseCRF(3, 1, 1, 121, 5, 4)
    record = make_pseudo_labels(net, dataset, tmp_path, kind="train", scales=SCALES, crf=crf)
    assert record["settings"]["crf"].startswith("DenseCRF") and record["written"] == len(dataset)
    for row, image_id in enumerate(dataset.ids):
        label = read_label_png(tmp_path / f"{image_id}.png")
        plain = read_label_png(written[0] / "train" / f"{image_id}.png")
        allowed = {0, 255} | {int(c) + 1 for c in np.flatnonzero(dataset.labels[row])}
        assert set(np.unique(label).tolist()) <= allowed
        assert np.array_equal(label == 255, plain == 255)  # uncertain pixels stay uncertain


def test_bad_arguments(synthetic, net_and_data, tmp_path):
    root, checkpoint = synthetic
    net, dataset = net_and_data
    with pytest.raises(ValueError, match="kind"):
        make_pseudo_labels(net, dataset, tmp_path, kind="soft")
    with pytest.raises(ValueError, match="image labels"):
        make_pseudo_labels(net, VOCSegmentation(root, "val", masks=False), tmp_path)
    with pytest.raises(SystemExit):
        _run(root, checkpoint, tmp_path, "--ids", "train_000000,missing_id")
    with pytest.raises(SystemExit):
        _run(root, checkpoint, tmp_path, "--ground-truth", "no")
