"""``botnet export --checkpoint DIR --format onnx|torchscript [--dynamic] --out FILE``."""

from __future__ import annotations

import sys

from botnet.cli.common import ArgumentParser
from botnet.export import EXPORTERS, example_input, export_onnx, export_torchscript, onnx_max_error
from botnet.models import ResNet


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="botnet export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="directory written by save_pretrained")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    parser.add_argument("--out", required=True, metavar="FILE")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic height and width (batch always is)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript", help="ONNX exporter (botnet.export)")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="example input size")
    args = parser.parse_args(argv)
    try:
        model = ResNet.from_pretrained(args.checkpoint)
    except (OSError, ValueError) as err:
        print(f"botnet export: {err}", file=sys.stderr)
        return 1
    img_size = tuple(args.img_size) if args.img_size else None
    if args.format == "torchscript":
        export_torchscript(model, args.out, img_size)
        print(f"{args.checkpoint} -> {args.out} (TorchScript, traced; load with torch.jit.load)")
        return 0
    try:
        export_onnx(model, args.out, dynamic=args.dynamic, exporter=args.exporter, img_size=img_size)
    except ValueError as err:
        print(f"botnet export: {err}", file=sys.stderr)
        return 1
    message = f"{args.checkpoint} -> {args.out} (ONNX, {args.exporter} exporter)"
    try:
        error = onnx_max_error(model, args.out, example_input(model, img_size))
        message += f"; onnxruntime vs PyTorch max |diff| {error:.2e}"
    except ImportError:
        message += "; install onnxruntime to check it"
    print(message)
    return 0
