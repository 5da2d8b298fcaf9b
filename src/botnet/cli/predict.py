"""botnet predict: the top-k classes, with names and probabilities, of image files or folders.

Images are preprocessed as the checkpoint's config.json says; unreadable files are reported, not fatal.
The work is :func:`botnet.train.run.predict`.
"""

from __future__ import annotations

import argparse
import json

from botnet.cli.common import (
    ArgumentParser,
    add_checkpoint_arg,
    add_hardware_args,
    add_loader_args,
    add_max_pixels_arg,
    positive_int,
    quiet_lightning,
)
from botnet.train.run import predict

PROG = "botnet predict"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    add_checkpoint_arg(parser)
    parser.add_argument("--topk", type=positive_int, default=5, help="classes per image (default: %(default)s)")
    add_loader_args(parser, batch_size=64)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    add_max_pixels_arg(parser)
    add_hardware_args(parser, distributed=False)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()
    results = predict(args)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for result in results:
        if "error" in result:
            print(f"{result['path']}: {result['error']}")
            continue
        ranked = " | ".join(f"{p['class']} {100 * p['probability']:.2f}%" for p in result["predictions"])
        print(f"{result['path']}: {ranked}")
    return 0
