"""Attention with 2D relative position logits over chunks: no ``N x N`` tensor is ever kept.

A custom :class:`torch.autograd.Function` (flash-attention style, on plain matmuls). The forward walks the queries
in chunks of ``c`` rows: each chunk's position logits are written from the two factor tensors ``logits_h (.., N,
H)`` and ``logits_w (.., N, W)`` (the logit of key ``(y', x')`` is ``logits_h[.., y'] + logits_w[.., x']``), the
product ``q_c k^T`` is accumulated onto them (one pass fewer than adding them after it, and in bfloat16 one
rounding), and the sum is exponentiated in place and multiplied with ``v``; the row sums normalise the ``(c, d)``
output. Only the per-row softmax statistics (row maximum and sum, in the input's dtype) are saved. The backward
walks the keys in chunks of about ``c``: it recomputes a chunk's transposed probabilities against all queries
with the same position terms and statistics (in float32 the log-sum-exp is written with the position terms and
the probabilities are one ``exp``; the softmax backward's row term ``D`` is likewise written before the
``dP`` product), so that the chunk's ``dK`` and ``dV`` are each one product with an
``N``-long reduction and only ``dQ`` accumulates over chunks (a rank-``c`` update; walking the queries would make
``dK`` and ``dV`` both accumulate, and those updates run about 30 % slower than an ``N``-long product here).
The work buffers are allocated once per call and reused by every chunk, so the peak holds ``O(c N + N d)`` per
head, not ``O(N^2)``. Every in-place op on a work buffer takes operands of the buffer's dtype: a float32 operand
on a bfloat16 buffer would make PyTorch allocate a float32 copy of the whole chunk (measured: +16 MiB, 1.15x
explicit's peak, at 32x32 tokens).

Shapes use ``G`` for the flattened batch x heads, ``N = H * W`` tokens and ``d`` channels per head.
"""

from __future__ import annotations

from typing import Any

import torch

# Chunk shape. A chunk's (c, d) x (d, N) products run faster with more rows (2 threads on this CPU: 45 GFLOP/s at
# 128 rows, 56 at 256, 59 at 512, 61 at 1024), and fewer chunks mean fewer ops. At 64x64 tokens (4 heads, d=128,
# fp32, fwd+bwd, time to explicit's within one process) chunks of 128 / 256 / 512 rows ran 0.93x / 0.88x / 0.81x
# explicit's time on 2 threads and 0.90x / 0.91x / 0.80x on 1. Chunks of 512 rows in blocks of 2 or of 4 heads ran
# alike (0.84x both), so the groups (batch x heads) are walked in blocks of at most CHUNK_ELEMENTS per work buffer
# (16 MiB in fp32). A chunk holds at most a quarter of the rows, so that the backward's two buffers stay below half
# an N x N matrix: at 32x32 tokens (the c5 map of a 1024 px detection input) 256 rows ran as fast as 512 within
# noise (0.90x / 0.92x explicit's time in one process) at 33 instead of 41 MiB.
CHUNK_ROWS = 512
CHUNK_ELEMENTS = 2**22


