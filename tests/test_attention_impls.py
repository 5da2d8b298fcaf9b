"""Every MHSA2d attention implementation against the explicit one: outputs, all gradients, dispatch, the switch."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import botnet
import botnet.layers.chunked_attention as chunked_attention_module
import botnet.layers.flex_attention as flex_module
from botnet.layers import ATTN_IMPLS, MHSA2d, set_attn_impl
from botnet.layers.attention import CPU_EXPLICIT_MAX_TOKENS, eager_auto_impl
from botnet.layers.chunked_attention import chunked_attention, default_chunk

SIZES = [(4, 4), (5, 7), (1, 6)]  # square, non-square, 1 x W
POS = ["relative", "absolute", "none"]
CPU_TRAINABLE = ["sdpa", "chunked"]  # flex has no CPU backward in torch 2.14.1 (tested forward-only below)


def make_layer(pos: str, size: tuple[int, int], stride: int = 1, dtype: torch.dtype = torch.float64) -> MHSA2d:
    layer = MHSA2d(16, num_heads=2, dim_head=6, pos_embed=pos, feat_size=size, stride=stride)
    nn.init.normal_(layer.qkv.weight, std=16**-0.5)  # far from uniform attention
    return layer.to(dtype)


def outputs_and_grads(layer: MHSA2d, x: torch.Tensor, impl: str) -> list[torch.Tensor]:
    """Output, then the gradients of the input and of every parameter (qkv weight, the position tables)."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with set_attn_impl(layer, impl):
        out = layer(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in layer.parameters())]


def factor_logits_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logits_h: torch.Tensor, logits_w: torch.Tensor
) -> torch.Tensor:
    """The plain reference: ``softmax(q k^T + logits_h[.., y'] + logits_w[.., x']) v`` with its ``N x N`` matrix."""
    *lead, tokens, _ = q.shape
    position = (logits_h[..., :, None] + logits_w[..., None, :]).reshape(*lead, tokens, tokens)
    return (q @ k.transpose(-1, -2) + position).softmax(-1) @ v


