"""The training loop's records: metrics.json (after every evaluation and at the end) and the progress bar."""

from __future__ import annotations

import json

import pytest
from training_helpers import datasets, settings, tiny_net, write_root

import mcc.training.loop as loop
from mcc.training import train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=6)


def run(root, work_dir, with_val=True, log=None, **overrides):
    train_set, val_set = datasets(root)
    return train(
        tiny_net(),
        train_set,
        settings(work_dir, **overrides),
        val_set=val_set if with_val else None,
        device="cpu",
        log=log or (lambda message: None),
    )


def read_metrics(work_dir):
    return json.loads((work_dir / "metrics.json").read_text())


def test_metrics_json_holds_the_last_and_best_scores(root, tmp_path):
    result = run(root, tmp_path, max_iters=3, eval_every=1, best_metric="cam")
    metrics = read_metrics(tmp_path)
    assert metrics["iterations"] == 3 and metrics["max_iters"] == 3 and metrics["resumed_from"] == 0
    assert metrics["world_size"] == 1 and metrics["batch_size"] == 2 and metrics["best_metric"] == "cam"
    assert metrics["wall_time_s"] > 0 and metrics["images_per_s"] > 0
    # images_per_s leaves the evaluations out: at least the rate over the whole call
    assert metrics["images_per_s"] >= 3 * 2 / metrics["wall_time_s"]
    last_step, last_mious = result.evaluations[-1]
    assert metrics["last"]["iteration"] == last_step == 3
    class_names = datasets(root)[1].class_names
    for name in ("cam", "seg"):
        score = metrics["last"]["scores"][name]
        assert score["miou"] == pytest.approx(100 * last_mious[name])
        assert list(score["per_class_iou"]) == class_names
        ious = [v for v in score["per_class_iou"].values() if v is not None]
        assert sum(ious) / len(ious) == pytest.approx(score["miou"])
    best_value, best_step = result.best
    assert metrics["best"]["iteration"] == best_step and metrics["best"]["metric"] == "cam"
    assert metrics["best"]["scores"]["cam"]["miou"] == pytest.approx(100 * best_value)
    assert not list(tmp_path.glob(".metrics.json*"))  # no temporary file left behind


def test_metrics_json_is_written_after_every_evaluation_and_at_the_end(root, tmp_path, monkeypatch):
    writes = []
    real = loop.write_json

    def spy(path, data):
        writes.append((data["iterations"], data["last"] and data["last"]["iteration"]))
        return real(path, data)

    monkeypatch.setattr(loop, "write_json", spy)
    run(root, tmp_path, max_iters=4, eval_every=2)
    assert writes == [(2, 2), (4, 4), (4, 4)]
    writes.clear()
    run(root, tmp_path / "no_val", with_val=False, max_iters=2)
    assert writes == [(2, None)]
    metrics = read_metrics(tmp_path / "no_val")
    assert metrics["last"] is None and metrics["best"] is None and metrics["iterations"] == 2


def test_resume_keeps_the_earlier_best_scores(root, tmp_path):
    run(root, tmp_path, max_iters=3, eval_every=1, best_metric="cam", stop_after=2)
    first = read_metrics(tmp_path)
    assert first["iterations"] == 2 and first["best"]["iteration"] in (1, 2)
    result = run(root, tmp_path, max_iters=3, eval_every=1, best_metric="cam", resume="auto")
    metrics = read_metrics(tmp_path)
    assert metrics["resumed_from"] == 2 and metrics["iterations"] == 3
    best_value, best_step = result.best
    assert metrics["best"]["iteration"] == best_step
    assert metrics["best"]["scores"]["cam"]["miou"] == pytest.approx(100 * best_value)
    if best_step < 3:  # the best came from the first call: its scores were carried over
        assert metrics["best"] == first["best"]


def test_progress_bar_only_when_asked_or_on_a_terminal(root, tmp_path, capsys):
    pytest.importorskip("tqdm")
    run(root, tmp_path / "bar", log=print, max_iters=2, progress=True)
    out = capsys.readouterr().out
    assert "train: 100%" in out and "2/2" in out
    assert "step 1/2" in out and "step 2/2" in out  # the log lines stay
    run(root, tmp_path / "auto", log=print, max_iters=2)  # captured stdout is not a terminal
    out = capsys.readouterr().out
    assert "train:" not in out and "step 2/2" in out
    line = next(text for text in out.splitlines() if "step 2/2" in text)
    assert " total " in line and " mcc " in line  # the options that are off leave their terms out
    assert "consistency" not in line and "seg_to_cam" not in line
