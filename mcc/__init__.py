"""mcc: Masked Collaborative Contrast for weakly supervised semantic segmentation with any timm ViT.

The public API (see ``docs/``): key-masked attention for timm ViTs, CAMs and pseudo labels, their
refinement, the MCC losses, and the network and training step assembled from them.
"""

from mcc.attention import KeyMaskedAttention, KeyMaskedViT, ScaledBernoulliKeyMask, ViTTokens, patch_vit
from mcc.cam import (
    CAMExtractor,
    cam_to_label,
    cosine_threshold,
    extract_cams,
    image_threshold,
    multi_scale_cam,
    multi_scale_cam_seg,
)
from mcc.losses import (
    MomentumProjector,
    affinity_labels,
    affinity_loss,
    consistency_loss,
    dense_energy_loss,
    discrepancy_loss,
    mcc_infonce,
    positive_views,
    seg_to_cam_loss,
    segmentation_loss,
)
from mcc.network import LargeFOV, MCCConfig, MCCLosses, MCCNet, MCCTrainingStep
from mcc.refine import PAR, DenseCRF, bilateral_filter, gmm_noise_filter, refine_cams_with_background
from mcc.schedule import poly_warmup_lr

__version__ = "0.1.0"

__all__ = [
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
    "PAR",
    "ScaledBernoulliKeyMask",
    "ViTTokens",
    "affinity_labels",
    "affinity_loss",
    "bilateral_filter",
    "cam_to_label",
    "consistency_loss",
    "cosine_threshold",
    "dense_energy_loss",
    "discrepancy_loss",
    "extract_cams",
    "gmm_noise_filter",
    "image_threshold",
    "mcc_infonce",
    "multi_scale_cam",
    "multi_scale_cam_seg",
    "patch_vit",
    "poly_warmup_lr",
    "positive_views",
    "refine_cams_with_background",
    "seg_to_cam_loss",
    "segmentation_loss",
]
