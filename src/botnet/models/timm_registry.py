"""Opt-in: build the botnet models with ``timm.create_model`` (``register_with_timm()``, never on import).

timm's ``register_model`` keys an entrypoint function by its ``__name__``, appends it to the defining module's
``__all__``, registers the pretrained cfg it finds under that name in the module's ``default_cfgs`` and, for a
name it already has, warns and replaces timm's own model (``resnet50``, ...). So every row is registered under
a prefix (``botnet_botnet50``, ``botnet_timm_botnet26t_256``, ...) through generated entrypoint functions, each
with its row's pretrained cfg. botnet publishes no weights: ``pretrained=True`` needs
``pretrained_cfg_overlay=dict(file=...)`` (a torchvision / timm ResNet or botnet checkpoint, loaded partially).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from botnet.models.factory import create_model
from botnet.models.features import FeatureListNet
from botnet.models.registry import list_models
from botnet.models.resnet import ResNet

__all__ = ["register_with_timm"]  # timm's register_model appends the entrypoint names here
default_cfgs: dict[str, dict[str, Any]] = {}  # timm's register_model reads the pretrained cfgs here

PREFIX = "botnet_"


def _entrypoint(name: str, timm_name: str) -> Callable[..., ResNet | FeatureListNet]:
    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: dict[str, Any] | None = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> ResNet | FeatureListNet:
        # timm passes these keywords to every entrypoint: pretrained_cfg (a dict, or a tag from "name.tag") and
        # the overlay update the model's cfg; cache_dir has no use, nothing is downloaded.
        if pretrained_cfg is not None and not isinstance(pretrained_cfg, dict):
            raise ValueError(f"{timm_name}: botnet models have no pretrained tags ({pretrained_cfg!r})")
        overlay = {**(pretrained_cfg or {}), **(pretrained_cfg_overlay or {}), "architecture": timm_name}
        return create_model(name, pretrained, pretrained_cfg_overlay=overlay, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"botnet.create_model({name!r}, ...), for timm.create_model({timm_name!r}, ...)."
    return entrypoint


def register_with_timm(prefix: str = PREFIX) -> list[str]:
    """Register every botnet model and its pretrained cfg in timm's registry as ``prefix + name``; returns those
    names.

    Calling it again is a no-op. ``ValueError`` when a name is already one of timm's (or another package's)
    models, e.g. with ``prefix=""``: ``resnet50`` would replace timm's.
    """
    from timm.models import is_model, model_entrypoint, register_model

    names = []
    for name in list_models():
        timm_name = prefix + name
        if not is_model(timm_name):
            with torch.device("meta"):  # the cfg needs the architecture (pool size, minimum input), not weights
                default_cfgs[timm_name] = create_model(name).pretrained_cfg
            register_model(_entrypoint(name, timm_name))
        elif model_entrypoint(timm_name).__module__ != __name__:
            raise ValueError(f"timm already has a model {timm_name!r}; choose another prefix than {prefix!r}")
        names.append(timm_name)
    return names
