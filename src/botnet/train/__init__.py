"""Training, evaluation and prediction with PyTorch Lightning: ``ImageClassifier`` (LightningModule),
``ImageDataModule`` (ImageFolder trees and the embedded ``mnist5k``), the run's callbacks, and :mod:`botnet.train.run`
(``fit`` / ``evaluate`` / ``predict``, which ``botnet train`` / ``eval`` / ``predict`` wrap)."""

from botnet.train.data import ImageDataModule, build_transform
from botnet.train.module import ImageClassifier

__all__ = ["ImageClassifier", "ImageDataModule", "build_transform"]

_MOVED = {"CheckedImageFolder", "MNIST5k", "load_image"}  # to botnet.data (one image loader for every command)


def __getattr__(name: str) -> object:
    if name in _MOVED:
        import warnings

        import botnet.data

        warnings.warn(f"botnet.train.{name} moved to botnet.data.{name}", DeprecationWarning, stacklevel=2)
        return getattr(botnet.data, name)
    raise AttributeError(f"module 'botnet.train' has no attribute {name!r}")
