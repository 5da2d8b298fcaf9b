"""Squeeze-and-excitation (Hu et al., 2018), as used in the BoTNet-S1 convolutional blocks."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel gating: ``x * sigmoid(fc2(act(fc1(mean_hw(x)))))``, ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: ``C``.
        rd_channels: hidden width of the bottleneck MLP.
        act_layer: activation between the two 1x1 convs.
    """

    def __init__(self, channels: int, rd_channels: int, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()
