"""Shared test helpers: a tiny BoTNet and a BatchNorm randomiser (import them with ``from conftest import ...``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import botnet

# botnet26 at 1/8 width: fast enough for every test that needs a real network, MHSA in c5 (2 heads of 32).
TINY: dict[str, Any] = dict(channels=(8, 16, 32, 64), stem_width=8, num_heads=2)


def tiny_model(name: str = "botnet26", **overrides: Any) -> botnet.ResNet:
    """``botnet.create_model(name)`` at the :data:`TINY` widths; ``overrides`` win (e.g. ``img_size=64``)."""
    return botnet.create_model(name, **{**TINY, **overrides})


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine + running statistics: zero-initialised last BNs would silence every residual branch, and
    default statistics would make eval mode a no-op, so parity could hold for a wrong block."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            with torch.no_grad():
                module.weight.copy_(1 + 0.1 * torch.randn(channels, generator=gen))
                module.bias.copy_(0.1 * torch.randn(channels, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(channels, generator=gen))
                module.running_var.copy_(1 + torch.rand(channels, generator=gen))
    return model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
