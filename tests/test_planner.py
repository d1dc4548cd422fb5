"""The planner: optimality against brute force, the cost model by hand, plans as values, options.

1. On random graphs the plan's predicted cost equals the minimum of a brute-force enumeration of
   every placement x every algorithm option, for each objective, forward and forward+backward.
2. ``einsum_cost``, ``step_seconds`` and ``ProgramBuilder.peak_bytes`` against numbers worked
   out by hand from round machine-profile rates.
3. Plans print, round-trip through JSON, and export networkx / DOT graphs.
4. The chosen strategy changes with the sizes (benchmark grid).
5. Options (``algorithm``, ``objective``, ``dtype``, ``device``, ``memory_limit``) and errors.
6. Declarations that differ only in names share one cached plan.
"""

from __future__ import annotations

import dataclasses
import json
import math

import networkx as nx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_reference import graphs_and_sizes

import contractssm
from contractssm.errors import PlanError, SpecError
from contractssm.modes import get_graph
from contractssm.planner.api import profile_for
from contractssm.planner.autotune import interleaved_orders
from contractssm.planner.cache import PlanCache
from contractssm.planner.lower import Strategy
from contractssm.planner.plan import Plan
from contractssm.planner.profile import (
    CACHE_BYTES,
    FRESH_MEMORY_BYTES,
    SCRATCH_MAX_BYTES,
    MachineProfile,
)
from contractssm.planner.program import ProgramBuilder, TensorInfo
from contractssm.planner.search import algorithm_options, placements, price, search
from contractssm.planner.steps import Step, einsum_cost, fresh_memory_seconds, step_seconds

REL = 1e-12

NECK = {"c": 64, "d": 64, "n": 4, "m": 16, "l": 1024}
FULL = {"b": 1, "c": 256, "d": 256, "n": 16}


@pytest.fixture(autouse=True)
def _tmp_cache_dir(tmp_path, monkeypatch):
    """Never touch the user's cache: plans and profiles go under this test's tmp_path."""
    monkeypatch.setenv("CONTRACTSSM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONTRACTSSM_CACHE", raising=False)


def memory_cache() -> PlanCache:
    return PlanCache(directory=None)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b))


# -- 1. the plan is the brute-force optimum ----------------------------------------------------


@st.composite
def planner_cases(draw):
    """A random graph of at most 6 operands, sizes 1-4 (ties of a re-indexed skip kept), L 1-40."""
    graph, pool_sizes, _ = draw(graphs_and_sizes())
    assume(len(graph.operands) <= 6)
    # Remap each distinct size to a new one in 1-4: indices tied by the skip stay equal.
    remap = {v: draw(st.integers(1, 4)) for v in sorted(set(pool_sizes.values()))}
    sizes = {i: remap[pool_sizes[i]] for i in graph.indices if i != graph.time}
    sizes[graph.time] = draw(st.integers(1, 40))
    return graph, sizes


def brute_force(graph, sizes, requires_grad):
    """Every (placement, algorithm option) priced, written out independently of ``search``."""
    canon = graph.canonical()
    cgraph, csizes = canon.graph, canon.rename_sizes(sizes)
    profile = profile_for("cpu", "cpu")
    weights = tuple(w.name for w in cgraph.weights)
    return [
        price(cgraph, csizes, Strategy(*sides, *opt), profile, 4, requires_grad=requires_grad)
        for sides in placements(weights)
        for opt in algorithm_options(csizes[cgraph.time], None)
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=planner_cases(), requires_grad=st.booleans())
def test_plan_is_brute_force_minimum(case, requires_grad):
    graph, sizes = case
    cands = brute_force(graph, sizes, requires_grad)
    assert cands
    best_s = min(c.seconds for c in cands)
    best_f = min(c.flops for c in cands)
    best_m = min(c.peak_bytes for c in cands)
    # Ties on the primary objective are broken by time.
    best_s_at_f = min(c.seconds for c in cands if c.flops == best_f)
    best_s_at_m = min(c.seconds for c in cands if c.peak_bytes == best_m)

    def made(objective):
        return contractssm.plan(
            graph, sizes, objective=objective, requires_grad=requires_grad, cache=memory_cache()
        )

    p = made("time")
    print(
        f"{graph} {sizes} grad={requires_grad}: {len(cands)} candidates, "
        f"best {best_s:.6e} s, plan {p.predicted_seconds:.6e} s {p.strategy.describe()}"
    )
    # Branch and bound abandons hopeless candidates early but never loses the optimum.
    assert p.n_candidates == len(cands)
    assert p.search.startswith("exhaustive")
    assert close(p.predicted_seconds, best_s), (p.predicted_seconds, best_s)
    assert p.candidates[0].strategy == p.strategy

    pf = made("flops")
    assert close(pf.flops, best_f), (pf.flops, best_f)
    assert close(pf.predicted_seconds, best_s_at_f)

    pm = made("memory")
    assert pm.peak_bytes == best_m, (pm.peak_bytes, best_m)
    assert close(pm.predicted_seconds, best_s_at_m)


