"""botnet train: train a registry model on mnist5k or an ImageFolder tree with Lightning.

A run folder (--out) receives train.yaml (the resolved flags; --config it to repeat the run),
last.ckpt / best.ckpt (Lightning checkpoints, for --resume only), model.safetensors +
config.json (inference weights), logs/version_N/metrics.csv and training_curve.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from botnet.checkpoint import atomic_write
from botnet.models import get_model_cfg
from botnet.train.callbacks import (
    LAST,
    AtomicCheckpointIO,
    ExportPretrained,
    ResumableRNG,
    SaveOnInterrupt,
    TrainingCurve,
)
from botnet.train.cli import INTERRUPTED, ParseKwargs, UsageError, add_hardware_args, run_command, trainer_placement
from botnet.train.data import AUGMENTS, ImageDataModule, data_defaults, read_class_names
from botnet.train.datasets import MNIST5K
from botnet.train.module import SCHEDULES, ImageClassifier

PROG = "botnet train"
CONFIG_NAME = "train.yaml"
SGD_FAMILY = ("sgd", "nesterov", "momentum")
# Flags that describe this invocation rather than the training recipe: not saved in train.yaml.
RUN_ONLY = ("config", "resume")


def _usable_cpus() -> int:
    """CPUs this process may run on (taskset / container limits, where the OS reports them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  botnet train --data mnist5k --model botnet26 --epochs 10 --out runs/mnist\n"
        "  botnet train --data imagenette2-320 --devices 4 --strategy ddp --auto-augment rand-m9-mstd0.5\n"
        "  botnet train --resume runs/mnist                  # continue an interrupted run",
    )
    parser.add_argument(
        "--config",
        help="YAML file of flag values (keys as the flags, e.g. batch_size: 64); flags on the command line win",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", default="runs/train", help="run folder (default: %(default)s)")
    run.add_argument(
        "--resume",
        help="continue from a .ckpt, a run folder (its last.ckpt, with its train.yaml as defaults), or 'last' "
        "(the --out folder's newest last.ckpt / SLURM hpc_ckpt if there is one, else start: for requeued jobs)",
    )
    run.add_argument("--seed", type=int, default=0, help="global seed (default: %(default)s)")
    run.add_argument("--deterministic", action="store_true", help="deterministic algorithms (reproducible, slower)")
    run.add_argument("--log-every", type=int, default=20, help="log every N steps (default: %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=MNIST5K,
        help=f"'{MNIST5K}' (embedded, no download) or an ImageFolder root "
        "with train/<class>/ and val/<class>/ (default: %(default)s)",
    )
    data.add_argument("--img-size", type=int, help="input side (default: 64 for mnist5k, else the model's)")
    data.add_argument("--in-chans", type=int, choices=(1, 3), help="1 = grayscale, 3 = RGB (default: 1 for mnist5k)")
    data.add_argument("--batch-size", type=int, default=64, help="per device (default: %(default)s)")
    data.add_argument(
        "--workers",
        type=int,
        default=min(4, _usable_cpus() - 1),
        help="loader processes per device (default: %(default)s)",
    )
    data.add_argument(
        "--augment",
        choices=AUGMENTS,
        help="rrc = random-resized crop + flip (+ RandAugment); "
        "affine = small rotation/shift/zoom (default: affine for mnist5k, else rrc)",
    )
    data.add_argument(
        "--scale",
        type=float,
        nargs=2,
        default=(0.08, 1.0),
        metavar=("MIN", "MAX"),
        help="random-resized-crop area range (default: 0.08 1.0)",
    )
    data.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability (rrc; default: 0.5)")
    data.add_argument("--auto-augment", help="timm policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment); default: none")
    data.add_argument("--reprob", type=float, default=0.0, help="random-erasing probability (default: 0)")
    data.add_argument(
        "--crop-pct", type=float, help="eval centre-crop fraction (default: 1.0 for mnist5k, else the model's)"
    )

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="botnet26", help="registered name (botnet models lists them)")
    model.add_argument(
        "--model-kwargs",
        nargs="*",
        default={},
        action=ParseKwargs,
        metavar="KEY=VALUE",
        help="create_model overrides, e.g. channels=16,32,64,128 stem_width=16 attention=c4,c5 drop_path_rate=0.1",
    )

    optim = parser.add_argument_group("optimisation (timm)")
    optim.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    optim.add_argument(
        "--opt", default="adamw", help="timm optimizer: adamw, sgd (Nesterov), lamb, ... (default: %(default)s)"
    )
    optim.add_argument("--lr", type=float, help="peak learning rate (default: 0.05 for SGD, else 1e-3)")
    optim.add_argument("--weight-decay", type=float, help="(default: 1e-4 for SGD, else 0.05)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    optim.add_argument("--sched", choices=SCHEDULES, default="cosine", help="per-step schedule (default: cosine)")
    optim.add_argument("--warmup-epochs", type=int, default=1, help="linear warmup (default: %(default)s)")
    optim.add_argument("--warmup-lr", type=float, default=1e-5, help="(default: %(default)s)")
    optim.add_argument("--min-lr", type=float, default=1e-5, help="(default: %(default)s)")
    optim.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (default: %(default)s)")
    optim.add_argument("--mixup", type=float, default=0.0, help="mixup alpha, 0 = off (default: 0)")
    optim.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha, 0 = off (default: 0)")
    optim.add_argument("--ema-decay", type=float, default=0.0, help="weight EMA decay, e.g. 0.999; 0 = off")
    optim.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value (default: off)")
    optim.add_argument("--accumulate", type=int, default=1, help="accumulate gradients over N batches")

    add_hardware_args(parser)
    return parser


def _resume_checkpoint(resume: str, out: Path) -> Path | None:
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


def _load_yaml(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if not path.is_file():
        parser.error(f"--config: {path} not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        parser.error(f"--config: {path} is not valid YAML ({str(err).splitlines()[0]})")
    if not isinstance(values, dict):
        parser.error(f"--config: {path} must hold a mapping of flag names to values")
    known = {action.dest for action in parser._actions}
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"--config: {path} has unknown keys: {', '.join(unknown)}")
    return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Flags over ``--config`` (or, when resuming a run folder, its ``train.yaml``) over the defaults, resolved."""
    parser = build_parser()
    first = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for flag in ("--config", "--resume", "--out"):
        first.add_argument(flag)
    given, _ = first.parse_known_args(argv)

    checkpoint = None
    config = Path(given.config) if hasattr(given, "config") else None
    if hasattr(given, "resume"):
        try:
            checkpoint = _resume_checkpoint(given.resume, Path(getattr(given, "out", parser.get_default("out"))))
        except FileNotFoundError as err:
            parser.error(str(err))
        if checkpoint is not None and config is None and (checkpoint.parent / CONFIG_NAME).is_file():
            config = checkpoint.parent / CONFIG_NAME
    if config is not None:
        parser.set_defaults(**_load_yaml(config, parser))
    if checkpoint is not None and not hasattr(given, "out"):
        parser.set_defaults(out=str(checkpoint.parent))

    args = parser.parse_args(argv)
    args.checkpoint = checkpoint
    try:
        cfg = get_model_cfg(args.model)
    except ValueError as err:
        parser.error(f"--model: {err}")
    for key, value in data_defaults(args.data).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.img_size = args.img_size or cfg.input_size[-1]
    sgd = args.opt.lower().split("_")[-1] in SGD_FAMILY
    args.lr = args.lr if args.lr is not None else (0.05 if sgd else 1e-3)
    args.weight_decay = args.weight_decay if args.weight_decay is not None else (1e-4 if sgd else 0.05)
    for flag in ("epochs", "batch_size", "img_size", "accumulate"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if (args.mixup or args.cutmix) and args.batch_size % 2:
        parser.error("--mixup/--cutmix need an even --batch-size")
    return args


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
            sched=args.sched,
            warmup_epochs=args.warmup_epochs,
            warmup_lr=args.warmup_lr,
            min_lr=args.min_lr,
            smoothing=args.smoothing,
            mixup=args.mixup,
            cutmix=args.cutmix,
        )
    except ValueError as err:
        raise UsageError(f"--model {args.model} --model-kwargs: {err}") from None
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
    data = args.data if args.data == MNIST5K else str(Path(args.data).resolve())  # for eval from any folder
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
            ModelCheckpoint(dirpath=out, filename="best", monitor="val/top1", mode="max", save_last=True),
            *callbacks,
        ],
    )


def save_config(args: argparse.Namespace, path: Path) -> None:
    """The resolved flags as YAML, loadable with ``--config``."""
    values = {key: value for key, value in vars(args).items() if key not in (*RUN_ONLY, "checkpoint")}
    values = {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
    atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(values, sort_keys=False)))


def fit(args: argparse.Namespace, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """Train as ``args`` (from :func:`parse_args`) say; extra ``callbacks`` are appended to the run's own."""
    out = Path(args.out)
    if args.checkpoint is None and (out / LAST).is_file():
        raise ValueError(
            f"{out} already holds a run ({LAST}): continue it with --resume {out}, or choose another --out"
        )
    pl.seed_everything(args.seed, workers=True, verbose=False)
    module = build_module(args, read_class_names(args.data))
    data = build_data(args, module.model.pretrained_cfg)
    trainer = build_trainer(args, callbacks)
    if trainer.is_global_zero:
        save_config(args, out / CONFIG_NAME)
    trainer.fit(module, datamodule=data, ckpt_path=args.checkpoint)
    return trainer


def _report(trainer: pl.Trainer, out: Path) -> None:
    if not trainer.is_global_zero:
        return
    best = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
    final = trainer.callback_metrics.get("val/top1")
    lines = [f"\n{PROG}: done, {trainer.current_epoch} epochs in {out}/"]
    if final is not None:
        lines.append(f"  val top-1 {100 * float(final):.2f}% (final weights)")
    if best is not None and best.best_model_score is not None:
        lines.append(f"  best val top-1 {100 * float(best.best_model_score):.2f}% ({Path(best.best_model_path).name})")
    lines += [
        f"  inference weights: {out}/model.safetensors + config.json  (botnet eval/predict --checkpoint {out})",
        f"  training curve:    {out}/training_curve.png",
        f"  resolved config:   {out}/{CONFIG_NAME}",
    ]
    print("\n".join(lines))


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    def command() -> int:
        try:
            trainer = fit(args)
        except SIGTERMException:
            print(f"{PROG}: stopped; continue with: botnet train --resume {args.out}", file=sys.stderr)
            return INTERRUPTED
        _report(trainer, Path(args.out))
        return 0

    return run_command(PROG, command, args.batch_size)
