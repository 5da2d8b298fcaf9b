"""The README's attention explorer screenshot: an explorer page for a photo, opened in headless chromium.

    python scripts/explorer_screenshot.py --html runs/explorer.html --png docs/attention/explorer.png

Default model: botnet50 (1000 classes) with random weights at 224 px on skimage's ``chelsea`` photo; prints the
page weight. ``--checkpoint DIR`` and ``--image FILE`` take a trained model and another picture. Needs Debian's
``chromium`` and ``chromium-driver`` (``make browser``) and the ``test`` extra (selenium).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from skimage import data

import botnet
from botnet.viz import explorer_html

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="directory with config.json + model.safetensors (default: random)")
    parser.add_argument("--image", help="image file (default: skimage.data.chelsea())")
    parser.add_argument("--html", type=Path, required=True, help="where to write the page")
    parser.add_argument("--png", type=Path, required=True, help="where to write the screenshot")
    parser.add_argument("--query", default="0.35,0.3", help="query as fractions y,x of the image (clicked, pinned)")
    parser.add_argument("--size", default="1180,1420", help="window width,height in CSS pixels")
    args = parser.parse_args()

    if args.checkpoint:
        model = botnet.from_pretrained(args.checkpoint).eval()
        class_names = botnet.load_config(args.checkpoint).get("extra", {}).get("class_names")
    else:
        torch.manual_seed(0)
        model, class_names = botnet.create_model("botnet50").eval(), None
    image = Image.open(args.image) if args.image else Image.fromarray(data.chelsea())
    page = explorer_html(model, image, class_names=class_names)
    page.save(args.html)
    print(f"{args.html}: {len(page.encode()) / 1e6:.2f} MB")

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    width, height = map(int, args.size.split(","))
    with tempfile.TemporaryDirectory() as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            driver.get(args.html.resolve().as_uri())
            view = driver.find_element(By.ID, "view")
            fy, fx = map(float, args.query.split(","))
            dx, dy = (fx - 0.5) * view.size["width"], (fy - 0.5) * view.size["height"]
            ActionChains(driver).move_to_element_with_offset(view, round(dx), round(dy)).click().perform()
            screenshot = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
        finally:
            driver.quit()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    screenshot.convert("RGB").quantize(256).save(args.png, optimize=True)  # a palette keeps the docs image small
    print(args.png)


if __name__ == "__main__":
    main()
