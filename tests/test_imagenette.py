"""``--data imagenette:PATH[:NOISE]``: the official Imagenette tree read through ``noisy_imagenette.csv`` (split from
``is_valid``, labels from the chosen ``noisy_labels_N`` column), trained and evaluated from the CLI, and one-line
errors for a bad csv or missing files. The tree is generated in the real layout: synset folders, tiny JPEGs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from botnet.cli import main
from botnet.data import IMAGENETTE_CSV, NOISE_LEVELS, ImagenetteFolder, parse_imagenette
from conftest import train_argv

SYNSETS = ("n01440764", "n02102040", "n02979186")  # tench, English springer, cassette player
TRAIN, VAL = 4, 2  # images per class and split
COLUMNS = ["path", *(f"noisy_labels_{n}" for n in NOISE_LEVELS), "is_valid"]


def _noisy(label: str, index: int, noise: int) -> str:
    """A deterministic stand-in for the csv's noisy labels: at 25 every 4th, at 50 every 2nd train label moves on."""
    every = {25: 4, 50: 2}.get(noise)
    return SYNSETS[(SYNSETS.index(label) + 1) % len(SYNSETS)] if every and index % every == 0 else label


def write_imagenette(root: Path) -> list[dict[str, str]]:
    """``root/{train,val}/<synset>/<synset>_<i>.JPEG`` and ``root/noisy_imagenette.csv``; returns the csv rows.

    One validation image is stored under ``train/`` (with ``is_valid`` True): the split must come from the csv.
    """
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", TRAIN), ("val", VAL)):
        for c, synset in enumerate(SYNSETS):
            for i in range(count):
                folder = "train" if (split, c, i) == ("val", 0, 0) else split
                path = f"{folder}/{synset}/{synset}_{split}{i}.JPEG"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                pixels = np.clip(60 * c + rng.normal(60, 20, (24, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / path, "JPEG")
                index = len(rows)
                labels = {
                    f"noisy_labels_{n}": _noisy(synset, index, n) if split == "train" else synset for n in NOISE_LEVELS
                }
                rows.append({"path": path, **labels, "is_valid": str(split == "val")})
    write_csv(root, rows)
    return rows


def write_csv(root: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> None:
    with (root / IMAGENETTE_CSV).open("w", newline="") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("imagenette2-320")
    return root, write_imagenette(root)


@pytest.mark.parametrize("noise", NOISE_LEVELS)
def test_split_from_is_valid_and_labels_from_the_noise_column(
    tree: tuple[Path, list[dict[str, str]]], noise: int
) -> None:
    root, rows = tree
    for split in ("train", "val"):
        dataset = ImagenetteFolder(root, split, noise)
        listed = [row for row in rows if row["is_valid"] == str(split == "val")]
        assert dataset.classes == list(SYNSETS)
        assert [Path(path).relative_to(root).as_posix() for path, _ in dataset.samples] == [r["path"] for r in listed]
        assert dataset.targets == [SYNSETS.index(r[f"noisy_labels_{noise}"]) for r in listed]
        image, label = dataset[0]
        assert image.mode == "RGB" and label == dataset.targets[0]
    val = ImagenetteFolder(root, "val", noise)
    assert f"train/{SYNSETS[0]}/{SYNSETS[0]}_val0.JPEG" in {
        Path(p).relative_to(root).as_posix() for p, _ in val.samples
    }
    if noise >= 25:  # the noisy column really differs from the clean one
        assert ImagenetteFolder(root, "train", noise).targets != ImagenetteFolder(root, "train", 0).targets


def test_data_spec_parses() -> None:
    assert parse_imagenette("imagenette:/data/imagenette2-320") == (Path("/data/imagenette2-320"), 0)
    assert parse_imagenette("imagenette:/data/imagenette2-320:25") == (Path("/data/imagenette2-320"), 25)
    with pytest.raises(ValueError, match="one of 0, 1, 5, 25, 50"):
        parse_imagenette("imagenette:/data/x:3")


@pytest.mark.slow
def test_train_and_eval_on_imagenette(
    tree: tuple[Path, list[dict[str, str]]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, rows = tree
    out = tmp_path / "run"
    argv = train_argv(Path(f"imagenette:{root}:50"), out, "--epochs", "1")
    assert main(["train", *argv]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["extra"]["class_names"] == list(SYNSETS)
    assert config["extra"]["data"] == f"imagenette:{root.resolve()}:50"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--json", "--accelerator", "cpu", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == sum(row["is_valid"] == "True" for row in rows)


def _no_csv(root: Path, rows: list[dict[str, str]]) -> str:
    (root / IMAGENETTE_CSV).unlink()
    return f"{root} has no {IMAGENETTE_CSV}"


def _no_column(root: Path, rows: list[dict[str, str]]) -> str:
    write_csv(root, rows, [c for c in COLUMNS if c != "noisy_labels_50"])
    return f"{root / IMAGENETTE_CSV}: no column noisy_labels_50"


def _bad_is_valid(root: Path, rows: list[dict[str, str]]) -> str:
    write_csv(root, [{**rows[0], "is_valid": "yes"}, *rows[1:]])
    return f"{root / IMAGENETTE_CSV} line 2: is_valid must be True or False, not 'yes'"


def _unknown_label(root: Path, rows: list[dict[str, str]]) -> str:
    write_csv(root, [*rows[:-1], {**rows[-1], "noisy_labels_50": "n99999999"}])
    return f"{root / IMAGENETTE_CSV} line {len(rows) + 1}: label 'n99999999' is not one of the class folders"


def _missing_image(root: Path, rows: list[dict[str, str]]) -> str:
    (root / rows[3]["path"]).unlink()
    return f"{root}: 1 images listed in {IMAGENETTE_CSV} are missing, e.g. {rows[3]['path']}"


def _no_folder(root: Path, rows: list[dict[str, str]]) -> str:
    shutil.rmtree(root)
    return f"Imagenette folder {root} not found"


@pytest.mark.parametrize("damage", [_no_csv, _no_column, _bad_is_valid, _unknown_label, _missing_image, _no_folder])
def test_bad_tree_fails_with_one_line(
    tree: tuple[Path, list[dict[str, str]]], tmp_path: Path, damage, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "imagenette"
    shutil.copytree(tree[0], root)
    expected = damage(root, tree[1])
    assert main(["train", "--data", f"imagenette:{root}:50", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"botnet train: error: {expected}"), err
    assert not (tmp_path / "run").exists()


def test_unknown_noise_level_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", f"imagenette:{tmp_path}:3", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "Imagenette's label noise is one of 0, 1, 5, 25, 50 (per cent), not 3" in capsys.readouterr().err
