"""WebDataset shards (botnet.data.shards, botnet data pack, botnet train --data wds:ROOT) on shards made here from
tiny PNGs whose first two pixels spell the sample's id: round trip, exactly once over 2 ranks x 2 workers (gloo),
resume mid-epoch through Lightning, unreadable samples, the shipped recipe configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from botnet.cli import main as botnet_main
from botnet.cli.train import parse_args
from botnet.data.shards import MANIFEST, ShardDataset, ShardLoader, pack_folder, read_manifest, read_shard
from botnet.train.callbacks import LAST, SaveOnInterrupt

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
TRAIN, VAL = 96, 30  # 96 = 2 ranks x 4 per batch x 12 batches: the training epoch uses every sample


def _write_ids(root: Path, split: str, count: int) -> None:
    """``count`` 6x6 grayscale PNGs in 3 class folders; pixels (0, 0) and (0, 1) hold the id, the class is id % 3."""
    for label in range(3):
        (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.full((6, 6), 128, np.uint8)
        pixels[0, :2] = i % 256, i // 256
        Image.fromarray(pixels).save(root / split / f"c{i % 3}" / f"{i:04d}.png")


def ids(images: torch.Tensor) -> list[int]:
    """The ids spelled by a batch of ``pil_to_tensor`` images ``(B, 1, 6, 6)`` uint8."""
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("idfolder")
    _write_ids(src, "train", TRAIN)
    _write_ids(src, "val", VAL)
    out = tmp_path_factory.mktemp("idshards") / "shards"
    pack_folder(src, out, shard_size=7, progress=False)
    return out


def test_pack_writes_the_manifest_and_reads_back_the_same_pairs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (src / split / name).mkdir(parents=True)
            grey = rng.integers(0, 255, (9, 11), dtype=np.uint8)
            Image.fromarray(grey).save(src / split / name / "grey.png")
            Image.fromarray(grey).convert("RGBA").save(src / split / name / "alpha.png")
            Image.fromarray(grey).convert("CMYK").save(src / split / name / "cmyk.jpg")
            Image.fromarray(grey.astype(np.uint16) * 257).save(src / split / name / "deep.png")
    assert botnet_main(["data", "pack", str(src), str(tmp_path / "out"), "--shard-size", "3", "--no-progress"]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest.classes == ["cat", "dog"]
    assert [count for _, count in manifest.shards("train")] == [3, 3, 2]
    for split in ("train", "val"):
        listing = make_dataset(str(src / split), {"cat": 0, "dog": 1}, IMG_EXTENSIONS)
        keys = []
        for name, count in manifest.shards(split):
            records = [record for _, record in read_shard(str(tmp_path / "out" / name), stop=count)]
            for record in records:
                path, label = listing[int(record.key)]
                assert record.label == label
                assert record.image == Path(path).read_bytes()
                keys.append(int(record.key))
        assert sorted(keys) == list(range(len(listing)))  # every image once, in a shuffled order
        assert keys != sorted(keys)


def test_pack_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert botnet_main(["data", "pack", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"botnet data: error: {tmp_path / 'missing'} not found (expected an ImageFolder root with train/ and val/)"
    )
    assert botnet_main(["data", "pack", str(tmp_path), str(tmp_path / "out"), "--shard-size", "0"]) == 2
    assert "--shard-size must be at least 1" in capsys.readouterr().err


DDP_SCRIPT = """
import json, sys
import torch.distributed as dist
from torchvision.transforms.v2.functional import pil_to_tensor
from botnet.data.shards import ShardDataset, ShardLoader

dist.init_process_group("gloo")  # rank and world size from the environment, as torchrun sets them
seen = {}
for split, train in (("train", True), ("val", False)):
    dataset = ShardDataset(sys.argv[1], split, "L", pil_to_tensor, batch_size=4, shuffle=train, drop_last=train,
                           buffer=5)
    loader = ShardLoader(dataset, num_workers=2)
    for epoch in range(2 if train else 1):
        batches = [images for images, _ in loader]
        assert len(batches) == len(loader)
        got = [(images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist() for images in batches]
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, got)
        seen[f"{split}{epoch}"] = gathered
