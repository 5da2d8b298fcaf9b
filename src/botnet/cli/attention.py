"""``botnet attention``: PNG figures of what an MHSA block attends to, for a checkpoint and some images, and
(``--html``) an interactive explorer page of every MHSA block per image.

The image is converted to the model's channels (grayscale or RGB), resized to the checkpoint's input size
(whole image, no crop; ``--native-size`` keeps its size) and normalised with the checkpoint's mean / std.
Queries are pixels ``y,x`` of the image file as given, whatever size the model sees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from botnet.checkpoint import read_config
from botnet.models import ResNet
from botnet.viz.explorer import write_explorer
from botnet.viz.figures import all_queries_figure, grid_figure, offset_figure, query_figure, save_figure
from botnet.viz.maps import BlockAttention, Query, block_attention

DISPLAY_SIDE = 384  # long side, in screen pixels, of the image drawn under the overlays
IMAGE_MODES = {1: "L", 3: "RGB"}


def parse_query(text: str) -> Query:
    """``"y,x"`` (pixels) -> ``(y, x)``; ``"center"``, ``"grid"``, ``"all"`` unchanged."""
    if text in ("center", "grid", "all"):
        return text  # type: ignore[return-value]
    parts = text.split(",")
    if len(parts) == 2 and all(p.strip().lstrip("-").isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    raise ValueError(f"bad --query {text!r}; use y,x in image pixels (e.g. 12,30), center, grid or all")


def model_input(image: Image.Image, config: dict[str, Any], native_size: bool) -> torch.Tensor:
    """PIL image -> normalised model input ``(1, in_chans, H_in, W_in)`` per the checkpoint's ``pretrained_cfg``."""
    cfg = config["pretrained_cfg"]
    in_chans, in_h, in_w = cfg["input_size"]
    if in_chans not in IMAGE_MODES:
        raise ValueError(f"the model takes {in_chans} input channels; botnet attention handles 1 (gray) or 3 (RGB)")
    image = image.convert(IMAGE_MODES[in_chans])
    if not native_size:
        resample = Image.Resampling[str(cfg.get("interpolation", "bilinear")).upper()]
        image = image.resize((in_w, in_h), resample)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)
    x = pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)  # (C, H, W)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(-1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def display_image(image: Image.Image) -> np.ndarray:
    """The image as shown under the overlays: long side ``DISPLAY_SIDE``, floats in ``[0, 1]``, gray or RGB."""
    image = image.convert("L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB")
    scale = DISPLAY_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255


def prediction(attention: BlockAttention, class_names: list[str] | None) -> str:
    """``"label (p=0.93)"`` for a classifier's output, ``""`` otherwise."""
    output = attention.output
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[1] < 1:
        return ""
    probs = output[0].softmax(0)
    best = int(probs.argmax())
    label = class_names[best] if class_names and best < len(class_names) else str(best)
    return f"{label} (p={probs[best].item():.2f})"


def write_figures(
    image: np.ndarray, attention: BlockAttention, query: Query, out: Path, stem: str, grid_points: int, dpi: int
) -> list[Path]:
    """The query figure (a pixel / center), grid figure (grid) or all-queries figure (all), plus the offsets."""
    prefix = out / f"{stem}_{attention.block}"
    if query == "grid":
        main_fig, name = grid_figure(image, attention, "grid", grid_points), "grid"
    elif query == "all":
        main_fig, name = all_queries_figure(attention), "all"
    else:
        y, x = attention.query_maps(query).pixels[0]
        main_fig, name = query_figure(image, attention, query), f"query_{y}_{x}"
    return [
        save_figure(main_fig, f"{prefix}_{name}.png", dpi),
        save_figure(offset_figure(attention), f"{prefix}_offsets.png", dpi),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="botnet attention", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="directory with config.json + model.safetensors")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s), any size, gray or colour")
    parser.add_argument("--block", help="MHSA layer name, e.g. layer4.2.conv2 (default: the last one)")
    parser.add_argument("--query", default="center", help="y,x (pixels of the image file), center, grid or all")
    parser.add_argument("--grid-points", type=int, default=3, help="queries per side for --query grid")
    parser.add_argument("--native-size", action="store_true", help="feed the image at its own size, not resized")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution")
    parser.add_argument("--out", type=Path, help="folder for the PNG files")
    parser.add_argument(
        "--html",
        type=Path,
        help="write an interactive attention explorer page of every MHSA block (or --block) here; with several "
        "images, one page each, named OUT_<image stem>.html",
    )
    args = parser.parse_args(argv)
    if args.out is None and args.html is None:
        parser.error("give --out (PNG figures), --html (explorer page) or both")

    try:
        query = parse_query(args.query)
        if args.grid_points < 1:
            raise ValueError(f"--grid-points must be >= 1, got {args.grid_points}")
        config = read_config(args.checkpoint)
        model = ResNet.from_pretrained(args.checkpoint).eval()
        class_names = config.get("extra", {}).get("class_names")
        for path in args.image:
            try:
                image = Image.open(path)
                image.load()
            except (OSError, UnidentifiedImageError) as err:
                raise ValueError(f"cannot read image {path}: {err}") from None
            x = model_input(image, config, args.native_size)
            if args.native_size and min(x.shape[-2:]) < model.min_input_size:
                raise ValueError(
                    f"{path} is {image.height}x{image.width}, below the model's minimum side of "
                    f"{model.min_input_size}; drop --native-size to resize it to the checkpoint's input size"
                )
            attention = block_attention(model, x, args.block, image_size=(image.height, image.width))
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
    except (ValueError, FileNotFoundError) as err:
        print(f"botnet attention: error: {err}", file=sys.stderr)
        return 2
    return 0
