"""The models and attention layers the benchmarks compare, named ``source:name[:variant]``.

* ``botnet:<registered name>[:<variant>]`` — this library (``botnet.list_models()``); a variant sets every
  ``MHSA2d``'s ``attn_impl`` (``explicit``, ``sdpa``, ``chunked``, ``flex``; default ``auto``), or ``gradckpt``
  recomputes every block in the backward pass (``set_grad_checkpointing()``).
* ``torchvision:<name>`` — ``torchvision.models``; ``torchvision:resnet50`` is the baseline of every ratio.
* ``timm:<name>`` — ``timm.create_model`` (optional), built for the benchmark's input size.
* ``lucidrains:bot50`` — lucidrains' ``bottleneck-transformer-pytorch`` (optional): its ``BottleStack`` as
  BoT50's c5 (3 blocks, 4 heads x 128, relative position) on torchvision's resnet50 c1-c4.

Weights are random; nothing is downloaded. A peer whose package is missing raises :class:`PeerUnavailable`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

import botnet
from common import Setup

BASELINE = "torchvision:resnet50"
BOTNET_VARIANTS = (*botnet.layers.ATTN_IMPLS, "gradckpt")


class PeerUnavailable(RuntimeError):
    """An optional peer's package is not installed."""


def _optional(module: str, pip_name: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PeerUnavailable(f"{module} is not installed (pip install {pip_name})") from None


def _lucidrains_bot50(img_size: int) -> nn.Module:
    bottleneck = _optional("bottleneck_transformer_pytorch", "bottleneck-transformer-pytorch")
    torchvision = _optional("torchvision", "torchvision")
    resnet = torchvision.models.resnet50()
    c5 = bottleneck.BottleStack(
        dim=1024, fmap_size=-(-img_size // 16), dim_out=2048, proj_factor=4, num_layers=3, heads=4, dim_head=128,
        downsample=True, rel_pos_emb=True, activation=nn.ReLU(),
    )  # fmt: skip
    c1_c4 = [resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3]
    return nn.Sequential(*c1_c4, c5, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(2048, 1000))


def build_model(spec: str, img_size: int) -> nn.Module:
    """A freshly initialised classifier for ``img_size`` x ``img_size`` input, named as in the module doc."""
    source, _, rest = spec.partition(":")
    name, _, variant = rest.partition(":")
    if variant and (source != "botnet" or variant not in BOTNET_VARIANTS):
        raise ValueError(f"{spec!r}: only botnet models have a variant ({', '.join(BOTNET_VARIANTS)})")
    if source == "botnet":
        impl = variant if variant in botnet.layers.ATTN_IMPLS else "auto"
        model = botnet.create_model(name, img_size=img_size, attn_impl=impl)
        model.set_grad_checkpointing(variant == "gradckpt")
        return model
    if source == "torchvision":
        return getattr(_optional("torchvision.models", "torchvision"), name)()
    if source == "timm":
        timm = _optional("timm", "timm")
        cfg = timm.models.get_pretrained_cfg(name)
        # Fixed-size models (BoTNets' position tables) are built for the input; the others take any size.
        return timm.create_model(name, img_size=img_size) if cfg and cfg.fixed_input_size else timm.create_model(name)
    if spec == "lucidrains:bot50":
        return _lucidrains_bot50(img_size)
    raise ValueError(
        f"unknown model {spec!r}: use botnet:NAME[:VARIANT], torchvision:NAME, timm:NAME or lucidrains:bot50"
    )


def build_attention(spec: str, dim: int, size: int, heads: int, dim_head: int) -> nn.Module:
    """One attention layer over a ``size`` x ``size`` map of ``dim`` channels: ``(B, dim, s, s) -> (B, h*d, s, s)``.

    ``botnet:<attn_impl>`` (``MHSA2d`` with that ``attn_impl``: ``auto``, ``explicit``, ``sdpa``, ``chunked``,
    ``flex``), ``timm:BottleneckAttn``, ``lucidrains:Attention``; all with relative position logits and no bias,
    as in BoT50's c5.
    """
    source, _, impl = spec.partition(":")
    if source == "botnet" and impl in botnet.layers.ATTN_IMPLS:
        return botnet.MHSA2d(dim, num_heads=heads, dim_head=dim_head, feat_size=size, attn_impl=impl)
    if spec == "timm:BottleneckAttn":
        attn = _optional("timm.layers.bottleneck_attn", "timm")
        return attn.BottleneckAttn(dim, heads * dim_head, feat_size=(size, size), num_heads=heads)
    if spec == "lucidrains:Attention":
        bottleneck = _optional("bottleneck_transformer_pytorch", "bottleneck-transformer-pytorch")
        attention = bottleneck.bottleneck_transformer_pytorch.Attention
        return attention(dim=dim, fmap_size=(size, size), heads=heads, dim_head=dim_head, rel_pos_emb=True)
    raise ValueError(f"unknown attention layer {spec!r}")


def model_step(model: nn.Module, x: torch.Tensor, setup: Setup, backward: bool) -> Callable[[], None]:
    """One forward pass (eval, inference mode) or one training step without the optimiser."""
    labels = torch.randint(0, 1000, (x.shape[0],), device=x.device)
    x = x.contiguous(memory_format=setup.memory_format)

    def forward() -> None:
        model.eval()
        with torch.inference_mode(), setup.autocast():
            model(x)

    def forward_backward() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with setup.autocast():
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()

    return forward_backward if backward else forward


def build_models(specs: list[str], img_size: int, setup: Setup) -> dict[str, nn.Module]:
    """The models that can be built (missing optional peers are reported and skipped), on the device."""
    models = {}
    for spec in specs:
        try:
            model = build_model(spec, img_size).to(setup.device, memory_format=setup.memory_format)
        except PeerUnavailable as err:
            print(f"skipping {spec}: {err}", file=sys.stderr)
            continue
        models[spec] = torch.compile(model) if setup.compile else model
    return models
