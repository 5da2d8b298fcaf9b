"""``create_model``: a registered row (:mod:`botnet.models.registry`) built as a :class:`ResNet`."""

from __future__ import annotations

from typing import Any

from botnet.models.registry import resolve_model_args
from botnet.models.resnet import ResNet


def create_model(name: str, num_classes: int | None = None, in_chans: int = 3, **overrides: Any) -> ResNet:
    """Build a registered model.

    Args:
        name: a name from :func:`~botnet.models.list_models`.
        num_classes: classifier outputs (default: the row's, 1000).
        in_chans: input channels.
        **overrides: any :class:`~botnet.models.resnet.ResNet` argument, e.g. ``attention="c4,c5"``,
            ``num_heads=8``, ``pos_embed="absolute"``, ``img_size=320``, ``features_only=True``,
            ``out_indices=(1, 2, 3, 4)``, ``drop_path_rate=0.1``.

    Raises:
        ValueError: an unknown name (the closest names are suggested) or an override the model cannot take.
    """
    kwargs = resolve_model_args(name, num_classes, in_chans, **overrides)
    try:
        return ResNet(**kwargs)
    except TypeError as err:
        raise ValueError(f"{name}: bad override ({err})") from None
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
