"""mcc.refine: pixel-adaptive refinement, segmentation pseudo labels, the bilateral filter and dense CRF."""

from mcc.refine.background import refine_cams_with_background
from mcc.refine.bilateral import bilateral_filter
from mcc.refine.crf import DenseCRF
from mcc.refine.par import PAR
from mcc.refine.permutohedral import PermutohedralLattice

__all__ = ["PAR", "DenseCRF", "PermutohedralLattice", "bilateral_filter", "refine_cams_with_background"]
