"""mcc.data: VOC-layout datasets (VOC, COCO converted, synthetic), tagged images, the MCC training views."""

from mcc.data.coco import coco_to_voc
from mcc.data.datasets import VOCSegmentation, VOCTrainViews, seed_worker
from mcc.data.layout import IGNORE_INDEX, VOC_CLASSES, read_class_names, read_split, voc_palette
from mcc.data.strong_view import StrongAugment
from mcc.data.synthetic_voc import SYNTHETIC_CLASSES, make_synthetic_voc
from mcc.data.tags import (
    ImageTags,
    TagImages,
    TagTrainViews,
    read_classes_file,
    read_tags,
    tags_from_mapping,
)
from mcc.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropGeometry,
    PhotometricAugment,
    denormalize,
    normalize,
)

__all__ = [
    "VOCSegmentation",
    "VOCTrainViews",
    "TagTrainViews",
    "TagImages",
    "ImageTags",
    "read_tags",
    "tags_from_mapping",
    "read_classes_file",
    "seed_worker",
    "PhotometricAugment",
    "StrongAugment",
    "CropGeometry",
    "normalize",
    "denormalize",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "SYNTHETIC_CLASSES",
    "read_class_names",
    "read_split",
    "voc_palette",
    "make_synthetic_voc",
    "coco_to_voc",
]
