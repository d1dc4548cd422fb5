"""Every Python example in the README and the docs runs as written (docs that rot mislead).

Each fenced ``python`` block runs in a fresh namespace, from a temporary directory (examples
may write files), and must not raise; the examples carry their own asserts (streamed chunks
equal the whole sequence, compiled equals eager, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _examples():
    for page in PAGES:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        for k, block in enumerate(blocks):
            yield pytest.param(block, id=f"{page.relative_to(ROOT)}:{k}")


EXAMPLES = list(_examples())


def test_the_docs_have_examples():
    assert len(EXAMPLES) >= 15, [p.id for p in EXAMPLES]


@pytest.mark.parametrize("block", EXAMPLES)
def test_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "<docs example>", "exec"), {"__name__": "__docs_example__"})
