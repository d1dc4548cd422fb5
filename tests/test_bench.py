"""The benchmark's baselines against the float64 reference, and a tiny smoke run of the harness.

No speed is asserted here: speed targets live in ``benchmarks/bench.py`` (issue 6).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from cases import MODES, random_operands, rel_err

from contractssm.codegen.reference import reference
from contractssm.modes import get_graph

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench  # noqa: E402
from benchmarks.baselines import baseline_a, baseline_b, build_full_kernel  # noqa: E402

TOL64 = 1e-9
#: Both branches of the Centaurus rule where it has two.
BRANCHED = ("s5", "neck", "s5_mimo", "lru")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("length", [1, 37])
def test_baselines_match_reference(mode, length):
    graph = get_graph(mode)
    sizes = dict(MODES[mode], l=length)
    ops = random_operands(graph, sizes, seed=length)
    y_ref, _ = reference(graph, ops)
    branches = (True, False) if mode in BRANCHED else (None,)
    for full_kernel in branches:
        y = baseline_a(mode, ops, full_kernel=full_kernel)
        err = rel_err(y, y_ref)
        print(f"baseline A {mode} L={length} full_kernel={full_kernel}: rel err {err:.2e}")
        assert y.shape == y_ref.shape
        assert err <= TOL64
    y = baseline_b(mode, ops)
    err = rel_err(y, y_ref)
    print(f"baseline B {mode} L={length}: rel err {err:.2e}")
    assert y.shape == y_ref.shape
    assert err <= TOL64


def test_centaurus_rule():
    # 1/C + 1/D > 1/B + 1/N: few channels and many batch/state channels build the kernel.
    assert build_full_kernel(b=64, c=4, d=4, n=64)
    assert not build_full_kernel(b=8, c=64, d=64, n=64)


def test_baselines_float32_close_to_reference():
    mode = "full"
    graph = get_graph(mode)
    sizes = dict(MODES[mode], l=256)
    ops64 = random_operands(graph, sizes)
    ops32 = {
        k: v.to(torch.complex64 if v.is_complex() else torch.float32) for k, v in ops64.items()
    }
    y_ref, _ = reference(graph, ops64)
    for fn in (baseline_a, baseline_b):
        err = rel_err(fn(mode, ops32), y_ref)
        print(f"{fn.__name__} float32 {mode}: rel err {err:.2e}")
        assert err <= 2e-4


def test_harness_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    record = bench.run_case(
        "neck",
        {"b": 2, "c": 8, "d": 8, "n": 2, "m": 4, "l": 64},
        rounds=2,
        autotune=False,
        memory=False,
        log=lambda s: None,
    )
    for name in bench.CONTENDERS:
        for field in ("forward_ms", "fwdbwd_ms", "peak_mib"):
            assert field in record[name], (name, field)
    assert record["planner"]["fwdbwd_ms"] > 0
    assert record["baseline_a"]["fwdbwd_ms"] > 0 and record["baseline_b"]["fwdbwd_ms"] > 0
    assert record["autotuned"]["fwdbwd_ms"] is None  # not run without autotune
    print(f"regret {record['regret']:.3f}")
    assert record["regret"] >= 1 - 1e-9
    assert record["step"]["batch_1"]["step_ms"] > 0
    assert record["stream"]["stream_tokens_per_s"] > 0
    # Every timed output agreed with the planner's (the stream's and step's with kernel mode).
    agreement = {
        **{n: record[n]["max_rel_diff"] for n in ("planner", "baseline_a", "baseline_b")},
        "stream": record["stream"]["max_rel_diff"],
        "step": record["step"]["batch_1"]["max_rel_diff"],
    }
    print("disagreement with the planner:", agreement)
    assert record["planner"]["max_rel_diff"] == 0
    assert all(v <= bench.AGREEMENT_TOL for v in agreement.values())
    table = bench.markdown_table([record])
    assert "| neck |" in table
    out.write_text(json.dumps({"cases": [record]}))
    assert json.loads(out.read_text())["cases"][0]["mode"] == "neck"


def test_a_contender_with_wrong_or_nan_output_fails_the_case():
    ops = {"x": torch.randn(3, 5, requires_grad=True)}
    right = {"planner": lambda: ops["x"] * 2, "same": lambda: ops["x"] * 2}
    times = bench.time_interleaved(right, ops, rounds=1, log=lambda s: None)
    assert times["same"]["max_rel_diff"] == 0
    for wrong in (lambda: ops["x"] * 2.01, lambda: ops["x"] * float("nan")):
        with pytest.raises(RuntimeError, match="disagree"):
            bench.time_interleaved({**right, "wrong": wrong}, ops, rounds=1, log=lambda s: None)


def test_main_writes_json(tmp_path, monkeypatch, capsys):
    tiny = [("dws", {"b": 2, "c": 8, "n": 4, "l": 64})]
    monkeypatch.setattr(bench, "grid_cases", lambda modes, quick=False, cells=None: tiny)
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--rounds", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (rec,) = data["cases"]
    assert rec["mode"] == "dws" and rec["sizes"] == tiny[0][1]
    assert rec["regret"] >= 1 - 1e-9
    assert data["machine"]["nproc"] >= 1
    # --report measures nothing: it merges result files into one table, summary and record.
    merged = tmp_path / "merged.json"
    assert bench.main(["--report", str(out), str(out), "--json", str(merged)]) == 0
    assert "| dws |" in capsys.readouterr().out
    assert [r["mode"] for r in json.loads(merged.read_text())["cases"]] == ["dws", "dws"]


def test_cells_pick_grid_positions():
    cases = bench.grid_cases(["full", "s4d"], cells=[0, 2])
    assert [c for _, c in cases] == [
        bench.centaurus_sizes("full", *bench.GRID[0]),
        bench.centaurus_sizes("full", *bench.GRID[2]),
        bench.model_sizes("s4d", *bench.MODEL_GRID[0]),
        bench.model_sizes("s4d", *bench.MODEL_GRID[2]),
    ]


def test_skip_too_large():
    sizes = bench.centaurus_sizes("full", 1, 256, 4096, 16)
    assert bench._skip_reason("full", sizes, "baseline_a").startswith("skipped (too large")
    assert (
        bench._skip_reason("dws", bench.centaurus_sizes("dws", 8, 64, 1024, 16), "baseline_a")
        is None
    )


def test_regret_pools_a_strategy_timed_twice():
    # The plan and an autotuned plan that kept the same strategy are the same code: their
    # two medians are averaged, not played against each other.
    timed = {
        "planner": ("fft A", 9.0),
        "autotuned": ("fft A", 6.0),
        "candidate_1": ("chunked B", 8.0),
    }
    assert bench.strategy_regret(timed) == pytest.approx(7.5 / 7.5)
    timed["candidate_2"] = ("chunked C", 5.0)
    assert bench.strategy_regret(timed) == pytest.approx(7.5 / 5.0)


def test_rounds_run_everyone_once_per_round_after_varied_predecessors():
    names = ["planner", "autotuned", "candidate_1", "candidate_2", "baseline_a", "baseline_b"]
    order = list(bench._rounds(names, 7))
    assert [r for r, _ in order] == [r for r in range(7) for _ in names]
    for r in range(7):
        assert sorted(n for k, n in order if k == r) == sorted(names)
    sequence = [n for _, n in order]
    before_planner = {sequence[i - 1] for i in range(1, len(sequence)) if sequence[i] == "planner"}
    print("contenders timed right before the planner:", sorted(before_planner))
    # A rotation would give {"baseline_b"}: the planner always after the biggest freer.
    assert len(before_planner) >= 3
    assert order == list(bench._rounds(names, 7))  # seeded: reproducible
