"""``botnet models``: the model table; optionally run every model on a photo shipped by scikit-image."""

from __future__ import annotations

import numpy as np
import torch

from botnet.cli.common import ArgumentParser
from botnet.models import create_model, get_model_cfg, list_models
from botnet.summary import markdown_table


def _photo(name: str) -> np.ndarray:
    import skimage.data

    if not hasattr(skimage.data, name):
        raise SystemExit(f"botnet models: skimage.data has no photo {name!r} (try chelsea, astronaut, coffee)")
    return getattr(skimage.data, name)()


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="botnet models", description=__doc__)
    parser.add_argument("--pattern", default="*", help="shell-style filter on model names")
    parser.add_argument("--image", help="run each model (random weights) on this skimage.data photo, e.g. chelsea")
    args = parser.parse_args(argv)

    print(markdown_table(args.pattern))
    if args.image:
        image = torch.from_numpy(_photo(args.image)).permute(2, 0, 1).float().div(255).unsqueeze(0)
        print(f"\nforward pass on skimage.data.{args.image}() {tuple(image.shape[-2:])} at each model's input size:")
        for name in list_models(args.pattern):
            cfg = get_model_cfg(name)
            mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
            x = torch.nn.functional.interpolate(image, size=cfg.input_size[1:], mode="bilinear", antialias=True)
            model = create_model(name).eval()
            with torch.no_grad():
                logits, attn = model((x - mean) / std, return_attention=True)
            maps = ", ".join(f"{k} {tuple(v.shape)}" for k, v in attn.items()) or "no MHSA"
            print(f"  {name:<20} logits {tuple(logits.shape)}  attention: {maps}")
    return 0
