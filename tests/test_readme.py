"""Every Python code block in the README and docs/ runs."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (page, code)
    for page in PAGES
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
]


@pytest.mark.parametrize(
    ("page", "code"), BLOCKS, ids=[f"{p.name}-{k}" for k, (p, _) in enumerate(BLOCKS)]
)
def test_python_block_runs(page, code, monkeypatch):
    from contractssm import modes

    monkeypatch.setattr(modes, "_USER_MODES", {})
    exec(compile(code, str(page), "exec"), {"__name__": "docs"})


def test_readme_has_python_blocks():
    assert BLOCKS
