"""train() with DuPL's and CoSA's options: the strong view reaches the step, the EMA teacher is kept."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from training_helpers import datasets, parameters, settings, tiny_net, write_root

from mcc.data import StrongAugment
from mcc.training import load_checkpoint, train

OPTIONS = dict(
    dynamic_thre=(0.6,) * 5,
    dynamic_thre_steps=(0, 4),
    gmm_filter_from=1,
    gmm_min_pixels=20,
    w_consistency=0.05,
    consistency_from=1,
    consistency_conf_thre=0.0,
    ema_teacher_decay=0.5,
    w_seg_to_cam=0.05,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=6)


def run(root, work_dir, seed=0, **overrides):
    net = tiny_net(seed)
    net.config = dataclasses.replace(net.config, **OPTIONS)
    train_set, _ = datasets(root)
    train_set.strong_view = StrongAugment()
    result = train(net, train_set, settings(work_dir, **overrides), device="cpu", log=lambda m: None)
    return net, result


@pytest.mark.slow
def test_options_train_and_resume_exactly_with_the_teacher(root, tmp_path):
    straight, straight_result = run(root, tmp_path / "straight", max_iters=4, save_every=1)
    history = straight_result.history
    assert all(h["consistency"] > 0 for h in history[1:]) and all(h["seg_to_cam"] > 0 for h in history[1:])
    state = load_checkpoint(tmp_path / "straight" / "last.pt", map_location="cpu")
    teacher = {k[len("module.") :]: v for k, v in state["ema_teacher"].items() if k.startswith("module.")}
    student = straight.state_dict()
    assert teacher.keys() == student.keys()
    moved = [k for k in student if student[k].is_floating_point() and not torch.equal(teacher[k], student[k])]
    assert moved  # the teacher lags behind the student
    _, first = run(root, tmp_path / "resumed", max_iters=4, stop_after=2, save_every=1)
    resumed, second = run(root, tmp_path / "resumed", seed=5, max_iters=4, resume="auto", save_every=1)
    assert first.history + second.history == history  # the teacher (labels) came back from the checkpoint
    expected = parameters(straight)
    for name, value in parameters(resumed).items():
        assert torch.equal(value, expected[name]), name
