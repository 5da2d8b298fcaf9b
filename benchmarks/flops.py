"""Forward FLOPs and parameters per model, next to the paper's figures (``torch.utils.flop_counter``).

Models are built on the ``meta`` device, so counting costs no compute at any input size. FLOPs count 2 per
multiply-add, for matmuls and convolutions (``count_flops``: the MHSA layers' explicit path, so attention is
counted). The paper's figures (``../shared/paper.md``): ResNet-50 25.5M parameters, BoT50 20.8M, and at 1024x1024
"BoT50 vs R50: ~1.2x the multiply-adds".

    python benchmarks/flops.py
    python benchmarks/flops.py --sizes 224 1024 --models botnet:botnet50 torchvision:resnet50
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from matplotlib.figure import Figure

from botnet.models import get_model_cfg
from botnet.summary import count_flops, count_params
from common import Column, Setup, add_common_args, save_figure, write_report
from peers import BASELINE, PeerUnavailable, build_model

MODELS = [
    BASELINE,
    "botnet:resnet50",
    "botnet:botnet50",
    "botnet:botnet26",
    "botnet:botnet_s1_59",
    "botnet:timm_botnet50ts_256",
    "timm:resnet50",
    "timm:botnet26t_256",
    "timm:botnet50ts_256",
    "lucidrains:bot50",
]
# (model, input side) -> what the paper says, for the table's last column.
PAPER_CLAIMS = {("botnet:botnet50", 1024): "~1.2× R50's multiply-adds"}
PAPER_PARAMS = {BASELINE: 25.5}


def paper_params(spec: str) -> float | None:
    source, _, name = spec.partition(":")
    if source == "botnet":
        return get_model_cfg(name.partition(":")[0]).paper_params
    return PAPER_PARAMS.get(spec)


def count(specs: list[str], size: int) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        try:
            with torch.device("meta"):
                model = build_model(spec, size)
        except PeerUnavailable as err:
            print(f"skipping {spec}: {err}")
            continue
        rows.append(
            dict(
                model=spec,
                size=size,
                params_m=count_params(model) / 1e6,
                paper_params_m=paper_params(spec),
                gflops=count_flops(model, (3, size, size)) / 1e9,
                paper=PAPER_CLAIMS.get((spec, size)),
            )
        )
    baseline = next((row for row in rows if row["model"] == BASELINE), None)
    for row in rows:
        row["x_r50"] = row["gflops"] / baseline["gflops"] if baseline else None
    return rows


def plot(rows: list[dict[str, Any]]) -> Figure:
    sizes = sorted({row["size"] for row in rows})
    specs = list(dict.fromkeys(row["model"] for row in rows))
    fig = Figure(figsize=(7, 0.45 * len(specs) + 1.5))
    ax = fig.subplots()
    height = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        ratios = {row["model"]: row["x_r50"] for row in rows if row["size"] == size}
        ys = [y + i * height for y in range(len(specs))]
        ax.barh(ys, [ratios.get(spec, 0) for spec in specs], height, label=f"{size}²")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(specs))], specs)
    ax.invert_yaxis()
    ax.set_xlabel("forward FLOPs ÷ torchvision resnet50 at the same input")
    ax.legend(loc="lower right")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--models", nargs="+", default=MODELS, help="source:name[:variant] (see peers.py)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 1024], help="input sides")
    args = parser.parse_args(argv)
    setup = Setup.from_args(args)
    sections = []
    for size in args.sizes:
        columns = [
            Column("model", "model"),
            Column("params_m", "params (M)", "{:.2f}"),
            Column("paper_params_m", "paper params (M)", "{:.1f}"),
            Column("gflops", "GFLOPs", "{:.2f}"),
            Column("x_r50", "÷ tv R50", "{:.2f}"),
            Column("paper", "paper"),
        ]
        sections.append((f"{size}×{size}", count(args.models, size), columns))
    title = "Forward FLOPs (2 per multiply-add) and parameters, one image, 1000 classes"
    stem = write_report("flops", setup, title, sections, argv, tagged=False)
    save_figure(plot([row for _, rows, _ in sections for row in rows]), stem)


if __name__ == "__main__":
    main()
