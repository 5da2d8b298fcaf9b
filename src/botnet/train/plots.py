"""Figures of a run: the training curve (from Lightning's CSV logs) and the confusion matrix."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from torchmetrics.classification import MulticlassConfusionMatrix

from botnet.viz.figures import save_figure

CURVES = {"loss": ("train/loss_epoch", "val/loss"), "top-1 (%)": ("val/top1",)}


def read_epoch_metrics(csv_paths: Iterable[Path]) -> dict[int, dict[str, float]]:
    """Per epoch, the last logged value of each metric in Lightning ``metrics.csv`` files (later files win)."""
    epochs: dict[int, dict[str, float]] = {}
    for path in csv_paths:
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                if not row.get("epoch"):
                    continue
                values = epochs.setdefault(int(float(row["epoch"])), {})
                values.update({key: float(value) for key, value in row.items() if value and key != "epoch"})
    return dict(sorted(epochs.items()))


def plot_training_curve(epochs: dict[int, dict[str, float]], path: str | Path) -> Path:
    """Loss (train, val) and val top-1 against the epoch number (1-based)."""
    figure, axes = plt.subplots(1, len(CURVES), figsize=(10, 3.6))
    for ax, (title, keys) in zip(axes, CURVES.items(), strict=True):
        for key in keys:
            points = [(epoch + 1, values[key]) for epoch, values in epochs.items() if key in values]
            if points:
                xs, ys = zip(*points, strict=True)
                scale = 100.0 if "top" in key else 1.0
                ax.plot(xs, [y * scale for y in ys], marker="o", markersize=3, label=key)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(figure, path, dpi=120, tight=True)


def plot_confusion_matrix(matrix: MulticlassConfusionMatrix, class_names: Sequence[str], path: str | Path) -> Path:
    """The accumulated confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    labels = list(class_names) if len(class_names) <= 30 else None  # beyond that the tick labels are unreadable
    figure, ax = matrix.plot(add_text=len(class_names) <= 20, labels=labels)
    ax.set_title(f"confusion matrix ({int(matrix.compute().sum())} images)")
    figure.set_size_inches(max(4.0, 0.45 * len(class_names) + 2), max(4.0, 0.45 * len(class_names) + 2))
    return save_figure(figure, path, dpi=120, tight=True)
