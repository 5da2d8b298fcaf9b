"""``botnet detect``: make the demo COCO set, train a detector, evaluate it with COCOeval, draw predictions.

    botnet detect make-demo-data --out data/digits
    botnet detect train --data data/digits --model maskrcnn_botnet50_fpn --image-size 256 --max-steps 200
    botnet detect eval --checkpoint runs/detect/checkpoints/last.ckpt --data data/digits --split val
    botnet detect predict --checkpoint runs/detect/checkpoints/last.ckpt data/digits/val/*.png --out preds

Datasets use COCO's layout: ``ROOT/SPLIT/`` images and ``ROOT/annotations/instances_SPLIT.json``
(``--split val2017`` for COCO itself).
"""

from __future__ import annotations

import argparse
import ast
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from botnet.detection.builders import list_detectors

MAKE_DEMO, TRAIN, EVAL, PREDICT = "make-demo-data", "train", "eval", "predict"


def _backbone_arg(text: str) -> tuple[str, Any]:
    """``"channels=(8,16,32,64)"`` -> ``("channels", (8, 16, 32, 64))`` (values are Python literals)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare string such as act_layer=silu


def _detector_name(text: str) -> str:
    if text not in list_detectors():
        raise argparse.ArgumentTypeError(f"unknown detector {text!r}; see botnet.detection.list_detectors()")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="botnet detect", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a loaded shared machine)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        MAKE_DEMO, help="write the synthetic digits-on-photos COCO set (no download)", parents=[common]
    )
    demo.add_argument("--out", type=Path, required=True, help="folder to write ROOT/{train,val}, ROOT/annotations")
    demo.add_argument("--train", type=int, default=64, help="training images")
    demo.add_argument("--val", type=int, default=16, help="validation images")
    demo.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"), help="image size")
    demo.add_argument("--seed", type=int, default=0)

    train = commands.add_parser(
        TRAIN, help="train on a COCO-format set; validates with COCOeval after each epoch", parents=[common]
    )
    train.add_argument("--data", type=Path, required=True, help="dataset root (COCO layout)")
    train.add_argument("--train-split", default="train")
    train.add_argument("--val-split", default="val", help="'' for no validation")
    train.add_argument("--model", type=_detector_name, default="maskrcnn_botnet50_fpn")
    train.add_argument("--image-size", type=int, default=1024, help="long side the detector resizes images to")
    train.add_argument("--backbone-arg", type=_backbone_arg, action="append", default=[], metavar="KEY=VALUE",
                       help="botnet.create_model override, repeatable, e.g. channels=(16,32,64,128)")  # fmt: skip
    train.add_argument("--fpn-channels", type=int, default=256)
    train.add_argument("--backbone-weights", type=Path, help="local classifier state_dict to start the backbone from")
    train.add_argument("--frozen-bn", action="store_true", help="FrozenBatchNorm2d in the backbone")
    train.add_argument("--trainable-layers", type=int, default=5, choices=range(6))
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--lr", type=float, default=0.02)
    train.add_argument("--warmup-steps", type=int, default=100)
    train.add_argument("--workers", type=int, default=0, help="dataloader workers")
    train.add_argument("--strict", action="store_true", help="annotation problems are errors, not warnings")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=Path("runs/detect"), help="logs and checkpoints")

    evaluate = commands.add_parser(EVAL, help="COCOeval box (and mask) AP of a checkpoint on a split", parents=[common])
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--batch-size", type=int, default=2)
    evaluate.add_argument("--results-json", type=Path, help="also write the detections in COCO results format")

    predict = commands.add_parser(PREDICT, help="draw a checkpoint's detections on images (PNG)", parents=[common])
    predict.add_argument("--checkpoint", type=Path, required=True)
    predict.add_argument("images", type=Path, nargs="+")
    predict.add_argument("--out", type=Path, required=True, help="folder for the drawn PNGs")
    predict.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    predict.add_argument("--results-json", type=Path, help="also write all detections in COCO results format")
    predict.add_argument("--ann", type=Path, help="COCO json whose image ids the results json should use")
    return parser


def _trainer(**kwargs: Any) -> Any:
    import lightning as L

    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # workers are a flag; 0 is a fine default
    return L.Trainer(accelerator="auto", devices=1, enable_model_summary=False, **kwargs)


def _make_demo(args: argparse.Namespace) -> int:
    from botnet.detection.synthetic import make_demo_data

    paths = make_demo_data(args.out, args.train, args.val, tuple(args.size), seed=args.seed)
    for split, (images, ann) in paths.items():
        print(f"{split}: {images} ({len(list(images.glob('*.png')))} images), {ann}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from botnet.detection.data import coco_split
    from botnet.detection.engine import CocoDataModule, DetectionModule

    L.seed_everything(args.seed, workers=True, verbose=False)
    head = args.model.split("_")[0]
    data = CocoDataModule(
        coco_split(args.data, args.train_split),
        coco_split(args.data, args.val_split) if args.val_split else None,
        batch_size=args.batch_size,
        num_workers=args.workers,
        with_masks=head == "maskrcnn",
        strict=args.strict,
    )
    detector_kwargs = dict(
        image_size=args.image_size,
        fpn_channels=args.fpn_channels,
        frozen_bn=args.frozen_bn,
        trainable_layers=args.trainable_layers,
        backbone_kwargs=dict(args.backbone_arg),
    )
    reference = data.reference
    module = DetectionModule(
        args.model,
        reference.num_classes,
        categories=reference.categories,
        cat_ids=reference.cat_ids,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        detector_kwargs=detector_kwargs,
        backbone_weights=args.backbone_weights,
    )
    checkpoints = ModelCheckpoint(dirpath=args.out / "checkpoints", save_last=True)
    trainer = _trainer(
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        logger=CSVLogger(args.out, name="logs"),
        callbacks=[checkpoints],
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        **({} if args.val_split else {"limit_val_batches": 0}),
    )
    trainer.fit(module, datamodule=data)
    if data.val_set is not None and module.validated_step != trainer.global_step:  # stopped mid-epoch
        trainer.validate(module, datamodule=data, verbose=False)
    if module.coco_metrics:
        print(_metrics_table(module.coco_metrics))
    print(f"checkpoint: {checkpoints.last_model_path}")
    return 0


def _metrics_table(metrics: dict[str, float]) -> str:
    """COCOeval's AP columns as a markdown table, one row per IoU type, in percent."""
    columns = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for iou_type in sorted({key.split("_")[0] for key in metrics}):
        lines.append(f"| {iou_type} | " + " | ".join(f"{100 * metrics[f'{iou_type}_{c}']:.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n(COCOeval, percent; -100.0 = no ground truth in that size range)"


def _eval(args: argparse.Namespace) -> int:
    from botnet.detection.data import coco_split
    from botnet.detection.engine import CocoDataModule, DetectionModule

    module = DetectionModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    with_masks = module.model.roi_heads.has_mask()
    data = CocoDataModule(None, coco_split(args.data, args.split), batch_size=args.batch_size, with_masks=with_masks)
    _trainer(logger=False, enable_progress_bar=False).validate(module, datamodule=data, verbose=False)
    print(_metrics_table(module.coco_metrics))
    if args.results_json:
        assert module.evaluator is not None
        args.results_json.write_text(json.dumps(module.evaluator.results))
        print(f"results: {args.results_json} ({len(module.evaluator.results)} detections)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from botnet.detection.data import ImageFiles, collate, read_rgb
    from botnet.detection.draw import draw_detections
    from botnet.detection.engine import DetectionModule
    from botnet.detection.evaluation import to_coco_results

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise SystemExit(f"botnet detect predict: no such image {missing[0]}")
    image_ids = {path: i for i, path in enumerate(args.images, start=1)}
    if args.ann:
        by_name = {Path(img["file_name"]).name: img["id"] for img in json.loads(args.ann.read_text())["images"]}
        image_ids = {path: by_name[path.name] for path in args.images if path.name in by_name}
    module = DetectionModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    loader = DataLoader(ImageFiles(args.images), batch_size=1, collate_fn=collate)
    batches = _trainer(logger=False, enable_progress_bar=False).predict(module, loader)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for output in (o for batch in batches for o in batch):
        path = Path(output["key"])
        image = read_rgb(path)
        drawn = draw_detections(image, output, module.categories, args.score_threshold)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(args.out / f"{path.stem}.png")
        shown = int((output["scores"] >= args.score_threshold).sum())
        print(f"{path}: {shown} detections >= {args.score_threshold} -> {args.out / (path.stem + '.png')}")
        if path in image_ids:
            results += to_coco_results(output, image_ids[path], module.cat_ids)
        elif args.results_json:
            print(f"{path}: not in {args.ann}, left out of the results json")
    if args.results_json:
        args.results_json.write_text(json.dumps(results))
        print(f"results: {args.results_json} ({len(results)} detections)")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = {MAKE_DEMO: _make_demo, TRAIN: _train, EVAL: _eval, PREDICT: _predict}[args.command]
    return run(args)
