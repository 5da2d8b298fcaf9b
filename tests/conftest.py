"""Shared test helpers: a tiny BoTNet and a BatchNorm randomiser (import them with ``from conftest import ...``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import botnet
from botnet.cli import main

# botnet26 at 1/8 width: fast enough for every test that needs a real network, MHSA in c5 (2 heads of 32).
TINY: dict[str, Any] = dict(channels=(8, 16, 32, 64), stem_width=8, num_heads=2)


def tiny_model(name: str = "botnet26", **overrides: Any) -> botnet.ResNet:
    """``botnet.create_model(name)`` at the :data:`TINY` widths; ``overrides`` win (e.g. ``img_size=64``)."""
    return botnet.create_model(name, **{**TINY, **overrides})


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine + running statistics: zero-initialised last BNs would silence every residual branch, and
    default statistics would make eval mode a no-op, so parity could hold for a wrong block."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            with torch.no_grad():
                module.weight.copy_(1 + 0.1 * torch.randn(channels, generator=gen))
                module.bias.copy_(0.1 * torch.randn(channels, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(channels, generator=gen))
                module.running_var.copy_(1 + torch.rand(channels, generator=gen))
    return model


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a 2-core
    machine shared with other jobs, two OpenMP threads spin against each other and small models ran 10-20x slower
    (measured: 10 s vs 0.3 s per detection training step, 17 s vs 0.7 s for a fastai fit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- a tiny ImageFolder and the flags that train a tiny model on it fast ------------------------------------

CLASSES = ("dark", "light", "striped")
TINY_MODEL = ["--model", "botnet26", "--model-kwargs", "channels=8,16,32,64", "stem_width=8", "num_heads=2"]


def pattern_image(kind: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A ``(size, size)`` uint8 image of one class: dark, light, or horizontal stripes, plus noise."""
    base = {"dark": np.full((size, size), 40.0), "light": np.full((size, size), 215.0)}.get(kind)
    if base is None:
        base = np.where((np.arange(size) // 4) % 2 == 0, 230.0, 25.0)[:, None].repeat(size, 1)
    return np.clip(base + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)


def write_image(kind: str, path: Path, rng: np.random.Generator, style: int) -> None:
    """Save one image of class ``kind``, cycling through the file kinds a real folder holds."""
    grey = pattern_image(kind, rng)
    if style == 0:
        Image.fromarray(grey).convert("RGB").save(path.with_suffix(".jpg"))
    elif style == 1:
        Image.fromarray(grey, "L").save(path.with_suffix(".png"))  # grayscale
    elif style == 2:
        Image.fromarray(grey).convert("RGBA").save(path.with_suffix(".png"))  # alpha
    elif style == 3:
        Image.fromarray(grey).convert("CMYK").save(path.with_suffix(".jpg"))  # CMYK JPEG
    elif style == 4:
        Image.fromarray(grey.astype(np.uint16) * 257).save(path.with_suffix(".png"))  # 16-bit
    else:
        Image.fromarray(grey[:8, :8]).convert("RGB").save(path.with_suffix(".bmp"))  # smaller than the crop


@pytest.fixture(scope="session")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/{train,val}/{dark,light,striped}``: 12 + 4 images per class in mixed formats, one corrupt file."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4)):
        for kind in CLASSES:
            (root / split / kind).mkdir(parents=True)
            for i in range(count):
                write_image(kind, root / split / kind / f"{i:02d}", rng, style=i % 6)
    (root / "train" / "dark" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--out", str(out), *TINY_MODEL, "--img-size", "32", "--batch-size", "4",
        "--workers", "0", "--epochs", "2", "--warmup-epochs", "0", "--lr", "3e-3", "--smoothing", "0",
        "--augment", "rrc", "--scale", "0.5", "1", "--log-every", "1", "--no-progress", "--accelerator", "cpu",
        "--deterministic", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs, trained straight through."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    with pytest.warns(UserWarning, match="skipped unreadable image .*corrupt.jpg"):
        assert main(["train", *train_argv(folder, out)]) == 0
    return out
