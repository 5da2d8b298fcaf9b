"""Regenerate the README's model table (between the ``<!-- model-table -->`` markers) from the registry."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from botnet.summary import markdown_table
from common import RESULTS_DIR, rewrite_readme_block

BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"
THROUGHPUT = RESULTS_DIR / "throughput-cpu-fp32.csv"


def measured_speed(path: Path) -> dict[str, tuple[float, float]]:
    """``botnet:NAME`` rows of a throughput CSV: name -> (fwd+bwd img/s, ratio to torchvision resnet50)."""
    if not path.is_file():
        return {}
    with path.open() as f:
        return {
            row["model"].removeprefix("botnet:"): (float(row["fwd+bwd img/s"]), float(row["fwd+bwd x R50"]))
            for row in csv.DictReader(f)
            if row["model"].startswith("botnet:") and row["model"].count(":") == 1
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readme", type=Path, help="rewrite this file's table in place (else print)")
    args = parser.parse_args()
    table = markdown_table(speed=measured_speed(THROUGHPUT))
    if args.readme is None:
        print(table)
        return
    rewrite_readme_block(args.readme, BEGIN, END, table)
    print(f"wrote the model table to {args.readme}")


if __name__ == "__main__":
    main()
