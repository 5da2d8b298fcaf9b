"""``botnet detect``: make the demo COCO set, train a detector, evaluate it with COCOeval, draw predictions.

    botnet detect make-demo-data --out data/digits
    botnet detect train --data data/digits --model maskrcnn_botnet50_fpn --image-size 256 --max-steps 200
    botnet detect eval --checkpoint runs/detect --data data/digits --split val
    botnet detect predict --checkpoint runs/detect data/digits/val/*.png --out preds

Datasets use COCO's layout: ``ROOT/SPLIT/`` images and ``ROOT/annotations/instances_SPLIT.json``
(``--split val2017`` for COCO itself). ``--checkpoint`` is a training run folder (``model.safetensors`` +
``config.json``) or a Lightning ``.ckpt`` of one. The work is done by :mod:`botnet.detection.run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from botnet.cli.common import (
    ArgumentParser,
    ParseKwargs,
    UsageError,
    add_config_arg,
    add_hardware_args,
    add_max_pixels_arg,
    count,
    parse_layered,
    positive_int,
    quiet_lightning,
)
from botnet.detection.builders import PYRAMID_LEVELS, list_detectors

PROG = "botnet detect"
MAKE_DEMO, TRAIN, EVAL, PREDICT = "make-demo-data", "train", "eval", "predict"
SUBCOMMANDS = {
    MAKE_DEMO: "write the synthetic digits-on-photos COCO set (no download)",
    TRAIN: "train on a COCO-format set; validates with COCOeval after each epoch",
    EVAL: "COCOeval box (and mask) AP of a trained detector on a split",
    PREDICT: "draw a trained detector's detections on images (PNG)",
}


def _detector_name(text: str) -> str:
    if text not in list_detectors():
        raise argparse.ArgumentTypeError(f"unknown detector {text!r}; see botnet.detection.list_detectors()")
    return text


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (``botnet detect <command> --help``)."""
    parser = ArgumentParser(prog=f"{PROG} {command}", description=SUBCOMMANDS[command])
    parser.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (1 is fastest on a loaded shared machine)"
    )
    if command == MAKE_DEMO:
        parser.add_argument("--out", type=Path, required=True, help="folder for ROOT/{train,val}, ROOT/annotations")
        parser.add_argument("--train", type=int, default=64, help="training images")
        parser.add_argument("--val", type=int, default=16, help="validation images")
        parser.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"), help="image size")
        parser.add_argument(
            "--digit-size",
            type=float,
            nargs=2,
            default=(0.15, 0.4),
            metavar=("LOW", "HIGH"),
            help="digit side as a fraction of the image's short side",
        )
        parser.add_argument("--seed", type=int, default=0)
        return parser
    if command == TRAIN:
        add_config_arg(parser)
        parser.add_argument("--data", type=Path, required=True, help="dataset root (COCO layout)")
        parser.add_argument("--train-split", default="train")
        parser.add_argument("--val-split", default="val", help="'' for no validation")
        parser.add_argument("--model", type=_detector_name, default="maskrcnn_botnet50_fpn")
        parser.add_argument(
            "--image-size", type=positive_int, default=1024, help="long side the detector resizes images to"
        )
        parser.add_argument(
            "--backbone-arg",
            action=ParseKwargs,
            default={},
            metavar="KEY=VALUE",
            help="botnet.create_model override, repeatable, e.g. channels=(16,32,64,128)",
        )
        parser.add_argument("--fpn-channels", type=positive_int, default=256)
        parser.add_argument(
            "--anchor-sizes",
            type=float,
            nargs=PYRAMID_LEVELS,
            metavar="PX",
            help="RPN anchor side per FPN level (strides 4..64), pixels of the resized image "
            "(default torchvision's 32 64 128 256 512; match the objects, e.g. 8 16 32 64 128 for small ones)",
        )
        parser.add_argument(
            "--box-head-dim", type=positive_int, default=1024, help="box head width (torchvision's 1024)"
        )
        parser.add_argument(
            "--mask-head-dim", type=positive_int, default=256, help="mask head channels (torchvision's 256)"
        )
        parser.add_argument(
            "--detector-arg",
            action=ParseKwargs,
            default={},
            metavar="KEY=VALUE",
            help="torchvision MaskRCNN/FasterRCNN argument, repeatable, e.g. rpn_batch_size_per_image=64, "
            "min_size=192, box_detections_per_img=20",
        )
        parser.add_argument(
            "--backbone-weights", type=Path, help="classifier weights to start the backbone from (file or run folder)"
        )
        parser.add_argument(
            "--frozen-bn", action="store_true", help="FrozenBatchNorm2d in the backbone (needs --backbone-weights)"
        )
        parser.add_argument("--trainable-layers", type=int, default=5, choices=range(6))
        parser.add_argument("--epochs", type=positive_int, default=12)
        parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
        parser.add_argument("--batch-size", type=positive_int, default=2)
        parser.add_argument("--opt", default="momentum", help="timm optimizer: momentum (SGD), adamw, ...")
        parser.add_argument("--lr", type=float, default=0.02, help="peak learning rate")
        parser.add_argument("--weight-decay", type=float, default=1e-4, help="L2 (SGD) or decoupled (AdamW)")
        parser.add_argument(
            "--warmup-steps", type=int, default=100, help="linear LR warm-up, at most a tenth of the run's steps"
        )
        parser.add_argument(
            "--hflip", type=float, default=0.5, help="horizontal flip probability (0 for digits, text, ...)"
        )
        parser.add_argument(
            "--scale-jitter",
            type=float,
            nargs=2,
            metavar=("LOW", "HIGH"),
            help="large-scale jitter of training images to --image-size squares (the paper: 0.8 1.25 at 1024)",
        )
        parser.add_argument("--workers", type=count, default=0, help="dataloader workers")
        parser.add_argument("--strict", action="store_true", help="annotation problems are errors, not warnings")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", type=Path, default=Path("runs/detect"), help="run folder")
        add_max_pixels_arg(parser)
        add_hardware_args(parser)
        return parser
    parser.add_argument("--checkpoint", type=Path, required=True, help="run folder (or its .ckpt) of detect train")
    if command == EVAL:
        parser.add_argument("--data", type=Path, required=True)
        parser.add_argument("--split", default="val")
        parser.add_argument("--batch-size", type=positive_int, default=2)
        parser.add_argument("--results-json", type=Path, help="also write the detections in COCO results format")
        add_max_pixels_arg(parser)
    else:
        parser.add_argument("images", type=Path, nargs="+", help="image files and/or folders")
        parser.add_argument("--out", type=Path, required=True, help="folder for the drawn PNGs")
        parser.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
        parser.add_argument("--results-json", type=Path, help="also write all detections in COCO results format")
        parser.add_argument("--ann", type=Path, help="COCO json whose image ids the results json should use")
        add_max_pixels_arg(parser)
    add_hardware_args(parser, distributed=False)
    return parser


