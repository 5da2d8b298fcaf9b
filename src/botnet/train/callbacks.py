"""What a training run leaves on disk, written so that a crash or Ctrl-C never loses or tears it.

- :class:`AtomicCheckpointIO`: every Lightning ``.ckpt`` is written to a temporary file and renamed.
- :class:`SaveOnInterrupt`: Ctrl-C (SIGINT) and SIGTERM stop at the next step boundary and save ``last.ckpt``.
- :class:`ResumableRNG`: random-number-generator states travel in the checkpoint (and
  :class:`~botnet.train.data.ImageDataModule` continues an interrupted epoch where it stopped), so a resumed run
  trains on the same batches with the same random draws as an uninterrupted one.
- :class:`ExportPretrained`: ``model.safetensors`` + ``config.json`` at the end of training (any task).
- :class:`TrainingCurve`: ``training_curve.png`` (loss and top-1 per epoch) from the CSV logs.
"""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from botnet.checkpoint import atomic_write
from botnet.train.plots import plot_training_curve, read_epoch_metrics

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the target folder, then an atomic rename: a crash mid-write leaves the
    previous checkpoint intact instead of a torn one (Lightning's own writer opens the final path directly)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class SaveOnInterrupt(pl.Callback):
    """Make Ctrl-C behave like SIGTERM and leave a resumable ``last.ckpt`` in ``directory``.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next step boundary on every rank; this callback
    routes the first SIGINT there too (a second one aborts at once) and saves the checkpoint when either ends
    the fit.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LAST
        self._previous: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not earlier: Lightning snapshots the handlers before training and puts that snapshot back afterwards.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to abort now)", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler: stop every rank at the next step

    def _restore_handler(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handler()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handler()  # Lightning skips teardown hooks after an exception
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)) and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path)
            rank_zero_info(f"saved {self.path} (epoch {trainer.current_epoch}, step {trainer.global_step})")


class ResumableRNG(pl.Callback):
    """Save the Python, NumPy and torch generator states in each checkpoint and restore them on resume.

    Lightning restores model, optimizer, schedule and loop state but not these; with them, 1 epoch + resume +
    1 epoch gives the same weights as 2 epochs (with ``deterministic=True``).
    """

    def state_dict(self) -> dict[str, Any]:
        # Plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True).
        _, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class PretrainedModule(pl.LightningModule):
    """A LightningModule whose network ``self.model`` is exported as a pretrained folder (``model.safetensors`` +
    ``config.json``): subclasses say how, in :meth:`write_pretrained`."""

    def save_pretrained(
        self, directory: str | Path, state: dict[str, torch.Tensor] | None = None, extra: dict[str, Any] | None = None
    ) -> Path:
        """Export the network into ``directory``; ``state``: this module's state dict as gathered by the strategy
        (default: its own); ``extra`` goes into ``config.json``."""
        state = self.state_dict() if state is None else state
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        return self.write_pretrained(Path(directory), weights, extra or {})

    def write_pretrained(self, directory: Path, weights: dict[str, torch.Tensor], extra: dict[str, Any]) -> Path:
        raise NotImplementedError


class ExportPretrained(pl.Callback):
    """At the end of training, write the module's inference weights (the EMA weights when an EMA callback runs
    before this one) as ``model.safetensors`` + ``config.json`` in ``directory``, through the module's
    :meth:`PretrainedModule.save_pretrained` (classification and detection modules are ones), for
    ``botnet eval`` / ``predict`` / ``from_pretrained``. ``extra`` goes into ``config.json``.
    """

    def __init__(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.extra = extra or {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = trainer.strategy.lightning_module_state_dict()  # gathered on rank 0 under FSDP; collective
        if not trainer.is_global_zero:
            return
        assert isinstance(pl_module, PretrainedModule)
        pl_module.save_pretrained(self.directory, state, extra=self.extra)
        rank_zero_info(f"exported {self.directory / 'model.safetensors'} + config.json")


class TrainingCurve(pl.Callback):
    """At the end of training, plot loss and top-1 per epoch from every CSV log under ``log_root``
    (``version_*`` folders: a resumed run continues the curve) into ``path``."""

    def __init__(self, log_root: str | Path, path: str | Path) -> None:
        self.log_root = Path(log_root)
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()  # flush this run's rows to metrics.csv
        epochs = read_epoch_metrics(sorted(self.log_root.glob("version_*/metrics.csv"), key=_version))
        if epochs:
            plot_training_curve(epochs, self.path)
            rank_zero_info(f"wrote {self.path}")


def _version(path: Path) -> int:
    return int(path.parent.name.removeprefix("version_"))
