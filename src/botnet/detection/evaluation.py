"""COCO evaluation: detector outputs -> COCO results json -> ``pycocotools.COCOeval`` box AP and mask AP."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import distributed as dist

# Names of COCOeval.stats, in order.
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(
    output: dict[str, torch.Tensor], image_id: int, cat_ids: Sequence[int], mask_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One image's detections as COCO result records.

    Args:
        output: torchvision R-CNN eval output: ``boxes (D, 4)`` xyxy, ``labels (D,)`` in ``1..K``, ``scores (D,)``,
            optionally ``masks (D, 1, H, W)`` probabilities.
        image_id: the json id of the image.
        cat_ids: category id of each label ``1..K`` (``cat_ids[label - 1]``).
        mask_threshold: probability above which a pixel belongs to the instance.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": RLE (with masks)}, ...]``.
    """
    boxes = output["boxes"].detach().cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    labels, scores = output["labels"].tolist(), output["scores"].tolist()
    records = [
        {"image_id": int(image_id), "category_id": int(cat_ids[label - 1]), "bbox": box, "score": float(score)}
        for box, label, score in zip(boxes.tolist(), labels, scores, strict=True)
    ]
    if "masks" in output and records:
        masks = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)  # (D, H, W)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for record, rle in zip(records, rles, strict=True):
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return records


class CocoEvaluator:
    """Collects detections image by image and scores them against a ground-truth ``COCO`` with COCOeval.

    Args:
        coco_gt: ground truth (e.g. ``CocoDetection.coco``).
        cat_ids: category id of each label ``1..K``.
        iou_types: ``"bbox"`` and / or ``"segm"``.
    """

    def __init__(self, coco_gt: COCO, cat_ids: Sequence[int], iou_types: Sequence[str] = ("bbox", "segm")) -> None:
        self.coco_gt = coco_gt
        self.cat_ids = list(cat_ids)
        self.iou_types = tuple(iou_types)
        self.results: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.summary = ""

    def reset(self) -> None:
        self.results, self.image_ids = [], []

    def update(self, outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int]) -> None:
        """Add a batch of eval-mode outputs for the images ``image_ids``."""
        for output, image_id in zip(outputs, image_ids, strict=True):
            self.results += to_coco_results(output, int(image_id), self.cat_ids)
            self.image_ids.append(int(image_id))

    def synchronize(self) -> None:
        """Merge the detections of every process: under DDP each rank validated a shard of the images, and
        COCOeval must see them all. An image that the distributed sampler gave to two ranks (to even out the
        shards) counts once. Does nothing in a single process."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, (self.results, self.image_ids))
        self.reset()
        for results, image_ids in shards:
            new = set(image_ids) - set(self.image_ids)
            self.results += [record for record in results if record["image_id"] in new]
            self.image_ids += sorted(new)

    def compute(self) -> dict[str, float]:
        """``{"bbox_AP": ..., "bbox_AP50": ..., "segm_AP": ...}`` over the images seen (fractions, not percent).

        No detections at all scores 0. COCOeval's printed table is kept in ``self.summary``.
        """
        if not self.image_ids:
            raise ValueError("CocoEvaluator.compute() before any update(): nothing to evaluate")
        metrics, summaries = {}, []
        for iou_type in self.iou_types:
            if not self.results:
                metrics.update({f"{iou_type}_{name}": 0.0 for name in STATS})
                summaries.append(f"{iou_type}: no detections")
                continue
            # loadRes mutates its records; for masks it must not see the box, or the area ranges would use the
            # box area instead of the mask area (as Detectron2 does).
            drop = {"bbox"} if iou_type == "segm" else set()
            results = [{k: v for k, v in record.items() if k not in drop} for record in self.results]
            with contextlib.redirect_stdout(io.StringIO()) as printed:  # pycocotools prints as it goes
                coco_dt = self.coco_gt.loadRes(results)
                evaluator = COCOeval(self.coco_gt, coco_dt, iouType=iou_type)
                evaluator.params.imgIds = sorted(set(self.image_ids))
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            # COCOeval reports -1 where there is no ground truth in a size range; that is "no score", not 0.
            metrics.update({f"{iou_type}_{name}": float(v) for name, v in zip(STATS, evaluator.stats, strict=True)})
            summary = "\n".join(
                line for line in printed.getvalue().splitlines() if "Precision" in line or "Recall" in line
            )
            summaries.append(f"{iou_type}:\n{summary}")
        self.summary = "\n".join(summaries)
        return metrics
