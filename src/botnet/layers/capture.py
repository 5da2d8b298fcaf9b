"""Read the attention weights of every :class:`MHSA2d` in a model during one forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from botnet.layers.attention import MHSA2d


def attention_layers(model: nn.Module) -> dict[str, MHSA2d]:
    """The model's MHSA layers by qualified name (e.g. ``"layer4.0.conv2"``), in forward order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, MHSA2d)}


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every MHSA layer takes its explicit path and records its softmax output.

    Yields a dict filled during forward passes: layer name -> ``(B, heads, N, N)`` probabilities (the last
    call's). Outside the block no ``N x N`` matrix is kept.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    layers = attention_layers(model)
    for name, layer in layers.items():
        layer.capture = True

        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            store[name] = output

        handles.append(layer.attn_probs.register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers.values():
            layer.capture = False
