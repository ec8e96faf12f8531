"""Training helpers: the MCC training loop, checkpoints, mIoU, evaluation, DDP set-up, encoder builder.

Library code only (no argument parsing); the scripts in ``examples/`` put a command line on top.
"""

from mcc.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mcc.training.distributed import DistributedContext, cleanup_distributed, init_distributed
from mcc.training.evaluation import evaluate
from mcc.training.loop import TrainResult, TrainSettings, resolve_resume, train
from mcc.training.metrics import ConfusionMatrix, SegmentationScores, segmentation_scores
from mcc.training.sampler import StepBatchSampler
from mcc.training.vit import build_vit

__all__ = [
    "CheckpointError",
    "ConfusionMatrix",
    "DistributedContext",
    "SegmentationScores",
    "StepBatchSampler",
    "TrainResult",
    "TrainSettings",
    "build_vit",
    "cleanup_distributed",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "resolve_resume",
    "rng_state",
    "save_checkpoint",
    "segmentation_scores",
    "set_rng_state",
    "train",
]