@pytest.mark.parametrize(("size", "pos", "stride"), list(itertools.product(SIZES, POS, [1, 2])))
@pytest.mark.parametrize("impl", CPU_TRAINABLE)
def test_impl_equals_explicit_float64(size: tuple[int, int], pos: str, stride: int, impl: str) -> None:
    layer = make_layer(pos, size, stride)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    expected = outputs_and_grads(layer, x, "explicit")
    assert len(expected) == 2 + len(list(layer.parameters()))
    for got, want in zip(outputs_and_grads(layer, x, impl), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("impl", CPU_TRAINABLE)
def test_impl_equals_explicit_fp32(pos: str, impl: str) -> None:
    layer = make_layer(pos, (5, 7), dtype=torch.float32)
    x = torch.randn(2, 16, 5, 7)
    for got, want in zip(outputs_and_grads(layer, x, impl), outputs_and_grads(layer, x, "explicit"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 13, 34, 35, 64])  # N = 35: chunks that do not divide it, one, all
@pytest.mark.parametrize("fit", [None, 1, 2, 4])  # G = 6 groups: one block, blocks of 1, of 2, of 3 (4 fit)
def test_chunk_boundaries(chunk: int, fit: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Query chunks, key chunks (whole key rows, parts of one; W = 7) and blocks of groups, against explicit."""
    if fit is not None:  # a work buffer holds `fit` groups' chunks
        monkeypatch.setattr(chunked_attention_module, "CHUNK_ELEMENTS", fit * min(chunk, 35) * 35)
    blocks = chunked_attention_module._group_blocks(6, min(chunk, 35), 35)
    assert [b.stop - b.start for b in blocks] == {None: [6], 1: [1] * 6, 2: [2] * 3, 4: [3] * 2}[fit]
    batch, heads, height, width, dim = 2, 3, 5, 7, 4
    tokens = height * width
    shapes = [(dim,), (dim,), (dim,), (height,), (width,)]
    q, k, v, logits_h, logits_w = (
        torch.randn(batch, heads, tokens, *s, dtype=torch.float64, requires_grad=True) for s in shapes
    )
    expected = factor_logits_attention(q, k, v, logits_h, logits_w)
    out = chunked_attention(q, k, v, logits_h, logits_w, chunk=chunk)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(out)
    inputs = (q, k, v, logits_h, logits_w)
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(("height", "width"), [(5, 7), (1, 35), (35, 1), (6, 6)])
@pytest.mark.parametrize("chunk", [1, 3, 7, 8, 20, 35])
def test_key_blocks_cover_the_keys_once_in_order(height: int, width: int, chunk: int) -> None:
    """Each key chunk is a (rows, cols) block of whole key rows or of one row's part, and no larger than `chunk`."""
    keys = []
    for y, x, rows, cols in chunked_attention_module._key_blocks(height, width, chunk):
        assert (x == 0 and cols == width) or rows == 1
        assert 0 < rows * cols <= chunk
        keys += [(y + r) * width + x + c for r in range(rows) for c in range(cols)]
    assert keys == list(range(height * width))


@pytest.mark.parametrize("tokens", [1, 2, 35, 256, 1024, 4096, 9216, 65536])
def test_default_chunk_keeps_four_chunks_and_the_budget(tokens: int) -> None:
    chunk = default_chunk(tokens)
    assert 1 <= chunk <= -(-tokens // 4)  # the two backward buffers below half an N x N matrix
    assert chunk <= chunked_attention_module.CHUNK_ROWS
    assert chunk * tokens <= chunked_attention_module.CHUNK_ELEMENTS


@pytest.mark.parametrize("impl", ["sdpa", "chunked", "explicit"])
def test_saved_tensors_have_no_n_by_n_except_explicit(impl: str) -> None:
    size, tokens = (8, 8), 64
    layer = MHSA2d(32, num_heads=4, feat_size=size)
    x = torch.randn(2, 32, *size, requires_grad=True)
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with set_attn_impl(layer, impl), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    has_nxn = any(len(s) >= 2 and s[-2:] == (tokens, tokens) for s in saved)
    assert has_nxn == (impl == "explicit"), f"{impl}: saved shapes {saved}"


@pytest.mark.parametrize("pos", POS)
def test_flex_cpu_forward_equals_explicit(pos: str) -> None:
    """FlexAttention runs forward only on the CPU (torch 2.14.1); its backward is tested where CUDA is lent."""
    layer = make_layer(pos, (5, 7))
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        with set_attn_impl(layer, "flex"):
            torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=1e-10)


def test_flex_cpu_backward_raises_and_names_the_alternative() -> None:
    layer = make_layer("relative", (4, 4))
    with set_attn_impl(layer, "flex"), pytest.raises(NotImplementedError, match="attn_impl='chunked'"):
        layer(torch.randn(1, 16, 4, 4, dtype=torch.float64, requires_grad=True))


def test_flex_compiled_wrapper_is_exact_and_compiles_once() -> None:
    """The wrapper CUDA runs, compiled, on the CPU forward: one graph for every map size, ``W`` read from a shape.

    A score_mod that captured ``W`` as a Python int gave silently wrong output after a recompile (torch 2.14.1).
    """
    torch._dynamo.reset()
    flex_module._compiled.cache_clear()
    compiled = flex_module._compiled(flex_module._flex_rel)
    for index, (height, width) in enumerate([(5, 7), (6, 6), (3, 8), (4, 4)]):  # W changes, so does N
        tokens = height * width
        q, k, v, logits_h, logits_w = (torch.randn(2, 3, tokens, s) for s in (4, 4, 4, height, width))
        expected = factor_logits_attention(q, k, v, logits_h, logits_w)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=index > 0):
            torch.testing.assert_close(compiled(q, k, v, logits_h, logits_w), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA (none visible)")
def test_flex_cuda_equals_explicit_with_grads() -> None:
    layer = make_layer("relative", (5, 7), dtype=torch.float32).cuda()
    x = torch.randn(2, 16, 5, 7, device="cuda")
    for got, want in zip(outputs_and_grads(layer, x, "flex"), outputs_and_grads(layer, x, "explicit"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["explicit", "sdpa", "chunked", "flex"])
def test_bf16_runs_on_every_path(impl: str) -> None:
    layer = make_layer("relative", (6, 6), dtype=torch.float32)
    x = torch.randn(1, 16, 6, 6)
    reference = layer(x).detach()
    low = layer.to(torch.bfloat16)
    xb = x.to(torch.bfloat16).requires_grad_(impl != "flex")
    with set_attn_impl(low, impl), torch.set_grad_enabled(impl != "flex"):
        out = low(xb)
        if impl != "flex":
            out.float().sum().backward()
            assert xb.grad is not None and torch.isfinite(xb.grad).all()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(("size", "scale"), [(6, 1.0), (12, 3.0)])
def test_chunked_bf16_autocast_grads_are_as_close_as_explicits(size: int, scale: float) -> None:
    """Under bf16 autocast (mixed-precision training) the chunked path is no less accurate than the explicit one.

    The larger logits (``scale``) make the rounding of the logits matter: the backward must recompute the forward's
    probabilities from logits rounded as the forward rounded them, not more exact ones.
    """
    layer = make_layer("relative", (size, size), dtype=torch.float32)
    with torch.no_grad():
        for param in layer.parameters():
            param.mul_(scale)
    x = torch.randn(2, 16, size, size)
    reference = outputs_and_grads(layer, x, "explicit")
    errors = {}
    for impl in ("explicit", "chunked"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = outputs_and_grads(layer, x, impl)
        errors[impl] = [((g.float() - r).norm() / r.norm()).item() for g, r in zip(got, reference, strict=True)]
    assert all(error < 0.05 * scale for error in errors["chunked"]), errors
    assert all(c <= 1.25 * e + 1e-3 for c, e in zip(errors["chunked"], errors["explicit"], strict=True)), errors


def test_chunked_bf16_allocates_no_float32_copy_of_a_work_chunk() -> None:
    """In-place ops on a bf16 work buffer with a float32 operand would allocate a float32 copy of the chunk."""
    groups, tokens, chunk = 2, 256, 64
    shapes = [(8,), (8,), (8,), (16,), (16,)]
    inputs = [torch.randn(1, groups, tokens, *s, dtype=torch.bfloat16, requires_grad=True) for s in shapes]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        chunked_attention(*inputs, chunk=chunk).float().sum().backward()
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.nbytes() > 0]
    work_buffer = groups * chunk * tokens * torch.bfloat16.itemsize
    assert sizes and max(sizes) <= work_buffer, f"largest allocation {max(sizes)} B > one work buffer {work_buffer} B"


def test_auto_picks_what_the_thresholds_say() -> None:
    layer = make_layer("relative", (4, 4))
    side = int(CPU_EXPLICIT_MAX_TOKENS**0.5)
    assert layer.resolve_impl(torch.empty(1, 16, side, side)) == "explicit"
    assert layer.resolve_impl(torch.empty(1, 16, side, side + 1)) == "chunked"
    layer.attn_impl = "sdpa"
    assert layer.resolve_impl(torch.empty(1, 16, 64, 64)) == "sdpa"  # a set impl is taken as it is
    with botnet.capture_attention(layer):
        assert layer.resolve_impl(torch.empty(1, 16, 64, 64)) == "explicit"  # capture needs the probabilities


@pytest.mark.parametrize(
    ("device", "side", "sdpa_width", "half", "expected"),
    [
        ("cuda", 16, 128 + 32, True, "explicit"),  # small N x N: explicit, in any dtype
        ("cuda", 32, 128 + 64, True, "sdpa"),  # the fold fits the flash kernels
        ("cuda", 64, 128 + 128, True, "sdpa"),  # at the flash limit
        ("cuda", 96, 128 + 192, True, "flex"),  # wider than flash: FlexAttention
        ("cuda", 96, 128, True, "sdpa"),  # no relative logits: no extra width
        ("cuda", 64, 128 + 128, False, "flex"),  # fp32 has no flash kernel
        ("cpu", 16, 128 + 32, True, "explicit"),
        ("cpu", 17, 128 + 34, False, "chunked"),
        ("cpu", 96, 128, True, "chunked"),
    ],
)
def test_eager_auto_impl_per_device(device: str, side: int, sdpa_width: int, half: bool, expected: str) -> None:
    """The CUDA choices are checked here too: CI has no GPU."""
    assert eager_auto_impl(device, side * side, sdpa_width, half) == expected


def test_set_attn_impl_validates_scopes_and_restores() -> None:
    model = botnet.create_model("botnet26", num_classes=10, channels=(8, 16, 32, 64), stem_width=16, img_size=64)
    layers = list(botnet.layers.attention_layers(model).values())
    assert layers and all(layer.attn_impl == "auto" for layer in layers)
    layers[0].attn_impl = "sdpa"  # per-layer values are restored as they were
    with pytest.raises(ValueError, match="unknown attn_impl 'fast'; use one of " + ", ".join(ATTN_IMPLS)):
        set_attn_impl(model, "fast")
    with set_attn_impl(model, "explicit"):
        assert all(layer.attn_impl == "explicit" for layer in layers)
    assert [layer.attn_impl for layer in layers] == ["sdpa"] + ["auto"] * (len(layers) - 1)
    with pytest.raises(RuntimeError, match="inside"), set_attn_impl(model, "chunked"):
        raise RuntimeError("inside")
    assert layers[0].attn_impl == "sdpa"
    set_attn_impl(model, "chunked")  # without a block: permanent
    assert all(layer.attn_impl == "chunked" for layer in layers)
    single = MHSA2d(16, num_heads=2)
    set_attn_impl(single, "flex")
    assert single.attn_impl == "flex"
    with pytest.raises(ValueError, match="unknown attn_impl"):
        single.attn_impl = "fused"


def test_create_model_passes_attn_impl() -> None:
    model = botnet.create_model("botnet26", num_classes=10, channels=(8, 16, 32, 64), attn_impl="chunked")
    assert {layer.attn_impl for layer in botnet.layers.attention_layers(model).values()} == {"chunked"}


def test_tables_are_used_as_they_are_at_the_reference_size() -> None:
    layer = make_layer("relative", (4, 5))
    rel_h, rel_w = layer.pos_embed.tables(4, 5)
    assert rel_h is layer.pos_embed.rel_h and rel_w is layer.pos_embed.rel_w  # no resampling op
