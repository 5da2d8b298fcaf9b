"""Attention explorer (botnet.viz.explorer): a self-contained page whose data decode back to the model's attention,
and, in headless Chromium, maps that follow the query and peak where the model's attention peaks."""

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select
from torch import nn

import botnet
from botnet.cli import main as botnet_main
from botnet.data import preprocess
from botnet.layers import attention_layers
from botnet.viz import BlockAttention, ExplorerPage, block_attention, explorer_html
from botnet.viz.explorer import decode_blocks, page_data
from conftest import tiny_model

IMAGE = (90, 120)  # (height, width) of the test image; the model sees it resized to 64 x 64
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def sharp_botnet() -> nn.Module:
    """A tiny BoTNet (MHSA in c4 and c5: 8x8, 4x4, 4x4, 2x2 tokens at 64 px) whose attention is far from uniform.

    At initialisation the logits are ~1e-3, so every map is nearly flat; scaling q and k by 60 brings content
    and position logits to order 1 (content by 3600, position by 60), so both shape the maps.
    """
    torch.manual_seed(0)
    model = tiny_model(num_classes=7, img_size=64, attention="c4,c5")
    with torch.no_grad():
        for layer in attention_layers(model).values():
            layer.qkv.weight[: 2 * layer.dim_out] *= 60
    return model.eval()


def smooth_image(seed: int = 0) -> Image.Image:
    """A smooth colour image of ``IMAGE`` size (gradients plus a bright disc), so features vary over it."""
    y, x = np.mgrid[: IMAGE[0], : IMAGE[1]]
    disc = ((y - 30) ** 2 + (x - 80) ** 2 < 300).astype(float)
    rgb = np.stack([y / IMAGE[0], x / IMAGE[1], disc], -1) + np.random.default_rng(seed).uniform(0, 0.2, (*IMAGE, 3))
    return Image.fromarray(np.uint8(np.clip(rgb, 0, 1) * 255))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return sharp_botnet()


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return smooth_image()


@pytest.fixture(scope="module")
def page(model: nn.Module, image: Image.Image) -> ExplorerPage:
    return explorer_html(model, image, class_names=[f"class {i}" for i in range(7)])


def attentions(model: nn.Module, image: Image.Image) -> dict[str, BlockAttention]:
    """Every block's attention, computed in Python on the input the page's default preprocessing makes."""
    x = preprocess(image, model.pretrained_cfg, resize="stretch")
    return {name: block_attention(model, x, name, (image.height, image.width)) for name in attention_layers(model)}


def test_page_is_self_contained(page: ExplorerPage) -> None:
    assert page.startswith("<!doctype html>") and "default-src 'none'" in page  # the CSP forbids any request
    urls = re.findall(r"""\s(?:src|href)=["']([^"']*)""", page)  # HTML attributes; the image is set from the data
    assert urls == ["data:,"] and page_data(page)["image"]["src"].startswith("data:image/png;base64,")
    assert not re.search(r"https?://", page)
    for api in ("fetch(", "XMLHttpRequest", "import(", "WebSocket", '<link rel="stylesheet'):
        assert api not in page
    assert "<iframe srcdoc=" in page._repr_html_() and "MB of HTML" in repr(page)


