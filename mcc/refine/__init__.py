"""mcc.refine: pixel-adaptive refinement, pseudo labels, bilateral filter, dense CRF, DuPL's noise filter."""

from mcc.refine.background import refine_cams_with_background
from mcc.refine.bilateral import bilateral_filter
from mcc.refine.crf import DenseCRF
from mcc.refine.gmm import gmm_noise_filter
from mcc.refine.par import PAR
from mcc.refine.permutohedral import PermutohedralLattice

__all__ = [
    "PAR",
    "DenseCRF",
    "PermutohedralLattice",
    "bilateral_filter",
    "gmm_noise_filter",
    "refine_cams_with_background",
]
