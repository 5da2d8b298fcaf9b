"""Every ```python block of the README runs as it stands, each in a fresh namespace in an empty working directory:
a block defines the inputs a reader would have in hand (images, a file, a model) itself."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

README = Path(__file__).parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks() -> list[tuple[int, str]]:
    """``(line number, code)`` of each python block."""
    text = README.read_text()
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in BLOCK.finditer(text)]


BLOCKS = python_blocks()


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_python_block_runs(line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "fastai" in code:
        pytest.importorskip("fastai", reason="fastai is not installed (pip install 'botnet[fastai]')")
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md, block at line {line}", "exec"), {"__name__": "__readme__"})
