"""fastai interop (``botnet.fastai``): ``vision_learner`` cuts the model before its pooling layer, splits it into
fastai's ResNet parameter groups, freezes a pretrained body, trains, exports; ``Learner`` takes a whole ResNet with
``botnet.fastai.split``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import botnet
from conftest import TINY

pytest.importorskip("fastai", reason="fastai is not installed (pip install 'botnet[fastai]')")
from fastai.vision.all import (  # noqa: E402
    CategoryBlock,
    DataBlock,
    GrandparentSplitter,
    ImageBlock,
    Learner,
    Normalize,
    Resize,
    accuracy,
    get_image_files,
    imagenet_stats,
    load_learner,
    parent_label,
    vision_learner,
)

import botnet.fastai  # noqa: E402

SIZE = 32
BODY = ["conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dls(tmp_path_factory: pytest.TempPathFactory):
    """fastai DataLoaders over an ImageFolder of three grey levels (8 train + 4 val 32x32 PNGs per class)."""
    root = tmp_path_factory.mktemp("fastai_folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for c, name in enumerate(("dark", "mid", "light")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(40 + 80 * c + rng.normal(0, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=GrandparentSplitter(valid_name="val"),
        get_y=parent_label,
        item_tfms=Resize(SIZE),
        batch_tfms=Normalize.from_stats(*imagenet_stats),
    )
    return block.dataloaders(root, bs=8, num_workers=0)


def arch(**kwargs) -> botnet.fastai.Arch:
    return botnet.fastai.model("botnet26", **{**TINY, "img_size": SIZE, **kwargs})


def test_vision_learner_cuts_at_the_pool_and_splits_like_a_resnet(dls) -> None:
    learn = vision_learner(dls, arch(), pretrained=False, metrics=accuracy)
    body, head = learn.model[0], learn.model[1]
    reference = botnet.create_model("botnet26", **TINY, img_size=SIZE)
    assert [type(m) for m in body] == [type(getattr(reference, name)) for name in BODY]
    assert head[-1].out_features == 3
    groups = learn.splitter(learn.model)
    sizes = [sum(p.numel() for p in group) for group in groups]
    stages = [["conv1", "bn1", "layer1", "layer2"], ["layer3", "layer4"]]
    expected = [sum(p.numel() for name in names for p in getattr(reference, name).parameters()) for names in stages]
    assert sizes[:2] == expected and sizes[2] == sum(p.numel() for p in head.parameters())
    assert sum(sizes) == sum(p.numel() for p in learn.model.parameters())
    assert learn.model[0][-1][-1].conv2.__class__.__name__ == "MHSA2d"


def test_pretrained_loads_the_body_and_freezes_it(dls, tmp_path: Path) -> None:
    trained = botnet.create_model("botnet26", **TINY, img_size=SIZE, num_classes=7)
    trained.save_pretrained(tmp_path / "run")
    learn = vision_learner(dls, arch(checkpoint_path=tmp_path / "run"))  # fastai's default: pretrained=True
    body = learn.model[0]
    torch.testing.assert_close(body[5][0].conv1.weight, trained.layer2[0].conv1.weight)
    assert not body[6][0].conv1.weight.requires_grad  # frozen: only the head (and BN, train_bn) train
    assert all(p.requires_grad for p in learn.model[1].parameters())
    learn.unfreeze()
    assert body[6][0].conv1.weight.requires_grad


def test_pretrained_without_weights_says_what_to_do(dls) -> None:
    with pytest.raises(ValueError, match="pass pretrained=False to vision_learner"):
        vision_learner(dls, arch())


def test_unknown_model_names_the_closest() -> None:
    with pytest.raises(ValueError, match="botnet50"):
        botnet.fastai.model("botnet5O")


@pytest.mark.slow
def test_fit_one_cycle_with_discriminative_rates_and_export(dls, tmp_path: Path) -> None:
    learn = vision_learner(dls, arch(), pretrained=False, metrics=accuracy, path=tmp_path)
    learn.fit_one_cycle(1, slice(1e-4, 3e-3))
    assert np.isfinite(learn.recorder.values[-1]).all()
    rates = [hyper["lr"] for hyper in learn.opt.hypers]  # one per group, from slice(1e-4, 3e-3)
    assert len(rates) == 3 and rates[0] < rates[1] < rates[2]
    learn.export("export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    label, _, probs = loaded.predict(dls.valid_ds.items[0])
    assert label in dls.vocab and probs.shape == (3,)


def test_learner_takes_a_whole_resnet_with_the_split(dls) -> None:
    network = botnet.create_model("botnet26", **TINY, img_size=SIZE, num_classes=3)
    learn = Learner(dls, network, splitter=botnet.fastai.split, metrics=accuracy)
    groups = learn.splitter(learn.model)
    assert len(groups) == 3 and [p is q for p, q in zip(groups[2], network.fc.parameters())] == [True, True]
    assert sum(len(g) for g in groups) == len(list(network.parameters()))
    learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.values[-1][0])
