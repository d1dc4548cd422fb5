"""The demo (quick mode), its CLI wrapper, the plan picture and the examples."""

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from contractssm.cli import main
from contractssm.demo import DEMO_MODES, run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _is_png(path) -> bool:
    data = Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, quick=True, say=lambda line: None)


def test_quick_demo_trains_well_above_chance(quick_result):
    assert quick_result["accuracy"] >= 0.5, quick_result["history"]
    assert len(quick_result["history"]["accuracy"]) == 3


def test_quick_demo_plans_every_mode(quick_result):
    assert set(quick_result["plans"]) == set(DEMO_MODES)
    for summary in quick_result["plans"].values():
        assert summary["predicted_ms"] > 0
        assert summary["peak_mib"] > 0
        assert summary["strategy"]


def test_quick_demo_executors_agree(quick_result):
    for mode, errors in quick_result["equivalence"].items():
        assert errors["stream"] < 1e-4, mode
        assert errors["step"] < 1e-4, mode


def test_quick_demo_streaming_matches_one_shot(quick_result):
    streaming = quick_result["streaming"]
    assert streaming["max_error"] < 1e-4 * max(1.0, streaming["scale"])
    assert streaming["same_predictions"] == 1.0


def test_quick_demo_writes_png(quick_result):
    assert _is_png(quick_result["png"])


def test_cli_demo_quick(tmp_path, capsys, monkeypatch):
    import contractssm.demo as demo

    calls = {}

    def fake_run_demo(out_dir, epochs=None, seed=0, quick=False):
        calls.update(out_dir=out_dir, epochs=epochs, seed=seed, quick=quick)
        return {}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert calls == {"out_dir": str(tmp_path), "epochs": None, "seed": 3, "quick": True}


def test_cli_demo_quick_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for marker in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "test accuracy"):
        assert marker in out
    assert _is_png(tmp_path / "contractssm-demo.png")


def test_cli_demo_bad_epochs_is_one_line(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contractssm: error:") and "epochs" in err
    assert len(err.splitlines()) == 1


def test_cli_demo_help(capsys):
    assert main(["demo", "--help"]) == 0
    assert "contractssm demo --quick" in capsys.readouterr().out


def test_save_plan_png(tmp_path):
    import contractssm
    from contractssm.viz import save_plan_png

    p = contractssm.plan("neck", {"b": 2, "c": 4, "d": 4, "n": 2, "m": 4, "l": 64})
    path = save_plan_png(p, tmp_path / "plan.png")
    assert _is_png(path)


def _run_example(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"](argv)


def test_example_train_digits(monkeypatch, capsys):
    acc = _run_example(
        "train_digits.py",
        ["--epochs", "1", "--channels", "8", "8", "--modes", "full", "s5", "--train-subset", "320"],
        monkeypatch,
    )
    assert 0.0 <= acc <= 1.0
    assert "test accuracy" in capsys.readouterr().out


def test_example_custom_mode(monkeypatch, capsys):
    losses = _run_example(
        "custom_mode.py", ["--steps", "25", "--length", "32", "--states", "4"], monkeypatch
    )
    assert losses[-1] < losses[0]
    out = capsys.readouterr().out
    assert "Chosen:" in out and "loss fell" in out


@pytest.mark.slow
def test_full_demo(tmp_path):
    result = run_demo(tmp_path)
    assert result["accuracy"] >= 0.8
    assert result["seconds"] < 120
