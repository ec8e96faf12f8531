"""mcc: Masked Collaborative Contrast for weakly supervised semantic segmentation with any timm ViT.

The public API (see ``docs/``): key-masked attention for timm ViTs, CAMs and pseudo labels, their
refinement, the MCC losses, and the network and training step assembled from them.
"""

from mcc.attention import KeyMaskedAttention, KeyMaskedViT, ScaledBernoulliKeyMask, ViTTokens, patch_vit
from mcc.cam import CAMExtractor, cam_to_label, extract_cams, multi_scale_cam
from mcc.losses import (
    MomentumProjector,
    affinity_labels,
    affinity_loss,
    dense_energy_loss,
    mcc_infonce,
    positive_views,
    segmentation_loss,
)
from mcc.network import LargeFOV, MCCConfig, MCCLosses, MCCNet, MCCTrainingStep
from mcc.refine import PAR, DenseCRF, bilateral_filter, refine_cams_with_background
from mcc.schedule import poly_warmup_lr

__version__ = "0.1.0"

__all__ = [
    "PAR",
    "CAMExtractor",
    "DenseCRF",
    "KeyMaskedAttention",
    "KeyMaskedViT",
    "LargeFOV",
    "MCCConfig",
    "MCCLosses",
    "MCCNet",
    "MCCTrainingStep",
    "MomentumProjector",
    "ScaledBernoulliKeyMask",
    "ViTTokens",
    "affinity_labels",
    "affinity_loss",
    "bilateral_filter",
    "cam_to_label",
    "dense_energy_loss",
    "extract_cams",
    "mcc_infonce",
    "multi_scale_cam",
    "patch_vit",
    "poly_warmup_lr",
    "positive_views",
    "refine_cams_with_background",
    "segmentation_loss",
]
