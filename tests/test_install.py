"""The core install (torch, torchvision, safetensors, numpy) builds and runs models; the commands name the extra
they need. Runs in subprocesses in which the optional packages cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

OPTIONAL = (
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "torchmetrics",
    "timm",
    "yaml",
    "mlxtend",
    "matplotlib",
    "skimage",
    "pycocotools",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "webdataset",
    "tqdm",
)
# None in sys.modules makes a module unimportable (ModuleNotFoundError) and invisible to importlib.util.find_spec.
BLOCK = f"""
import sys
sys.modules.update(dict.fromkeys({OPTIONAL!r}))
"""
CORE = """
import torch
from PIL import Image

import botnet
from botnet.data import preprocess

model = botnet.create_model("botnet50", img_size=64).eval()
x = preprocess(Image.new("RGB", (80, 70), "orange"), model.pretrained_cfg)
with torch.no_grad():
    logits = model(x)
assert logits.shape == (1, 1000), logits.shape
model.save_pretrained(sys.argv[1])
again = botnet.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.testing.assert_close(again(x), logits)
with botnet.capture_attention(model) as attn:
    model(x)
assert set(attn) == {"layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"}
print("core ok")
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code, *args], capture_output=True, text=True, timeout=300)


def test_core_works_without_the_optional_packages(tmp_path: Path) -> None:
    result = _run(CORE, str(tmp_path))
    assert result.returncode == 0 and "core ok" in result.stdout, result.stderr


def test_a_command_without_its_extra_names_the_fix() -> None:
    result = _run("from botnet.cli import main; sys.exit(main(['train', '--data', 'mnist5k']))")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "botnet train: error: this command needs the [train] extra: pip install 'botnet[train]' "
        "(lightning is not installed)"
    )


def test_pack_without_the_stream_extra_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "src" / "train" / "a").mkdir(parents=True)
    result = _run(
        "from botnet.cli import main; sys.exit(main(['data', 'pack', sys.argv[1], sys.argv[2]]))",
        str(tmp_path / "src"),
        str(tmp_path / "out"),
    )
    assert result.returncode == 1, result.stderr
    assert "needs the [stream] extra: pip install 'botnet[stream]'" in result.stderr
