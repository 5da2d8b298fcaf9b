"""Attention maps as pictures: compute them (:mod:`botnet.viz.maps`), draw them (:mod:`botnet.viz.figures`), explore
them in a browser (:mod:`botnet.viz.explorer`).

Typical use::

    att = botnet.viz.block_attention(model.eval(), x, "layer4.0.conv2")
    maps = att.query_maps((40, 52))          # probs / content / position, (Q, heads, H, W)
    botnet.viz.save_figure(botnet.viz.query_figure(image, att, (40, 52)), "q.png")
    botnet.viz.explorer_html(model, image)   # every block's maps in one interactive HTML page
"""

from botnet.viz.explorer import ExplorerPage, explorer_html, write_explorer
from botnet.viz.figures import all_queries_figure, grid_figure, offset_figure, query_figure, save_figure
from botnet.viz.maps import (
    BlockAttention,
    QueryMaps,
    block_attention,
    get_block,
    offset_attention,
    pixel_to_token,
    query_pixels,
    token_center,
    upsample,
)

__all__ = [
    "BlockAttention",
    "ExplorerPage",
    "QueryMaps",
    "all_queries_figure",
    "block_attention",
    "explorer_html",
    "get_block",
    "grid_figure",
    "offset_attention",
    "offset_figure",
    "pixel_to_token",
    "query_figure",
    "query_pixels",
    "save_figure",
    "token_center",
    "upsample",
    "write_explorer",
]
