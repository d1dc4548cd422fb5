"""Planner vs the public Centaurus rule and a one-einsum baseline, measured side by side.

Run: ``python -m benchmarks.bench [--quick] [--json FILE] [--plot FILE.png] [--modes ...]``
(or ``contractssm bench ...`` from the repository root).

Every case (a built-in mode at a grid cell) runs in a fresh process (the heap earlier cases
grew would bias later allocations), and in it the contenders run interleaved (round-robin
over contenders in a fresh seeded shuffle every round, several rounds, medians):

* ``planner``: ``contractssm.plan(mode, sizes, requires_grad=True)``, default objective;
* ``autotuned``: the same with ``autotune=True`` (not in ``--quick``);
* every other candidate the plan kept (``Plan.candidates``, up to 8), giving
  ``best_candidate`` and ``regret`` = planner fwd+bwd / best measured fwd+bwd;
* ``baseline_a`` (the public Centaurus rule) and ``baseline_b`` (one frequency-domain einsum
  ordered by opt_einsum "optimal"), see :mod:`benchmarks.baselines`.

Forward time is one training forward (inputs require grad); forward+backward adds
``y.sum().backward()``. Peak memory of forward+backward is the growth of the peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) around one forward+backward in a fresh
subprocess per contender and case (not in ``--quick``). Step mode (batch 1 and 8) is compared
with kernel mode on a length-1 input, and chunked streaming (chunk 256) with kernel mode on the
same total length, both without autograd and in a fresh subprocess per case; streaming uses
``Executor.prepare`` (the parameter-only steps once per run, as kernel mode computes its
kernel once per call).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

import contractssm
from benchmarks.baselines import baseline_a, baseline_b, predicted_bytes
from benchmarks.planning import GRID, MODEL_GRID, centaurus_sizes, model_sizes
from contractssm.codegen.bind import canonical_args, state_shape
from contractssm.modes import get_graph
from contractssm.planner.autotune import interleaved_orders, memory_budget
from contractssm.planner.cache import PlanCache
from contractssm.planner.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
CENTAURUS_MODES = ("dws", "s5", "neck", "full")
MODEL_MODES = ("s5_mimo", "lru", "s4d")
CONTENDERS = ("planner", "autotuned", "best_candidate", "baseline_a", "baseline_b")
#: Skip a contender predicted to need more than this many bytes or seconds.
MAX_BYTES = 16 * 2**30
MAX_SECONDS = 60.0
#: A contender whose warm-up forward+backward takes longer than this is timed in one round only.
SLOW_S = 5.0
MEMORY_NOTE = (
    "peak memory: growth of the peak resident set size (VmHWM, reset through "
    "/proc/self/clear_refs, over VmRSS before) around the second forward+backward in a fresh "
    "subprocess per contender and case"
)


# -- cases and operands ---------------------------------------------------------------------------


def grid_cases(
    modes: Sequence[str], quick: bool = False, cells: Sequence[int] | None = None
) -> list[tuple[str, dict[str, int]]]:
    """(mode, sizes) of the grid (or the ``--quick`` subset) for the chosen modes.

    ``cells`` keeps only those positions (0-based) of each mode's list of grid cells.
    """
    out = []
    for mode in modes:
        if mode in CENTAURUS_MODES:
            cells_of = [centaurus_sizes(mode, *cell) for cell in (GRID[:1] if quick else GRID)]
        elif mode in MODEL_MODES:
            if quick and mode != "s5_mimo":
                continue
            grid = MODEL_GRID[:1] if quick else MODEL_GRID
            cells_of = [model_sizes(mode, b, length) for b, length in grid]
        else:
            raise SystemExit(
                f"bench: unknown mode {mode!r} (choose from "
                f"{', '.join(CENTAURUS_MODES + MODEL_MODES)})"
            )
        out += [(mode, c) for k, c in enumerate(cells_of) if cells is None or k in cells]
    return out


def make_operands(
    mode: str, sizes: dict[str, int], *, requires_grad: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random float32 operands by name: real signal, stable complex rate, weights."""
    graph = get_graph(mode)
    gen = torch.Generator().manual_seed(seed)
    ops = {}
    for op in graph.operands:
        shape = [sizes[i] for i in op.indices]
        if op is graph.recurrence:
            re = -(0.01 + 0.5 * torch.rand(shape, generator=gen))
            t = torch.complex(re, torch.randn(shape, generator=gen))
        elif op.is_complex:
            t = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
            t = t / math.sqrt(2 * max(1, t.shape[-1]))
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(max(1, shape[-1] if shape else 1))
        ops[op.name] = t.requires_grad_(requires_grad)
    return ops


