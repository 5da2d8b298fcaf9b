"""Offline ``save_pretrained`` / ``from_pretrained``: ``model.safetensors`` + ``config.json``, no pickle.

``config.json`` holds what rebuilds the model (``architecture``, ``num_classes``, ``in_chans`` and the
``create_model`` ``overrides``), its ``pretrained_cfg`` (input size, mean/std) and free-form ``extra``
(e.g. ``class_names``). Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from botnet.layers import fit_position_tables
from botnet.models import ResNet, create_model

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (atomic on one filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def model_config(model: ResNet) -> dict[str, Any]:
    """The ``config.json`` content that rebuilds ``model`` (it must come from :func:`botnet.create_model`)."""
    if not hasattr(model, "model_name"):
        raise ValueError("save_pretrained needs a model built by botnet.create_model (it records the architecture)")
    return _jsonable(
        {
            "architecture": model.model_name,
            "num_classes": model.num_classes,
            "in_chans": model.in_chans,
            "overrides": model.model_kwargs,
            "pretrained_cfg": model.pretrained_cfg,
        }
    )


def save_pretrained(model: ResNet, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``; returns the directory."""
    directory = Path(directory)
    config = model_config(model)
    config["extra"] = _jsonable(extra or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``config.json`` of a checkpoint directory, with a clear error when it is missing or broken."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: point to a directory written by save_pretrained / botnet train")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from None
    if "architecture" not in config:
        raise ValueError(f"{path} has no 'architecture' entry; it was not written by botnet")
    return config


def load_weights(model: torch.nn.Module, path: str | os.PathLike, architecture: str = "") -> None:
    """Load a safetensors file into ``model`` strictly; a mismatch names missing / unexpected / misshapen keys.

    Position tables learned for another resolution are resampled to the model's (:func:`fit_position_tables`).
    """
    state = fit_position_tables(load_file(str(path)), model)  # tables learned at another resolution
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or misshapen:
        trained = f" (the file was trained for {architecture})" if architecture else ""
        parts = [f"{path} does not match the model{trained}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshapen)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"  {label}: {shown}")
        raise ValueError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def from_pretrained(directory: str | os.PathLike, **overrides: Any) -> ResNet:
    """Rebuild a model from ``config.json`` and load ``model.safetensors`` (no pickle is ever loaded).

    ``overrides`` change construction arguments that do not change the weights' shapes (e.g. ``drop_path_rate``).
    """
    directory = Path(directory)
    config = load_config(directory)
    kwargs = dict(config.get("overrides", {}))
    kwargs.update(overrides)
    model = create_model(
        config["architecture"], num_classes=config["num_classes"], in_chans=config["in_chans"], **kwargs
    )
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found next to {CONFIG_NAME}")
    load_weights(model, weights, config["architecture"])
    saved = config.get("pretrained_cfg", {})  # e.g. the crop_pct / mean / std it was trained with
    model.pretrained_cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    return model
