"""mcc.cam: class activation maps (of MCC or any classifier) and the pseudo labels thresholded from them."""

from mcc.cam.extractor import CAMExtractor, extract_cams
from mcc.cam.labels import cam_to_label
from mcc.cam.multi_scale import multi_scale_cam, multi_scale_cam_seg
from mcc.cam.thresholds import cosine_threshold, image_threshold

__all__ = [
    "CAMExtractor",
    "cam_to_label",
    "cosine_threshold",
    "extract_cams",
    "image_threshold",
    "multi_scale_cam",
    "multi_scale_cam_seg",
]
