"""Draw the README's architecture figure: a ResNet bottleneck next to the BoT block and its MHSA."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

CONV, ATTN, NORM = "#cfe2f3", "#f9cb9c", "#d9ead3"


def column(ax: plt.Axes, x: float, title: str, boxes: list[tuple[str, str]]) -> None:
    """Stack ``boxes`` (label, colour) from top to bottom at ``x``, joined by arrows, with a residual arc."""
    ax.text(x, 9.6, title, ha="center", va="bottom", fontsize=11, weight="bold")
    ys = [8.8 - 1.25 * i for i in range(len(boxes))]
    for (label, colour), y in zip(boxes, ys, strict=True):
        ax.add_patch(FancyBboxPatch((x - 1.45, y - 0.38), 2.9, 0.76, boxstyle="round,pad=0.05", fc=colour, ec="k"))
        ax.text(x, y, label, ha="center", va="center", fontsize=8.5)
    for y0, y1 in zip(ys[:-1], ys[1:], strict=True):
        ax.annotate("", (x, y1 + 0.43), (x, y0 - 0.43), arrowprops=dict(arrowstyle="->"))
    ax.annotate(
        "",
        (x + 1.6, ys[-1]),
        (x + 1.6, ys[0] + 0.45),
        arrowprops=dict(arrowstyle="->", connectionstyle="bar,fraction=-0.12", ls="--"),
    )
    ax.text(x + 2.05, (ys[0] + ys[-1]) / 2, "+ shortcut", rotation=90, va="center", fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/botnet_block.png"))
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(11, 5.6))
    ax.set_xlim(0, 13)
    ax.set_ylim(1.7, 10.2)
    ax.axis("off")
    column(
        ax,
        2.0,
        "ResNet bottleneck (c2-c5)",
        [
            ("1x1 conv, C -> C/4", CONV),
            ("BN, ReLU", NORM),
            ("3x3 conv, stride s", CONV),
            ("BN, ReLU", NORM),
            ("1x1 conv, C/4 -> C", CONV),
            ("BN (gamma = 0), + x, ReLU", NORM),
        ],
    )
    column(
        ax,
        6.3,
        "BoT block (c5 of BoTNet)",
        [
            ("1x1 conv, C -> 512", CONV),
            ("BN, ReLU", NORM),
            ("MHSA, 4 heads x 128", ATTN),
            ("2x2 avg-pool if s = 2; BN, ReLU", NORM),
            ("1x1 conv, 512 -> 2048", CONV),
            ("BN (gamma = 0), + x, ReLU", NORM),
        ],
    )
    ax.text(8.9, 8.9, "MHSA over all H x W positions", fontsize=11, weight="bold")
    lines = [
        "q, k, v = 1x1 projections (no bias), per head d = 128",
        "q <- q / sqrt(d)",
        "logits[i, j] = q_i . k_j                  content",
        "           + q_i . r_h[y_j - y_i + H - 1]  row offset",
        "           + q_i . r_w[x_j - x_i + W - 1]  column offset",
        "out_i = sum_j softmax_j(logits[i, j]) v_j",
        "",
        "r_h: (2H-1, d), r_w: (2W-1, d), learned, shared",
        "by the heads; resampled at other resolutions.",
        "Fused path: SDPA on q' = [q, q.r_h, q.r_w],",
        "k' = [k, one-hot(row), one-hot(col)]: no N x N",
        "matrix is kept for backward.",
    ]
    for i, line in enumerate(lines):
        ax.text(8.9, 8.3 - 0.45 * i, line, fontsize=8.5, family="monospace")
    ax.annotate("", (8.8, 6.3), (7.65, 6.3), arrowprops=dict(arrowstyle="->", color="#b45f06"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
