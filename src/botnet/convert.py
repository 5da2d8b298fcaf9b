"""Load timm's BoTNet weights (``botnet26t_256``, ``botnet50ts_256``) into the equivalent ``botnet`` models.

timm's ``ByobNet`` names its modules ``stem.conv1..3``, ``stages.{s}.{b}`` with ``conv1_1x1`` / ``conv2_kxk``
(or ``self_attn`` + ``post_attn``) / ``conv3_1x1`` / ``shortcut`` and ``head.fc``; the ``timm_*`` rows of the
model table are the same networks with torchvision names. Every tensor keeps its shape: only keys change.
The architecture (and a non-default ``img_size``, read from the position tables) is recognised from the state
dict; one that matches no row raises ``ValueError`` naming the closest row and the keys that differ.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

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
    """How well a renamed state dict fits one model row: the keys that differ (botnet names)."""

    name: str
    kwargs: dict[str, object]
    matched: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshapen: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.misshapen)

    @property
    def score(self) -> float:
        """Fitting tensors over all tensors of either side: 1.0 for an exact match."""
        return self.matched / (self.matched + len(self.missing) + len(self.misshapen) + len(self.unexpected))


def _img_size(model: ResNet, state: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """The input size whose position tables have the checkpoint's shapes, from the model's first MHSA layer."""
    default = model.img_size if isinstance(model.img_size, tuple) else (model.img_size, model.img_size)
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
    own = model.state_dict()
    common = sorted(set(own) & set(state))
    misshapen = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in common
        if state[k].shape != own[k].shape
    ]
    return _Match(
        name,
        kwargs,
        matched=len(common) - len(misshapen),
        missing=sorted(set(own) - set(state)),
        unexpected=sorted(set(state) - set(own)),
        misshapen=misshapen,
    )


def _modules(keys: list[str]) -> str:
    """Keys grouped by module (``layer3.1.conv2.qkv.weight`` -> ``layer3.1.conv2.qkv``), for short messages."""
    modules = list(dict.fromkeys(key.rpartition(".")[0] or key for key in keys))
    shown = ", ".join(modules[:8]) + (", ..." if len(modules) > 8 else "")
    return f"{shown} ({len(modules)} modules, {len(keys)} tensors)"


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
    if not best.exact:
        lines = [
            f"the state dict ({len(state)} tensors) matches none of the timm-compatible models "
            f"({', '.join(m.name for m in matches)}); closest: {best.name} "
            f"({best.matched} of its {best.matched + len(best.missing) + len(best.misshapen)} tensors fit; "
            "keys after renaming timm's):"
        ]
        for label, keys in (("missing", best.missing), ("unexpected", best.unexpected)):
            if keys:
                lines.append(f"  {label}: {_modules(keys)}")
        if best.misshapen:
            more = f", ... ({len(best.misshapen)} in all)" if len(best.misshapen) > 3 else ""
            lines.append(f"  shape mismatch: {', '.join(best.misshapen[:3])}{more}")
        raise ValueError("\n".join(lines))
    model = create_model(best.name, **best.kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth`` / ``.pt`` read with ``torch.load(weights_only=True)``.

    A checkpoint that wraps its weights in ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors)")
    return state
