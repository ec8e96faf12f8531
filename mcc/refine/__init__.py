"""mcc.refine: pixel-adaptive refinement, segmentation pseudo labels and dense CRF post-processing."""

from mcc.refine.background import refine_cams_with_background
from mcc.refine.crf import DenseCRF
from mcc.refine.par import PAR

__all__ = ["PAR", "DenseCRF", "refine_cams_with_background"]
