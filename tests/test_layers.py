"""MHSA2d against an independent reference that gathers the relative embedding for every (query, key) pair."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from botnet.layers import MHSA2d, RelPosEmb2d, capture_attention, rel_to_abs


def reference_mhsa(layer: MHSA2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit BoTNet attention: returns (output (B, h*d, H, W) before pooling, probabilities (B, h, N, N))."""
    batch, _, height, width = x.shape
    heads, dim_head = layer.num_heads, layer.dim_head
    weight = layer.qkv.weight[:, :, 0, 0]  # (3 * h * d, C)
    proj = torch.einsum("oc,bchw->bohw", weight, x)
    tokens = height * width

    def split(part: int) -> torch.Tensor:  # channels [part*h*d + head*d + c] -> (B, h, N, d)
        chans = proj[:, part * heads * dim_head : (part + 1) * heads * dim_head]
        per_head = [chans[:, i * dim_head : (i + 1) * dim_head].flatten(2).transpose(1, 2) for i in range(heads)]
        return torch.stack(per_head, 1)

    q, k, v = split(0) * dim_head**-0.5, split(1), split(2)
    logits = torch.einsum("bhid,bhjd->bhij", q, k)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    if layer.pos_embed_type == "relative":
        rel_h, rel_w = layer.pos_embed.rel_h, layer.pos_embed.rel_w
        assert rel_h.shape[0] == 2 * height - 1 and rel_w.shape[0] == 2 * width - 1, "reference needs exact tables"
        emb = rel_h[ys[None, :] - ys[:, None] + height - 1] + rel_w[xs[None, :] - xs[:, None] + width - 1]  # (N,N,d)
        logits = logits + torch.einsum("bhid,ijd->bhij", q, emb)
    elif layer.pos_embed_type == "absolute":
        pos = layer.pos_embed.pos[ys, xs]  # (N, d) embedding of each key
        logits = logits + torch.einsum("bhid,jd->bhij", q, pos)
    attn = logits.softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", attn, v)  # (B, h, N, d)
    out = torch.cat([out[:, i].transpose(1, 2).reshape(batch, dim_head, height, width) for i in range(heads)], 1)
    assert out.shape[1] == heads * dim_head and attn.shape[-1] == tokens
    return out, attn


def make_layer(dim: int, heads: int, pos: str, size: tuple[int, int], stride: int = 1) -> MHSA2d:
    layer = MHSA2d(dim, num_heads=heads, pos_embed=pos, feat_size=size, stride=stride)
    nn.init.normal_(layer.qkv.weight, std=dim**-0.5)  # large enough that attention is far from uniform
    return layer.double()


SIZES = [(4, 4), (5, 7), (7, 3), (1, 6)]
CASES = list(itertools.product(SIZES, [1, 2, 4], ["relative", "absolute", "none"]))


@pytest.mark.parametrize(("size", "heads", "pos"), CASES)
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_matches_reference(size: tuple[int, int], heads: int, pos: str, impl: str) -> None:
    layer = make_layer(16, heads, pos, size)
    layer.attn_impl = impl
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    expected, _ = reference_mhsa(layer, x)
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=1e-8)


def test_attention_is_far_from_uniform() -> None:
    """Guard that the parity tests exercise real attention, not a degenerate average."""
    layer = make_layer(16, 2, "relative", (5, 7))
    _, attn = reference_mhsa(layer, torch.randn(2, 16, 5, 7, dtype=torch.float64))
    assert attn.max() > 5 / 35


def test_stride_two_pools_after_attention_and_rounds_up() -> None:
    layer = make_layer(16, 2, "relative", (7, 5), stride=2)
    x = torch.randn(1, 16, 7, 5, dtype=torch.float64)
    out = layer(x)
    expected, _ = reference_mhsa(layer, x)
    assert out.shape[-2:] == (4, 3)  # like a strided 1x1 conv shortcut: ceil(7/2), ceil(5/2)
    torch.testing.assert_close(out, nn.functional.avg_pool2d(expected, 2, 2, ceil_mode=True))


