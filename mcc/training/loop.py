"""The MCC training loop shared by the example scripts: schedule, DDP, evaluation, checkpoints, resume."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
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

from mcc._checks import check_finite
from mcc.data import seed_worker
from mcc.network import MCCConfig, MCCLosses, MCCNet, MCCTrainingStep
from mcc.schedule import poly_warmup_lr, scaled_warmup_iters
from mcc.training.checkpoint import (
    check_resume,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
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
        amp: bf16 autocast of the forward passes on CUDA (fp16 with a gradient scaler on a GPU without
            bf16; ignored, with a message, elsewhere). The backward runs outside autocast and the losses
            in float32.
        fast: the exact shortcuts of the training step (docs/method.md section 3).
        find_unused_parameters: passed to DDP.
        log_every: steps between log lines (and tensorboard points). The step's values are copied to the
            host there (one copy for all the steps since the last line) and before every evaluation and
            checkpoint, and the loss is checked for finiteness: a non-finite loss on any rank raises the
            same ``FloatingPointError`` on every rank, naming the first bad step.
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
        if not 0 < self.base_lr < float("inf"):
            raise ValueError(f"base_lr must be a finite number > 0, got {self.base_lr}")
        if not 0.0 <= self.eval_bkg_thre <= 1.0:
            raise ValueError(f"eval_bkg_thre must be in [0, 1], got {self.eval_bkg_thre}")
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


HOST_KEYS = ("cls_label", "img_box")
"""Batch entries that stay on the host: the step reads them there (the box check, the classes present
in the batch) without a device sync and copies them to the device itself, asynchronously."""


def _to_device(micro: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v if k in HOST_KEYS else v.to(device, non_blocking=True) for k, v in micro.items()}


def _amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: bf16 on CUDA, fp16 (with a gradient scaler) on a GPU without bf16."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _changing_buffers(module: torch.nn.Module) -> list[str]:
    """Buffers a training step may change: the running statistics of batch-norm layers.

    The buffers of :class:`~mcc.MCCNet` itself (``pixel_mean``, ``pixel_std`` and their 0-255 forms) are
    constants, and so are the buffers of the ViT families (rotary frequencies, relative position
    indices); the teacher projector is made of parameters that every rank moves identically from the
    synchronised student. Only running statistics (an encoder with batch norm) would differ across ranks,
    and only then does DDP need to broadcast buffers at every forward.
    """
    return [
        name
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.modules.batchnorm._NormBase) and child.track_running_stats
    ]


def _buffer_sync(enabled: bool) -> dict[str, bool]:
    # DDP's buffer sync at every forward: forward_sync_buffers in recent torch, broadcast_buffers before
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": enabled}


def _micro_step(
    step_module: torch.nn.Module,
    micro: dict[str, torch.Tensor],
    step: int,
    key_mask: torch.Tensor,
    *,
    fast: bool,
    parts: int,
    autocast_dtype: torch.dtype | None,
    device_type: str,
    scaler: torch.amp.GradScaler | None = None,
    sync: bool = True,
    teacher: torch.nn.Module | None = None,
):
    """Forward under autocast, backward outside it (as the autocast documentation prescribes).

    The backward pass of an op runs in the dtype its forward ran in; a backward inside the autocast block
    would run the float32 parts (the affinity product, the InfoNCE einsum) as bf16 matmuls. ``no_sync``
    (all but the last micro-batch under DDP) spans both: DDP decides at the forward whether the backward
    all-reduces.
    """
    with step_module.no_sync() if not sync else contextlib.nullcontext():
        with torch.autocast(
            device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            losses = step_module(
                micro["x"],
                micro["v1"],
                micro["v2"],
                micro["cls_label"],
                micro["img_box"],
                step,
                key_mask=key_mask,
                fast=fast,
                strong=micro.get("strong"),
                teacher=teacher,
            )
        total = losses.total.float() / parts if parts > 1 else losses.total.float()
        (scaler.scale(total) if scaler is not None else total).backward()
    return losses


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
    amp_dtype = _amp_dtype(settings.amp, device)
    if settings.amp and amp_dtype is None:
        log(f"amp: autocast is used on CUDA only; running in float32 on {device}")
    elif amp_dtype == torch.float16:
        name = torch.cuda.get_device_name(device)
        log(f"amp: {name} has no bf16 (Ampere or newer has); fp16 autocast with a gradient scaler instead")
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
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
        resuming = {"train": dataclasses.asdict(settings), "mcc": dataclasses.asdict(net.config)}
        resuming.update(num_classes=net.num_classes, extra=extra_config or {})
        for line in check_resume(state, resuming, f"resume: checkpoint {resume_path}"):
            if context.is_main:  # every changed setting named, with the value the run uses
                log(f"warning: resume: {line}")
                warnings.warn(f"resume: {line}", UserWarning, stacklevel=2)
        load_model_state(net, state["model"], f"resume: checkpoint {resume_path} does not fit this network")
        if ema_teacher is not None and "ema_teacher" in state:
            ema_teacher.load_state_dict(state["ema_teacher"])
        optimizer.load_state_dict(state["optimizer"])
        rank_states = state.get("rng_ranks") or [state["rng"]]
        if len(rank_states) == context.world_size:
            set_rng_state(rank_states[context.rank])
        else:
            line = (
                f"resume: {resume_path} holds the random states of {len(rank_states)} rank(s), this run has "
                f"{context.world_size}: every rank continues from rank 0's (the run is not an exact "
                "continuation of the interrupted one)"
            )
            log(f"warning: {line}")
            if context.is_main:
                warnings.warn(line, UserWarning, stacklevel=2)
            set_rng_state(rank_states[0])
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start_step = int(state["step"])
        best = tuple(state["best"]) if state.get("best") is not None else None
        if state.get("data") != data_state:
            log(f"resume: the data order differs from the checkpoint's ({state.get('data')} vs {data_state})")
        log(f"resumed from {resume_path} at step {start_step}")
    elif settings.resume == "auto":
        log(f"resume=auto: no {work_dir / 'last.pt'}, starting from scratch")

    step_module: torch.nn.Module = MCCTrainingStep(net)
    if context.distributed:
        # No device_ids: DDP would move every input to the device, also the host-side labels and boxes
        # (HOST_KEYS) the step reads without a sync; the loop moves the rest itself.
        step_module = DistributedDataParallel(
            step_module,
            device_ids=None,
            find_unused_parameters=settings.find_unused_parameters,
            **_buffer_sync(bool(_changing_buffers(net))),
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

    def rank_rng_states() -> list[dict[str, Any]]:
        # every rank's random state (a collective: all ranks call it when a checkpoint is written)
        if not context.distributed:
            return [rng_state()]
        states: list[Any] = [None] * context.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def checkpoint_state(done: int, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        extra = {} if ema_teacher is None else {"ema_teacher": ema_teacher.state_dict()}
        return {
            **extra,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": done,
            "rng": rank_states[0],
            "rng_ranks": rank_states,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
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
    num_views = net.config.num_views
    # the log line leaves out the terms of options that are off (always 0); metrics and TensorBoard keep all
    unused_terms = {
        name
        for name, weight in (
            ("consistency", net.config.w_consistency),
            ("seg_to_cam", net.config.w_seg_to_cam),
        )
        if not weight
    }
    batches = _batches(train_set, sampler, start_step, settings, pin=device.type == "cuda")
    pending: list[tuple[int, float, torch.Tensor]] = []  # steps whose values are still on the device
    window: list[torch.Tensor] = []  # rank means of the steps since the last log line (host)
    tic = time.perf_counter()
    bar = None

    def flush() -> None:
        """Copies the values of the pending steps to the host at once (one copy, one all-reduce).

        Every rank sees the same rank sums, so a non-finite loss on any rank stops every rank at once.
        """
        if not pending:
            return
        local = torch.stack([values for _, _, values in pending])  # (steps, terms) float64
        mean = local.clone()
        if context.distributed:
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
            mean /= context.world_size
        host_local, host_mean = torch.stack([local, mean]).cpu()
        finite = torch.isfinite(host_mean[:, 0])
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            where = " on at least one rank" if context.distributed else ""
            raise FloatingPointError(
                f"the loss is {float(host_mean[first, 0])}{where} at step {pending[first][0]}: stopping"
            )
        for (step_done, lr_used, _), values in zip(pending, host_local.tolist(), strict=True):
            result.history.append(
                {"step": step_done, "lr": lr_used, **dict(zip(LOSS_NAMES, values, strict=True))}
            )
        window.extend(host_mean)
        if bar is not None:
            bar.set_postfix_str(f"loss {host_local[-1, 0]:.4f}", refresh=False)
        pending.clear()

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
            micros = _split(batch, accumulation)
            # The key masks of every micro-batch, drawn on the host before any work of the step is queued
            # (so that their copy never waits for the device), from seeds that make them a function of
            # (seed, step, global micro-batch): resumable and rank-count invariant.
            key_masks = []
            for index, micro in enumerate(micros):
                generator = torch.Generator().manual_seed(
                    _mask_seed(settings.seed, step, context.rank * accumulation + index)
                )
                grid = net.encoder.grid_size(micro["x"])
                mask = net.mask_sampler(len(micro["x"]), grid, num_views, generator=generator)
                if device.type == "cuda":
                    mask = mask.pin_memory()
                key_masks.append(mask.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            teacher_before = None
            if accumulation > 1:
                teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
            sums = None
            for index, micro in enumerate(micros):
                if index > 0:
                    teacher.load_state_dict(teacher_before)  # the EMA moves once per optimiser step
                check_finite(micro["cls_label"], "cls_label of the training batch")  # on CPU: no sync
                losses = _micro_step(
                    step_module,
                    _to_device(micro, device),
                    step,
                    key_masks[index],
                    fast=settings.fast,
                    parts=accumulation,
                    autocast_dtype=amp_dtype,
                    device_type=device.type,
                    scaler=scaler,
                    sync=not context.distributed or index == accumulation - 1,
                    teacher=None if ema_teacher is None else ema_teacher.module,
                )
                terms = torch.stack([t.detach().double() for t in losses])  # on the device: no copy
                sums = terms if sums is None else sums + terms
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema_teacher is not None:  # CoSA: the teacher follows every optimiser step
                ema_teacher.update_parameters(net)
            pending.append((step, lr, sums / accumulation))
            done = step + 1
            result.step = done
            if bar is not None:
                bar.update(1)

            logging = done % settings.log_every == 0 or done == end
            at_end = done == settings.max_iters
            stopping = done == end
            periodic = settings.eval_every and done % settings.eval_every == 0
            evaluating = val_set is not None and (periodic or (at_end and settings.eval_at_end))
            save_last = stopping or bool(settings.save_every and done % settings.save_every == 0)
            if logging or evaluating or save_last:
                flush()  # before every log line, evaluation and checkpoint: a NaN run is never saved
            if logging:
                mean = torch.stack(window).mean(0).tolist()
                seconds = (time.perf_counter() - tic) / len(window)
                terms = " ".join(
                    f"{name} {value:.4f}"
                    for name, value in zip(LOSS_NAMES, mean, strict=True)
                    if name not in unused_terms
                )
                logger.log(f"step {done}/{settings.max_iters} lr {lr:.3e} {terms} {seconds:.2f}s/it")
                logger.scalars("train", {**dict(zip(LOSS_NAMES, mean, strict=True)), "lr": lr}, done)
                window, tic = [], time.perf_counter()

            improved = False
            if evaluating:
                eval_started = time.perf_counter()
                scores = evaluate(
                    net,
                    val_set,
                    device=device,
                    bkg_thre=settings.eval_bkg_thre,
                    max_images=settings.eval_max_images,
                    rank=context.rank,
                    world_size=context.world_size,
                    autocast_dtype=amp_dtype,
                    num_workers=settings.num_workers,
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

            if save_last or (improved and settings.save_best):
                rank_states = rank_rng_states()  # every rank takes part
                if context.is_main:
                    state = checkpoint_state(done, rank_states)
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
