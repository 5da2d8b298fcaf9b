"""Detector names: ``{head}_{model}_fpn`` = a torchvision R-CNN head on any registered model with a pyramid.

``maskrcnn_botnet50_fpn`` is the paper's COCO model (BoT50, MHSA in all three c5 blocks);
``maskrcnn_resnet50_fpn`` is the baseline with torchvision's exact module names; ``fasterrcnn_*`` drop the
mask branch. Every name in :func:`botnet.list_models` gives one row per head.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from botnet.detection.backbone import botnet_fpn_backbone
from botnet.models import get_model_cfg, list_models

HEADS: dict[str, type[FasterRCNN]] = {"maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN}
PYRAMID_LEVELS = 5  # FPN maps at strides 4, 8, 16, 32 and the max-pooled 64
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # torchvision's default, per level
BOX_HEAD_DIM, MASK_HEAD_DIM = 1024, 256  # torchvision's head widths
MASK_HEAD_LAYERS = 4
ROI_SIZE = 7  # torchvision's default box RoI pooling output side


def anchor_generator(sizes: Sequence[float], aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> AnchorGenerator:
    """One anchor size per pyramid level (strides 4..64), each with ``aspect_ratios``; torchvision's default is
    ``(32, 64, 128, 256, 512)``, in pixels of the resized image."""
    if len(sizes) != PYRAMID_LEVELS or any(size <= 0 for size in sizes):
        raise ValueError(f"anchor sizes: {PYRAMID_LEVELS} positive sizes (one per FPN level), got {tuple(sizes)}")
    return AnchorGenerator(tuple((size,) for size in sizes), (tuple(aspect_ratios),) * PYRAMID_LEVELS)


def list_detectors(pattern: str = "*") -> list[str]:
    """Detector names matching a shell-style ``pattern``, sorted."""
    names = (f"{head}_{model}_fpn" for head in HEADS for model in list_models())
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


def parse_detector_name(name: str) -> tuple[str, str]:
    """``"maskrcnn_botnet50_fpn"`` -> ``("maskrcnn", "botnet50")``; ``ValueError`` with suggestions if unknown."""
    head, _, rest = name.partition("_")
    model = rest.removesuffix("_fpn")
    if head not in HEADS or not rest.endswith("_fpn") or model not in list_models():
        close = difflib.get_close_matches(name, list_detectors(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown detector {name!r}{hint} (names are {{{'|'.join(HEADS)}}}_<model>_fpn, "
            "botnet.detection.list_detectors() lists all)"
        )
    return head, model


def create_detector(
    name: str,
    num_classes: int = 91,
    *,
    image_size: int = 1024,
    backbone_weights: str | Path | None = None,
    frozen_bn: bool = False,
    trainable_layers: int = 5,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float] | None = None,
    box_head_dim: int = BOX_HEAD_DIM,
    mask_head_dim: int = MASK_HEAD_DIM,
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> FasterRCNN:
    """Build a Mask R-CNN / Faster R-CNN with a BoTNet (or ResNet) FPN backbone; random init unless
    ``backbone_weights`` names a local file.

    In training mode the model takes ``images: list[(3, H, W)]`` floats in [0, 1] and ``targets: list[dict]``
    (``boxes (K, 4)`` xyxy pixels, ``labels (K,)`` in ``1..num_classes-1``, ``masks (K, H, W)`` for Mask R-CNN)
    and returns a loss dict; in eval mode it returns per image ``boxes (D, 4)``, ``labels (D,)``, ``scores (D,)``
    and ``masks (D, 1, H, W)`` probabilities (torchvision's API).

    Args:
        name: a name from :func:`list_detectors`.
        num_classes: classes including background (COCO: 91).
        image_size: the paper's square training resolution: images are resized so that their long side is
            ``image_size`` (``min_size = max_size = image_size``) and the relative position tables are learned
            for it. Pass ``min_size`` / ``max_size`` to use torchvision's 800 / 1333 scheme instead.
        backbone_weights: local classifier weights for the backbone, e.g. torchvision's ``resnet50`` state dict
            for ``maskrcnn_botnet50_fpn``: what fits loads, the rest is reported (see :func:`botnet_fpn_backbone`).
        frozen_bn: ``FrozenBatchNorm2d`` in the backbone.
        trainable_layers: backbone layers that keep gradients, 0-5.
        fpn_channels: width of the pyramid maps, which the RPN, box and mask heads take as input.
        anchor_sizes: the RPN's anchor side per pyramid level (5, pixels of the resized image; default
            torchvision's 32..512): match them to the objects, e.g. ``(8, 16, 32, 64, 128)`` for small ones
            (:func:`anchor_generator`).
        box_head_dim: width of the box head's two fully connected layers, which take the ``(R, fpn_channels,
            7, 7)`` RoI features (torchvision: 1024).
        mask_head_dim: channels of the mask head's four 3x3 convolutions on ``(R, fpn_channels, 14, 14)`` RoI
            features and of its upsampling layer (torchvision: 256). With narrow backbones the two heads are most
            of a training step on a CPU; 256 / 64 halve it (benchmarks/results/detection_demo_ablation.md).
        backbone_kwargs: :func:`botnet.create_model` overrides, e.g. ``dict(channels=(8, 16, 32, 64))``.
        **detector_kwargs: torchvision ``MaskRCNN`` / ``FasterRCNN`` arguments (``min_size``,
            ``box_score_thresh``, ``box_detections_per_img``, ...).
    """
    head, model_name = parse_detector_name(name)
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background class too and must be >= 2, got {num_classes}")
    cfg = get_model_cfg(model_name)
    if anchor_sizes is not None:
        detector_kwargs["rpn_anchor_generator"] = anchor_generator(anchor_sizes)
    detector_kwargs.setdefault("min_size", image_size)
    detector_kwargs.setdefault("max_size", image_size)
    detector_kwargs.setdefault("image_mean", list(cfg.mean))
    detector_kwargs.setdefault("image_std", list(cfg.std))
    # The heads are built here (as torchvision builds them, at the given widths), so num_classes goes to the
    # predictors and torchvision's own num_classes argument stays None. A head passed in is used as it is.
    if "box_head" not in detector_kwargs:
        roi_pool = detector_kwargs.get("box_roi_pool")
        resolution = roi_pool.output_size[0] if roi_pool is not None else ROI_SIZE  # as torchvision derives it
        detector_kwargs["box_head"] = TwoMLPHead(fpn_channels * resolution**2, box_head_dim)
    if "box_predictor" not in detector_kwargs:
        detector_kwargs["box_predictor"] = FastRCNNPredictor(box_head_dim, num_classes)
    if head == "maskrcnn" and "mask_head" not in detector_kwargs:
        mask_layers = [mask_head_dim] * MASK_HEAD_LAYERS
        detector_kwargs["mask_head"] = MaskRCNNHeads(fpn_channels, mask_layers, dilation=1)
    if head == "maskrcnn" and "mask_predictor" not in detector_kwargs:
        detector_kwargs["mask_predictor"] = MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes)
    model_kwargs = {"img_size": detector_kwargs["max_size"], **(backbone_kwargs or {})}
    backbone = botnet_fpn_backbone(
        model_name,
        weights=backbone_weights,
        frozen_bn=frozen_bn,
        trainable_layers=trainable_layers,
        out_channels=fpn_channels,
        **model_kwargs,
    )
    return HEADS[head](backbone, num_classes=None, **detector_kwargs)
