"""``botnet convert --from-timm FILE --out DIR``: timm BoTNet weights -> a ``botnet`` checkpoint directory."""

from __future__ import annotations

import sys

from botnet.checkpoint import read_weights
from botnet.cli.common import ArgumentParser
from botnet.convert import from_timm


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="botnet convert", description=__doc__)
    parser.add_argument(
        "--from-timm",
        required=True,
        metavar="FILE",
        help="state dict of timm's botnet26t_256 / botnet50ts_256 (.safetensors, or .pth read with weights_only)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="writes model.safetensors + config.json here")
    args = parser.parse_args(argv)
    try:
        model = from_timm(read_weights(args.from_timm))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"botnet convert: {err}", file=sys.stderr)
        return 1
    model.save_pretrained(args.out, extra={"converted_from": f"timm:{args.from_timm}"})
    print(
        f"{args.from_timm} -> {args.out}: {model.model_name} {model.pretrained_cfg['input_size']}, "
        f"{model.num_classes} classes"
    )
    return 0
