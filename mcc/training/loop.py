"""The MCC training loop shared by the example scripts: schedule, DDP, evaluation, checkpoints, resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from mcc.data import seed_worker
from mcc.network import MCCConfig, MCCLosses, MCCNet, MCCTrainingStep
from mcc.schedule import poly_warmup_lr, scaled_warmup_iters
from mcc.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mcc.training.distributed import DistributedContext, init_distributed
from mcc.training.evaluation import check_pixel_stats, evaluate
from mcc.training.outputs import scores_record, write_json
from mcc.training.sampler import StepBatchSampler

__all__ = ["TrainResult", "TrainSettings", "resolve_resume", "schedule_warnings", "train"]

LOSS_NAMES = MCCLosses._fields  # total, cls, ..., seg, reg, consistency, seg_to_cam, positive_rate


@dataclass(frozen=True)
class TrainSettings:
    """Everything :func:`train` needs besides the network and the data (defaults: published VOC run).

    Attributes:
        work_dir: folder of ``config.json``, ``last.pt``, ``best.pt`` and the tensorboard logs.
        max_iters: optimiser steps (VOC 20000, COCO 80000); also the end of the poly schedule.
        batch_size: images per optimiser step over all ranks (VOC 4, COCO 8); divisible by the number
            of ranks times ``accumulation_steps``.
        accumulation_steps: micro-batches per rank and step. Gradients are averaged over micro-batches
            and ranks and the teacher projector moves once per step, so one process with batch 4 and 4
            accumulation steps computes what 4 GPUs with batch 1 each (the published run) compute.
        base_lr: encoder learning rate (heads: ``x head_lr_scale`` of the config).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_iters, warmup_ratio, power: :func:`~mcc.poly_warmup_lr`. ``warmup_iters`` may not exceed
            ``max_iters`` (ValueError); for a short run use :func:`~mcc.schedule.scaled_warmup_iters`
            with :meth:`~mcc.MCCConfig.scaled_schedule`.
        seed: seed of the batch order and of the key masks (the data's own seed is separate).
        num_workers: DataLoader workers per rank.
        amp: bf16 autocast on CUDA (ignored, with a message, elsewhere).
        fast: the exact shortcuts of the training step (docs/method.md section 3).
        find_unused_parameters: passed to DDP.
        log_every: steps between log lines (and tensorboard points).
        eval_every: steps between evaluations (0: only at the end); needs a validation set.
        eval_at_end: evaluate after the last step.
        eval_max_images: score only the first N validation images (None: all).
        eval_bkg_thre: background threshold of the CAM labels (VOC 0.5, COCO 0.45).
        save_every: steps between writes of ``last.pt`` (it is always written at the end).
        save_best: also keep ``best.pt``, the checkpoint with the highest ``best_metric``.
        best_metric: ``"seg"`` or ``"cam"`` mIoU.
        resume: checkpoint to continue from, ``"auto"`` (``work_dir/last.pt`` when it exists) or None.
        stop_after: stop once this many steps are done, writing ``last.pt``, while the schedule still
            runs to ``max_iters`` (a time-limited job that a later ``resume="auto"`` continues).
        tensorboard: also log to ``work_dir/tb`` (needs the ``tensorboard`` package).
        progress: a progress bar on rank 0 (needs ``tqdm``); None: only when stdout is a terminal. The log
            lines are printed either way (files and CI logs keep them).
    """

    work_dir: str
    max_iters: int = 20000
    batch_size: int = 4
    accumulation_steps: int = 1
    base_lr: float = 6e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 0.9
    seed: int = 0
    num_workers: int = 4
    amp: bool = False
    fast: bool = True
    find_unused_parameters: bool = False
    log_every: int = 50
    eval_every: int = 2000
    eval_at_end: bool = True
    eval_max_images: int | None = None
    eval_bkg_thre: float = 0.5
    save_every: int = 2000
    save_best: bool = True
    best_metric: str = "seg"
    resume: str | None = None
    stop_after: int | None = None
    tensorboard: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_iters", "batch_size", "accumulation_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "num_workers", "warmup_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.best_metric not in ("seg", "cam"):
            raise ValueError(f"best_metric must be 'seg' or 'cam', got {self.best_metric!r}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1 or None, got {self.stop_after}")
        if self.base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}")
        if self.warmup_iters > self.max_iters:
            raise ValueError(
                f"warmup_iters ({self.warmup_iters}) must not exceed max_iters ({self.max_iters}): the run "
                "would end inside the warm-up at a tiny learning rate (scaled_warmup_iters(max_iters) gives "
                "the published warm-up scaled to the run)"
            )


@dataclass
class TrainResult:
    """What a call of :func:`train` did.

    Attributes:
        step: optimiser steps done in total (including those before a resume).
        history: one dict per step run by this call: ``step`` (0-based), ``lr`` and the loss terms of
            :class:`~mcc.MCCLosses` (this rank's, averaged over its micro-batches).
        evaluations: ``(steps done, {"cam": mIoU, "seg": mIoU})`` for every evaluation of this call.
        best: ``(mIoU, steps done)`` of the best evaluation so far (across resumes), or None.
        work_dir: where the files are.
    """

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    best: tuple[float, int] | None = None
    work_dir: Path | None = None


def resolve_resume(resume: str | None, work_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: None, ``"auto"`` (``work_dir/last.pt`` if present) or a path.

    Raises:
        FileNotFoundError: an explicit path that does not exist.
    """
    if resume is None or resume == "":
        return None
    if resume == "auto":
        last = Path(work_dir) / "last.pt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint not found: {path}")
    return path


def schedule_warnings(config: MCCConfig, settings: TrainSettings) -> list[str]:
    """One line per schedule switch that a run of ``settings.max_iters`` steps never reaches.

    The switches are absolute steps: the end of the warm-up (``warmup_iters``), the start of the
    segmentation (and regularised) loss (``seg_start_step``) and of the final-CAM positives
    (``final_cam_positives_from``, unless ``positive_cam == "final"``). A switch at or after
    ``max_iters`` never happens. :func:`train` logs these lines and issues them as ``UserWarning``.

    Args:
        config: the network's :class:`~mcc.MCCConfig`.
        settings: the run's :class:`TrainSettings`.

    Returns:
        the warning lines (empty when every switch happens within the run).
    """
    max_iters = settings.max_iters
    hint = f"use MCCConfig.scaled_schedule({max_iters}) for the published schedule scaled to this run"
    lines = []
    if settings.warmup_iters and settings.warmup_iters >= max_iters:
        lines.append(
            f"the warm-up ends at warmup_iters ({settings.warmup_iters}), not before max_iters "
            f"({max_iters}): the learning rate never reaches its peak (scaled_warmup_iters({max_iters}) = "
            f"{scaled_warmup_iters(max_iters)})"
        )
    if config.seg_start_step >= max_iters:
        lines.append(
            f"seg_start_step ({config.seg_start_step}) >= max_iters ({max_iters}): the segmentation loss "
            f"never counts and the decoder is never trained; {hint}"
        )
    switch = config.final_cam_positives_from
    if switch is not None and config.positive_cam != "final" and switch >= max_iters:
        lines.append(
            f"final_cam_positives_from ({switch}) >= max_iters ({max_iters}): the final CAM never judges "
            f"positiveness; {hint}"
        )
    return lines


def make_ema_teacher(net: MCCNet) -> torch.optim.swa_utils.AveragedModel | None:
    """CoSA's EMA teacher of ``net`` when ``net.config.ema_teacher_decay`` is set, else None.

    ``AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay))``, its first ``update_parameters``
    called here (it copies ``net``); call ``update_parameters(net)`` after every optimiser step and pass
    ``.module`` as the training step's ``teacher``. Parameters only are averaged, as CoSA does; unlike
    CoSA, whose teacher heads start from their own random initialisation and average from the first
    step, the teacher starts as a copy of ``net``.
    """
    decay = net.config.ema_teacher_decay
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    teacher = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay))
    teacher.update_parameters(net)
    teacher.requires_grad_(False)
    return teacher


