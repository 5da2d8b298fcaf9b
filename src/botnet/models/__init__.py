"""Models: ResNet V1.5 / BoTNet and the registry of named configurations."""

from botnet.models import botnet as _table  # noqa: F401  (registers the rows)
from botnet.models.factory import create_model, load_pretrained
from botnet.models.features import FeatureInfo, FeatureListNet
from botnet.models.registry import ModelCfg, get_model_cfg, list_models, register_model
from botnet.models.resnet import Bottleneck, ResNet

__all__ = [
    "Bottleneck",
    "FeatureInfo",
    "FeatureListNet",
    "ModelCfg",
    "ResNet",
    "create_model",
    "get_model_cfg",
    "list_models",
    "load_pretrained",
    "register_model",
]
