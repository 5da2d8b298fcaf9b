"""Flags and error handling shared by ``botnet train``, ``botnet eval`` and ``botnet predict``."""

from __future__ import annotations

import argparse
import ast
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from botnet.checkpoint import CONFIG_NAME, WEIGHTS_NAME

# Exit codes: 1 = the job failed (bad data, checkpoint, out of memory), 2 = usage error, 130 = interrupted.
FAILED, USAGE, INTERRUPTED = 1, 2, 130
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


class UsageError(ValueError):
    """A flag value the command cannot use (exit code 2, like argparse's own errors)."""


class ParseKwargs(argparse.Action):
    """``--model-kwargs key=value ...`` -> dict; values are Python literals where they parse (``16,32,64,128`` is a
    tuple, ``0.1`` a float), strings otherwise (``attention=c4,c5`` stays ``"c4,c5"``). As timm's train.py."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        kwargs = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option}: expected key=value, got {item!r}")
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        setattr(namespace, self.dest, kwargs)


def add_checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=checkpoint_dir,
        help="folder with model.safetensors + config.json (a botnet train --out folder)",
    )


def checkpoint_dir(value: str) -> Path:
    """``--checkpoint``: a ``save_pretrained`` folder, or a file in one; never a pickled Lightning ``.ckpt``."""
    path = Path(value)
    if path.suffix == ".ckpt":
        raise argparse.ArgumentTypeError(
            f"{path} is a Lightning training checkpoint (pickle, for --resume only); pass its run folder, "
            f"which holds {WEIGHTS_NAME} + {CONFIG_NAME}"
        )
    if path.is_file():
        path = path.parent
    if not (path / CONFIG_NAME).is_file():
        raise argparse.ArgumentTypeError(f"{path} holds no {CONFIG_NAME} (expected a botnet train --out folder)")
    return path


def add_hardware_args(parser: argparse.ArgumentParser, distributed: bool = True) -> None:
    """Lightning ``Trainer`` placement flags: what runs where, at which precision.

    Without ``distributed`` (evaluation, prediction) there is no ``--strategy`` / ``--num-nodes`` and one device.
    """
    group = parser.add_argument_group("hardware (passed to Lightning's Trainer)")
    group.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto (default: %(default)s)")
    group.add_argument(
        "--devices",
        default="auto" if distributed else "1",
        help="devices per node: a count, a list such as 0,1, or auto (default: %(default)s)",
    )
    if distributed:
        group.add_argument("--num-nodes", type=int, default=1, help="machines (default: %(default)s)")
        group.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp, ... (default: %(default)s)")
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto = bf16-mixed on GPUs that support it, 16-mixed on other GPUs, 32-true on CPU",
    )


def resolve_precision(precision: str, accelerator: str) -> str:
    """``"auto"`` -> mixed precision on CUDA (bf16 where supported), full precision elsewhere."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def trainer_placement(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Trainer`` keyword arguments of :func:`add_hardware_args` flags."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and later
    placement = dict(
        accelerator=args.accelerator,
        devices=args.devices,
        precision=resolve_precision(args.precision, args.accelerator),
    )
    if hasattr(args, "strategy"):
        placement.update(num_nodes=args.num_nodes, strategy=args.strategy)
    return placement


def quiet_lightning() -> None:
    """Silence Lightning's start-up notices (``GPU available: ...``) and its advice to add loader workers, for
    commands whose output is a result rather than a training log."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs torch versions


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def run_command(prog: str, command: Callable[[], int], batch_size: int | None = None) -> int:
    """Run ``command`` and turn the expected failures into one line on stderr and an exit code."""
    try:
        return command()
    except SIGTERMException:
        return INTERRUPTED
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return FAILED
    except RuntimeError as err:
        if not _is_out_of_memory(err):
            raise
        batch = f" (--batch-size {batch_size})" if batch_size else ""
        print(
            f"{prog}: error: out of memory{batch}: lower --batch-size or --img-size, or use --precision bf16-mixed "
            f"on a GPU ({str(err).splitlines()[0]})",
            file=sys.stderr,
        )
        return FAILED
