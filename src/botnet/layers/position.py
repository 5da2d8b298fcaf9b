"""Learned 2D position embeddings for :class:`~botnet.layers.MHSA2d`.

Both embeddings are learned for a reference feature size (``feat_size``) and resampled when the feature map
of a call differs, so one model runs at any input resolution. With ``feat_size=None`` the tables are created
on the first call, from that call's feature map (like ``torch.nn.LazyLinear``).

Shapes use ``B`` batch, ``h`` heads, ``d`` channels per head, ``H x W`` the feature map, ``N = H * W``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import UninitializedParameter


def rel_to_abs(x: torch.Tensor) -> torch.Tensor:
    """Turn logits indexed by relative offset into logits indexed by absolute key position.

    The index shift of "Attention Augmented Convolutional Networks" (Bello et al., 2019): pad one zero column,
    flatten, pad ``L - 1`` zeros, view as ``(L + 1, 2L - 1)`` and keep ``[:L, L - 1:]``. No gather index and
    no ``(N, N, d)`` tensor is built.

    Args:
        x: ``(..., L, 2L - 1)``; ``x[..., i, r]`` is the logit of query ``i`` for offset ``r - (L - 1)``.

    Returns:
        ``(..., L, L)`` with ``out[..., i, j] = x[..., i, j - i + L - 1]``.
    """
    length, width = x.shape[-2:]
    if not isinstance(x, torch.fx.Proxy) and width != 2 * length - 1:  # FX traces no branch on sizes
        raise ValueError(f"rel_to_abs expects a last dimension of 2L-1={2 * length - 1}, got {width}")
    x = F.pad(x, (0, 1)).flatten(-2)  # (..., L * 2L)
    x = F.pad(x, (0, length - 1))  # (..., (L + 1) * (2L - 1))
    x = x.unflatten(-1, (length + 1, 2 * length - 1))
    return x[..., :length, length - 1 :]


def is_fx_tracing() -> bool:
    """Whether ``torch.fx.symbolic_trace`` (or ``create_feature_extractor``) is tracing: sizes are proxies then."""
    symbolic = torch.fx._symbolic_trace
    check = getattr(symbolic, "is_fx_symbolic_tracing", None)  # torch >= 2.9; is_fx_tracing() warns there
    return check() if check is not None else symbolic.is_fx_tracing()


def is_tracing() -> bool:
    """Whether a graph is being traced or exported (FX, TorchScript trace, ONNX export, ``torch.export``)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or is_fx_tracing()


def _resize_1d(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a ``(L0, d)`` table to ``(length, d)``, keeping both ends (offset 0 stays central).

    At ``length == L0`` the table itself is returned in eager mode. While tracing or exporting the resampling
    runs for every size (there an exact copy): with no branch on the size the graphs (ONNX, TorchScript,
    ``torch.export``) keep ``H`` and ``W`` dynamic. (The tracing test comes first: comparing a symbolic size
    would itself add a guard to an exported graph.)
    """
    if not is_tracing() and length == table.shape[0]:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear", align_corners=True)
    return resized.squeeze(0).t()


def _resize_2d(table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinearly resample a ``(H0, W0, d)`` table to ``(height, width, d)``, keeping the corners (as above)."""
    if not is_tracing() and (height, width) == tuple(table.shape[:2]):
        return table
    grid = table.permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)[0].permute(1, 2, 0)


