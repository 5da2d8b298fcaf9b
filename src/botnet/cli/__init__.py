"""The ``botnet`` command: one entry point, one module per subcommand (imported only when used)."""

from __future__ import annotations

import importlib
import sys

# subcommand -> module with ``main(argv: list[str]) -> int | None``
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("botnet.cli.models", "list the models with parameters and FLOPs; run them on a photo"),
    "train": ("botnet.train.cli_train", "train on mnist5k or an ImageFolder tree (Lightning, 1 CPU to many GPU nodes)"),
    "eval": ("botnet.train.cli_eval", "top-1/top-5 accuracy and a confusion matrix of a trained model"),
    "predict": ("botnet.train.cli_predict", "top-k classes with probabilities for image files or folders"),
    "attention": ("botnet.viz.cli", "draw what an MHSA block attends to (PNG figures) for a checkpoint and image"),
    "convert": ("botnet.cli.convert", "convert timm BoTNet weights into a botnet checkpoint directory"),
    "export": ("botnet.cli.export", "export a checkpoint to ONNX or TorchScript"),
    "detect": ("botnet.detection.cli", "train / evaluate / predict Mask R-CNN and Faster R-CNN on COCO data"),
}


def _usage() -> str:
    lines = ["usage: botnet <command> [options]   (botnet <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"botnet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
