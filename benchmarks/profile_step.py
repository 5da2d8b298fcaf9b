"""Where the time of a training step goes: torch profiler over forward+backward of each model, side by side.

Per model: wall time of a profiled step, the operators dispatched from Python (each costs host time on any
device) and, on CUDA, the kernels launched and the time the GPU spent in them (busy / wall = how much of the
step the GPU had work). Then the operators that took the most time (self time; device time on CUDA), and the
aten operators one ``MHSA2d`` call dispatches (BoT50's c5 layer, 512 channels, 4 heads x 128, at the first c5
block's map, ``size / 16``) for each attention implementation, forward and forward+backward.

    python benchmarks/profile_step.py --quick --threads 1
    python benchmarks/profile_step.py --device cuda --dtype bf16 --batch 16
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from matplotlib.figure import Figure
from torch.profiler import ProfilerActivity, profile

import botnet
from common import Column, Setup, add_common_args, save_figure, write_report
from peers import BASELINE, build_models, model_step

MODELS = [BASELINE, "botnet:botnet50", "botnet:botnet50:explicit", "timm:botnet50ts_256"]


def profile_model(step: Any, setup: Setup, steps: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Profile ``steps`` calls of ``step``; returns the summary row and the top operators by self time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    step()
    setup.sync()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
            setup.sync()
    events = prof.profiler.kineto_results.events()
    host_ops = [e for e in events if e.device_type() == torch.autograd.DeviceType.CPU and e.name().startswith("aten::")]
    kernels = [e for e in events if e.device_type() == torch.autograd.DeviceType.CUDA]
    starts = [e.start_ns() for e in events]
    ends = [e.end_ns() for e in events]
    row: dict[str, Any] = dict(
        wall_ms=(max(ends) - min(starts)) / 1e6 / steps,
        # nested aten ops (an op calling ops) are counted each time: a measure of dispatch work, not of Python calls
        aten_ops=len(host_ops) / steps,
    )
    if kernels:
        row["kernels"] = len(kernels) / steps
        row["gpu_busy_ms"] = sum(e.duration_ns() for e in kernels) / 1e6 / steps
        row["busy_fraction"] = row["gpu_busy_ms"] / row["wall_ms"]
    key = "self_device_time_total" if kernels else "self_cpu_time_total"
    averages = sorted(prof.key_averages(), key=lambda a: getattr(a, key), reverse=True)
    total = sum(getattr(a, key) for a in averages)
    top = [
        dict(op=a.key[:60], ms=getattr(a, key) / 1e3 / steps, share=getattr(a, key) / total, calls=a.count / steps)
        for a in averages[:12]
    ]
    return row, top


def aten_ops(fn: Any) -> int:
    """How many aten operators one call of ``fn`` dispatches (nested ones counted too, as in the summary)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.profiler.kineto_results.events() if e.name().startswith("aten::"))


def mhsa_op_counts(size: int, setup: Setup) -> list[dict[str, Any]]:
    """Aten operators per ``MHSA2d`` call, by implementation (``auto``'s choice named), at a ``size x size`` map."""
    layer = botnet.MHSA2d(512, num_heads=4, dim_head=128, feat_size=size).to(setup.device)
    x = torch.randn(1, 512, size, size, device=setup.device, requires_grad=True)
    rows = []
    trainable = [impl for impl in botnet.layers.ATTN_IMPLS if impl != "flex" or setup.device.type == "cuda"]
    for impl in trainable:
        layer.attn_impl = impl

        def forward() -> None:
            with torch.no_grad(), setup.autocast():
                layer(x)

        def forward_backward() -> None:
            with setup.autocast():
                out = layer(x)
            out.float().sum().backward()

        with setup.autocast():
            picks = layer.resolve_impl(x)
        name = f"auto ({picks})" if impl == "auto" else impl
        rows.append(
            dict(impl=name, tokens=f"{size}×{size}", fwd_ops=aten_ops(forward), step_ops=aten_ops(forward_backward))
        )
    return rows


def plot(rows: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(6, 0.5 * len(rows) + 1.5))
    ax = fig.subplots()
    ys = range(len(rows))
    ax.barh(list(ys), [r["wall_ms"] for r in rows], label="wall")
    if all("gpu_busy_ms" in r for r in rows):
        ax.barh(list(ys), [r["gpu_busy_ms"] for r in rows], 0.4, label="GPU busy")
    ax.set_yticks(list(ys), [r["model"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms per training step (profiled)")
    ax.legend(loc="lower right")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--models", nargs="+", default=MODELS, help="source:name[:variant] (see peers.py)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=None, help="default 16; quick 2")
    parser.add_argument("--steps", type=int, default=None, help="profiled steps (default 5; quick 1)")
    args = parser.parse_args(argv)
    setup = Setup.from_args(args)
    batch = args.batch or (2 if args.quick else 16)
    steps = args.steps or (1 if args.quick else 5)
    x = torch.randn(batch, 3, args.size, args.size, device=setup.device)
    rows, sections = [], []
    top_columns = [
        Column("op", "operator"),
        Column("ms", "self ms / step", "{:.2f}"),
        Column("share", "share", "{:.0%}"),
        Column("calls", "calls / step", "{:.0f}"),
    ]
    for spec, model in build_models(args.models, args.size, setup).items():
        row, top = profile_model(model_step(model, x, setup, backward=True), setup, steps)
        rows.append(dict(model=spec, **row))
        clock = "device" if "kernels" in row else "CPU"
        sections.append((f"{spec}: top operators by self {clock} time", top, top_columns))
    columns = [
        Column("model", "model"),
        Column("wall_ms", "wall ms / step", "{:.1f}"),
        Column("aten_ops", "aten ops / step", "{:.0f}"),
        Column("kernels", "CUDA kernels / step", "{:.0f}"),
        Column("gpu_busy_ms", "GPU busy ms / step", "{:.1f}"),
        Column("busy_fraction", "GPU busy ÷ wall", "{:.0%}"),
    ]
    mhsa_columns = [
        Column("impl", "attn_impl"),
        Column("tokens", "tokens"),
        Column("fwd_ops", "aten ops, forward", "{:.0f}"),
        Column("step_ops", "aten ops, fwd+bwd", "{:.0f}"),
    ]
    mhsa = ("aten operators per MHSA2d call (512 channels, 4 heads × 128)", mhsa_op_counts(args.size // 16, setup))
    title = f"Profile of a training step (fwd+bwd), {args.size}×{args.size}, batch {batch}, {steps} steps"
    stem = write_report(
        "profile_step", setup, title, [("summary", rows, columns), (*mhsa, mhsa_columns), *sections], argv
    )
    save_figure(plot(rows), stem)


if __name__ == "__main__":
    main()
