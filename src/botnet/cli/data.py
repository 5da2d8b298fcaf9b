"""``botnet data pack SRC OUT``: an ImageFolder / Imagenette tree -> WebDataset shards + manifest
(:func:`botnet.data.shards.pack_folder`), for ``botnet train --data wds:OUT``."""

from __future__ import annotations

import argparse

from botnet.cli.common import ArgumentParser, UsageError
from botnet.data.shards import SPLITS, pack_folder


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="botnet data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser(
        "pack",
        help="pack SRC/<split>/<class>/<image> into OUT/<split>-NNNNNN.tar + OUT/manifest.json",
        description="Image bytes are copied (not re-encoded) in a seeded random order; botnet train --data wds:OUT "
        "reads the result. Unreadable files are packed as they are and skipped (and counted) when read.",
    )
    pack.add_argument("src", help="ImageFolder root with train/<class>/ and/or val/<class>/")
    pack.add_argument("out", help="new (or empty) folder for the shards")
    pack.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        help="images per shard (default: %(default)s, ~110 MB of ImageNet JPEGs; keep shards well below the "
        "images per rank and loader worker)",
    )
    pack.add_argument("--splits", nargs="+", default=list(SPLITS), help="split folders to pack (default: train val)")
    pack.add_argument("--seed", type=int, default=0, help="shuffling seed (default: %(default)s)")
    pack.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {args.shard_size}")
    manifest = pack_folder(args.src, args.out, args.shard_size, args.splits, args.seed, args.progress)
    counts = ", ".join(
        f"{split}: {manifest.samples(split)} images in {len(shards)} shards"
        for split, shards in manifest.splits.items()
    )
    print(f"{args.src} -> {args.out}: {len(manifest.classes)} classes; {counts}")
    print(f"train on it with: botnet train --data wds:{args.out}")
    return 0
