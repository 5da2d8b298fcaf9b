"""Every command under hostile input, as a user meets it: a subprocess per case, one line on stderr, the exit codes
of ``botnet.cli`` (1 failed, 2 usage, 130 interrupted), no traceback, and nothing written where the command had no
right to write. Then Ctrl-C to a training run's whole process group (loader workers included) and a resume that
ends with the weights of an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from botnet.detection import make_demo_data
from conftest import tiny_model, train_argv

BOTNET = [sys.executable, "-m", "botnet"]
Prepare = Callable[[Path, Path], list[str]]  # (case folder, trained run folder) -> argv


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _copy_run(case: Path, run: Path) -> Path:
    copy = case / "run"
    shutil.copytree(run, copy)
    return copy


def _damaged_weights(case: Path, run: Path) -> Path:
    copy = _copy_run(case, run)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated mid-file
    return copy


def _random_weights(case: Path, run: Path) -> Path:
    copy = _copy_run(case, run)
    (copy / "model.safetensors").write_bytes(os.urandom(4096))
    return copy


def _pickled_object(case: Path) -> Path:
    path = case / "weights.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "evil": Path("/")}, path)  # needs unpickling a Path
    return path


def _image(case: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (48, 40), "orange").save(case / "photo.png")
    return case / "photo.png"


def _coco(case: Path, content: str) -> Path:
    (case / "coco" / "annotations").mkdir(parents=True)
    (case / "coco" / "val").mkdir()
    (case / "coco" / "annotations" / "instances_val.json").write_text(content)
    return case / "coco"


def _detector_run(case: Path) -> Path:
    """A detection run folder as ``botnet detect train`` writes it (random weights; nothing trained)."""
    from botnet.detection.engine import DetectionModule

    detector = dict(image_size=64, fpn_channels=16, backbone_kwargs=dict(channels=(8, 16, 32, 64), stem_width=8))
    module = DetectionModule("fasterrcnn_botnet26_fpn", 3, categories=["a", "b"], detector_kwargs=detector)
    module.save_pretrained(case / "det")
    return case / "det"


def _torn_last(case: Path, run: Path) -> Path:
    copy = _copy_run(case, run)
    data = (copy / "last.ckpt").read_bytes()
    (copy / "last.ckpt").write_bytes(data[: len(data) // 3])
    os.utime(copy / "best.ckpt", (time.time() - 60, time.time() - 60))  # older than the torn last.ckpt
    return copy


# (case id, what to prepare -> argv, exit code, the message's telling part, the folder the command must leave alone)
CASES: list[tuple[str, Prepare, int, str, str | None]] = [
    ("eval-truncated-weights", lambda c, r: ["eval", "--checkpoint", str(_damaged_weights(c, r))], 1,
     "is not a readable safetensors file, truncated or damaged?", "run"),
    ("predict-random-weights", lambda c, r: ["predict", str(_image(c)), "--checkpoint", str(_random_weights(c, r))],
     1, "is not a readable safetensors file", "run"),
    ("attention-truncated-weights", lambda c, r: ["attention", "--checkpoint", str(_damaged_weights(c, r)),
     "--image", str(_image(c)), "--out", str(c / "figs")], 1, "not a readable safetensors file", "run"),
    ("export-random-weights", lambda c, r: ["export", "--checkpoint", str(_random_weights(c, r)), "--format",
     "onnx", "--out", str(c / "m.onnx")], 1, "not a readable safetensors file", "run"),
    ("convert-random-file", lambda c, r: ["convert", "--from-timm", str(_random_weights(c, r) / "model.safetensors"),
     "--out", str(c / "out")], 1, "not a readable safetensors file", "run"),
    ("convert-pickled-object", lambda c, r: ["convert", "--from-timm", str(_pickled_object(c)), "--out",
     str(c / "out")], 1, "refusing to unpickle it", None),
    ("eval-broken-config", lambda c, r: (lambda d: (d.joinpath("config.json").write_text("{not json"), ["eval",
     "--checkpoint", str(d)])[1])(_copy_run(c, r)), 1, "config.json is not valid JSON", "run"),
    ("eval-gpu-without-one", lambda c, r: ["eval", "--checkpoint", str(_copy_run(c, r)), "--accelerator", "gpu"], 2,
     "--accelerator gpu: this machine has no usable CUDA GPU", "run"),
    ("train-gpu-without-one", lambda c, r: ["train", "--resume", str(_copy_run(c, r)), "--accelerator", "gpu"], 2,
     "no usable CUDA GPU", "run"),
    ("resume-another-model", lambda c, r: ["train", "--resume", str(_copy_run(c, r)), "--model", "resnet26"], 2,
     "was trained with model_name='botnet26', this run has 'resnet26' (--model)", "run"),
    ("resume-torn-checkpoint", lambda c, r: ["train", "--resume", str(_torn_last(c, r))], 1,
     "cannot be read as a PyTorch checkpoint, truncated or damaged?", "run"),
    ("predict-missing-image", lambda c, r: ["predict", str(c / "nope.jpg"), "--checkpoint", str(_copy_run(c, r))], 1,
     "nope.jpg not found", "run"),
    ("eval-classifier-as-detector", lambda c, r: ["detect", "eval", "--checkpoint", str(_copy_run(c, r)), "--data",
     str(c)], 1, "classifier, not a detector", "run"),
    ("detect-missing-checkpoint", lambda c, r: ["detect", "predict", str(_image(c)), "--checkpoint", str(c / "nope"),
     "--out", str(c / "pred")], 1, "config.json not found", None),
    ("detect-eval-bad-json", lambda c, r: ["detect", "eval", "--checkpoint", str(_detector_run(c)), "--data",
     str(_coco(c, '{"images": ['))], 1, "cannot read COCO json", "det"),
    ("detect-eval-incomplete-json", lambda c, r: ["detect", "eval", "--checkpoint", str(_detector_run(c)), "--data",
     str(_coco(c, '{"images": [], "annotations": []}'))], 1, "not a COCO instances file, no list ['categories']",
     "det"),
    ("detect-train-missing-data", lambda c, r: ["detect", "train", "--data", str(c / "nowhere"), "--out",
     str(c / "det-run")], 1, "instances_train.json: cannot read COCO json", None),
    ("detect-backbone-pickled", lambda c, r: ["detect", "train", "--data", str(make_demo_data(c / "demo", 2, 1,
     (64, 64))["train"][0].parent), "--model", "fasterrcnn_botnet26_fpn", "--backbone-weights", str(_pickled_object(c)),
     "--out", str(c / "det-run")], 1, "refusing to unpickle it", None),
    ("eval-detector-as-classifier", lambda c, r: ["eval", "--checkpoint", str(_detector_run(c))], 1,
     "holds a detection model", "det"),
    ("train-bad-number", lambda c, r: ["train", "--epochs", "-1", "--out", str(c / "new")], 2,
     "--epochs must be at least 1", None),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("prepare", "code", "message", "protected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_gets_one_line_and_the_exit_code(
    prepare: Prepare, code: int, message: str, protected: str | None, run: Path, tmp_path: Path
) -> None:
    argv = prepare(tmp_path, run)
    before = _snapshot(tmp_path / protected) if protected else {}
    result = subprocess.run([*BOTNET, *argv], capture_output=True, text=True, timeout=300)
    err = result.stderr.strip()
    assert result.returncode == code, err
    assert "Traceback" not in result.stderr and len(err.splitlines()) == 1, err
    assert message in err, err
    if protected:
        assert _snapshot(tmp_path / protected) == before, "the command wrote where it had no right to"


def test_create_model_refuses_bad_numbers() -> None:
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        tiny_model(num_classes=-3)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_saves_and_resumes_to_the_same_weights(folder: Path, tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the training process and its two loader workers; the workers must leave it to
    the main process, which saves an interrupt checkpoint, exits 130 and prints the resume command."""
    argv = [*train_argv(folder, tmp_path / "x"), "--workers", "2", "--epochs", "3"]

    def argv_for(out: Path) -> list[str]:
        return [*argv[: argv.index("--out") + 1], str(out), *argv[argv.index("--out") + 2 :]]

    straight = subprocess.run([*BOTNET, "train", *argv_for(tmp_path / "straight")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "interrupted"
    process = subprocess.Popen(
        [*BOTNET, "train", *argv_for(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "last.ckpt").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first epoch's last.ckpt: training is under way
    time.sleep(0.3)  # into the second epoch
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "DataLoader worker" not in err and "Traceback" not in err, err
    assert f"botnet train --resume {out}" in err

    resumed = subprocess.run([*BOTNET, "train", "--resume", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    assert (
        json.loads((out / "config.json").read_text())["model_args"]
        == json.loads((tmp_path / "straight" / "config.json").read_text())["model_args"]
    )


def test_stale_temp_files_are_removed_at_the_next_start(folder: Path, tmp_path: Path) -> None:
    """What a writer killed with SIGKILL leaves: a hidden temporary file beside the checkpoint."""
    from botnet.cli import main

    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.ckpt.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", *train_argv(folder, out), "--epochs", "1"]) == 0
    assert not stale.exists() and (out / "last.ckpt").is_file()


def test_resume_last_falls_back_to_the_newest_intact_checkpoint(run: Path, tmp_path: Path) -> None:
    """A requeued job (``--resume last``) whose last.ckpt was torn goes on from the newest intact one, warning."""
    from botnet.cli import main

    copy = _torn_last(tmp_path, run)
    with pytest.warns(UserWarning, match=r"--resume last: .*last\.ckpt cannot be read.*resuming from .*best\.ckpt"):
        assert main(["train", "--resume", "last", "--out", str(copy)]) == 0
    assert (copy / "model.safetensors").is_file()
