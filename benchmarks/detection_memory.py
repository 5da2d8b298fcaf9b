"""Peak memory and time per iteration of Mask R-CNN BoT50-FPN at 1024x1024, batch 1, on CPU (Linux).

The paper's COCO setting: a 1024x1024 image, where the first c5 block attends over 64x64 = 4096 tokens (its
N x N logits are 4 heads x 4096^2 floats = 256 MiB per copy) and the other two over 32x32. Measured for the
fused attention path (``attn_impl="sdpa"``: SDPA with the relative logits folded in) and the explicit path
(``attn_impl="explicit"``, set on every ``MHSA2d`` by :func:`botnet.set_attn_impl`), for a training step
(forward, backward, SGD step) and an inference pass; a ResNet-50 FPN Mask R-CNN gives the baseline.

Each model and mode runs in its own process; inside it the two attention paths alternate step by step (the
order flips every round) so that both see the same load from other processes, and "time vs fused" is the
median of the per-round time ratios, steadier on a shared machine than either time. Every step is measured on
its own: glibc's ``malloc_trim`` hands freed memory back, "before" is the resident set then (model, optimiser
state, image), the peak resident set (``VmHWM`` in ``/proc/self/status``) is reset via ``/proc/self/clear_refs``
and read after the step; "peak - before" is what the step needs on top. The input is one image of the
synthetic digits set (:mod:`botnet.detection.synthetic`) at 1024x1024 with four digits' boxes and masks;
weights are random (nothing is downloaded).

    python benchmarks/detection_memory.py --threads 1        # all rows, writes benchmarks/results/
    python benchmarks/detection_memory.py --size 256 --iters 1 --models botnet50
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import botnet

RESULTS = Path(__file__).parent / "results" / "detection_memory.csv"
FIELDS = (
    "model",
    "attention",
    "mode",
    "image",
    "threads",
    "iters",
    "s_per_iter",
    "time_vs_first",
    "peak_rss_mib",
    "rss_before_mib",
    "peak_minus_before_mib",
    "load_avg_1m",
    "torch",
)


def _status_mib(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)


def measure(model_name: str, mode: str, size: int, warmup: int, iters: int) -> list[dict[str, object]]:
    """All attention paths of one model and mode, in this process, alternating step by step.

    Each step is measured on its own: freed memory is handed back (``malloc_trim``), the resident set read
    ("before") and the peak reset; the step's peak minus "before" is what it needs on top of the model,
    optimiser state and image. Alternating the paths (order flipped every round) exposes them to the same load
    from other processes, so the per-round time ratio to the first path is steadier than either time.
    """
    from botnet.detection import CocoDetection, create_detector, detection_transforms, make_demo_data

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_demo_data(tmp, num_train=1, num_val=0, image_size=(size, size), digits_per_image=(4, 4))
        image, target = CocoDetection(*paths["train"], detection_transforms(train=False))[0]
    model = create_detector(f"maskrcnn_{model_name}_fpn", num_classes=11, image_size=size).train(mode == "train")
    layers = [m for m in model.modules() if isinstance(m, botnet.MHSA2d)]
    attention_paths = ["fused", "explicit"] if layers else ["-"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    libc = ctypes.CDLL("libc.so.6")

    def step(path: str) -> None:
        botnet.set_attn_impl(model, "sdpa" if path == "fused" else "explicit")
        if mode == "train":
            losses = model([image], [target])
            sum(losses.values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model([image])

    for path in attention_paths * warmup:
        step(path)
    samples: dict[str, list[tuple[float, float, float]]] = {path: [] for path in attention_paths}
    for round_ in range(iters):
        for path in attention_paths[:: 1 if round_ % 2 == 0 else -1]:
            gc.collect()
            libc.malloc_trim(0)  # hand freed heap back, so "before" is what is really held
            before = _status_mib("VmRSS")
            _reset_peak()
            start = time.perf_counter()
            step(path)
            samples[path].append((time.perf_counter() - start, before, _status_mib("VmHWM")))
    reference = [t for t, _, _ in samples[attention_paths[0]]]
    rows = []
    for path, runs in samples.items():
        times = [t for t, _, _ in runs]
        rows.append(
            {
                "attention": path,
                "s_per_iter": round(statistics.median(times), 2),
                "time_vs_first": round(statistics.median(t / r for t, r in zip(times, reference, strict=True)), 3)
                if len(samples) > 1
                else "",
                "peak_rss_mib": round(max(peak for _, _, peak in runs)),
                "rss_before_mib": round(statistics.median(before for _, before, _ in runs)),
                "peak_minus_before_mib": round(max(peak - before for _, before, peak in runs)),
            }
        )
    return rows


def _run_isolated(args: argparse.Namespace, model: str, mode: str) -> list[dict[str, object]]:
    command = [sys.executable, __file__, "--worker", model, mode, "--size", str(args.size)]
    command += ["--warmup", str(args.warmup), "--iters", str(args.iters)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{model}/{mode} failed:\n{done.stderr[-3000:]}")
    common = dict(model=model, mode=mode, image=f"{args.size}x{args.size}", threads=args.threads, iters=args.iters)
    extra = dict(load_avg_1m=round(os.getloadavg()[0], 1), torch=torch.__version__)
    return [{**common, **result, **extra} for result in json.loads(done.stdout.strip().splitlines()[-1])]


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | attention | mode | s / iter | time vs fused | peak RSS MiB | RSS before MiB | peak - before MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['attention']} | {r['mode']} | {r['s_per_iter']} | {r['time_vs_first']} | "
            f"{r['peak_rss_mib']} | {r['rss_before_mib']} | {r['peak_minus_before_mib']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["botnet50", "resnet50"], help="backbones (registry names)")
    parser.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    parser.add_argument("--size", type=int, default=1024, help="square image side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="measured rounds (median time reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="OMP threads per run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="CSV to write")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        model, mode = args.worker
        print(json.dumps(measure(model, mode, args.size, args.warmup, args.iters)))
        return

    rows = []
    for model in args.models:
        for mode in args.modes:
            new = _run_isolated(args, model, mode)
            print("\n".join(markdown(new).splitlines()[2:]), flush=True)
            rows += new
    print("\n" + markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
