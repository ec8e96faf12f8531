"""mcc.losses: the training objectives of MCC and the projection heads they need.

* token affinity (Eq. 11-12): :func:`affinity_labels`, :func:`affinity_loss`;
* segmentation: :func:`segmentation_loss` and the regularised (dense-CRF) loss :func:`dense_energy_loss`;
* masked collaborative contrast (Eq. 8-10): :func:`positive_views`, :class:`MomentumProjector`,
  :func:`mcc_infonce`;
* from DuPL and CoSA: :func:`consistency_loss`, :func:`discrepancy_loss`, :func:`seg_to_cam_loss`.
"""

from .affinity import affinity_labels, affinity_loss
from .contrast import mcc_infonce, positive_views
from .cosa import seg_to_cam_loss
from .dupl import consistency_loss, discrepancy_loss
from .energy import dense_energy_loss
from .projector import MomentumProjector
from .segmentation import segmentation_loss

__all__ = [
    "MomentumProjector",
    "affinity_labels",
    "affinity_loss",
    "consistency_loss",
    "dense_energy_loss",
    "discrepancy_loss",
    "mcc_infonce",
    "positive_views",
    "seg_to_cam_loss",
    "segmentation_loss",
]
