"""Attention maps of one MHSA block for one image: what each query attends to, by content or by offset.

Coordinates. Queries are pixels ``(y, x)`` of the image the caller shows, of size ``image_size = (H_img, W_img)``;
it may differ from the tensor fed to the model (e.g. an image resized to the model's input size). A block
attends over a token grid ``H x W`` read from the block's own input, so the first block of a stride-2 stage
reports the map *before* its 2x2 pool (14 x 14 for botnet50 ``layer4.0`` at 224 input, 7 x 7 for ``layer4.1``).

The grid is stretched over the whole image: token ``(r, c)`` covers pixel rows
``[r * H_img / H, (r + 1) * H_img / H)`` and the matching columns, so pixel ``(y, x)`` lies in token
``(y * H // H_img, x * W // W_img)``, in exact integer arithmetic for any size (a 97 x 131 image over a 7 x 9
grid: rows 0-13 -> 0, 14-27 -> 1, ..., 83-96 -> 6). Overlays are upsampled with the same geometry
(:func:`upsample`). This is a display convention: it ignores the sub-cell shift of padded strided convolutions.

Shapes use ``h`` heads, ``H x W`` the token grid, ``N = H * W`` tokens and ``Q`` queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from botnet.layers import MHSA2d, attention_layers, capture_attention

Pixel = tuple[int, int]
Query = Pixel | Literal["center", "grid", "all"]


def get_block(model: nn.Module, block: str | None = None) -> tuple[str, MHSA2d]:
    """The MHSA layer named ``block`` (e.g. ``"layer4.2.conv2"``); ``None`` picks the model's last one.

    Raises ``ValueError`` listing the valid names when ``block`` is unknown or the model has no MHSA layer.
    """
    layers = attention_layers(model)
    if not layers:
        raise ValueError(
            "the model has no MHSA layer to show; build one with attention, e.g. botnet.create_model('botnet50') "
            "or attention='c4,c5'"
        )
    if block is None:
        block = list(layers)[-1]
    if block not in layers:
        raise ValueError(f"unknown attention block {block!r}; this model's MHSA blocks are: {', '.join(layers)}")
    return block, layers[block]


def pixel_to_token(pixel: Pixel, image_size: tuple[int, int], grid_size: tuple[int, int]) -> tuple[int, int]:
    """Token ``(r, c)`` of image pixel ``(y, x)``: ``(y * H // H_img, x * W // W_img)`` (see the module notes).

    Raises ``ValueError`` naming the valid range when the pixel lies outside the image.
    """
    (y, x), (img_h, img_w), (height, width) = pixel, image_size, grid_size
    if not (0 <= y < img_h and 0 <= x < img_w):
        raise ValueError(
            f"query (y={y}, x={x}) is outside the {img_h}x{img_w} image (height x width); "
            f"use 0 <= y < {img_h} and 0 <= x < {img_w}, or 'center', 'grid', 'all'"
        )
    return y * height // img_h, x * width // img_w


def token_center(token: tuple[int, int], image_size: tuple[int, int], grid_size: tuple[int, int]) -> Pixel:
    """The pixel at the centre of token ``(r, c)``'s cell (rounded down); it maps back to the same token."""
    (row, col), (img_h, img_w), (height, width) = token, image_size, grid_size
    return (2 * row + 1) * img_h // (2 * height), (2 * col + 1) * img_w // (2 * width)


def query_pixels(
    query: Query, image_size: tuple[int, int], grid_size: tuple[int, int], grid_points: int = 3
) -> list[Pixel]:
    """Resolve a query to pixels ``(y, x)``, row-major.

    ``(y, x)``: that pixel; ``"center"``: the image centre ``(H_img // 2, W_img // 2)``; ``"grid"``:
    ``grid_points x grid_points`` pixels at the centres of equal image cells; ``"all"``: the centre of every token.
    """
    img_h, img_w = image_size
    if query == "center":
        return [(img_h // 2, img_w // 2)]
    if query == "grid":
        n = grid_points
        return [((2 * i + 1) * img_h // (2 * n), (2 * j + 1) * img_w // (2 * n)) for i in range(n) for j in range(n)]
    if query == "all":
        height, width = grid_size
        return [token_center((r, c), image_size, grid_size) for r in range(height) for c in range(width)]
    if isinstance(query, tuple) and len(query) == 2:
        pixel_to_token(query, image_size, grid_size)  # validates the range
        return [(int(query[0]), int(query[1]))]
    raise ValueError(f"unknown query {query!r}; use a pixel (y, x), 'center', 'grid' or 'all'")


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Stretch token maps ``(..., H, W)`` over an image ``size = (H_img, W_img)`` -> ``(..., H_img, W_img)``.

    Half-pixel geometry (``align_corners=False``): token ``(r, c)`` covers the cell of :func:`pixel_to_token`;
    ``mode="nearest"`` reproduces that mapping exactly.
    """
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(flat, size=size, mode=mode, **align).reshape(*lead, *size)


def offset_attention(probs: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Mean attention as a function of the relative offset from query to key: a head's "receptive field".

    Args:
        probs: attention ``(h, N, N)`` (query, key) over an ``H x W`` grid.
        grid_size: ``(H, W)``.

    Returns:
        ``(h, 2H - 1, 2W - 1)``; entry ``[k, dy + H - 1, dx + W - 1]`` averages head ``k``'s weight over the
        ``(H - |dy|) * (W - |dx|)`` query/key pairs with ``key - query = (dy, dx)``.
    """
    height, width = grid_size
    rows = torch.arange(height, device=probs.device).repeat_interleave(width)  # (N,) row of each token
    cols = torch.arange(width, device=probs.device).repeat(height)
    dy = rows[None, :] - rows[:, None]  # (N, N): key row - query row
    dx = cols[None, :] - cols[:, None]
    index = ((dy + height - 1) * (2 * width - 1) + dx + width - 1).flatten()
    bins = (2 * height - 1) * (2 * width - 1)
    sums = probs.new_zeros(probs.shape[0], bins).index_add_(1, index, probs.flatten(1))
    counts = torch.bincount(index, minlength=bins).to(probs.dtype)  # every offset has at least one pair
    return (sums / counts).view(-1, 2 * height - 1, 2 * width - 1)


@dataclass(frozen=True)
class QueryMaps:
    """Maps of ``Q`` queries over the key grid: softmax weights and the two logit parts they come from.

    ``probs = softmax(content + position)`` over the ``H * W`` keys of each query and head.
    """

    pixels: list[Pixel]  # Q queries (y, x) in image pixels
    tokens: list[tuple[int, int]]  # their tokens (r, c)
    probs: torch.Tensor  # (Q, h, H, W) attention weights
    content: torch.Tensor  # (Q, h, H, W) content logits q . k
    position: torch.Tensor  # (Q, h, H, W) position logits q . r

    @property
    def mean_probs(self) -> torch.Tensor:
        """Attention averaged over heads, ``(Q, H, W)``."""
        return self.probs.mean(1)


@dataclass(frozen=True)
class BlockAttention:
    """Attention of one MHSA block for one image, with the content / position split of its logits."""

    block: str  # layer name, e.g. "layer4.2.conv2"
    image_size: tuple[int, int]  # (H_img, W_img): the pixel frame of queries
    grid_size: tuple[int, int]  # (H, W): the token grid the block attends over
    probs: torch.Tensor  # (h, N, N) softmax weights (query, key)
    content: torch.Tensor  # (h, N, N) content logits q . k
    position: torch.Tensor  # (h, N, N) position logits q . r (zeros without position embedding)
    output: torch.Tensor | list[torch.Tensor]  # the model's output for the image, e.g. logits (1, num_classes)

    @property
    def num_heads(self) -> int:
        return self.probs.shape[0]

    def token(self, pixel: Pixel) -> tuple[int, int]:
        """Token ``(r, c)`` of image pixel ``(y, x)``."""
        return pixel_to_token(pixel, self.image_size, self.grid_size)

    def query_maps(self, query: Query = "center", grid_points: int = 3) -> QueryMaps:
        """Per-head maps for the queries of :func:`query_pixels`."""
        pixels = query_pixels(query, self.image_size, self.grid_size, grid_points)
        tokens = [self.token(pixel) for pixel in pixels]
        index = torch.tensor([r * self.grid_size[1] + c for r, c in tokens], device=self.probs.device)

        def pick(full: torch.Tensor) -> torch.Tensor:  # (h, N, N) -> (Q, h, H, W)
            return full[:, index].transpose(0, 1).reshape(len(pixels), self.num_heads, *self.grid_size)

        return QueryMaps(pixels, tokens, pick(self.probs), pick(self.content), pick(self.position))

    def offsets(self) -> torch.Tensor:
        """Mean attention by relative offset, ``(h, 2H - 1, 2W - 1)`` (see :func:`offset_attention`)."""
        return offset_attention(self.probs, self.grid_size)


@torch.no_grad()
def block_attention(
    model: nn.Module, x: torch.Tensor, block: str | None = None, image_size: tuple[int, int] | None = None
) -> BlockAttention:
    """Run ``model`` on one image and read the attention of one MHSA block.

    Put the model in ``eval()`` mode first (batch-norm statistics). The block's input is taken with a forward
    pre-hook, which gives its token grid and, through :meth:`MHSA2d.attention_logits`, the logit split.

    Args:
        model: any module containing :class:`~botnet.layers.MHSA2d` layers, e.g. a BoTNet.
        x: the model input ``(1, C, H_in, W_in)`` or ``(C, H_in, W_in)``.
        block: MHSA layer name (default: the last one); see :func:`get_block`.
        image_size: ``(H_img, W_img)`` of the image queries refer to, when it differs from ``x`` (e.g. the
            image before resizing); default ``(H_in, W_in)``.
    """
    name, layer = get_block(model, block)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"block_attention takes one image (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    inputs: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
    try:
        with capture_attention(model) as store:
            output = model(x)
    finally:
        handle.remove()
    feature = inputs[-1]  # (1, C_blk, H, W)
    content, position = layer.attention_logits(feature)
    return BlockAttention(
        block=name,
        image_size=image_size or (x.shape[-2], x.shape[-1]),
        grid_size=(feature.shape[-2], feature.shape[-1]),
        probs=store[name][0],
        content=content[0],
        position=position[0],
        output=output,
    )
