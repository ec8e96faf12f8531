"""A pretrained start without downloads: a small ViT pretrained as a classifier on synthetic shapes.

MCC is meant for an ImageNet-pretrained ViT. Where no weights can be downloaded, :func:`pretrain_vit`
trains a small timm ``VisionTransformer`` as a multi-label classifier on
:class:`~mcc.data.synthetic_shapes.SyntheticShapes` (a separate synthetic set: other classes, other
images) and :func:`save_standin` / :func:`load_standin` keep it as a checkpoint that later runs load.
It is a *stand-in*: tiny, 16 classes, the same drawing code as the synthetic VOC; see
:mod:`mcc.data.synthetic_shapes` for what it is not.

Command line: ``python -m mcc.cli.pretrain --out runs/pretrain/standin_vit.pt``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset

from mcc.training.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "PretrainSettings",
    "ViTArch",
    "average_precision",
    "load_standin",
    "pretrain_vit",
    "save_standin",
]

_FORMAT = "mcc-standin-vit/1"


@dataclass(frozen=True)
class ViTArch:
    """Shape of the small timm ``VisionTransformer`` (defaults: the CPU demo's encoder).

    Attributes:
        img_size: input side in pixels (the position embedding's grid is ``img_size / patch_size``).
        patch_size: patch side in pixels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
    """

    img_size: int = 64
    patch_size: int = 8
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")

    def build(self, num_classes: int = 0) -> VisionTransformer:
        """A randomly initialised ``VisionTransformer`` of this shape (``num_classes=0``: no head)."""
        return VisionTransformer(
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            num_classes=num_classes,
        )


@dataclass(frozen=True)
class PretrainSettings:
    """Optimisation of :func:`pretrain_vit` (AdamW, linear warm-up then cosine decay).

    Attributes:
        steps: optimiser steps.
        batch_size: images per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from 0.
        seed: seed of the batch order, the flips and the head's initialisation.
        log_every: steps between log lines.
    """

    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision of every class (mean of the precision at each positive's rank).

    Args:
        scores: (N, K) float, higher = more likely present.
        labels: (N, K) multi-hot.

    Returns:
        (K,) float64 AP per class; NaN for a class without positives.
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and labels must both be (N, K), got {tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    order = scores.double().argsort(0, descending=True)
    hits = labels.double().gather(0, order) > 0
    ranks = torch.arange(1, len(scores) + 1, dtype=torch.float64)[:, None]
    precision = hits.double().cumsum(0) / ranks
    positives = hits.sum(0)
    ap = (precision * hits).sum(0) / positives.clamp(min=1)
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


def _lr_at(step: int, settings: PretrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * (step - settings.warmup_steps) / span))


@torch.no_grad()
def _evaluate(vit: torch.nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
    was_training = vit.training
    vit.eval()
    scores, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        scores.append(vit(batch["image"]))
        labels.append(batch["label"])
    vit.train(was_training)
    scores, labels = torch.cat(scores), torch.cat(labels)
    exact = ((scores > 0).float() == labels).all(1).double().mean()
    return {"mAP": float(average_precision(scores, labels).nanmean()), "exact_match": float(exact)}


def pretrain_vit(
    vit: VisionTransformer,
    train_set: Dataset,
    settings: PretrainSettings,
    *,
    val_set: Dataset | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains ``vit`` (with a K-way head) as a multi-label classifier (multilabel soft-margin loss).

    The class token feeds the head, as in DeiT, so the class token MCC contrasts is a trained summary.

    Args:
        vit: a timm ``VisionTransformer`` whose head has K outputs (``ViTArch.build(K)``); trained in place.
        train_set: samples ``{"image": (3, S, S), "label": (K,)}``, e.g. ``SyntheticShapes(..., flip=True)``.
        settings: :class:`PretrainSettings`.
        val_set: scored at the end (mean average precision over classes, exact-match rate).
        log: where the log lines go.

    Returns:
        ``{"history": [{"step", "lr", "loss"}...], "val": {"mAP", "exact_match"} or None,
        "wall_time_s": float}``.
    """
    head = getattr(vit, "head", None)
    num_classes = getattr(train_set, "num_classes", None)
    if not isinstance(head, torch.nn.Linear) or (
        num_classes is not None and head.out_features != num_classes
    ):
        raise ValueError(
            f"vit must have a linear head with train_set.num_classes = {num_classes} outputs, got {head}"
        )
    if len(train_set) < settings.batch_size:  # drop_last would leave no batch: the loop never ends
        raise ValueError(
            f"batch_size {settings.batch_size} exceeds the {len(train_set)} training images (no full batch)"
        )
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # the random flips
    optimizer = torch.optim.AdamW(vit.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    vit.train()
    history: list[dict[str, float]] = []
    tic = time.perf_counter()
    step = 0
    while step < settings.steps:
        loader = DataLoader(
            train_set, batch_size=settings.batch_size, shuffle=True, drop_last=True, generator=generator
        )
        for batch in loader:
            if step == settings.steps:
                break
            lr = _lr_at(step, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.multilabel_soft_margin_loss(vit(batch["image"]), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append({"step": step, "lr": lr, "loss": float(loss.detach())})
            step += 1
            if step % settings.log_every == 0 or step == settings.steps:
                window = history[-settings.log_every :]
                mean = sum(h["loss"] for h in window) / len(window)
                log(f"pretrain step {step}/{settings.steps} lr {lr:.2e} loss {mean:.4f}")
    val = _evaluate(vit, val_set, settings.batch_size) if val_set is not None else None
    if val is not None:
        log(f"pretrain val: mAP {100 * val['mAP']:.1f} exact match {100 * val['exact_match']:.1f} %")
    return {"history": history, "val": val, "wall_time_s": time.perf_counter() - tic}


def save_standin(
    path: str | os.PathLike, vit: VisionTransformer, arch: ViTArch, meta: dict[str, Any]
) -> Path:
    """Writes the encoder weights (head dropped), its :class:`ViTArch` and ``meta``, atomically."""
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    return save_checkpoint(path, {"format": _FORMAT, "arch": asdict(arch), "model": state, "meta": meta})


def load_standin(path: str | os.PathLike) -> tuple[VisionTransformer, dict[str, Any]]:
    """The encoder of a :func:`save_standin` checkpoint (no head) and the checkpoint's ``meta``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a stand-in checkpoint.
    """
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not a stand-in ViT checkpoint (format {_FORMAT})")
    vit = ViTArch(**state["arch"]).build(num_classes=0)
    vit.load_state_dict(state["model"], strict=True)
    return vit, state.get("meta", {})
