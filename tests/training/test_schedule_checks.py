"""Warm-up longer than the run, and schedule switches beyond it: errors, warnings, a scaled schedule."""

from __future__ import annotations

import warnings

import pytest
from training_helpers import datasets, settings, tiny_net, write_root

import mcc.schedule
from mcc.network import MCCConfig
from mcc.schedule import poly_warmup_lr, scaled_warmup_iters
from mcc.training import TrainSettings, schedule_warnings, train


def test_poly_warmup_lr_keeps_the_formula_and_warns_once():
    mcc.schedule._WARNED.clear()
    with pytest.warns(UserWarning, match=r"warmup_iters \(30\).*max_iters \(20\)"):
        value = poly_warmup_lr(5, 1.0, warmup_iters=30, warmup_ratio=0.1, max_iters=20)
    assert value == pytest.approx(1 - (1 - 5 / 30) * 0.9)  # the documented warm-up formula, unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(25):  # once per (warmup_iters, max_iters): not again on later steps
            poly_warmup_lr(step, 1.0, warmup_iters=30, max_iters=20)
        poly_warmup_lr(3, 1.0, warmup_iters=20, max_iters=20)  # equal lengths: no warning here
    # the contract's first case wins: a step inside the warm-up gets the warm-up rate even past max_iters
    assert poly_warmup_lr(20, 1.0, warmup_iters=30, max_iters=20) == pytest.approx(1 - (10 / 30) * (1 - 1e-6))


def test_train_settings_refuse_a_warmup_longer_than_the_run(tmp_path):
    with pytest.raises(ValueError, match=r"warmup_iters \(1500\).*max_iters \(800\)"):
        TrainSettings(work_dir=str(tmp_path), max_iters=800)
    TrainSettings(work_dir=str(tmp_path), max_iters=800, warmup_iters=800)  # equal is allowed


def test_scaled_schedule_of_the_presets():
    released = MCCConfig.released()
    scaled = released.scaled_schedule(800)
    assert scaled.seg_start_step == round(released.seg_start_step * 800 / 20000)
    assert scaled.final_cam_positives_from == round(released.final_cam_positives_from * 800 / 20000)
    # everything else is the preset's
    for name in ("mask_ratio", "w_seg", "low_thre", "high_thre", "positive_cam"):
        assert getattr(scaled, name) == getattr(released, name)
    assert released.scaled_schedule(20000) == released
    assert released.scaled_schedule(40000).seg_start_step == 2 * released.seg_start_step
    coco = MCCConfig.released("coco").scaled_schedule(8000, published_iters=80000)
    assert coco.seg_start_step == 800 and coco.final_cam_positives_from is None
    # a switch after step 0 stays after step 0, however short the run
    assert MCCConfig.released().scaled_schedule(2).seg_start_step == 1
    assert scaled_warmup_iters(800) == 60 and scaled_warmup_iters(80000, 80000) == 1500
    assert scaled_warmup_iters(8000, published_iters=80000, warmup_iters=1500) == 150
    for bad, name in ((dict(max_iters=0), "max_iters"), (dict(max_iters=10, published_iters=0), "published")):
        with pytest.raises(ValueError, match=name):
            MCCConfig.released().scaled_schedule(**bad)
        with pytest.raises(ValueError, match=name):
            scaled_warmup_iters(**bad)


def test_schedule_warnings_name_each_switch(tmp_path):
    config = MCCConfig.released()
    run = TrainSettings(work_dir=str(tmp_path), max_iters=1500, warmup_iters=1500)
    lines = schedule_warnings(config, run)
    assert len(lines) == 3
    assert "warm-up" in lines[0] and f"seg_start_step ({config.seg_start_step})" in lines[1]
    assert f"final_cam_positives_from ({config.final_cam_positives_from})" in lines[2]
    assert all("scaled_schedule" in line for line in lines[1:])
    short = TrainSettings(work_dir=str(tmp_path), max_iters=800, warmup_iters=60)
    assert schedule_warnings(config.scaled_schedule(800), short) == []
    assert schedule_warnings(MCCConfig.paper(), TrainSettings(work_dir=str(tmp_path))) == []


def test_train_warns_and_logs(tmp_path):
    root = write_root(tmp_path / "voc", num_train=2, num_val=1)
    train_set, _ = datasets(root)
    net = tiny_net()
    net.config = MCCConfig.released(**{**_tiny_fields(net.config), "seg_start_step": 5})
    lines = []
    with pytest.warns(UserWarning, match=r"seg_start_step \(5\)"):
        train(
            net,
            train_set,
            settings(tmp_path / "run", max_iters=1, warmup_iters=1),
            device="cpu",
            log=lines.append,
        )
    assert any("seg_start_step (5)" in line for line in lines)


def _tiny_fields(config: MCCConfig) -> dict:
    names = ("projector_dim", "projector_hidden_dim", "projector_bottleneck_dim", "decoder_dim", "num_views")
    return {name: getattr(config, name) for name in (*names, "mask_ratio", "mask_scale")}
