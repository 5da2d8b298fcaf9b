"""BoTNet (or ResNet) + feature pyramid: the backbone torchvision's Mask R-CNN / Faster R-CNN take.

The result is torchvision's own :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN` around a
registered :func:`botnet.create_model` network, so its state-dict keys are those of torchvision's
``resnet_fpn_backbone`` (``body.conv1``, ``body.layer1..4``, ``fpn.inner_blocks``, ``fpn.layer_blocks``); for
``resnet50`` they match ``maskrcnn_resnet50_fpn`` key for key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from botnet.checkpoint import LoadResult
from botnet.models import ResNet, create_model, load_pretrained

# Order in which ``trainable_layers`` unfreezes the network, from the top (torchvision's convention).
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` below ``module`` by a ``FrozenBatchNorm2d`` with the same statistics.

    Frozen BN is a fixed per-channel affine map ``(x - mean) / sqrt(var + eps) * weight + bias``: it neither
    learns nor updates running statistics, which is what detection fine-tuning at batch 1-2 per device needs.
    Returns the number of layers replaced.
    """
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
            replaced += 1
        else:
            replaced += freeze_batchnorm(child)
    return replaced


def freeze_layers(model: nn.Module, trainable_layers: int) -> None:
    """Stop gradients to all but the top ``trainable_layers`` of ``conv1, layer1..4`` (0-5; 5 = all, stem BN too)."""
    if not 0 <= trainable_layers <= len(TRAINABLE_ORDER):
        raise ValueError(f"trainable_layers must be within 0..{len(TRAINABLE_ORDER)}, got {trainable_layers}")
    prefixes = list(TRAINABLE_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, param in model.named_parameters():
        if not any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)


def load_backbone_weights(model: ResNet, path: str | Path) -> LoadResult:
    """Warm-start ``model`` from a classifier's weights (any file :func:`botnet.checkpoint.read_weights` reads, or
    a pretrained folder), leaving out ``fc``: what fits loads and the rest is reported, so a torchvision or timm
    ResNet-50 starts a BoT50 backbone (:func:`botnet.models.load_pretrained`); position tables are resampled to
    the model's. :class:`CheckpointError` when nothing fits.
    """
    return load_pretrained(model, path, exclude=("fc.",))


def botnet_fpn_backbone(
    model_name: str = "botnet50",
    *,
    weights: str | Path | None = None,
    frozen_bn: bool = False,
    trainable_layers: int = 5,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    **model_kwargs: Any,
) -> BackboneWithFPN:
    """A registered model's ``layer1..4`` maps under a feature pyramid.

    ``x (B, 3, H, W)`` -> ``OrderedDict`` of ``(B, out_channels, H / s, W / s)`` maps, ``"0".."3"`` for
    ``s = 4, 8, 16, 32`` (the returned layers) and ``"pool"`` (``s = 64``) from the default max-pool block.

    Args:
        model_name: a name from :func:`botnet.list_models`, e.g. ``"botnet50"`` or ``"resnet50"``.
        weights: optional local classifier state_dict to start from (nothing is ever downloaded), loaded
            partially (:func:`load_backbone_weights`); its position tables are resampled to ``img_size``'s.
        frozen_bn: replace BatchNorm by ``FrozenBatchNorm2d``: only with ``weights`` (or weights loaded later,
            as when a trained detector is rebuilt); from scratch every block's last BN is zero-initialised, so
            frozen it zeroes every residual branch for good.
        trainable_layers: how many of ``layer4, layer3, layer2, layer1, conv1`` keep gradients (5 = all).
        returned_layers: which of ``layer1..4`` feed the pyramid.
        out_channels: pyramid width.
        extra_blocks: torchvision's extra pyramid block (default: ``LastLevelMaxPool``).
        **model_kwargs: :func:`botnet.create_model` overrides, e.g. ``img_size=1024`` so the relative
            position tables are learned for the detection resolution, ``channels=...`` for a narrow network.
    """
    if not returned_layers or not all(1 <= i <= 4 for i in returned_layers):
        raise ValueError(f"returned_layers must be a non-empty subset of 1..4, got {tuple(returned_layers)}")
    model = create_model(model_name, num_classes=0, **model_kwargs)
    if weights is not None:
        load_backbone_weights(model, weights)
    if frozen_bn:
        freeze_batchnorm(model)
    freeze_layers(model, trainable_layers)
    return_layers = {f"layer{i}": str(k) for k, i in enumerate(returned_layers)}
    in_channels = [model.feature_info[i]["num_chs"] for i in returned_layers]
    return BackboneWithFPN(model, return_layers, in_channels, out_channels, extra_blocks=extra_blocks)
