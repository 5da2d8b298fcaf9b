"""Export: ONNX (onnxruntime parity, dynamic batch / H x W), TorchScript, torch.export, torch.compile, CLI."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import botnet
from botnet.cli import main as cli
from botnet.export import export_onnx, export_program, export_torchscript, onnx_max_error
from conftest import randomise_norms, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

SIZES = [(2, 64, 64), (3, 96, 64), (1, 33, 70)]  # the export size, another batch and size, odd sizes
STRIDE_SIZES = [(2, 64, 64), (3, 96, 64), (1, 128, 160)]  # multiples of the output stride (32)


def tiny_botnet(**overrides: object) -> nn.Module:
    """A botnet26 with 1/8 widths, MHSA in c5, random BN (zero-init residuals would hide the blocks)."""
    return randomise_norms(tiny_model(num_classes=10, img_size=64, **overrides)).eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return tiny_botnet()


def assert_same(run: object, model: nn.Module, sizes: list[tuple[int, int, int]]) -> None:
    for batch, height, width in sizes:
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), atol=1e-5, rtol=0, msg=f"input {x.shape}")


def test_onnx_dynamic_batch_and_any_size(model: nn.Module, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "m.onnx", dynamic=True)
    for batch, height, width in SIZES:
        assert onnx_max_error(model, path, torch.randn(batch, 3, height, width)) < 1e-5
    assert all(layer.attn_impl == "auto" for layer in botnet.layers.attention_layers(model).values())  # restored


def test_onnx_without_dynamic_fixes_height_and_width(model: nn.Module, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "m.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 64, 64]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Got invalid dimensions"):
        session.run(None, {"input": torch.randn(1, 3, 96, 64).numpy()})


@pytest.mark.slow
def test_onnx_dynamo_exporter_with_stride_multiples(model: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    path = export_onnx(model, tmp_path / "m.onnx", dynamic=True, exporter="dynamo")
    for batch, height, width in STRIDE_SIZES:
        assert onnx_max_error(model, path, torch.randn(batch, 3, height, width)) < 1e-5
    with pytest.raises(ValueError, match="divisible by 32"):
        export_onnx(model, tmp_path / "n.onnx", dynamic=True, exporter="dynamo", img_size=(70, 64))


def test_torchscript_trace_runs_at_any_batch_and_size(model: nn.Module, tmp_path: Path) -> None:
    export_torchscript(model, tmp_path / "m.pt")
    assert_same(torch.jit.load(str(tmp_path / "m.pt")), model, SIZES)


def test_torch_export_with_dynamic_batch_and_size(model: nn.Module) -> None:
    program = export_program(model, dynamic=True)
    assert_same(program.module(), model, STRIDE_SIZES)


@pytest.mark.slow
def test_torch_compile_full_graph(model: nn.Module) -> None:
    """Inductor compiles the whole model without graph breaks; training captures fully too (aot_eager: fast)."""
    small = tiny_botnet(layers=(1, 1, 1, 2))  # MHSA with and without stride; compile time grows with depth
    assert_same(torch.compile(small, fullgraph=True, dynamic=False), small, SIZES[:1])
    small.train()
    torch.compile(small, fullgraph=True, backend="aot_eager")(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert all(p.grad is not None for p in small.parameters())


def test_cli_exports_a_checkpoint(model: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "m.onnx"
    assert cli(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--dynamic", "--out", str(out)]) == 0
    assert "onnxruntime vs PyTorch max |diff|" in capsys.readouterr().out
    assert onnx_max_error(model, out, torch.randn(1, 3, 96, 128)) < 1e-5
    ts = tmp_path / "m.pt"
    assert cli(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(ts)]) == 0
    assert_same(torch.jit.load(str(ts)), model, SIZES[1:2])
    assert cli(["export", "--checkpoint", str(tmp_path / "nope"), "--format", "onnx", "--out", str(out)]) == 1
    assert "config.json not found" in capsys.readouterr().err
