"""The model contract timm and torchvision users rely on, tested without timm's test file.

timm's generic model tests (forward, backward, default cfgs, forward_features, forward_intermediates, features,
FX forward / backward), torchvision's ``create_feature_extractor``, gradient checkpointing, the optimizer hooks
(``no_weight_decay``, ``group_matcher``) and the ways weights come in (``pretrained=``, ``checkpoint_path=``,
``pretrained_cfg_overlay``). Full-size rows are built on the meta device (shapes only); numbers are compared on
tiny widths.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import timm.optim
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import botnet
from botnet.detection import create_detector
from botnet.models import FeatureListNet, load_pretrained
from botnet.models.registry import LIBRARY_KEYS
from botnet.models.timm_registry import register_with_timm
from conftest import TINY, randomise_norms, tiny_model

ALL_MODELS = botnet.list_models()
# A paper BoTNet, an S1 row (stride-1 c5, SE, SiLU) and a tiered-stem timm row, at tiny widths.
TINY_ROWS = ["botnet26", "botnet_s1_59", "timm_botnet26t_256"]
ODD = (37, 53)  # odd and non-square: every stage rounds up


def tiny(name: str, **overrides: object) -> botnet.ResNet:
    return randomise_norms(tiny_model(name, num_classes=5, **overrides))


def meta_model(name: str, **overrides: object) -> botnet.ResNet:
    with torch.device("meta"):
        return botnet.create_model(name, **overrides)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_row_has_timms_cfg_and_traces_with_fx(name: str) -> None:
    model = meta_model(name)
    cfg = timm.models.PretrainedCfg(**model.pretrained_cfg)  # no foreign keys
    assert not set(LIBRARY_KEYS) & set(model.pretrained_cfg)
    assert model.num_features == model.head_hidden_size > 0
    with torch.no_grad():
        feats = model.forward_features(torch.empty(1, *cfg.input_size, device="meta"))
    assert tuple(feats.shape[-2:]) == cfg.pool_size and feats.shape[1] == model.num_features
    assert cfg.min_input_size == (3, model.min_input_size, model.min_input_size)
    assert cfg.test_input_size == cfg.input_size and cfg.crop_mode == "center" and cfg.architecture == name
    state = model.state_dict()
    assert f"{cfg.first_conv}.weight" in state and f"{cfg.classifier}.weight" in state

    graph = torch.fx.symbolic_trace(model).graph
    ops = [node.op for node in graph.nodes]
    assert ops.count("placeholder") == 2 and ops.count("output") == 1  # x, and the untraced return_attention
    assert sum(node.target == "fc" for node in graph.nodes) == 1


@pytest.mark.parametrize("name", TINY_ROWS)
def test_fx_and_feature_extractor_are_bit_identical(name: str) -> None:
    model = tiny(name).eval()
    x = torch.randn(2, 3, *ODD)
    traced = torch.fx.symbolic_trace(model)
    extractor = create_feature_extractor(model, {"layer2": "c3", "layer4": "c5", "fc": "logits"})
    with torch.no_grad():
        logits = model(x)
        _, (c3, c5) = model.forward_intermediates(x, indices=[2, 4])
        assert torch.equal(traced(x), logits)
        feats = extractor(x)
    assert torch.equal(feats["logits"], logits) and torch.equal(feats["c3"], c3) and torch.equal(feats["c5"], c5)
    assert c5.shape[-2:] == tuple(math.ceil(s / model.output_stride) for s in ODD)

    model.train()
    grads = []
    for net in (model, torch.fx.symbolic_trace(model)):
        net.zero_grad()
        net(x).square().mean().backward()
        grads.append({name: p.grad for name, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grad, grads[1][name]) for name, grad in grads[0].items())


def test_forward_intermediates_and_the_features_only_wrapper() -> None:
    model = tiny("botnet26").eval()
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        last, maps = model.forward_intermediates(x)
        assert torch.equal(last, model.forward_features(x))
        assert len(maps) == len(model.feature_info) == 5
        for fmap, chans, reduction in zip(maps, model.feature_info.channels(), model.feature_info.reduction()):
            assert fmap.shape[1:] == (chans, *(math.ceil(s / reduction) for s in ODD))
        assert [m.shape[1] for m in model.forward_intermediates(x, 2, intermediates_only=True)] == [128, 256]
        early, (c3,) = model.forward_intermediates(x, [-3], stop_early=True)
        assert torch.equal(early, c3) and torch.equal(c3, maps[2])

        features = botnet.create_model("botnet26", features_only=True, out_indices=(1, 2), feature_cls="getter", **TINY)
        features.eval()
        assert isinstance(features, FeatureListNet) and features.feature_info.channels() == [32, 64]
        assert isinstance(features.model.layer3, torch.nn.Identity) and isinstance(features.model.fc, torch.nn.Identity)
        features.model.load_state_dict(model.state_dict(), strict=False)
        assert all(torch.equal(a, b) for a, b in zip(features(x), maps[1:3], strict=True))
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match=r"within 0\.\.4"):
        model.forward_intermediates(x, [5])
    with pytest.raises(ValueError, match="feature_cls='hook' is not supported"):
        botnet.create_model("botnet26", features_only=True, feature_cls="hook")


def test_reset_classifier_and_global_pool() -> None:
    model = tiny("botnet26")
    x = torch.randn(2, 3, 64, 64)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, model.num_features, 2, 2)
    model.reset_classifier(3, "max")
    assert model(x).shape == (2, 3) and isinstance(model.avgpool, torch.nn.AdaptiveMaxPool2d)
    model.reset_classifier(0)  # the pool stays
    assert model(x).shape == (2, model.num_features)
    assert botnet.create_model("botnet26", num_classes=0, global_pool="", **TINY)(x).dim() == 4
    with pytest.raises(ValueError, match="global_pool='' .* needs num_classes=0"):
        model.reset_classifier(3, "")


@pytest.mark.parametrize("name", ["botnet26", "botnet_s1_59"])
def test_grad_checkpointing_recomputes_blocks_with_the_same_numbers(name: str) -> None:
    model = tiny(name, drop_path_rate=0.2).train()  # stochastic depth: the recomputation must replay its RNG
    x = torch.randn(2, 3, *ODD)
    calls = []
    model.layer4[0].register_forward_pre_hook(lambda *_: calls.append(1))
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x)
        out.square().mean().backward()
        results.append((out, [p.grad for p in model.parameters()]))
    assert calls == [1, 1, 1]  # once without, twice (forward + recomputation) with checkpointing
    (out, grads), (out_ckpt, grads_ckpt) = results
    torch.testing.assert_close(out_ckpt, out, rtol=0, atol=0)
    for g, h in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(h, g, rtol=1e-5, atol=1e-7)


def test_weight_decay_and_layer_decay_groups_cover_every_parameter() -> None:
    model = tiny("timm_botnet26t_256")
    names = dict(model.named_parameters())
    exempt = model.no_weight_decay()
    assert {n for n in names if n.endswith((".rel_h", ".rel_w"))} <= exempt  # position tables are 2-D
    assert all(names[n].ndim > 1 for n in set(names) - exempt)
    for coarse in (True, False):
        matcher = model.group_matcher(coarse)
        groups = timm.models.group_parameters(model, matcher)
        assert sorted(n for group in groups.values() for n in group) == sorted(names)  # each exactly once
        assert groups[max(groups)] == ["fc.weight", "fc.bias"]  # the classifier: last group, highest LR
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    assert min(scales) < max(scales) == 1.0


# --- weights in ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Randomly initialised torchvision ResNet-50 / 101 state dicts as ``.pth`` files (nothing downloaded)."""
    folder = tmp_path_factory.mktemp("torchvision")
    paths = {}
    for name in ("resnet50", "resnet101"):
        paths[name] = folder / f"tv_{name}.pth"
        torch.save(randomise_norms(getattr(torchvision.models, name)(weights=None)).state_dict(), paths[name])
    return paths