def _mask_seed(seed: int, step: int, micro_batch: int) -> int:
    # Key masks are a pure function of (seed, step, global micro-batch): resumable and rank-count invariant.
    return int(np.random.SeedSequence([seed, step, micro_batch]).generate_state(1, np.uint64)[0] >> 1)


def _split(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    size = len(batch["x"]) // parts
    return [{k: v[i * size : (i + 1) * size] for k, v in batch.items() if k != "id"} for i in range(parts)]


def _batches(
    train_set: Dataset, sampler: StepBatchSampler, start_step: int, settings: TrainSettings, pin: bool
):
    step = start_step
    while True:
        epoch, offset = sampler.position(step)
        sampler.set_epoch(epoch)
        sampler.set_start(offset)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)  # seen by the workers: they are created per epoch, below
        loader = DataLoader(
            train_set,
            batch_sampler=sampler,
            num_workers=settings.num_workers,
            pin_memory=pin,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch),
        )
        for batch in loader:
            yield batch
            step += 1


class _Logger:
    def __init__(
        self, context: DistributedContext, work_dir: Path, tensorboard: bool, log: Callable[[str], None]
    ):
        self.context = context
        self.log = log if context.is_main else _quiet
        self.writer = None
        if tensorboard and context.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.log(
                    "tensorboard is not installed (pip install 'mcc-wsss[examples]'); logging to stdout only"
                )
            else:
                self.writer = SummaryWriter(str(work_dir / "tb"))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _quiet(message: str) -> None:
    del message