# -- 2. the cost model by hand -----------------------------------------------------------------


ROUND = MachineProfile(
    name="round",
    matmul_gflops={
        "real": {"small": 1.0, "medium": 10.0, "large": 100.0},
        "complex": {"small": 0.5, "medium": 5.0, "large": 50.0},
    },
    fft_gflops=1.0,  # 1e9 flop/s
    elementwise_gbps=1.0,  # 1e9 byte/s
    cache_gbps=1.0,  # the same within the caches (priced apart in test_cache_resident_traffic)
    transcendental_gelems=1.0,
    launch_us=10.0,  # 1e-5 s per step
)

NI, NJ, NK = 3, 5, 7
SZ = {"i": NI, "j": NJ, "k": NK, "b": 2}


@pytest.mark.parametrize(
    ("equation", "complex_in", "flops", "min_dim"),
    [
        ("ij,jk->ik", (False, False), 2 * NI * NJ * NK, 3),  # real matmul: 2 per MAC
        ("ij,jk->ik", (True, True), 8 * NI * NJ * NK, 3),  # complex x complex: 8 per MAC
        ("ij,jk->ik", (False, True), 4 * NI * NJ * NK, 3),  # real x complex: 4 per MAC
        ("ij,jk->ik", (True, False), 4 * NI * NJ * NK, 3),
        ("bij,bjk->bik", (False, False), 2 * 2 * NI * NJ * NK, 3),  # batch is not a matmul dim
        ("ij,jk->ijk", (False, False), NI * NJ * NK, 1),  # outer product: one multiply each
        ("ij,ij->ij", (False, False), NI * NJ, 1),  # elementwise
        ("ijk->i", (False,), NI * NJ * NK, 1),  # reduction: one add per element
        ("ijk->i", (True,), 2 * NI * NJ * NK, 1),  # complex reduction: two adds per element
    ],
)
def test_einsum_cost_by_hand(equation, complex_in, flops, min_dim):
    got_flops, elements, got_min = einsum_cost(equation, SZ, complex_in)
    out = equation.split("->")[1]
    print(f"{equation} complex={complex_in}: {got_flops} flops, min dim {got_min}")
    assert got_flops == flops
    assert elements == math.prod(SZ[a] for a in out)
    assert got_min == min_dim


