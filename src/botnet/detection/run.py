"""Detection runs as Python functions: :func:`make_demo`, :func:`fit`, :func:`evaluate`, :func:`predict`.

``botnet detect make-demo-data | train | eval | predict`` are thin wrappers: each function takes the command's
options as an ``argparse.Namespace`` (``botnet.cli.detect.parse_args(["train", ...])`` builds one). A training run
folder (``--out``) receives ``detect.yaml`` (the resolved options), ``checkpoints/last.ckpt`` (for resuming),
``model.safetensors`` + ``config.json`` (what ``eval`` / ``predict`` / :meth:`DetectionModule.from_pretrained`
load) and ``logs/``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import pil_to_tensor

from botnet.checkpoint import clean_stale_temps, write_json
from botnet.cli.common import save_config, trainer_placement
from botnet.data import ImageFiles, collate_readable, find_images, load_image
from botnet.detection.data import coco_split
from botnet.detection.draw import draw_detections
from botnet.detection.engine import CocoDataModule, DetectionModule
from botnet.detection.evaluation import to_coco_results
from botnet.detection.synthetic import make_demo_data
from botnet.train.callbacks import AtomicCheckpointIO, ExportPretrained

CONFIG_NAME = "detect.yaml"


def _trainer(args: argparse.Namespace, **kwargs: Any) -> pl.Trainer:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # workers are a flag; 0 is a fine default
    return pl.Trainer(**trainer_placement(args), enable_model_summary=False, **kwargs)


def make_demo(args: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    """Write the synthetic digits-on-photos COCO set; ``{split: (images_dir, ann_file)}``."""
    return make_demo_data(
        args.out, args.train, args.val, tuple(args.size), size_range=tuple(args.digit_size), seed=args.seed
    )


def fit(args: argparse.Namespace) -> tuple[pl.Trainer, DetectionModule]:
    """Train as ``args`` say; validates with COCOeval after each epoch (and at the end, if stopped mid-epoch)."""
    pl.seed_everything(args.seed, workers=True, verbose=False)
    head = args.model.split("_")[0]
    data = CocoDataModule(
        coco_split(args.data, args.train_split),
        coco_split(args.data, args.val_split) if args.val_split else None,
        batch_size=args.batch_size,
        num_workers=args.workers,
        with_masks=head == "maskrcnn",
        strict=args.strict,
        max_pixels=args.max_pixels,
        hflip=args.hflip,
        scale_jitter=args.scale_jitter,
        image_size=args.image_size,
    )
    reference = data.reference
    detector_kwargs = dict(
        image_size=args.image_size,
        fpn_channels=args.fpn_channels,
        box_head_dim=args.box_head_dim,
        mask_head_dim=args.mask_head_dim,
        frozen_bn=args.frozen_bn,
        trainable_layers=args.trainable_layers,
        backbone_kwargs=dict(args.backbone_arg),
        **({"anchor_sizes": list(args.anchor_sizes)} if args.anchor_sizes else {}),
        **args.detector_arg,
    )
    optim = dict(lr=args.lr, opt=args.opt, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps)
    module = DetectionModule(
        args.model, reference.num_classes, reference.categories, reference.cat_ids, **optim,
        detector_kwargs=detector_kwargs, backbone_weights=args.backbone_weights,
    )  # fmt: skip
    out = Path(args.out)
    trainer = _trainer(
        args,
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        logger=CSVLogger(out, name="logs"),
        plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=out / "checkpoints", save_last=True), ExportPretrained(out)],
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        **({} if args.val_split else {"limit_val_batches": 0}),
    )
    if trainer.is_global_zero:
        clean_stale_temps(out)  # left by a process killed mid-write
        save_config(args, out / CONFIG_NAME)
    trainer.fit(module, datamodule=data)
    if data.val_set is not None and module.validated_step != trainer.global_step:  # stopped mid-epoch
        trainer.validate(module, datamodule=data, verbose=False)
    return trainer, module


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """COCOeval box (and mask) AP of a run folder (or ``.ckpt``) on a split, over its readable images:
    ``{"metrics", "results" (path or None), "detections", "images", "skipped"}``; with ``results_json`` the
    detections are written in COCO format."""
    module = DetectionModule.from_pretrained(args.checkpoint)
    with_masks = module.model.roi_heads.has_mask()
    val = coco_split(args.data, args.split)
    data = CocoDataModule(None, val, batch_size=args.batch_size, with_masks=with_masks, max_pixels=args.max_pixels)
    _trainer(args, logger=False, enable_progress_bar=False).validate(module, datamodule=data, verbose=False)
    assert module.evaluator is not None
    if args.results_json:
        write_json(args.results_json, module.evaluator.results)
    return {
        "metrics": module.coco_metrics,
        "results": args.results_json,
        "detections": len(module.evaluator.results),
        "images": len(module.evaluator.image_ids),  # the readable ones: AP is over these
        "skipped": module.skipped,
    }


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Draw a detector's detections on image files (PNGs in ``args.out``).

    Returns one entry per file: ``{"path", "drawn", "shown"}`` (``shown``: detections at or above the score
    threshold), or ``{"path", "error"}`` for an unreadable file. With ``results_json`` all detections are written
    in COCO results format (image ids from ``ann`` by file name, else 1, 2, ...).
    """
    files = find_images(args.images)
    image_ids = {path: i for i, path in enumerate(files, start=1)}
    if args.ann:
        by_name = {Path(img["file_name"]).name: img["id"] for img in json.loads(Path(args.ann).read_text())["images"]}
        image_ids = {path: by_name[path.name] for path in files if path.name in by_name}
    module = DetectionModule.from_pretrained(args.checkpoint)
    dataset = ImageFiles(files, "RGB", max_pixels=args.max_pixels)
    loader = DataLoader(dataset, batch_size=1, collate_fn=lambda batch: collate_readable(batch, stack=False))
    batches = _trainer(args, logger=False, enable_progress_bar=False).predict(module, loader)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[int, dict[str, Any]] = {}
    results = []
    for output in (o for batch in batches for o in batch):
        path = files[output["key"]]
        image = pil_to_tensor(load_image(path, "RGB", args.max_pixels))
        drawn = draw_detections(image, output, module.categories, args.score_threshold)
        target = out / f"{path.stem}.png"
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target)
        shown = int((output["scores"] >= args.score_threshold).sum())
        entries[output["key"]] = {"path": str(path), "drawn": str(target), "shown": shown}
        if path in image_ids:
            results += to_coco_results(output, image_ids[path], module.cat_ids)
        elif args.results_json:
            entries[output["key"]]["note"] = f"not in {args.ann}, left out of the results json"
    if args.results_json:
        write_json(args.results_json, results)
    return [entries.get(i, {"path": str(path), "error": "unreadable image"}) for i, path in enumerate(files)]
