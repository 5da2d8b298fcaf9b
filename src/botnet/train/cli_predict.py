"""botnet predict: the top-k classes, with names and probabilities, of image files or folders.

Images are preprocessed as the checkpoint's config.json says; unreadable files are reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from botnet.train.cli import add_checkpoint_arg, add_hardware_args, quiet_lightning, run_command, trainer_placement
from botnet.train.data import build_transform
from botnet.train.datasets import ImageFiles, channel_mode, find_images
from botnet.train.module import ImageClassifier

PROG = "botnet predict"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    add_checkpoint_arg(parser)
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="loader processes (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    add_hardware_args(parser, distributed=False)
    return parser


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per file: ``{"path", "predictions": [{"class", "index", "probability"}, ...]}`` or ``{"path",
    "error"}``."""
    files = find_images(args.paths)
    module = ImageClassifier.from_pretrained(args.checkpoint)
    cfg = module.model.pretrained_cfg
    img_size = cfg["input_size"][-1]
    transform = build_transform(
        False, img_size, cfg["mean"], cfg["std"], interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"]
    )
    dataset = ImageFiles(files, channel_mode(module.model.in_chans), transform, img_size)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    trainer = pl.Trainer(**trainer_placement(args), logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, dataloaders=loader)
    probs = torch.cat([p for p, _ in batches]).float()
    readable = torch.cat([r for _, r in batches]).tolist()
    top = probs.topk(min(args.topk, probs.shape[1]), dim=1)
    results = []
    for path, ok, values, indices in zip(files, readable, top.values.tolist(), top.indices.tolist(), strict=True):
        if not ok:
            results.append({"path": str(path), "error": "unreadable image"})
            continue
        ranked = [
            {"class": module.class_names[i], "index": i, "probability": round(p, 6)}
            for p, i in zip(values, indices, strict=True)
        ]
        results.append({"path": str(path), "predictions": ranked})
    return results


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.topk < 1:
        build_parser().error("--topk must be at least 1")
    quiet_lightning()

    def command() -> int:
        results = predict(args)
        if args.json:
            print(json.dumps(results, indent=1))
            return 0
        for result in results:
            if "error" in result:
                print(f"{result['path']}: {result['error']}")
                continue
            ranked = " | ".join(f"{p['class']} {100 * p['probability']:.2f}%" for p in result["predictions"])
            print(f"{result['path']}: {ranked}")
        return 0

    return run_command(PROG, command, args.batch_size)
