"""Regenerate the README's model table (between the ``<!-- model-table -->`` markers) from the registry."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from botnet.summary import markdown_table

BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readme", type=Path, help="rewrite this file's table in place (else print)")
    args = parser.parse_args()
    table = markdown_table()
    if args.readme is None:
        print(table)
        return
    text = args.readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{args.readme} has no {BEGIN} ... {END} block")
    args.readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))
    print(f"wrote the model table to {args.readme}")


if __name__ == "__main__":
    main()
