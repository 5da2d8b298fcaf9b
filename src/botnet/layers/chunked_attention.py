"""Attention with 2D relative position logits over query-row chunks: no ``N x N`` tensor is ever kept.

A custom :class:`torch.autograd.Function` (flash-attention style, on plain matmuls): the queries are walked in
chunks of ``c`` rows; each chunk's logits ``q_c k^T`` get the position logits added from the two factor tensors
``logits_h (.., N, H)`` and ``logits_w (.., N, W)`` (the logit of key ``(y', x')`` adds ``logits_h[.., y'] +
logits_w[.., x']``), are turned into probabilities in place and multiplied with ``v``. Only the per-row softmax
statistics (row maximum and sum, in the input's dtype) are saved; backward recomputes each chunk's probabilities
with the same ops, so they are bit-identical to the forward's. The ``(c, N)`` work buffers are allocated once per
call and reused by every chunk, so the peak holds ``O(c N + N d)`` per head, not ``O(N^2)``. Every in-place op
on a work buffer takes operands of the buffer's dtype: a float32 operand on a bfloat16 buffer would make
PyTorch allocate a float32 copy of the whole chunk (measured: +16 MiB, 1.15x explicit's peak, at 32x32 tokens).

Shapes use ``G`` for the flattened batch x heads, ``N = H * W`` tokens and ``d`` channels per head.
"""

from __future__ import annotations

from typing import Any

import torch

# Work-buffer budget per call, in elements of one (G, c, N) chunk buffer. Measured at 64x64 tokens, 4 heads, d=128,
# fp32, fwd+bwd, 2 threads on this shared 2-core CPU under load from other processes
# (benchmarks/results/attention_memory-cpu-fp32-chunk<E>.md): 2^18 elements (16 rows) 4.01x explicit's
# time, 2^20 (64 rows) 3.44x, 2^22 (256 rows) 1.57x, at 0.13x / 0.13x / 0.16x its peak. Under contention each op
# costs milliseconds, so fewer, larger chunks win; 2^21 (8 MiB in fp32; 128 rows at 64x64, 512 at 32x32) keeps
# two chunks or more at 32x32 tokens, so the buffers stay well under one N x N matrix there.
CHUNK_ELEMENTS = 2**21


