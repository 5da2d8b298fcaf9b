"""Peak memory and time of one attention layer as the token count grows: every ``MHSA2d`` implementation and peers.

The layer of BoT50's c5 (512 channels, 4 heads x 128, relative position logits) over an ``s x s`` map, forward
plus backward with the input requiring grad, as in training (``--no-backward``: forward under ``no_grad``). Peak
memory is what the step allocates above what was allocated before it (CUDA: ``max_memory_allocated``; CPU: the
torch profiler's allocation events). The explicit path and the peers keep ``(B, heads, N, N)`` logits and
probabilities, so their memory grows with ``N^2``; ``sdpa`` (``scaled_dot_product_attention`` with the relative
logits folded in), ``chunked`` and ``flex`` should grow about linearly. ``botnet:auto`` is the default choice;
the "auto picks" column says what it chose and the SDPA column which kernel ``botnet:sdpa`` dispatched to.
Every ratio is taken to ``botnet:explicit`` in the same run, times as medians of interleaved rounds.

Two rows bound what any exact implementation can reach. ``bound:projections`` is the layer without attention
(its 1x1 projection, the ``q, k, v`` layout, the position terms and the output, with ``q + 2k + 3v`` in place of
attention so that each gets its own gradient): no attention implementation holds less memory or takes less time.
``bound:+gemms`` adds the time of the six matrix products an exact attention does in a training step (``q k^T``,
``P v``, and ``P^T dO``, ``dO v^T``, ``dS k``, ``dS^T q`` in backward), run alone on preallocated buffers: an
estimate of the time left once every other op (softmax, position logits, copies, allocations) costs nothing.

    python benchmarks/attention_memory.py --quick                 # CPU: 16x16, 32x32, 64x64
    python benchmarks/attention_memory.py --device cuda --dtype bf16
    python benchmarks/attention_memory.py --layers botnet:explicit botnet:chunked --chunk-elements 262144
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

import botnet.layers.chunked_attention
from botnet.layers import MHSA2d
from common import MIB, Column, Setup, add_common_args, peak_memory, save_figure, time_interleaved, write_report
from peers import PeerUnavailable, build_attention

BOTNET = ["botnet:auto", "botnet:explicit", "botnet:sdpa", "botnet:chunked"]
BOUNDS = ["bound:projections", "bound:+gemms"]
LAYERS = [*BOTNET, "timm:BottleneckAttn", "lucidrains:Attention", *BOUNDS]
# The targets for the automatic choice, CPU, fwd+bwd: at these sides at most these times and peaks (x explicit)
TARGETS = {32: (0.8, 0.25), 64: (0.8, 0.25)}


class ProjectionsOnly(nn.Module):
    """An ``MHSA2d`` without its attention: ``q + 2k + 3v`` (distinct gradients, as attention's) in its place.

    Uses the layer's own (private) projection and position-term code, so that it holds exactly what every
    implementation holds besides attention. ``(B, C, H, W) -> (B, h * d, H, W)``.
    """

    def __init__(self, layer: MHSA2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        q, k, v = self.layer._qkv(x)
        out = q + 2 * k + 3 * v
        terms = self.layer._position_terms(q, height, width)
        if isinstance(terms, tuple):
            out = out + terms[0].sum(-1, keepdim=True) + terms[1].sum(-1, keepdim=True)
        return out.transpose(-1, -2).reshape(batch, self.layer.dim_out, height, width)


def attention_gemms(groups: int, tokens: int, dim_head: int, setup: Setup) -> Callable[[], None]:
    """The six matrix products of an exact attention's forward and backward, on preallocated ``(G, N, .)`` buffers."""
    new = {"device": setup.device, "dtype": setup.dtype}
    q, k, v, grad_o, out, grad_q, grad_k, grad_v = (torch.randn(groups, tokens, dim_head, **new) for _ in range(8))
    probs, grad_s = torch.rand(groups, tokens, tokens, **new), torch.randn(groups, tokens, tokens, **new)

    def gemms() -> None:
        torch.bmm(q, k.transpose(1, 2), out=probs)  # S = q k^T
        torch.bmm(probs, v, out=out)  # O = P v
        torch.bmm(probs.transpose(1, 2), grad_o, out=grad_v)  # dv = P^T dO
        torch.bmm(grad_o, v.transpose(1, 2), out=grad_s)  # dP = dO v^T
        torch.bmm(grad_s, k, out=grad_q)  # dq = dS k
        torch.bmm(grad_s.transpose(1, 2), q, out=grad_k)  # dk = dS^T q

    return gemms


def make_step(layer: nn.Module, x: torch.Tensor, setup: Setup, backward: bool = True) -> Callable[[], None]:
    """Forward and backward of one layer (the input's gradient computed as inside a network), or forward only."""

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with setup.autocast():
            out = layer(x)
        out.float().sum().backward()

    def forward() -> None:
        with torch.no_grad(), setup.autocast():
            layer(x)

    return step if backward else forward


def sdpa_backend(fn: Callable[[], object]) -> str:
    """Which ``scaled_dot_product_attention`` kernel ``fn()`` runs, from the profiler's operator names."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = {event.name for event in prof.events()}
    for suffix, label in (
        ("flash_attention_for_cpu", "flash (cpu)"),
        ("flash_attention", "flash"),
        ("cudnn_attention", "cudnn"),
        ("efficient_attention", "memory-efficient"),
        ("attention_math", "math"),
    ):
        if f"aten::_scaled_dot_product_{suffix}" in names:
            return label
    return "—"


def run_size(
    specs: list[str],
    size: int,
    batch: int,
    setup: Setup,
    warmup: int,
    reps: int,
    dim: int = 512,
    backward: bool = True,
) -> list[dict[str, Any]]:
    """Peak memory and fwd+bwd (or forward) time of every layer over a ``size x size`` map."""
    heads, dim_head = 4, 128
    layers = {}
    for spec in specs:
        if spec in BOUNDS:
            continue
        try:
            layers[spec] = build_attention(spec, dim, size, heads=heads, dim_head=dim_head).to(setup.device)
        except PeerUnavailable as err:
            print(f"skipping {spec}: {err}", file=sys.stderr)
    bounds = [spec for spec in BOUNDS if spec in specs]
    if bounds:  # the projections' time is part of the GEMMs' bound
        layer = build_attention("botnet:explicit", dim, size, heads=heads, dim_head=dim_head).to(setup.device)
        layers["bound:projections"] = ProjectionsOnly(layer)
    x = torch.randn(batch, dim, size, size, device=setup.device, requires_grad=True)
    steps = {spec: make_step(layer, x, setup, backward) for spec, layer in layers.items()}
    rows = []
    for spec, step in steps.items():
        step()  # lazy state (tables, kernels' workspaces) stays out of the peak
        rows.append(dict(layer=spec, tokens=f"{size}×{size}", N=size * size, peak_mib=peak_memory(step, setup) / MIB))
        if spec == "botnet:sdpa":
            rows[-1]["sdpa"] = sdpa_backend(step)
        if spec == "botnet:auto":
            with setup.autocast(), torch.set_grad_enabled(backward):
                rows[-1]["picks"] = layers[spec].resolve_impl(x)
    if "bound:+gemms" in bounds and backward:  # timed with the layers; its peak is the projections'
        steps["bound:+gemms"] = attention_gemms(batch * heads, size * size, dim_head, setup)
    times = time_interleaved(steps, setup, warmup, reps)
    for row in rows:
        row["ms"] = 1e3 * statistics.median(times[row["layer"]])
    if "bound:+gemms" in times:
        projections = next(row for row in rows if row["layer"] == "bound:projections")
        gemm_ms = 1e3 * statistics.median(times["bound:+gemms"])
        rows.append({**projections, "layer": "bound:+gemms", "ms": projections["ms"] + gemm_ms})
    rows = [row for row in rows if row["layer"] in specs]
    explicit = next((row for row in rows if row["layer"] == "botnet:explicit"), None)
    for row in rows:
        if explicit:
            row["peak_vs_explicit"] = row["peak_mib"] / explicit["peak_mib"]
            row["time_vs_explicit"] = row["ms"] / explicit["ms"]
    return rows


def plot(rows: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(11, 4))
    ax_mem, ax_time = fig.subplots(1, 2)
    for spec in dict.fromkeys(row["layer"] for row in rows):
        mine = [row for row in rows if row["layer"] == spec]
        ax_mem.plot([r["N"] for r in mine], [r["peak_mib"] for r in mine], "o-", label=spec)
        ax_time.plot([r["N"] for r in mine], [r["ms"] for r in mine], "o-", label=spec)
    for ax, label in ((ax_mem, "peak memory, fwd+bwd (MiB)"), (ax_time, "time, fwd+bwd (ms)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N = H·W")
        ax.set_ylabel(label)
        ax.grid(True, which="both", lw=0.3)
    ax_mem.legend()
    return fig


def target_notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    for row in rows:
        if row["layer"] == "bound:+gemms" and "peak_vs_explicit" in row:
            notes.append(
                f"bound: at {row['tokens']} tokens the layer without attention holds {row['peak_vs_explicit']:.2f}x "
                f"explicit's peak, and with the attention GEMMs alone takes {row['time_vs_explicit']:.2f}x its time "
                "(an estimate of the floor of any exact implementation, as noisy as the other times)"
            )
        target = TARGETS.get(int(row["N"] ** 0.5))
        if row["layer"] != "botnet:auto" or target is None or "peak_vs_explicit" not in row:
            continue
        time_max, peak_max = target
        ok = row["time_vs_explicit"] <= time_max and row["peak_vs_explicit"] <= peak_max
        notes.append(
            f"target: auto at {row['tokens']} tokens takes {row['time_vs_explicit']:.2f}x explicit's time (<= "
            f"{time_max}x) and {row['peak_vs_explicit']:.2f}x its peak (<= {peak_max}x): "
            f"{'reached' if ok else 'not reached'}"
        )
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--layers", nargs="+", default=LAYERS, help=f"default: {' '.join(LAYERS)}")
    parser.add_argument("--sizes", type=int, nargs="+", help="map sides (default 16 32 64 96; quick: 16 32 64)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 3, quick 1)")
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass under no_grad")
    parser.add_argument(
        "--chunk-elements",
        type=int,
        default=None,
        help=f"work-buffer budget of the chunked path (default {botnet.layers.chunked_attention.CHUNK_ELEMENTS})",
    )
    args = parser.parse_args(argv)
    setup = Setup.from_args(args)
    if args.chunk_elements:
        botnet.layers.chunked_attention.CHUNK_ELEMENTS = args.chunk_elements
    sizes = args.sizes or ([16, 32, 64] if args.quick else [16, 32, 64, 96])
    reps = args.reps or (1 if args.quick else 3)
    backward = not args.no_backward
    rows = [row for size in sizes for row in run_size(args.layers, size, args.batch, setup, 1, reps, backward=backward)]
    columns = [
        Column("layer", "layer"),
        Column("tokens", "tokens"),
        Column("peak_mib", "peak MiB", "{:.1f}"),
        Column("peak_vs_explicit", "peak ÷ explicit", "{:.2f}"),
        Column("ms", "fwd+bwd ms", "{:.1f}"),
        Column("time_vs_explicit", "time ÷ explicit", "{:.2f}"),
        Column("sdpa", "SDPA kernel"),
        Column("picks", "auto picks"),
    ]
    passes = "forward + backward" if backward else "forward (no_grad)"
    title = f"Attention layer alone: 512 channels, 4 heads × 128, batch {args.batch}, {passes}"
    notes = [f"time: median of {reps} interleaved rounds after one warm-up call", *target_notes(rows)]
    stem = write_report("attention_memory", setup, title, [("", rows, columns)], argv, notes)
    save_figure(plot(rows), stem)


if __name__ == "__main__":
    main()
