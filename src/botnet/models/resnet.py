"""ResNet V1.5 whose chosen stages use multi-head self-attention: the BoTNet architecture.

Module names follow torchvision's ``resnet.py`` (``conv1``, ``bn1``, ``layer1..4``, ``fc``; inside a block
``conv1..3``, ``bn1..3``, ``downsample``), so torchvision state_dicts load with ``strict=True`` and detection
code built for torchvision's ResNets (``IntermediateLayerGetter``, ``BackboneWithFPN``) works unchanged.
In an attention block ``conv2`` is an :class:`~botnet.layers.MHSA2d` instead of a 3x3 conv.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute
from torchvision.ops import StochasticDepth

from botnet import checkpoint
from botnet.layers import MHSA2d, SqueezeExcite, capture_attention
from botnet.layers.position import feat_size_for
from botnet.models.features import FeatureInfo, feature_take_indices
from botnet.models.registry import IMAGENET_MEAN, IMAGENET_STD, LIBRARY_KEYS, PRETRAINED_CFG_KEYS, resolve_model_args

ACT_LAYERS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}
STEMS = ("conv7", "tiered")
STAGE_NAMES = ("c2", "c3", "c4", "c5")
EXPANSION = 4
GLOBAL_POOLS: dict[str, type[nn.Module]] = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}
# The pretrained_cfg of a ResNet built without a registry row (timm's defaults for ImageNet models).
DEFAULT_CFG: dict[str, Any] = dict(
    mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bicubic", crop_mode="center"
)


def _stem_conv(stem: str, in_chans: int, out_chs: int, act_layer: type[nn.Module]) -> nn.Module:
    """The stem's convolution(s) up to (not including) ``bn1``: stride 2, ``in_chans -> out_chs``."""
    if stem == "conv7":
        return nn.Conv2d(in_chans, out_chs, 7, stride=2, padding=3, bias=False)
    chs = (3 * out_chs // 8, out_chs // 2)
    return nn.Sequential(
        nn.Conv2d(in_chans, chs[0], 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(chs[0]),
        act_layer(inplace=True),
        nn.Conv2d(chs[0], chs[1], 3, padding=1, bias=False),
        nn.BatchNorm2d(chs[1]),
        act_layer(inplace=True),
        nn.Conv2d(chs[1], out_chs, 3, padding=1, bias=False),
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 conv or MHSA -> 1x1 bottleneck with identity or projection shortcut.

    ResNet V1.5: the stride sits on the 3x3 conv (or, with attention, a 2x2 average pool after the MHSA),
    not on the first 1x1. ``(B, in_chs, H, W) -> (B, 4 * mid_chs, H / stride, W / stride)``.

    Args:
        in_chs: input channels.
        mid_chs: bottleneck width; the output has ``4 * mid_chs`` channels.
        stride: 1 or 2.
        attn: build ``conv2`` as MHSA (a dict of :class:`MHSA2d` keyword arguments) instead of a 3x3 conv.
        se_channels: hidden width of a squeeze-excite gate after ``bn3``, 0 for none.
        act_layer: activation class.
        drop_path: stochastic-depth rate of the residual branch.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        stride: int = 1,
        attn: dict[str, Any] | None = None,
        se_channels: int = 0,
        act_layer: type[nn.Module] = nn.ReLU,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        out_chs = mid_chs * EXPANSION
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        if attn is None:
            self.conv2: nn.Module = nn.Conv2d(mid_chs, mid_chs, 3, stride=stride, padding=1, bias=False)
        else:
            self.conv2 = MHSA2d(mid_chs, stride=stride, **attn)
        conv2_chs = self.conv2.dim_out if isinstance(self.conv2, MHSA2d) else mid_chs  # heads * dim_head
        self.bn2 = nn.BatchNorm2d(conv2_chs)
        self.conv3 = nn.Conv2d(conv2_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.se = SqueezeExcite(out_chs, se_channels, act_layer) if se_channels else nn.Identity()
        self.act = act_layer(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            # torchvision's projection (conv + BN, no activation), not the reference code's conv + BN + act,
            # so that torchvision weights load.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        """Start the residual branch at zero (gamma of ``bn3`` = 0), as the reference code does."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.se(self.bn3(self.conv3(x)))
        return self.act(self.drop_path(x) + shortcut)


AttentionSpec = str | Sequence[bool | int | Sequence[int]]


def attention_blocks(attention: AttentionSpec, layers: Sequence[int]) -> list[set[int]]:
    """Per stage, the indices of the blocks that use MHSA: the one parser of the ``attention`` argument.

    ``attention`` is a string of stage names (``"c5"``, ``"c4,c5"``, ``"c4+c5"``, ``"none"``; all blocks of each
    named stage) or one entry per stage: ``True`` (all blocks), ``False`` (none), ``k`` (the last ``k``) or a
    sequence of block indices, e.g. ``(1, 3, 5)`` for timm's interleaved layouts (lists, as JSON gives them,
    work too).
    """
    if isinstance(attention, str):
        names = [n.strip().lower() for n in attention.replace("+", ",").split(",") if n.strip()]
        if names in ([], ["none"]):
            names = []
        unknown = [n for n in names if n not in STAGE_NAMES[: len(layers)]]
        if unknown:
            raise ValueError(
                f"unknown stage {unknown[0]!r} in attention={attention!r}; use names from {STAGE_NAMES[: len(layers)]}"
            )
        attention = [name in names for name in STAGE_NAMES[: len(layers)]]
    if len(attention) != len(layers):
        raise ValueError(
            f"attention={attention!r} needs {len(layers)} per-stage entries (bool, int = last k blocks, or a list "
            'of block indices), or stage names such as "c5" or "c4,c5"'
        )
    blocks = []
    for flag, depth in zip(attention, layers, strict=True):
        if isinstance(flag, bool):
            blocks.append(set(range(depth)) if flag else set())
        elif isinstance(flag, int):
            if not 0 <= flag <= depth:
                raise ValueError(f"attention entry {flag!r} asks for more MHSA blocks than the stage's {depth}")
            blocks.append(set(range(depth - flag, depth)))
        elif isinstance(flag, (list, tuple)) and all(isinstance(i, int) for i in flag):
            if not all(0 <= i < depth for i in flag):
                raise ValueError(f"attention entry {tuple(flag)!r} names blocks outside the stage's 0..{depth - 1}")
            blocks.append(set(flag))
        else:
            raise ValueError(f"attention entry {flag!r} is not a bool, an int or a list of block indices")
    return blocks


class ResNet(nn.Module):
    """ResNet V1.5 with optional MHSA stages (BoTNet), timm-style API.

    ``forward``: ``x (B, in_chans, H, W)`` -> logits ``(B, num_classes)`` (``(B, num_features)`` with
    ``num_classes=0``, the unpooled ``(B, num_features, H / s, W / s)`` with ``global_pool=""`` too). The
    feature maps come from :meth:`forward_intermediates` (index 0: the stem, reduction 2; 1-4: ``layer1..4``) or
    from the ``features_only`` wrapper :func:`botnet.create_model` builds.

    Args:
        layers: blocks per stage (c2-c5), e.g. ``(3, 4, 6, 3)`` for 50 layers.
        attention: which blocks use MHSA: stage names (``"c5"``, ``"c4,c5"``) or per stage ``True`` (every
            block), ``False``, ``k`` (the last ``k`` blocks) or a sequence of block indices (``(1, 3, 5)``: every
            other block, as timm's ``botnet50ts``); see :func:`attention_blocks`.
        num_heads: MHSA heads.
        dim_head: channels per head (default: the block's width / ``num_heads``).
        pos_embed: ``"relative"``, ``"absolute"`` or ``"none"``.
        scale_pos_embed: scale the position logits by ``dim_head ** -0.5`` like the content logits (the
            reference code); ``False`` adds them unscaled, as timm's ``BottleneckAttn``.
        attn_impl: the MHSA layers' attention implementation, ``"auto"`` (chosen per call by size, device and
            dtype), ``"explicit"``, ``"sdpa"``, ``"chunked"`` or ``"flex"``; see :class:`~botnet.layers.MHSA2d`
            and :func:`~botnet.layers.set_attn_impl` to change it later.
        strides: stride of each stage; ``(1, 2, 2, 1)`` keeps c5 at c4's resolution (BoTNet-S1).
        channels: bottleneck widths of the stages (outputs are 4x these).
        stem: ``"conv7"``: one 7x7 stride-2 conv (torchvision); ``"tiered"``: three 3x3 convs of
            ``3/8, 1/2, 1 x stem_width`` channels, the first with stride 2 (timm's ``t`` models). Either way
            ``bn1``, ``act`` and the 3x3 max pool follow; the tiered ``conv1`` is an ``nn.Sequential``
            (``conv1.0``, ``conv1.3``, ``conv1.6`` with BN + activation between), as in timm's ``resnet26t``.
        stem_width: output channels of the stem.
        se_ratio: squeeze-excite hidden width as a fraction of the block output, in the conv blocks; 0 = off.
        act_layer: ``"relu"`` or ``"silu"``.
        img_size: reference input size; the position tables are learned for its feature maps.
        num_classes: classifier outputs; 0 for none (``fc`` becomes ``Identity``).
        in_chans: input channels.
        global_pool: ``"avg"``, ``"max"`` or ``""`` (no pooling: only with ``num_classes=0``).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks.
        zero_init_residual: zero the last BN gamma of each block.
        model_name: the registry row this model was built from (``create_model`` sets it).
        pretrained_cfg: updates of timm's pretrained-cfg keys (mean / std, crop fraction, ...); the input sizes,
            pool size, classes, first conv and classifier are always the model's own.

    The constructor arguments are kept in ``model_args`` (JSON-able): ``ResNet(**model.model_args)`` builds the
    same network, which is how :meth:`from_pretrained` rebuilds a saved one.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        attention: AttentionSpec = (False, False, False, False),
        num_heads: int = 4,
        dim_head: int | None = None,
        pos_embed: str = "relative",
        scale_pos_embed: bool = True,
        attn_impl: str = "auto",
        strides: Sequence[int] = (1, 2, 2, 2),
        channels: Sequence[int] = (64, 128, 256, 512),
        stem: str = "conv7",
        stem_width: int = 64,
        se_ratio: float = 0.0,
        act_layer: str = "relu",
        img_size: int | tuple[int, int] = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_residual: bool = True,
        model_name: str = "resnet",
        pretrained_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_args: dict[str, Any] = checkpoint.jsonable(
            {k: v for k, v in locals().items() if k not in ("self", "__class__", "pretrained_cfg")}
        )
        self.model_name = model_name
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if num_classes < 0 or in_chans < 1:
            raise ValueError(
                f"num_classes must be >= 0 (0: no classifier) and in_chans >= 1, got {num_classes} and {in_chans}"
            )
        if not (0 <= drop_rate < 1 and 0 <= drop_path_rate < 1):
            raise ValueError(f"drop_rate and drop_path_rate must be in [0, 1), got {drop_rate} and {drop_path_rate}")
        if act_layer not in ACT_LAYERS:
            raise ValueError(f"unknown act_layer {act_layer!r}; use one of {', '.join(ACT_LAYERS)}")
        if any(stride not in (1, 2) for stride in strides):
            raise ValueError(f"stage strides must be 1 or 2, got {tuple(strides)}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; use one of {', '.join(STEMS)}")
        act = ACT_LAYERS[act_layer]
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.img_size = img_size
        self.grad_checkpointing = False

        self.conv1 = _stem_conv(stem, in_chans, stem_width, act)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act = act(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        attn_blocks = attention_blocks(attention, layers)
        # Host numbers, also when built under another default device (e.g. meta, to read shapes cheaply).
        block_rates = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()
        self.feature_info = FeatureInfo([dict(num_chs=stem_width, reduction=2, module="act")])
        in_chs, reduction, block_idx = stem_width, 4, 0
        for stage, (depth, stride, width, attn_idx) in enumerate(
            zip(layers, strides, channels, attn_blocks, strict=True), start=1
        ):
            blocks = []
            for i in range(depth):
                block_stride = stride if i == 0 else 1
                attn = None
                if i in attn_idx:
                    feat = feat_size_for(img_size, reduction)
                    attn = dict(
                        num_heads=num_heads,
                        dim_head=dim_head,
                        pos_embed=pos_embed,
                        scale_pos_embed=scale_pos_embed,
                        attn_impl=attn_impl,
                        feat_size=feat,
                    )
                se_chs = round(width * EXPANSION * se_ratio) if attn is None else 0
                try:
                    blocks.append(Bottleneck(in_chs, width, block_stride, attn, se_chs, act, block_rates[block_idx]))
                except ValueError as err:
                    raise ValueError(f"layer{stage}.{i}: {err}") from None
                in_chs, reduction, block_idx = width * EXPANSION, reduction * block_stride, block_idx + 1
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"layer{stage}"))
        self.num_features = self.head_hidden_size = in_chs
        self.output_stride = reduction

        self.reset_classifier(num_classes, global_pool)
        self._init_weights(zero_init_residual)
        self.pretrained_cfg = self._pretrained_cfg(pretrained_cfg or {}, stem)
        self.default_cfg = self.pretrained_cfg  # timm's older name

    def _pretrained_cfg(self, updates: dict[str, Any], stem: str) -> dict[str, Any]:
        """timm's pretrained cfg: ``updates`` over the defaults; the sizes, classes and layer names are the model's."""
        unknown = sorted(set(updates) - set(PRETRAINED_CFG_KEYS))
        if unknown:
            raise ValueError(f"pretrained_cfg keys {unknown} are not timm's; use {', '.join(PRETRAINED_CFG_KEYS)}")
        cfg = {**DEFAULT_CFG, "architecture": self.model_name, **updates}
        input_size = (self.in_chans, *self.img_size)
        cfg.update(
            input_size=input_size,
            test_input_size=input_size,
            min_input_size=(self.in_chans, self.min_input_size, self.min_input_size),
            pool_size=feat_size_for(self.img_size, self.output_stride),
            num_classes=self.num_classes,
            first_conv="conv1.0" if stem == "tiered" else "conv1",
            classifier="fc",
            fixed_input_size=False,
        )
        if self.in_chans != len(cfg["mean"]):
            mean, std = sum(cfg["mean"]) / len(cfg["mean"]), sum(cfg["std"]) / len(cfg["std"])
            cfg.update(mean=(mean,) * self.in_chans, std=(std,) * self.in_chans)  # grey: the channels' average
        return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, MHSA2d):
                module.reset_parameters()  # the reference code's qkv init, not the conv init above
            elif isinstance(module, Bottleneck) and zero_init_residual:
                module.zero_init_last()

    @property
    def min_input_size(self) -> int:
        """Smallest input side: every stage must keep at least one pixel."""
        return self.output_stride

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem and the fix for input the network cannot take."""
        if x.dim() != 4:
            raise ValueError(
                f"expected a batch of images (B, C, H, W), got a tensor of shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0)"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, got {x.shape[1]}; convert the images "
                f"(e.g. to RGB) or build the model with in_chans={x.shape[1]}"
            )
        height, width = x.shape[-2:]
        if min(height, width) < self.min_input_size:
            raise ValueError(
                f"input {height}x{width} is smaller than this model's minimum of "
                f"{self.min_input_size}x{self.min_input_size} (its output stride); resize or pad the images"
            )

    # --- timm's model API ------------------------------------------------------------------------------------

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (less memory, ~1/3
        more compute). BatchNorm running statistics are updated in the recomputation too."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory leaves undecayed: position tables, norm weights and biases."""
        return {name for name, param in self.named_parameters() if param.ndim <= 1 or ".pos_embed." in name}

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for layer-wise learning-rate decay (timm): the stem, then per block (per stage if
        ``coarse``); the classifier, matched by neither, is the last group."""
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` outputs (0: none) and, if given, another ``global_pool``
        (``"avg"``, ``"max"``, ``""``: none, leaving ``(B, C, h, w)`` maps; only without a classifier)."""
        global_pool = self.global_pool if global_pool is None else global_pool
        if global_pool and global_pool not in GLOBAL_POOLS:
            raise ValueError(f"unknown global_pool {global_pool!r}; use one of {', '.join(GLOBAL_POOLS)} or ''")
        if not global_pool and num_classes:
            raise ValueError("global_pool='' (no pooling) needs num_classes=0: the classifier takes pooled features")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.avgpool: nn.Module = GLOBAL_POOLS[global_pool](1) if global_pool else nn.Identity()
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature maps of ``indices`` (of :attr:`feature_info`: 0 stem, 1-4 ``layer1..4``) as timm returns them.

        Args:
            x: ``(B, in_chans, H, W)``.
            indices: ``None`` (all five), ``n`` (the last ``n``) or a list of indices.
            norm: accepted for timm's API; a ResNet has no final norm.
            stop_early: run no stage after the last index taken.
            output_fmt: ``"NCHW"`` only.
            intermediates_only: return only the maps.

        Returns:
            ``(last map, [maps])`` or ``[maps]``; map ``i`` is ``(B, feature_info[i]["num_chs"], H / r, W / r)``
            with ``r`` its reduction (rounded up).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.feature_info), indices)
        x, intermediates = self._forward_stages(x, take, last if stop_early else len(self.feature_info) - 1)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the pooling + classifier if ``prune_head``), for a
        model used for feature maps only; returns the indices taken (see :meth:`forward_intermediates`)."""
        take, last = feature_take_indices(len(self.feature_info), indices)
        for stage in range(last + 1, len(self.feature_info)):
            setattr(self, f"layer{stage}", nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> the last stage's map ``(B, num_features, H / s, W / s)``."""
        return self._forward_stages(x, (), len(self.feature_info) - 1)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the last map and classify: ``(B, C, h, w)`` -> ``(B, num_classes)`` (or ``(B, C)``)."""
        if self.global_pool:
            x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> Any:
        """``x (B, in_chans, H, W)`` -> logits ``(B, num_classes)``.

        ``return_attention=True`` (not traced: FX and export see the plain path) returns ``(logits, attn)``:
        ``attn`` maps each MHSA layer's name (e.g. ``"layer4.0.conv2"``) to its softmax weights
        ``(B, heads, H*W, H*W)`` (see :func:`botnet.capture_attention`).
        """
        if not isinstance(return_attention, torch.fx.Proxy) and return_attention:  # FX: the plain path
            with capture_attention(self) as attn:
                out = self.forward_head(self.forward_features(x))
            return out, dict(attn)
        return self.forward_head(self.forward_features(x))

    def _forward_stages(
        self, x: torch.Tensor, take: Sequence[int], last: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem and ``layer1..last``: the last map and the maps of ``take`` (feature indices), in order."""
        if not isinstance(x, torch.fx.Proxy):  # FX traces no Python branch on sizes
            self.check_input(x)
        x = self.act(self.bn1(self.conv1(x)))
        intermediates = [x] if 0 in take else []
        x = self.maxpool(x)
        for stage in range(1, last + 1):
            blocks = getattr(self, f"layer{stage}")
            if self.grad_checkpointing and not isinstance(x, torch.fx.Proxy):
                for block in blocks:
                    x = recompute(block, x, use_reentrant=False)
            else:
                x = blocks(x)
            if stage in take:
                intermediates.append(x)
        return x, intermediates

    # --- persistence -----------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into ``directory`` (atomically); returns the directory.

        ``config.json`` holds ``model_args`` (what rebuilds the network), ``pretrained_cfg`` and ``extra``
        (free-form, e.g. ``class_names``).
        """
        config = {
            "architecture": self.model_name,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "model_args": self.model_args,
            "pretrained_cfg": self.pretrained_cfg,
            "extra": extra or {},
        }
        return checkpoint.save_pretrained_files(directory, self.state_dict(), config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> ResNet:
        """Rebuild a model saved by :meth:`save_pretrained` and load its weights (no pickle is ever loaded).

        ``overrides`` change construction arguments; those that change no weight shape (``drop_path_rate``,
        ``img_size``: position tables are resampled) are safe. Folders written before ``model_args`` existed
        (``architecture`` + ``overrides``) are rebuilt from the registry. Raises
        :class:`~botnet.checkpoint.CheckpointError` for a missing, damaged or mismatched folder.
        """
        config = checkpoint.read_config(directory)
        if config.get("task", "classification") != "classification":
            raise checkpoint.CheckpointError(
                f"{directory} holds a {config['task']} model ({config['architecture']}), not a classifier: load it "
                "with botnet.detection (botnet detect eval / predict)"
            )
        if "model_args" in config:
            # features_only / out_indices: saved by versions whose ResNet returned feature maps itself
            kwargs = {k: v for k, v in config["model_args"].items() if k not in ("features_only", "out_indices")}
        else:
            kwargs = resolve_model_args(
                config["architecture"], config["num_classes"], config["in_chans"], **config.get("overrides", {})
            )
        # the saved crop_pct / mean / std (less the library's own facts that older versions kept there); input
        # size and classes follow the (possibly overridden) arguments
        saved_cfg = {k: v for k, v in config.get("pretrained_cfg", {}).items() if k not in LIBRARY_KEYS}
        kwargs.update(overrides, pretrained_cfg={**kwargs.get("pretrained_cfg", {}), **saved_cfg})
        try:
            model = cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise checkpoint.CheckpointError(f"{directory}/config.json cannot be built: {err}") from None
        checkpoint.load_weights(
            model, checkpoint.pretrained_weights_path(directory), trained_for=config["architecture"]
        )
        return model