def test_page_decodes_to_the_models_attention(model: nn.Module, image: Image.Image, page: ExplorerPage) -> None:
    expected = attentions(model, image)
    decoded = decode_blocks(page)
    assert list(decoded) == list(expected) == ["layer3.0.conv2", "layer3.1.conv2", "layer4.0.conv2", "layer4.1.conv2"]
    for name, att in expected.items():
        for key in ("probs", "content", "position"):
            want = getattr(att, key).numpy()  # (h, N, N)
            step = (want.max(-1, keepdims=True) - want.min(-1, keepdims=True)) / 255  # one code, per row
            assert decoded[name][key].shape == want.shape
            assert np.all(np.abs(decoded[name][key] - want) <= step / 2 + 1e-6), (name, key)
        offsets = att.offsets().numpy()
        np.testing.assert_allclose(decoded[name]["offsets"], offsets, atol=float(np.ptp(offsets)) / 510 + 1e-6)
    assert expected["layer3.0.conv2"].grid_size == (8, 8)
    assert expected["layer3.0.conv2"].probs.amax(-1).mean() > 6 / 64  # sharpened: the maps have peaks to find

    data = page_data(page)
    probs = expected["layer3.0.conv2"].output[0].softmax(0)
    top = probs.topk(5)
    assert [label for label, _ in data["predictions"]] == [f"class {i}" for i in top.indices.tolist()]
    np.testing.assert_allclose([p for _, p in data["predictions"]], top.values.numpy(), atol=1e-4)
    assert (data["image"]["height"], data["image"]["width"]) == IMAGE


def test_page_options_and_errors(model: nn.Module, image: Image.Image, tmp_path: Path) -> None:
    x = torch.randn(1, 3, 96, 64)  # any input: the page follows the model's grids for it
    page = explorer_html(model, image, ["layer4.0.conv2"], x=x, title="My <title>")
    (block,) = page_data(page)["blocks"]
    assert block["name"] == "layer4.0.conv2" and block["grid"] == [6, 4]
    assert "<title>My &lt;title&gt;</title>" in page
    with pytest.raises(ValueError, match="MHSA blocks are: layer3.0.conv2"):
        explorer_html(model, image, ["layer9.conv2"])
    with pytest.raises(ValueError, match="no MHSA layer"):
        explorer_html(botnet.create_model("resnet26", img_size=64).eval(), image)


def test_cli_writes_one_page_per_image(tmp_path: Path, capsys, image: Image.Image) -> None:
    checkpoint = botnet.save_pretrained(sharp_botnet(), tmp_path / "ckpt", extra={"class_names": list("abcdefg")})
    paths = [tmp_path / "cat.png", tmp_path / "dog.jpg"]
    for path in paths:
        image.save(path)
    base = ["attention", "--checkpoint", str(checkpoint), "--image"]
    assert botnet_main([*base, str(paths[0]), "--html", str(tmp_path / "one.html")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "one.html")]
    data = page_data((tmp_path / "one.html").read_text())
    assert len(data["blocks"]) == 4 and {label for label, _ in data["predictions"]} < set("abcdefg")

    args = [*base, *map(str, paths), "--html", str(tmp_path / "pages" / "x.html"), "--block", "layer3.0.conv2"]
    assert botnet_main(args) == 0
    pages = [tmp_path / "pages" / f"x_{stem}.html" for stem in ("cat", "dog")]
    assert capsys.readouterr().out.split() == list(map(str, pages))
    assert [block["name"] for block in page_data(pages[1].read_text())["blocks"]] == ["layer3.0.conv2"]
    with pytest.raises(SystemExit):
        botnet_main([*base, str(paths[0])])  # neither --out nor --html
    assert "give --out" in capsys.readouterr().err


# In a real browser ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Debian chromium through chromedriver; skipped only where neither is installed (never in CI)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        message = "needs Debian's chromium and chromium-driver (make test installs them where apt-get can)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must have them")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def drawn_map(driver: webdriver.Chrome, selector: str, lut: np.ndarray) -> np.ndarray:
    """The map a canvas shows, as colour-table indices ``(height, width)`` (one canvas pixel per token)."""
    width, height, rgba = driver.execute_script(
        "const c = document.querySelector(arguments[0]);"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
        selector,
    )
    rgb = np.asarray(rgba, dtype=np.int64).reshape(height * width, 4)[:, :3]
    return ((rgb[:, None, :] - lut[None].astype(np.int64)) ** 2).sum(-1).argmin(1).reshape(height, width)


