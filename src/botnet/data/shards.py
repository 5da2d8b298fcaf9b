"""Sharded image data in the WebDataset format: :func:`pack_folder` turns an ImageFolder tree into tar shards plus
a manifest; :class:`ShardDataset` streams them back exactly once per epoch across ranks and loader workers, shuffled,
and :class:`ShardLoader` makes the position inside an epoch part of a Lightning checkpoint.

A shard root (``botnet data pack SRC OUT`` writes it, ``botnet train --data wds:OUT`` reads it)::

    OUT/manifest.json       {"format": "botnet-shards/1", "classes": [...], "splits": {"train": {"samples": N,
                             "shards": [{"name": "train-000000.tar", "samples": 1000}, ...]}, "val": {...}}}
    OUT/train-000000.tar    per sample: {key}.cls (class index as text) + {key}.{jpg|png|...} (the source file's
    OUT/val-000000.tar      bytes, not re-encoded); key = the sample's index in the split's sorted ImageFolder listing

Samples are shuffled across the shards when packing (seeded), so any stretch of a shard mixes the classes. The tars
are plain WebDataset shards (``webdataset``, timm's ``wds/`` reader and Hugging Face ``datasets`` read them); the
manifest's per-shard counts are what exact epochs need. ``OUT`` may also be a URL that ``webdataset.gopen`` opens
(``https://...``): shards are then read as streams.

**One epoch** (``epoch`` and ``seed`` fix everything, so each rank and worker computes its part alone):

1. the split's shards, in a seeded order that changes every epoch (no shuffling: manifest order), are read as one
   sequence of samples;
2. rank ``r`` of ``R`` takes a contiguous slice of it: ``N // R`` samples each for training (``drop_last``: the
   ``N % R`` at the end wait for another epoch, as with ``DistributedSampler(drop_last=True)``), the balanced split
   of all ``N`` for evaluation;
3. the slice is cut into batches, and the ``W`` loader workers' plans are contiguous runs of them (the first
   ``batches % W`` plans one more), so every worker reads its own stretch of at most a few shards sequentially;
4. a worker emits its samples in a shuffle-buffer order: a seeded permutation drawn as a buffer of ``buffer`` samples
   would draw it, so at most ``buffer`` undecoded samples are held in memory.

The loader hands out the workers' batches round-robin (PyTorch's in-order delivery), so batch ``i`` of an epoch is
batch ``i // W`` of plan ``i % W``: "``b`` batches of this epoch were consumed" tells every worker which plan to take
(worker 0 the one served next) and how many of its batches to skip, and a resumed epoch continues with the very
batches an uninterrupted one would have had. Skipped samples are read but never decoded.

An unreadable image is skipped and counted (a warning per loader process with the running count); in training
batches its place is taken by another image of the batch, so batches keep their size (mixup needs even ones) and
every rank the same number of steps.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from botnet.checkpoint import write_text
from botnet.data.datasets import MAX_CONSECUTIVE_ERRORS
from botnet.data.images import IMAGE_ERRORS, MAX_PIXELS, UnreadableLog, load_image

SHARDS_PREFIX = "wds:"
MANIFEST = "manifest.json"
FORMAT = "botnet-shards/1"
SPLITS = ("train", "val")
SHUFFLE_BUFFER = 1000
IMAGE_SUFFIXES = {ext.lstrip(".") for ext in IMG_EXTENSIONS}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_shards(data: str) -> bool:
    """Whether a ``--data`` value names a shard root (``wds:ROOT``)."""
    return data.startswith(SHARDS_PREFIX)


def shard_root(data: str) -> str:
    """``"wds:ROOT"`` -> ``"ROOT"`` (a local folder or a URL)."""
    if not is_shards(data) or not data[len(SHARDS_PREFIX) :]:
        raise ValueError(f"expected {SHARDS_PREFIX}ROOT with ROOT a folder of shards and {MANIFEST}, got {data!r}")
    return data[len(SHARDS_PREFIX) :]


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _URL.match(root) else str(Path(root) / name)


def _open(location: str) -> IO[bytes]:
    if _URL.match(location):
        import webdataset

        return webdataset.gopen(location)
    return open(location, "rb")


@dataclass(frozen=True)
class Manifest:
    """A shard root's ``manifest.json``: ``classes`` (index -> name) and per split the shard file names and their
    sample counts."""

    root: str
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]

    def samples(self, split: str) -> int:
        return sum(count for _, count in self.shards(split))

    def shards(self, split: str) -> list[tuple[str, int]]:
        if split not in self.splits:
            raise FileNotFoundError(f"{self.root} has no {split!r} shards (its splits: {', '.join(self.splits)})")
        return self.splits[split]


def read_manifest(root: str | Path) -> Manifest:
    """Read and check ``ROOT/manifest.json``."""
    root = str(root)
    location = _join(root, MANIFEST)
    if not _URL.match(root) and not Path(location).is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST}: make shards with botnet data pack SRC {root}")
    with _open(location) as file:
        try:
            manifest = json.load(file)
        except json.JSONDecodeError as err:
            raise ValueError(f"{location} is not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{location} is not a {FORMAT} manifest (format: {manifest.get('format')!r})")
    splits = {
        split: [(shard["name"], int(shard["samples"])) for shard in entry["shards"]]
        for split, entry in manifest["splits"].items()
    }
    return Manifest(root, list(manifest["classes"]), splits)


def pack_folder(
    src: str | Path,
    out: str | Path,
    shard_size: int = 1000,
    splits: Iterable[str] = SPLITS,
    seed: int = 0,
    progress: bool = True,
) -> Manifest:
    """Pack an ImageFolder / Imagenette tree (``SRC/<split>/<class>/<image>``) into WebDataset shards in ``out``.

    Every split of ``splits`` that ``src`` has is written as ``<split>-NNNNNN.tar`` files of ``shard_size`` samples
    (the last one smaller), the samples in a seeded random order; ``manifest.json`` (classes, shard names and
    counts) is written last, so an interrupted pack leaves no readable root. Image bytes are copied, not decoded:
    an unreadable file is packed as it is and skipped (and counted) when read.
    """
    import webdataset
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out)
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    if not src.is_dir():
        raise FileNotFoundError(f"{src} not found (expected an ImageFolder root with train/ and val/)")
    present = [split for split in splits if (src / split).is_dir()]
    if not present:
        raise FileNotFoundError(f"{src} has none of the split folders {', '.join(splits)}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: pack into a new folder")
    try:
        classes = {split: find_classes(str(src / split))[0] for split in present}
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (expected one folder of images per class)") from None
    names = classes[present[0]]
    for split in present[1:]:
        if classes[split] != names:
            raise ValueError(f"{src}/{split} and {src}/{present[0]} have different class folders")
    listings = {
        split: make_dataset(str(src / split), {name: i for i, name in enumerate(names)}, IMG_EXTENSIONS)
        for split in present
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": FORMAT, "classes": names, "splits": {}}
    bar = tqdm(total=sum(map(len, listings.values())), unit="img", desc=f"packing {src}", disable=not progress)
    for split, samples in listings.items():
        order = list(range(len(samples)))
        random.Random(f"{seed}-{split}").shuffle(order)
        shards = []
        for first in range(0, len(order), shard_size):
            name = f"{split}-{len(shards):06d}.tar"
            chunk = order[first : first + shard_size]
            with webdataset.TarWriter(str(out / name), encoder=False, mtime=0) as writer:
                for index in chunk:
                    path, label = samples[index]
                    suffix = Path(path).suffix.lower().lstrip(".")
                    writer.write(
                        {"__key__": f"{index:08d}", "cls": str(label).encode(), suffix: Path(path).read_bytes()}
                    )
                    bar.update()
            shards.append({"name": name, "samples": len(chunk)})
        manifest["splits"][split] = {"samples": len(samples), "shards": shards}
    bar.close()
    write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return read_manifest(out)


@dataclass(frozen=True)
class Record:
    """One undecoded sample of a shard: its key, where it came from, the image bytes (``None`` if it has none) and
    the class index (``-1`` if it has none)."""

    key: str
    shard: str
    image: bytes | None
    label: int


def read_shard(
    location: str, start: int = 0, stop: int | None = None, want: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, Record]]:
    """Yield ``(index, Record)`` for the samples ``start <= index < stop`` of one tar shard (members grouped by key,
    WebDataset style) for which ``want(index)`` holds; the others' bytes are never read into memory (a local file is
    seeked past them). Raises ``ValueError`` for a damaged tar or one with fewer than ``stop`` samples."""
    index, key, files = -1, None, {}

    def record() -> Record:
        image = next((data for suffix, data in files.items() if suffix in IMAGE_SUFFIXES), None)
        label = files.get("cls")
        return Record(key, location, image, int(label) if label is not None and label.strip().isdigit() else -1)

    try:
        # A local file is read with seeks (members not wanted are skipped, not read); a URL as a stream.
        with _open(location) as file, tarfile.open(fileobj=file, mode="r|*" if _URL.match(location) else "r:*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, _, suffix = base.partition(".")
                name = f"{directory}/{stem}" if directory else stem
                if name != key:
                    if files:
                        yield index, record()
                    index, key, files = index + 1, name, {}
                    if stop is not None and index >= stop:
                        return
                if index >= start and (want is None or want(index)):
                    extracted = tar.extractfile(member)
                    files[suffix.lower()] = extracted.read() if extracted else b""
            if files:
                yield index, record()
    except tarfile.TarError as err:
        raise ValueError(f"{location}: damaged shard ({err})") from None
    if stop is not None and index + 1 < stop:
        raise ValueError(f"{location} holds {index + 1} samples, fewer than its manifest's {stop}")


def buffer_order(count: int, buffer: int, rng: random.Random) -> list[int]:
    """The order in which a shuffle buffer of ``buffer`` items emits the stream ``0 .. count-1``: every item leaves
    at most ``buffer`` positions after it entered, so emitting in this order holds at most ``buffer`` items."""
    held: list[int] = []
    order: list[int] = []
    for position in range(count):
        held.append(position)
        if len(held) >= buffer:
            pick = rng.randrange(len(held))
            held[pick], held[-1] = held[-1], held[pick]
            order.append(held.pop())
    rng.shuffle(held)
    return order + held


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker reads in one epoch: ``segments`` of ``(shard index, first sample, stop)``, in order, holding
    ``samples`` samples that form ``batches`` batches."""

    segments: list[tuple[int, int, int]]
    samples: int
    batches: int