@pytest.mark.parametrize("depth", ["50", "101"])
def test_botnet_warm_starts_from_a_torchvision_resnet(depth: str, torchvision_weights: dict[str, Path]) -> None:
    path = torchvision_weights[f"resnet{depth}"]
    state = torch.load(path, weights_only=True)
    model = botnet.create_model(f"botnet{depth}", num_classes=10)
    result = load_pretrained(model, path)
    # the three c5 3x3 convs have no place; the classifier has another shape; all else loads
    assert sorted(result.unexpected) == [f"layer4.{i}.conv2.weight" for i in range(3)]
    assert [m.split(":")[0] for m in result.misshapen] == ["fc.weight", "fc.bias"]
    assert len(result.loaded) == len(state) - 5 and len(state) == {"50": 320, "101": 626}[depth]
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert sum(name.startswith("layer4.0.conv2.") for name in result.missing) == 3  # qkv, rel_h, rel_w
    if depth == "50":  # the same through create_model: 317 of torchvision's 320 tensors at 1000 classes
        model = botnet.create_model("botnet50", pretrained=path)
        assert torch.equal(model.fc.weight, state["fc.weight"])


def test_weights_in_through_create_model_and_timm(tmp_path: Path, torchvision_weights: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="no published weights; pass a file"):
        botnet.create_model("botnet26", pretrained=True)
    source = tiny("botnet26").eval()
    botnet.save_pretrained(source, tmp_path / "run")
    x = torch.randn(1, 3, 64, 64)
    for model in (
        botnet.create_model("botnet26", pretrained=tmp_path / "run", num_classes=5, **TINY),
        botnet.create_model("botnet26", checkpoint_path=tmp_path / "run/model.safetensors", num_classes=5, **TINY),
        botnet.create_model(
            "botnet26", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "run")), num_classes=5, **TINY
        ),
    ):
        with torch.no_grad():
            assert torch.equal(model.eval()(x), source(x))
    with pytest.raises(botnet.CheckpointError, match="does not match the model"):
        botnet.create_model("resnet26", checkpoint_path=tmp_path / "run", num_classes=5, **TINY)  # strict

    register_with_timm()
    assert "botnet_botnet50" in timm.list_models("botnet_*", name_matches_cfg=True)
    assert timm.get_pretrained_cfg("botnet_botnet50").pool_size == (7, 7)
    model = timm.create_model(
        "botnet_botnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(torchvision_weights["resnet50"]))
    )
    assert model.pretrained_cfg["architecture"] == "botnet_botnet50" and model.model_name == "botnet50"
    assert torch.equal(
        model.conv1.weight, torch.load(torchvision_weights["resnet50"], weights_only=True)["conv1.weight"]
    )


def test_detector_backbone_warm_starts_from_torchvision(torchvision_weights: dict[str, Path]) -> None:
    state = torch.load(torchvision_weights["resnet50"], weights_only=True)
    detector = create_detector(
        "fasterrcnn_botnet50_fpn", num_classes=3, image_size=128, backbone_weights=torchvision_weights["resnet50"]
    )
    body = detector.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert isinstance(body.layer4[0].conv2, botnet.MHSA2d)
