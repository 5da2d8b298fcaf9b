"""``botnet attention``: PNG figures of what an MHSA block attends to, for a checkpoint and some images, and
(``--html``) an interactive explorer page of every MHSA block per image.

The image is converted to the model's channels (grayscale or RGB), resized to the checkpoint's input size
(whole image, no crop; ``--native-size`` keeps its size) and normalised with the checkpoint's mean / std
(:func:`botnet.data.preprocess`). Queries are pixels ``y,x`` of the image file as given, whatever size the model
sees. Unreadable images are skipped and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from botnet.checkpoint import read_config
from botnet.cli.common import FAILED, ArgumentParser, UsageError, add_max_pixels_arg, positive_int
from botnet.data import IMAGE_ERRORS, load_image, preprocess
from botnet.models import ResNet
from botnet.viz.explorer import write_explorer
from botnet.viz.figures import display_image, prediction, write_figures
from botnet.viz.maps import Query, block_attention, get_block

PROG = "botnet attention"


def parse_query(text: str) -> Query:
    """``"y,x"`` (pixels) -> ``(y, x)``; ``"center"``, ``"grid"``, ``"all"`` unchanged."""
    if text in ("center", "grid", "all"):
        return text  # type: ignore[return-value]
    parts = text.split(",")
    if len(parts) == 2 and all(p.strip().lstrip("-").isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    raise UsageError(f"bad --query {text!r}; use y,x in image pixels (e.g. 12,30), center, grid or all")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="directory with config.json + model.safetensors")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s), any size, gray or colour")
    parser.add_argument("--block", help="MHSA layer name, e.g. layer4.2.conv2 (default: the last one)")
    parser.add_argument("--query", default="center", help="y,x (pixels of the image file), center, grid or all")
    parser.add_argument("--grid-points", type=positive_int, default=3, help="queries per side for --query grid")
    parser.add_argument("--native-size", action="store_true", help="feed the image at its own size, not resized")
    parser.add_argument("--dpi", type=positive_int, default=100, help="PNG resolution")
    parser.add_argument("--out", type=Path, help="folder for the PNG files")
    parser.add_argument(
        "--html",
        type=Path,
        help="write an interactive attention explorer page of every MHSA block (or --block) here; with several "
        "images, one page each, named OUT_<image stem>.html",
    )
    add_max_pixels_arg(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.html is None:
        parser.error("give --out (PNG figures), --html (explorer page) or both")
    query = parse_query(args.query)
    if args.grid_points < 1:
        raise UsageError(f"--grid-points must be >= 1, got {args.grid_points}")
    config = read_config(args.checkpoint)
    model = ResNet.from_pretrained(args.checkpoint).eval()
    try:
        get_block(model, args.block)
    except ValueError as err:
        raise UsageError(f"--block: {err}") from None
    class_names = config.get("extra", {}).get("class_names")
    skipped = 0
    for path in args.image:
        try:
            image = load_image(path, "RGB" if model.in_chans == 3 else "L", args.max_pixels)
        except IMAGE_ERRORS as err:
            skipped += 1
            print(f"{PROG}: skipped unreadable image {path} ({err})", file=sys.stderr)
            continue
        x = preprocess(image, model.pretrained_cfg, resize="none" if args.native_size else "stretch")
        if args.native_size and min(x.shape[-2:]) < model.min_input_size:
            raise UsageError(
                f"{path} is {image.height}x{image.width}, below the model's minimum side of "
                f"{model.min_input_size}; drop --native-size to resize it to the checkpoint's input size"
            )
        try:
            attention = block_attention(model, x, args.block, image_size=(image.height, image.width))
            if query not in ("center", "grid", "all"):
                attention.query_maps(query)  # a pixel outside the image is a usage error
        except ValueError as err:
            raise UsageError(str(err)) from None
        guess = prediction(attention, class_names)
        if guess:
            print(f"{path}: predicted {guess}", file=sys.stderr)
        outputs = []
        if args.out is not None:
            outputs = write_figures(
                display_image(image), attention, query, args.out, Path(path).stem, args.grid_points, args.dpi
            )
        if args.html is not None:
            html = args.html if len(args.image) == 1 else args.html.with_stem(f"{args.html.stem}_{Path(path).stem}")
            blocks = [args.block] if args.block else None
            outputs.append(write_explorer(model, image, html, blocks, x=x, class_names=class_names))
        for output in outputs:
            print(output)
    if skipped:
        print(f"{PROG}: {skipped} of {len(args.image)} images skipped (unreadable)", file=sys.stderr)
    return FAILED if skipped == len(args.image) else 0
