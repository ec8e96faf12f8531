"""mcc.cam: class activation maps (of MCC or any classifier) and the pseudo labels thresholded from them."""

from mcc.cam.extractor import CAMExtractor, extract_cams
from mcc.cam.labels import cam_to_label
from mcc.cam.multi_scale import multi_scale_cam

__all__ = ["CAMExtractor", "cam_to_label", "extract_cams", "multi_scale_cam"]
