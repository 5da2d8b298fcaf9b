"""Multi-head self-attention over a 2D feature map, as in the BoTNet block.

Shapes use ``B`` batch, ``C`` input channels, ``h`` heads, ``d`` channels per head, ``H x W`` the feature map
and ``N = H * W`` tokens.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from botnet.layers.chunked_attention import chunked_attention
from botnet.layers.flex_attention import flex_rel_attention
from botnet.layers.position import AbsPosEmb2d, RelPosEmb2d, is_fx_tracing, is_tracing

POS_EMBEDS = ("relative", "absolute", "none")
ATTN_IMPLS = ("auto", "explicit", "sdpa", "chunked", "flex")

# "auto" thresholds. CPU, one MHSA layer (512 channels, 4 heads x 128, batch 1), fp32, fwd+bwd, 2 threads, medians
# of 5 interleaved rounds, ratios to explicit in one run (benchmarks/results/attention_memory-cpu-fp32-thresholds.md):
# at 16x16 tokens explicit is fastest (sdpa 1.22x, chunked 1.18x, same peak); at 24x24 chunked 0.93x time / 0.91x
# peak (sdpa 0.93x / 0.74x); at 32x32 chunked 0.82x / 0.51x (sdpa 0.98x / 0.55x). Re-measured on the machine
# alone with the chunked backward walking the keys and folding the log-sum-exp in float32
# (attention_memory-cpu-fp32-impls.md, 2 threads): at 32x32 chunked 0.93x / 0.51x (sdpa 1.06x / 0.55x), at 64x64
# chunked 0.80x / 0.18x (sdpa 1.00x / 0.20x); in one process at 16x16 explicit is still fastest (chunked 1.09x).
# So explicit up to 16x16 = 256 tokens, chunked above.
CPU_EXPLICIT_MAX_TOKENS = 256
# CUDA (H200, bf16, benchmarks/results/attention_memory-cuda-bf16.md): at 16x16 tokens every path takes the same
# ~4 ms (launch-bound) and explicit's N x N matrices are small; from 32x32 the SDPA fold matches explicit's time
# (1.01x) at 0.21x (32x32) and 0.08x (64x64) of its memory while its width d + H + W fits the flash / cuDNN
# kernels (<= 256); at 96x96 (width 320) SDPA falls back to the memory-efficient kernel at 3.59x explicit, and
# so does fp32 (1.78x at 64x64, no flash in fp32): there FlexAttention takes over (not yet measured on a GPU).
CUDA_EXPLICIT_MAX_TOKENS = 256
CUDA_FLASH_MAX_WIDTH = 256


def eager_auto_impl(device: str, tokens: int, sdpa_width: int, half: bool) -> str:
    """What ``attn_impl="auto"`` runs in eager mode on ``device`` (``"cpu"``, ``"cuda"``) at ``tokens = H * W``.

    ``sdpa_width`` is the SDPA fold's head width (``d + H + W`` with relative logits, else ``d``) and ``half``
    whether the attention runs in float16 / bfloat16 (by dtype or autocast).
    """
    if device == "cuda":
        if tokens <= CUDA_EXPLICIT_MAX_TOKENS:
            return "explicit"
        return "sdpa" if half and sdpa_width <= CUDA_FLASH_MAX_WIDTH else "flex"
    return "explicit" if tokens <= CPU_EXPLICIT_MAX_TOKENS else "chunked"


def check_attn_impl(impl: str) -> str:
    """``impl`` if it names an attention implementation, else a ``ValueError`` listing the choices."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"unknown attn_impl {impl!r}; use one of {', '.join(ATTN_IMPLS)}")
    return impl


