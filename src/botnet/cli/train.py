"""botnet train: train a registry model on mnist5k, an ImageFolder tree or WebDataset shards with Lightning
(:func:`botnet.train.run.fit`).

A run folder (--out) receives train.yaml (the resolved flags; --config it to repeat the run),
last.ckpt / best.ckpt (Lightning checkpoints, for --resume only), model.safetensors +
config.json (inference weights), logs/version_N/metrics.csv and training_curve.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from botnet.cli.common import (
    INTERRUPTED,
    ArgumentParser,
    ParseKwargs,
    add_config_arg,
    add_hardware_args,
    add_max_pixels_arg,
    parse_layered,
)
from botnet.data import MNIST5K, is_imagenette, parse_imagenette
from botnet.models import get_model_cfg
from botnet.train.data import AUGMENTS, data_defaults
from botnet.train.module import SCHEDULES
from botnet.train.run import CONFIG_NAME, fit, resume_checkpoint

PROG = "botnet train"
SGD_FAMILY = ("sgd", "nesterov", "momentum")


def _usable_cpus() -> int:
    """CPUs this process may run on (taskset / container limits, where the OS reports them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _compile_backends() -> list[str]:
    """The backends ``torch.compile`` accepts here (``inductor``, ``aot_eager``, ...)."""
    import torch._dynamo  # only when --compile is given: it takes a second to import

    return torch._dynamo.list_backends(exclude_tags=())


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  botnet train --data mnist5k --model botnet26 --epochs 10 --out runs/mnist\n"
        "  botnet train --config configs/imagenette_bot50.yaml --data imagenette:imagenette2-320\n"
        "  botnet train --data imagenette2-320 --devices 4 --strategy ddp --auto-augment rand-m9-mstd0.5\n"
        "  botnet train --resume runs/mnist                  # continue an interrupted run",
    )
    add_config_arg(parser)
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
        help=f"'{MNIST5K}' (embedded, no download), an ImageFolder root with train/<class>/ and val/<class>/, "
        "imagenette:PATH[:NOISE] (the official Imagenette folder, split and labelled by its noisy_imagenette.csv: "
        "NOISE 0, 1, 5, 25 or 50 per cent, default 0), or wds:ROOT, WebDataset shards made by botnet data pack "
        "(default: %(default)s)",
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
    add_max_pixels_arg(data)
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
    model.add_argument(
        "--initial-checkpoint",
        metavar="PATH",
        help="weights to start from: a torchvision / timm ResNet state dict, a botnet checkpoint or run folder; "
        "what fits loads and the rest is reported (e.g. resnet50.pth for --model botnet50)",
    )
    model.add_argument(
        "--grad-checkpointing", action="store_true", help="recompute each block in the backward pass (less memory)"
    )
    model.add_argument("--channels-last", action="store_true", help="model and input in channels_last memory format")
    model.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="torch.compile the network (default backend: inductor; the first steps pay for compilation, about a "
        "minute for botnet50 on 2 CPU cores)",
    )

    optim = parser.add_argument_group("optimisation (timm)")
    optim.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    optim.add_argument(
        "--opt", default="adamw", help="timm optimizer: adamw, sgd (Nesterov), lamb, ... (default: %(default)s)"
    )
    optim.add_argument("--lr", type=float, help="peak learning rate (default: 0.05 for SGD, else 1e-3)")
    optim.add_argument("--weight-decay", type=float, help="(default: 1e-4 for SGD, else 0.05)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    optim.add_argument(
        "--layer-decay",
        type=float,
        help="layer-wise LR decay, e.g. 0.75: each block learns at this times the next one's rate (default: off)",
    )
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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Flags over ``--config`` (or, when resuming a run folder, its ``train.yaml``) over the defaults, resolved."""
    parser = build_parser()
    first = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for flag in ("--resume", "--out"):
        first.add_argument(flag)
    given, _ = first.parse_known_args(argv)

    checkpoint, saved = None, None
    if hasattr(given, "resume"):
        try:
            checkpoint = resume_checkpoint(given.resume, Path(getattr(given, "out", parser.get_default("out"))))
        except FileNotFoundError as err:
            parser.error(str(err))
        if checkpoint is not None and (checkpoint.parent / CONFIG_NAME).is_file():
            saved = checkpoint.parent / CONFIG_NAME  # the run's own options, under --config and the flags
        if checkpoint is not None and not hasattr(given, "out"):
            parser.set_defaults(out=str(checkpoint.parent))

    args = parse_layered(parser, argv, base=saved)
    args.checkpoint = checkpoint
    if is_imagenette(args.data):
        try:
            parse_imagenette(args.data)
        except ValueError as err:
            parser.error(f"--data {err}")
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
    if args.compile:
        backends = _compile_backends()
        if args.compile not in backends:
            parser.error(f"--compile {args.compile}: not a torch.compile backend; use one of {backends}")
    for flag in ("epochs", "batch_size", "img_size", "accumulate"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if (args.mixup or args.cutmix) and args.batch_size % 2:
        parser.error("--mixup/--cutmix need an even --batch-size")
    return args


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
    try:
        trainer = fit(args)
    except (SIGTERMException, KeyboardInterrupt):
        print(f"{PROG}: stopped; continue with: botnet train --resume {args.out}", file=sys.stderr)
        return INTERRUPTED
    _report(trainer, Path(args.out))
    return 0
