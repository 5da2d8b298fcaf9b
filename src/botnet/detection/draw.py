"""Detections drawn onto their image: masks, boxes and ``"label score"`` captions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

# One colour per label (cycled), readable on photos.
COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe"]


def draw_detections(
    image: torch.Tensor,
    output: dict[str, torch.Tensor],
    categories: Sequence[str],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> torch.Tensor:
    """Draw the detections scoring at least ``score_threshold``.

    Args:
        image: ``(3, H, W)`` uint8.
        output: torchvision R-CNN eval output for the image: ``boxes (D, 4)``, ``labels (D,)`` in ``1..K``,
            ``scores (D,)``, optionally ``masks (D, 1, H, W)`` probabilities.
        categories: names of labels ``1..K``.
        score_threshold: weaker detections are not drawn.
        mask_threshold: mask probability that counts as inside.

    Returns:
        ``(3, H, W)`` uint8.
    """
    keep = output["scores"] >= score_threshold
    labels = output["labels"][keep].tolist()
    colours = [COLOURS[(label - 1) % len(COLOURS)] for label in labels]
    if not labels:
        return image
    if "masks" in output:
        masks = output["masks"][keep, 0] > mask_threshold
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colours)
    captions = [
        f"{categories[label - 1]} {score:.2f}" for label, score in zip(labels, output["scores"][keep], strict=True)
    ]
    return draw_bounding_boxes(image, output["boxes"][keep], labels=captions, colors=colours, width=2)
