"""Opt-in: build the botnet models with ``timm.create_model`` (``register_with_timm()``, never on import).

timm's ``register_model`` keys an entrypoint function by its ``__name__``, appends it to the defining module's
``__all__`` and, for a name it already has, warns and replaces timm's own model (``resnet50``, ...). So every
row is registered under a prefix (``botnet_botnet50``, ``botnet_timm_botnet26t_256``, ...) through generated
entrypoint functions; ``pretrained=True`` raises, as botnet publishes no weights on timm's hub.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botnet.models.factory import create_model
from botnet.models.registry import list_models
from botnet.models.resnet import ResNet

__all__ = ["register_with_timm"]  # timm's register_model appends the entrypoint names here

PREFIX = "botnet_"


def _entrypoint(name: str, timm_name: str) -> Callable[..., ResNet]:
    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> ResNet:
        # timm passes the pretrained_cfg* / cache_dir keywords to every entrypoint; they have no use here.
        if pretrained:
            raise ValueError(
                f"{timm_name}: botnet has no weights on timm's hub; load a checkpoint with botnet.from_pretrained "
                "or timm BoTNet weights with botnet.convert.from_timm"
            )
        return create_model(name, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"botnet.create_model({name!r}, **kwargs), for timm.create_model({timm_name!r})."
    return entrypoint


def register_with_timm(prefix: str = PREFIX) -> list[str]:
    """Register every botnet model in timm's registry as ``prefix + name``; returns those names.

    Calling it again is a no-op. ``ValueError`` when a name is already one of timm's (or another package's)
    models, e.g. with ``prefix=""``: ``resnet50`` would replace timm's.
    """
    from timm.models import is_model, model_entrypoint, register_model

    names = []
    for name in list_models():
        timm_name = prefix + name
        if not is_model(timm_name):
            register_model(_entrypoint(name, timm_name))
        elif model_entrypoint(timm_name).__module__ != __name__:
            raise ValueError(f"timm already has a model {timm_name!r}; choose another prefix than {prefix!r}")
        names.append(timm_name)
    return names
