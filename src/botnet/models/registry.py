"""Model registry: each architecture is a :class:`ModelCfg` row, resolved to ``ResNet`` arguments by name.

Pure data: this module imports no model code (:func:`botnet.models.create_model` builds the rows).
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The keys of timm's ``PretrainedCfg``: a model's ``pretrained_cfg`` holds these only, so that timm reads it.
PRETRAINED_CFG_KEYS = (
    "url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag", "custom_load",
    "input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation", "crop_pct",
    "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "label_offset", "label_names", "label_descriptions",
    "pool_size", "test_pool_size", "first_conv", "classifier", "license", "description", "origin_url", "paper_name",
    "paper_ids", "notes",
)  # fmt: skip
# What a row knows that is not timm metadata (where the row comes from, the paper's figures).
LIBRARY_KEYS = ("name", "paper", "paper_params", "tags")


@dataclass(frozen=True)
class ModelCfg:
    """One registered architecture: the :class:`ResNet` arguments, timm-style metadata and the library's facts.

    ``arch`` holds the constructor arguments; ``input_size``, ``mean``/``std``, ``crop_pct``, ``interpolation``
    and ``num_classes`` describe the expected input and output (they go into the model's ``pretrained_cfg``);
    ``paper``, ``paper_params`` (millions, for the parameter-count tests) and ``tags`` say where the row comes
    from and stay here (:data:`LIBRARY_KEYS`).
    """

    name: str
    arch: dict[str, Any]
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    num_classes: int = 1000
    paper: str = ""
    paper_params: float | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def pretrained_cfg(self) -> dict[str, Any]:
        """The row's part of the model's ``pretrained_cfg`` (timm keys only; the model adds the rest)."""
        return {k: v for k, v in asdict(self).items() if k != "arch" and k not in LIBRARY_KEYS}


_REGISTRY: dict[str, ModelCfg] = {}


def register_model(cfg: ModelCfg) -> ModelCfg:
    """Add ``cfg`` to the registry; names are unique."""
    if cfg.name in _REGISTRY:
        raise ValueError(f"model {cfg.name!r} is already registered")
    _REGISTRY[cfg.name] = cfg
    return cfg


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_model_cfg(name: str) -> ModelCfg:
    """The registered row for ``name``; ``ValueError`` naming the closest names when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (botnet.list_models() lists all)") from None


def resolve_model_args(name: str, num_classes: int | None = None, in_chans: int = 3, **overrides: Any) -> dict:
    """The :class:`~botnet.models.resnet.ResNet` keyword arguments of row ``name`` with ``overrides`` applied.

    The row's ``arch``, its input size as ``img_size``, ``num_classes`` (default: the row's), ``in_chans``,
    ``model_name`` and the row's metadata as ``pretrained_cfg``; any ``overrides`` win.
    """
    cfg = get_model_cfg(name)
    kwargs: dict[str, Any] = dict(cfg.arch, img_size=cfg.input_size[1:])
    kwargs.update(overrides)
    kwargs.update(
        num_classes=cfg.num_classes if num_classes is None else num_classes,
        in_chans=in_chans,
        model_name=name,
        pretrained_cfg=cfg.pretrained_cfg(),
    )
    return kwargs
