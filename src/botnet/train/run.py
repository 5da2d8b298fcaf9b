"""Classification runs as Python functions: :func:`fit`, :func:`evaluate`, :func:`predict`.

``botnet train`` / ``eval`` / ``predict`` are thin wrappers: each function takes the command's options as an
``argparse.Namespace``; ``botnet.cli.train.parse_args([...])`` (and the ``build_parser()`` of ``botnet.cli.eval`` /
``botnet.cli.predict``) build one with every default resolved, e.g.
``fit(parse_args(["--data", "mnist5k", "--epochs", "2", "--out", "runs/mnist"]))``.

A training run folder (``--out``) receives ``train.yaml`` (the resolved options; ``--config`` it to repeat the
run), ``last.ckpt`` / ``best.ckpt`` (Lightning checkpoints, for resuming only), ``model.safetensors`` +
``config.json`` (inference weights), ``logs/version_N/metrics.csv`` and ``training_curve.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader

from botnet.checkpoint import CheckpointError, clean_stale_temps, jsonable, read_checkpoint, read_config, write_json
from botnet.cli.common import UsageError, save_config, trainer_placement
from botnet.data import ImageFiles, channel_mode, collate_readable, eval_transform, find_images
from botnet.models import load_pretrained
from botnet.train.callbacks import (
    LAST,
    AtomicCheckpointIO,
    ExportPretrained,
    ResumableRNG,
    SaveOnInterrupt,
    TrainingCurve,
)
from botnet.train.data import ImageDataModule, read_class_names, resolve_data
from botnet.train.module import ImageClassifier
from botnet.train.plots import plot_confusion_matrix

CONFIG_NAME = "train.yaml"
# Options that describe one invocation rather than the training recipe: not saved in train.yaml.
RUN_ONLY = ("config", "resume", "checkpoint")


def resume_checkpoint(resume: str, out: Path) -> Path | None:
    """The checkpoint ``--resume`` names: a file, a run folder's ``last.ckpt``, or for ``last`` the newest of
    ``out``'s ``last.ckpt`` and the ``hpc_ckpt_N.ckpt`` Lightning saves before a SLURM requeue (``None``: no run
    there yet)."""
    if resume == "last":
        candidates = [path for path in (out / LAST, *out.glob("hpc_ckpt_*.ckpt")) if path.is_file()]
        return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None
    path = Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} not found")
    return path


def build_module(args: argparse.Namespace, class_names: list[str]) -> ImageClassifier:
    """The LightningModule the flags describe; ``UsageError`` for a model configuration that cannot be built."""
    pretrained_cfg = {"crop_pct": args.crop_pct} if args.crop_pct is not None else {}
    try:
        module = ImageClassifier(
            args.model,
            num_classes=len(class_names),
            in_chans=args.in_chans,
            model_kwargs={**args.model_kwargs, "img_size": args.img_size},
            class_names=class_names,
            pretrained_cfg=pretrained_cfg,
            opt=args.opt,
            lr=args.lr,
            weight_decay=args.weight_decay,
            momentum=args.momentum,
            layer_decay=args.layer_decay,
            sched=args.sched,
            warmup_epochs=args.warmup_epochs,
            warmup_lr=args.warmup_lr,
            min_lr=args.min_lr,
            smoothing=args.smoothing,
            mixup=args.mixup,
            cutmix=args.cutmix,
            channels_last=args.channels_last,
        )
    except ValueError as err:
        raise UsageError(f"--model {args.model} --model-kwargs: {err}") from None
    module.model.set_grad_checkpointing(args.grad_checkpointing)
    if args.compile:
        module.model.compile(backend=args.compile)  # in place: state_dict keys and checkpoints are unchanged
    if args.initial_checkpoint and args.checkpoint is None:  # a resumed run continues from its own weights
        load_pretrained(module.model, args.initial_checkpoint)  # logs what was left out
    if args.img_size < module.model.min_input_size:
        raise UsageError(
            f"--img-size {args.img_size} is below {args.model}'s minimum input {module.model.min_input_size}"
        )
    return module


def build_data(args: argparse.Namespace, model_cfg: dict[str, Any]) -> ImageDataModule:
    """The DataModule the flags describe, normalised as ``model_cfg`` (the model's ``pretrained_cfg``) says."""
    return ImageDataModule(
        args.data,
        img_size=args.img_size,
        in_chans=args.in_chans,
        mean=model_cfg["mean"],
        std=model_cfg["std"],
        batch_size=args.batch_size,
        workers=args.workers,
        seed=args.seed,
        max_pixels=args.max_pixels,
        interpolation=model_cfg["interpolation"],
        crop_pct=model_cfg["crop_pct"],
        augment=args.augment,
        scale=args.scale,
        hflip=args.hflip,
        auto_augment=args.auto_augment,
        re_prob=args.reprob,
    )


def build_trainer(args: argparse.Namespace, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """Lightning ``Trainer`` writing into ``args.out``: checkpoints (atomic), logs, exports, curve."""
    out = Path(args.out)
    # The run folder already holds train.yaml; fit() refuses folders with an earlier run's checkpoints.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    loggers: list[Logger] = [CSVLogger(out, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(out, name="tensorboard", default_hp_metric=False))
    ema = [EMAWeightAveraging(decay=args.ema_decay)] if args.ema_decay else []
    data = resolve_data(args.data)  # for eval from any folder
    return pl.Trainer(
        **trainer_placement(args),
        max_epochs=args.epochs,
        gradient_clip_val=args.clip_grad,
        accumulate_grad_batches=args.accumulate,
        deterministic=args.deterministic,
        logger=loggers,
        log_every_n_steps=args.log_every,
        enable_progress_bar=args.progress,
        default_root_dir=out,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            *ema,  # before the export, so that the exported weights are the averaged ones
            ExportPretrained(out, extra={"data": data}),
            TrainingCurve(out / "logs", out / "training_curve.png"),
            ResumableRNG(),
            SaveOnInterrupt(out),
            LearningRateMonitor(logging_interval="step"),
            ModelCheckpoint(dirpath=out, filename="best", monitor="val/top1", mode="max"),
            # last.ckpt after every epoch (save_last=True would write it only when val/top1 improves)
            ModelCheckpoint(dirpath=out, filename=LAST.removesuffix(".ckpt"), enable_version_counter=False),
            *callbacks,
        ],
    )


def fit(args: argparse.Namespace, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """Train as ``args`` (from :func:`parse_args`) say; extra ``callbacks`` are appended to the run's own."""
    out = Path(args.out)
    if args.checkpoint is None and (out / LAST).is_file():
        raise ValueError(
            f"{out} already holds a run ({LAST}): continue it with --resume {out}, or choose another --out"
        )
    pl.seed_everything(args.seed, workers=True, verbose=False)
    module = build_module(args, read_class_names(args.data))
    if args.checkpoint is not None:  # checked before anything in the run folder is written
        args.checkpoint = check_resume(args.checkpoint, module, fallback=getattr(args, "resume", None) == "last")
    data = build_data(args, module.model.pretrained_cfg)
    trainer = build_trainer(args, callbacks)
    if trainer.is_global_zero:
        clean_stale_temps(out)  # left by a process killed mid-write
        save_config(args, out / CONFIG_NAME, leave_out=RUN_ONLY)
    trainer.fit(module, datamodule=data, ckpt_path=args.checkpoint)
    return trainer


# What a resumed checkpoint must share with the run the flags describe: hyperparameter -> the flag that sets it.
RESUME_FIELDS = {
    "model_name": "--model",
    "num_classes": "--data (its classes)",
    "class_names": "--data (its classes)",
    "in_chans": "--in-chans",
    "model_kwargs": "--model-kwargs / --img-size",
}


def check_resume(path: Path, module: ImageClassifier, fallback: bool = False) -> Path:
    """The checkpoint to resume ``module`` from: ``path``, checked to be readable and trained as the same model
    (else one line naming the differing field). An unreadable one names the newest intact checkpoint of its run
    folder, which ``fallback`` (``--resume last``: a requeued job) uses instead, with a warning."""
    try:
        saved = read_checkpoint(path).get("hyper_parameters", {})
    except CheckpointError as err:
        intact = [p for p in _checkpoints_newest_first(path.parent) if p != path and _readable(p)]
        if fallback and intact:
            warnings.warn(
                f"--resume last: {err}; resuming from {intact[0]}, the newest intact checkpoint", stacklevel=2
            )
            return check_resume(intact[0], module)
        offer = f"; its newest intact checkpoint is {intact[0]}: --resume {intact[0]}" if intact else ""
        raise CheckpointError(f"--resume: {err}{offer}") from None
    own = dict(module.hparams)
    for field, flag in RESUME_FIELDS.items():
        theirs, ours = saved.get(field), own.get(field)
        if field == "model_kwargs":
            theirs, ours = jsonable(theirs or {}), jsonable(ours or {})
        if theirs is not None and theirs != ours:
            raise UsageError(
                f"--resume {path} was trained with {field}={theirs!r}, this run has {ours!r} ({flag}): "
                "drop the differing flags to continue it, or start a new run with another --out"
            )
    return path


def _checkpoints_newest_first(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)


def _readable(path: Path) -> bool:
    try:
        read_checkpoint(path)
    except CheckpointError:
        return False
    return True


def evaluate(args: argparse.Namespace) -> dict:
    """Run the test loop of :class:`ImageClassifier` over the split; returns the ``eval.json`` content."""
    module = ImageClassifier.from_pretrained(args.checkpoint)
    data = args.data or read_config(args.checkpoint).get("extra", {}).get("data")
    if not data:
        raise ValueError(f"{args.checkpoint}/config.json does not record its data set: pass --data")
    names = read_class_names(data)
    if names != module.class_names:
        raise ValueError(
            f"{data} has the classes {names[:10]}{'...' if len(names) > 10 else ''} but {args.checkpoint} was trained "
            f"for {module.class_names[:10]}{'...' if len(module.class_names) > 10 else ''}"
        )
    cfg = module.model.pretrained_cfg
    datamodule = ImageDataModule(
        data,
        img_size=cfg["input_size"][-1],
        in_chans=module.model.in_chans,
        mean=cfg["mean"],
        std=cfg["std"],
        batch_size=args.batch_size,
        workers=args.workers,
        eval_split=args.split,
        max_pixels=args.max_pixels,
        interpolation=cfg["interpolation"],
        crop_pct=cfg["crop_pct"],
    )
    trainer = pl.Trainer(
        **trainer_placement(args),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.json,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    images, skipped = int(module.confusion.compute().sum()), int(module.skipped.compute())
    if not images:
        raise ValueError(f"{data} {args.split}: none of its {skipped} images could be read")
    out = args.out or args.checkpoint
    figure = plot_confusion_matrix(module.confusion.cpu(), names, out / "confusion_matrix.png")
    result = {
        "checkpoint": str(args.checkpoint),
        "data": data,
        "split": args.split,
        "images": images,  # the readable ones: the metrics are over these
        "skipped": skipped,  # unreadable (or above --max-pixels), left out
        "top1": float(trainer.callback_metrics["test/top1"]),
        "top5": float(trainer.callback_metrics["test/top5"]),
        "confusion_matrix": str(figure),
    }
    write_json(out / "eval.json", result)
    return result


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per file, in order: ``{"path", "predictions": [{"class", "index", "probability"}, ...]}``, or
    ``{"path", "error"}`` for a file that cannot be read. Images are preprocessed as the checkpoint says
    (:func:`botnet.data.eval_transform`)."""
    files = find_images(args.paths)
    module = ImageClassifier.from_pretrained(args.checkpoint)
    cfg = module.model.pretrained_cfg
    dataset = ImageFiles(files, channel_mode(module.model.in_chans), eval_transform(cfg), args.max_pixels)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_readable)
    trainer = pl.Trainer(**trainer_placement(args), logger=False, enable_progress_bar=False, enable_model_summary=False)
    ranked: dict[int, list[dict[str, Any]]] = {}
    for probs, indices in trainer.predict(module, dataloaders=loader):
        top = probs.float().topk(min(args.topk, probs.shape[1]), dim=1)
        for index, values, classes in zip(indices, top.values.tolist(), top.indices.tolist(), strict=True):
            ranked[index] = [
                {"class": module.class_names[i], "index": i, "probability": round(p, 6)}
                for p, i in zip(values, classes, strict=True)
            ]
    return [
        {"path": str(path), "predictions": ranked[i]}
        if i in ranked
        else {"path": str(path), "error": "unreadable image"}
        for i, path in enumerate(files)
    ]
