"""Every registered model: shapes, gradients, timm-style API; parity with torchvision; the paper's numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision

import botnet
from botnet.layers import MHSA2d
from botnet.models.registry import get_model_cfg
from conftest import randomise_norms, tiny_model

ALL_MODELS = botnet.list_models()


def n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_trains_and_follows_the_api(name: str) -> None:
    model = botnet.create_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 48)  # small and non-square: every stage still keeps >= 1 pixel
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[:2] == (2, model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, *get_model_cfg(name).input_size[1:])
    assert len(cfg["mean"]) == len(cfg["std"]) == 3


@pytest.mark.parametrize("name", ["botnet50", "botnet_s1_59"])
@pytest.mark.parametrize("size", [(97, 131), (64, 64)])
def test_features_only_shapes_match_feature_info(name: str, size: tuple[int, int]) -> None:
    model = botnet.create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    info = model.feature_info
    assert len(feats) == len(info) == 5
    for feat, chans, reduction in zip(feats, info.channels(), info.reduction(), strict=True):
        assert feat.shape[1] == chans
        assert feat.shape[-2:] == (math.ceil(size[0] / reduction), math.ceil(size[1] / reduction))
    expected = [2, 4, 8, 16, 32] if name == "botnet50" else [2, 4, 8, 16, 16]  # S1: stride-1 c5
    assert info.reduction() == expected


def test_out_indices_select_stages() -> None:
    model = botnet.create_model("botnet26", features_only=True, out_indices=(1, 2, 3, 4))
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    assert [f.shape[1] for f in model(torch.randn(1, 3, 64, 64))] == [256, 512, 1024, 2048]


@pytest.mark.parametrize(
    ("name", "builder"), [("resnet50", "resnet50"), ("resnet101", "resnet101"), ("resnet152", "resnet152")]
)
def test_torchvision_weights_load_strictly_and_match(name: str, builder: str) -> None:
    reference = randomise_norms(getattr(torchvision.models, builder)(weights=None)).eval()
    model = botnet.create_model(name).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["resnet50", "botnet50", "botnet101", "botnet152"])
def test_parameter_counts_match_the_paper(name: str) -> None:
    # paper.md: R50 25.5M (torchvision 25.557M), BoT50 20.8M; BoT101/152 derived as R101/152 - 4.72M.
    expected = {"resnet50": 25.557, "botnet50": 20.8, "botnet101": 39.8, "botnet152": 55.5}[name]
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = botnet.create_model(name)
    assert n_params(model) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n.startswith("botnet_s1")])
def test_s1_parameter_counts(name: str) -> None:
    """The paper's S1 counts are ~10% above ours; SE in the MHSA blocks too accounts for the gap to within 1%.

    paper.md puts SE in the convolutional blocks only (the reference port) and warns that the paper's counting
    script is reported buggy; this test pins both facts so a change in either direction is noticed.
    """
    with torch.device("meta"):
        model = botnet.create_model(name)
    paper = get_model_cfg(name).paper_params
    se_in_c5 = sum(2 * 2048 * 128 + 128 + 2048 for _ in model.layer4) / 1e6  # SE(2048 -> 128 -> 2048) per block
    assert n_params(model) == pytest.approx(paper, rel=0.12)
    assert n_params(model) + se_in_c5 == pytest.approx(paper, rel=0.01)


def test_paper_layout_of_botnet50() -> None:
    model = botnet.create_model("botnet50")
    attn = {name: m for name, m in model.named_modules() if isinstance(m, MHSA2d)}
    assert list(attn) == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    assert [m.num_heads for m in attn.values()] == [4, 4, 4]
    assert [m.dim_head for m in attn.values()] == [128, 128, 128]
    assert [m.pos_embed.feat_size for m in attn.values()] == [(14, 14), (7, 7), (7, 7)]  # 224 input
    assert isinstance(attn["layer4.0.conv2"].pool, torch.nn.AvgPool2d)
    # V1.5: stride on the 3x3 conv, never on the first 1x1
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    assert model.layer4[0].bn3.weight.abs().sum() == 0  # zero-initialised last BN gamma


def test_s1_family_layout() -> None:
    model = botnet.create_model("botnet_s1_59")
    assert isinstance(model.act, torch.nn.SiLU)
    assert all(isinstance(b.conv2, MHSA2d) for b in model.layer4) and len(model.layer4) == 6
    assert all(isinstance(b.se, botnet.layers.SqueezeExcite) for b in model.layer3)
    assert all(not isinstance(b.se, botnet.layers.SqueezeExcite) for b in model.layer4)
    assert model.layer4[0].conv2.pos_embed.feat_size == (14, 14) and model.output_stride == 16


@pytest.mark.parametrize(
    ("attention", "expected"),
    [
        ("c4,c5", {"layer3": 6, "layer4": 3}),
        ((False, 1, False, True), {"layer2": 1, "layer4": 3}),
        ("none", {}),
    ],
)
def test_attention_override(attention: object, expected: dict[str, int]) -> None:
    model = botnet.create_model("resnet50", attention=attention)
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, MHSA2d):
            counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + 1
    assert counts == expected
    if attention == (False, 1, False, True):
        assert isinstance(model.layer2[3].conv2, MHSA2d) and not isinstance(model.layer2[2].conv2, MHSA2d)


@pytest.mark.parametrize(
    ("pos_embed", "size"),
    [
        ("relative", (224, 224)),
        ("relative", (256, 256)),
        ("relative", (97, 131)),
        ("absolute", (97, 131)),
        ("none", (97, 131)),
    ],
)
def test_botnet50_forward_backward_batch_one(pos_embed: str, size: tuple[int, int]) -> None:
    model = botnet.create_model("botnet50", num_heads=8, pos_embed=pos_embed)
    out = model(torch.randn(1, 3, *size))
    out.sum().backward()
    assert out.shape == (1, 1000) and model.layer4[1].conv2.qkv.weight.grad is not None


def test_single_channel_input() -> None:
    model = botnet.create_model("botnet26", num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    assert len(model.pretrained_cfg["mean"]) == 1


@pytest.mark.slow
def test_1024_input_uses_resampled_tables() -> None:
    model = botnet.create_model("botnet50").eval()
    with torch.no_grad():
        logits, attn = model(torch.randn(1, 3, 1024, 1024), return_attention=True)
    assert logits.shape == (1, 1000)
    assert attn["layer4.0.conv2"].shape == (1, 4, 64 * 64, 64 * 64)
    assert attn["layer4.1.conv2"].shape == (1, 4, 32 * 32, 32 * 32)


def test_return_attention() -> None:
    model = botnet.create_model("botnet26", attention="c4,c5").eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        logits, attn = model(x, return_attention=True)
        plain = model(x)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)  # explicit path == fused path
    assert list(attn) == ["layer3.0.conv2", "layer3.1.conv2", "layer4.0.conv2", "layer4.1.conv2"]
    assert attn["layer3.0.conv2"].shape == (2, 4, 12 * 8, 12 * 8)
    assert attn["layer4.1.conv2"].shape == (2, 4, 3 * 2, 3 * 2)
    for probs in attn.values():
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert not any(m.capture for m in model.modules() if isinstance(m, MHSA2d))


def test_drop_path_rises_linearly() -> None:
    model = botnet.create_model("botnet26", drop_path_rate=0.3)
    rates = [
        b.drop_path.p if hasattr(b.drop_path, "p") else 0.0
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
        for b in layer
    ]
    assert rates == pytest.approx([0.3 * i / 7 for i in range(8)])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: m(torch.randn(1, 1, 64, 64)), r"expected 3 input channels, got 1; .* in_chans=1"),
        (lambda m: m(torch.randn(1, 3, 16, 64)), r"input 16x64 is smaller than this model's minimum of 32x32"),
        (lambda m: m(torch.randn(3, 64, 64)), r"expected a batch of images .*shape \(3, 64, 64\); .*unsqueeze\(0\)"),
    ],
)
def test_bad_input_names_the_problem(make, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        make(botnet.create_model("botnet26").eval())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="botnet5O"), r"unknown model 'botnet5O'; did you mean botnet50"),
        (dict(name="botnet50", num_heads=3), r"layer4.0: num_heads=3 does not divide the 512 attention channels"),
        (dict(name="botnet50", pos_embed="sine"), r"unknown pos_embed 'sine'"),
        (dict(name="botnet50", attention="c6"), r"unknown stage 'c6'"),
        (dict(name="botnet50", attention=(True, False)), r"needs 4 per-stage entries"),
        (dict(name="botnet50", widht=2), r"bad override .*widht"),
        (dict(name="botnet50", act_layer="gelu"), r"unknown act_layer 'gelu'"),
    ],
)
def test_bad_configuration_names_the_problem(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        botnet.create_model(**kwargs)


def test_list_models_pattern() -> None:
    assert botnet.list_models("botnet5*") == ["botnet50"]
    assert {"botnet50", "botnet101", "botnet152", "resnet50", "botnet_s1_59"} <= set(ALL_MODELS)


def test_dim_head_override_sets_attention_width() -> None:
    model = botnet.create_model("botnet26", dim_head=32)  # 4 heads x 32 = 128 channels out of each MHSA
    assert model.layer4[0].bn2.num_features == 128 and model.layer4[0].conv3.in_channels == 128
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_save_and_load_pretrained_round_trip(tmp_path) -> None:  # noqa: ANN001
    import os

    model = tiny_model(num_classes=4, in_chans=1).eval()
    model.pretrained_cfg["crop_pct"] = 1.0
    botnet.save_pretrained(model, tmp_path, extra={"class_names": ["a", "b", "c", "d"]})
    assert oct(os.stat(tmp_path / "model.safetensors").st_mode & 0o044) == oct(0o044 & ~_umask())  # not 0600
    loaded = botnet.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.pretrained_cfg["crop_pct"] == 1.0
    assert botnet.load_config(tmp_path)["extra"]["class_names"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"does not match the model \(the file was trained for botnet26\)"):
        botnet.checkpoint.load_weights(
            botnet.create_model("botnet26", num_classes=4), tmp_path / "model.safetensors", trained_for="botnet26"
        )


def test_from_pretrained_loads_folders_written_before_model_args(tmp_path) -> None:  # noqa: ANN001
    """Run folders of earlier versions name a registry row and its ``create_model`` overrides, no ``model_args``."""
    model = botnet.create_model("botnet26", num_classes=3, in_chans=1, channels=(8, 16, 32, 64), stem_width=8).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["model_args"]
    config["overrides"] = {"channels": [8, 16, 32, 64], "stem_width": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = botnet.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.model_name == "botnet26" and loaded.pretrained_cfg["input_size"] == (1, 224, 224)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_from_pretrained_at_another_resolution_resamples_tables(tmp_path) -> None:  # noqa: ANN001
    small = tiny_model(num_classes=3, img_size=64)
    botnet.save_pretrained(small, tmp_path)
    big = botnet.from_pretrained(tmp_path, img_size=256).eval()  # c5 tables for 8x8 maps instead of 2x2
    rel_w = big.layer4[1].conv2.pos_embed.rel_w
    assert rel_w.shape == (2 * 8 - 1, small.layer4[1].conv2.dim_head)
    src = small.layer4[1].conv2.pos_embed.rel_w
    torch.testing.assert_close(rel_w[0], src[0])  # ends kept: the largest offsets stay the largest
    torch.testing.assert_close(rel_w[7], src[1])  # offset 0 stays central
    assert big(torch.randn(1, 3, 256, 256)).shape == (1, 3)
