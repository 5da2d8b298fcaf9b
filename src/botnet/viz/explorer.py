"""An attention explorer: one self-contained HTML page per image, where every MHSA block's maps follow the pointer.

The page holds, for each block, every query's attention for every head together with the content / position
split of its logits, so nothing is computed on a server: open the file in a browser (no network, no CDN; a
Content-Security-Policy forbids any request) or show it inline in Jupyter. Hover over the image to move the
query, click to pin it; with the image focused the arrow keys move it one token, Enter pins / releases it.

Storage. A block over ``N`` tokens with ``h`` heads keeps three ``(h, N, N)`` arrays (attention, content logits
``q.k``, position logits ``q.r``) for all ``N`` queries, plus the mean attention by offset ``(h, 2H-1, 2W-1)``.
Each row (one head, one query: ``N`` keys) is quantised to uint8 over its own ``[min, max]`` (float32 ``lo, hi``
kept per row), so a decoded value is within ``(hi - lo) / 510`` of the model's; arrays travel as base64. BoT50 at
224 px (4 heads; ``layer4.0`` over 14 x 14 tokens, ``layer4.1`` / ``layer4.2`` over 7 x 7) gives a 0.80 MB page:
0.64 MB for ``layer4.0`` (3 x 4 x 196 x 196 bytes), 0.05 MB for each 7 x 7 block, 0.05 MB for a 451 x 300 JPEG
photo, 0.02 MB of script and style.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from botnet.data import load_image, preprocess
from botnet.layers import attention_layers
from botnet.viz.maps import BlockAttention, block_attention, get_block

ATTENTION_CMAP = "inferno"  # attention weights and the offset maps, as in the PNG figures
LOGIT_CMAP = "viridis"  # content / position logits
DISPLAY_MAX_SIDE = 512  # long side, in pixels, of the image embedded in the page (queries keep the file's pixels)
JPEG_MIN_SIDE = 128  # images with a longer side than this and RGB are embedded as JPEG, others as PNG
TOP_K = 5
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
IFRAME_HEIGHT = 900  # pixels of the Jupyter frame

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="sub">{subtitle}</p>
</header>
<main>
<section class="controls" aria-label="Controls">
<label>Block <select id="block"></select></label>
<label>Head <select id="head"></select></label>
<label>Overlay <input id="alpha" type="range" min="0" max="100" value="65"></label>
<label><input id="smooth" type="checkbox" checked> smooth maps</label>
</section>
<div class="top">
<figure class="viewer">
<div id="view" class="panel image" tabindex="0" role="application" aria-roledescription="attention map"
 aria-label="Image with the attention of the chosen head; the query follows the pointer"
 aria-describedby="help status"></div>
<figcaption id="status" aria-live="polite"></figcaption>
</figure>
<aside>
<h2>Top-{top_k} predictions</h2>
<ol id="top5"></ol>
<h2>How to use</h2>
<p id="help">Hover over an image to move the query (the cyan cross), click to pin it, click the pinned token
again to release it. With the large image focused (Tab), the arrow keys move the query one token, Shift + arrows
three, Home goes to the centre, Enter or Space pins / releases. Each map is coloured over its own range.</p>
</aside>
</div>
<section aria-labelledby="heads-title">
<h2 id="heads-title">Every head, for this query</h2>
<table id="heads">
<thead><tr><th scope="col">head</th><th scope="col">attention</th><th scope="col">content logits q&middot;k</th>
<th scope="col">position logits q&middot;r</th><th scope="col">by offset: this query</th>
<th scope="col">by offset: mean of queries</th></tr></thead>
<tbody></tbody>
</table>
</section>
</main>
<script type="application/json" id="explorer-data">{data}</script>
<script>
{js}
</script>
</body>
</html>
"""


class ExplorerPage(str):
    """The explorer's HTML (a ``str``); shown inline in Jupyter, in a frame of its own."""

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self, quote=True)}" style="width: 100%; height: {IFRAME_HEIGHT}px; '
            'border: 0" sandbox="allow-scripts" title="BoTNet attention explorer"></iframe>'
        )

    def __repr__(self) -> str:
        return f"<ExplorerPage: {len(self.encode()) / 1e6:.2f} MB of HTML>"

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self, encoding="utf-8")
        return path


def quantise(rows: torch.Tensor) -> dict[str, str]:
    """``(R, L)`` floats -> uint8 codes ``round((v - lo) / (hi - lo) * 255)`` per row, with float32 ``(lo, hi)``.

    Returns ``{"codes": base64 of R * L bytes, "range": base64 of R * 2 float32}`` (little-endian); a constant
    row gets code 0 and ``hi = lo``.
    """
    rows = rows.detach().float().cpu()
    lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    scale = torch.where(hi > lo, 255 / (hi - lo), torch.zeros_like(hi))
    codes = ((rows - lo) * scale).round().clamp(0, 255).to(torch.uint8)
    bounds = torch.cat([lo, hi], 1).numpy().astype("<f4")
    return {"codes": _b64(codes.numpy().tobytes()), "range": _b64(bounds.tobytes())}


def dequantise(packed: dict[str, str], length: int) -> np.ndarray:
    """Inverse of :func:`quantise`: ``(R, length)`` float32 values."""
    codes = np.frombuffer(base64.b64decode(packed["codes"]), np.uint8).reshape(-1, length)
    bounds = np.frombuffer(base64.b64decode(packed["range"]), "<f4").reshape(-1, 2)
    return bounds[:, :1] + codes.astype(np.float32) * (bounds[:, 1:] - bounds[:, :1]) / 255