def default_chunk(groups: int, tokens: int) -> int:
    """Query rows per chunk so that one ``(G, c, N)`` buffer holds about :data:`CHUNK_ELEMENTS` elements."""
    return max(1, min(tokens, CHUNK_ELEMENTS // max(1, groups * tokens)))


def _add_position(
    logits: torch.Tensor, logits_h: torch.Tensor | None, logits_w: torch.Tensor | None, start: int, end: int
) -> None:
    """Add the rows ``start:end`` of the factor logits to the chunk ``logits (G, c, N)`` in place."""
    if logits_h is None or logits_w is None:
        return
    groups, rows = logits.shape[:2]
    grid = logits.view(groups, rows, logits_h.shape[-1], logits_w.shape[-1])  # (G, c, H, W)
    grid.add_(logits_h[:, start:end, :, None]).add_(logits_w[:, start:end, None, :])


class ChunkedAttentionFn(torch.autograd.Function):
    """``softmax(q k^T + P) v`` with ``P[i, (y, x)] = logits_h[i, y] + logits_w[i, x]``, in query-row chunks.

    Inputs ``q, k, v (G, N, d)`` (``q`` already scaled), ``logits_h (G, N, H)`` and ``logits_w (G, N, W)`` or
    both ``None`` (no position logits), and ``chunk`` rows. Returns ``(G, N, d)``. Gradients flow to all five
    tensors.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        logits_h: torch.Tensor | None,
        logits_w: torch.Tensor | None,
        chunk: int,
    ) -> torch.Tensor:
        groups, tokens, _ = q.shape
        out = torch.empty_like(v, memory_format=torch.contiguous_format)
        row_max, row_sum = q.new_empty(2, groups, tokens, 1).unbind(0)  # per-row softmax statistics
        work = q.new_empty(groups * min(chunk, tokens) * tokens)
        keys_t = k.transpose(1, 2)
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            probs = work[: groups * (end - start) * tokens].view(groups, end - start, tokens)
            torch.bmm(q[:, start:end], keys_t, out=probs)
            _add_position(probs, logits_h, logits_w, start, end)
            torch.amax(probs, -1, keepdim=True, out=row_max[:, start:end])
            probs.sub_(row_max[:, start:end]).exp_()
            torch.sum(probs, -1, keepdim=True, out=row_sum[:, start:end])
            probs.div_(row_sum[:, start:end])
            out[:, start:end] = torch.bmm(probs, v)
        ctx.save_for_backward(q, k, v, logits_h, logits_w, out, row_max, row_sum)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, k, v, logits_h, logits_w, out, row_max, row_sum = ctx.saved_tensors
        chunk = ctx.chunk
        groups, tokens, _ = q.shape
        grad_out = grad_out.to(q.dtype)
        # D_i = sum_j P_ij dP_ij = dO_i . O_i: the softmax backward's row term, without the N x N product (summed in
        # float32, then kept in the work dtype like the other row statistics).
        stat_dtype = torch.promote_types(q.dtype, torch.float32)
        row_dot = (grad_out.to(stat_dtype) * out.to(stat_dtype)).sum(-1, keepdim=True).to(q.dtype)  # (G, N, 1)
        grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
        grad_k = torch.zeros_like(k, memory_format=torch.contiguous_format)
        grad_v = torch.zeros_like(v, memory_format=torch.contiguous_format)
        with_pos = logits_h is not None and logits_w is not None
        grad_h = torch.empty_like(logits_h) if with_pos else None
        grad_w = torch.empty_like(logits_w) if with_pos else None
        size = groups * min(chunk, tokens) * tokens
        work_p, work_ds = q.new_empty(size), q.new_empty(size)
        keys_t, values_t = k.transpose(1, 2), v.transpose(1, 2)
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            rows = end - start
            probs = work_p[: groups * rows * tokens].view(groups, rows, tokens)
            torch.bmm(q[:, start:end], keys_t, out=probs)
            _add_position(probs, logits_h, logits_w, start, end)
            probs.sub_(row_max[:, start:end]).exp_().div_(row_sum[:, start:end])  # the forward's P, bit for bit
            grad_o = grad_out[:, start:end]
            grad_v.baddbmm_(probs.transpose(1, 2), grad_o)
            grad_logits = work_ds[: groups * rows * tokens].view(groups, rows, tokens)
            torch.bmm(grad_o, values_t, out=grad_logits)
            grad_logits.sub_(row_dot[:, start:end]).mul_(probs)  # dS = P * (dP - D)
            grad_q[:, start:end] = torch.bmm(grad_logits, k)
            grad_k.baddbmm_(grad_logits.transpose(1, 2), q[:, start:end])
            if grad_h is not None and grad_w is not None:
                grid = grad_logits.view(groups, rows, grad_h.shape[-1], grad_w.shape[-1])
                grad_h[:, start:end] = grid.sum(-1)
                grad_w[:, start:end] = grid.sum(-2)
        return grad_q, grad_k, grad_v, grad_h, grad_w, None


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    logits_h: torch.Tensor | None = None,
    logits_w: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Attention over ``(B, h, N, d)`` queries, keys and values with optional factor position logits.

    Args:
        q: scaled queries ``(B, h, N, d)``.
        k: keys ``(B, h, N, d)``.
        v: values ``(B, h, N, d)``.
        logits_h: ``(B, h, N, H)``, the position logit of each query for each key row; ``None`` for none.
        logits_w: ``(B, h, N, W)``, the same for each key column (``H * W = N``); ``None`` with ``logits_h``.
        chunk: query rows per chunk (default :func:`default_chunk`).

    Returns:
        ``(B, h, N, d)``, equal to ``softmax(q k^T + logits_h[.., y'] + logits_w[.., x']) v``.
    """
    batch, heads, tokens, dim_head = q.shape
    groups = batch * heads
    chunk = chunk or default_chunk(groups, tokens)
    flat = [t.reshape(groups, tokens, t.shape[-1]) if t is not None else None for t in (q, k, v, logits_h, logits_w)]
    out = ChunkedAttentionFn.apply(*flat, chunk)
    return out.view(batch, heads, tokens, dim_head)