# create_detector arguments that have a flag of their own.
OWN_FLAGS = {
    name: f"--{name.replace('_', '-')}"
    for name in ("image_size", "fpn_channels", "anchor_sizes", "box_head_dim", "mask_head_dim")
}
OWN_FLAGS |= {"frozen_bn": "--frozen-bn", "trainable_layers": "--trainable-layers", "backbone_kwargs": "--backbone-arg"}
OWN_FLAGS |= {"backbone_weights": "--backbone-weights", "num_classes": "the data's categories"}


def check_train_args(args: argparse.Namespace) -> None:
    """:class:`UsageError` for ``train`` options that cannot work together."""
    if args.frozen_bn and not args.backbone_weights:
        raise UsageError(
            "--frozen-bn needs --backbone-weights: from scratch, every block's last BatchNorm starts at zero, "
            "so frozen it would zero every residual branch (MHSA included) for good"
        )
    if args.scale_jitter is not None and not 0 < args.scale_jitter[0] <= args.scale_jitter[1]:
        raise UsageError(f"--scale-jitter LOW HIGH: 0 < LOW <= HIGH, got {' '.join(map(str, args.scale_jitter))}")
    for key in args.detector_arg:
        if key in OWN_FLAGS:
            raise UsageError(f"--detector-arg {key}: set it with {OWN_FLAGS[key]}")


def _usage() -> str:
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "", __doc__, "commands:"]
    lines += [f"  {name:<15} {help_}" for name, help_ in SUBCOMMANDS.items()]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``[command, options...]`` -> the options of that subcommand (``--config`` layered under the flags)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        raise SystemExit(0)
    if argv[0] not in SUBCOMMANDS:
        print(f"{PROG}: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    parser = build_parser(argv[0])
    args = parse_layered(parser, argv[1:])
    args.command = argv[0]
    for flag in ("batch_size", "epochs", "image_size"):  # also when they come from --config
        if getattr(args, flag, 1) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.command == TRAIN:
        check_train_args(args)
    return args


def _metrics_table(metrics: dict[str, float]) -> str:
    """COCOeval's AP columns as a markdown table, one row per IoU type, in percent."""
    columns = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for iou_type in sorted({key.split("_")[0] for key in metrics}):
        lines.append(f"| {iou_type} | " + " | ".join(f"{100 * metrics[f'{iou_type}_{c}']:.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n(COCOeval, percent; -100.0 = no ground truth in that size range)"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from botnet.detection import run  # Lightning and pycocotools: imported once the flags are known good

    if args.command == MAKE_DEMO:
        for split, (images, ann) in run.make_demo(args).items():
            print(f"{split}: {images} ({len(list(images.glob('*.png')))} images), {ann}")
        return 0
    quiet_lightning()
    if args.command == TRAIN:
        _, module = run.fit(args)
        if module.coco_metrics:
            print(_metrics_table(module.coco_metrics))
        print(f"run folder: {args.out} (model.safetensors + config.json; checkpoints/last.ckpt)")
        return 0
    if args.command == EVAL:
        result = run.evaluate(args)
        skipped = f" ({result['skipped']} unreadable, skipped)" if result["skipped"] else ""
        print(f"{args.data} {args.split}: {result['images']} images{skipped}")
        print(_metrics_table(result["metrics"]))
        if result["results"]:
            print(f"results: {result['results']} ({result['detections']} detections)")
        return 0
    entries = run.predict(args)
    for entry in entries:
        if "error" in entry:
            print(f"{entry['path']}: {entry['error']}")
        else:
            note = f" ({entry['note']})" if "note" in entry else ""
            print(f"{entry['path']}: {entry['shown']} detections >= {args.score_threshold} -> {entry['drawn']}{note}")
    if args.results_json:
        print(f"results: {args.results_json}")
    return 0