def fit_position_tables(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample the position tables in ``state`` to the shapes of ``model``'s, as the layers do at run time.

    Relative tables ``rel_h`` / ``rel_w (2L - 1, d)`` are resampled linearly along the offsets, absolute ones
    ``pos (H, W, d)`` bilinearly, both keeping the ends (offset 0 stays central). So weights learned at 224 (7x7
    and 14x14 c5 maps) load into a model whose tables are sized for 1024 (32x32, 64x64). Other entries, and
    tables of a model that are not created yet (``feat_size=None``), are returned as they are.
    """
    own = model.state_dict()
    fitted = dict(state)
    for key, table in state.items():
        target = own.get(key)
        if target is None or isinstance(target, UninitializedParameter) or target.shape == table.shape:
            continue
        if key.endswith((".rel_h", ".rel_w")) or key in ("rel_h", "rel_w"):
            fitted[key] = _resize_1d(table, target.shape[0])
        elif key.endswith(".pos_embed.pos") or key == "pos":
            fitted[key] = _resize_2d(table, target.shape[0], target.shape[1])
    return fitted


class _LazyTables(nn.Module):
    """Base for embeddings whose tables may be created on the first call (``feat_size=None``)."""

    feat_size: tuple[int, int] | None

    def __init__(self, dim_head: int, feat_size: int | tuple[int, int] | None) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.feat_size = _pair(feat_size) if feat_size is not None else None

    def _table_shapes(self, height: int, width: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _new_param(self, shape: tuple[int, ...] | None, **factory: Any) -> nn.Parameter:
        if shape is None:
            return UninitializedParameter(**factory)
        return nn.Parameter(torch.empty(shape, **factory))

    def has_uninitialized_params(self) -> bool:
        return any(isinstance(p, UninitializedParameter) for p in self.parameters(recurse=False))

    def materialize(self, height: int, width: int) -> None:
        """Create the tables for a ``height x width`` reference map if they do not exist yet."""
        if not self.has_uninitialized_params():
            return
        self.feat_size = (height, width)
        for name, shape in self._table_shapes(height, width).items():
            getattr(self, name).materialize(shape)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.has_uninitialized_params():
            return
        # Reference code intends stddev dim_head ** -0.5 (its call passes it as the mean by mistake).
        for param in self.parameters(recurse=False):
            nn.init.normal_(param, std=self.dim_head**-0.5)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        for name, param in self.named_parameters(recurse=False):
            key = prefix + name
            if isinstance(param, UninitializedParameter) and key in state_dict:
                param.materialize(state_dict[key].shape)
        if not self.has_uninitialized_params() and self.feat_size is None:
            self.feat_size = self._feat_size_from_tables()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _feat_size_from_tables(self) -> tuple[int, int]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim_head={self.dim_head}, feat_size={self.feat_size}"


class RelPosEmb2d(_LazyTables):
    """2D relative position embedding: tables ``rel_h (2H-1, d)`` and ``rel_w (2W-1, d)``, shared by all heads.

    The position logit of query ``(y, x)`` and key ``(y', x')`` is
    ``q . rel_h[y' - y + H - 1] + q . rel_w[x' - x + W - 1]`` (BoTNet, after Shaw et al. and Bello et al.).
    """

    def __init__(
        self,
        dim_head: int,
        feat_size: int | tuple[int, int] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim_head, feat_size)
        shapes = self._table_shapes(*self.feat_size) if self.feat_size is not None else {}
        self.rel_h = self._new_param(shapes.get("rel_h"), device=device, dtype=dtype)
        self.rel_w = self._new_param(shapes.get("rel_w"), device=device, dtype=dtype)
        self.reset_parameters()

    def _table_shapes(self, height: int, width: int) -> dict[str, tuple[int, ...]]:
        return {"rel_h": (2 * height - 1, self.dim_head), "rel_w": (2 * width - 1, self.dim_head)}

    def _feat_size_from_tables(self) -> tuple[int, int]:
        return ((self.rel_h.shape[0] + 1) // 2, (self.rel_w.shape[0] + 1) // 2)

    def tables(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables for a ``height x width`` map: ``(2H-1, d)`` and ``(2W-1, d)``, resampled if needed."""
        self.materialize(height, width)
        return _resize_1d(self.rel_h, 2 * height - 1), _resize_1d(self.rel_w, 2 * width - 1)

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative logits, split by axis.

        Args:
            q: scaled queries ``(B, h, H, W, d)``.

        Returns:
            ``(logits_h, logits_w)``: ``(B, h, H, W, H)`` indexed by the key's row and ``(B, h, H, W, W)``
            indexed by the key's column. Their broadcast sum is the ``(B, h, N, N)`` position logits.
        """
        height, width = q.shape[2], q.shape[3]
        rel_h, rel_w = self.tables(height, width)
        logits_w = rel_to_abs(q @ rel_w.t().to(q.dtype))  # (B, h, H, W, W)
        logits_h = rel_to_abs(q.transpose(2, 3) @ rel_h.t().to(q.dtype))  # (B, h, W, H, H)
        return logits_h.transpose(2, 3), logits_w


class AbsPosEmb2d(_LazyTables):
    """Learned absolute position embedding ``pos (H, W, d)`` of the keys: the logit adds ``q . pos[y', x']``."""

    def __init__(
        self,
        dim_head: int,
        feat_size: int | tuple[int, int] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim_head, feat_size)
        shapes = self._table_shapes(*self.feat_size) if self.feat_size is not None else {}
        self.pos = self._new_param(shapes.get("pos"), device=device, dtype=dtype)
        self.reset_parameters()

    def _table_shapes(self, height: int, width: int) -> dict[str, tuple[int, ...]]:
        return {"pos": (height, width, self.dim_head)}

    def _feat_size_from_tables(self) -> tuple[int, int]:
        return (self.pos.shape[0], self.pos.shape[1])

    def forward(self, height: int, width: int) -> torch.Tensor:
        """The key embedding for a ``height x width`` map, ``(N, d)``, bilinearly resampled if needed."""
        self.materialize(height, width)
        pos = _resize_2d(self.pos, height, width)
        return pos.reshape(height * width, self.dim_head)


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def feat_size_for(img_size: int | tuple[int, int], reduction: int) -> tuple[int, int]:
    """Feature-map size after a ResNet-style stack of stride-2 layers (each rounds up)."""
    height, width = _pair(img_size)
    return (math.ceil(height / reduction), math.ceil(width / reduction))
