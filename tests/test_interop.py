"""timm interop: the ``timm_*`` rows are timm's BoTNets; ``from_timm`` / ``botnet convert`` load their weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import botnet
from botnet.cli import main as cli
from botnet.convert import from_timm
from botnet.layers import MHSA2d
from botnet.models.timm_registry import register_with_timm
from conftest import randomise_norms

SIZE = 128  # timm's BoTNets are fixed-size; built at 128 px to keep the tests fast
PAIRS = [("botnet26t_256", "timm_botnet26t_256"), ("botnet50ts_256", "timm_botnet50ts_256")]


def timm_botnet(name: str, **kwargs: object) -> nn.Module:
    return randomise_norms(timm.create_model(name, pretrained=False, img_size=SIZE, **kwargs)).eval()


@pytest.fixture(scope="module", params=PAIRS, ids=[p[0] for p in PAIRS])
def pair(request: pytest.FixtureRequest) -> tuple[nn.Module, botnet.ResNet, torch.Tensor]:
    torch.manual_seed(0)
    theirs = timm_botnet(request.param[0])
    ours = from_timm(theirs)
    assert ours.model_name == request.param[1]
    return theirs, ours, torch.randn(2, 3, SIZE, SIZE)


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_from_timm_gives_timms_outputs(pair: tuple, impl: str) -> None:
    theirs, ours, x = pair
    botnet.set_attn_impl(ours, impl)
    with torch.no_grad():
        feats, expected_feats = ours.forward_features(x), theirs.forward_features(x)
        logits, expected = ours.forward_head(feats), theirs.forward_head(expected_feats)
    assert expected_feats.std() > 0.05  # the comparisons are not between near-zero maps
    torch.testing.assert_close(feats, expected_feats, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_from_timm_is_exact_in_float64(pair: tuple) -> None:
    """Same architecture, not just close: in float64 the outputs agree to rounding."""
    theirs, ours, x = pair
    with torch.no_grad():
        feats, expected = ours.double().forward_features(x.double()), theirs.double().forward_features(x.double())
    ours.float(), theirs.float()
    torch.testing.assert_close(feats, expected, atol=1e-12, rtol=0)


def test_attention_sits_where_timm_puts_it(pair: tuple) -> None:
    theirs, ours, _ = pair
    timm_layout = [[type(block).__name__ == "SelfAttnBlock" for block in stage] for stage in theirs.stages]
    our_layout = [[isinstance(block.conv2, MHSA2d) for block in getattr(ours, f"layer{i}")] for i in range(1, 5)]
    assert our_layout == timm_layout
    assert all(not layer.scale_pos_embed for layer in ours.modules() if isinstance(layer, MHSA2d))


def test_reference_scaling_would_break_parity(pair: tuple) -> None:
    """The parity test can fail: the reference code's scaled position logits are far from timm's outputs."""
    theirs, ours, x = pair
    layers = [layer for layer in ours.modules() if isinstance(layer, MHSA2d)]
    try:
        for layer in layers:
            layer.scale_pos_embed = True
        with torch.no_grad():
            error = (ours.forward_features(x) - theirs.forward_features(x)).abs().max().item()
    finally:
        for layer in layers:
            layer.scale_pos_embed = False
    assert error > 10 * 1e-5  # ten times the parity tolerance


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_convert_cli_writes_a_checkpoint_with_timms_outputs(tmp_path: Path, suffix: str) -> None:
    theirs = timm_botnet("botnet26t_256", num_classes=5, in_chans=1)
    state = theirs.state_dict()
    path = tmp_path / f"timm{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    assert cli(["convert", "--from-timm", str(path), "--out", str(tmp_path / "ckpt")]) == 0
    model = botnet.ResNet.from_pretrained(tmp_path / "ckpt")
    assert (model.model_name, model.num_classes, model.pretrained_cfg["input_size"]) == (
        "timm_botnet26t_256",
        5,
        (1, SIZE, SIZE),
    )
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), theirs(x), atol=1e-5, rtol=0)


def test_a_timm_resnet_is_reported_with_the_closest_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    state = timm.create_model("resnet26t", pretrained=False).state_dict()
    with pytest.raises(ValueError, match=r"closest: timm_botnet26t_256, .*missing: .*layer3\.1\.conv2\.qkv, "):
        from_timm(state)
    path = tmp_path / "resnet26t.safetensors"
    save_file(state, str(path))
    assert cli(["convert", "--from-timm", str(path), "--out", str(tmp_path / "out")]) == 1
    assert "matches none of the timm-compatible models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_damaged_state_dict_names_the_keys(pair: tuple) -> None:
    theirs, _, _ = pair
    state = dict(theirs.state_dict())
    del state["stages.3.1.post_attn.running_var"]
    state["head.fc.bias"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        from_timm(state)
    message = str(info.value)
    assert "\n" not in message  # one line
    assert "missing: layer4.1.bn2 (1 tensors)" in message
    assert "unexpected: extra (1 tensors)" in message
    assert "fc.bias: file (7,) vs model (1000,)" in message


def test_attention_by_block_index_and_tiered_stem() -> None:
    model = botnet.create_model(
        "resnet50", stem="tiered", attention=(False, [3], (1, 3, 5), False), channels=(8, 16, 32, 64), stem_width=16
    )
    assert [i for i, block in enumerate(model.layer3) if isinstance(block.conv2, MHSA2d)] == [1, 3, 5]
    assert [i for i, block in enumerate(model.layer2) if isinstance(block.conv2, MHSA2d)] == [3]
    assert [model.conv1[i].out_channels for i in (0, 3, 6)] == [6, 8, 16]
    assert model.pretrained_cfg["first_conv"] == "conv1.0"
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r"layer3|names blocks outside the stage's 0\.\.5"):
        botnet.create_model("resnet50", attention=(False, False, (6,), False))
    with pytest.raises(ValueError, match=r"unknown stem 'deep'"):
        botnet.create_model("resnet50", stem="deep")


def test_timm_create_model_builds_registered_botnet_models() -> None:
    names = register_with_timm()
    assert register_with_timm() == names  # idempotent
    assert "botnet_timm_botnet26t_256" in timm.list_models("botnet_*")
    model = timm.create_model("botnet_botnet26", num_classes=3, channels=(8, 16, 32, 64), stem_width=16)
    assert isinstance(model, botnet.ResNet) and model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="no published weights; pass a file"):
        timm.create_model("botnet_botnet26", pretrained=True)
    with pytest.raises(ValueError, match="timm already has a model 'resnet"):
        register_with_timm(prefix="")
    assert timm.models.model_entrypoint("resnet50").__module__.startswith("timm.")  # timm's own untouched