class ShardDataset(IterableDataset):
    """One split of a shard root, as batches ``(images (B, C, H, W), labels (B,))`` (with ``transform`` returning
    ``(C, H, W)`` tensors) that cover the split exactly once per epoch across ranks and loader workers.

    The dataset batches itself (use it with ``batch_size=None``, as :class:`ShardLoader` does): a worker's batches
    are fixed by the epoch layout (module notes), so a skipped image shortens nothing and resuming is exact.
    ``len()`` is this rank's number of batches per epoch.

    Args:
        root: shard root (a folder or URL with ``manifest.json``).
        split: ``"train"``, ``"val"``, or another split the manifest has.
        mode: PIL mode the images are converted to (``"L"`` or ``"RGB"``), by :func:`~botnet.data.load_image`.
        transform: applied to the PIL image (default: a ``(C, H, W)`` float tensor in [0, 1]).
        batch_size: samples per batch.
        shuffle: shard order per epoch and a shuffle buffer inside each worker (training); else manifest order.
        drop_last: equal ranks and no ragged batch (training); else every sample once, last batches smaller.
        fill: replace an unreadable image by another one of its batch, keeping the batch size (training).
        seed: with the epoch, fixes every order.
        buffer: shuffle-buffer size (undecoded samples held per worker).
        rank, world_size: this process among all; default: from ``torch.distributed`` when it is initialised.
        max_pixels: the :func:`~botnet.data.load_image` pixel limit.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        mode: str = "RGB",
        transform: Callable | None = None,
        batch_size: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        fill: bool = False,
        seed: int = 0,
        buffer: int = SHUFFLE_BUFFER,
        rank: int | None = None,
        world_size: int | None = None,
        max_pixels: int | None = MAX_PIXELS,
    ) -> None:
        self.manifest = read_manifest(root)
        self.split = split
        self.shards = self.manifest.shards(split)
        self.classes = self.manifest.classes
        self.mode = mode
        self.transform = transform
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.fill = fill
        self.seed = seed
        self.buffer = buffer
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        self.rank, self.world_size = rank or 0, world_size or 1
        self.max_pixels = max_pixels
        self.samples = sum(count for _, count in self.shards)
        first, last = self._rank_range()
        batches = (last - first) // batch_size if drop_last else math.ceil((last - first) / batch_size)
        if batches == 0:
            raise ValueError(
                f"{root} {split}: {self.samples} samples over {self.world_size} ranks make no batch of {batch_size}"
            )
        self.batches = batches
        self.unreadable = UnreadableLog()
        self._failures = 0  # unreadable images in a row
        # Where the next iteration starts: set by ShardLoader before it starts the workers.
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        return self.batches

    def _rank_range(self) -> tuple[int, int]:
        """This rank's slice ``[first, last)`` of the epoch's sample sequence."""
        if self.drop_last:
            share = self.samples // self.world_size
            return self.rank * share, (self.rank + 1) * share
        return self.rank * self.samples // self.world_size, (self.rank + 1) * self.samples // self.world_size

    def layout(self, workers: int) -> dict[str, int]:
        """What fixes the position of a batch inside an epoch: a mid-epoch resume needs the same values."""
        return dict(
            samples=self.samples,
            world_size=self.world_size,
            workers=max(1, workers),
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle=int(self.shuffle),
        )

    def plan(self, epoch: int, workers: int) -> list[WorkerPlan]:
        """Every worker's share of this rank's part of ``epoch`` (module notes, steps 1-3)."""
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
        first, last = self._rank_range()
        used = min(last - first, self.batches * self.batch_size)
        plans = []
        batch = 0
        for worker in range(workers):
            count = self.batches // workers + (worker < self.batches % workers)
            start = first + batch * self.batch_size
            stop = first + min((batch + count) * self.batch_size, used)
            batch += count
            segments, offset = [], 0
            for shard in order:
                size = self.shards[shard][1]
                lo, hi = max(start, offset), min(stop, offset + size)
                if lo < hi:
                    segments.append((shard, lo - offset, hi - offset))
                offset += size
            plans.append(WorkerPlan(segments, stop - start, count))
        return plans

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The loader hands out batch i of the epoch from plan i % W (module notes): after `skip` batches, plan p has
        # delivered ceil((skip - p) / W) of its batches and plan skip % W is next, so worker 0 takes that one.
        index = (worker + self.skip) % workers
        plan = self.plan(self.epoch, workers)[index]
        done = max(0, -(-(self.skip - index) // workers))
        order = list(range(plan.samples))
        if self.shuffle:
            rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{index}")
            order = buffer_order(plan.samples, self.buffer, rng)
        todo = order[done * self.batch_size :]
        batch: list[tuple[Any, int] | None] = []
        for record in self._in_order(plan, todo):
            batch.append(self._load(record))
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                batch = []
        if batch:
            yield self._collate(batch)

    def _in_order(self, plan: WorkerPlan, todo: list[int]) -> Iterator[Record]:
        """The records at the worker positions ``todo``, in that order, read sequentially from the plan's shards."""
        wanted = set(todo)
        held: dict[int, Record] = {}
        emit = iter(todo)
        target = next(emit, None)
        base = 0  # worker position of the current segment's first sample
        for shard, first, stop in plan.segments:
            name = self.shards[shard][0]
            offset = base - first
            location = _join(self.manifest.root, name)
            for index, record in read_shard(location, first, stop, want=lambda i, offset=offset: i + offset in wanted):
                held[index + offset] = record
                while target is not None and target in held:
                    yield held.pop(target)
                    target = next(emit, None)
            base += stop - first

    def _load(self, record: Record) -> tuple[Any, int] | None:
        """Decode and transform one record; ``None`` (warned and counted) when it cannot be read."""
        try:
            if record.image is None or record.label < 0:
                raise ValueError("no image or no class in the shard")
            data = io.BytesIO(record.image)
            data.name = f"{record.shard}:{record.key}"
            image = load_image(data, self.mode, self.max_pixels)
        except IMAGE_ERRORS as err:
            self.unreadable.report(f"{record.shard}:{record.key}", err)
            self._failures += 1
            if self._failures >= MAX_CONSECUTIVE_ERRORS:
                raise RuntimeError(
                    f"{MAX_CONSECUTIVE_ERRORS} unreadable images in a row in {self.manifest.root}: "
                    "the data looks damaged"
                ) from None
            return None
        self._failures = 0
        if self.transform is None:
            from torchvision.transforms.v2.functional import pil_to_tensor

            return pil_to_tensor(image).float().div(255), record.label
        return self.transform(image), record.label

    def _collate(self, items: list[tuple[Any, int] | None]) -> Any:
        readable = [item for item in items if item is not None]
        if not readable:
            raise RuntimeError(f"a batch of {len(items)} unreadable images in {self.manifest.root}")
        if self.fill:
            readable += [readable[i % len(readable)] for i in range(len(items) - len(readable))]
        return default_collate(readable)


class ShardLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ShardDataset` whose position inside the epoch travels in Lightning
    checkpoints: Lightning saves ``state_dict()`` (epoch, batches consumed) with the fit loop and hands it back to
    ``load_state_dict()`` before iterating again, and the workers then skip exactly the consumed batches.

    Lightning fetches no batch ahead from a loader with a length, so "batches handed out" is "batches trained on"
    when it saves. Each pass over the loader is one epoch; a pass cut short (``limit_train_batches``, ``max_steps``)
    still moves the next pass to the next epoch.

    Args:
        dataset: the batches to load.
        num_workers: loader processes (0: in this process).
        epoch: the epoch of the first pass (the trainer's current epoch when the loader is built).
        **kwargs: other ``DataLoader`` arguments (``pin_memory``, ...); not ``batch_size``, ``shuffle``, ``sampler``
            or ``persistent_workers`` (the dataset batches, shuffles and is re-sent to the workers each pass).
    """

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)
        self.epoch = epoch
        self.consumed = 0
        self._in_pass = False

    def __iter__(self) -> Iterator[Any]:
        dataset: ShardDataset = self.dataset  # type: ignore[assignment]
        if self._in_pass:  # the last pass ended early: this one is the next epoch
            self.epoch, self.consumed = self.epoch + 1, 0
        self._in_pass = True
        dataset.epoch, dataset.skip = self.epoch, self.consumed  # before super().__iter__ sends it to the workers
        for batch in super().__iter__():
            self.consumed += 1
            if self.consumed == len(dataset):  # the epoch is complete once this batch is handed out
                self.epoch, self.consumed, self._in_pass = self.epoch + 1, 0, False
            yield batch

    def state_dict(self) -> dict[str, Any]:
        dataset: ShardDataset = self.dataset  # type: ignore[assignment]
        return {"epoch": self.epoch, "consumed": self.consumed, "layout": dataset.layout(self.num_workers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dataset: ShardDataset = self.dataset  # type: ignore[assignment]
        layout = dataset.layout(self.num_workers)
        if state["consumed"] and state["layout"] != layout:
            changed = ", ".join(
                f"{k} {state['layout'].get(k)} -> {v}" for k, v in layout.items() if state["layout"].get(k) != v
            )
            raise ValueError(
                f"cannot resume mid-epoch with another data layout ({changed}): resume with the same devices, "
                "nodes, --workers and --batch-size, or from an end-of-epoch checkpoint"
            )
        self.epoch, self.consumed, self._in_pass = state["epoch"], state["consumed"], False
