"""Fill the README's performance block (between ``<!-- performance:begin/end -->``) from benchmarks/results/*.csv.

Nothing is typed in: every figure is looked up in a result file, and a figure whose file is missing shows "—".

    python benchmarks/readme.py --readme README.md      # rewrite the block in place (else print it)
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS_DIR, rewrite_readme_block
from peers import BASELINE

BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"
BOTNET50, TIMM50 = "botnet:botnet50", "timm:botnet50ts_256"


@dataclass(frozen=True)
class Cell:
    """One cell: the value of ``column`` in the row of ``file`` matching ``match``, formatted by ``fmt``."""

    file: str
    match: dict[str, str]
    column: str
    fmt: str = "{:.2f}×"
    spread: str = ""  # a column whose text follows the value in parentheses (e.g. the per-round range)

    def render(self, results: Path) -> tuple[str, str]:
        """The formatted value and the spread's text ("" if none); ``("—", "")`` if not measured."""
        path = results / self.file
        if not path.exists():
            return "—", ""
        with path.open() as handle:
            rows = [row for row in csv.DictReader(handle) if all(row.get(k) == v for k, v in self.match.items())]
        if not rows or not rows[0].get(self.column):
            return "—", ""
        value = rows[0][self.column]
        try:
            value = self.fmt.format(float(value))
        except ValueError:
            pass
        return value, rows[0].get(self.spread, "") if self.spread else ""


def throughput(file: str, batch: int, column: str) -> Cell:
    spread = f"{column} rounds" if column.startswith("vs ") else ""
    return Cell(file, dict(model=BOTNET50, size="256", batch=str(batch)), column, spread=spread)


def cpu_step_runs(column: str) -> list[tuple[str, Cell]]:
    """A CPU training-step figure from each launch of ``botnet50`` vs ``resnet50`` (both models alike in each run)."""
    return [
        (label, throughput(f"throughput-cpu-fp32-{tag}.csv", 8, column))
        for label, tag in (
            ("eager", "b50-eager"),
            ("channels_last", "cl-b50-channels-last"),
            ("tcmalloc", "b50-tcmalloc"),
            ("both compiled", "compile-b50-compile"),
        )
    ]


# The MHSA layer runs of issue 14's targets: (label, result file); each file holds 32x32 and 64x64 tokens.
LAYER_RUNS = [
    ("fp32, 2 threads", "attention_memory-cpu-fp32-impls.csv"),
    ("fp32, 1 thread", "attention_memory-cpu-fp32-impls-1thread.csv"),
    ("bf16, 2 threads", "attention_memory-cpu-bf16-impls.csv"),
]


def layer_vs_explicit(column: str, layer: str = "botnet:auto") -> list[tuple[str, Cell]]:
    """One MHSA layer's ``column`` (a ratio to explicit) at 32×32 and 64×64 tokens, in each run."""
    return [
        (f"{label} {side}²", Cell(file, dict(layer=layer, N=n), column))
        for label, file in LAYER_RUNS
        for side, n in (("32", "1024"), ("64", "4096"))
    ]


def sdpa_vs_explicit(file: str, column: str) -> Cell:
    return Cell(file, dict(layer="botnet:fused", N="4096"), column)


