"""``create_model``: a registered row (:mod:`botnet.models.registry`) built as a :class:`ResNet`, timm-style.

Weights are never downloaded: ``pretrained`` names a local file (a torchvision / timm ResNet state dict, a botnet
checkpoint, a ``save_pretrained`` folder), loaded partially with a report of what fitted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from botnet.checkpoint import CheckpointError, LoadResult, load_weights
from botnet.models.features import FeatureListNet
from botnet.models.registry import resolve_model_args
from botnet.models.resnet import ResNet

logger = logging.getLogger(__name__)
FEATURE_CLS = (None, "getter")  # timm's feature_cls values the features_only wrapper stands for
WeightsSource = str | os.PathLike | Mapping[str, torch.Tensor]


def load_pretrained(model: ResNet, source: WeightsSource, exclude: Sequence[str] = ()) -> LoadResult:
    """Warm-start ``model`` from the tensors of ``source`` that fit it; returns what was loaded and what was left.

    ``source`` is any file :func:`botnet.checkpoint.read_weights` reads (safetensors, ``.pth`` / ``.pt`` /
    ``.ckpt``, a ``save_pretrained`` folder) or a state dict. Tensors with the model's names and shapes load;
    the rest are reported (logged, and in the result), e.g. a torchvision ResNet-50 into ``botnet50``: 317 of
    its 320 tensors load, its three c5 3x3 convs have no place, the MHSA projections and position tables keep
    their initialisation. Position tables are resampled to the model's. Keys starting with a prefix in
    ``exclude`` (e.g. ``"fc."``) are left out. :class:`CheckpointError` when nothing fits (a file for another
    architecture).
    """
    result = load_weights(model, source, strict=False, exclude=exclude)
    name = "the state dict" if isinstance(source, Mapping) else str(source)
    if not result.loaded:
        raise CheckpointError(f"{name}: none of its tensors fit {model.model_name} ({result.summary()})")
    level = logging.INFO if result.complete else logging.WARNING
    logger.log(level, "%s from %s: %s", model.model_name, name, result.summary())
    return result


def create_model(
    name: str,
    pretrained: bool | WeightsSource = False,
    *,
    num_classes: int | None = None,
    in_chans: int = 3,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3, 4),
    feature_cls: str | None = None,
    **overrides: Any,
) -> ResNet | FeatureListNet:
    """Build a registered model, as ``timm.create_model`` does.

    Args:
        name: a name from :func:`~botnet.models.list_models`.
        pretrained: ``False`` (random init), a weights file / folder / state dict to warm-start from
            (:func:`load_pretrained`: what fits loads, the rest is reported), or ``True``: the file named by
            ``pretrained_cfg_overlay=dict(file=...)`` (botnet publishes no weights, so without one it raises).
        num_classes: classifier outputs (default: the row's, 1000; 0 for none).
        in_chans: input channels.
        checkpoint_path: weights loaded strictly after building (every tensor must fit), e.g. a finished run's.
        pretrained_cfg_overlay: updates of the model's ``pretrained_cfg`` (timm keys), ``file`` for ``pretrained``.
        features_only: return a :class:`~botnet.models.features.FeatureListNet`, whose forward gives the maps of
            ``out_indices`` (0: stem, 1-4: ``layer1..4``), instead of the classifier.
        out_indices: the maps ``features_only`` returns.
        feature_cls: timm's name of the feature wrapper: ``None`` or ``"getter"`` (both this wrapper).
        **overrides: any :class:`~botnet.models.resnet.ResNet` argument, e.g. ``attention="c4,c5"``,
            ``num_heads=8``, ``pos_embed="absolute"``, ``img_size=320``, ``global_pool=""``, ``drop_path_rate=0.1``.

    Raises:
        ValueError: an unknown name (the closest names are suggested), an override the model cannot take or
            ``pretrained=True`` without a file.
        CheckpointError: weights that cannot be read, none of which fit (``pretrained``), or that do not all fit
            (``checkpoint_path``).
    """
    overlay = dict(pretrained_cfg_overlay or {})
    weights = overlay.pop("file", None) if pretrained is True else pretrained
    if pretrained is True and weights is None:
        raise ValueError(
            f"{name}: botnet has no published weights; pass a file: pretrained='resnet50.pth' (a torchvision or timm "
            "ResNet state dict, a botnet checkpoint or run folder) or pretrained_cfg_overlay=dict(file=...)"
        )
    if feature_cls not in FEATURE_CLS:
        raise ValueError(f"{name}: feature_cls={feature_cls!r} is not supported; use None or 'getter'")
    kwargs = resolve_model_args(name, num_classes, in_chans, **overrides)
    kwargs["pretrained_cfg"].update(overlay)
    try:
        model = ResNet(**kwargs)
    except TypeError as err:
        raise ValueError(f"{name}: bad override ({err})") from None
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if weights is not False:
        load_pretrained(model, weights)
    if checkpoint_path is not None:
        load_weights(model, checkpoint_path)
    return FeatureListNet(model, out_indices) if features_only else model