def _plan(mode: str, sizes: dict[str, int], **options) -> Plan:
    """A freshly made plan (private in-memory cache: no stale plans from disk)."""
    return contractssm.plan(mode, sizes, cache=PlanCache(directory=None), **options)


def _fn_of(
    mode: str, name: str, plan: Plan | None, ops: dict[str, torch.Tensor]
) -> Callable[[], torch.Tensor]:
    """A zero-argument forward for one contender over the operands ``ops``."""
    if name == "baseline_a":
        return lambda: baseline_a(mode, ops)
    if name == "baseline_b":
        return lambda: baseline_b(mode, ops)
    kernel = contractssm.executors(plan).kernel
    args = canonical_args(get_graph(mode), ops)
    return lambda: kernel(*args)


def _skip_reason(mode: str, sizes: dict[str, int], name: str) -> str | None:
    """``"skipped (too large)"`` when a baseline is predicted over the memory/time limits."""
    need = predicted_bytes(name, mode, sizes)
    # A forward+backward touches its bytes a few times; ~1 GB/s is this CPU's pessimistic rate.
    if need > MAX_BYTES or need / 1e9 > MAX_SECONDS:
        return f"skipped (too large: ~{need / 2**30:.0f} GiB predicted)"
    return None


# -- timing ---------------------------------------------------------------------------------------


def _clear_grads(ops: dict[str, torch.Tensor]) -> None:
    for t in ops.values():
        t.grad = None


def _rounds(names: list[str], rounds: int):
    """``(round, name)`` in interleaved order, a fresh (seeded) shuffle every round.

    A contender that frees large buffers (baseline B) makes the next one's allocations fault
    pages in. Rotating the order would not spread that cost: a rotation keeps the cyclic
    order, so the first contender (the planner) would follow the last (baseline B) in every
    round but the first. Measured with rotation, ``neck`` at (1, 256, 4096): the planner 6.21
    ms fwd+bwd, the autotuned plan (the same strategy, same code) 3.45 ms. A shuffle gives
    every contender random predecessors; the seed keeps runs reproducible (the shuffles are
    autotuning's, :func:`~contractssm.planner.autotune.interleaved_orders`).
    """
    for r, order in enumerate(interleaved_orders(len(names), rounds)):
        for k in order:
            yield r, names[k]


def time_interleaved(
    fns: dict[str, Callable[[], torch.Tensor]],
    ops: dict[str, torch.Tensor],
    rounds: int,
    log: Callable[[str], None] = print,
    slow_s: float = SLOW_S,
) -> dict[str, dict[str, float]]:
    """Median forward and forward+backward milliseconds of each contender, interleaved.

    Every contender runs one forward+backward to warm up, its output compared with the first
    contender's (``max_rel_diff``; over :data:`AGREEMENT_TOL` the case fails); then each round
    runs every contender's forward and forward+backward in turn. A contender whose warm-up
    exceeds ``slow_s`` seconds runs in the first round only (one forward, one
    forward+backward).
    """
    fwd: dict[str, list[float]] = {k: [] for k in fns}
    both: dict[str, list[float]] = {k: [] for k in fns}
    slow = set()
    first = None
    errors: dict[str, float] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        y = fn()
        y.sum().backward()
        took = time.perf_counter() - start
        _clear_grads(ops)
        first = y.detach() if first is None else first
        errors[name] = disagreement(y, first)
        del y
        if took > slow_s:
            slow.add(name)
        log(
            f"    warm-up {name:24s} {took * 1e3:9.1f} ms"
            + (" (slow: one round)" * (took > slow_s))
        )
    _check_agreement(errors, f"{next(iter(fns))} against the other contenders")
    for r, name in _rounds(list(fns), rounds):
        if r and name in slow:
            continue
        start = time.perf_counter()
        y = fns[name]()
        fwd[name].append(time.perf_counter() - start)
        del y
        start = time.perf_counter()
        fns[name]().sum().backward()
        both[name].append(time.perf_counter() - start)
        _clear_grads(ops)
    return {
        k: {
            "forward_ms": statistics.median(fwd[k]) * 1e3,
            "fwdbwd_ms": statistics.median(both[k]) * 1e3,
            "samples": len(both[k]),
            "max_rel_diff": errors[k],
        }
        for k in fns
    }


