"""botnet train / eval / predict on a tiny ImageFolder made here: training, resume, interrupts, DDP, bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
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
from safetensors.torch import load_file

from botnet.cli import main as botnet_main
from botnet.cli import run as run_command
from botnet.cli.train import parse_args
from botnet.data import CheckedImageFolder, MNIST5k, load_image
from botnet.train.callbacks import AtomicCheckpointIO
from botnet.train.run import fit
from conftest import CLASSES, train_argv


def train_main(argv: list[str]) -> int:
    return botnet_main(["train", *argv])


def eval_main(argv: list[str]) -> int:
    return botnet_main(["eval", *argv])


def predict_main(argv: list[str]) -> int:
    return botnet_main(["predict", *argv])


def _step_losses(out: Path) -> list[float]:
    with open(out / "logs" / "version_0" / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss_step") and row["epoch"] == "0"]
    return [float(row["train/loss_step"]) for row in rows]


def test_train_writes_the_run_and_the_loss_falls(run: Path) -> None:
    for name in ("model.safetensors", "config.json", "train.yaml", "last.ckpt", "best.ckpt", "training_curve.png"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp")), "a temporary file of an atomic write was left behind"
    config = json.loads((run / "config.json").read_text())
    assert config["extra"]["class_names"] == sorted(CLASSES)
    assert config["in_chans"] == 3 and config["model_args"]["img_size"] == 32
    losses = _step_losses(run)
    assert len(losses) == 9  # 37 files (the corrupt one replaced by a neighbour), full batches of 4
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_resume_gives_the_same_weights(folder: Path, run: Path, tmp_path: Path) -> None:
    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            trainer.should_stop = True

    out = tmp_path / "resumed"
    fit(parse_args(train_argv(folder, out)), callbacks=[StopAfterFirstEpoch()])
    assert torch.load(out / "last.ckpt", weights_only=False)["epoch"] == 0
    assert train_main(["--resume", str(out)]) == 0  # flags come back from the run's train.yaml
    straight, resumed = load_file(run / "model.safetensors"), load_file(out / "model.safetensors")
    assert straight.keys() == resumed.keys()
    different = [key for key in straight if not torch.equal(straight[key], resumed[key])]
    assert not different, f"resumed weights differ from the straight run: {different[:5]}"


def test_recipe_options_train_and_export_the_ema_weights(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    recipe = ["--ema-decay", "0.9", "--mixup", "0.2", "--cutmix", "1.0", "--opt", "lamb", "--clip-grad", "1.0"]
    assert train_main(train_argv(folder, out, *recipe, "--epochs", "1", "--sched", "poly")) == 0
    checkpoint = torch.load(out / "last.ckpt", weights_only=False)
    exported = load_file(out / "model.safetensors")
    averaged = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    current = {k.removeprefix("model."): v for k, v in checkpoint["current_model_state"].items()}
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    assert not all(torch.equal(exported[k], current[k]) for k in exported)


def test_model_flags_warm_start_checkpoint_channels_last_and_layer_decay(
    folder: Path, run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, object] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            model = pl_module.model
            start = load_file(run / "model.safetensors")
            seen["warm"] = torch.equal(model.layer4[1].conv2.qkv.weight, start["layer4.1.conv2.qkv.weight"])
            seen["weights"] = model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
            seen["ckpt"] = model.grad_checkpointing
            seen["scales"] = {group["lr_scale"] for group in trainer.optimizers[0].param_groups}
            model.register_forward_pre_hook(self.record_input)

        @staticmethod
        def record_input(_: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
            seen.setdefault("input", args[0].is_contiguous(memory_format=torch.channels_last))

    flags = ["--initial-checkpoint", str(run), "--grad-checkpointing", "--channels-last", "--layer-decay", "0.5"]
    with caplog.at_level("WARNING"):
        fit(parse_args(train_argv(folder, tmp_path / "flags", *flags, "--epochs", "1")), callbacks=[Probe()])
    assert seen == {"warm": True, "weights": True, "ckpt": True, "scales": seen["scales"], "input": True}
    assert len(seen["scales"]) > 5 and max(seen["scales"]) == 1.0  # stem, 8 blocks, head: one LR scale each
    assert "loaded" not in caplog.text  # the same architecture: every tensor fits (partial loads: test_contract)


def test_compile_trains_the_compiled_network_and_saves_plain_weights(folder: Path, run: Path, tmp_path: Path) -> None:
    # aot_eager: dynamo captures the graphs and AOTAutograd builds the backward, as inductor would, without codegen
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert train_main(train_argv(folder, tmp_path / "compiled", "--compile", "aot_eager", "--epochs", "1")) == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the training and eval forwards
    assert load_file(tmp_path / "compiled" / "model.safetensors").keys() == load_file(run / "model.safetensors").keys()


def test_interrupt_leaves_a_resumable_checkpoint(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    class CtrlC(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            if trainer.global_step == 3:
                signal.raise_signal(signal.SIGINT)

    out = tmp_path / "interrupted"
    with pytest.raises(SIGTERMException):
        fit(parse_args(train_argv(folder, out)), callbacks=[CtrlC()])
    checkpoint = torch.load(out / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3 and not (out / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert train_main(["--resume", "last", "--out", str(out)]) == 0  # as a requeued job would
    assert (out / "model.safetensors").is_file()
    assert "done, 2 epochs" in capsys.readouterr().out


def test_resume_last_starts_fresh_when_there_is_no_run(tmp_path: Path) -> None:
    assert parse_args(["--resume", "last", "--out", str(tmp_path)]).checkpoint is None
    (tmp_path / "last.ckpt").touch()
    assert parse_args(["--resume", "last", "--out", str(tmp_path)]).checkpoint == tmp_path / "last.ckpt"


def test_eval_prints_and_writes_parsable_results(run: Path, folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["--checkpoint", str(run), "--json", "--accelerator", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and result["data"] == str(folder.resolve()) and result["split"] == "val"
    assert result["skipped"] == 0
    assert 0 <= result["top1"] <= result["top5"] == 1.0  # 3 classes: top-5 is top-3
    assert Path(result["confusion_matrix"]).is_file()
    assert json.loads((run / "eval.json").read_text()) == result

    assert eval_main(["--checkpoint", str(run), "--accelerator", "cpu", "--split", "train"]) == 0
    text = capsys.readouterr().out
    # 36 readable images; the corrupt one is counted once as skipped, not replaced by a neighbour counted twice
    assert re.search(r"train: 36 images \(1 unreadable, skipped\), top-1 \d+\.\d\d%, top-5 100\.00%", text), text


def test_predict_prints_topk_with_names(run: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no image here")
    argv = ["--checkpoint", str(run), "--topk", "2", "--accelerator", "cpu"]
    assert predict_main([str(folder / "val"), str(broken), *argv, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 13
    assert results[-1] == {"path": str(broken), "error": "unreadable image"}
    for result in results[:-1]:
        probs = [p["probability"] for p in result["predictions"]]
        assert len(probs) == 2 and probs[0] >= probs[1] and sum(probs) <= 1 + 1e-5
        assert {p["class"] for p in result["predictions"]} <= set(CLASSES)

    assert predict_main([str(folder / "val" / "light"), *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert all(re.fullmatch(r".+\.(jpg|png|bmp): \w+ \d+\.\d\d% \| \w+ \d+\.\d\d%", line) for line in lines), lines


def test_images_are_converted(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    sources = {
        "grey.png": Image.fromarray(grey, "L"),
        "rgba.png": Image.fromarray(grey).convert("RGBA"),
        "cmyk.jpg": Image.fromarray(grey).convert("CMYK"),
        "palette.png": Image.fromarray(grey).convert("P"),
        "deep.png": Image.fromarray(grey.astype(np.uint16) * 257),
    }
    for name, image in sources.items():
        image.save(tmp_path / name)
        for mode in ("RGB", "L"):
            assert load_image(tmp_path / name, mode).mode == mode
    deep = np.asarray(load_image(tmp_path / "deep.png", "L"))
    np.testing.assert_array_equal(deep, grey)  # 16-bit rescaled to 8 bits, not clipped at 255


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    for kind in ("a", "b"):
        (tmp_path / kind).mkdir()
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / kind / "good.png")
    (tmp_path / "a" / "garbage.png").write_bytes(b"\x89PNG garbage")
    Image.new("RGB", (64, 64)).save(tmp_path / "b" / "cut.jpg", quality=95)
    data = (tmp_path / "b" / "cut.jpg").read_bytes()
    (tmp_path / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated

    dataset = CheckedImageFolder(tmp_path, "RGB")
    with pytest.warns(UserWarning) as caught:
        items = [dataset[i] for i in range(len(dataset))]
    messages = [str(w.message) for w in caught if "skipped unreadable image" in str(w.message)]
    assert len(messages) == 2 and "2 skipped so far" in messages[-1]
    assert all(image.size == (16, 16) for image, _ in items)  # replaced by readable neighbours


def test_mnist5k_split_is_deterministic_and_balanced() -> None:
    train, val = MNIST5k("train"), MNIST5k("val")
    assert (len(train), len(val)) == (4500, 500)
    assert np.bincount(val.targets).tolist() == [50] * 10
    again = MNIST5k("val")
    np.testing.assert_array_equal(val.images, again.images)
    assert not np.isin(val.images.reshape(500, -1).sum(1), train.images.reshape(4500, -1).sum(1)).all()


def test_atomic_checkpoint_write_never_tears_the_previous_file(tmp_path: Path) -> None:
    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("crash mid-write")

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(RuntimeError, match="crash mid-write"):
        io.save_checkpoint({"step": 2, "boom": Unpicklable()}, path)
    assert io.load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--model", "botnet_50"], "unknown model 'botnet_50'; did you mean"),
        (["--model-kwargs", "chanels=8"], "bad override"),
        (["--model-kwargs", "attention=c9"], "unknown stage 'c9'"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--compile", "tensorrtx"], "--compile tensorrtx: not a torch.compile backend"),
        (["--resume", "/nonexistent/run"], "not found"),
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    try:
        code = train_main(["--data", "mnist5k", "--out", "/nonexistent/out", *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_data_folders_fail_with_one_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty_class = tmp_path / "empty_class"
    for split in ("train", "val"):
        (empty_class / split / "cat").mkdir(parents=True)
        (empty_class / split / "dog").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(empty_class / split / "cat" / "x.png")
    (tmp_path / "no_splits").mkdir()
    cases = {
        str(tmp_path / "missing"): "data folder",
        str(tmp_path / "no_splits"): "has no train/ folder",
        str(empty_class): "Found no valid file for the classes dog",
    }
    for data, message in cases.items():
        assert train_main(train_argv(Path(data), tmp_path / "out")) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert train_main(train_argv(folder, tmp_path / "small", "--img-size", "16")) == 2
    assert "below botnet26's minimum input 32" in capsys.readouterr().err


def test_mismatched_checkpoint_is_named(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    config = json.loads((run / "config.json").read_text())
    config["model_args"]["channels"] = [8, 16, 32, 128]
    (wrong / "config.json").write_text(json.dumps(config))
    assert eval_main(["--checkpoint", str(wrong), "--accelerator", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "does not match the model (the file was trained for botnet26)" in err and "shape mismatch" in err

    with pytest.raises(SystemExit) as exit_:
        predict_main([str(run), "--checkpoint", str(run / "last.ckpt")])
    assert exit_.value.code == 2
    assert "Lightning training checkpoint (pickle, for --resume only)" in capsys.readouterr().err


def test_fresh_run_refuses_to_overwrite(folder: Path, run: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_main(train_argv(folder, run)) == 1
    assert f"--resume {run}" in capsys.readouterr().err


def test_out_of_memory_gets_a_hint(capsys: pytest.CaptureFixture) -> None:
    def command() -> int:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert run_command("botnet train", command) == 1
    err = capsys.readouterr().err
    assert "out of memory: lower --batch-size" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        botnet_main([command, "--help"])
    assert exit_.value.code == 0 and f"usage: botnet {command}" in capsys.readouterr().out


DDP_SCRIPT = """
import sys
import lightning.pytorch as pl
from safetensors.torch import save_file
from botnet.cli.train import parse_args
from botnet.train.run import fit

class SaveRankWeights(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().contiguous() for k, v in pl_module.state_dict().items()}
        save_file(state, f"{sys.argv[1]}/rank{trainer.global_rank}.safetensors")

fit(parse_args(sys.argv[2:]), callbacks=[SaveRankWeights()])
"""


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_ranks_equal(folder: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    argv = train_argv(folder, tmp_path / "ddp", "--devices", "2", "--strategy", "ddp", "--epochs", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *argv], capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["extra"]["class_names"] == sorted(CLASSES)
    # 37 files padded to 38 by the DistributedSampler: 19 per rank, 4 full batches of 4, so 4 optimizer steps
    assert torch.load(tmp_path / "ddp" / "last.ckpt", weights_only=False)["global_step"] == 4
