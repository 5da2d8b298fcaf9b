"""Layers: multi-head self-attention over 2D maps and its position embeddings."""

from botnet.layers.attention import ATTN_IMPLS, POS_EMBEDS, MHSA2d
from botnet.layers.attn_impl import AttnImplSetting, set_attn_impl
from botnet.layers.capture import attention_layers, capture_attention
from botnet.layers.position import AbsPosEmb2d, RelPosEmb2d, fit_position_tables, rel_to_abs
from botnet.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "ATTN_IMPLS",
    "POS_EMBEDS",
    "AbsPosEmb2d",
    "AttnImplSetting",
    "MHSA2d",
    "RelPosEmb2d",
    "SqueezeExcite",
    "attention_layers",
    "capture_attention",
    "fit_position_tables",
    "rel_to_abs",
    "set_attn_impl",
]
