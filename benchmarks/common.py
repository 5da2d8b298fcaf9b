"""Shared by the benchmark scripts: options, the machine's description, timing, peak memory and the reports.

Every script prints a markdown table and writes ``<script>-<tag>.md``, ``.csv`` and ``.png`` under
``benchmarks/results/``, where the tag names the device and dtype (``cpu-fp32``, ``cuda-bf16-compile``,
``cpu-fp32-quick``). Each report starts with the machine it was measured on.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch.profiler import ProfilerActivity, profile

import botnet.viz

RESULTS_DIR = Path(__file__).parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MIB = 2**20


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="fp32", help="compute dtype; bf16/fp16 run under torch.autocast"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model first")
    parser.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last layout")
    parser.add_argument("--quick", action="store_true", help="a small sweep that finishes in minutes on a CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the .md/.csv/.png files go")
    parser.add_argument("--suffix", default="", help="appended to the file tag, to keep runs of one kind apart")


@dataclass(frozen=True)
class Setup:
    """The parsed common options, applied (threads set, device checked)."""

    device: torch.device
    dtype: torch.dtype
    dtype_name: str
    compile: bool
    quick: bool
    out: Path
    suffix: str = ""
    channels_last: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Setup:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to torch")
        return cls(
            device, DTYPES[args.dtype], args.dtype, args.compile, args.quick, args.out, args.suffix, args.channels_last
        )

    @property
    def tag(self) -> str:
        """File-name tag: device, dtype and the modifiers, e.g. ``cuda-bf16-compile``."""
        parts = [self.device.type, self.dtype_name]
        parts += ["compile"] if self.compile else []
        parts += ["cl"] if self.channels_last else []
        parts += ["quick"] if self.quick else []
        parts += [self.suffix] if self.suffix else []
        return "-".join(parts)

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` with ``--channels-last``, else ``torch.contiguous_format``."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager[Any]:
        """``torch.autocast`` to the chosen dtype; a no-op for fp32."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        """Wait for queued device work (timing and memory readings need it on CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def cpu_model() -> str:
    """The processor's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(setup: Setup) -> dict[str, str]:
    """What the figures were measured on: processor, threads, torch, device, dtype, date."""
    info = {
        "cpu": f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})",
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "device": "cpu",
        "dtype": setup.dtype_name + (" (autocast)" if setup.dtype != torch.float32 else ""),
        "compile": str(setup.compile),
        "channels_last": str(setup.channels_last),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if setup.device.type == "cuda":
        props = torch.cuda.get_device_properties(setup.device)
        info["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return info


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], setup: Setup, warmup: int, reps: int, min_sample_s: float = 0.05
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in rounds that run every function once.

    Interleaving spreads the load of a shared machine over all functions alike, so ratios taken within a
    round are steadier than the raw times. Each function gets ``warmup`` (at least 1) untimed calls; if the
    last one ran faster than ``min_sample_s`` the function is called several times per sample (on a GPU:
    launch overhead stays out of the median).
    """
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup - 1):
            fn()
        setup.sync()
        start = time.perf_counter()
        fn()
        setup.sync()
        inner[name] = max(1, math.ceil(min_sample_s / max(time.perf_counter() - start, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            setup.sync()
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            setup.sync()
            times[name].append((time.perf_counter() - start) / inner[name])
    return times


def fits(fn: Callable[[], object], setup: Setup) -> bool:
    """Run ``fn`` once; False (and the CUDA cache emptied) if it runs out of memory."""
    try:
        fn()
    except torch.OutOfMemoryError:
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
        return False
    return True


def round_ratios(times: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per round, ``baseline / times`` (a speed ratio: above 1 is faster than the baseline)."""
    return [b / t for t, b in zip(times, baseline, strict=True)]


def median_ratio(times: Sequence[float], baseline: Sequence[float]) -> float:
    """Median over rounds of the speed ratio to ``baseline``."""
    return statistics.median(round_ratios(times, baseline))


def peak_memory(fn: Callable[[], object], setup: Setup) -> int:
    """Peak bytes that ``fn`` allocates on the device above what was allocated when it started.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the torch profiler's allocation events (``profile_memory``),
    summed in time order; like the CUDA figure it counts tensors, not the allocator's cache or the process.
    """
    if setup.device.type == "cuda":
        setup.sync()
        torch.cuda.reset_peak_memory_stats(setup.device)
        before = torch.cuda.memory_allocated(setup.device)
        fn()
        setup.sync()
        return torch.cuda.max_memory_allocated(setup.device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in allocations:
        current += nbytes
        peak = max(peak, current)
    return peak


@dataclass(frozen=True)
class Column:
    """One column of a report: the row key, its header and a format for numbers."""

    key: str
    header: str
    fmt: str = "{}"

    def render(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.key)
        if value is None or value == "":
            return "—"
        return self.fmt.format(value) if isinstance(value, (int, float)) else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.render(row) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: Mapping[str, str]) -> str:
    return "Machine: " + "; ".join(f"{key} {value}" for key, value in info.items())


def write_report(
    name: str,
    setup: Setup,
    title: str,
    sections: Sequence[tuple[str, Sequence[Mapping[str, Any]], Sequence[Column]]],
    argv: Sequence[str] | None,
    notes: Sequence[str] = (),
    tagged: bool = True,
) -> Path:
    """Print the report and write it as ``<name>-<tag>.md`` plus every section's rows as one ``.csv``.

    ``sections`` are ``(heading, rows, columns)``; the CSV holds all rows with the machine's fields added.
    ``argv`` (``None``: ``sys.argv``) gives the command line quoted in the report; ``tagged=False`` leaves the
    tag out of the file name (for device-independent counts). Returns the path without suffix, for the figure.
    """
    info = machine_info(setup)
    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", f"benchmarks/{name}.py", *args])
    parts = [f"### {title}", "", machine_line(info), "", f"`{command}`", ""]
    for heading, rows, columns in sections:
        parts += [f"**{heading}**", ""] if heading else []
        parts += [markdown_table(rows, columns), ""]
    parts += [f"- {note}" for note in notes]
    text = "\n".join(parts).rstrip() + "\n"
    print(text)
    setup.out.mkdir(parents=True, exist_ok=True)
    stem = setup.out / (f"{name}-{setup.tag}" if tagged else name)
    stem.with_suffix(".md").write_text(text)
    all_rows = [dict(row, section=heading) for heading, rows, _ in sections for row in rows]
    fields = list(dict.fromkeys(key for row in all_rows for key in row)) + list(info)
    with stem.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, **info} for row in all_rows)
    return stem


def save_figure(fig: Figure, stem: Path) -> None:
    """Write a matplotlib figure next to the report as ``.png`` (:func:`botnet.viz.save_figure`)."""
    fig.tight_layout()
    botnet.viz.save_figure(fig, stem.with_suffix(".png"), dpi=120)
    print(f"wrote {stem}.md, .csv and .png")


def rewrite_readme_block(readme: Path, begin: str, end: str, text: str) -> None:
    """Replace what stands between the ``begin`` and ``end`` marker lines of ``readme`` with ``text``."""
    content = readme.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {begin} ... {end} block")
    readme.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", content))
