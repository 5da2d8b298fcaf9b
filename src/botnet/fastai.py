"""fastai interop: registry models as fastai architectures for ``vision_learner``, and the parameter split for
``Learner`` (``pip install 'botnet[fastai]'``; fastai is imported only by :func:`model`).

::

    from fastai.vision.all import vision_learner
    import botnet.fastai

    learn = vision_learner(dls, botnet.fastai.model("botnet50"), pretrained=False)  # random weights
    learn = vision_learner(dls, botnet.fastai.model("botnet50", checkpoint_path="runs/in"))  # a trained body, frozen
    learn = Learner(dls, botnet.create_model("botnet50", num_classes=10), splitter=botnet.fastai.split)

fastai builds a vision model by calling ``arch(pretrained=...)``, keeping the children before the pooling layer
(``cut``), adding its own head (concat pooling + linear layers) and splitting the parameters into groups for
discriminative learning rates and ``freeze`` (``split``); it finds ``cut``, ``split`` and the normalisation
``stats`` in ``fastai.vision.learner.model_meta`` under the architecture. :func:`model` registers them there with the
values fastai uses for torchvision's ResNets, whose children these models share (``conv1, bn1, act, maxpool,
layer1..4 | avgpool, fc``): ``cut = -2`` and the groups ``[conv1 .. layer2] [layer3, layer4] [head]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from botnet.checkpoint import load_weights, pretrained_weights_path
from botnet.models import ResNet, create_model, get_model_cfg

CUT = -2  # vision_learner's body: every child before avgpool and fc
BODY_GROUPS = 6  # conv1, bn1, act, maxpool, layer1, layer2 | layer3, layer4: fastai's ResNet split


class Arch:
    """A fastai architecture: ``Arch(name, **kwargs)(pretrained)`` builds ``create_model(name, **kwargs)``.

    Args:
        name: a registered model (``botnet.list_models()``).
        checkpoint_path: weights for ``pretrained=True``: a ``save_pretrained`` / ``botnet train --out`` folder or a
            weights file; the classifier (``fc``) is left out, as fastai replaces it. Nothing is downloaded.
        **kwargs: :func:`botnet.create_model` arguments, e.g. ``img_size=128``, ``channels=(16, 32, 64, 128)``.
    """

    def __init__(self, name: str, checkpoint_path: str | os.PathLike | None = None, **kwargs: Any) -> None:
        get_model_cfg(name)  # an unknown name fails here, with the closest names
        self.name = self.__name__ = name  # fastai and its loggers name an architecture by __name__
        self.checkpoint_path = checkpoint_path
        self.kwargs = kwargs

    def __repr__(self) -> str:
        args = [repr(self.name), *(f"{k}={v!r}" for k, v in self.kwargs.items())]
        if self.checkpoint_path is not None:
            args.append(f"checkpoint_path={str(self.checkpoint_path)!r}")
        return f"botnet.fastai.model({', '.join(args)})"

    def __call__(self, pretrained: bool = False) -> ResNet:
        """The network, with ``checkpoint_path``'s weights (all but ``fc``) when ``pretrained``.

        Raises:
            ValueError: ``pretrained`` without ``checkpoint_path`` (fastai's default is ``pretrained=True``).
            botnet.CheckpointError: weights that do not fit the network.
        """
        network = create_model(self.name, **self.kwargs)
        if not pretrained:
            return network
        if self.checkpoint_path is None:
            raise ValueError(
                f"{self.name}: botnet downloads no pretrained weights; pass pretrained=False to vision_learner for "
                f"random weights, or botnet.fastai.model({self.name!r}, checkpoint_path=DIR) with a trained folder"
            )
        path = Path(self.checkpoint_path)
        load_weights(network, pretrained_weights_path(path) if path.is_dir() else path, exclude=("fc.",))
        return network


def model(name: str, checkpoint_path: str | os.PathLike | None = None, **kwargs: Any) -> Arch:
    """``name`` as a fastai architecture for ``vision_learner(dls, arch, ...)`` (see :class:`Arch`), registered in
    fastai's ``model_meta`` with ``cut`` :data:`CUT`, ``split`` :func:`split` and the model's mean / std (which
    ``vision_learner`` adds as ``Normalize`` only with ``pretrained=True``, its rule for every architecture)."""
    from fastai.vision.learner import model_meta

    arch = Arch(name, checkpoint_path, **kwargs)
    cfg = get_model_cfg(name)
    model_meta[arch] = {"cut": CUT, "split": split, "stats": (list(cfg.mean), list(cfg.std))}
    return arch


def split(network: nn.Module) -> list[list[nn.Parameter]]:
    """fastai parameter groups ``[stem, layer1, layer2] [layer3, layer4] [head]``, for discriminative learning rates
    (``lr=slice(1e-5, 1e-3)``) and ``freeze`` / ``freeze_to``.

    Takes ``vision_learner``'s model (``nn.Sequential(body, head)``, the body cut at :data:`CUT`) or a whole
    :class:`~botnet.ResNet` (``Learner(dls, model, splitter=botnet.fastai.split)``, the head being ``fc``).
    """
    if isinstance(network, ResNet):
        stages = [network.conv1, network.bn1, network.layer1, network.layer2]
        groups: list[list[nn.Module]] = [stages, [network.layer3, network.layer4], [network.fc]]
    else:
        body, head = network[0], network[1:]
        groups = [list(body[:BODY_GROUPS]), list(body[BODY_GROUPS:]), [head]]
    return [[p for module in group for p in module.parameters()] for group in groups]
