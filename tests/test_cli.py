import json
import re
import subprocess
import sys

import pytest

from contractssm.cli import main

EXPECTED_MODES = ["dws", "s5", "neck", "full", "s4d", "s4", "lru", "s5_mimo"]


def _first_column_tokens(out: str) -> set[str]:
    """Names and aliases: the first two columns of every row of the `modes` table."""
    tokens: set[str] = set()
    for line in out.splitlines():
        fields = line.split()
        for field in fields[:2]:
            tokens.update(t for t in field.split(",") if t)
    return tokens


def test_modes_lists_every_builtin(capsys):
    assert main(["modes"]) == 0
    out = capsys.readouterr().out
    tokens = _first_column_tokens(out)
    missing = [m for m in EXPECTED_MODES if m not in tokens]
    assert not missing, f"modes output lacks {missing}:\n{out}"


def test_modes_shows_declarations(capsys):
    from contractssm.modes import BUILTIN_MODES

    assert main(["modes"]) == 0
    out = capsys.readouterr().out
    for name, text in BUILTIN_MODES.items():
        assert " ".join(text.split()) in out, name


def test_parse_builtin_prints_canonical_key(capsys):
    from contractssm.modes import get_graph

    assert main(["parse", "dws"]) == 0
    out = capsys.readouterr().out
    key = str(get_graph("dws").canonical().key)
    assert key in out
    assert get_graph("dws").to_text() in out


def test_parse_declaration_text(capsys):
    decl = "y[b,c,l] = E[c,n] * ssm A[c,n;l] * signal x[b,c,l]"
    assert main(["parse", decl]) == 0
    out = capsys.readouterr().out
    assert "x[b,c,l]" in out


def test_parse_json_is_valid(capsys):
    from contractssm.modes import get_graph

    assert main(["parse", "--json", "neck"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data == json.loads(json.dumps(get_graph("neck").to_dict()))


@pytest.mark.parametrize("bad", ["y[b,l] = ", "no_such_mode_xyz"])
def test_parse_bad_input_is_one_line_error(capsys, bad):
    assert main(["parse", bad]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("contractssm: error:")
    assert "Traceback" not in captured.err + captured.out


def test_subcommand_help_has_example(capsys):
    for command in ["modes", "parse"]:
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"contractssm {command}\b", out.split("example")[-1]), out


def test_python_dash_m_help():
    result = subprocess.run(
        [sys.executable, "-m", "contractssm", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "modes" in result.stdout
    assert "parse" in result.stdout