def default_chunk(tokens: int) -> int:
    """Rows per chunk: :data:`CHUNK_ROWS`, at most a quarter of the ``tokens`` (rounded up) and one budget's worth."""
    return max(1, min(CHUNK_ROWS, -(-tokens // 4), CHUNK_ELEMENTS // tokens))


def _group_blocks(groups: int, rows: int, tokens: int) -> list[slice]:
    """Slices of the ``G`` axis, as many groups a block as fit one ``(g, rows, N)`` buffer of the budget."""
    blocks = -(-groups // max(1, CHUNK_ELEMENTS // (rows * tokens)))
    step = -(-groups // blocks)  # blocks of equal size, but the last
    return [slice(g, min(g + step, groups)) for g in range(0, groups, step)]


def _key_blocks(height: int, width: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """Key chunks of about ``chunk`` keys as ``(y, x, rows, cols)`` blocks of the ``H x W`` key grid.

    A chunk is either whole key rows (``x = 0``, ``cols = W``) or a part of one row (``rows = 1``), so that its
    keys view as a ``(rows, cols)`` grid and the position gradients are sums over its two axes.
    """
    if chunk >= width:
        step = chunk // width
        return [(y, 0, min(step, height - y), width) for y in range(0, height, step)]
    return [(y, x, 1, min(chunk, width - x)) for y in range(height) for x in range(0, width, chunk)]


def _logits(out: torch.Tensor, a: torch.Tensor, b_t: torch.Tensor, *terms: torch.Tensor) -> None:
    """``out (g, m, n) = a b_t + sum(terms)``: one term broadcast to ``out``, or two broadcast over a view of it.

    The terms are written first and the product is accumulated onto them: one pass over ``out`` fewer than adding
    them after it, and in bfloat16 the sum is rounded once.
    """
    if not terms:
        torch.bmm(a, b_t, out=out)
        return
    if len(terms) == 1:
        out.copy_(terms[0])
    else:
        torch.add(*terms, out=out.view(torch.broadcast_shapes(*(t.shape for t in terms))))
    out.baddbmm_(a, b_t)


class ChunkedAttentionFn(torch.autograd.Function):
    """``softmax(q k^T + P) v`` with ``P[i, (y, x)] = logits_h[i, y] + logits_w[i, x]``, in chunks.

    Inputs ``q, k, v (G, N, d)`` (``q`` already scaled), ``logits_h (G, N, H)`` and ``logits_w (G, N, W)`` or
    both ``None`` (no position logits), and ``chunk`` rows (queries forward, keys backward). Returns ``(G, N, d)``.
    Gradients flow to all five tensors.
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
        chunk = min(chunk, tokens)
        out = torch.empty_like(v, memory_format=torch.contiguous_format)
        row_max, row_sum = q.new_empty(2, groups, tokens, 1).unbind(0)  # per-row softmax statistics
        blocks = _group_blocks(groups, chunk, tokens)
        work = q.new_empty(blocks[0].stop * chunk * tokens)  # the first block is the largest
        for g in blocks:
            keys_t = k[g].transpose(1, 2)
            for start in range(0, tokens, chunk):
                queries = slice(start, min(start + chunk, tokens))
                probs = work[: (g.stop - g.start) * (queries.stop - start) * tokens].view(g.stop - g.start, -1, tokens)
                position = ()  # (g, c, H, 1) and (g, c, 1, W)
                if logits_h is not None and logits_w is not None:
                    position = (logits_h[g, queries, :, None], logits_w[g, queries, None, :])
                _logits(probs, q[g, queries], keys_t, *position)
                torch.amax(probs, -1, keepdim=True, out=row_max[g, queries])
                probs.sub_(row_max[g, queries]).exp_()  # E = exp(S - max); P = E / sum, normalised on the (c, d) output
                torch.sum(probs, -1, keepdim=True, out=row_sum[g, queries])
                out[g, queries] = torch.bmm(probs, v[g]).div_(row_sum[g, queries])
        ctx.save_for_backward(q, k, v, logits_h, logits_w, out, row_max, row_sum)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, k, v, logits_h, logits_w, out, row_max, row_sum = ctx.saved_tensors
        groups, tokens, _ = q.shape
        grad_out = grad_out.to(q.dtype)
        # D_i = sum_j P_ij dP_ij = dO_i . O_i: the softmax backward's row term, without the N x N product (summed in
        # float32, then kept in the work dtype like the other row statistics).
        stat_dtype = torch.promote_types(q.dtype, torch.float32)
        row_dot = (grad_out.to(stat_dtype) * out.to(stat_dtype)).sum(-1).to(q.dtype)  # (G, N)
        # The backward walks the keys: a chunk's transposed logits (g, c, N) against all queries give its dK and dV as
        # one product each with an N-long reduction, and only dQ accumulates (rank-c) over the chunks.
        row_max, row_sum, neg_row_dot = (t.view(groups, 1, tokens) for t in (row_max, row_sum, row_dot.neg_()))
        # In float32 and float64 the logits are written as S - lse (lse = max + log sum), so that the probabilities
        # are one exp: -lse is written with the position terms, before the product. In half precision they are
        # recomputed as the forward computed them, S rounded to the work dtype and then that S's statistics: the
        # exact S - lse differs from the forward's probabilities by S's rounding (~|S| 2^-9) averaged over a row
        # (on a 12 x 12 map with large logits, bf16 gradient errors against float32 of 8 % instead of explicit's 4 %).
        neg_lse = row_sum.log().add_(row_max).neg_() if q.dtype == stat_dtype else None  # (G, 1, N)
        grad_q = torch.zeros_like(q, memory_format=torch.contiguous_format)
        grad_k = torch.empty_like(k, memory_format=torch.contiguous_format)
        grad_v = torch.empty_like(v, memory_format=torch.contiguous_format)
        with_pos = logits_h is not None and logits_w is not None
        if with_pos:
            height, width = logits_h.shape[-1], logits_w.shape[-1]
            # The factors transposed, (G, H, N) and (G, W, N), to add to a key chunk's (g, c, N) logits; -lse joins
            # the second.
            position_t = (logits_h.transpose(1, 2).contiguous(), logits_w.new_empty(groups, width, tokens))
            torch.add(logits_w.transpose(1, 2), 0 if neg_lse is None else neg_lse, out=position_t[1])
            grad_h_t, grad_w_t = (torch.zeros_like(t) for t in position_t)
        else:
            height, width = 1, tokens
        blocks = _group_blocks(groups, ctx.chunk, tokens)
        size = blocks[0].stop * ctx.chunk * tokens  # the first block is the largest
        work_p, work_ds = q.new_empty(size), q.new_empty(size)
        for g in blocks:
            queries_t, grad_out_t = q[g].transpose(1, 2), grad_out[g].transpose(1, 2)
            for y, x, rows, cols in _key_blocks(height, width, ctx.chunk):
                keys = slice(y * width + x, y * width + x + rows * cols)
                shape = (g.stop - g.start, rows * cols, tokens)
                probs_t = work_p[: shape[0] * shape[1] * tokens].view(shape)  # P^T of the chunk's keys
                if with_pos:  # (g, rows, 1, N) and (g, 1, cols, N); in float32 -lse is in the second
                    terms = (position_t[0][g, y : y + rows, None], position_t[1][g, None, x : x + cols])
                else:
                    terms = () if neg_lse is None else (neg_lse[g],)
                _logits(probs_t, k[g, keys], queries_t, *terms)
                if neg_lse is None:
                    probs_t.sub_(row_max[g]).exp_().div_(row_sum[g])
                else:
                    probs_t.exp_()
                grad_v[g, keys] = torch.bmm(probs_t, grad_out[g])
                grad_logits_t = work_ds[: shape[0] * shape[1] * tokens].view(shape)
                _logits(grad_logits_t, v[g, keys], grad_out_t, neg_row_dot[g])  # dP^T - D
                grad_logits_t.mul_(probs_t)  # dS^T = P^T * (dP^T - D)
                grad_k[g, keys] = torch.bmm(grad_logits_t, q[g])
                grad_q[g].baddbmm_(grad_logits_t.transpose(1, 2), k[g, keys])
                if with_pos:  # sums over the chunk's key columns and key rows, as products with ones: torch.sum
                    # over these middle axes took 3.7 ms on a 32 MiB chunk, the product 1.8 ms
                    grid = grad_logits_t.view(shape[0], rows, cols, tokens)
                    grad_h_t[g, y : y + rows].add_(torch.matmul(grid.new_ones(1, cols), grid).squeeze(-2))
                    sum_rows = torch.matmul(grid.new_ones(1, rows), grid.flatten(2))  # (g, 1, cols * N)
                    grad_w_t[g, x : x + cols].add_(sum_rows.view(shape[0], cols, tokens))
        if not with_pos:
            return grad_q, grad_k, grad_v, None, None, None
        return grad_q, grad_k, grad_v, grad_h_t.transpose(1, 2), grad_w_t.transpose(1, 2), None


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
        chunk: query rows per forward chunk, and at most as many keys per backward chunk (default
            :func:`default_chunk`).

    Returns:
        ``(B, h, N, d)``, equal to ``softmax(q k^T + logits_h[.., y'] + logits_w[.., x']) v``.
    """
    batch, heads, tokens, dim_head = q.shape
    groups = batch * heads
    chunk = chunk or default_chunk(tokens)
    flat = [t.reshape(groups, tokens, t.shape[-1]) if t is not None else None for t in (q, k, v, logits_h, logits_w)]
    out = ChunkedAttentionFn.apply(*flat, chunk)
    return out.view(batch, heads, tokens, dim_head)
