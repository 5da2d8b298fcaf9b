"""Matplotlib figures of a :class:`~botnet.viz.maps.BlockAttention`: overlays, logit split, offsets, all queries.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, any backend). Each panel is
``PANEL_INCHES`` square and a title strip of ``TITLE_INCHES`` sits on top, so a figure of ``rows x cols`` panels
saved at ``dpi`` is ``cols * PANEL_INCHES * dpi`` by ``(rows * PANEL_INCHES + TITLE_INCHES) * dpi`` pixels.

``image`` arguments are what is shown under the overlays: ``(H_disp, W_disp)`` grayscale or
``(H_disp, W_disp, 3)`` RGB, floats in ``[0, 1]`` or ``uint8``, of any size. The axes are in the pixels of
``attention.image_size`` whatever the display size, so query markers and tick labels refer to the caller's image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator
from PIL import Image

from botnet.checkpoint import atomic_write
from botnet.viz.maps import BlockAttention, Pixel, Query, upsample

PANEL_INCHES = 2.4
TITLE_INCHES = 0.6
ATTENTION_CMAP = "inferno"
LOGIT_CMAP = "viridis"
DISPLAY_SIDE = 384  # long side, in screen pixels, of the image drawn under the overlays


def _figure(rows: int, cols: int, title: str) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows x cols`` panels, ``(rows, cols)`` array of axes."""
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + TITLE_INCHES), layout="constrained")
    fig.suptitle(title, fontsize=10)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _with_mean(per_head: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``(h, ...)`` -> ``[("mean of heads", mean), ("head 0", ...), ...]``: the panels of one figure row."""
    return [("mean of heads", per_head.mean(0))] + [(f"head {k}", head) for k, head in enumerate(per_head)]


def _label_outer(axes: np.ndarray, xlabel: str, ylabel: str) -> None:
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)


def _overlay(
    ax: Axes, image: np.ndarray, token_map: torch.Tensor, attention: BlockAttention, cmap: str, title: str
) -> None:
    """Draw ``image`` and the ``(H, W)`` token map upsampled over it, in the frame of ``attention.image_size``."""
    img_h, img_w = attention.image_size
    extent = (-0.5, img_w - 0.5, img_h - 0.5, -0.5)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=extent)
    overlay = upsample(token_map, image.shape[:2]).numpy()
    mappable = ax.imshow(overlay, cmap=cmap, alpha=0.6, extent=extent)
    _colorbar(ax, mappable)
    ax.set_title(title, fontsize=8)


def _colorbar(ax: Axes, mappable: AxesImage) -> None:
    bar = ax.figure.colorbar(mappable, ax=ax, shrink=0.8)
    bar.ax.yaxis.set_major_locator(MaxNLocator(4))
    bar.ax.tick_params(labelsize=7)


def _mark(ax: Axes, pixel: Pixel) -> None:
    ax.plot(pixel[1], pixel[0], marker="+", color="cyan", markersize=12, markeredgewidth=2)


def query_figure(image: np.ndarray, attention: BlockAttention, query: Query = "center") -> Figure:
    """One query's maps: rows attention / content logits ``q.k`` / position logits ``q.r``; columns mean + heads.

    The logit titles give each part's spread over the keys (std): softmax ignores shifts, so the part with the
    larger spread decides where the head looks.
    """
    maps = attention.query_maps(query)
    if len(maps.pixels) != 1:
        raise ValueError(f"query_figure shows one query; use grid_figure or all_queries_figure for {query!r}")
    pixel, token = maps.pixels[0], maps.tokens[0]
    heads = attention.num_heads
    height, width = attention.grid_size
    fig, axes = _figure(
        3,
        heads + 1,
        f"{attention.block}: query (y, x) = {pixel} -> token (row, col) = {token} of the {height}x{width} grid",
    )
    rows = (
        ("attention", maps.probs[0], ATTENTION_CMAP),
        ("content q·k", maps.content[0], LOGIT_CMAP),
        ("position q·r", maps.position[0], LOGIT_CMAP),
    )
    for row, (label, per_head, cmap) in enumerate(rows):
        for col, (head_label, token_map) in enumerate(_with_mean(per_head)):
            spread = "" if row == 0 else f", std {token_map.std().item():.2g}"
            ax = axes[row, col]
            _overlay(ax, image, token_map, attention, cmap, f"{head_label}\n{label}{spread}")
            _mark(ax, pixel)
    _label_outer(axes, "x (pixels)", "y (pixels)")
    return fig


def grid_figure(image: np.ndarray, attention: BlockAttention, query: Query = "grid", grid_points: int = 3) -> Figure:
    """Head-averaged attention of several queries, one panel each, laid out row-major (a grid: as in the image)."""
    maps = attention.query_maps(query, grid_points)
    count = len(maps.pixels)
    cols = grid_points if query == "grid" else math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    height, width = attention.grid_size
    fig, axes = _figure(rows, cols, f"{attention.block}: attention (mean of heads) over the {height}x{width} grid")
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.set_axis_off()
            continue
        _overlay(ax, image, maps.mean_probs[i], attention, ATTENTION_CMAP, f"query {maps.pixels[i]}")
        _mark(ax, maps.pixels[i])
    _label_outer(axes, "x (pixels)", "y (pixels)")
    return fig


def all_queries_figure(attention: BlockAttention) -> Figure:
    """Every query at once: per head (and mean), an ``H x W`` mosaic of tiles, tile ``(r, c)`` = query ``(r, c)``'s map.

    Each tile is that query's ``H x W`` attention over the keys, so a panel is ``H * H`` by ``W * W`` cells.
    """
    height, width = attention.grid_size
    heads = attention.num_heads
    per_head = attention.probs.reshape(heads, height, width, height, width)  # (h, r, c, key row, key col)
    mosaics = per_head.permute(0, 1, 3, 2, 4).reshape(heads, height * height, width * width)
    fig, axes = _figure(1, heads + 1, f"{attention.block}: attention of every query (tile = query token)")
    for ax, (label, mosaic) in zip(axes[0], _with_mean(mosaics)):
        mappable = ax.imshow(mosaic.numpy(), cmap=ATTENTION_CMAP, interpolation="nearest")
        _colorbar(ax, mappable)
        for r in range(1, height):
            ax.axhline(r * height - 0.5, color="white", linewidth=0.4)
        for c in range(1, width):
            ax.axvline(c * width - 0.5, color="white", linewidth=0.4)
        ax.set_xticks(np.arange(width) * width + (width - 1) / 2, [str(c) for c in range(width)])
        ax.set_yticks(np.arange(height) * height + (height - 1) / 2, [str(r) for r in range(height)])
        ax.set_title(label, fontsize=9)
    _label_outer(axes, "query column (token)", "query row (token)")
    return fig


def offset_figure(attention: BlockAttention) -> Figure:
    """Per head (and mean), the mean attention by offset ``(dy, dx) = key - query`` in tokens."""
    height, width = attention.grid_size
    offsets = attention.offsets()  # (h, 2H - 1, 2W - 1)
    heads = attention.num_heads
    extent = (-width + 0.5, width - 0.5, height - 0.5, -height + 0.5)  # cell centres at integer offsets
    fig, axes = _figure(1, heads + 1, f"{attention.block}: mean attention by offset over the {height}x{width} grid")
    for ax, (label, offset_map) in zip(axes[0], _with_mean(offsets)):
        mappable = ax.imshow(offset_map.numpy(), cmap=ATTENTION_CMAP, extent=extent, interpolation="nearest")
        _colorbar(ax, mappable)
        _mark(ax, (0, 0))
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.set_title(label, fontsize=9)
    _label_outer(axes, "dx (tokens, key - query)", "dy (tokens, key - query)")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100, tight: bool = False) -> Path:
    """Write ``fig`` as PNG at ``dpi`` atomically (size: see the module notes; ``tight`` trims the margins),
    creating the folder, and close it; returns the path. The one figure writer of the library."""
    import matplotlib.pyplot as plt

    bbox = "tight" if tight else None
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches=bbox))
    plt.close(fig)
    return Path(path)


def display_image(image: Image.Image, side: int = DISPLAY_SIDE) -> np.ndarray:
    """The image as shown under the overlays: long side ``side`` pixels, floats in ``[0, 1]``, gray or RGB."""
    image = image.convert("L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB")
    scale = side / max(image.size)
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
    """The query figure (a pixel / center), grid figure (grid) or all-queries figure (all), plus the offsets, as
    ``out/<stem>_<block>_<kind>.png``."""
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