CPU_FILE, GPU_FILE = "throughput-cpu-fp32-b50-eager.csv", "throughput-cuda-bf16.csv"
# (what, target, CPU figures and GPU figures with their labels); targets of issue 14
ROWS: list[tuple[str, str, list[tuple[str, Cell]], list[tuple[str, Cell]]]] = [
    (
        "`botnet50` training step (fwd+bwd) ÷ torchvision `resnet50`, 256 px, batch 8 (GPU: 16)",
        "≥ 1.0× (GPU compiled ≥ 1.0×, eager ≥ 0.95×)",
        cpu_step_runs(f"vs {BASELINE}"),
        [
            ("batch 16", throughput("throughput-cuda-bf16.csv", 16, "fwd+bwd x R50")),
            ("batch 64", throughput("throughput-cuda-bf16-b64.csv", 64, "fwd+bwd x R50")),
            ("batch 16, both compiled", throughput("throughput-cuda-bf16-compile.csv", 16, "fwd+bwd x R50")),
        ],
    ),
    (
        "`botnet50` training step ÷ timm `botnet50ts_256`, 256 px",
        "≥ 1.5×",
        [("3 models, 11 rounds", throughput("throughput-cpu-fp32-targets.csv", 8, f"vs {TIMM50}"))],
        [
            ("batch 16", throughput("throughput-cuda-bf16.csv", 16, f"vs {TIMM50}")),
            ("batch 64", throughput("throughput-cuda-bf16-b64.csv", 64, f"vs {TIMM50}")),
        ],
    ),
    (
        'MHSA layer, `attn_impl="auto"` ÷ explicit, fwd+bwd: peak memory',
        "≤ 0.25× (GPU ≤ 0.1×)",
        layer_vs_explicit("peak_vs_explicit"),
        [],
    ),
    ("the same: time", "≤ 0.8× (GPU ≤ 1.0×)", layer_vs_explicit("time_vs_explicit"), []),
    (
        "lower bound of any exact MHSA layer ÷ explicit: peak (the layer without attention)",
        "",
        layer_vs_explicit("peak_vs_explicit", "bound:+gemms"),
        [],
    ),
    (
        "the same: time (the layer without attention, plus the six attention GEMMs alone)",
        "",
        layer_vs_explicit("time_vs_explicit", "bound:+gemms"),
        [],
    ),
    (
        'MHSA layer at 64×64 tokens, SDPA fold (`attn_impl="sdpa"`, earlier `fused`) ÷ explicit: peak memory',
        "",
        [("", sdpa_vs_explicit("attention_memory-cpu-fp32.csv", "peak_vs_explicit"))],
        [
            ("bf16", sdpa_vs_explicit("attention_memory-cuda-bf16.csv", "peak_vs_explicit")),
            ("fp32", sdpa_vs_explicit("attention_memory-cuda-fp32.csv", "peak_vs_explicit")),
        ],
    ),
    (
        "the same: time",
        "",
        [("", sdpa_vs_explicit("attention_memory-cpu-fp32.csv", "time_vs_explicit"))],
        [
            ("bf16", sdpa_vs_explicit("attention_memory-cuda-bf16.csv", "time_vs_explicit")),
            ("fp32", sdpa_vs_explicit("attention_memory-cuda-fp32.csv", "time_vs_explicit")),
        ],
    ),
    (
        "`botnet50` training-step peak memory ÷ `resnet50`, 1024 px, batch 1",
        "≤ 1.05×",
        [
            ("auto", Cell("model_memory-cpu-fp32-1024-auto.csv", dict(model=BOTNET50, size="1024"), "fwd+bwd x R50")),
            (
                "explicit",
                Cell(
                    "model_memory-cpu-fp32-1024-auto.csv",
                    dict(model=f"{BOTNET50}:explicit", size="1024"),
                    "fwd+bwd x R50",
                ),
            ),
        ],
        [("fp32, sdpa", Cell("model_memory-cuda-fp32.csv", dict(model=BOTNET50, size="1024"), "fwd+bwd x R50"))],
    ),
    (
        "`botnet50` forward FLOPs ÷ `resnet50`, 1024 px (paper: ~1.2×)",
        "",
        [("", Cell("flops.csv", dict(model=BOTNET50, size="1024"), "x_r50"))],
        [],
    ),
]

