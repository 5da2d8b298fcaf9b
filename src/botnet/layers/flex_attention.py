"""FlexAttention (``torch.nn.attention.flex_attention``) with the 2D relative position logits as a ``score_mod``.

The score of query ``i`` and key ``j = y' * W + x'`` gets ``logits_h[b, h, i, y'] + logits_w[b, h, i, x']``
added inside the kernel, so no ``N x N`` tensor exists in forward or backward and any head width works. On CUDA
the wrapper is compiled once with dynamic shapes (Triton kernels; a new resolution does not recompile). ``W``
is read from ``logits_w``'s shape inside the compiled function: capturing it as a Python int gave silently
wrong output after a recompile in torch 2.14.1. On the CPU, torch 2.14.1 runs FlexAttention forward only (no
backward) and this wrapper runs it eagerly (the unfused reference, which materialises the scores): a
correctness path, not a fast one. Compiled, the CPU forward is exact too but no faster than explicit attention
(4 heads x 128, 2 threads, no grad: 1.2-1.9x explicit's time at 32x32 and 64x64 tokens, where the chunked path
took 0.5-0.85x), so the CPU does not pay its compile; the tests compile it there to check the CUDA wrapper.

Shapes use ``B`` batch, ``h`` heads, ``N = H * W`` tokens, ``d`` channels per head.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import flex_attention


def _flex_rel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logits_h: torch.Tensor, logits_w: torch.Tensor
) -> torch.Tensor:
    width = logits_w.shape[-1]

    def score_mod(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        return score + logits_h[b, h, q_idx, kv_idx // width] + logits_w[b, h, q_idx, kv_idx % width]

    return flex_attention(q, k, v, score_mod=score_mod, scale=1.0)  # type: ignore[return-value]


def _flex_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return flex_attention(q, k, v, scale=1.0)  # type: ignore[return-value]


@functools.cache
def _compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` compiled once per process, with dynamic shapes."""
    return torch.compile(fn, dynamic=True, fullgraph=True)


def flex_backward_supported(device: torch.device) -> bool:
    """Whether FlexAttention has a backward on ``device`` (torch 2.14.1: CUDA yes, CPU no)."""
    return device.type == "cuda"


def flex_rel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    logits_h: torch.Tensor | None = None,
    logits_w: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q k^T + logits_h[.., y'] + logits_w[.., x']) v`` by FlexAttention.

    Args:
        q: scaled queries ``(B, h, N, d)``.
        k: keys ``(B, h, N, d)``.
        v: values ``(B, h, N, d)``.
        logits_h: ``(B, h, N, H)`` logit of each query for each key row, or ``None`` (no position logits).
        logits_w: ``(B, h, N, W)`` logit of each query for each key column, or ``None`` with ``logits_h``.

    Returns:
        ``(B, h, N, d)``.

    Raises:
        NotImplementedError: on a device without FlexAttention backward when a gradient is needed.
    """
    inputs = [t for t in (q, k, v, logits_h, logits_w) if t is not None]
    if not flex_backward_supported(q.device) and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        raise NotImplementedError(
            f"FlexAttention has no backward on {q.device.type} in torch {torch.__version__}; "
            "use attn_impl='chunked' (or 'auto') to train there, 'flex' only under torch.no_grad()"
        )
    fn = _flex_plain if logits_h is None or logits_w is None else _flex_rel
    if q.device.type == "cuda":
        return _compiled(fn)(*inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"flex_attention called without torch.compile")
        return fn(*inputs)
