"""Peak memory of whole models, a forward pass and a training step, as the input grows to the paper's 1024x1024.

At 1024x1024 BoT50's first c5 block attends over 64x64 = 4096 tokens, where the explicit path's
``(B, 4, N, N)`` logits take 256 MiB per copy (fp32, batch 1). Peak memory is what the step allocates above
what was allocated before it (model weights excluded; gradients of the training step included).

    python benchmarks/model_memory.py --quick                  # CPU: 256 and 512 px
    python benchmarks/model_memory.py --device cuda --dtype bf16
    # gradient checkpointing: the training step's peak with and without recomputing the blocks
    python benchmarks/model_memory.py --models botnet:botnet50 botnet:botnet50:gradckpt --batch 8 --suffix gradckpt
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from matplotlib.figure import Figure

from common import MIB, Column, Setup, add_common_args, peak_memory, save_figure, write_report
from peers import BASELINE, build_models, model_step

MODELS = [BASELINE, "botnet:botnet50", "botnet:botnet50:explicit", "timm:botnet50ts_256", "lucidrains:bot50"]


def run_size(specs: list[str], size: int, batch: int, setup: Setup) -> list[dict[str, Any]]:
    rows = []
    models = build_models(specs, size, setup)
    x = torch.randn(batch, 3, size, size, device=setup.device)
    for spec, model in models.items():
        row: dict[str, Any] = dict(model=spec, size=size, batch=batch)
        for pass_name, backward in (("fwd", False), ("fwd+bwd", True)):
            step = model_step(model, x, setup, backward)
            step()  # lazy state and the gradients' first allocation stay out of the peak
            row[f"{pass_name} MiB"] = peak_memory(step, setup) / MIB
        rows.append(row)
    baseline = next((row for row in rows if row["model"] == BASELINE), None)
    plain = {row["model"]: row for row in rows}
    for row in rows:
        if baseline:
            row["fwd+bwd x R50"] = row["fwd+bwd MiB"] / baseline["fwd+bwd MiB"]
        without = plain.get(row["model"].removesuffix(":gradckpt"))
        if row["model"].endswith(":gradckpt") and without:
            row["fwd+bwd x no ckpt"] = row["fwd+bwd MiB"] / without["fwd+bwd MiB"]
    return rows


def plot(rows: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for spec in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == spec]
        ax.plot([r["size"] for r in mine], [r["fwd+bwd MiB"] for r in mine], "o-", label=spec)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input side (px)")
    ax.set_ylabel("peak memory of a training step (MiB)")
    ax.grid(True, which="both", lw=0.3)
    ax.legend()
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--models", nargs="+", default=MODELS, help="source:name[:variant] (see peers.py)")
    parser.add_argument("--sizes", type=int, nargs="+", help="input sides (default 256 512 1024; quick: 256 512)")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    setup = Setup.from_args(args)
    sizes = args.sizes or ([256, 512] if args.quick else [256, 512, 1024])
    rows = [row for size in sizes for row in run_size(args.models, size, args.batch, setup)]
    columns = [
        Column("model", "model"),
        Column("size", "input", "{}²"),
        Column("fwd MiB", "forward MiB", "{:.0f}"),
        Column("fwd+bwd MiB", "training step MiB", "{:.0f}"),
        Column("fwd+bwd x R50", "÷ tv R50", "{:.2f}"),
        Column("fwd+bwd x no ckpt", "÷ without grad ckpt", "{:.2f}"),
    ]
    title = f"Whole-model peak memory, batch {args.batch}"
    stem = write_report("model_memory", setup, title, [("", rows, columns)], argv)
    save_figure(plot(rows), stem)


if __name__ == "__main__":
    main()