def assert_peaks_agree(drawn: np.ndarray, expected: torch.Tensor) -> None:
    """The drawn map's brightest token is the model's peak (or within one colour step of it: a tie on screen)."""
    expected = expected.numpy()
    assert drawn.shape == expected.shape
    peak = np.unravel_index(drawn.argmax(), drawn.shape)
    assert expected[peak] >= expected.max() - np.ptp(expected) / 255, (
        peak,
        np.unravel_index(expected.argmax(), expected.shape),
    )


def click_pixel(driver: webdriver.Chrome, pixel: tuple[int, int]) -> None:
    """Click image pixel ``(y, x)`` on the large view (Selenium offsets are from the element's centre)."""
    view = driver.find_element(By.ID, "view")
    size = view.size
    dx = (pixel[1] + 0.5) / IMAGE[1] * size["width"] - size["width"] / 2
    dy = (pixel[0] + 0.5) / IMAGE[0] * size["height"] - size["height"] / 2
    ActionChains(driver).move_to_element_with_offset(view, round(dx), round(dy)).click().perform()


def test_browser_maps_follow_the_query(
    browser: webdriver.Chrome, model: nn.Module, image: Image.Image, page: ExplorerPage, tmp_path: Path
) -> None:
    expected = attentions(model, image)
    lut = np.frombuffer(base64.b64decode(page_data(page)["colormaps"]["attention"]), np.uint8).reshape(256, 3)
    html = page.save(tmp_path / "explorer.html")
    browser.get(html.as_uri())
    state = lambda: browser.execute_script("return window.botnetExplorer.state()")  # noqa: E731
    assert state()["block"] == "layer3.0.conv2" and state()["head"] == "mean"
    assert browser.find_element(By.CSS_SELECTOR, "#top5 li").text.startswith("class ")

    # Two queries on the 8 x 8 grid of layer3.0 (token centres of a 90 x 120 image): the maps move with them.
    att = expected["layer3.0.conv2"]
    views = []
    for pixel, token in [((16, 22), (1, 1)), ((73, 97), (6, 6))]:
        click_pixel(browser, pixel)
        assert state() == {
            "block": att.block,
            "head": "mean",
            "pixel": list(pixel),
            "token": list(token),
            "pinned": True,
        }
        maps = att.query_maps(pixel)
        views.append(drawn_map(browser, "#view canvas", lut))
        assert_peaks_agree(views[-1], maps.mean_probs[0])
        assert_peaks_agree(drawn_map(browser, 'tr[data-row="1"] [data-col="probs"] canvas', lut), maps.probs[0, 1])
    assert not np.array_equal(*views)

    # Another block (4 x 4 tokens) and head 1 from the selects; the pinned query keeps its pixel.
    Select(browser.find_element(By.ID, "block")).select_by_index(2)
    Select(browser.find_element(By.ID, "head")).select_by_value("1")
    att = expected["layer4.0.conv2"]
    assert state() == {"block": att.block, "head": 1, "pixel": [73, 97], "token": [3, 3], "pinned": True}
    assert_peaks_agree(drawn_map(browser, "#view canvas", lut), att.query_maps((73, 97)).probs[0, 1])
    assert browser.find_element(By.CSS_SELECTOR, "tr.selected button").text == "head 1"

    # Keyboard: focus the view, two steps left and one up -> token (2, 1), its centre pixel; Enter releases the pin.
    view = browser.find_element(By.ID, "view")
    view.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_UP)
    assert state()["token"] == [2, 1] and state()["pixel"] == [56, 45]
    assert_peaks_agree(drawn_map(browser, "#view canvas", lut), att.query_maps((56, 45)).probs[0, 1])
    view.send_keys(Keys.ENTER)
    assert state()["pinned"] is False

    # As Jupyter shows it (_repr_html_): the page in a sandboxed frame of another document.
    notebook = tmp_path / "notebook.html"
    notebook.write_text(f"<!doctype html><html><body>{page._repr_html_()}</body></html>", encoding="utf-8")
    browser.get(notebook.as_uri())
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    assert state()["block"] == "layer3.0.conv2"
    browser.switch_to.default_content()

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]  # console errors, CSP
    assert not errors, errors
