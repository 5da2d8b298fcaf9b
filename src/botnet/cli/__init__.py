"""The ``botnet`` command: one entry point, one module per subcommand (imported only when used), one error path.

Every subcommand module has ``main(argv: list[str]) -> int | None`` over a public Python API. Errors reach the
user here, as one line on stderr and an exit code: 0 ok, 1 the job failed (bad data, damaged checkpoint, out of
memory, ...), 2 usage error (a flag value that cannot work), 130 interrupted. ``--debug`` anywhere on the command
line (or ``BOTNET_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

import torch

from botnet.cli.common import FAILED, INTERRUPTED, USAGE, UsageError

# subcommand -> module with ``main(argv: list[str]) -> int | None``
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("botnet.cli.models", "list the models with parameters and FLOPs; run them on a photo"),
    "train": ("botnet.cli.train", "train on mnist5k or an ImageFolder tree (Lightning, 1 CPU to many GPU nodes)"),
    "eval": ("botnet.cli.eval", "top-1/top-5 accuracy and a confusion matrix of a trained model"),
    "predict": ("botnet.cli.predict", "top-k classes with probabilities for image files or folders"),
    "attention": ("botnet.cli.attention", "what an MHSA block attends to: PNG figures or an HTML explorer"),
    "convert": ("botnet.cli.convert", "convert timm BoTNet weights into a botnet checkpoint directory"),
    "export": ("botnet.cli.export", "export a checkpoint to ONNX or TorchScript"),
    "detect": ("botnet.cli.detect", "train / evaluate / predict Mask R-CNN and Faster R-CNN on COCO data"),
    "data": ("botnet.cli.data", "pack an ImageFolder tree into WebDataset shards for streamed training"),
}
# The optional packages behind each extra (pip install 'botnet[extra]'), to name the fix for an ImportError.
EXTRAS = {
    "lightning": "train",
    "torchmetrics": "train",
    "timm": "train",
    "yaml": "train",
    "mlxtend": "train",
    "matplotlib": "viz",
    "skimage": "viz",
    "pycocotools": "detection",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "webdataset": "stream",
    "tqdm": "stream",
}


def _usage() -> str:
    lines = ["usage: botnet [--debug] <command> [options]   (botnet <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures with a message meant for the user (bad data, checkpoint, configuration): exit 1, one line."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    if sys.modules.get("lightning") is not None:  # e.g. --accelerator gpu on a machine without one
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errors.append(MisconfigurationException)
    return tuple(errors)


def _interrupts() -> tuple[type[BaseException], ...]:
    interrupts: list[type[BaseException]] = [KeyboardInterrupt]
    if sys.modules.get("lightning") is not None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        interrupts.append(SIGTERMException)
    return tuple(interrupts)


def run(prog: str, command: Callable[[], int | None], debug: bool = False) -> int:
    """Run ``command`` and turn what it raises into one line on stderr and an exit code (see the module notes)."""
    try:
        return int(command() or 0)
    except SystemExit:
        raise  # argparse: usage errors (2) and --help (0) have printed their own message
    except BaseException as err:
        if debug:
            raise
        if isinstance(err, _interrupts()):
            print(f"{prog}: interrupted", file=sys.stderr)
            return INTERRUPTED
        if isinstance(err, UsageError):
            message, code = f"error: {err}", USAGE
        elif isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in EXTRAS:
            package = err.name.split(".")[0]
            extra = EXTRAS[package]
            message = f"error: this command needs the [{extra}] extra: pip install 'botnet[{extra}]' "
            message += f"({package} is not installed)"
            code = FAILED
        elif isinstance(err, RuntimeError) and _is_out_of_memory(err):
            message = (
                "error: out of memory: lower --batch-size or the image size, or use --precision bf16-mixed on a GPU "
                f"({_first_line(err)})"
            )
            code = FAILED
        elif isinstance(err, _expected_errors()):
            message, code = f"error: {_first_line(err)}", FAILED
        elif isinstance(err, Exception):
            message = f"internal error: {type(err).__name__}: {_first_line(err)} (rerun with --debug for the traceback)"
            code = FAILED
        else:
            raise
        print(f"{prog}: {message}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BOTNET_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"botnet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return USAGE
    prog = f"botnet {name}"
    return run(prog, lambda: importlib.import_module(COMMANDS[name][0]).main(rest), debug)


if __name__ == "__main__":
    sys.exit(main())
