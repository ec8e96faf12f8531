"""Resuming with other settings: every changed setting is named; another network is refused in one line."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from training_helpers import NUM_CLASSES, SIZE, TINY_CONFIG, datasets, settings, tiny_net, write_root

from mcc.network import MCCConfig, MCCNet
from mcc.training import CheckpointError, train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=4)


def _train(root, work_dir, net=None, **overrides):
    train_set, _ = datasets(root)
    lines: list[str] = []
    train(net or tiny_net(), train_set, settings(work_dir, **overrides), device="cpu", log=lines.append)
    return lines


def test_changed_settings_are_each_named_with_the_value_the_run_uses(root, tmp_path):
    _train(root, tmp_path, max_iters=4, stop_after=1)
    with pytest.warns(UserWarning) as caught:
        lines = _train(root, tmp_path, max_iters=6, base_lr=2e-3, resume="auto", log_every=2)
    warned = sorted(str(w.message) for w in caught if "resume:" in str(w.message))
    assert len(warned) == 2, warned  # log_every and resume itself are not results' settings
    assert "base_lr changed: 0.001 in the checkpoint, the resumed run uses 0.002" in warned[0]
    assert "max_iters changed: 4 in the checkpoint, the resumed run uses 6" in warned[1]
    assert sum("warning: resume:" in line for line in lines) == 2


def test_same_settings_resume_without_a_warning(root, tmp_path, recwarn):
    _train(root, tmp_path, stop_after=1)
    _train(root, tmp_path, resume="auto", stop_after=2)
    assert not [w for w in recwarn if "resume:" in str(w.message)]


def test_another_network_is_refused_in_a_short_message(root, tmp_path):
    _train(root, tmp_path, stop_after=1)
    torch.manual_seed(0)
    wider = VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=48, depth=3, num_heads=2)
    net = MCCNet(wider, NUM_CLASSES, MCCConfig.released(**TINY_CONFIG))
    with pytest.raises(CheckpointError, match="does not fit this network") as info:
        _train(root, tmp_path, net=net, resume="auto")
    message = str(info.value)
    assert "of another shape (first:" in message and len(message) < 400, message
    other = MCCNet(VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=32, depth=3, num_heads=2), 3)
    with pytest.raises(CheckpointError, match="5 foreground classes, this run has 3"):
        _train(root, tmp_path, net=other, resume="auto")
