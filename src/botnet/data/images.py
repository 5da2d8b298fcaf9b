"""Images in, model inputs out: the one image loader and the one inference preprocessing.

:func:`load_image` decodes any file PIL reads into the PIL mode a model takes (``"L"`` for one input channel,
``"RGB"`` for three): EXIF orientation applied, 16-bit images rescaled rather than clipped, palette transparency
and CMYK converted, and images above a pixel limit refused before they are decoded. :func:`preprocess` turns a
PIL image into the normalised ``(1, C, H, W)`` batch a model's ``pretrained_cfg`` asks for.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode, v2

# Refuse images above this many pixels before decoding them (about 200 MB of RGB): a 144 Mpx photo would take
# +1 GB to decode. Pass ``max_pixels`` (the commands' --max-pixels) to change it; None = no limit.
MAX_PIXELS = 50_000_000
RESIZE_MODES = ("crop", "stretch", "none")


class ImageTooLarge(ValueError):
    """An image file above the pixel limit (refused before decoding)."""


# What loading an unreadable, truncated, oversized or bogus image file raises.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableLog:
    """The unreadable images one loader process met: each reported once (a warning with the running count)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def report(self, name: str, err: BaseException) -> None:
        if name not in self.names:
            self.names.add(name)
            warnings.warn(
                f"skipped unreadable image {name} ({type(err).__name__}: {err}); "
                f"{len(self.names)} skipped so far in this loader process",
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.names)


def channel_mode(in_chans: int) -> str:
    """The PIL mode that feeds a model with ``in_chans`` input channels."""
    if in_chans not in (1, 3):
        raise ValueError(f"image files feed models with in_chans=1 (grayscale) or 3 (RGB), not {in_chans}")
    return "L" if in_chans == 1 else "RGB"


def load_image(
    path: str | os.PathLike | IO[bytes], mode: str = "RGB", max_pixels: int | None = MAX_PIXELS
) -> Image.Image:
    """Decode ``path`` (a file name, or a binary file object such as a shard member's bytes in ``io.BytesIO``)
    fully and convert it to ``mode``; raises one of ``IMAGE_ERRORS`` for a bad file.

    The EXIF orientation is applied (a portrait photo stays upright). 16-bit grayscale images (``I;16``, or
    ``I`` holding values above 255) are rescaled to 8 bits, where ``convert`` alone would clip them; palette
    images with transparency go through RGBA; CMYK, grayscale and alpha images are converted by PIL. An image of
    more than ``max_pixels`` raises :class:`ImageTooLarge` before its pixels are decoded.
    """
    with Image.open(path) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            name = getattr(path, "name", path)  # a file object's name, if it has one
            raise ImageTooLarge(
                f"{name} is {image.width}x{image.height} = {image.width * image.height / 1e6:.0f} Mpx, above the "
                f"limit of {max_pixels / 1e6:g} Mpx; raise it with --max-pixels (or max_pixels=) or shrink the image"
            )
        image.load()  # decode now: a truncated file fails here rather than inside a transform
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            pixels = np.asarray(image, dtype=np.float64)
            if image.mode.startswith("I;16") or pixels.max() > 255:
                pixels = pixels * (255.0 / 65535.0)
            image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="L")
        elif image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert(mode)


def eval_transform(pretrained_cfg: Mapping[str, Any], resize: str = "crop") -> v2.Compose:
    """PIL image -> normalised ``(C, H, W)`` float tensor, as the model's ``pretrained_cfg`` says.

    ``resize``: ``"crop"`` (timm's evaluation: resize the short side to ``size / crop_pct``, centre-crop to the
    input size), ``"stretch"`` (the whole image resized to the input size, aspect not kept: every pixel stays in
    view, as attention maps need) or ``"none"`` (the image's own size).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    _, height, width = pretrained_cfg["input_size"]
    interpolation = InterpolationMode(pretrained_cfg.get("interpolation", "bicubic"))
    steps: list[v2.Transform] = []
    if resize == "crop":
        crop_pct = pretrained_cfg.get("crop_pct") or 0.875  # timm's default
        scale: int | tuple[int, int] = math.floor(height / crop_pct)
        if height != width:
            scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
        steps += [v2.Resize(scale, interpolation=interpolation), v2.CenterCrop((height, width))]
    elif resize == "stretch":
        steps.append(v2.Resize((height, width), interpolation=interpolation))
    steps += [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pretrained_cfg["mean"]), list(pretrained_cfg["std"])),
    ]
    return v2.Compose(steps)


def preprocess(image: Image.Image, pretrained_cfg: Mapping[str, Any], resize: str = "crop") -> torch.Tensor:
    """One PIL image -> the model input ``(1, C, H, W)``: converted to the model's channels, then
    :func:`eval_transform`."""
    image = image.convert(channel_mode(pretrained_cfg["input_size"][0]))
    return eval_transform(pretrained_cfg, resize)(image).unsqueeze(0)
