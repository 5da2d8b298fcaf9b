"""Reading and writing weights and run artefacts: the one place that touches checkpoint files.

* Weights are written as safetensors; read from ``.safetensors``, or from ``.pth`` / ``.pt`` / ``.bin`` /
  Lightning ``.ckpt`` files with ``torch.load(weights_only=True)``: no file is ever unpickled into objects.
* A pretrained directory holds ``model.safetensors`` + ``config.json`` (what rebuilds the model, its
  ``pretrained_cfg`` and free-form ``extra``); classification and detection runs both export one.
* Every file is written to a temporary name in its folder and renamed: a crash leaves the old file or the new
  one, never a torn one. :func:`clean_stale_temps` removes what a killed writer left behind.
* Every failure to read is a :class:`CheckpointError` whose message is one line naming the file and the fix.

This module imports nothing of ``botnet`` but :func:`botnet.layers.fit_position_tables`, so models, training,
detection, visualisation, conversion and export can all use it.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from botnet.layers.position import fit_position_tables

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TMP_SUFFIX = ".tmp"
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


class CheckpointError(ValueError):
    """A weights, config or run file that is missing, truncated, foreign or does not fit (one-line message)."""


# --- writing -------------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (atomic on one filesystem); returns ``path``.

    The temporary file is ``.<name>.<random>.tmp`` beside ``path``; it is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` that a killed process left in ``folder``; returns them.

    Call it only where no other process of the same run is writing (e.g. at the start of a run, on rank 0).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (JSON has no tuples)."""
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented JSON atomically."""
    return write_text(path, json.dumps(jsonable(value), indent=2) + "\n")


def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a state dict as safetensors atomically (tensors made contiguous and moved to the CPU)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def save_pretrained_files(directory: str | os.PathLike, state: Mapping[str, torch.Tensor], config: dict) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``; returns the directory."""
    directory = Path(directory)
    save_weights(state, directory / WEIGHTS_NAME)
    write_json(directory / CONFIG_NAME, config)
    return directory


# --- reading -------------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; :class:`CheckpointError` naming the file when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found ({what})")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({_first_line(err)}); the {what} is damaged") from None


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a pretrained directory (or of the directory holding a given file), checked."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: point to a folder written by save_pretrained / botnet train / botnet detect train"
        )
    config = read_json(path, "checkpoint config")
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointError(f"{path} has no 'architecture' entry; it was not written by botnet")
    return config


def pretrained_weights_path(directory: str | os.PathLike) -> Path:
    """``directory/model.safetensors``, checked to exist."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found next to {CONFIG_NAME}: the checkpoint folder is incomplete")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A ``torch.save`` file (``.pth``, ``.pt``, Lightning ``.ckpt``) as plain data, read with ``weights_only``.

    Raises :class:`CheckpointError` for a missing, truncated or foreign file, and for one that needs arbitrary
    objects unpickled (refused: only tensors and plain Python types are read).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} holds pickled Python objects besides tensors; refusing to unpickle it "
                "(save a state_dict, or convert the file to safetensors)"
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({_first_line(err)})") from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path} cannot be read as a PyTorch checkpoint, truncated or damaged? ({_first_line(err)})"
        ) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a {type(value).__name__}, not a checkpoint dict")
    return value


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a ``torch.save`` state dict (read ``weights_only``).

    A pretrained directory means its ``model.safetensors``. A checkpoint that wraps its weights (``{"state_dict":
    ...}``, ``{"model": ...}``, Lightning's ``.ckpt``) is unwrapped, and a prefix shared by every key (``model.``,
    ``module.``) is stripped.
    """
    path = Path(path)
    if path.is_dir():
        path = pretrained_weights_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        state = read_checkpoint(path)
        for wrapper in _WRAPPERS:
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return _strip_common_prefix(state)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file, truncated or damaged? ({_first_line(err)})"
        ) from None


def _strip_common_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("model.", "module."):
        if all(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# --- loading into a model ------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What :func:`load_weights` did: keys loaded, and the model's keys the file lacked / had in another shape,
    and the file's keys the model does not have."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshapen: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.misshapen)

    def summary(self) -> str:
        """One line: ``"loaded 317 of 320 tensors; missing: layer4.0.conv2.qkv (3 tensors)"``."""
        total = len(self.loaded) + len(self.missing) + len(self.misshapen)
        parts = [f"loaded {len(self.loaded)} of {total} tensors"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                parts.append(f"{label}: {_modules(keys)}")
        if self.misshapen:
            more = f", ... ({len(self.misshapen)} in all)" if len(self.misshapen) > 3 else ""
            parts.append(f"shape mismatch: {', '.join(self.misshapen[:3])}{more}")
        return "; ".join(parts)


def _modules(keys: Iterable[str]) -> str:
    """Keys grouped by module (``layer3.1.conv2.qkv.weight`` -> ``layer3.1.conv2.qkv``), for short messages."""
    keys = list(keys)
    modules = list(dict.fromkeys(key.rpartition(".")[0] or key for key in keys))
    shown = ", ".join(modules[:8]) + (", ..." if len(modules) > 8 else "")
    return f"{shown} ({len(keys)} tensors)"


def load_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    exclude: Iterable[str] = (),
    trained_for: str = "",
) -> LoadResult:
    """Load a weights file (any format of :func:`read_weights`) or a state dict into ``model``.

    Relative position tables learned at another resolution are resampled to the model's
    (:func:`~botnet.layers.fit_position_tables`). Keys starting with a prefix in ``exclude`` (e.g. ``"fc."``)
    are left out. ``strict``: any missing, unexpected or misshapen key is a :class:`CheckpointError` naming them
    (and ``trained_for``, the file's architecture, if known) and nothing is loaded. Otherwise the tensors that
    fit are loaded and the :class:`LoadResult` says what was left.
    """
    name = "the state dict" if isinstance(source, Mapping) else str(source)
    state = dict(source) if isinstance(source, Mapping) else read_weights(source)
    exclude = tuple(exclude)
    state = fit_position_tables({k: v for k, v in state.items() if not (exclude and k.startswith(exclude))}, model)
    own = {k: v for k, v in model.state_dict().items() if not (exclude and k.startswith(exclude))}
    result = compare_state(own, state)
    if strict and not result.complete:
        trained = f" (the file was trained for {trained_for})" if trained_for else ""
        raise CheckpointError(f"{name} does not match the model{trained}: {result.summary()}")
    model.load_state_dict({k: state[k] for k in result.loaded}, strict=False)
    return result


def compare_state(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> LoadResult:
    """Which keys of ``state`` fit a model whose state dict is ``own`` (shapes only; meta tensors work)."""
    result = LoadResult(missing=[k for k in own if k not in state], unexpected=sorted(set(state) - set(own)))
    for key, value in own.items():
        if key in state:
            if state[key].shape == value.shape:
                result.loaded.append(key)
            else:
                result.misshapen.append(f"{key}: file {tuple(state[key].shape)} vs model {tuple(value.shape)}")
    return result
