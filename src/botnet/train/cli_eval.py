"""botnet eval: top-1 / top-5 accuracy and a confusion matrix of model.safetensors on a data split.

Images are preprocessed as the checkpoint's config.json says (input size, mean/std, crop fraction).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning.pytorch as pl

from botnet.checkpoint import atomic_write, read_config
from botnet.train.cli import add_checkpoint_arg, add_hardware_args, quiet_lightning, run_command, trainer_placement
from botnet.train.data import ImageDataModule, read_class_names
from botnet.train.module import ImageClassifier
from botnet.train.plots import plot_confusion_matrix

PROG = "botnet eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_checkpoint_arg(parser)
    parser.add_argument("--data", help="mnist5k or an ImageFolder root (default: the data the model was trained on)")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="loader processes (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="where eval.json and confusion_matrix.png go (default: --checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_hardware_args(parser, distributed=False)
    return parser


def evaluate(args: argparse.Namespace) -> dict:
    """Run the test loop of :class:`ImageClassifier` over the split; returns the ``eval.json`` content."""
    module = ImageClassifier.from_pretrained(args.checkpoint)
    data = args.data or read_config(args.checkpoint).get("extra", {}).get("data")
    if not data:
        raise ValueError(f"{args.checkpoint}/config.json does not record its data set: pass --data")
    names = read_class_names(data)
    if names != module.class_names:
        raise ValueError(
            f"{data} has the classes {names[:10]}{'...' if len(names) > 10 else ''} but {args.checkpoint} was trained "
            f"for {module.class_names[:10]}{'...' if len(module.class_names) > 10 else ''}"
        )
    cfg = module.model.pretrained_cfg
    datamodule = ImageDataModule(
        data,
        img_size=cfg["input_size"][-1],
        in_chans=module.model.in_chans,
        mean=cfg["mean"],
        std=cfg["std"],
        batch_size=args.batch_size,
        workers=args.workers,
        eval_split=args.split,
        interpolation=cfg["interpolation"],
        crop_pct=cfg["crop_pct"],
    )
    trainer = pl.Trainer(
        **trainer_placement(args),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.json,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    out = args.out or args.checkpoint
    figure = plot_confusion_matrix(module.confusion.cpu(), names, out / "confusion_matrix.png")
    result = {
        "checkpoint": str(args.checkpoint),
        "data": data,
        "split": args.split,
        "images": int(module.confusion.compute().sum()),
        "top1": float(trainer.callback_metrics["test/top1"]),
        "top5": float(trainer.callback_metrics["test/top5"]),
        "confusion_matrix": str(figure),
    }
    atomic_write(out / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    return result


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()

    def command() -> int:
        result = evaluate(args)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{result['data']} {result['split']}: {result['images']} images, "
                f"top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}%\n"
                f"confusion matrix: {result['confusion_matrix']}"
            )
        return 0

    return run_command(PROG, command, args.batch_size)
