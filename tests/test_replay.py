"""benchmarks.replay: recorded grid picks replanned under a modified cost-model profile."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from contractssm.planner import api
from contractssm.planner.profile import default_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import replay
from benchmarks.bench import _plan

SIZES = {"b": 2, "c": 4, "n": 2, "l": 1024}


def _record(planner_strategy: str) -> dict:
    """A recorded dws cell: the planner and the autotuned plan timed the same strategy."""
    return {
        "mode": "dws",
        "sizes": dict(SIZES),
        "planner": {"strategy": planner_strategy, "fwdbwd_ms": 3.0},
        "autotuned": {"strategy": planner_strategy, "fwdbwd_ms": 5.0},
        "candidates": [
            {"strategy": "some other strategy", "predicted_ms": 9.0, "fwdbwd_ms": 2.0},
            {"strategy": "a failed one", "predicted_ms": 9.5, "fwdbwd_ms": None},
        ],
    }


def _pick() -> str:
    return _plan("dws", SIZES, requires_grad=True).strategy.describe()


def test_replay_under_the_default_profile_reproduces_the_recorded_pick_and_regret():
    (row,) = replay.replay([_record(_pick())], default_profile("cpu"))
    print(row, row.regret)
    # The strategy timed twice counts by the mean of its medians, as bench's regret does.
    assert row.pick == row.recorded and row.pick_ms == 4.0 and row.best_ms == 2.0
    assert row.regret == 2.0
    text = replay.summary([row])
    assert "worst 2.000" in text and "no pick changed" in text


def test_a_pick_the_record_did_not_time_is_reported_unmeasured():
    (row,) = replay.replay([_record("a strategy planned elsewhere")], default_profile("cpu"))
    assert row.pick_ms is None and row.regret is None
    text = replay.summary([row])
    print(text)
    assert "unmeasured in this record" in text and "regret over" not in text


def test_a_modified_profile_changes_the_pick_and_is_undone_after():
    before = api.profile_for("cpu", "cpu")
    recorded = _pick()
    assert recorded.startswith("fft")
    slow_fft = replay.modified_profile(default_profile("cpu"), values={"fft_gflops": 1e-3})
    (row,) = replay.replay([_record(recorded)], slow_fft)
    print(recorded, "->", row.pick)
    assert not row.pick.startswith("fft")
    assert api.profile_for("cpu", "cpu") == before and _pick() == recorded


def test_modified_profile_scales_then_sets_and_names_an_unknown_rate():
    base = default_profile("cpu")
    p = replay.modified_profile(
        base,
        scale={"elementwise_gbps": 2, "matmul_gflops.complex.small": 3},
        values={"fft_gflops": 20, "elementwise_gbps": 5},
    )
    assert p.elementwise_gbps == 5 and p.fft_gflops == 20
    assert p.matmul_gflops["complex"]["small"] == 3 * base.matmul_gflops["complex"]["small"]
    assert p.matmul_gflops["real"] == base.matmul_gflops["real"]
    assert base == default_profile("cpu")  # the base is not modified
    assert p.device_kind == "cpu"
    for bad in ("fft_rate", "matmul_gflops.real", "matmul_gflops.real.huge", "name"):
        with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
            replay.modified_profile(base, scale={bad: 2})


def test_main_prints_each_record_and_refuses_a_malformed_assignment(tmp_path, capsys):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"cases": [_record(_pick())]}))
    replay.main([str(path), "--scale", "elementwise_gbps=1"])
    out = capsys.readouterr().out
    print(out)
    assert str(path) in out and "regret over 1 measured picks" in out
    with pytest.raises(SystemExit, match="FIELD=NUMBER"):
        replay.main([str(path), "--set", "fft_gflops"])
    with pytest.raises(SystemExit, match="not a profile rate"):
        replay.main([str(path), "--set", "fft=3"])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for record in (bad, tmp_path / "missing.json"):
        with pytest.raises(SystemExit, match=f"{record.name}: not a readable grid record"):
            replay.main([str(record)])
