"""mcc.cam: class activation maps and the pseudo labels thresholded from them."""

from mcc.cam.labels import cam_to_label
from mcc.cam.multi_scale import multi_scale_cam

__all__ = ["cam_to_label", "multi_scale_cam"]
