"""Layers: multi-head self-attention over 2D maps and its position embeddings."""

from botnet.layers.attention import POS_EMBEDS, MHSA2d
from botnet.layers.capture import attention_layers, capture_attention
from botnet.layers.position import AbsPosEmb2d, RelPosEmb2d, fit_position_tables, rel_to_abs
from botnet.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "POS_EMBEDS",
    "AbsPosEmb2d",
    "MHSA2d",
    "RelPosEmb2d",
    "SqueezeExcite",
    "attention_layers",
    "capture_attention",
    "fit_position_tables",
    "rel_to_abs",
]
