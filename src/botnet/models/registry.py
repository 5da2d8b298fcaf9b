"""Model registry: each architecture is a :class:`ModelCfg` row; ``create_model`` builds one by name."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

from botnet.models.resnet import ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE_NAMES = ("c2", "c3", "c4", "c5")


@dataclass(frozen=True)
class ModelCfg:
    """One registered architecture: the :class:`ResNet` arguments plus timm-style metadata.

    ``arch`` holds the constructor arguments; the rest describes the expected input (``input_size``,
    ``mean``/``std``, ``crop_pct``, ``interpolation``) and where the row comes from (``paper``,
    ``paper_params`` in millions, for the parameter-count tests).
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
        """timm-style metadata dict (``default_cfg``)."""
        cfg = asdict(self)
        cfg.pop("arch")
        cfg.update(first_conv=first_conv(self.arch), classifier="fc", fixed_input_size=False)
        return cfg


def first_conv(arch: dict[str, Any]) -> str:
    """Name of the first conv (timm's ``first_conv``): the tiered stem's is ``conv1.0``."""
    return "conv1.0" if arch.get("stem") == "tiered" else "conv1"


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


def parse_attention(value: Any, num_stages: int = 4) -> tuple[bool | int, ...]:
    """Normalise the ``attention`` override.

    Accepts a per-stage sequence of bools / ints (ints: the last k blocks) / sequences of block indices, or a
    string of stage names: ``"c5"``, ``"c4,c5"``, ``"none"``.
    """
    if isinstance(value, str):
        names = [n.strip().lower() for n in value.replace("+", ",").split(",") if n.strip()]
        if names in ([], ["none"]):
            return (False,) * num_stages
        unknown = [n for n in names if n not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r} in attention={value!r}; use names from {STAGE_NAMES}")
        return tuple(name in names for name in STAGE_NAMES)
    value = tuple(value)
    if len(value) != num_stages or not all(_is_stage_entry(v) for v in value):
        raise ValueError(
            f"attention={value!r} needs {num_stages} per-stage entries (bool, int = last k blocks, or a list of "
            'block indices), or stage names such as "c5" or "c4,c5"'
        )
    return tuple(v if isinstance(v, int) else tuple(v) for v in value)


def _is_stage_entry(value: Any) -> bool:
    """bool, int, or a list / tuple of block indices (JSON turns tuples into lists)."""
    return isinstance(value, int) or (isinstance(value, (list, tuple)) and all(isinstance(i, int) for i in value))


def create_model(name: str, num_classes: int | None = None, in_chans: int = 3, **overrides: Any) -> ResNet:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs (default: the row's, 1000).
        in_chans: input channels.
        **overrides: any :class:`~botnet.models.resnet.ResNet` argument, e.g. ``attention="c4,c5"``,
            ``num_heads=8``, ``pos_embed="absolute"``, ``img_size=320``, ``features_only=True``,
            ``out_indices=(1, 2, 3, 4)``, ``drop_path_rate=0.1``.
    """
    cfg = get_model_cfg(name)
    kwargs: dict[str, Any] = dict(cfg.arch, img_size=cfg.input_size[1:])
    kwargs.update(overrides)
    if "attention" in kwargs:
        kwargs["attention"] = parse_attention(kwargs["attention"], len(kwargs.get("layers", STAGE_NAMES)))
    kwargs["num_classes"] = cfg.num_classes if num_classes is None else num_classes
    try:
        model = ResNet(in_chans=in_chans, **kwargs)
    except TypeError as err:
        raise ValueError(f"{name}: bad override ({err})") from None
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    img_size = kwargs["img_size"]
    img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    pretrained = cfg.pretrained_cfg()
    pretrained.update(
        input_size=(in_chans, *img_size),
        num_classes=model.num_classes,
        architecture=name,
        first_conv=first_conv(kwargs),
    )
    if in_chans != len(cfg.mean):
        mean, std = sum(cfg.mean) / len(cfg.mean), sum(cfg.std) / len(cfg.std)
        pretrained.update(mean=(mean,) * in_chans, std=(std,) * in_chans)  # grey: the channels' average
    model.pretrained_cfg = pretrained
    model.default_cfg = pretrained
    model.model_name = name
    model.model_kwargs = {k: v for k, v in overrides.items()}
    return model