def _mean_over_ranks(values: list[float], context: DistributedContext) -> list[float]:
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return (tensor / context.world_size).tolist()


def _progress_bar(settings: TrainSettings, context: DistributedContext, start: int, end: int):
    """A tqdm bar over the steps on rank 0 (by default only when stdout is a terminal), else None."""
    wanted = settings.progress if settings.progress is not None else sys.stdout.isatty()
    if not (wanted and context.is_main) or start >= end:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=end, initial=start, desc="train", unit="step", file=sys.stdout, dynamic_ncols=True)


def _class_names(val_set: Dataset | None, num_classes: int) -> list[str]:
    names = getattr(val_set, "class_names", None)
    if names is not None and len(names) == num_classes:
        return [str(name) for name in names]
    return ["background"] + [f"class_{index}" for index in range(1, num_classes)]


def _earlier_best(path: Path, best: tuple[float, int] | None) -> dict[str, Any] | None:
    """The best-scores entry of an earlier run's metrics.json, if it is the resumed checkpoint's best."""
    if best is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text()).get("best")
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) and entry.get("iteration") == best[1] else None


def train(
    net: MCCNet,
    train_set: Dataset,
    settings: TrainSettings,
    *,
    val_set: Dataset | None = None,
    context: DistributedContext | None = None,
    device: str | torch.device | None = None,
    extra_config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Trains ``net`` with MCC (docs/method.md section 2): AdamW, poly warm-up lr, optional DDP and bf16.

    Every step draws a global batch from :class:`StepBatchSampler` (order a pure function of
    ``settings.seed`` and the epoch), sets ``lr = poly_warmup_lr(step) x lr_scale`` per parameter group,
    runs :class:`~mcc.MCCTrainingStep` (wrapped in DDP when distributed) on each micro-batch with key
    masks drawn from a generator seeded by ``(seed, step, micro-batch)``, and steps the optimiser.

    Files (rank 0 only) in ``settings.work_dir``: ``config.json`` (settings, network config, class count,
    world size and ``extra_config``), ``last.pt`` every ``save_every`` steps and at the end, ``best.pt``
    at the best evaluation, ``tb/`` with ``tensorboard``, and ``metrics.json`` (written atomically after
    every evaluation and at the end): ``iterations`` (steps done), ``max_iters``, ``resumed_from``,
    ``world_size``, ``batch_size``, ``wall_time_s`` (this call), ``images_per_s`` (training images per
    second, evaluations excluded), ``best_metric``, and ``last`` / ``best``: ``{"iteration": n, "scores":
    ...}`` with the scores as :func:`~mcc.training.scores_record` writes them (``miou`` and
    ``per_class_iou`` in percent), or null before the first evaluation. Checkpoints are written
    atomically and hold the model, the optimiser, the steps done, the random states and the data order,
    so a resumed run continues exactly as an uninterrupted one would (bit for bit on CPU) provided the
    training views are a function of the sample index and epoch (:class:`~mcc.data.VOCTrainViews` with
    ``seed`` set).

    Args:
        net: the network, on any device (it is moved to the context's device).
        train_set: a :class:`~mcc.data.VOCTrainViews`-like dataset: samples with ``x``, ``v1``, ``v2``,
            ``cls_label``, ``img_box``; ``set_epoch(epoch)`` is called when present.
        settings: :class:`TrainSettings`.
        val_set: a :class:`~mcc.data.VOCSegmentation`-like dataset for the periodic evaluation.
        context: the process's :class:`~mcc.training.DistributedContext`; default
            :func:`~mcc.training.init_distributed` ``(device)``.
        device: used when ``context`` is None.
        extra_config: JSON-serialisable values saved with the config and in checkpoints (e.g. the
            encoder name, so a checkpoint can rebuild its network).
        log: where rank 0's log lines go.

    Returns:
        :class:`TrainResult`.
    """
    context = context or init_distributed(device)
    if not context.is_main:
        log = _quiet
    device = context.device
    work_dir = Path(settings.work_dir)
    started = time.perf_counter()
    if settings.batch_size % (context.world_size * settings.accumulation_steps):
        raise ValueError(
            f"batch_size {settings.batch_size} must be divisible by world size {context.world_size} x "
            f"accumulation_steps {settings.accumulation_steps}"
        )
    check_pixel_stats(net, train_set, "train_set")
    if val_set is not None:
        check_pixel_stats(net, val_set, "val_set")
    if settings.eval_every and val_set is None:
        log("no validation set: evaluation is off")
    use_amp = settings.amp and device.type == "cuda"
    if settings.amp and not use_amp:
        log(f"amp: bf16 autocast is used on CUDA only; running in float32 on {device}")
    if getattr(train_set, "seed", 0) is None:
        log("train_set has no seed: its random views depend on the workers, so a resume is not exact")
    if context.is_main:
        for line in schedule_warnings(net.config, settings):
            log(f"warning: {line}")
            warnings.warn(line, UserWarning, stacklevel=2)

    crop_size = getattr(train_set, "crop_size", None)
    if crop_size is not None:
        net.check_crop_size(crop_size)  # before any work, not at the first CAM
    net.to(device)
    net.train()
    optimizer = torch.optim.AdamW(
        net.param_groups(settings.weight_decay), lr=settings.base_lr, betas=settings.betas
    )
    sampler = StepBatchSampler(
        len(train_set),
        settings.batch_size,
        num_replicas=context.world_size,
        rank=context.rank,
        seed=settings.seed,
    )
    data_state = {
        "seed": settings.seed,
        "global_batch_size": settings.batch_size,
        "num_samples": len(train_set),
    }

    start_step, best = 0, None
    ema_teacher = make_ema_teacher(net)
    resume_path = resolve_resume(settings.resume, work_dir)
    if resume_path is not None:
        state = load_checkpoint(resume_path, map_location="cpu")
        net.load_state_dict(state["model"])
        if ema_teacher is not None and "ema_teacher" in state:
            ema_teacher.load_state_dict(state["ema_teacher"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_step = int(state["step"])
        best = tuple(state["best"]) if state.get("best") is not None else None
        if state.get("data") != data_state:
            log(f"resume: the data order differs from the checkpoint's ({state.get('data')} vs {data_state})")
        log(f"resumed from {resume_path} at step {start_step}")
    elif settings.resume == "auto":
        log(f"resume=auto: no {work_dir / 'last.pt'}, starting from scratch")

    step_module: torch.nn.Module = MCCTrainingStep(net)
    if context.distributed:
        step_module = DistributedDataParallel(
            step_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=settings.find_unused_parameters,
        )

    config_record = {
        "train": dataclasses.asdict(settings),
        "mcc": dataclasses.asdict(net.config),
        "num_classes": net.num_classes,
        "world_size": context.world_size,
        "extra": extra_config or {},
    }
    if context.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(config_record, indent=2, default=str) + "\n")

    def checkpoint_state(done: int) -> dict[str, Any]:
        extra = {} if ema_teacher is None else {"ema_teacher": ema_teacher.state_dict()}
        return {
            **extra,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": done,
            "rng": rng_state(),
            "data": data_state,
            "best": list(best) if best is not None else None,
            "config": config_record,
        }

    logger = _Logger(context, work_dir, settings.tensorboard, log)
    result = TrainResult(step=start_step, best=best, work_dir=work_dir)
    metrics_path = work_dir / "metrics.json"
    class_names = _class_names(val_set, net.num_classes + 1)
    last_scores: dict[str, Any] | None = None
    best_scores = _earlier_best(metrics_path, best) if context.is_main else None
    eval_seconds = 0.0

    def write_metrics(done: int) -> None:
        if not context.is_main:
            return
        wall = time.perf_counter() - started
        record = {
            "iterations": done,
            "max_iters": settings.max_iters,
            "resumed_from": start_step,
            "world_size": context.world_size,
            "batch_size": settings.batch_size,
            "wall_time_s": wall,  # this call, evaluations included
            "images_per_s": (done - start_step) * settings.batch_size / max(wall - eval_seconds, 1e-9),
            "best_metric": settings.best_metric,
            "last": last_scores,
            "best": best_scores,
        }
        write_json(metrics_path, record)

    accumulation = settings.accumulation_steps
    teacher = net.projector.teacher
    batches = _batches(train_set, sampler, start_step, settings, pin=device.type == "cuda")
    window: list[list[float]] = []
    tic = time.perf_counter()
    bar = None
    try:
        end = (
            settings.max_iters
            if settings.stop_after is None
            else min(settings.stop_after, settings.max_iters)
        )
        bar = _progress_bar(settings, context, start_step, end)
        if bar is not None and logger.log is print:
            logger.log = bar.write  # log lines above the bar, not through it
        for step in range(start_step, end):
            batch = next(batches)
            lr = poly_warmup_lr(
                step,
                settings.base_lr,
                warmup_iters=settings.warmup_iters,
                warmup_ratio=settings.warmup_ratio,
                max_iters=settings.max_iters,
                power=settings.power,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            optimizer.zero_grad(set_to_none=True)
            teacher_before = None
            if accumulation > 1:
                teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
            sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
            for index, micro in enumerate(_split(batch, accumulation)):
                if index > 0:
                    teacher.load_state_dict(teacher_before)  # the EMA moves once per optimiser step
                micro = {k: v.to(device, non_blocking=True) for k, v in micro.items()}
                generator = torch.Generator().manual_seed(
                    _mask_seed(settings.seed, step, context.rank * accumulation + index)
                )
                sync = not context.distributed or index == accumulation - 1
                with (
                    step_module.no_sync() if not sync else contextlib.nullcontext(),
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp),
                ):
                    losses = step_module(
                        micro["x"],
                        micro["v1"],
                        micro["v2"],
                        micro["cls_label"],
                        micro["img_box"],
                        step,
                        generator=generator,
                        fast=settings.fast,
                        strong=micro.get("strong"),
                        teacher=None if ema_teacher is None else ema_teacher.module,
                    )
                    total = losses.total / accumulation if accumulation > 1 else losses.total
                    total.backward()
                sums += torch.stack([t.detach().double().cpu() for t in losses])
            optimizer.step()
            if ema_teacher is not None:  # CoSA: the teacher follows every optimiser step
                ema_teacher.update_parameters(net)
            values = (sums / accumulation).tolist()
            if not math.isfinite(values[0]):
                raise FloatingPointError(f"the loss is {values[0]} at step {step}")
            result.history.append({"step": step, "lr": lr, **dict(zip(LOSS_NAMES, values, strict=True))})
            window.append(values)
            done = step + 1
            result.step = done
            if bar is not None:
                bar.set_postfix_str(f"loss {values[0]:.4f}", refresh=False)
                bar.update(1)

            if done % settings.log_every == 0 or done == end:
                mean = _mean_over_ranks(np.mean(window, axis=0).tolist(), context)
                seconds = (time.perf_counter() - tic) / len(window)
                terms = " ".join(f"{name} {value:.4f}" for name, value in zip(LOSS_NAMES, mean, strict=True))
                logger.log(f"step {done}/{settings.max_iters} lr {lr:.3e} {terms} {seconds:.2f}s/it")
                logger.scalars("train", {**dict(zip(LOSS_NAMES, mean, strict=True)), "lr": lr}, done)
                window, tic = [], time.perf_counter()

            improved = False
            at_end = done == settings.max_iters
            stopping = done == end
            periodic = settings.eval_every and done % settings.eval_every == 0
            if val_set is not None and (periodic or (at_end and settings.eval_at_end)):
                eval_started = time.perf_counter()
                scores = evaluate(
                    net,
                    val_set,
                    device=device,
                    bkg_thre=settings.eval_bkg_thre,
                    max_images=settings.eval_max_images,
                    rank=context.rank,
                    world_size=context.world_size,
                    autocast_dtype=torch.bfloat16 if use_amp else None,
                )
                mious = {name: s.miou for name, s in scores.items()}
                result.evaluations.append((done, mious))
                logger.log(
                    f"eval step {done}: " + " ".join(f"{k} mIoU {100 * v:.2f}" for k, v in mious.items())
                )
                logger.scalars("val", mious, done)
                value = mious[settings.best_metric]
                if best is None or value > best[0]:
                    best, improved = (value, done), True
                    result.best = best
                last_scores = {"iteration": done, "scores": scores_record(scores, class_names)}
                if improved:
                    best_scores = {**last_scores, "metric": settings.best_metric}
                eval_seconds += time.perf_counter() - eval_started
                write_metrics(done)
                tic = time.perf_counter()

            save_last = stopping or bool(settings.save_every and done % settings.save_every == 0)
            if context.is_main and (save_last or (improved and settings.save_best)):
                state = checkpoint_state(done)
                if save_last:
                    save_checkpoint(work_dir / "last.pt", state)
                if improved and settings.save_best:
                    save_checkpoint(work_dir / "best.pt", state)
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    write_metrics(result.step)
    return result
