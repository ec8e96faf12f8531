"""Tiny network, synthetic data and settings shared by the training tests (CPU, seconds per run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from mcc.data import VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.network import MCCConfig, MCCNet
from mcc.training import TrainSettings

SIZE = 64
NUM_CLASSES = 5  # the synthetic VOC: background + 5 shapes

TINY_CONFIG = dict(
    projector_dim=32,
    projector_hidden_dim=64,
    projector_bottleneck_dim=16,
    decoder_dim=32,
    num_views=4,
    mask_ratio=0.5,
    mask_scale=2,
    seg_start_step=1,  # the segmentation loss counts from the second step
    final_cam_positives_from=3,  # and the positiveness switch happens inside short runs
)


def write_root(path: Path, num_train: int = 8, num_val: int = 3) -> Path:
    return make_synthetic_voc(path, num_train, num_val, SIZE, seed=0)


def tiny_net(seed: int = 0) -> MCCNet:
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    return MCCNet(vit, NUM_CLASSES, MCCConfig.released(**TINY_CONFIG))


def datasets(root: Path) -> tuple[VOCTrainViews, VOCSegmentation]:
    return VOCTrainViews(root, "train", crop_size=SIZE, seed=0), VOCSegmentation(root, "val")


def settings(work_dir: Path, **overrides) -> TrainSettings:
    base = TrainSettings(
        work_dir=str(work_dir),
        max_iters=4,
        batch_size=2,
        num_workers=0,
        warmup_iters=2,
        log_every=1,
        eval_every=0,
        eval_at_end=False,
        save_every=0,
        base_lr=1e-3,
    )
    return dataclasses.replace(base, **overrides)


def parameters(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in net.state_dict().items()}
