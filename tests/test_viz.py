"""Attention maps (botnet.viz): maps of models whose attention is known, pixel -> token geometry, PNGs, errors."""

import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

import botnet  # noqa: E402
from botnet.cli import main as botnet_main  # noqa: E402
from botnet.layers import MHSA2d  # noqa: E402
from botnet.viz import (  # noqa: E402
    block_attention,
    get_block,
    offset_figure,
    pixel_to_token,
    query_figure,
    save_figure,
    token_center,
    upsample,
)
from botnet.viz.figures import PANEL_INCHES, TITLE_INCHES  # noqa: E402
from conftest import tiny_model  # noqa: E402

ODD_IMAGE = (97, 131)
ODD_GRID = (7, 9)  # botnet26 layer4.0 at 97x131: 97 -> 49 -> 25 -> 13 -> 7 and 131 -> 66 -> 33 -> 17 -> 9


def tiny_botnet(in_chans: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return tiny_model(num_classes=3, in_chans=in_chans, img_size=64).eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_botnet()


def offset_model(grid: tuple[int, int], offset: tuple[int, int]) -> nn.Module:
    """One MHSA layer whose every query attends to ``key = query + offset``, through the relative tables only.

    On an all-ones input q = (scale, 0) in every head and k = 0, so the logit of offset (dy, dx) is
    ``scale * (rel_h[dy + H - 1, 0] + rel_w[dx + W - 1, 0])``: +20 * scale at the offset, <= 0 elsewhere.
    """
    height, width = grid
    heads, dim_head = 2, 2
    layer = MHSA2d(4, num_heads=heads, dim_head=dim_head, feat_size=grid)
    with torch.no_grad():
        layer.qkv.weight.zero_()
        for head in range(heads):  # qkv channel = (part * heads + head) * dim_head + c; part 0 = q
            layer.qkv.weight[head * dim_head, 0] = 1.0
        layer.pos_embed.rel_h.fill_(-10.0)
        layer.pos_embed.rel_w.fill_(-10.0)
        layer.pos_embed.rel_h[offset[0] + height - 1] = 10.0
        layer.pos_embed.rel_w[offset[1] + width - 1] = 10.0
    return nn.Sequential(layer)


def test_zero_queries_and_keys_give_uniform_attention(model: nn.Module) -> None:
    model = copy.deepcopy(model)
    layer = model.layer4[0].conv2
    with torch.no_grad():
        layer.qkv.weight[: 2 * layer.dim_out].zero_()  # q and k parts; v untouched
    att = block_attention(model, torch.randn(1, 3, *ODD_IMAGE), "layer4.0.conv2")
    tokens = ODD_GRID[0] * ODD_GRID[1]
    assert att.grid_size == ODD_GRID
    assert att.probs.shape == (2, tokens, tokens)
    torch.testing.assert_close(att.probs, torch.full_like(att.probs, 1 / tokens))
    assert att.content.abs().max() == 0 and att.position.abs().max() == 0  # q = 0 zeroes q.r as well
    maps = att.query_maps("all")
    assert maps.probs.shape == (tokens, 2, *ODD_GRID)
    torch.testing.assert_close(maps.mean_probs, torch.full((tokens, *ODD_GRID), 1 / tokens))
    torch.testing.assert_close(att.offsets(), torch.full((2, 13, 17), 1 / tokens))


def test_maps_come_from_the_named_block(model: nn.Module) -> None:
    x = torch.randn(1, 3, *ODD_IMAGE)
    first = block_attention(model, x, "layer4.0.conv2")
    last = block_attention(model, x)  # default: the last MHSA block
    assert last.block == "layer4.1.conv2"
    # The first block of the stride-2 stage attends before its 2x2 pool; the next one after it.
    assert (first.grid_size, last.grid_size) == (ODD_GRID, (4, 5))
    for att in (first, last):
        torch.testing.assert_close(att.probs, (att.content + att.position).softmax(-1))
        torch.testing.assert_close(att.probs.sum(-1), torch.ones(att.probs.shape[:2]))
    assert isinstance(first.output, torch.Tensor) and first.output.shape == (1, 3)


@pytest.mark.parametrize(
    ("grid", "offset"), [((5, 5), (1, -2)), ((5, 8), (2, -3)), ((8, 5), (-3, 2)), ((3, 7), (0, 4))]
)
def test_relative_embedding_offset_shows_in_the_maps(grid: tuple[int, int], offset: tuple[int, int]) -> None:
    height, width = grid
    dy, dx = offset
    image_size = (11 * height + 3, 7 * width + 5)  # cells of non-integer size
    att = block_attention(offset_model(grid, offset), torch.ones(1, 4, height, width), "0", image_size)
    assert att.grid_size == grid

    maps = att.query_maps("all")
    checked = 0
    for pixel, (row, col), probs in zip(maps.pixels, maps.tokens, maps.probs):
        if not (0 <= row + dy < height and 0 <= col + dx < width):
            continue
        for head_map in probs:  # (H, W)
            assert divmod(int(head_map.argmax()), width) == (row + dy, col + dx)
            assert head_map.max() > 0.99
        # The overlay stretched over the image peaks in the target token's cell.
        overlay = upsample(probs[0], image_size, mode="nearest")
        peak = divmod(int(overlay.argmax()), image_size[1])
        assert pixel_to_token(peak, image_size, grid) == (row + dy, col + dx)
        assert pixel_to_token(pixel, image_size, grid) == (row, col)
        checked += 1
    assert checked == (height - abs(dy)) * (width - abs(dx))
    # A single query selects its own row of the (query, key) matrix.
    center = att.query_maps("center")
    assert center.pixels == [(image_size[0] // 2, image_size[1] // 2)]
    row, col = center.tokens[0]
    torch.testing.assert_close(center.probs[0], maps.probs[row * width + col])

    offsets = att.offsets()
    assert offsets.shape == (2, 2 * height - 1, 2 * width - 1)
    for head_offsets in offsets:
        assert divmod(int(head_offsets.argmax()), 2 * width - 1) == (dy + height - 1, dx + width - 1)
        assert head_offsets.max() > 0.99


def test_pixel_to_token_at_odd_sizes() -> None:
    # 97 rows over 7 tokens: 13.86 pixels each; 131 columns over 9 tokens: 14.56 each.
    assert pixel_to_token((0, 0), ODD_IMAGE, ODD_GRID) == (0, 0)
    assert pixel_to_token((13, 14), ODD_IMAGE, ODD_GRID) == (0, 0)
    assert pixel_to_token((14, 15), ODD_IMAGE, ODD_GRID) == (1, 1)
    assert pixel_to_token((96, 130), ODD_IMAGE, ODD_GRID) == (6, 8)
    assert pixel_to_token((48, 65), ODD_IMAGE, ODD_GRID) == (3, 4)
    rows = [pixel_to_token((y, 0), ODD_IMAGE, ODD_GRID)[0] for y in range(ODD_IMAGE[0])]
    cols = [pixel_to_token((0, x), ODD_IMAGE, ODD_GRID)[1] for x in range(ODD_IMAGE[1])]
    for index, count in ((rows, ODD_GRID[0]), (cols, ODD_GRID[1])):
        assert index == sorted(index) and set(index) == set(range(count))
        sizes = np.bincount(index)
        assert sizes.max() - sizes.min() <= 1  # equal cells, up to rounding
    for row in range(ODD_GRID[0]):
        for col in range(ODD_GRID[1]):
            assert pixel_to_token(token_center((row, col), ODD_IMAGE, ODD_GRID), ODD_IMAGE, ODD_GRID) == (row, col)
    # The overlay geometry agrees: each pixel of an upsampled one-hot map belongs to the mapped token.
    tokens = ODD_GRID[0] * ODD_GRID[1]
    owner = upsample(torch.eye(tokens).view(tokens, *ODD_GRID), ODD_IMAGE, mode="nearest").argmax(0)
    expected = torch.tensor(rows)[:, None] * ODD_GRID[1] + torch.tensor(cols)[None, :]
    assert torch.equal(owner, expected)


def test_figures_are_pngs_of_the_documented_size(model: nn.Module, tmp_path: Path) -> None:
    att = block_attention(model, torch.randn(1, 3, *ODD_IMAGE), "layer4.0.conv2")
    image = np.random.default_rng(0).random((50, 70))  # display size differs from the 97x131 frame
    dpi = 50
    paths = [
        save_figure(query_figure(image, att, (40, 100)), tmp_path / "query.png", dpi),
        save_figure(offset_figure(att), tmp_path / "sub" / "offsets.png", dpi),
    ]
    heads = att.num_heads
    for path, rows in zip(paths, (3, 1)):
        assert path.is_file()
        with Image.open(path) as png:
            assert png.format == "PNG"
            assert png.size == (
                round((heads + 1) * PANEL_INCHES * dpi),
                round((rows * PANEL_INCHES + TITLE_INCHES) * dpi),
            )
            assert np.asarray(png.convert("L")).std() > 10  # something is drawn


# A colour image into a 1-channel model and a gray one into an RGB model, neither at the model's 64x64 size.
@pytest.mark.parametrize(
    ("in_chans", "mode", "query", "name"), [(1, "RGB", "10,20", "query_10_20"), (3, "L", "all", "all")]
)
def test_cli_writes_figures(tmp_path: Path, capsys, in_chans: int, mode: str, query: str, name: str) -> None:
    checkpoint = botnet.save_pretrained(tiny_botnet(in_chans), tmp_path / "ckpt")
    image = tmp_path / "digit.png"
    pixels = np.random.default_rng(0).integers(0, 255, (37, 45, 3) if mode == "RGB" else (37, 45), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(image)
    out = tmp_path / "figs"
    args = ["--checkpoint", str(checkpoint), "--image", str(image), "--query", query, "--out", str(out), "--dpi", "40"]
    assert botnet_main(["attention", *args]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f"digit_layer4.1.conv2_{name}.png"), str(out / "digit_layer4.1.conv2_offsets.png")]
    for path in printed:
        with Image.open(path) as png:
            assert png.format == "PNG" and min(png.size) > 50


def test_bad_block_and_query_raise_clear_errors(model: nn.Module) -> None:
    valid = r"MHSA blocks are: layer4\.0\.conv2, layer4\.1\.conv2"
    with pytest.raises(ValueError, match=r"unknown attention block 'layer4\.2\.conv2'; this model's " + valid):
        get_block(model, "layer4.2.conv2")
    plain = botnet.create_model("resnet26", num_classes=3, channels=(8, 16, 32, 64), stem_width=8)
    with pytest.raises(ValueError, match="no MHSA layer"):
        block_attention(plain.eval(), torch.randn(1, 3, 64, 64))
    att = block_attention(model, torch.randn(1, 3, *ODD_IMAGE), "layer4.0.conv2")
    for pixel in ((97, 0), (0, 131), (-1, 5)):
        with pytest.raises(ValueError, match=r"outside the 97x131 image.*0 <= y < 97 and 0 <= x < 131"):
            att.query_maps(pixel)


def test_cli_reports_bad_block_query_and_checkpoint(tmp_path: Path, capsys) -> None:
    checkpoint = botnet.save_pretrained(tiny_botnet(), tmp_path / "ckpt")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(image)
    base = ["attention", "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(tmp_path / "o")]
    cases = [
        (["--block", "layer3.0.conv2"], "'layer3.0.conv2'; this model's MHSA blocks are: layer4.0.conv2, layer4.1"),
        (["--query", "40,0"], "outside the 40x30 image"),
        (["--query", "3"], "bad --query '3'"),
        (["--native-size"], "a.png is 40x30, below the model's minimum side of 32; drop --native-size"),
    ]
    for extra, message in cases:
        assert botnet_main(base + extra) == 2
        assert message in capsys.readouterr().err
    base[2] = str(tmp_path / "missing")
    assert botnet_main(base) == 1  # a missing checkpoint is a failure, not a usage error
    assert "config.json not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
