"""What every command shares: exit codes, the usage error, ``KEY=VALUE`` and checkpoint flags, the hardware flags
passed to Lightning's ``Trainer``, and the one config mechanism (YAML files of flag values under the command line).
"""

from __future__ import annotations

import argparse
import ast
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from botnet.checkpoint import CONFIG_NAME, WEIGHTS_NAME, write_text
from botnet.data.images import MAX_PIXELS

# Exit codes: 1 = the job failed (bad data, checkpoint, out of memory), 2 = usage error, 130 = interrupted.
FAILED, USAGE, INTERRUPTED = 1, 2, 130
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


class UsageError(ValueError):
    """A flag value the command cannot use (exit code 2, like argparse's own errors)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (``prog: error: ... (prog --help lists the options)``,
    exit 2) instead of the usage block and the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, epochs, counts)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count(text: str) -> int:
    """argparse type: an integer >= 0 (loader workers, threads)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def key_value(text: str) -> tuple[str, Any]:
    """``"channels=16,32,64,128"`` -> ``("channels", (16, 32, 64, 128))``: values are Python literals where they
    parse (``0.1`` a float), strings otherwise (``attention=c4,c5`` stays ``"c4,c5"``), as timm's train.py."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


class ParseKwargs(argparse.Action):
    """``--model-kwargs key=value ...`` (or the flag repeated) -> dict of :func:`key_value` pairs."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        kwargs = dict(getattr(namespace, self.dest, None) or {})
        for item in [values] if isinstance(values, str) else values:
            try:
                key, value = key_value(item)
            except argparse.ArgumentTypeError as err:
                parser.error(f"{option}: {err}")
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


def add_loader_args(parser: argparse.ArgumentParser, batch_size: int, workers: int = 0) -> None:
    """``--batch-size`` and ``--workers`` (loader processes) with these defaults."""
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help="(default: %(default)s)")
    parser.add_argument("--workers", type=count, default=workers, help="loader processes (default: %(default)s)")


def add_max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-pixels",
        type=float,
        default=MAX_PIXELS,
        help="refuse (skip) images above this many pixels before decoding them (default: %(default).0f)",
    )


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
    if args.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--accelerator {args.accelerator}: this machine has no usable CUDA GPU (torch.cuda.is_available() is "
            "False); use --accelerator cpu (or auto)"
        )
    if args.accelerator == "mps" and not torch.backends.mps.is_available():
        raise UsageError(
            "--accelerator mps: Apple's MPS backend is not available here; use --accelerator cpu (or auto)"
        )
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


def load_config_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """A YAML file of flag values (keys as the flags: ``batch_size: 64`` or ``batch-size: 64``), checked against
    ``parser``'s flags; a bad file is a usage error naming it."""
    import yaml

    if not path.is_file():
        parser.error(f"--config: {path} not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        parser.error(f"--config: {path} is not valid YAML ({str(err).splitlines()[0]})")
    if not isinstance(values, dict):
        parser.error(f"--config: {path} must hold a mapping of flag names to values")
    known = {action.dest for action in parser._actions}
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"--config: {path} has unknown keys: {', '.join(unknown)}")
    return values


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="YAML file of flag values (keys as the flags, e.g. batch_size: 64); flags on the command line win",
    )


def parse_layered(parser: argparse.ArgumentParser, argv: Sequence[str], base: Path | None = None) -> argparse.Namespace:
    """Parse ``argv`` over ``--config``'s values over ``base`` (e.g. a resumed run's saved config) over the
    defaults: the one config mechanism of ``botnet train`` and ``botnet detect train``."""
    first = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    first.add_argument("--config")
    given, _ = first.parse_known_args(argv)
    for path in (base, Path(given.config) if hasattr(given, "config") else None):
        if path is not None:
            parser.set_defaults(**load_config_file(path, parser))
    return parser.parse_args(argv)


def save_config(args: argparse.Namespace, path: Path, leave_out: Sequence[str] = ()) -> Path:
    """The resolved flags as YAML (atomically), loadable with ``--config``; ``leave_out``: flags of this
    invocation only (``config``, ``resume``, ...)."""
    import yaml

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return str(value) if isinstance(value, Path) else value

    values = {key: plain(value) for key, value in vars(args).items() if key not in (*leave_out, "config")}
    return write_text(path, yaml.safe_dump(values, sort_keys=False))
