"""botnet eval: top-1 / top-5 accuracy and a confusion matrix of model.safetensors on a data split.

Images are preprocessed as the checkpoint's config.json says (input size, mean/std, crop fraction).
The work is :func:`botnet.train.run.evaluate`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from botnet.cli.common import (
    ArgumentParser,
    add_checkpoint_arg,
    add_hardware_args,
    add_loader_args,
    add_max_pixels_arg,
    quiet_lightning,
)
from botnet.train.run import evaluate

PROG = "botnet eval"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__)
    add_checkpoint_arg(parser)
    parser.add_argument("--data", help="mnist5k or an ImageFolder root (default: the data the model was trained on)")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="(default: %(default)s)")
    add_loader_args(parser, batch_size=128)
    parser.add_argument("--out", type=Path, help="where eval.json and confusion_matrix.png go (default: --checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_max_pixels_arg(parser)
    add_hardware_args(parser, distributed=False)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()
    result = evaluate(args)
    if args.json:
        print(json.dumps(result))
    else:
        skipped = f" ({result['skipped']} unreadable, skipped)" if result["skipped"] else ""
        print(
            f"{result['data']} {result['split']}: {result['images']} images{skipped}, "
            f"top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}%\n"
            f"confusion matrix: {result['confusion_matrix']}"
        )
    return 0
