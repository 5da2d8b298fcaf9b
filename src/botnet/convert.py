"""Load timm's BoTNet weights (``botnet26t_256``, ``botnet50ts_256``) into the equivalent ``botnet`` models.

timm's ``ByobNet`` names its modules ``stem.conv1..3``, ``stages.{s}.{b}`` with ``conv1_1x1`` / ``conv2_kxk``
(or ``self_attn`` + ``post_attn``) / ``conv3_1x1`` / ``shortcut`` and ``head.fc``; the ``timm_*`` rows of the
model table are the same networks with torchvision names. Every tensor keeps its shape: only keys change.
The architecture (and a non-default ``img_size``, read from the position tables) is recognised from the state
dict; one that matches no row raises ``CheckpointError`` naming the closest row and the keys that differ.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from botnet.checkpoint import CheckpointError, LoadResult, compare_state
from botnet.layers import MHSA2d
from botnet.models import ResNet, create_model, list_models

TIMM_NAMES = {"botnet26t_256": "timm_botnet26t_256", "botnet50ts_256": "timm_botnet50ts_256"}

_TOP_RENAMES = {
    "stem.conv1.conv.": "conv1.0.",
    "stem.conv1.bn.": "conv1.1.",
    "stem.conv2.conv.": "conv1.3.",
    "stem.conv2.bn.": "conv1.4.",
    "stem.conv3.conv.": "conv1.6.",
    "stem.conv3.bn.": "bn1.",
    "head.fc.": "fc.",
}
_BLOCK_RENAMES = {
    "shortcut.conv.": "downsample.0.",
    "shortcut.bn.": "downsample.1.",
    "conv1_1x1.conv.": "conv1.",
    "conv1_1x1.bn.": "bn1.",
    "conv2_kxk.conv.": "conv2.",
    "conv2_kxk.bn.": "bn2.",
    "self_attn.qkv.": "conv2.qkv.",
    "self_attn.pos_embed.height_rel": "conv2.pos_embed.rel_h",
    "self_attn.pos_embed.width_rel": "conv2.pos_embed.rel_w",
    "post_attn.": "bn2.",
    "conv3_1x1.conv.": "conv3.",
    "conv3_1x1.bn.": "bn3.",
}
_BLOCK_KEY = re.compile(r"stages\.(\d+)\.(\d+)\.(.+)")


def _rename(key: str, renames: Mapping[str, str]) -> str | None:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def timm_to_botnet_key(key: str) -> str:
    """The ``botnet`` name of a timm ByobNet key; keys timm's BoTNets do not have are returned unchanged."""
    if (match := _BLOCK_KEY.fullmatch(key)) is not None:
        stage, block, rest = match.groups()
        renamed = _rename(rest, _BLOCK_RENAMES)
        return key if renamed is None else f"layer{int(stage) + 1}.{block}.{renamed}"
    renamed = _rename(key, _TOP_RENAMES)
    return key if renamed is None else renamed


@dataclass
class _Match:
    """How well a renamed state dict fits one model row (keys in botnet names)."""

    name: str
    kwargs: dict[str, object]
    fit: LoadResult

    @property
    def score(self) -> float:
        """Fitting tensors over all tensors of either side: 1.0 for an exact match."""
        fit = self.fit
        return len(fit.loaded) / (len(fit.loaded) + len(fit.missing) + len(fit.misshapen) + len(fit.unexpected))


def _img_size(model: ResNet, state: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """The input size whose position tables have the checkpoint's shapes, from the model's first MHSA layer."""
    default = model.img_size
    for name, layer in model.named_modules():
        key = f"{name}.pos_embed.rel_h"
        if isinstance(layer, MHSA2d) and key in state and f"{name}.pos_embed.rel_w" in state:
            feat = ((state[key].shape[0] + 1) // 2, (state[f"{name}.pos_embed.rel_w"].shape[0] + 1) // 2)
            ref = layer.pos_embed.feat_size
            return (feat[0] * default[0] // ref[0], feat[1] * default[1] // ref[1])
    return None


def _match(name: str, state: Mapping[str, torch.Tensor]) -> _Match:
    """Compare ``state`` with row ``name`` built (on the meta device) for its classes, channels and size."""
    kwargs: dict[str, object] = {
        "num_classes": state["fc.weight"].shape[0] if "fc.weight" in state else 0,
        "in_chans": state["conv1.0.weight"].shape[1] if "conv1.0.weight" in state else 3,
    }
    with torch.device("meta"):
        model = create_model(name, **kwargs)
        img_size = _img_size(model, state)
        if img_size is not None and img_size != tuple(model.pretrained_cfg["input_size"][1:]):
            kwargs["img_size"] = img_size
            model = create_model(name, **kwargs)
    return _Match(name, kwargs, compare_state(model.state_dict(), state))


def from_timm(state_dict_or_model: Mapping[str, torch.Tensor] | nn.Module) -> ResNet:
    """A ``botnet`` model holding the weights of a timm ``botnet26t_256`` / ``botnet50ts_256``.

    Args:
        state_dict_or_model: a timm model or its ``state_dict()`` (any ``img_size``, ``num_classes``,
            ``in_chans``).

    Returns:
        The ``timm_*`` row built with the checkpoint's classifier size, input channels and (if not 256)
        ``img_size``, weights loaded strictly, in eval mode. In fp32 it gives timm's outputs to ~1e-6.

    Raises:
        ValueError: the state dict fits no timm-compatible row; the message names the closest row and the
            missing / unexpected / misshapen keys.
    """
    source = state_dict_or_model.state_dict() if isinstance(state_dict_or_model, nn.Module) else state_dict_or_model
    state = {timm_to_botnet_key(k): v for k, v in source.items()}
    matches = [_match(name, state) for name in list_models("timm_*")]
    best = max(matches, key=lambda m: m.score)
    if not best.fit.complete:
        raise CheckpointError(
            f"the state dict ({len(state)} tensors) matches none of the timm-compatible models "
            f"({', '.join(m.name for m in matches)}); closest: {best.name}, keys after renaming timm's: "
            f"{best.fit.summary()}"
        )
    model = create_model(best.name, **best.kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()