def page_data(page: str) -> dict[str, Any]:
    """The JSON the page carries (image, predictions, colour tables, quantised blocks), parsed."""
    match = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S)
    if match is None:
        raise ValueError("not an attention explorer page: no explorer-data script")
    return json.loads(match.group(1))


def decode_blocks(page: str) -> dict[str, dict[str, np.ndarray]]:
    """The attention a page stores, per block: ``probs`` / ``content`` / ``position`` ``(h, N, N)`` and
    ``offsets`` ``(h, 2H-1, 2W-1)``, dequantised (what the page draws)."""
    decoded = {}
    for block in page_data(page)["blocks"]:
        (height, width), heads = block["grid"], block["heads"]
        tokens = height * width
        arrays = {key: dequantise(block[key], tokens).reshape(heads, tokens, tokens) for key in _PER_QUERY}
        offsets = dequantise(block["offsets"], (2 * height - 1) * (2 * width - 1))
        arrays["offsets"] = offsets.reshape(heads, 2 * height - 1, 2 * width - 1)
        decoded[block["name"]] = arrays
    return decoded


_PER_QUERY = ("probs", "content", "position")


@torch.no_grad()
def explorer_html(
    model: nn.Module,
    image: Image.Image | str | Path,
    blocks: list[str] | None = None,
    *,
    x: torch.Tensor | None = None,
    class_names: list[str] | None = None,
    title: str | None = None,
) -> ExplorerPage:
    """The attention explorer page of ``model`` for one image.

    Put the model in ``eval()`` mode first. Queries are pixels of ``image`` as given, whatever size the model sees.

    Args:
        model: a module with :class:`~botnet.layers.MHSA2d` layers, e.g. a BoTNet.
        image: a PIL image or an image file, any size, gray or colour.
        blocks: MHSA layer names to include (default: every one, in forward order).
        x: the model input ``(1, C, H_in, W_in)``; default: ``image`` converted to the model's channels, resized
            to its ``pretrained_cfg`` input size and normalised with its mean / std (as ``botnet attention``).
        class_names: labels of the classifier's outputs for the top-5 list (default: class indices).
        title: page title (default: "BoTNet attention explorer").
    """
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if x is None:
        x = preprocess(image, model.pretrained_cfg, resize="stretch")
    names = list(attention_layers(model)) if blocks is None else list(blocks)
    if not names:
        get_block(model)  # raises: the model has no MHSA layer
    image_size = (image.height, image.width)
    attentions = [block_attention(model, x, name, image_size=image_size) for name in names]
    data = {
        "image": {"src": _image_url(image), "height": image.height, "width": image.width},
        "predictions": _top_predictions(attentions[0].output, class_names),
        "colormaps": {"attention": _lut(ATTENTION_CMAP), "logit": _lut(LOGIT_CMAP)},
        "blocks": [_block_data(attention) for attention in attentions],
    }
    title = title or "BoTNet attention explorer"
    model_name = getattr(model, "model_name", type(model).__name__)
    subtitle = (
        f"{model_name} · input {x.shape[-2]}×{x.shape[-1]} · image {image.height}×{image.width} (y, x in its "
        f"pixels) · {len(names)} MHSA block{'s' if len(names) > 1 else ''}"
    )
    static = resources.files("botnet.viz")
    page = PAGE.format(
        csp=CSP,
        title=html.escape(title),
        subtitle=html.escape(subtitle),
        top_k=TOP_K,
        css=static.joinpath("explorer.css").read_text(encoding="utf-8"),
        js=static.joinpath("explorer.js").read_text(encoding="utf-8"),
        data=json.dumps(data, separators=(",", ":")).replace("</", "<\\/"),
    )
    return ExplorerPage(page)


def write_explorer(
    model: nn.Module, image: Image.Image | str | Path, path: str | Path, blocks: list[str] | None = None, **options
) -> Path:
    """Write :func:`explorer_html` of ``model`` for ``image`` to ``path``; ``options`` go to it. Returns the path."""
    return explorer_html(model, image, blocks, **options).save(path)


def _block_data(attention: BlockAttention) -> dict[str, Any]:
    """One block's grid, heads and quantised maps (rows = head-major queries, columns = keys)."""
    heads, tokens = attention.num_heads, attention.probs.shape[-1]
    block = {"name": attention.block, "grid": list(attention.grid_size), "heads": heads}
    for key in _PER_QUERY:
        block[key] = quantise(getattr(attention, key).reshape(heads * tokens, tokens))
    block["offsets"] = quantise(attention.offsets().flatten(1))
    return block


def _top_predictions(output: Any, class_names: list[str] | None) -> list[list[Any]]:
    """``[[label, probability], ...]`` of a classifier's ``(1, num_classes)`` output, best first; ``[]`` otherwise."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[1] < 1:
        return []
    probs, index = output[0].float().softmax(0).topk(min(TOP_K, output.shape[1]))
    return [
        [class_names[i] if class_names and i < len(class_names) else str(i), round(p, 4)]
        for p, i in zip(probs.tolist(), index.tolist())
    ]


def _image_url(image: Image.Image) -> str:
    """The image as a ``data:`` URL, long side at most ``DISPLAY_MAX_SIDE``: JPEG for large RGB, PNG otherwise."""
    image = image.convert("L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB")
    scale = DISPLAY_MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    jpeg = image.mode == "RGB" and max(image.size) > JPEG_MIN_SIDE
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))
    return f"data:image/{'jpeg' if jpeg else 'png'};base64,{_b64(buffer.getvalue())}"


def _lut(name: str) -> str:
    """A matplotlib colour map as 256 RGB triples, base64 of 768 bytes."""
    rgb = colormaps[name](np.linspace(0, 1, 256))[:, :3]
    return _b64(np.round(rgb * 255).astype(np.uint8).tobytes())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