def rfft_step(n, batch):
    return Step(
        "rfft", "f1", ("u",), "bF", True, "conv", attrs=(("n", n),), elements=batch * (n // 2 + 1)
    )


def test_step_seconds_rfft_compute_bound():
    n, batch, L = 1024, 3, 1000
    step = rfft_step(n, batch)
    in_elems = batch * L  # real input b x T
    seconds, flops = step_seconds(
        step, {"b": batch, "F": n // 2 + 1, "T": L}, in_elems, ROUND, 4, (False,)
    )
    want_flops = batch * 2.5 * n * math.log2(n)  # 76800
    compute = want_flops / 1e9  # 76.8 us
    memory = (in_elems + batch * (n // 2 + 1) * 2) * 4 / 1e9  # 24.312 us
    want = 1e-5 + max(compute, memory)  # the roofline: launch + the slower of the two
    print(f"rfft n={n} x{batch}: {flops} flops, {seconds * 1e6:.3f} us (by hand {want * 1e6:.3f})")
    assert flops == 76800.0
    assert compute > memory
    assert close(seconds, 86.8e-6)
    assert close(seconds, want)


def test_step_seconds_prices_cache_resident_traffic_at_the_cache_bandwidth():
    # An add moves 3 x elements x 4 bytes: within CACHE_BYTES at cache_gbps (10 GB/s here),
    # past it at elementwise_gbps (1 GB/s).
    profile = MachineProfile(**{**ROUND.to_dict(), "cache_gbps": 10.0})
    for elements in (1000, CACHE_BYTES // 12, CACHE_BYTES // 12 + 1, 1 << 20):
        step = Step("add", "a1", ("p", "q"), "i", False, "conv", elements=elements)
        seconds, _ = step_seconds(step, {"i": elements}, 2 * elements, profile, 4, (False, False))
        traffic = 3 * elements * 4
        gbps = 10.0 if traffic <= CACHE_BYTES else 1.0
        print(f"add of {elements} elements ({traffic} B): {seconds * 1e6:.2f} us at {gbps} GB/s")
        assert close(seconds, 1e-5 + traffic / (gbps * 1e9))
    # A cache rate below the memory one (launch-bound small ops) is not taken.
    slow_cache = MachineProfile(**{**ROUND.to_dict(), "cache_gbps": 0.1})
    step = Step("add", "a1", ("p", "q"), "i", False, "conv", elements=1000)
    seconds, _ = step_seconds(step, {"i": 1000}, 2000, slow_cache, 4, (False, False))
    assert close(seconds, 1e-5 + 12000 / 1e9)


def test_step_seconds_rfft_memory_bound():
    n, batch, L = 1024, 3, 1000
    step = rfft_step(n, batch)
    slow_memory = MachineProfile(**{**ROUND.to_dict(), "elementwise_gbps": 0.1, "cache_gbps": 0.1})
    seconds, flops = step_seconds(step, {}, batch * L, slow_memory, 4, (False,))
    memory = (batch * L + batch * (n // 2 + 1) * 2) * 4 / 0.1e9  # 243.12 us > 76.8 us compute
    print(f"memory-bound rfft: {seconds * 1e6:.3f} us (by hand {(1e-5 + memory) * 1e6:.3f})")
    assert flops == 76800.0
    assert close(seconds, 1e-5 + memory)
    assert close(seconds, 253.12e-6)


def test_step_seconds_matmul():
    # A real 64 x 64 x 64 matmul is "large" (min dim 64): 2 * 64^3 flops at 100 GFLOP/s.
    mm = Step(
        "einsum", "e1", ("a", "b"), "ik", False, "conv", equation="ij,jk->ik", elements=64 * 64
    )
    s = {"i": 64, "j": 64, "k": 64}
    seconds, flops = step_seconds(mm, s, 2 * 64 * 64, ROUND, 4, (False, False))
    compute, memory = 2 * 64**3 / 100e9, 3 * 64 * 64 * 4 / 1e9  # 5.24 us, 49.15 us
    print(f"real matmul: {flops} flops, {seconds * 1e6:.3f} us")
    assert flops == 2 * 64**3
    assert close(seconds, 1e-5 + max(compute, memory))
    # Complex x complex at the complex "large" rate (50 GFLOP/s) with a fast memory: compute-bound.
    fast = MachineProfile(**{**ROUND.to_dict(), "elementwise_gbps": 1000.0, "cache_gbps": 1000.0})
    cmm = Step(
        "einsum", "e1", ("a", "b"), "ik", True, "conv", equation="ij,jk->ik", elements=64 * 64
    )
    seconds, flops = step_seconds(cmm, s, 4 * 64 * 64, fast, 4, (True, True))
    print(f"complex matmul: {flops} flops, {seconds * 1e6:.3f} us")
    assert flops == 8 * 64**3
    assert close(seconds, 1e-5 + 8 * 64**3 / 50e9)
    # A 4 x 4 x 4 matmul is "small": 1 GFLOP/s.
    small = {"i": 4, "j": 4, "k": 4}
    seconds, flops = step_seconds(mm, small, 32, fast, 4, (False, False))
    assert close(seconds, 1e-5 + max(2 * 64 / 1e9, 48 * 4 / 1000e9))


def test_step_seconds_irfft_counts_each_transform_once():
    n, batch, length = 64, 10, 32
    # Priced as ProgramBuilder.add does: a complex input counts two elements per entry.
    b = ProgramBuilder(
        {"b": batch, "F": n // 2 + 1, "T": length}, {"f": TensorInfo("bF", True)}, ROUND, 4
    )
    b.add("irfft", ("f",), "bT", False, "conv", n=n, length=length)
    priced = b.steps[-1]
    want = batch * 2.5 * n * math.log2(n)  # 10 transforms of length 64: 9600 flops
    print(f"irfft of {batch} spectra: {priced.flops} flops priced, {want} by hand")
    assert priced.flops == want
    # The same for ifft (complex to complex): 5 n log2 n per transform.
    b.add("ifft", ("f",), "bT", True, "conv", n=n, length=length)
    assert b.steps[-1].flops == batch * 5.0 * n * math.log2(n)


def test_fresh_memory_is_priced_above_the_mmap_threshold():
    # A step whose output reaches FRESH_MEMORY_BYTES pays its first touch at
    # fresh_memory_gbps on top of its roofline price; one element less pays nothing.
    slow = dataclasses.replace(ROUND, fresh_memory_gbps=0.5)
    prices = {}
    for elements in (FRESH_MEMORY_BYTES // 4 - 1, FRESH_MEMORY_BYTES // 4):
        for profile in (ROUND, slow):
            b = ProgramBuilder({"i": elements}, {"x": TensorInfo("i", False)}, profile, 4)
            b.add("einsum", ("x", "x"), "i", False, "signal", equation="i,i->i")
            prices[elements, profile.fresh_memory_gbps] = b.steps[-1].seconds
    below, at = FRESH_MEMORY_BYTES // 4 - 1, FRESH_MEMORY_BYTES // 4
    extra = prices[at, 0.5] - prices[at, ROUND.fresh_memory_gbps]
    print(
        f"fresh-memory extra at the threshold {extra * 1e3:.3f} ms, below it "
        f"{(prices[below, 0.5] - prices[below, ROUND.fresh_memory_gbps]) * 1e3:.3f} ms"
    )
    assert prices[below, 0.5] == prices[below, ROUND.fresh_memory_gbps]
    want = FRESH_MEMORY_BYTES / 0.5e9 - FRESH_MEMORY_BYTES / (ROUND.fresh_memory_gbps * 1e9)
    assert math.isclose(extra, want, rel_tol=1e-9)
    assert fresh_memory_seconds(FRESH_MEMORY_BYTES - 1, slow) == 0.0


def test_an_elementwise_spectral_product_in_scratch_memory_pays_no_fresh_memory():
    # FFTConv writes an elementwise product of two spectra into scratch memory (up to
    # SCRATCH_MAX_BYTES): no first-touch price. The same product over a time axis, or a
    # spectrum past the scratch bound, still pays it.
    slow = dataclasses.replace(ROUND, fresh_memory_gbps=0.5)

    def price(axis, numel, profile):
        b = ProgramBuilder({"i": numel, axis: 1}, {"p": TensorInfo("i" + axis, True)}, profile, 4)
        b.add("einsum", ("p", "p"), "i" + axis, True, "conv", equation=f"i{axis},i{axis}->i{axis}")
        return b.steps[-1].seconds

    fits = SCRATCH_MAX_BYTES // 8  # complex64 elements
    for axis, numel, scratch in (("F", fits, True), ("T", fits, False), ("F", fits + 1, False)):
        extra = price(axis, numel, slow) - price(axis, numel, ROUND)
        print(f"{axis} {numel * 8 / 2**20:.1f} MiB: fresh-memory price {extra * 1e3:.3f} ms")
        assert (extra == 0.0) == scratch


def test_workspace_bytes_by_hand():
    # Temporaries the runtime allocates besides a step's output, counted into the peak.
    sizes = {"a": 4, "b": 8, "c": 16, "T": 32, "F": 33}
    b = ProgramBuilder(
        sizes,
        {
            "x": TensorInfo("abT", False),
            "w": TensorInfo("ca", False),
            "v": TensorInfo("cb", True),
            "z": TensorInfo("bcT", True),
        },
        ROUND,
        4,
    )
    # A weight times a batched signal has a matmul layout: no copies.
    m = b.add("einsum", ("x", "w"), "bcT", False, "signal", equation="abT,ca->bcT")
    assert b.workspace_bytes(b.steps[-1]) == 0
    # Contracting over a and T has none: both operands and the result are copied.
    b.add("einsum", ("x", m), "ac", False, "signal", equation="abT,bcT->ac")
    x_b, m_b, out_b = 4 * 8 * 32 * 4, 8 * 16 * 32 * 4, 4 * 16 * 4
    print("non-matmul einsum workspace", b.workspace_bytes(b.steps[-1]))
    assert b.workspace_bytes(b.steps[-1]) == x_b + m_b + out_b
    # Re of a complex product: the smaller operand stacked as (Re, -Im), then a real einsum
    # whose (c, z) contraction has no matmul layout: both operands and the result copied.
    y = b.add("einsum_real", ("v", "z"), "bT", False, "conv", equation="cb,bcT->bT")
    v_b, z_b, y_b = 16 * 8 * 2 * 4, 8 * 16 * 32 * 2 * 4, 8 * 32 * 4
    assert b.workspace_bytes(b.steps[-1]) == v_b + (v_b + z_b + y_b)
    # An rfft at n = 2L copies its input padded to n.
    b.add("rfft", (m,), "bcF", True, "conv", n=64)
    assert b.workspace_bytes(b.steps[-1]) == 2 * m_b
    # The forward peak counts the worst step's live tensors plus its workspace.
    assert b.peak_bytes((y,), False) >= m_b + x_b + m_b + out_b


@pytest.mark.parametrize("itemsize", [4, 8])
def test_peak_bytes_by_hand(itemsize):
    sizes = {"i": 4, "j": 8, "k": 2}
    b = ProgramBuilder(
        sizes, {"x": TensorInfo("ij", False), "W": TensorInfo("jk", True)}, ROUND, itemsize
    )
    # (float32 / complex64 at itemsize 4; float64 / complex128 at itemsize 8)
    e = b.add("einsum", ("x", "W"), "ijk", True, "signal", equation="ij,jk->ijk")  # 64 complex
    s = b.add("einsum", (e,), "ik", True, "conv", equation="ijk->ik")  # 8 complex
    r = b.add("real", (s,), "ik", False, "output")  # 8 real
    y = b.add("einsum", (r,), "i", False, "output", equation="ik->i")  # 4 real
    u = itemsize
    e_b, s_b, r_b, y_b = 64 * 2 * u, 8 * 2 * u, 8 * u, 4 * u
    # Forward: e alive while s is made (e + s); then e dies, r joins s; then s dies, y joins r.
    forward = max(e_b, e_b + s_b, s_b + r_b, r_b + y_b)
    assert forward == e_b + s_b == 576 * u // 4  # complex64: 512 + 64 bytes
    # Backward: every intermediate is saved.
    backward = e_b + s_b + r_b + y_b
    print(
        f"itemsize {itemsize}: forward peak {b.peak_bytes((y,), False)} (hand {forward}), "
        f"backward {b.peak_bytes((y,), True)} (hand {backward})"
    )
    assert b.peak_bytes((y,), False) == forward
    assert b.peak_bytes((y,), True) == backward
    # An output is never freed: keeping e as an output keeps it alive to the end.
    assert b.peak_bytes((y, e), False) == e_b + max(s_b, s_b + r_b, r_b + y_b)


# -- 3. plans read well and round-trip ---------------------------------------------------------


@pytest.fixture(scope="module")
def neck_plan():
    return contractssm.plan("neck", {"b": 4, **NECK}, cache=memory_cache())


def test_str_reads_well(neck_plan):
    p = neck_plan
    text = str(p)
    print(text)
    assert p.declaration in text
    assert "Predicted" in text
    chosen = next(line for line in text.splitlines() if "Chosen:" in line)
    names = dict(p.names)  # canonical -> caller's names
    want = p.strategy.describe()
    for canon in sorted(names, key=len, reverse=True):
        if canon[:1] in "WD" and canon[1:].isdigit():
            want = want.replace(canon, names[canon])
    assert want in chosen, (want, chosen)
    assert any(w in chosen for w in ("B", "C", "E"))  # the caller's weight names
    # One row per step, numbered, with its phase and op.
    for k, s in enumerate(p.steps):
        rows = [line for line in text.splitlines() if line.split()[:3] == [str(k), s.phase, s.op]]
        assert len(rows) == 1, (k, s)
    # The candidates, best first, the chosen one marked.
    assert "Candidates" in text
    cand_rows = [
        line
        for line in text.splitlines()
        if line.strip()[:1] in "*0123456789" and " ms " in line and "MiB" in line
    ]
    assert len(cand_rows) == len(p.candidates) >= 2
    assert cand_rows[0].strip().startswith("*")
    assert repr(p).startswith("Plan(")


def test_json_round_trip(neck_plan):
    p = neck_plan
    text = p.to_json()
    q = Plan.from_json(text)
    assert q == p
    assert q.names == p.names
    assert Plan.from_json(p.to_json(indent=None)) == p
    d = p.to_dict()
    for key in (
        "declaration",
        "sizes",
        "algorithm",
        "steps",
        "predicted_seconds",
        "peak_bytes",
        "candidates",
    ):
        assert key in d, key
    assert d["algorithm"] == p.algorithm
    assert len(d["steps"]) == len(p.steps)
    assert all("predicted_seconds" in c for c in d["candidates"])
    assert d["candidates"][0]["predicted_seconds"] == p.predicted_seconds
    json.dumps(d)  # JSON-ready


def test_to_networkx_and_dot(neck_plan):
    p = neck_plan
    g = p.to_networkx()
    assert isinstance(g, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(g)
    assert {s.output for s in p.steps} <= set(g.nodes)
    for s in p.steps:
        assert set(s.inputs) <= set(g.predecessors(s.output))
    dot = p.to_dot()
    assert dot.startswith("digraph")
    assert dot.rstrip().endswith("}")
    assert all(f'"{s.output}"' in dot for s in p.steps)


def _mutations(d):
    no_steps = dict(d)
    del no_steps["steps"]
    no_strategy_field = json.loads(json.dumps(d))
    del no_strategy_field["strategy"]["algorithm"]
    return {
        "not json": "{not json",
        "truncated": json.dumps(d)[: len(json.dumps(d)) // 2],
        "array": json.dumps([d]),
        "wrong format": json.dumps({**d, "format": "something-else"}),
        "no format": json.dumps({k: v for k, v in d.items() if k != "format"}),
        "missing steps": json.dumps(no_steps),
        "missing strategy field": json.dumps(no_strategy_field),
        "bad algorithm": json.dumps({**d, "strategy": {**d["strategy"], "algorithm": "magic"}}),
        "bad sizes": json.dumps({**d, "sizes": 5}),
        "bad step op": json.dumps({**d, "steps": [{**d["steps"][0], "op": "system"}]}),
        "bad number": json.dumps({**d, "peak_bytes": "lots"}),
    }


@pytest.mark.parametrize(
    "what",
    [
        "not json",
        "truncated",
        "array",
        "wrong format",
        "no format",
        "missing steps",
        "missing strategy field",
        "bad algorithm",
        "bad sizes",
        "bad step op",
        "bad number",
    ],
)
def test_malformed_json_raises_value_error(neck_plan, what):
    text = _mutations(neck_plan.to_dict())[what]
    with pytest.raises(ValueError) as info:
        Plan.from_json(text)
    print(f"{what}: {info.value}")


# -- 4. the plan follows the sizes -------------------------------------------------------------


def test_plan_differs_across_sizes():
    """Sizes where the measured best algorithm changes, and the plan follows.

    Measured side by side (forward plus backward, this 2-core CPU): ``dws`` at (8, 64, 1024)
    FFT 21 ms against chunked 31 ms; at (4, 128, 16384) chunked 425 ms against FFT 635 ms
    (its 64 MiB spectra are mapped fresh from the OS on every call, see
    ``MachineProfile.fresh_memory_gbps``).
    """
    pairs = {
        "neck": (
            dict(b=8, c=64, d=64, n=4, m=16, l=16),
            dict(b=8, c=64, d=64, n=4, m=16, l=1024),
        ),
        "dws": (dict(b=8, c=64, n=16, l=1024), dict(b=4, c=128, n=16, l=16384)),
        "s5": (dict(b=1, c=64, d=64, s=64, l=16), dict(b=8, c=64, d=64, s=64, l=1024)),
    }
    for mode, (first, second) in pairs.items():
        a = contractssm.plan(mode, first, requires_grad=True, cache=memory_cache())
        b = contractssm.plan(mode, second, requires_grad=True, cache=memory_cache())
        print(f"{mode} {first}:\n{a}\n{mode} {second}:\n{b}")
        print(f"{mode}: {a.strategy.describe()} -> {b.strategy.describe()}")
        assert a.algorithm != b.algorithm


# -- 5. options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["direct", "fft", "chunked"])
@pytest.mark.parametrize("L", [64, 5000])
def test_forced_algorithm_is_honoured(algorithm, L):
    p = contractssm.plan(
        "dws", {"b": 2, "c": 4, "n": 4, "l": L}, algorithm=algorithm, cache=memory_cache()
    )
    print(f"L={L} algorithm={algorithm}: {p.strategy.describe()}")
    assert p.algorithm == algorithm
    assert all(c.strategy.algorithm == algorithm for c in p.candidates)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("algorithm", "winograd"),
        ("objective", "speed"),
        ("dtype", "float16"),
        ("dtype", "bfloat16"),
        ("device", "tpu"),
        ("device", "quantum:0"),
    ],
)
def test_unknown_option_raises_plan_error(option, value):
    with pytest.raises(PlanError) as info:
        contractssm.plan(
            "dws", {"b": 1, "c": 2, "n": 2, "l": 8}, cache=memory_cache(), **{option: value}
        )
    print(f"{option}={value!r}: {info.value}")
    assert value in str(info.value)


def test_memory_limit_is_honoured():
    # dws at these sizes: the fastest plan is not the leanest, so a limit changes the choice.
    mode, sizes = "dws", {"b": 4, "c": 32, "n": 16, "l": 2048}
    canon = get_graph(mode).canonical()
    cands, _, _ = search(
        canon.graph, canon.rename_sizes(sizes), profile_for("cpu", "cpu"), 4, requires_grad=False
    )
    peaks = sorted({c.peak_bytes for c in cands})
    free = contractssm.plan(mode, sizes, cache=memory_cache())
    # The largest limit below the unconstrained choice's peak that some candidate still meets.
    limit = max(p for p in peaks if p < free.peak_bytes)
    limited = contractssm.plan(mode, sizes, memory_limit=limit, cache=memory_cache())
    fastest_fitting = min(c.seconds for c in cands if c.peak_bytes <= limit)
    print(
        f"unconstrained: {free.peak_bytes} B, {free.predicted_seconds:.3e} s; limit {limit} B: "
        f"{limited.peak_bytes} B, {limited.predicted_seconds:.3e} s {limited.strategy.describe()}"
    )
    assert limited.peak_bytes <= limit < free.peak_bytes
    assert limited.strategy != free.strategy
    assert close(limited.predicted_seconds, fastest_fitting)
    assert all(c.peak_bytes <= limit for c in limited.candidates)
    assert limited.memory_limit == limit

    smallest = min(c.peak_bytes for c in cands)
    with pytest.raises(PlanError) as info:
        contractssm.plan(mode, sizes, memory_limit=1, cache=memory_cache())
    print(info.value)
    assert f"{smallest} bytes" in str(info.value)
    # The stated smallest peak is achievable: the memory objective finds exactly it.
    leanest = contractssm.plan(mode, sizes, objective="memory", cache=memory_cache())
    assert leanest.peak_bytes == smallest
    at_smallest = contractssm.plan(mode, sizes, memory_limit=smallest, cache=memory_cache())
    assert at_smallest.peak_bytes == smallest


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1GB"])
def test_bad_memory_limit(bad):
    with pytest.raises(PlanError, match="memory_limit"):
        contractssm.plan(
            "dws", {"b": 1, "c": 2, "n": 2, "l": 8}, memory_limit=bad, cache=memory_cache()
        )


@pytest.mark.parametrize("missing", ["m", "l", "b"])
def test_missing_size_names_the_index(missing):
    sizes = {k: v for k, v in {"b": 2, **NECK}.items() if k != missing}
    with pytest.raises(SpecError) as info:
        contractssm.plan("neck", sizes, cache=memory_cache())
    print(info.value)
    assert f"'{missing}'" in str(info.value)


# -- 6. canonical sharing ------------------------------------------------------------------------


def test_renamed_declarations_share_one_plan():
    first = "y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]"
    second = "out[z,o,t] = Bin[q,i] * Cout[o,q] * signal u[z,i,t] * ssm Lam[q;t]"
    cache = memory_cache()
    p1 = contractssm.plan(first, {"b": 2, "c": 8, "d": 6, "s": 16, "l": 256}, cache=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    p2 = contractssm.plan(second, {"z": 2, "i": 8, "o": 6, "q": 16, "t": 256}, cache=cache)
    print(f"hits {cache.hits}, misses {cache.misses}\n{p2}")
    assert (cache.hits, cache.misses) == (1, 1)
    assert p1.strategy == p2.strategy
    assert p1 == p2  # the same canonical plan; only the display names differ
    assert dict(p2.names) != dict(p1.names)
    assert "Cout" in str(p2) or "Bin" in str(p2)


def test_autotune_orders_are_seeded_shuffles():
    orders = interleaved_orders(4, 6)
    assert len(orders) == 6 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert orders == interleaved_orders(4, 6)  # reproducible
    # The model's pick (0) must not always run right after the same contender.
    before = {o[o.index(0) - 1] for o in orders if o.index(0) > 0}
    print("contenders timed right before candidate 0:", sorted(before))
    assert len(before) >= 2
    assert interleaved_orders(1, 3) == [[0], [0], [0]]


def test_autotune_times_candidates_and_persists(tmp_path):
    cache = PlanCache(directory=str(tmp_path))
    sizes = {"b": 2, "c": 8, "d": 8, "n": 2, "m": 4, "l": 128}
    p = contractssm.plan("neck", sizes, autotune=2, requires_grad=True, cache=cache)
    print(p)
    assert len(p.autotune) == 2 and p.measured_seconds is not None
    assert all(measured > 0 for _, _, measured in p.autotune)
    assert p.measured_seconds == min(measured for _, _, measured in p.autotune)
    assert p.strategy.describe() in [desc for desc, _, _ in p.autotune]
    again = contractssm.plan("neck", sizes, autotune=2, requires_grad=True, cache=cache)
    assert again == p and cache.hits == 1
    fresh = PlanCache(directory=str(tmp_path))
    assert contractssm.plan("neck", sizes, autotune=2, requires_grad=True, cache=fresh) == p
    assert fresh.disk_hits == 1


def test_generator_recurrences_are_refused_clearly():
    with pytest.raises(PlanError, match="kernel generator 's4'"):
        contractssm.plan("s4", {"b": 1, "k": 1, "h": 4, "n": 4, "l": 16}, cache=memory_cache())


def test_identical_steps_are_made_once():
    # Common subexpressions: the stream's final state reuses the signal projection the
    # convolution made, instead of projecting the signal twice.
    b = ProgramBuilder({"a": 2, "b": 3, "T": 4}, {"x": TensorInfo("abT", False)}, ROUND, 4)
    first = b.add("einsum", ("x",), "aT", False, "signal", equation="abT->aT")
    again = b.add("einsum", ("x",), "aT", False, "state", equation="abT->aT")
    assert first == again and len(b.steps) == 1
    p = contractssm.plan("neck", {"b": 2, "c": 8, "d": 8, "n": 2, "m": 4, "l": 64})
    source = contractssm.executors(p).stream.source
    assert source.count("W1.reshape(") == 1, source


def test_autotune_never_times_candidates_that_cannot_fit_or_win():
    # full at b=8, c=d=64, L=4096: the runner-up is predicted at 14 GiB and 5.5x slower, the
    # chunked ones at 36 GiB and more: timing them would exhaust the machine's memory.
    from contractssm.planner.autotune import TIME_RATIO, memory_budget, timed_candidates

    sizes = {"b": 8, "c": 64, "d": 64, "n": 16, "l": 4096}
    p = contractssm.plan("full", sizes, requires_grad=True, cache=memory_cache())
    chosen = timed_candidates(p, 4, budget=2 * 2**30)
    print([(c.strategy.describe(), c.seconds, c.peak_bytes) for c in p.candidates[:4]])
    assert chosen == [p.candidates[0]]
    # Without a memory budget the time rule alone applies; the plan's pick always runs.
    unbounded = timed_candidates(p, 8, budget=None)
    assert unbounded[0] == p.candidates[0]
    assert all(c.seconds <= TIME_RATIO * p.candidates[0].seconds for c in unbounded)
    assert timed_candidates(p, 8, budget=1) == [p.candidates[0]]
    assert memory_budget("cpu", 123) == 123
    free = memory_budget("cpu", None)
    assert free is None or free > 0
