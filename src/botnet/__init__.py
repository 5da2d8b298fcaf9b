"""botnet: Bottleneck Transformers (BoTNet, Srinivas et al. 2021) for PyTorch."""

from botnet import layers
from botnet.checkpoint import CheckpointError
from botnet.checkpoint import read_config as load_config
from botnet.layers import MHSA2d, capture_attention, set_attn_impl
from botnet.models import ModelCfg, ResNet, create_model, get_model_cfg, list_models, register_model

from_pretrained = ResNet.from_pretrained  # botnet.from_pretrained(dir, **overrides) -> ResNet
save_pretrained = ResNet.save_pretrained  # botnet.save_pretrained(model, dir, extra=None) -> Path

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "MHSA2d",
    "ModelCfg",
    "ResNet",
    "capture_attention",
    "create_model",
    "from_pretrained",
    "load_config",
    "get_model_cfg",
    "layers",
    "list_models",
    "register_model",
    "save_pretrained",
    "set_attn_impl",
    "__version__",
]
