"""Loader throughput: images/s of the training loader from WebDataset shards (``--data wds:ROOT``) vs the same images
as an ImageFolder tree, through :class:`botnet.train.ImageDataModule` as ``botnet train`` builds it.

The images are made here (JPEGs of noise and gradients, ImageNet-like sizes scaled down) and packed with
:func:`botnet.data.pack_folder`; each round times one training epoch of each source, interleaved, and the ratio is
taken within the round. Decoding and augmentation dominate on a few CPUs: shards pay off where file opens and
metadata lookups are the cost (millions of files on a network filesystem), which one machine's page cache hides.

    python benchmarks/loader_throughput.py                 # 1000 images, 2 workers, 5 rounds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from botnet.data import pack_folder
from botnet.train import ImageDataModule
from common import Column, Setup, add_common_args, median_ratio, write_report

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_folder(root: Path, images: int, classes: int, side: int, seed: int = 0) -> None:
    """``root/train/<class>/*.jpg`` (and 10% as much ``val``): JPEGs of about ``side`` pixels a side, quality 90."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", max(classes, images // 10))):
        for label in range(classes):
            (root / split / f"class{label:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            height, width = (int(side * rng.uniform(0.75, 1.25)) for _ in range(2))
            ramp = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.2, 1, 3)
            pixels = np.clip(ramp + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"class{i % classes:03d}" / f"{i:05d}.jpg", quality=90)


def epoch_seconds(data: str, args: argparse.Namespace) -> tuple[float, int]:
    """Seconds and images of one training epoch of ``data`` (setup not timed)."""
    module = ImageDataModule(
        data, img_size=args.img_size, in_chans=3, mean=MEAN, std=STD, batch_size=args.batch_size, workers=args.workers
    )
    module.setup("fit")
    loader = module.train_dataloader()
    start = time.perf_counter()
    images = sum(len(labels) for _, labels in loader)
    return time.perf_counter() - start, images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--images", type=int, default=1000, help="training images (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument("--side", type=int, default=256, help="typical image side in pixels (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=128, help="model input side (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=100, help="images per shard (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    setup = Setup.from_args(args)

    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "folder", Path(tmp) / "shards"
        make_folder(folder, args.images, args.classes, args.side)
        pack_folder(folder, shards, shard_size=args.shard_size, progress=False)
        sources = {"ImageFolder": str(folder), "WebDataset shards": f"wds:{shards}"}
        for data in sources.values():
            epoch_seconds(data, args)  # warm-up: page cache, worker start
        times: dict[str, list[float]] = {name: [] for name in sources}
        counts: dict[str, int] = {}
        for _ in range(args.reps):
            for name, data in sources.items():
                seconds, counts[name] = epoch_seconds(data, args)
                times[name].append(seconds / counts[name])
        size_mb = sum(path.stat().st_size for path in shards.glob("*.tar")) / 2**20

    rows = [
        {
            "source": name,
            "images": counts[name],
            "images_per_s": 1 / statistics.median(times[name]),
            "min_max": f"{1 / max(times[name]):.0f}-{1 / min(times[name]):.0f}",
            "ratio": median_ratio(times[name], times["ImageFolder"]),
        }
        for name in sources
    ]
    columns = [
        Column("source", "source"),
        Column("images", "images / epoch"),
        Column("images_per_s", "images/s (median)", "{:.0f}"),
        Column("min_max", "images/s (range)"),
        Column("ratio", "vs ImageFolder (median of per-round ratios)", "{:.2f}x"),
    ]
    notes = [
        f"{args.images} JPEGs of ~{args.side} px ({size_mb:.0f} MB of shards, {args.shard_size} per shard), "
        f"{args.workers} loader workers, batch {args.batch_size}, training transform (random-resized crop to "
        f"{args.img_size}, flip, normalise), {args.reps} interleaved rounds of one epoch each.",
        "Files in the page cache: this measures decoding and loader overhead, not storage; the shards' gain on a "
        "network filesystem (one sequential read per shard instead of an open per image) is not measured here.",
        "The folder epoch drops the last partial batch; the shard epoch also (drop_last), so the counts match.",
    ]
    write_report("loader_throughput", setup, "Training loader throughput: shards vs folder", [("", rows, columns)],
                 argv, notes)  # fmt: skip


if __name__ == "__main__":
    main()
