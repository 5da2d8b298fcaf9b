"""Feature maps of a model: timm-style ``feature_info`` metadata and the ``features_only`` wrapper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from botnet.models.resnet import ResNet


class FeatureInfo(list):
    """timm-style feature metadata: a list of ``dict(num_chs, reduction, module)`` with column accessors."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """The feature indices ``indices`` selects, and the largest of them (timm's convention).

    ``None``: all ``num_features``; an int ``n``: the last ``n``; a sequence: those indices (negative ones count
    from the end). ``ValueError`` for an index out of range.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"cannot take the last {indices} of {num_features} feature maps")
        take = list(range(num_features - indices, num_features))
    else:
        take = [num_features + i if i < 0 else i for i in indices]
        if not take or not all(0 <= i < num_features for i in take):
            raise ValueError(f"feature indices {tuple(indices)} must lie within 0..{num_features - 1} (or -1..)")
    return take, max(take)


class FeatureListNet(nn.Module):
    """``x (B, C, H, W)`` -> the list of feature maps ``out_indices`` selects (timm's ``FeatureGetterNet``).

    Wraps ``model`` (as ``self.model``) and drops what the maps do not need (later stages, pooling,
    classifier) with ``model.prune_intermediate_layers``. ``feature_info`` describes the returned maps; for a
    :class:`~botnet.models.ResNet` index 0 is the stem (reduction 2) and 1-4 are ``layer1..4``.
    """

    def __init__(self, model: ResNet, out_indices: Sequence[int]) -> None:
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices)
        self.model = model
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        self.model_name = model.model_name
        self.pretrained_cfg = self.default_cfg = model.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
