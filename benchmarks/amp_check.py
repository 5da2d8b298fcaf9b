"""Mixed-precision training sanity check: a few SGD steps of a BoTNet under ``torch.autocast``.

On one fixed batch (random images and labels), every step must give a finite loss and finite gradients for
every parameter, and the fused and explicit attention paths must give close losses from the same weights.
Not a timing: a guard that the fused path (augmented queries/keys in bf16) trains.

    python benchmarks/amp_check.py --device cuda --dtype bf16
    python benchmarks/amp_check.py --quick --dtype bf16          # CPU: a small batch and input
"""

from __future__ import annotations

import argparse
import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

import botnet
from common import Column, Setup, add_common_args, save_figure, write_report
from peers import build_model


def train(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, setup: Setup, steps: int) -> list[dict[str, Any]]:
    """``steps`` SGD steps on one batch; per step the loss, the gradient norm and whether all grads are finite."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    rows = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        missing = sum(g is None for g in grads)
        finite = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        norm = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads if g is not None])).item()
        rows.append(dict(step=step, loss=loss.item(), grad_norm=norm, grads_finite=finite, missing_grads=missing))
        optimizer.step()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--model", default="botnet:botnet50")
    parser.add_argument("--size", type=int, default=None, help="input side (default 256; quick 128)")
    parser.add_argument("--batch", type=int, default=None, help="default 16; quick 4")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    setup = Setup.from_args(args)
    size = args.size or (128 if args.quick else 256)
    batch = args.batch or (4 if args.quick else 16)
    torch.manual_seed(0)
    fused = build_model(args.model, size).to(setup.device)
    explicit = copy.deepcopy(fused)
    botnet.set_attn_impl(explicit, "explicit")
    x = torch.randn(batch, 3, size, size, device=setup.device)
    labels = torch.randint(0, 1000, (batch,), device=setup.device)
    sections, notes = [], []
    columns = [
        Column("step", "step"),
        Column("loss", "loss", "{:.4f}"),
        Column("grad_norm", "grad norm", "{:.4g}"),
        Column("grads_finite", "grads finite"),
        Column("missing_grads", "params without grad"),
    ]
    for name, model in (("fused", fused), ("explicit", explicit)):
        rows = train(model, x, labels, setup, args.steps)
        sections.append((f"{args.model}, {name} path, {size}×{size}, batch {batch}", rows, columns))
        ok = all(math.isfinite(r["loss"]) and r["grads_finite"] and not r["missing_grads"] for r in rows)
        notes.append(f"{name}: every loss and gradient finite, every parameter has a gradient: {ok}")
    first = [rows[0]["loss"] for _, rows, _ in sections]
    notes.append(f"first-step loss, fused vs explicit (same weights): {first[0]:.5f} vs {first[1]:.5f}")
    stem = write_report("amp_check", setup, "Mixed-precision training steps", sections, argv, notes)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for heading, rows, _ in sections:
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], "o-", label=heading.split(",")[1].strip())
    ax.set_xlabel("SGD step (one fixed batch)")
    ax.set_ylabel("loss")
    ax.legend()
    save_figure(fig, stem)


if __name__ == "__main__":
    main()