#: The largest disagreement (:func:`disagreement`) with the planner's output a contender may show:
#: a timing of wrong (or non-finite) results is void. Float32 FFT against time-domain
#: evaluations of the grid differ by ~1e-6 to 1e-5.
AGREEMENT_TOL = 1e-3


def disagreement(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |y - ref| / max |ref|``; infinite where either holds a NaN or an infinity."""
    y, ref = y.detach(), ref.detach()
    if not (torch.isfinite(y).all() and torch.isfinite(ref).all()):
        return math.inf
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _check_agreement(errors: dict[str, float], what: str) -> None:
    """Raise (the case fails) when any contender's output disagrees with the reference's."""
    bad = {k: v for k, v in errors.items() if not v <= AGREEMENT_TOL}
    if bad:
        listed = ", ".join(f"{k} {v:.1e}" for k, v in bad.items())
        raise RuntimeError(
            f"bench: {what}: outputs disagree (tolerance {AGREEMENT_TOL:g}): {listed}"
        )


def _median_call(
    fns: dict[str, Callable[[], object]], rounds: int, reps: int, slow_s: float = SLOW_S
) -> dict[str, float]:
    """Median seconds per call of each zero-argument function, interleaved over rounds.

    A function whose warm-up call exceeds ``slow_s`` seconds runs in the first round only.
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    slow = set()
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        if time.perf_counter() - start > slow_s:
            slow.add(name)
    for r, name in _rounds(list(fns), rounds):
        if r and name in slow:
            continue
        start = time.perf_counter()
        for _ in range(reps):
            fns[name]()
        samples[name].append((time.perf_counter() - start) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def step_latency(mode: str, sizes: dict[str, int], batch: int, rounds: int) -> dict[str, float]:
    """Per-token latency (ms) of step mode vs kernel mode on a length-1 input."""
    graph = get_graph(mode)
    batch_index = graph.signal.indices[0]
    one = dict(sizes, **{batch_index: batch, graph.time: 1})
    ops = make_operands(mode, one, requires_grad=False, seed=1)
    plan = _plan(mode, one)
    ex = contractssm.executors(plan)
    args = canonical_args(graph, ops)
    x_t = args[0].select(graph.signal.indices.index(graph.time), 0)
    h0 = torch.zeros(state_shape(plan))
    with torch.no_grad():
        y_step, h = ex.step(x_t, *args[1:], h0)
        y_kernel = ex.kernel(*args).select(graph.output_indices.index(graph.time), 0)
        # disagreement(h, h): 0 for a finite state, infinite for one holding a NaN.
        err = max(disagreement(y_step, y_kernel), disagreement(h, h))
        _check_agreement({"step": err}, f"step of {mode} against kernel mode at length 1")
        t = _median_call(
            {
                "step": lambda: ex.step(x_t, *args[1:], h0),
                "kernel_l1": lambda: ex.kernel(*args),
            },
            rounds,
            reps=50,
        )
    return {"step_ms": t["step"] * 1e3, "kernel_l1_ms": t["kernel_l1"] * 1e3, "max_rel_diff": err}


def stream_throughput(
    mode: str, sizes: dict[str, int], rounds: int, chunk: int = 256, slow_s: float = SLOW_S
) -> dict[str, float]:
    """Tokens per second of chunked streaming (``chunk``) vs kernel mode, same total length.

    Streaming runs the prepared stream executor (``Executor.prepare``: the parameter-only
    steps once per run, then one call per chunk), as an inference loop would.
    """
    graph = get_graph(mode)
    length = sizes[graph.time]
    chunk = min(chunk, length)
    ops = make_operands(mode, sizes, requires_grad=False, seed=2)
    args = canonical_args(graph, ops)
    kernel = contractssm.executors(_plan(mode, sizes)).kernel
    chunk_plan = _plan(mode, dict(sizes, **{graph.time: chunk}))
    stream = contractssm.executors(chunk_plan).stream
    time_axis = graph.signal.indices.index(graph.time)
    chunks = list(args[0].split(chunk, dim=time_axis))

    def run_stream():
        # Parameter-only work (kernel, its spectrum, decays) once per run, as kernel mode
        # does once per call: Executor.prepare hoists it out of the per-chunk loop.
        run = stream.prepare(*args[1:])
        h = torch.zeros(state_shape(chunk_plan))
        ys = []
        for xc in chunks:
            y, h = run(xc, h)
            ys.append(y)
        return ys, h

    with torch.no_grad():
        t = _median_call({"stream": run_stream, "kernel": lambda: kernel(*args)}, rounds, 1, slow_s)
        # What was timed computes the kernel's output and a finite final state (the
        # disagreement of a tensor with itself is infinite exactly when it holds a NaN).
        ys, h = run_stream()
        y = torch.cat(ys, dim=graph.output_indices.index(graph.time))
        err = max(disagreement(y, kernel(*args)), disagreement(h, h))
        _check_agreement({"stream": err}, f"stream of {mode} against kernel mode")
    tokens = sizes[graph.signal.indices[0]] * length
    return {
        "chunk": chunk,
        "stream_tokens_per_s": tokens / t["stream"],
        "kernel_tokens_per_s": tokens / t["kernel"],
        "max_rel_diff": err,
    }


# -- peak memory in a fresh subprocess ------------------------------------------------------------


def _child_main() -> None:
    """Subprocess entry: one forward+backward, print the ru_maxrss growth in MiB as JSON."""
    spec = json.loads(sys.argv[1])
    mode, sizes, name = spec["mode"], spec["sizes"], spec["name"]
    plan = Plan.from_json(spec["plan"]) if spec.get("plan") else None
    ops = make_operands(mode, sizes)
    fn = _fn_of(mode, name, plan, ops)
    _warm_libraries()
    if _reset_peak_rss():
        before = _status_kib("VmRSS")
        fn().sum().backward()
        after = _status_kib("VmHWM")
    else:  # no /proc: the high-water mark since start (import peaks can hide small growths)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn().sum().backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": max(0, after - before) / 1024}))


def _warm_libraries() -> None:
    """Tiny forward+backward passes through every kind of kernel the contenders use.

    Library initialisation (FFT descriptors, thread pools, first-use buffers) is not a
    contender's memory; a tiny warm-up pays it without growing the heap to the measured
    call's size (a full-size warm-up would leave its freed buffers resident, and the measured
    call would then grow the resident set by nothing).
    """
    x = torch.randn(2, 3, 16, requires_grad=True)
    w = torch.randn(3, 3, requires_grad=True)
    z = torch.complex(-torch.rand(3, 4), torch.randn(3, 4)).requires_grad_(True)
    u = torch.bmm(w.expand(2, 3, 3), x)
    k = torch.polar(torch.exp(z.real), z.imag).cumprod(-1)
    spec = torch.fft.rfft(u, n=32) * torch.fft.fft(k, n=32)[..., :17].sum(-1, keepdim=True)
    y = torch.fft.irfft(spec, n=32) + torch.fft.ifft(torch.fft.fft(u, n=32)).real
    y = y[..., :16] + torch.einsum("bct,cd->bdt", u, w) + torch.matmul(w, x)
    y.sum().backward()


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the peak resident set size (Linux: ``5`` to ``/proc/self/clear_refs``).

    ``ru_maxrss`` never decreases: the transient peak of importing torch (hundreds of MiB)
    would hide any forward+backward that grows the resident set by less. After the reset the
    kernel's ``VmHWM`` tracks the peak from now on.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def peak_memory(mode: str, sizes: dict[str, int], name: str, plan: Plan | None) -> float | None:
    """Peak-RSS growth (MiB) of one forward+backward of a contender, in a fresh process."""
    spec = {"mode": mode, "sizes": sizes, "name": name, "plan": plan.to_json() if plan else None}
    code = "from benchmarks.bench import _child_main; _child_main()"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        print(f"    memory of {name} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def strategy_regret(timed: dict[str, tuple[str, float]]) -> float:
    """The planner's strategy's time over the best strategy's (both fwd+bwd medians).

    ``timed`` maps contender names (``planner``, ``autotuned``, candidates) to (strategy,
    milliseconds). A strategy timed by two contenders (the plan and an autotuned plan that
    kept it) counts by the mean of its medians: the same code measured twice differs only
    by noise, which must not show up as regret.
    """
    mean = strategy_means(timed.values())
    return mean[timed["planner"][0]] / min(mean.values())


def strategy_means(timed: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Milliseconds per strategy from (strategy, ms) pairs: the mean of a strategy timed twice."""
    by_strategy: dict[str, list[float]] = {}
    for strategy, ms in timed:
        by_strategy.setdefault(strategy, []).append(ms)
    return {k: statistics.fmean(v) for k, v in by_strategy.items()}


# -- one case in a fresh process ------------------------------------------------------------------

#: Prefix of the line a case subprocess prints its JSON record on.
RECORD_PREFIX = "@@record "


def _case_child() -> None:
    """Subprocess entry: run one case (``run_case``), progress lines, then the record."""
    spec = json.loads(sys.argv[1])
    record = run_case(
        spec["mode"], spec["sizes"], **spec["options"], log=lambda s: print(s, flush=True)
    )
    print(RECORD_PREFIX + json.dumps(record), flush=True)


def run_case_isolated(mode: str, sizes: dict[str, int], **options) -> dict:
    """:func:`run_case` in a fresh Python process, relaying its progress lines.

    The heap a process has grown (what earlier, larger cases allocated and freed) changes
    the cost of later allocations; one process per case keeps cases from biasing each other.
    """
    spec = {"mode": mode, "sizes": sizes, "options": options}
    return _run_child("_case_child", spec, f"the case {mode} {sizes}")


def _extras_child() -> None:
    """Subprocess entry: step latency and streaming throughput of one case, as a record."""
    spec = json.loads(sys.argv[1])
    mode, sizes, rounds, slow_s = spec["mode"], spec["sizes"], spec["rounds"], spec["slow_s"]
    record = {
        "step": {f"batch_{b}": step_latency(mode, sizes, b, rounds) for b in (1, 8)},
        "stream": stream_throughput(mode, sizes, rounds, slow_s=slow_s),
    }
    print(RECORD_PREFIX + json.dumps(record), flush=True)


def _run_child(entry: str, spec: dict, what: str) -> dict:
    """Run ``benchmarks.bench.<entry>()`` in a fresh process on ``spec``; its record.

    Progress lines are relayed; the record is the line that starts with ``RECORD_PREFIX``.
    """
    code = f"from benchmarks.bench import {entry}; {entry}()"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    record = None
    for line in proc.stdout:
        if line.startswith(RECORD_PREFIX):
            record = json.loads(line[len(RECORD_PREFIX) :])
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or record is None:
        raise RuntimeError(f"bench: {what} failed (exit {proc.returncode})")
    return record


# -- one case -------------------------------------------------------------------------------------


def _empty(reason: str | None = None) -> dict:
    rec = {"forward_ms": None, "fwdbwd_ms": None, "peak_mib": None}
    if reason:
        rec["skipped"] = reason
    return rec


def run_case(
    mode: str,
    sizes: dict[str, int],
    *,
    rounds: int,
    autotune: bool,
    memory: bool,
    extras: bool = True,
    max_candidates: int = 8,
    max_ratio: float = math.inf,
    slow_s: float = SLOW_S,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every contender on one case; returns its JSON record.

    Args:
        mode: a built-in mode.
        sizes: its sizes.
        rounds: interleaved timing rounds.
        autotune: also time the autotuned plan.
        memory: measure peak memory in subprocesses.
        extras: also measure step latency and streaming throughput.
        max_candidates: time the best this many candidates by prediction (planner included).
        max_ratio: skip candidates predicted more than this many times slower than the plan.
        slow_s: contenders whose warm-up exceeds this many seconds are timed once.
        log: progress printer.
    """
    ops = make_operands(mode, sizes)
    planner = _plan(mode, sizes, requires_grad=True)
    plans: dict[str, Plan] = {"planner": planner}
    if autotune:
        plans["autotuned"] = _plan(mode, sizes, requires_grad=True, autotune=True)
    candidates = []
    for k, cand in enumerate(planner.candidates[:max_candidates]):
        if cand.strategy == planner.strategy:
            continue
        if cand.peak_bytes > min(MAX_BYTES, memory_budget("cpu", None) or MAX_BYTES) or (
            cand.seconds > MAX_SECONDS
        ):
            log(f"    candidate {k} skipped (predicted too large)")
            continue
        if cand.seconds > max_ratio * planner.predicted_seconds:
            log(f"    candidate {k} skipped (predicted > {max_ratio:g}x the plan)")
            continue
        plans[f"candidate_{k}"] = replace(planner, strategy=cand.strategy)
        candidates.append((f"candidate_{k}", cand))
    fns = {name: _fn_of(mode, name, p, ops) for name, p in plans.items()}
    skipped = {}
    for name in ("baseline_a", "baseline_b"):
        reason = _skip_reason(mode, sizes, name)
        if reason:
            skipped[name] = reason
            log(f"    {name}: {reason}")
        else:
            fns[name] = _fn_of(mode, name, None, ops)
    times = time_interleaved(fns, ops, rounds, log, slow_s)

    record: dict = {"mode": mode, "sizes": dict(sizes)}
    for name in ("planner", "autotuned", "baseline_a", "baseline_b"):
        if name in times:
            record[name] = dict(times[name], peak_mib=None)
        else:
            record[name] = _empty(skipped.get(name, "not run" if name == "autotuned" else None))
    record["planner"]["strategy"] = planner.strategy.describe()
    if "autotuned" in plans:
        record["autotuned"]["strategy"] = plans["autotuned"].strategy.describe()
    pool = [n for n in times if n in plans]  # planner, autotuned, candidates
    best = min(pool, key=lambda n: times[n]["fwdbwd_ms"])
    record["best_candidate"] = dict(
        times[best], peak_mib=None, name=best, strategy=plans[best].strategy.describe()
    )
    record["regret"] = strategy_regret(
        {n: (plans[n].strategy.describe(), times[n]["fwdbwd_ms"]) for n in pool}
    )
    record["candidates"] = [
        {
            "strategy": plans[name].strategy.describe(),
            "predicted_ms": cand.seconds * 1e3,
            **times[name],
        }
        for name, cand in candidates
    ]
    a = record["baseline_a"]["fwdbwd_ms"]
    record["speedup_vs_a"] = a / times["planner"]["fwdbwd_ms"] if a else None
    if memory:
        for name in ("planner", "autotuned", "best_candidate", "baseline_a", "baseline_b"):
            if record[name]["fwdbwd_ms"] is None:
                continue
            plan = plans.get(record[name].get("name", name))
            kind = name if name.startswith("baseline") else "plan"
            record[name]["peak_mib"] = peak_memory(mode, sizes, kind, plan)
        record["memory_method"] = MEMORY_NOTE
    if extras:
        # In a fresh process, like peak memory: streaming's many small allocations read
        # slower in a heap the contenders above (baseline B's gigabytes) grew and freed,
        # unlike any inference loop (unchanged programs: s4d (8, 1024) stream/kernel 0.31
        # in the case's process, 0.54-0.60 in fresh ones).
        spec = {"mode": mode, "sizes": sizes, "rounds": rounds, "slow_s": slow_s}
        record.update(_run_child("_extras_child", spec, f"step/stream of {mode} {sizes}"))
    return record


# -- output ---------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "skipped" if v is None else f"{v:.2f}"


def _sizes_text(sizes: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def markdown_table(records: list[dict]) -> str:
    """The main results table (and the step/streaming table) as markdown."""
    head = (
        "| mode | sizes | planner fwd ms | planner fwd+bwd ms | baseline A fwd+bwd ms | "
        "baseline B fwd+bwd ms | speedup vs A | regret | peak MiB planner / A / B |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in records:
        speed = r.get("speedup_vs_a")
        peaks = " / ".join(
            "-" if r[n]["peak_mib"] is None else f"{r[n]['peak_mib']:.0f}"
            for n in ("planner", "baseline_a", "baseline_b")
        )
        rows.append(
            f"| {r['mode']} | {_sizes_text(r['sizes'])} | {_ms(r['planner']['forward_ms'])} | "
            f"{_ms(r['planner']['fwdbwd_ms'])} | {_ms(r['baseline_a']['fwdbwd_ms'])} | "
            f"{_ms(r['baseline_b']['fwdbwd_ms'])} | "
            f"{'-' if speed is None else f'{speed:.2f}x'} | {r['regret']:.2f} | {peaks} |"
        )
    text = head + "\n".join(rows) + "\n"
    extra = [r for r in records if "step" in r]
    if extra:
        text += (
            "\n| mode | sizes | step ms/token b=1 | kernel(L=1) ms b=1 | step ms/token b=8 | "
            "kernel(L=1) ms b=8 | stream tok/s (chunk 256) | kernel tok/s | stream / kernel |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
        )
        for r in extra:
            s1, s8, st = r["step"]["batch_1"], r["step"]["batch_8"], r["stream"]
            ratio = st["stream_tokens_per_s"] / st["kernel_tokens_per_s"]
            text += (
                f"| {r['mode']} | {_sizes_text(r['sizes'])} | {s1['step_ms']:.3f} | "
                f"{s1['kernel_l1_ms']:.3f} | {s8['step_ms']:.3f} | {s8['kernel_l1_ms']:.3f} | "
                f"{st['stream_tokens_per_s']:.3g} | {st['kernel_tokens_per_s']:.3g} | "
                f"{ratio:.2f} |\n"
            )
    return text


def summary(records: list[dict]) -> str:
    """One paragraph of aggregates: geometric-mean speedup, regret median/worst."""
    speed = [r["speedup_vs_a"] for r in records if r.get("speedup_vs_a")]
    regret = [r["regret"] for r in records]
    lines = []
    if speed:
        geo = math.exp(sum(map(math.log, speed)) / len(speed))
        lines.append(
            f"fwd+bwd speedup vs baseline A: geometric mean {geo:.2f}x, min {min(speed):.2f}x "
            f"over {len(speed)} cells where baseline A ran"
        )
    lines.append(f"regret: median {statistics.median(regret):.3f}, worst {max(regret):.3f}")
    mem = [
        (r["planner"]["peak_mib"], r["baseline_a"]["peak_mib"])
        for r in records
        if r["planner"]["peak_mib"] is not None and r["baseline_a"]["peak_mib"] is not None
    ]
    if mem:
        below = sum(p <= a for p, a in mem)
        lines.append(
            f"peak memory fwd+bwd: planner at or below baseline A on {below} of {len(mem)} cells"
            f" (worst ratio {max(p / max(a, 1e-9) for p, a in mem):.2f})"
        )
    extra = [r for r in records if "step" in r]
    if extra:
        faster = sum(
            r["step"]["batch_1"]["step_ms"] < r["step"]["batch_1"]["kernel_l1_ms"] for r in extra
        )
        ratios = [
            r["stream"]["stream_tokens_per_s"] / r["stream"]["kernel_tokens_per_s"] for r in extra
        ]
        lines.append(
            f"step (batch 1) below a length-1 kernel call on {faster} of {len(extra)} cells; "
            f"stream/kernel throughput at chunk 256: median {statistics.median(ratios):.2f}, "
            f"min {min(ratios):.2f}, at or above 0.5 on {sum(x >= 0.5 for x in ratios)} cells"
        )
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    """Bar chart of the fwd+bwd speedup vs baseline A per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r for r in records if r.get("speedup_vs_a")]
    labels = [f"{r['mode']}\n{_sizes_text(r['sizes'])}" for r in cases]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cases)), 4.5))
    ax.bar(range(len(cases)), [r["speedup_vs_a"] for r in cases], color="tab:blue")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)), labels, rotation=70, fontsize=6)
    ax.set_ylabel("fwd+bwd speedup vs baseline A (x)")
    ax.set_title("contractssm planner vs the public Centaurus rule")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine() -> dict:
    """The machine the numbers were taken on."""
    return {
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "dtype": "float32",
    }


def _write_json(path: str, info: dict, rounds: int, records: list, failures: list) -> None:
    with open(path, "w") as fh:
        json.dump(
            {"machine": info, "rounds": rounds, "cases": records, "failures": failures},
            fh,
            indent=1,
        )


def _report(paths: Sequence[str], json_out: str | None, plot_out: str | None) -> int:
    """Print (and optionally write and plot) the merged records of earlier result files."""
    records, failures, info, rounds = [], [], None, None
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        records += data["cases"]
        failures += data.get("failures", [])
        info, rounds = info or data.get("machine"), rounds or data.get("rounds")
    print(markdown_table(records))
    print(summary(records))
    if json_out:
        _write_json(json_out, info or machine(), rounds, records, failures)
    if plot_out:
        plot(records, plot_out)
        print(f"plot written to {plot_out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print progress, the table and a summary.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset in under 3 minutes")
    parser.add_argument("--json", metavar="FILE", help="write one record per case")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    parser.add_argument("--modes", nargs="+", default=list(CENTAURUS_MODES + MODEL_MODES))
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (5 / 7)")
    parser.add_argument("--no-memory", action="store_true", help="skip subprocess peak memory")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every case in this process (default: one process per case)",
    )
    parser.add_argument(
        "--cells", nargs="+", type=int, help="only these grid cells of each mode (0-based)"
    )
    parser.add_argument(
        "--candidates", type=int, help="time the best N candidates by prediction (8 / 5)"
    )
    parser.add_argument(
        "--max-ratio",
        type=float,
        help="skip candidates predicted over R times the plan (no limit / 10)",
    )
    parser.add_argument("--no-autotune", action="store_true", help="do not time the autotuned plan")
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="measure nothing: print the table and summary of these result files (merged)",
    )
    args = parser.parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "bench: --plot needs matplotlib: pip install 'contractssm[plot]'", file=sys.stderr
            )
            return 2
    if args.report:
        return _report(args.report, args.json, args.plot)
    rounds = args.rounds or (5 if args.quick else 7)
    memory = not (args.quick or args.no_memory)
    cases = grid_cases(args.modes, quick=args.quick, cells=args.cells)
    info = machine()
    print(
        f"bench: {len(cases)} cases, {rounds} interleaved rounds, float32, "
        f"{info['nproc']} CPUs, torch {info['torch']}"
        + ("" if memory else "; peak memory not measured"),
        flush=True,
    )
    records: list[dict] = []
    failures: list[dict] = []
    start = time.perf_counter()
    for k, (mode, sizes) in enumerate(cases, 1):
        print(f"[{k}/{len(cases)}] {mode} {_sizes_text(sizes)}", flush=True)
        options = {
            "rounds": rounds,
            "autotune": not (args.quick or args.no_autotune),
            "memory": memory,
            "max_candidates": args.candidates or (5 if args.quick else 8),
            "max_ratio": args.max_ratio or (10.0 if args.quick else math.inf),
            "slow_s": 2.0 if args.quick else SLOW_S,
        }
        try:
            if args.in_process:
                rec = run_case(mode, sizes, **options, log=lambda s: print(s, flush=True))
            else:
                rec = run_case_isolated(mode, sizes, **options)
        except RuntimeError as err:  # e.g. the case's process was killed: report, go on
            print(f"    failed: {err}", flush=True)
            failures.append({"mode": mode, "sizes": sizes, "error": str(err)})
            continue
        records.append(rec)
        if args.json:  # after every case: a stopped run keeps what it measured
            _write_json(args.json, info, rounds, records, failures)
        print(
            f"    planner {rec['planner']['fwdbwd_ms']:.2f} ms fwd+bwd, "
            f"baseline A {_ms(rec['baseline_a']['fwdbwd_ms'])}, "
            f"baseline B {_ms(rec['baseline_b']['fwdbwd_ms'])}, regret {rec['regret']:.2f} "
            f"(best: {rec['best_candidate']['strategy']})",
            flush=True,
        )
    print()
    print(markdown_table(records))
    print(summary(records))
    print(MEMORY_NOTE if memory else "peak memory: not measured (--quick / --no-memory)")
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    for f in failures:
        print(f"FAILED: {f['mode']} {_sizes_text(f['sizes'])}: {f['error']}")
    if args.json:
        _write_json(args.json, info, rounds, records, failures)
    if args.plot:
        plot(records, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