@functools.lru_cache(maxsize=64)
def _cached_indicators(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    rows = torch.eye(height, dtype=dtype, device=device).repeat_interleave(width, dim=0)  # (N, H)
    cols = torch.eye(width, dtype=dtype, device=device).repeat(height, 1)  # (N, W)
    return torch.cat([rows, cols], dim=-1)


def _indicators(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One-hot row and column of every key, ``(N, H + W)``; cached per size, device and dtype in eager mode.

    Traced, exported or compiled graphs build them in the graph, so their ``H x W`` stays dynamic.
    """
    if is_tracing() or torch.compiler.is_compiling():
        return _cached_indicators.__wrapped__(height, width, device, dtype)
    return _cached_indicators(height, width, device, dtype)


class MHSA2d(nn.Module):
    """Multi-head self-attention with 2D position logits, the layer that replaces a bottleneck's 3x3 conv.

    ``x (B, C, H, W)`` is projected by one bias-free 1x1 conv to ``q, k, v``, each ``h`` heads of ``d``
    channels. ``q`` is scaled by ``d ** -0.5`` and the logits of query ``i`` and key ``j`` are
    ``q_i . k_j + q_i . r_ij`` where ``r`` is the 2D relative embedding (``pos_embed="relative"``), the key's
    absolute embedding (``"absolute"``) or nothing (``"none"``). The softmax runs over all ``N`` keys; the heads'
    outputs are concatenated to ``h * d`` channels with no output projection (the block's next 1x1 conv plays
    that role). With ``stride=2`` a 2x2 average pool follows, as in the first block of a BoTNet stage.

    Four implementations give the same numbers (``attn_impl``; :func:`botnet.layers.set_attn_impl` sets it on a
    whole model):

    * ``"explicit"``: the ``(B, h, N, N)`` probabilities are built and pass through ``self.attn_probs`` (an
      ``nn.Identity`` to hook). Always taken while attention is captured (:func:`botnet.layers.capture_attention`).
    * ``"sdpa"``: the position logits are folded into ``scaled_dot_product_attention`` by augmenting the queries
      with their row / column logits and the keys with one-hot row / column indicators, so
      ``q' . k' = q . k + q . r``; flash / memory-efficient kernels apply and no ``N x N`` tensor is kept.
    * ``"chunked"``: :func:`~botnet.layers.chunked_attention.chunked_attention`, query-row chunks forward and
      key chunks backward, the position logits written per chunk and probabilities recomputed in backward; no
      ``N x N`` tensor is kept.
    * ``"flex"``: FlexAttention with the position logits as a ``score_mod`` (CUDA; CPU forward only).
    * ``"auto"`` (default): chosen per call by device, dtype and token count (see :meth:`resolve_impl`).

    Args:
        dim: input channels ``C``.
        num_heads: heads ``h``; must divide ``dim`` when ``dim_head`` is not given.
        dim_head: channels per head ``d`` (default ``dim // num_heads``).
        pos_embed: ``"relative"``, ``"absolute"`` or ``"none"``.
        feat_size: reference ``(H, W)`` of the position tables; other sizes are resampled. ``None`` creates
            the tables on the first call.
        stride: 1, or 2 for a 2x2 average pool after the attention.
        scale_pos_embed: True (reference code): the position logits come from the scaled ``q`` like the
            content logits. False (timm's ``BottleneckAttn`` default): they come from the unscaled ``q``, i.e.
            ``logits = (q . k) * d ** -0.5 + q . r``.
        attn_impl: ``"auto"``, ``"explicit"``, ``"sdpa"``, ``"chunked"`` or ``"flex"`` (see above).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        dim_head: int | None = None,
        pos_embed: str = "relative",
        feat_size: int | tuple[int, int] | None = None,
        stride: int = 1,
        scale_pos_embed: bool = True,
        attn_impl: str = "auto",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        if dim_head is None:
            if dim % num_heads:
                divisors = [n for n in range(1, min(dim, 64) + 1) if dim % n == 0]
                raise ValueError(
                    f"num_heads={num_heads} does not divide the {dim} attention channels; "
                    f"use one of {divisors} or pass dim_head"
                )
            dim_head = dim // num_heads
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; use one of {', '.join(POS_EMBEDS)}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        factory = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.dim_head = dim_head
        self.dim_out = num_heads * dim_head
        self.scale = dim_head**-0.5
        self.pos_embed_type = pos_embed
        self.scale_pos_embed = scale_pos_embed
        self.attn_impl = attn_impl
        self.capture = False  # set by capture_attention(): forces the explicit path so attn_probs sees weights

        self.qkv = nn.Conv2d(dim, 3 * self.dim_out, 1, bias=False, **factory)
        self.pos_embed: nn.Module | None
        if pos_embed == "relative":
            self.pos_embed = RelPosEmb2d(dim_head, feat_size, **factory)
        elif pos_embed == "absolute":
            self.pos_embed = AbsPosEmb2d(dim_head, feat_size, **factory)
        else:
            self.pos_embed = None
        self.attn_probs = nn.Identity()
        # ceil_mode keeps odd maps aligned with the strided 1x1 shortcut (7 -> 4, not 3).
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.qkv.weight, std=0.01)  # as the reference code
        if self.pos_embed is not None:
            self.pos_embed.reset_parameters()

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)`` -> scaled ``q``, ``k``, ``v``, each ``(B, h, N, d)``."""
        batch, _, height, width = x.shape
        qkv = self.qkv(x).reshape(batch, 3, self.num_heads, self.dim_head, height * width)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # channel index = (part * h + head) * d + c
        return q * self.scale, k, v

    def _position_terms(
        self, q: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None:
        """Relative: ``(logits_h (B,h,N,H), logits_w (B,h,N,W))``; absolute: key embedding ``(N, d)``.

        ``q`` is the scaled query; with ``scale_pos_embed=False`` the terms are rescaled to the unscaled one.
        """
        if isinstance(self.pos_embed, RelPosEmb2d):
            if not self.scale_pos_embed:
                q = q / self.scale
            batch, heads, tokens, dim_head = q.shape
            logits_h, logits_w = self.pos_embed(q.view(batch, heads, height, width, dim_head))
            return logits_h.reshape(batch, heads, tokens, height), logits_w.reshape(batch, heads, tokens, width)
        if isinstance(self.pos_embed, AbsPosEmb2d):
            pos = self.pos_embed(height, width).to(q.dtype)
            return pos if self.scale_pos_embed else pos / self.scale
        return None

    def attention_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Content and position logits, ``(B, h, N, N)`` each (zeros for ``pos_embed="none"``); for inspection."""
        height, width = x.shape[-2:]
        q, k, _ = self._qkv(x)
        content = q @ k.transpose(-1, -2)
        return content, self._explicit_position_logits(q, height, width, content)

    def _explicit_position_logits(self, q: torch.Tensor, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        terms = self._position_terms(q, height, width)
        if terms is None:
            return torch.zeros_like(like)
        if isinstance(terms, tuple):
            logits_h, logits_w = terms
            batch, heads, tokens = logits_h.shape[:3]
            position = logits_h.view(batch, heads, tokens, height, 1) + logits_w.view(batch, heads, tokens, 1, width)
            return position.reshape(batch, heads, tokens, tokens)
        return q @ terms.t()

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
        logits = q @ k.transpose(-1, -2)
        logits = logits + self._explicit_position_logits(q, height, width, logits)
        attn = self.attn_probs(logits.softmax(dim=-1))  # (B, h, N, N)
        return attn @ v

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
        terms = self._position_terms(q, height, width)
        if isinstance(terms, tuple):
            logits_h, logits_w = terms
            batch, heads, tokens, dim_head = q.shape
            indicators = _indicators(height, width, q.device, q.dtype).expand(batch, heads, tokens, height + width)
            q = torch.cat([q, logits_h, logits_w], dim=-1)
            k = torch.cat([k, indicators], dim=-1)
            # Equal q/k/v widths keep SDPA on its flash kernel (the CPU one requires it); the pad is sliced off.
            v = F.pad(v, (0, height + width))
            return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :dim_head]
        if terms is not None:
            k = k + terms  # q . k + q . p = q . (k + p)
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)

    def _factored(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height: int, width: int, impl: str
    ) -> torch.Tensor:
        """The chunked or flex path: position logits as the two factors ``(B,h,N,H)``, ``(B,h,N,W)``."""
        terms = self._position_terms(q, height, width)
        logits_h = logits_w = None
        if isinstance(terms, tuple):
            logits_h, logits_w = terms
        elif terms is not None:
            k = k + terms  # absolute: q . k + q . p = q . (k + p)
        if impl == "flex":
            return flex_rel_attention(q, k, v, logits_h, logits_w)
        return chunked_attention(q, k, v, logits_h, logits_w)

    @property
    def attn_impl(self) -> str:
        """The attention implementation: ``"auto"``, ``"explicit"``, ``"sdpa"``, ``"chunked"`` or ``"flex"``."""
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, impl: str) -> None:
        self._attn_impl = check_attn_impl(impl)

    def resolve_impl(self, x: torch.Tensor) -> str:
        """The implementation a call on ``x (B, C, H, W)`` takes: ``attn_impl``, or what ``"auto"`` picks.

        ``"auto"``: while traced, exported or compiled, ``"sdpa"`` (one graph for every size, where the chunked
        path would unroll a size-dependent loop), except under FX symbolic tracing (feature extraction), which
        takes ``"explicit"``, what eager mode takes at the sizes FX is used at, so that traced and eager outputs
        are bit-identical there (timm's and torchvision's FX contract). In eager mode, ``"explicit"`` up to a
        token count where its ``N x N`` matrices are small and its few ops are fastest, then ``"chunked"`` on the
        CPU and ``"sdpa"`` (flash widths, half precision) or ``"flex"`` on CUDA. The thresholds are measured (see
        the constants).
        """
        if self.capture:
            return "explicit"
        if self.attn_impl != "auto":
            return self.attn_impl
        if torch.compiler.is_compiling():
            return "sdpa"
        if is_fx_tracing():
            return "explicit"
        if is_tracing():
            return "sdpa"
        device = x.device.type
        half = x.dtype in (torch.float16, torch.bfloat16) or (device == "cuda" and torch.is_autocast_enabled("cuda"))
        width = self.dim_head + (sum(x.shape[-2:]) if self.pos_embed_type == "relative" else 0)
        return eager_auto_impl(device, x.shape[-2] * x.shape[-1], width, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)`` -> ``(B, h * d, H / stride, W / stride)`` (rounded up)."""
        batch, _, height, width = x.shape
        impl = self.resolve_impl(x)
        q, k, v = self._qkv(x)
        if impl == "explicit":
            out = self._explicit(q, k, v, height, width)
        elif impl == "sdpa":
            out = self._sdpa(q, k, v, height, width)
        else:
            out = self._factored(q, k, v, height, width, impl)
        out = out.transpose(-1, -2).reshape(batch, self.dim_out, height, width)
        return self.pool(out)

    def extra_repr(self) -> str:
        scale = "" if self.scale_pos_embed else ", scale_pos_embed=False"
        impl = "" if self.attn_impl == "auto" else f", attn_impl={self.attn_impl!r}"
        return f"num_heads={self.num_heads}, dim_head={self.dim_head}, pos_embed={self.pos_embed_type!r}{scale}{impl}"
