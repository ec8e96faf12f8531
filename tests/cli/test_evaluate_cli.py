"""mcc-evaluate writes its results: metrics.json, prediction PNGs, pictures, VOC test-server files."""

from __future__ import annotations

import json
import shutil
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from mcc.cli import evaluate as evaluate_cli
from mcc.data import VOCSegmentation
from mcc.data.layout import read_mask
from mcc.training import ConfusionMatrix, read_label_png, save_label_png, scores_record, select_ids
from mcc.training.outputs import VOC_TEST_RESULTS


def _run(root, checkpoint, *argv):
    return evaluate_cli.run(
        ["--checkpoint", str(checkpoint), "--data-root", str(root), "--device", "cpu", "--scales", "1.0",
         *argv]
    )  # fmt: skip


def test_metrics_predictions_and_pictures(synthetic, tmp_path, capsys):
    root, checkpoint = synthetic
    out = tmp_path / "eval"
    record = _run(
        root, checkpoint, "--bkg-thre", "0.4", "0.5", "--out-dir", str(out), "--save-pred", "--save-vis", "2"
    )
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(record))
    assert (metrics["split"], metrics["num_images"], metrics["checkpoint"]) == ("val", 3, str(checkpoint))
    assert metrics["settings"]["scales"] == [1.0] and metrics["settings"]["bkg_thre"] == [0.4, 0.5]
    scores = metrics["scores"]
    assert set(scores) == {"cam", "cam@0.40", "cam@0.50", "pseudo", "pseudo_train", "seg"}
    names = VOCSegmentation(root, "val").class_names
    for score in scores.values():
        assert set(score["per_class_iou"]) == set(names)
        assert 0 <= score["pixel_accuracy"] <= 100
        assert f"mIoU {score['miou']:.2f}" in printed  # exactly the printed numbers
    assert scores["cam"] == scores["cam@0.40"]  # the first threshold
    assert 0 < scores["pseudo_train"]["coverage"] <= 100
    assert f"{scores['pseudo_train']['coverage']:.1f} %" in printed

    # the segmentation score recomputed from the written PNGs and the ground-truth masks
    dataset = VOCSegmentation(root, "val")
    matrix = ConfusionMatrix(dataset.num_classes)
    for image_id in dataset.ids:
        path = out / "pred" / f"{image_id}.png"
        with Image.open(path) as png:
            assert png.mode == "P" and png.getpalette()[3 * 255 : 3 * 256] == [224, 224, 192]
        prediction = read_label_png(path)
        truth = read_mask(dataset.data.mask_path(image_id), dataset.num_classes)
        assert prediction.shape == truth.shape  # original size
        matrix.update(torch.from_numpy(prediction).long(), torch.from_numpy(truth).long())
    recomputed = scores_record({"seg": matrix.compute()}, dataset.class_names)["seg"]
    assert recomputed["miou"] == pytest.approx(scores["seg"]["miou"], abs=1e-9)
    assert recomputed["per_class_iou"] == pytest.approx(scores["seg"]["per_class_iou"])

    pictures = [out / "vis" / f"{i}.jpg" for i in dataset.ids[:2]] + [out / "vis" / "overview.jpg"]
    assert sorted((out / "vis").iterdir()) == sorted(pictures)
    with Image.open(pictures[0]) as picture:
        assert picture.size == (5 * 64 + 4 * 2, 64)  # image | CAM | CAM+PAR | prediction | truth
    with Image.open(pictures[-1]) as overview:  # titles, two strips split in panels enlarged x2, legend
        picture = np.asarray(overview.convert("L"))
    grid_h = 2 * 2 * 64 + 3 * 4
    assert picture.shape[1] == 5 * (2 * 64 + 4) + 4 and picture.shape[0] > grid_h + 2 * 13
    title_h = 13 + 2 * 4  # title_size 13 (6 x 2 + 1) and its margins
    titles, legend = picture[:title_h], picture[title_h + grid_h :]
    for column in range(5):  # every column has a title (dark text on white)
        cell = titles[:, 4 + column * 132 : 4 + column * 132 + 128]
        assert (cell < 100).sum() > 20, column
    assert (legend < 100).sum() > 50  # the class names and swatch outlines


def test_test_split_writes_server_layout_and_archive(synthetic, tmp_path, capsys):
    root, checkpoint = synthetic
    out = tmp_path / "test"
    record = _run(root, checkpoint, "--split", "test", "--out-dir", str(out))
    assert record["scores"] == {} and "comp6_test_cls" in capsys.readouterr().out
    ids = (root / "ImageSets" / "Segmentation" / "test.txt").read_text().split()
    files = sorted(p.name for p in (out / VOC_TEST_RESULTS).iterdir())
    assert files == sorted(f"{i}.png" for i in ids)
    with tarfile.open(out / "results.tar.gz") as archive:
        members = {m.name for m in archive.getmembers() if m.isfile()}
        assert members == {f"{VOC_TEST_RESULTS.as_posix()}/{i}.png" for i in ids}
        data = archive.extractfile(f"{VOC_TEST_RESULTS.as_posix()}/{ids[0]}.png").read()
    assert data == (out / VOC_TEST_RESULTS / f"{ids[0]}.png").read_bytes()
    assert json.loads((out / "metrics.json").read_text())["archive"] == "results.tar.gz"
    with pytest.raises(SystemExit):  # nothing to score and nowhere to write
        _run(root, checkpoint, "--split", "test")


