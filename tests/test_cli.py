import json
import pathlib
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


# -- planning commands --------------------------------------------------------------------------

NECK_SIZES = "b=2,c=8,d=8,n=2,m=4,l=64"


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    print(captured.err)
    assert len(lines) == 1 and lines[0].startswith("contractssm: error:")
    assert needle in lines[0] and "Traceback" not in captured.err


def test_plan_prints_table(capsys):
    assert main(["plan", "neck", "--sizes", NECK_SIZES]) == 0
    out = capsys.readouterr().out
    assert "Chosen:" in out and "Predicted time:" in out and "Candidates" in out


def test_plan_json_and_dot(capsys, tmp_path):
    dot = tmp_path / "plan.dot"
    argv = ["plan", "s5", "--sizes", "b=2,c=4,d=4,s=8,l=32", "--json", "--dot", str(dot)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    for field in (
        "declaration",
        "sizes",
        "steps",
        "algorithm",
        "predicted_seconds",
        "peak_bytes",
        "candidates",
    ):
        assert field in data
    assert all("predicted_seconds" in c for c in data["candidates"])
    assert dot.read_text().startswith("digraph")


def test_plan_options(capsys):
    argv = [
        "plan",
        "dws",
        "--sizes",
        "b=2,c=4,n=4,l=64",
        "--algorithm",
        "direct",
        "--train",
        "--objective",
        "memory",
        "--memory-limit",
        "64MiB",
        "--json",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["algorithm"] == "direct" and data["requires_grad"] is True
    assert data["objective"] == "memory" and data["memory_limit"] == 64 * 2**20


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["plan", "neck", "--sizes", "b=2,c=8"], "'d'"),
        (["plan", "neck", "--sizes", "b8"], "b8"),
        (["plan", "neck", "--sizes", NECK_SIZES + ",zz=3"], "'zz'"),
        (["plan", "neck", "--sizes", NECK_SIZES, "--memory-limit", "1KiB"], "smallest peak"),
        (["plan", "neck", "--sizes", NECK_SIZES, "--memory-limit", "lots"], "lots"),
        (["plan", "nosuch", "--sizes", "b=1"], "nosuch"),
        (["explain", "neck", "--sizes", "b=0,c=8,d=8,n=2,m=4,l=64"], "'b'"),
    ],
)
def test_plan_bad_input_is_one_line_error(capsys, argv, needle):
    _one_line_error(capsys, argv, needle)


def test_explain_shows_generated_source(capsys):
    assert main(["explain", "dws", "--sizes", "b=2,c=4,n=4,l=32", "--all"]) == 0
    out = capsys.readouterr().out
    assert "def kernel(x, A, W0):" in out
    assert "def stream(" in out and "def step(" in out


def test_cache_commands(capsys, tmp_path, monkeypatch):
    from contractssm.planner import cache as cache_module

    monkeypatch.setattr(cache_module, "DEFAULT_CACHE", cache_module.PlanCache(str(tmp_path)))
    assert main(["cache", "path"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert main(["plan", "dws", "--sizes", "b=1,c=2,n=2,l=8"]) == 0
    capsys.readouterr()
    import contractssm

    contractssm.plan("dws", {"b": 1, "c": 2, "n": 2, "l": 9}, cache=cache_module.DEFAULT_CACHE)
    assert main(["cache", "info"]) == 0
    assert "plans on disk: 1" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert main(["cache", "wipe"]) == 2  # argparse's usage message, never a traceback
    err = capsys.readouterr().err
    assert "invalid choice: 'wipe'" in err and "Traceback" not in err


def test_calibrate_command(capsys, monkeypatch, tmp_path):
    from contractssm.planner import calibrate as calibrate_module
    from contractssm.planner.profile import default_profile

    monkeypatch.setenv("CONTRACTSSM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibrate_module, "calibrate", lambda *a, **k: default_profile("cpu"))
    assert main(["calibrate", "--budget", "1"]) == 0
    out = capsys.readouterr().out
    assert "saved to" in out and str(tmp_path) in out


# -- pictures and the remaining commands' bad input ----------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", ["plan", "explain"])
def test_png_writes_a_png(capsys, tmp_path, command):
    pytest.importorskip("matplotlib")
    png = tmp_path / f"{command}.png"
    assert main([command, "dws", "--sizes", "b=2,c=4,n=4,l=32", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert str(png) in out


def test_png_with_json_keeps_stdout_json(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plan.png"
    argv = ["plan", "dws", "--sizes", "b=2,c=4,n=4,l=32", "--json", "--png", str(png)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["algorithm"]
    assert str(png) in captured.err
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_png_unwritable_path_is_one_line_error(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "no" / "such" / "dir" / "plan.png"
    _one_line_error(
        capsys, ["plan", "dws", "--sizes", "b=2,c=4,n=4,l=32", "--png", str(png)], "png"
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["calibrate", "--budget", "0"], "--budget"),
        (["calibrate", "--budget", "-1"], "--budget"),
        (["calibrate", "--budget", "nan"], "--budget"),
        (["bench", "--modes", "nosuch"], "nosuch"),
        (["bench", "--modes", "dws", "--rounds", "0"], "--rounds"),
        (["demo", "--epochs", "0"], "epochs"),
    ],
)
def test_other_commands_bad_input_is_one_line_error(capsys, monkeypatch, argv, needle):
    from contractssm.planner import calibrate as calibrate_module

    # never measure or benchmark for real: the checks must come first
    monkeypatch.setattr(calibrate_module, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    monkeypatch.chdir(pathlib.Path(__file__).resolve().parent.parent)  # bench needs the checkout
    _one_line_error(capsys, argv, needle)


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "--dtype", "float16"],
        ["calibrate", "--budget", "soon"],
        ["bench", "--rounds", "many"],
        ["demo", "--epochs", "x"],
    ],
)
def test_argparse_rejections_exit_2_without_traceback(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "error:" in captured.err


def test_planning_commands_help_has_examples(capsys):
    for command in ["plan", "explain", "cache", "calibrate", "bench", "demo"]:
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"contractssm {command}\b", out.split("example")[-1]), command
    assert main(["plan", "--help"]) == 0
    assert "--png" in capsys.readouterr().out
