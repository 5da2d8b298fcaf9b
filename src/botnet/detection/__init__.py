"""BoTNet as a detection / instance-segmentation backbone: torchvision Mask R-CNN / Faster R-CNN on COCO data.

The Lightning training and evaluation wrappers live in :mod:`botnet.detection.engine` (imported on demand).
"""

from botnet.detection.backbone import botnet_fpn_backbone, freeze_batchnorm, freeze_layers
from botnet.detection.builders import create_detector, list_detectors
from botnet.detection.data import AnnotationError, CocoDetection, coco_split, collate, detection_transforms
from botnet.detection.draw import draw_detections
from botnet.detection.evaluation import CocoEvaluator, to_coco_results
from botnet.detection.synthetic import make_demo_data

__all__ = [
    "AnnotationError",
    "CocoDetection",
    "CocoEvaluator",
    "botnet_fpn_backbone",
    "coco_split",
    "collate",
    "create_detector",
    "detection_transforms",
    "draw_detections",
    "freeze_batchnorm",
    "freeze_layers",
    "list_detectors",
    "make_demo_data",
    "to_coco_results",
]