def test_bad_ids_and_missing_images_are_named_before_any_work(synthetic, tmp_path, capsys):
    root, checkpoint = synthetic
    out = tmp_path / "eval"
    with pytest.raises(SystemExit):
        _run(root, checkpoint, "--ids", "val_000000,nope_1,nope_2", "--out-dir", str(out))
    err = capsys.readouterr().err
    assert "'nope_1'" in err and "'nope_2'" in err and "2 id(s)" in err
    assert not out.exists()

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    for image_id in ("val_000000", "val_000002"):
        (broken / "JPEGImages" / f"{image_id}.jpg").unlink()
    with pytest.raises(SystemExit):
        _run(broken, checkpoint, "--out-dir", str(out))
    err = capsys.readouterr().err
    assert "2 image(s) missing" in err and "'val_000000'" in err and "'val_000002'" in err
    assert not out.exists()

    # a good subset is scored alone
    record = _run(root, checkpoint, "--ids", "val_000001", "--no-cams", "--out-dir", str(out), "--save-pred")
    assert record["num_images"] == 1 and [p.name for p in (out / "pred").iterdir()] == ["val_000001.png"]


def test_library_helpers(tmp_path):
    label = np.array([[0, 3], [255, 20]])
    path = save_label_png(tmp_path / "a" / "x.png", torch.from_numpy(label))
    assert np.array_equal(read_label_png(path), label) and not list((tmp_path / "a").glob(".*tmp"))
    for bad in (np.zeros((2, 2, 2), int), np.full((2, 2), 0.5), np.full((2, 2), 300)):
        with pytest.raises(ValueError, match="label"):
            save_label_png(tmp_path / "y.png", bad)
    with pytest.raises(ValueError, match="not in the split"):
        select_ids(type("D", (), {"ids": ["a", "b"]})(), ["a", "c"])


@pytest.mark.slow
def test_torchrun_two_processes_split_the_files(synthetic, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    root, checkpoint = synthetic

    def torchrun(module: str, *argv: str) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
            "-m", module, "--checkpoint", str(checkpoint), "--data-root", str(root), "--device", "cpu",
            "--dist-timeout", "120", *argv,
        ]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        return done.stdout

    out = tmp_path / "ddp"
    torchrun("mcc.cli.evaluate", "--scales", "1.0", "--out-dir", str(out), "--save-pred")
    single = _run(root, checkpoint, "--out-dir", str(tmp_path / "single"), "--save-pred")
    distributed = json.loads((out / "metrics.json").read_text())
    assert distributed["settings"]["world_size"] == 2
    for name, score in single["scores"].items():
        assert distributed["scores"][name]["miou"] == pytest.approx(score["miou"], abs=1e-9), name
    for path in (tmp_path / "single" / "pred").iterdir():  # every image once, from one of the ranks
        assert (out / "pred" / path.name).read_bytes() == path.read_bytes()
    assert len(list((out / "pred").iterdir())) == 3

    labels = tmp_path / "labels"
    printed = torchrun(
        "mcc.cli.pseudo_labels", "--split", "train", "--scales", "1.0", "--out-dir", str(labels)
    )
    record = json.loads((labels / "metrics.json").read_text())
    assert (record["written"], record["skipped"], record["num_images"]) == (4, 0, 4)  # disjoint shares
    assert len(list(labels.glob("*.png"))) == 4 and "4 written" in printed


def test_crf_backends(synthetic, tmp_path, monkeypatch):
    from mcc.cli._common import make_crf

    root, checkpoint = synthetic
    record = _run(root, checkpoint, "--crf", "--no-cams", "--max-images", "1", "--out-dir", str(tmp_path))
    assert "DenseCRF" in record["settings"]["crf"] and record["scores"]["seg"]["miou"] is not None
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # not installed: the torch backend
    assert make_crf(torch.device("cpu")).backend == "torch"


def test_library_functions_name_missing_files_first(synthetic, tmp_path):
    from mcc.training import evaluate_to_dir, make_pseudo_labels, net_from_checkpoint

    root, checkpoint = synthetic
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    dataset = VOCSegmentation(broken, "train", validate=False)
    (broken / "JPEGImages" / "train_000003.jpg").unlink()
    net = net_from_checkpoint(checkpoint)
    for call in (evaluate_to_dir, make_pseudo_labels):
        with pytest.raises(FileNotFoundError, match="'train_000003'"):
            call(net, dataset, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    subset = select_ids(dataset, ["train_000000"])  # only the ids it holds are checked
    record = evaluate_to_dir(net, subset, tmp_path / "out", cams=False, seg_scales=(1.0,))
    assert record["num_images"] == 1
