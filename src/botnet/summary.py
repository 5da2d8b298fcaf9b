"""Model table: parameters and FLOPs of every registered model, computed (never typed in)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from botnet.layers import set_attn_impl
from botnet.models import create_model, get_model_cfg, list_models


@dataclass(frozen=True)
class ModelSummary:
    name: str
    params_m: float
    gflops: float  # multiply-adds count as 2 FLOPs
    input_size: tuple[int, int]
    paper_params_m: float | None


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: torch.nn.Module, input_size: tuple[int, int, int]) -> int:
    """Forward FLOPs of one image (``torch.utils.flop_counter``: matmuls and convs, 2 FLOPs per MAC).

    MHSA layers take their explicit path, whose matmuls the counter sees (it has no formula for the CPU
    flash-attention kernel of the SDPA path and does not see inside the chunked one). A model on the ``meta``
    device is counted without computing anything.
    """
    model.eval()
    device = next(model.parameters()).device
    with set_attn_impl(model, "explicit"), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, device=device))
    return counter.get_total_flops()


def summarize(name: str) -> ModelSummary:
    cfg = get_model_cfg(name)
    model = create_model(name)
    return ModelSummary(
        name=name,
        params_m=count_params(model) / 1e6,
        gflops=count_flops(model, cfg.input_size) / 1e9,
        input_size=cfg.input_size[1:],
        paper_params_m=cfg.paper_params,
    )


def markdown_table(pattern: str = "*", speed: dict[str, tuple[float, float]] | None = None) -> str:
    """The README's model table for the models matching ``pattern``.

    ``speed`` maps a model name to its measured training throughput ``(img/s, ratio to torchvision resnet50)``
    (from ``benchmarks/throughput.py``); models without a figure show a dash.
    """
    speed = speed or {}
    rows = [
        "| model | input | params (M) | paper params (M) | GFLOPs | CPU train img/s (÷ tv R50) |",
        "|---|---|---|---|---|---|",
    ]
    for name in list_models(pattern):
        s = summarize(name)
        paper = f"{s.paper_params_m:.1f}" if s.paper_params_m else "—"
        rate = f"{speed[name][0]:.2f} ({speed[name][1]:.2f}×)" if name in speed else "—"
        rows.append(
            f"| `{name}` | {s.input_size[0]}×{s.input_size[1]} | {s.params_m:.2f} | {paper} | {s.gflops:.2f} | {rate} |"
        )
    return "\n".join(rows)
