"""mcc-predict: masks, records and overlays for any images; equal to mcc-evaluate; resume, bad inputs, DDP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mcc.cli import evaluate as evaluate_cli
from mcc.cli import predict as predict_cli
from mcc.training import net_from_checkpoint, read_label_png
from mcc.training.predict import classification_scores, find_images, predict


@pytest.fixture
def photos(synthetic, tmp_path):
    """The 3 validation images of the synthetic root as a plain folder, one of them in a sub-folder."""
    root, _ = synthetic
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for index, target in enumerate(["val_000000.jpg", "val_000001.jpg", "more/val_000002.jpg"]):
        shutil.copy(root / "JPEGImages" / f"val_00000{index}.jpg", folder / target)
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    return folder


def _predict(checkpoint, out, *inputs, extra=()):
    argv = ["--checkpoint", str(checkpoint), "--out-dir", str(out), "--device", "cpu", "--scales", "1.0"]
    with pytest.warns(UserWarning, match="records no class names"):  # the fixture's checkpoint is bare
        return predict_cli.run([*map(str, inputs), *argv, *extra])  # inputs first: --scales takes a list


def test_outputs(synthetic, photos, tmp_path, capsys):
    _, checkpoint = synthetic
    out = tmp_path / "out"
    summary = _predict(checkpoint, out, photos, extra=["--overlay"])
    assert (summary["num_images"], summary["written"], summary["skipped"], summary["bad"]) == (3, 3, 0, [])
    assert "3 written" in capsys.readouterr().out
    names = ["val_000000", "val_000001", "more/val_000002"]
    assert (out / "classes.txt").read_text().split() == ["background"] + [f"class_{i}" for i in range(1, 6)]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == names
    for name, record in zip(names, records):
        with Image.open(out / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (64, 64) == (record["width"], record["height"])
        mask = read_label_png(out / f"{name}.png")
        shares = np.bincount(mask.ravel(), minlength=6) / mask.size
        assert list(record["pixels"].values()) == pytest.approx(shares.tolist(), abs=1e-6)
        assert set(record["scores"]) == {f"class_{i}" for i in range(1, 6)}
        assert record["tags"] == [n for n, s in record["scores"].items() if s >= 0.5]
        with Image.open(out / "overlays" / f"{name}.jpg") as overlay:
            assert overlay.size == (64, 64)
    assert not list(out.rglob("*.tmp")) and not (out / ".records").exists()


def test_masks_equal_mcc_evaluate_save_pred(synthetic, photos, tmp_path):
    root, checkpoint = synthetic
    for extra in ([], ["--no-flip", "--scales", "1.0", "0.75"]):
        out = tmp_path / f"pred{len(extra)}"
        _predict(checkpoint, out, photos, extra=extra)
        evaluation = tmp_path / f"eval{len(extra)}"
        evaluate_cli.run(
            ["--checkpoint", str(checkpoint), "--data-root", str(root), "--device", "cpu", "--scales", "1.0",
             *extra, "--no-cams", "--out-dir", str(evaluation), "--save-pred"]
        )  # fmt: skip
        for index, name in enumerate(["val_000000", "val_000001", "more/val_000002"]):
            np.testing.assert_array_equal(
                read_label_png(out / f"{name}.png"),
                read_label_png(evaluation / "pred" / f"val_00000{index}.png"),
            )


def test_resume_skips_done_images_and_overwrite_redoes_them(synthetic, photos, tmp_path):
    _, checkpoint = synthetic
    out = tmp_path / "out"
    _predict(checkpoint, out, photos / "val_000000.jpg", extra=["--num-workers", "0"])  # decoded in-process
    first = (out / "val_000000.png").stat().st_mtime_ns
    # a killed run: a mask without its record, and a torn record line in a rank's part file
    (out / ".records").mkdir()
    (out / ".records" / "rank0.jsonl").write_text('{"image": "val_0000')
    shutil.copy(out / "val_000000.png", out / "val_000001.png")
    summary = _predict(checkpoint, out, photos)
    assert (summary["written"], summary["skipped"]) == (2, 1)  # val_000001 redone: its record was missing
    assert (out / "val_000000.png").stat().st_mtime_ns == first
    records = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(r)["image"] for r in records] == ["val_000000", "val_000001", "more/val_000002"]
    assert _predict(checkpoint, out, photos)["skipped"] == 3
    assert _predict(checkpoint, out, photos, extra=["--overwrite"])["written"] == 3
    # other settings into the same folder: refused, one line, status 2
    with pytest.raises(SystemExit) as exit_info:
        _predict(checkpoint, out, photos, extra=["--no-flip"])
    assert exit_info.value.code == 2


def test_bad_inputs_are_named_before_any_work(synthetic, photos, tmp_path, capsys):
    _, checkpoint = synthetic
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "more" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _predict(checkpoint, out, photos)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "2 input(s) are not readable images" in err and "broken.jpg" in err and "empty.png" in err
    assert not list(out.glob("*.png"))  # nothing written
    summary = _predict(checkpoint, out, photos, extra=["--skip-bad"])
    assert summary["written"] == 3 and len(summary["bad"]) == 2
    assert "skipped 2 unreadable input(s)" in capsys.readouterr().err
    for argv, message in [
        ([str(tmp_path / "nowhere")], "input not found"),
        ([str(photos / "*.gif")], "matches no file"),
        ([str(photos / "val_000000.jpg"), str(tmp_path / "x" / "val_000000.jpg")], "input not found"),
    ]:
        with pytest.raises(SystemExit):
            predict_cli.run(["--checkpoint", str(checkpoint), "--out-dir", str(out), *argv])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_cli.run(["--checkpoint", str(tmp_path / "none.pt"), "--out-dir", str(out), str(photos)])
    assert "--checkpoint: checkpoint not found" in capsys.readouterr().err


def test_truncated_image_stops_with_its_name_unless_skip_bad(synthetic, photos, tmp_path, capsys):
    _, checkpoint = synthetic
    data = (photos / "val_000001.jpg").read_bytes()
    (photos / "val_000001.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _predict(checkpoint, out, photos)
    assert exit_info.value.code == 2 and "val_000001.jpg" in capsys.readouterr().err
    assert not list(out.rglob("*.tmp"))
    summary = _predict(checkpoint, out, photos, extra=["--skip-bad"])
    assert summary["written"] + summary["skipped"] == 2 and "val_000001.jpg" in summary["bad"][0][0]


def test_inputs_names_and_clashes(photos, tmp_path):
    found = find_images([photos, photos / "val_000000.jpg", str(photos / "more" / "*.jpg")])
    assert [i.name for i in found] == ["val_000000", "val_000001", "more/val_000002"]  # each file once
    names = [i.name for i in find_images([photos])]
    assert names == ["val_000000", "val_000001", "more/val_000002"]
    assert [i.name for i in find_images([str(photos / "**" / "*.jpg")])] == [
        "more/val_000002", "val_000000", "val_000001"
    ]  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos / "val_000000.jpg", other / "val_000000.png")
    with pytest.raises(ValueError, match="1 output name"):
        find_images([photos, other])
    # the output folder inside an input folder is not searched
    (photos / "out").mkdir()
    shutil.copy(photos / "val_000000.jpg", photos / "out" / "x.jpg")
    assert "out/x" not in [i.name for i in find_images([photos], exclude=photos / "out")]


def test_library_predict_batches_and_tag_scores(synthetic, photos):
    _, checkpoint = synthetic
    net = net_from_checkpoint(checkpoint)
    paths = sorted(photos.rglob("*.jpg"))
    one = predict(net, paths, scales=(1.0,), batch_size=1)
    batched = predict(net, paths, scales=(1.0,), batch_size=3)
    for a, b in zip(one, batched):
        assert (a.mask == b.mask).float().mean() > 0.999
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
        assert a.mask.shape == (64, 64) and a.scores.shape == (5,)
    with pytest.raises(ValueError, match="batch_size"):
        predict(net, paths, batch_size=0)


def test_classification_scores_by_hand():
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.1, 0.8]])
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    record = classification_scores(scores, labels, ["a", "b"])
    # class a: ranks 1 (pos), 2 (neg), 3 (pos): AP = (1 + 2/3) / 2; class b: ranks 1 (neg), 2 (pos): 1/2
    assert record["per_class"]["a"]["ap"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert record["per_class"]["b"]["ap"] == pytest.approx(50.0)
    assert record["map"] == pytest.approx((100 * (1 + 2 / 3) / 2 + 50) / 2)
    # tags >= 0.5: (0,a) (1,a) (1,b) (3,b); truth (0,a) (1,b) (2,a): tp 2, precision 2/4, recall 2/3
    assert record["precision"] == pytest.approx(50.0) and record["recall"] == pytest.approx(200 / 3)
    assert record["f1"] == pytest.approx(100 * 2 * 2 / (4 + 3))
    assert classification_scores(scores, np.zeros((4, 2)))["map"] is None


@pytest.mark.slow
def test_torchrun_two_processes_share_the_images(synthetic, photos, tmp_path):
    _, checkpoint = synthetic
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    (photos / "val_000003.jpg").write_bytes((photos / "val_000000.jpg").read_bytes())
    _predict(checkpoint, out, photos / "val_000000.jpg")  # one image done before: skipped by its rank
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
        "-m", "mcc.cli.predict", "--checkpoint", str(checkpoint), "--out-dir", str(out), "--device", "cpu",
        "--scales", "1.0", "--dist-timeout", "120", str(photos),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "4 images" in done.stdout and "3 written, 1 already done" in done.stdout
    single = tmp_path / "single"
    _predict(checkpoint, single, photos)
    for path in single.rglob("*.png"):
        assert (out / path.relative_to(single)).read_bytes() == path.read_bytes()
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == [
        json.loads(line)["image"] for line in (single / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 4 and not (out / ".records").exists()


def test_recorded_class_names_are_used_and_checked_downstream(synthetic, photos, tmp_path, capsys):
    from mcc.training import load_checkpoint, save_checkpoint

    root, checkpoint = synthetic
    state = load_checkpoint(checkpoint)
    names = ["background", "disc", "box", "tri", "ring", "cross"]  # the synthetic root's classes.txt
    state["config"]["extra"]["class_names"] = names
    named = save_checkpoint(tmp_path / "named.pt", state)
    assert net_from_checkpoint(named).class_names == names
    out = tmp_path / "out"
    predict_cli.run([str(photos), "--checkpoint", str(named), "--out-dir", str(out), "--scales", "1.0"])
    assert (out / "classes.txt").read_text().split() == names
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert list(record["scores"]) == names[1:] and list(record["pixels"]) == names
    # evaluation of a root whose classes.txt lists the same classes in another order: refused
    shuffled = tmp_path / "shuffled"
    shutil.copytree(root, shuffled)
    (shuffled / "classes.txt").write_text("\n".join(["background", "box", "disc", "tri", "ring", "cross"]))
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--checkpoint", str(named), "--data-root", str(shuffled), "--no-cams"])
    assert exit_info.value.code == 2 and "the same classes in another order" in capsys.readouterr().err


def test_checkpoint_and_option_mistakes_are_one_line(synthetic, photos, tmp_path, capsys):
    _, checkpoint = synthetic
    base = [str(photos), "--out-dir", str(tmp_path / "o"), "--device", "cpu"]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    cases = [
        (["--checkpoint", str(garbage)], "corrupt"),
        (["--checkpoint", str(truncated)], "truncated"),
        (["--checkpoint", str(checkpoint), "--no-such-option"], "unrecognized arguments"),
        (["--checkpoint", str(checkpoint), "--device", "gpu0"], "--device"),
        (["--checkpoint", str(checkpoint), "--batch-size", "0"], "--batch-size"),
        (["--checkpoint", str(checkpoint), "--tag-threshold", "2"], "--tag-threshold"),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit) as exit_info:
            predict_cli.main([*base, *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("mcc-predict: error: ")
        assert match in err[0], err