if dist.get_rank() == 0:
    json.dump(seen, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_two_workers_see_every_sample_once_per_epoch(shards: Path, tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    env["OMP_NUM_THREADS"] = "1"
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(shards), str(tmp_path / "seen.json")],
            env={**env, "RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for rank in ranks:
        assert rank.wait(timeout=120) == 0, rank.stderr.read()[-3000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    for epoch, count in (("train0", TRAIN), ("train1", TRAIN), ("val0", VAL)):
        per_rank = [[i for batch in batches for i in batch] for batches in seen[epoch]]
        assert sorted(i for ranked in per_rank for i in ranked) == list(range(count)), epoch
        assert len(seen[epoch][0]) == len(seen[epoch][1])  # equal steps on every rank
    assert [len(batch) for batch in seen["train0"][0]] == [4] * 12
    assert seen["train0"] != seen["train1"]  # a new order every epoch
    assert sorted(len(batch) for batches in seen["val0"] for batch in batches) == [3, 3] + [4] * 6  # 15 per rank


class Recorder(pl.LightningModule):
    """Trains nothing; records the ids of every training batch, per epoch."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, list[int]]] = []

    def train_dataloader(self) -> ShardLoader:
        dataset = ShardDataset(
            self.root, "train", "L", pil_to_tensor, batch_size=4, shuffle=True, drop_last=True, buffer=5
        )
        return ShardLoader(dataset, num_workers=2, epoch=self.trainer.current_epoch)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, ids(batch[0])))
        return self.weight * batch[0].float().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StopAt(pl.Callback):
    """SIGTERM after ``step`` optimizer steps (Lightning stops at the step boundary), as a scheduler sends it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGTERM)


def _trainer(*callbacks: pl.Callback) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def test_resume_mid_epoch_repeats_and_skips_nothing(shards: Path, tmp_path: Path) -> None:
    straight = Recorder(shards)
    _trainer().fit(straight)
    assert len(straight.seen) == 2 * 24  # 96 samples in batches of 4, one rank

    first = Recorder(shards)
    with pytest.raises(SIGTERMException):
        _trainer(SaveOnInterrupt(tmp_path), StopAt(24 + 7)).fit(first)  # 7 batches into the second epoch
    state = torch.load(tmp_path / LAST, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["epoch"] == 1 and state[0]["consumed"] == 7
    second = Recorder(shards)
    _trainer().fit(second, ckpt_path=tmp_path / LAST)

    assert first.seen + second.seen == straight.seen  # same batches, same order: none repeated, none skipped
    second_epoch = [i for epoch, batch in first.seen + second.seen if epoch == 1 for i in batch]
    assert sorted(second_epoch) == list(range(TRAIN))


def test_mid_epoch_resume_refuses_another_layout(shards: Path) -> None:
    dataset = ShardDataset(shards, "train", "L", pil_to_tensor, batch_size=4, shuffle=True, drop_last=True)
    state = ShardLoader(dataset, num_workers=2).state_dict()
    ShardLoader(dataset, num_workers=3).load_state_dict(state)  # at an epoch boundary any layout resumes
    with pytest.raises(ValueError, match="workers 2 -> 3"):
        ShardLoader(dataset, num_workers=3).load_state_dict({**state, "consumed": 5})


def test_unreadable_sample_is_skipped_and_counted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write_ids(src, "train", 12)
    (src / "train" / "c0" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    pack_folder(src, tmp_path / "out", shard_size=5, progress=False)

    def read(fill: bool) -> tuple[list[list[int]], ShardDataset]:
        dataset = ShardDataset(tmp_path / "out", "train", "L", pil_to_tensor, batch_size=4, fill=fill)
        with pytest.warns(UserWarning, match=r"skipped unreadable image .*train-\d+\.tar:\d{8} .*1 skipped so far"):
            batches = [ids(images) for images, _ in ShardLoader(dataset)]
        return batches, dataset

    batches, dataset = read(fill=False)  # evaluation: the image is left out
    assert sorted(i for batch in batches for i in batch) == [i for i in range(12) if i != 3]
    assert len(dataset.unreadable) == 1
    batches, _ = read(fill=True)  # training: another image of the batch takes its place
    assert [len(batch) for batch in batches] == [4, 4, 4]
    assert set(i for batch in batches for i in batch) == set(range(12)) - {3}


def test_train_and_eval_on_shards(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    argv = [
        "--data", f"wds:{shards}", "--out", str(out), "--model", "botnet26", "--model-kwargs", "channels=8,16,32,64",
        "stem_width=8", "num_heads=2", "--img-size", "32", "--in-chans", "1", "--batch-size", "8", "--workers", "0",
        "--epochs", "1", "--no-progress", "--accelerator", "cpu",
    ]  # fmt: skip
    assert botnet_main(["train", *argv]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["extra"]["data"] == f"wds:{shards.resolve()}"
    assert config["extra"]["class_names"] == ["c0", "c1", "c2"]
    capsys.readouterr()
    assert botnet_main(["eval", "--checkpoint", str(out), "--json", "--accelerator", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == VAL


def test_missing_manifest_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert botnet_main(["train", "--data", f"wds:{tmp_path}", "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"botnet train: error: {tmp_path} has no {MANIFEST}: make shards with botnet data pack SRC {tmp_path}"
    )


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_shipped_configs_parse(config: Path) -> None:
    args = parse_args(["--config", str(config), "--out", "runs/x"])
    assert args.data.startswith(("wds:", "imagenette:")) and args.epochs >= 1 and args.batch_size >= 1