def test_probabilities_are_observable_and_match_reference() -> None:
    layer = make_layer(16, 4, "relative", (5, 7))
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with capture_attention(layer) as attn:
        layer(x)
    _, expected = reference_mhsa(layer, x)
    probs = attn[""]
    assert probs.shape == (2, 4, 35, 35)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 35, dtype=torch.float64))
    assert not layer.capture, "capture mode must be switched off after the block"


def test_position_logits_differ_per_head() -> None:
    """A known bug elsewhere: position logits summed over heads and copied to every head."""
    layer = make_layer(16, 4, "relative", (5, 5))
    content, position = layer.attention_logits(torch.randn(1, 16, 5, 5, dtype=torch.float64))
    assert content.shape == position.shape == (1, 4, 25, 25)
    assert not torch.allclose(position[:, 0], position[:, 1])


def test_rel_to_abs_index_shift() -> None:
    length = 5
    x = torch.randn(3, length, 2 * length - 1)
    out = rel_to_abs(x)
    for i, j in itertools.product(range(length), repeat=2):
        assert out[:, i, j].equal(x[:, i, j - i + length - 1])
    with pytest.raises(ValueError, match="2L-1"):
        rel_to_abs(torch.randn(4, 6))


def test_tables_resample_linearly_with_fixed_ends() -> None:
    emb = RelPosEmb2d(3, feat_size=(4, 4)).double()
    rel_h, rel_w = emb.tables(7, 4)
    assert rel_h.shape == (13, 3) and rel_w.shape == (7, 3)
    assert rel_w.equal(emb.rel_w)  # unchanged size: the learned table itself
    src = emb.rel_h.detach().numpy()
    grid = np.linspace(0, src.shape[0] - 1, 13)
    expected = np.stack([np.interp(grid, np.arange(src.shape[0]), src[:, c]) for c in range(3)], 1)
    np.testing.assert_allclose(rel_h.detach().numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("pos", ["relative", "absolute"])
def test_other_resolution_runs_and_every_impl_agrees(pos: str) -> None:
    layer = make_layer(16, 2, pos, (4, 4))
    x = torch.randn(1, 16, 6, 9, dtype=torch.float64)
    explicit = layer(x)
    for impl in ("sdpa", "chunked"):
        layer.attn_impl = impl
        torch.testing.assert_close(layer(x), explicit)
    assert layer.pos_embed.feat_size == (4, 4)


def test_lazy_tables_are_built_on_first_call_and_load_from_state_dict() -> None:
    layer = MHSA2d(16, num_heads=2)
    assert layer.pos_embed.has_uninitialized_params()
    layer(torch.randn(1, 16, 5, 3))
    assert layer.pos_embed.rel_h.shape == (9, 8) and layer.pos_embed.rel_w.shape == (5, 8)
    lazy = MHSA2d(16, num_heads=2)
    lazy.load_state_dict(layer.state_dict())
    assert lazy.pos_embed.feat_size == (5, 3)
    x = torch.randn(1, 16, 5, 3)
    torch.testing.assert_close(lazy(x), layer(x))


def test_state_dict_holds_only_weights() -> None:
    layer = MHSA2d(16, num_heads=2, feat_size=4)
    layer(torch.randn(1, 16, 4, 4))
    assert set(layer.state_dict()) == {"qkv.weight", "pos_embed.rel_h", "pos_embed.rel_w"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_paths_agree(dtype: torch.dtype) -> None:
    layer = make_layer(32, 4, "relative", (6, 6)).float()
    x = torch.randn(1, 32, 6, 6)
    reference = layer(x)
    low = layer.to(dtype)
    for impl in ("explicit", "sdpa", "chunked"):
        low.attn_impl = impl
        out = low(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the 64 .*use one of"):
        MHSA2d(64, num_heads=3)
    with pytest.raises(ValueError, match="unknown pos_embed 'learned'; use one of relative, absolute, none"):
        MHSA2d(64, pos_embed="learned")
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        MHSA2d(64, stride=3)
    with pytest.raises(ValueError, match="unknown attn_impl 'fused'; use one of auto, explicit, sdpa, chunked, flex"):
        MHSA2d(64, attn_impl="fused")
