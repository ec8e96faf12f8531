"""Training helpers: the MCC training loop, checkpoints, mIoU, evaluation, DDP set-up, encoder builder.

The encoder builder :func:`build_vit` takes a timm name or a backbone preset of :data:`BACKBONE_PRESETS`
(name -> :class:`BackbonePreset`: timm weights, crop size, build options; docs/backbones.md).

Library code only (no argument parsing); the scripts in ``examples/`` put a command line on top.
"""

from mcc.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    net_from_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mcc.training.distributed import DistributedContext, cleanup_distributed, init_distributed
from mcc.training.evaluation import evaluate
from mcc.training.loop import TrainResult, TrainSettings, resolve_resume, schedule_warnings, train
from mcc.training.metrics import ConfusionMatrix, SegmentationScores, segmentation_scores
from mcc.training.outputs import (
    check_split_files,
    evaluate_to_dir,
    make_server_archive,
    read_label_png,
    save_label_png,
    scores_record,
    select_ids,
)
from mcc.training.pseudo_labels import make_pseudo_labels
from mcc.training.sampler import StepBatchSampler
from mcc.training.vit import BACKBONE_PRESETS, BackbonePreset, build_vit

__all__ = [
    "BACKBONE_PRESETS",
    "BackbonePreset",
    "CheckpointError",
    "ConfusionMatrix",
    "DistributedContext",
    "SegmentationScores",
    "StepBatchSampler",
    "TrainResult",
    "TrainSettings",
    "build_vit",
    "check_split_files",
    "cleanup_distributed",
    "evaluate",
    "evaluate_to_dir",
    "init_distributed",
    "load_checkpoint",
    "make_pseudo_labels",
    "make_server_archive",
    "net_from_checkpoint",
    "read_label_png",
    "resolve_resume",
    "rng_state",
    "save_checkpoint",
    "save_label_png",
    "schedule_warnings",
    "scores_record",
    "segmentation_scores",
    "select_ids",
    "set_rng_state",
    "train",
]
