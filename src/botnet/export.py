"""Export a model for deployment: ONNX (for onnxruntime and other runtimes), TorchScript, ``torch.export``.

What each exporter gives (PyTorch 2.14, checked by ``tests/test_export.py``):

* ONNX, ``exporter="torchscript"`` (PyTorch's legacy exporter, deprecated but default here): batch, height and
  width dynamic at any size, odd ones included, because the position tables are always resampled in the graph.
* ONNX, ``exporter="dynamo"`` (``torch.export``-based; needs ``onnxscript``): dynamic batch; height and width
  dynamic only in multiples of the model's output stride (other sizes fail in onnxruntime).
* TorchScript: ``torch.jit.trace``; the traced module runs at any batch and input size. ``torch.jit.script``
  does not compile the model (PEP 604 annotations, lazy tables).
* ``torch.export``: dynamic batch and height / width in multiples of the output stride.

ONNX graphs use MHSA's explicit path (MatMul + Softmax): with dynamic shapes the dynamo exporter mistranslates
the SDPA path's augmented ``scaled_dot_product_attention`` (shape errors in onnxruntime). TorchScript and
``torch.export`` graphs of ``attn_impl="auto"`` take the SDPA path (see :meth:`~botnet.layers.MHSA2d.resolve_impl`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from botnet.layers import set_attn_impl

EXPORTERS = ("torchscript", "dynamo")


@contextmanager
def _known_export_warnings() -> Iterator[None]:
    """Silence the warnings every export here raises and that need no action.

    The legacy ONNX exporter's and ``torch.jit``'s deprecation notices (both still work in 2.14, chosen above),
    the tracer's note that the input checks become constants, and ONNX constant folding skipping strided slices.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\._internal")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        yield


def example_input(model: nn.Module, img_size: tuple[int, int] | None = None, batch: int = 2) -> torch.Tensor:
    """A random ``(batch, C, H, W)`` input at ``img_size`` or the model's ``pretrained_cfg`` input size.

    Batch 2, not 1: ``torch.export`` would specialise a dynamic dimension that is 1 in the example.
    """
    channels, *size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    height, width = img_size or size
    return torch.randn(batch, channels, height, width)


def _dynamic_shapes(model: nn.Module, x: torch.Tensor, dynamic: bool) -> tuple[dict[int, object], ...]:
    """``torch.export`` specs: batch always dynamic; with ``dynamic`` also H and W, in multiples of the stride."""
    shapes: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=1024)}
    if dynamic:
        stride = getattr(model, "output_stride", 32)
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise ValueError(f"a dynamic H x W export needs an example size divisible by {stride}, got {x.shape[-2:]}")
        shapes[2] = stride * torch.export.Dim("h", min=1, max=4096 // stride)
        shapes[3] = stride * torch.export.Dim("w", min=1, max=4096 // stride)
    return (shapes,)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    dynamic: bool = False,
    exporter: str = "torchscript",
    img_size: tuple[int, int] | None = None,
    opset: int | None = None,
) -> Path:
    """Write ``model`` (put in eval mode) as one ONNX file with input ``"input"`` and output ``"logits"``.

    Args:
        model: a classifier (``features_only`` models return a list and are not supported).
        path: the ``.onnx`` file.
        dynamic: make height and width dynamic too (the batch always is).
        exporter: ``"torchscript"`` (any H x W) or ``"dynamo"`` (H x W in multiples of the output stride).
        img_size: example ``(H, W)`` (default: the model's input size).
        opset: ONNX opset (default: the exporter's).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    x = example_input(model, img_size)
    names = dict(input_names=["input"], output_names=["logits"], opset_version=opset)
    with set_attn_impl(model, "explicit"), torch.no_grad(), _known_export_warnings():
        if exporter == "dynamo":
            shapes = _dynamic_shapes(model, x, dynamic)
            torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=shapes, external_data=False, **names)
        else:
            axes = {"input": {0: "batch", **({2: "height", 3: "width"} if dynamic else {})}, "logits": {0: "batch"}}
            torch.onnx.export(model, (x,), path, dynamo=False, dynamic_axes=axes, **names)
    return path


def onnx_max_error(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Largest ``|onnxruntime - PyTorch|`` over the outputs for input ``x`` (needs ``onnxruntime``)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x)
    return (torch.from_numpy(out) - expected).abs().max().item()


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, img_size: tuple[int, int] | None = None
) -> torch.jit.ScriptModule:
    """Trace ``model`` (put in eval mode) with ``torch.jit.trace`` and save it; load with ``torch.jit.load``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad(), _known_export_warnings():
        traced = torch.jit.trace(model, example_input(model, img_size), check_trace=False)
        traced.save(str(path))
    return traced


def export_program(
    model: nn.Module, dynamic: bool = False, img_size: tuple[int, int] | None = None
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (put in eval mode): dynamic batch; with ``dynamic`` also H x W (see above)."""
    model.eval()
    x = example_input(model, img_size)
    return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(model, x, dynamic))