FILES = [
    ("throughput-cpu-fp32-b50-eager.md", "`botnet50` ÷ `resnet50` training step, CPU, 256 px, batch 8, eager"),
    ("throughput-cpu-fp32-cl-b50-channels-last.md", "the same, both in channels_last (`--channels-last`)"),
    ("throughput-cpu-fp32-b50-tcmalloc.md", "the same, eager under tcmalloc (`LD_PRELOAD`)"),
    ("throughput-cpu-fp32-compile-b50-compile.md", "the same, both compiled (`--compile`, inductor)"),
    ("throughput-cpu-fp32.md", "throughput, CPU, 256 px, batch 8, every model"),
    ("throughput-cpu-fp32-targets.md", "the same for botnet50, resnet50 and timm's botnet50ts_256, more rounds"),
    ("throughput-cuda-bf16.md", "throughput, H200 bf16, 256 and 1024 px, batch 16"),
    ("throughput-cuda-fp32.md", "throughput, H200 fp32"),
    ("throughput-cuda-bf16-b64.md", "throughput, H200 bf16, batch 64"),
    ("throughput-cuda-bf16-compile.md", "torch.compile, H200 bf16"),
    ("attention_memory-cpu-fp32-impls.md", "MHSA layer memory/time of every attn_impl, 32² and 64² tokens, CPU"),
    ("attention_memory-cpu-fp32-impls-1thread.md", "the same on 1 thread"),
    ("attention_memory-cpu-bf16-impls.md", "the same in bf16 (autocast)"),
    ("attention_memory-cpu-fp32-thresholds.md", "the sweep behind auto's CPU threshold (8² to 32² tokens)"),
    ("attention_memory-cpu-fp32.md", "MHSA layer memory/time, 16² to 96² tokens, CPU (fused = sdpa)"),
    ("attention_memory-cuda-bf16.md", "the same on the H200, with the SDPA kernel chosen (fp32: `-fp32.md`)"),
    ("model_memory-cpu-fp32.md", "whole-model peak memory, 256 to 1024 px (GPU: `model_memory-cuda-fp32.md`)"),
    ("model_memory-cpu-fp32-1024-auto.md", 'training-step peak at 1024 px with `attn_impl="auto"` (chunked)'),
    ("profile_step-cpu-fp32.md", "profiler: where a training step's time goes on the CPU"),
    ("profile_step-cuda-bf16.md", "the same on the H200"),
    ("model_memory-cpu-fp32-gradckpt.md", "training-step peak memory with grad checkpointing, CPU"),
    ("loader_throughput-cpu-fp32.md", "loader images/s: WebDataset shards vs ImageFolder, 2 workers"),
    ("flops.md", "FLOPs and parameters next to the paper's"),
    ("amp_check-cuda-bf16.md", "bf16 training steps: finite losses and gradients, fused vs explicit"),
]


def machine(results: Path, file: str) -> str:
    """``processor, N threads, torch X`` (CPU runs) or the GPU's name (CUDA runs), from a result file's fields."""
    path = results / file
    if not path.exists():
        return "not measured"
    with path.open() as handle:
        row = next(csv.DictReader(handle))
    if row["device"] != "cpu":
        return f"{row['device']}, torch {row['torch']}, {row['dtype']} unless noted"
    threads = f"{row['threads']} thread" + ("" if row["threads"] == "1" else "s")
    return f"{row['cpu']}, {threads}, torch {row['torch']}, {row['dtype']}"


def cells(figures: list[tuple[str, Cell]], results: Path) -> str:
    """``value (label, rounds a–b); ...``; a figure without label or spread stands alone."""
    texts = []
    for label, cell in figures:
        value, spread = cell.render(results)
        notes = [label] + ([f"per round {spread}"] if spread else [])
        texts.append(f"{value} ({', '.join(n for n in notes if n)})" if any(notes) else value)
    return "; ".join(texts) or "—"


def block(results: Path) -> str:
    lines = [
        f"| figure | target | CPU: {machine(results, CPU_FILE)} | GPU: {machine(results, GPU_FILE)} |",
        "|---|---|---|---|",
    ]
    for what, target, cpu, gpu in ROWS:
        lines.append(f"| {what} | {target or '—'} | {cells(cpu, results)} | {cells(gpu, results)} |")
    lines += ["", "Full tables, CSV and plots in `benchmarks/results/`:", ""]
    lines += [f"- [`{name}`](benchmarks/results/{name}): {text}" for name, text in FILES if (results / name).exists()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, help="rewrite this file's block in place (else print)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    text = block(args.results)
    if args.readme is None:
        print(text)
        return
    rewrite_readme_block(args.readme, BEGIN, END, text)
    print(f"wrote the performance block to {args.readme}")


if __name__ == "__main__":
    main()
