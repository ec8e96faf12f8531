"""A tiny synthetic VOC and a checkpoint in the training commands' format, shared by the CLI tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mcc.data import make_synthetic_voc
from mcc.network import MCCConfig, MCCNet
from mcc.training import build_vit, save_checkpoint

TINY_CONFIG = dict(decoder_dim=32, projector_dim=32, projector_hidden_dim=64, projector_bottleneck_dim=16)


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A freshly initialised tiny network saved as mcc-train-voc saves its checkpoints."""
    torch.manual_seed(seed)
    config = MCCConfig.released("voc", **TINY_CONFIG)
    net = MCCNet(build_vit("test_vit", img_size=64), 5, config)
    with torch.no_grad():  # a non-trivial decoder, so the predictions use several classes
        for parameter in net.decoder.parameters():
            parameter.normal_(0, 0.5)
    state = {
        "model": net.state_dict(),
        "step": 0,
        "config": {
            "mcc": dataclasses.asdict(config),
            "num_classes": 5,
            "extra": {"model": "test_vit", "crop_size": 64, "dataset": "voc"},
        },
    }
    return save_checkpoint(path, state)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root with train 4 / val 3 images of 64 px and a ``test`` split without masks, checkpoint)."""
    base = tmp_path_factory.mktemp("cli")
    root = make_synthetic_voc(base / "voc", 4, 3, 64, seed=0)
    test_ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text()
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text(test_ids)  # images exist, masks ignored
    return root, write_checkpoint(base / "ck.pt")
