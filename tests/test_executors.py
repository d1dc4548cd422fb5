"""Generated executors against the float64 reference: every algorithm, kernel method, mode.

SPEC.md section 5: kernel mode = reference; chunked streaming concatenated = kernel mode with
the final state equal to the state after the last step; step mode L times = kernel mode;
float64 within 1e-9 and float32 within 2e-4 of max|y_ref|. Every test prints its error.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from cases import MODES, random_operands, reference_with_state, rel_err
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_reference import graphs_and_sizes

import contractssm
from contractssm.codegen import executor as executor_module
from contractssm.codegen.bind import canonical_args
from contractssm.codegen.executor import executors
from contractssm.codegen.reference import reference
from contractssm.modes import get_graph
from contractssm.planner import state
from contractssm.planner.lower import layout_of
from contractssm.planner.search import algorithm_options, placements, vandermonde_factor

TOL64, TOL32 = 1e-9, 2e-4

#: Every step kind: (algorithm, kernel method, chunk); chunk 0 means "the planner's choice".
VARIANTS = [
    ("fft", "exp", 0),
    ("fft", "vandermonde", -1),
    ("fft", "closed_form", 0),
    ("direct", "exp", 0),
    ("direct", "vandermonde", -1),
    ("chunked", "exp", 4),
    ("chunked", "exp", 5),
]


def forced(mode, sizes, variant, dtype="float64", **options):
    """A plan for ``mode`` with the variant's algorithm, kernel method and chunk forced."""
    algorithm, method, chunk = variant
    graph = get_graph(mode)
    p = contractssm.plan(graph, sizes, algorithm=algorithm, dtype=dtype, **options)
    L = sizes[graph.time]
    if chunk == -1:
        chunk = vandermonde_factor(L)
    elif chunk == 0:
        chunk = p.strategy.chunk
    return dataclasses.replace(
        p, strategy=dataclasses.replace(p.strategy, kernel_method=method, chunk=chunk)
    )


def sized(mode, L):
    graph = get_graph(mode)
    return graph, {**MODES[mode], graph.time: L}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}")
@pytest.mark.parametrize("L", [1, 13, 24])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_kernel_mode_matches_reference(mode, L, variant):
    graph, sizes = sized(mode, L)
    ops = random_operands(graph, sizes)
    p = forced(mode, sizes, variant)
    y = executors(p).kernel(*canonical_args(graph, ops))
    y_ref, _ = reference(graph, ops)
    err = rel_err(y, y_ref)
    print(f"{mode} L={L} {p.strategy.describe()}: rel err {err:.2e}")
    assert y.dtype == torch.float64 and y.shape == y_ref.shape
    assert err <= TOL64


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}")
@pytest.mark.parametrize("mode", sorted(MODES))
def test_batch_of_one(mode, variant):
    graph = get_graph(mode)
    sizes = {**MODES[mode], "b": 1, graph.time: 17}
    ops = random_operands(graph, sizes, seed=11)
    y = executors(forced(mode, sizes, variant)).kernel(*canonical_args(graph, ops))
    y_ref, _ = reference(graph, ops)
    err = rel_err(y, y_ref)
    print(f"{mode} B=1 L=17 {variant}: rel err {err:.2e}")
    assert y.shape == y_ref.shape and err <= TOL64


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_candidate_in_the_search_space_is_exact(mode):
    """Each placement of weights x each algorithm option the search prices."""
    graph, sizes = sized(mode, 11)
    ops = random_operands(graph, sizes, seed=1)
    y_ref, _ = reference(graph, ops)
    args = canonical_args(graph, ops)
    base = contractssm.plan(graph, sizes, dtype="float64")
    canon = graph.canonical().graph
    worst = 0.0
    count = 0
    for sides in placements(tuple(w.name for w in canon.weights)):
        for algo, method, chunk, n_fft in algorithm_options(11, None):
            strategy = dataclasses.replace(
                base.strategy,
                signal_weights=sides[0],
                kernel_weights=sides[1],
                output_weights=sides[2],
                algorithm=algo,
                kernel_method=method,
                chunk=chunk,
                n_fft=n_fft,
            )
            y = executors(dataclasses.replace(base, strategy=strategy)).kernel(*args)
            worst = max(worst, rel_err(y, y_ref))
            count += 1
    print(f"{mode}: {count} candidates, worst rel err {worst:.2e}")
    assert worst <= TOL64


@pytest.mark.parametrize(
    "variant", [VARIANTS[0], VARIANTS[2], VARIANTS[3], VARIANTS[5]], ids=lambda v: f"{v[0]}-{v[1]}"
)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_streaming_matches_reference_and_final_state(mode, variant):
    L = 15
    graph, sizes = sized(mode, L)
    ops = random_operands(graph, sizes, seed=2)
    p = contractssm.plan(graph, sizes, dtype="float64")
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    y_ref, h_ref = reference_with_state(graph, p, ops, h0)
    t_axis = graph.signal.indices.index(graph.time)
    y_axis = graph.output_indices.index(graph.time)
    for chunk in (1, 7, L):
        state, ys, t = h0, [], 0
        while t < L:
            n = min(chunk, L - t)
            part = dict(ops, **{graph.signal.name: ops[graph.signal.name].narrow(t_axis, t, n)})
            y, state = contractssm.evaluate(graph, part, state=state, algorithm=variant[0])
            ys.append(y)
            t += n
        y = torch.cat(ys, dim=y_axis)
        err_y = rel_err(y, y_ref)
        err_h = rel_err(torch.view_as_complex(state), h_ref)
        print(f"{mode} {variant[0]} chunk={chunk}: output err {err_y:.2e}, state err {err_h:.2e}")
        assert err_y <= TOL64 and err_h <= TOL64


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}")
@pytest.mark.parametrize("mode", sorted(MODES))
def test_prepared_stream_and_step_match_the_reference(mode, variant):
    # Executor.prepare hoists the parameter-only steps; the rest, chunk after chunk (and step
    # after step), must give the reference output and final state.
    L, chunk = 15, 5
    graph, sizes = sized(mode, chunk)
    ops = random_operands(graph, {**sizes, graph.time: L}, seed=4)
    args = canonical_args(graph, ops)
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    p = contractssm.plan(graph, {**sizes, graph.time: L}, dtype="float64")
    y_ref, h_ref = reference_with_state(graph, p, ops, h0)
    ex = executors(forced(mode, sizes, variant))
    step_ex = executors(contractssm.plan(graph, {**sizes, graph.time: 1}, dtype="float64"))
    t_axis = graph.signal.indices.index(graph.time)
    y_axis = graph.output_indices.index(graph.time)
    run, step = ex.stream.prepare(*args[1:]), step_ex.step.prepare(*args[1:])
    state, ys = h0, []
    for t in range(0, L, chunk):
        y, state = run(args[0].narrow(t_axis, t, chunk), state)
        ys.append(y)
    err_y = rel_err(torch.cat(ys, dim=y_axis), y_ref)
    err_h = rel_err(torch.view_as_complex(state), h_ref)
    state, ys = h0, []
    for t in range(L):
        y, state = step(args[0].select(t_axis, t), state)
        ys.append(y)
    err_step = rel_err(torch.stack(ys, dim=y_axis), y_ref)
    err_step_h = rel_err(torch.view_as_complex(state), h_ref)
    print(f"{mode} {variant}: prepared stream {err_y:.2e} / {err_h:.2e}, step {err_step:.2e}")
    assert max(err_y, err_h, err_step, err_step_h) <= TOL64


@pytest.mark.parametrize("dtype, tol", [("float64", TOL64), ("float32", TOL32)])
def test_prepared_full_stream_with_padded_channel_mix_matches_the_reference(
    dtype, tol, monkeypatch
):
    # At batch 8 and 32 x 32 channels the chunk's frequency-major products are 8 KiB apart
    # (32 x 32 complex64): rt.spectral_product computes them with a zero row more
    # (_spectral_mix). float64 (16-byte elements) is moved into that path by MIX_MIN_ROWS
    # and _pads_apart alone; the sizes are the real ones.
    from contractssm.codegen import runtime as rt

    if dtype == "float64":
        monkeypatch.setattr(rt, "_pads_apart", lambda *a: True)
    taken = []
    mix = rt._spectral_mix
    monkeypatch.setattr(rt, "_spectral_mix", lambda *a: taken.append(mix(*a)) or taken[-1])
    graph = get_graph("full")
    sizes = dict(b=8, c=32, d=32, n=2, l=64)
    chunk = 32
    ops = random_operands(graph, sizes, seed=8)
    args = canonical_args(graph, ops)
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    p64 = contractssm.plan(graph, sizes, dtype="float64")
    y_ref, h_ref = reference_with_state(graph, p64, ops, h0)
    ex = executors(contractssm.plan(graph, {**sizes, "l": chunk}, dtype=dtype))
    real = getattr(torch, dtype)
    cplx = torch.complex128 if dtype == "float64" else torch.complex64
    run = ex.stream.prepare(*(a.to(cplx if a.is_complex() else real) for a in args[1:]))
    state, ys = h0.to(real), []
    with torch.no_grad():
        for x in args[0].to(real).split(chunk, dim=-1):
            y, state = run(x, state)
            ys.append(y)
    err_y = rel_err(torch.cat(ys, dim=-1).double(), y_ref)
    err_h = rel_err(torch.view_as_complex(state.double()), h_ref)
    print(f"full {dtype} stream, padded mix: output err {err_y:.2e}, state err {err_h:.2e}")
    assert any(t is not None for t in taken), "the padded product should have been taken"
    assert max(err_y, err_h) <= tol


@pytest.mark.parametrize("mode", ["full", "dws"])
def test_prepared_stream_lays_out_its_kernel_spectrum_once(mode):
    # full's FFT chunk mixes channels per frequency (rt.spectral_product, frequency-major):
    # the hoisted kernel spectrum is laid out so in prepare, and every chunk's product reads
    # it as it lies (the values: test_prepared_stream_and_step_match_the_reference). dws
    # multiplies per channel: nothing to lay out.
    _, sizes = sized(mode, 16)
    source = executors(forced(mode, sizes, VARIANTS[0])).stream.split_source
    apply_start = source.index("def _stream_apply_body")
    prepare_start = source.index("def stream_constants")
    apply, prepare = source[apply_start:prepare_start], source[prepare_start:]
    flagged = re.findall(r'rt\.spectral_product\("[^"]+", \w+, \w+, \(([^)]*)\)\)', apply)
    print(mode, "laid out in prepare:", "rt.frequency_major(" in prepare, "flags:", flagged)
    if mode == "full":
        assert "rt.frequency_major(" in prepare and flagged == ["True, False"]
    else:
        assert "rt.frequency_major(" not in source and not flagged


def test_prepared_stream_reads_its_conjugated_constant_as_it_lies():
    # full's readout of the initial state is Re(h0 W0 a^(64 m) a^(n + 1)): prepare stores the
    # table of powers conjugated, so each chunk's real matmul views both operands (no stacked
    # copy of the chunk's product). The reference either way.
    run = _run_prepared_stream("full", 128, 64, seed=6)
    source = run.ex.stream.split_source
    apply = source[source.index("def _stream_apply_body") : source.index("def stream_constants")]
    prepare = source[: source.index("def _stream_apply_body")]
    print(f"full: output err {run.err_y:.2e}, state err {run.err_h:.2e}")
    print(prepare)
    # The table is the powers of the conjugate rate (conj(a)^t = conj(a^t)).
    assert "powers_laid_out(torch.conj_physical(A)" in prepare and "stack_conj_parts" not in apply
    assert run.err_y <= TOL64 and run.err_h <= TOL64


def _three_prepared_chunks(mode, sizes, p):
    """Errors of three chunks of a prepared stream of ``p`` from a random state (float64)."""
    graph = get_graph(mode)
    chunk = sizes[graph.time]
    length = 3 * chunk
    ops = random_operands(graph, {**sizes, graph.time: length}, seed=3)
    args = canonical_args(graph, ops)
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    y_ref, h_ref = reference_with_state(
        graph, contractssm.plan(graph, {**sizes, graph.time: length}, dtype="float64"), ops, h0
    )
    t_axis = graph.signal.indices.index(graph.time)
    run, h, ys = executors(p).stream.prepare(*args[1:]), h0, []
    for t in range(0, length, chunk):
        y, h = run(args[0].narrow(t_axis, t, chunk), h)
        ys.append(y)
    err_y = rel_err(torch.cat(ys, dim=graph.output_indices.index(graph.time)), y_ref)
    err_h = rel_err(torch.view_as_complex(h), h_ref)
    print(f"{mode}: output err {err_y:.2e}, state err {err_h:.2e}")
    return err_y, err_h


@pytest.mark.parametrize(
    "mode, sizes",
    [
        ("s4d", {"b": 2, "k": 1, "h": 32, "n": 32, "l": 64}),
        ("dws", {"b": 2, "c": 32, "n": 32, "l": 128}),
    ],
)
def test_prepared_stream_reads_its_kernel_from_its_table_of_powers(mode, sizes):
    # The chunk's factorised kernel is Re sum_states W a^t over the table of a^t that the
    # chunks' state products read: prepare contracts the weights against that table (s4d a
    # complex weight, dws a real one padded with zeros) instead of building two runs.
    chunk = sizes[get_graph(mode).time]
    p = forced(mode, sizes, ("fft", "vandermonde", -1))
    source = executors(p).stream.split_source
    prepare = source[: source.index("def _stream_apply_body")]
    kernel_lines = [line.strip() for line in prepare.splitlines() if "# [kernel]" in line]
    print(mode, kernel_lines)
    assert "[kernel] powers" not in prepare and "einsum_real" in kernel_lines[0]
    assert f"count={chunk}, offset=0, scale=1" in prepare
    err_y, err_h = _three_prepared_chunks(mode, sizes, p)
    assert err_y <= TOL64 and err_h <= TOL64


@pytest.mark.parametrize(
    "mode, sizes",
    [
        ("s5", {"b": 1, "c": 16, "d": 16, "s": 8, "l": 64}),  # no kernel weight
        ("dws", {"b": 2, "c": 8, "n": 4, "l": 32}),  # a real weight on the kernel
        ("neck", {"b": 2, "c": 4, "d": 4, "n": 2, "m": 4, "l": 32}),  # one summing states
    ],
)
def test_prepared_stream_takes_its_closed_form_spectrum_from_its_table(mode, sizes, monkeypatch):
    # A closed-form kernel spectrum (all n bins, folded to the real part's rfft bins) is the
    # rfft of the real part of the table of a^t that the chunks' state products read,
    # weighted where a weight sits on the kernel: no closed form is left in prepare. (At
    # these sizes a chunk would be one fused matrix per group: that form is switched off.)
    monkeypatch.setattr(state, "FUSED_MAX_MATRIX", 0)
    executor_module._executors.cache_clear()
    p = forced(mode, sizes, ("fft", "closed_form", 0))
    ex = executors(p)
    err_y, err_h = _three_prepared_chunks(mode, sizes, p)
    executor_module._executors.cache_clear()  # no unfused streams left for later tests
    source = ex.stream.split_source
    prepare = source[: source.index("def _stream_apply_body")]
    print(prepare)
    assert "closed_form" not in prepare and "hermitian" not in prepare
    assert "torch.fft.rfft(" in prepare
    assert err_y <= TOL64 and err_h <= TOL64
    # Kernel mode keeps the closed form (its table is not built there).
    assert "rt.closed_form(" in ex.kernel.source


@pytest.mark.parametrize("in_place", [False, True], ids=["re-first", "in-place"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_step_output_read_in_place_or_real_part_first(mode, in_place, monkeypatch):
    # A step's output takes Re of the new state first (small states) or reads it as (Re, Im)
    # pairs in the last product (from state.STEP_STATE_IN_PLACE states): both the reference.
    monkeypatch.setattr(state, "STEP_STATE_IN_PLACE", 1 if in_place else 1 << 62)
    executor_module._executors.cache_clear()
    L = 6
    graph, sizes = sized(mode, 1)
    ops = random_operands(graph, {**sizes, graph.time: L}, seed=9)
    args = canonical_args(graph, ops)
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    p = contractssm.plan(graph, {**sizes, graph.time: L}, dtype="float64")
    y_ref, h_ref = reference_with_state(graph, p, ops, h0)
    ex = executors(contractssm.plan(graph, sizes, dtype="float64"))
    executor_module._executors.cache_clear()
    t_axis = graph.signal.indices.index(graph.time)
    state_now, ys = h0, []
    for t in range(L):
        y, state_now = ex.step(args[0].select(t_axis, t), *args[1:], state_now)
        ys.append(y)
    err_y = rel_err(torch.stack(ys, dim=graph.output_indices.index(graph.time)), y_ref)
    err_h = rel_err(torch.view_as_complex(state_now), h_ref)
    body = ex.step.source[: ex.step.source.index("def step")]
    print(f"{mode} {'in place' if in_place else 'Re first'}: y {err_y:.2e}, h {err_h:.2e}")
    assert max(err_y, err_h) <= TOL64
    if in_place:
        assert "[output] real " not in body
    elif mode == "full":  # real out-side weights: Re of the state, then a real product
        assert "[output] real " in body


def test_prepare_is_refused_by_kernel_mode():
    graph, sizes = sized("dws", 8)
    ex = executors(contractssm.plan(graph, sizes, dtype="float64"))
    with pytest.raises(TypeError, match="no state"):
        ex.kernel.prepare()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_step_mode_matches_reference(mode):
    L = 9
    graph, sizes = sized(mode, L)
    ops = random_operands(graph, sizes, seed=3)
    p = contractssm.plan(graph, sizes, dtype="float64")
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    y_ref, h_ref = reference_with_state(graph, p, ops, h0)
    t_axis = graph.signal.indices.index(graph.time)
    state, ys = h0, []
    for t in range(L):
        part = dict(ops, **{graph.signal.name: ops[graph.signal.name].select(t_axis, t)})
        y, state = contractssm.evaluate_step(graph, part, state)
        ys.append(y)
    y = torch.stack(ys, dim=graph.output_indices.index(graph.time))
    err_y, err_h = rel_err(y, y_ref), rel_err(torch.view_as_complex(state), h_ref)
    print(f"{mode} step x{L}: output err {err_y:.2e}, state err {err_h:.2e}")
    assert err_y <= TOL64 and err_h <= TOL64


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}")
@pytest.mark.parametrize("mode", sorted(MODES))
def test_float32_within_spec_tolerance(mode, variant):
    graph, sizes = sized(mode, 300)
    ops = random_operands(graph, sizes, seed=4)
    y_ref, _ = reference(graph, ops)
    ops32 = {k: v.to(torch.complex64 if v.is_complex() else torch.float32) for k, v in ops.items()}
    p = forced(mode, sizes, variant, dtype="float32")
    y = executors(p).kernel(*canonical_args(graph, ops32))
    err = rel_err(y, y_ref)
    print(f"{mode} float32 {p.strategy.describe()}: rel err {err:.2e}")
    assert y.dtype == torch.float32
    assert err <= TOL32


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=graphs_and_sizes(), variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2**16))
def test_random_graphs_every_algorithm(case, variant, seed):
    graph, sizes, L = case
    sizes = {i: n for i, n in sizes.items() if i in graph.indices}
    sizes[graph.time] = L
    ops = random_operands(graph, sizes, seed=seed)
    p = forced(graph, sizes, variant)
    ex = executors(p)
    y = ex.kernel(*canonical_args(graph, ops))
    y_ref, _ = reference(graph, ops)
    err = rel_err(y, y_ref) if y_ref.abs().max() > 0 else y.abs().max().item()
    print(f"{graph} L={L} {p.strategy.describe()}: rel err {err:.2e}")
    assert err <= TOL64


def test_non_contiguous_inputs():
    graph, sizes = sized("neck", 20)
    ops = random_operands(graph, sizes)
    x = ops["x"]
    strided = torch.randn(x.shape[2], x.shape[1], x.shape[0], dtype=x.dtype).permute(2, 1, 0)
    strided.copy_(x)
    assert not strided.is_contiguous()
    y = contractssm.evaluate("neck", dict(ops, x=strided))
    y_ref, _ = reference(graph, ops)
    assert rel_err(y, y_ref) <= TOL64


def test_executor_source_is_straight_line():
    _, sizes = sized("neck", 64)
    for variant in VARIANTS:
        ex = executors(forced("neck", sizes, variant))
        for fn in (ex.kernel, ex.stream, ex.step):
            body = fn.source
            assert ".item()" not in body and "if " not in body and "for " not in body
            assert body.count("def ") == 2


@pytest.mark.parametrize(
    "variant", [v for v in VARIANTS if v[0] != "chunked"], ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}"
)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_prepared_stream_contracts_by_matmul(mode, variant):
    # Hoisted constants are stored in the order their readers want, so every contraction
    # reading one runs per chunk as a matmul on views (a per-chunk einsum permute-copies its
    # constant: ~7x slower on `full`). (Not the chunked algorithm: its Toeplitz meets a
    # chunked signal whose batch axis lies outside the chunk blocks, which no order of the
    # Toeplitz can read copy-free; einsum copies the smaller signal instead.)
    _, sizes = sized(mode, 16)
    sizes = {k: max(v, 2) for k, v in sizes.items()}  # no size-1 axes: every layout is real
    source = executors(forced(mode, sizes, variant)).stream.split_source
    apply_body = source[source.index("def _stream_apply_body") :]
    signature = apply_body[apply_body.index("(") + 1 : apply_body.index(")")].split(", ")
    constants = {p for p in signature if p[0].islower() and p not in ("x", "h0")}
    calls = re.findall(r'rt\.einsum(?:_real)?\("([^"]+)", (\w+), (\w+)\)', apply_body)
    slow = [
        eq
        for eq, left, right in calls
        if {left, right} & constants
        and set(eq.split("->")[0]) - set(",") - set(eq.split("->")[1]) - {"O"}  # O: length 1
    ]
    print(mode, variant, sorted(constants), calls)
    assert not slow, slow


@pytest.mark.parametrize("shared_table", [True, False])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_stream_with_one_or_two_tables_of_state_powers_matches_the_reference(
    mode, shared_table, monkeypatch
):
    # One table a^t read by the output (against a h0) and by the final state (against the
    # chunk reversed), or the two tables a^(t+1) and a^(L-1-t): three chunks of 8 steps from a
    # random initial state, each form forced for every mode.
    def forced(graph, sizes, strategy, state_inputs, profile, itemsize, shared=True):
        return state._lower_stream(
            graph, sizes, strategy, state_inputs, profile, itemsize, None, shared_table
        )

    monkeypatch.setattr(executor_module, "lower_stream", forced)
    executor_module._executors.cache_clear()
    run = _run_prepared_stream(mode, 24, 8, seed=11)
    executor_module._executors.cache_clear()
    source = run.ex.stream.split_source
    print(f"{mode} shared={shared_table}: output err {run.err_y:.2e}, state err {run.err_h:.2e}")
    assert (".flip(" in source) == shared_table
    assert ("scale=-1" in source) == (not shared_table)
    assert run.err_y <= TOL64 and run.err_h <= TOL64


def test_stream_shares_its_table_of_powers_unless_a_chunk_would_copy_it():
    # s4d's readers agree on a memory order: one table. full's want two at these sizes
    # (one reader would permute-copy a shared table every chunk): the generator builds two.
    for mode, shared in (("s4d", True), ("full", False)):
        _, sizes = sized(mode, 16)
        sizes = {k: max(v, 2) for k, v in sizes.items()}
        stream = executors(contractssm.plan(mode, sizes)).stream
        source = stream.split_source
        print(mode, "copied per chunk:", stream.copied_constants)
        assert (".flip(" in source) == shared and not stream.copied_constants


@pytest.mark.parametrize("split", [(8, 8), (2, 32)])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_stream_with_split_state_powers_matches_the_reference(mode, split, monkeypatch):
    # The state's powers as a^(N m) a^(n + 1) and a^(N (M-1-m)) a^(N-1-n) (time as (M, N)),
    # forced for every mode: two chunks of 64 = 8 x 8 (or 2 x 32) steps, from a random state.
    def forced(graph, sizes, strategy, state_inputs, profile, itemsize, shared_table=True):
        return state._lower_stream(
            graph, sizes, strategy, state_inputs, profile, itemsize, split, shared_table
        )

    monkeypatch.setattr(executor_module, "lower_stream", forced)
    executor_module._executors.cache_clear()
    chunk = 64
    run = _run_prepared_stream(mode, 128, chunk, seed=6)
    executor_module._executors.cache_clear()
    print(f"{mode} split {split}: output err {run.err_y:.2e}, state err {run.err_h:.2e}")
    coarse, fine = split
    assert f"count={coarse}, offset=0, scale={fine}" in run.ex.stream.split_source  # a^(N m)
    assert run.err_y <= TOL64 and run.err_h <= TOL64
    # Differentiable through the split powers (training on a stream), against finite differences.
    params = [a.detach().clone().requires_grad_() for a in run.args[1:]]
    x0 = run.args[0].narrow(run.t_axis, 0, chunk)
    assert torch.autograd.gradcheck(
        lambda *p: run.ex.stream(x0, *p, run.h0)[0], params, atol=1e-6, fast_mode=True
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=graphs_and_sizes(),
    split=st.sampled_from(state.state_splits(64)),
    shared=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_graphs_stream_with_split_state_powers(case, split, shared, seed):
    # Any declaration, any split of a 64-step chunk (the fade's chunk copied into its matmul's
    # order, its coarse powers a weighted sum): two chunks from a random state, float64.
    graph, sizes, _ = case
    sizes = {i: n for i, n in sizes.items() if i in graph.indices}
    chunk = 64

    def forced(graph, sizes, strategy, state_inputs, profile, itemsize, shared_table=True):
        return state._lower_stream(
            graph, sizes, strategy, state_inputs, profile, itemsize, split, shared
        )

    ops = random_operands(graph, {**sizes, graph.time: 2 * chunk}, seed=seed)
    args = canonical_args(graph, ops)
    p = contractssm.plan(graph, {**sizes, graph.time: chunk}, dtype="float64")
    # Streams split time only where the output's time axis is last (lower_stream's rule).
    assume(layout_of(executor_module.parse(p.declaration)).output.endswith("T"))
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    y_ref, h_ref = reference_with_state(
        graph, contractssm.plan(graph, {**sizes, graph.time: 2 * chunk}, dtype="float64"), ops, h0
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(executor_module, "lower_stream", forced)
        executor_module._executors.cache_clear()
        ex = executors(p)
        executor_module._executors.cache_clear()
    t_axis = graph.signal.indices.index(graph.time)
    run, h, ys = ex.stream.prepare(*args[1:]), h0, []
    for t in (0, chunk):
        y, h = run(args[0].narrow(t_axis, t, chunk), h)
        ys.append(y)
    y = torch.cat(ys, dim=graph.output_indices.index(graph.time))
    err_y = rel_err(y, y_ref) if y_ref.abs().max() > 0 else y.abs().max().item()
    err_h = rel_err(torch.view_as_complex(h), h_ref) if h_ref.abs().max() > 0 else 0.0
    print(f"{graph} split {split} shared={shared}: output err {err_y:.2e}, state err {err_h:.2e}")
    assert err_y <= TOL64 and err_h <= TOL64


@dataclasses.dataclass
class _StreamRun:
    ex: object
    args: tuple
    h0: torch.Tensor
    t_axis: int
    err_y: float
    err_h: float


def _run_prepared_stream(mode: str, length: int, chunk: int, seed: int) -> _StreamRun:
    """A prepared stream of ``chunk``-step chunks from a random state, against the reference."""
    graph, sizes = sized(mode, chunk)
    ops = random_operands(graph, {**sizes, graph.time: length}, seed=seed)
    args = canonical_args(graph, ops)
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    y_ref, h_ref = reference_with_state(
        graph, contractssm.plan(graph, {**sizes, graph.time: length}, dtype="float64"), ops, h0
    )
    ex = executors(contractssm.plan(graph, sizes, dtype="float64"))
    t_axis = graph.signal.indices.index(graph.time)
    run, h, ys = ex.stream.prepare(*args[1:]), h0, []
    for t in range(0, length, chunk):
        y, h = run(args[0].narrow(t_axis, t, chunk), h)
        ys.append(y)
    err_y = rel_err(torch.cat(ys, dim=graph.output_indices.index(graph.time)), y_ref)
    err_h = rel_err(torch.view_as_complex(h), h_ref)
    return _StreamRun(ex, args, h0, t_axis, err_y, err_h)


def test_state_split_is_offered_only_for_small_batches():
    assert state.state_split(256) == (16, 16)
    assert state.state_split(100) == (10, 10)
    assert state.state_split(96) == (12, 8)
    assert state.state_split(32) is None  # short chunks keep one table
    assert state.state_split(127) is None  # prime: no factor of at least 4
    profile = state.default_profile("cpu")

    def split_used(batch, channels=256):
        p = contractssm.plan("dws", {"b": batch, "c": channels, "n": 16, "l": 256})
        graph, sizes = executor_module.parse(p.declaration), dict(p.sizes)
        b, _ = state.lower_stream(graph, sizes, p.strategy, p.state_inputs, profile, 4)
        return any(s.op == "powers" and s.axes.endswith("M") for s in b.steps)

    assert split_used(1)  # an 8 MiB table becomes two of 0.5 MiB: cheaper by the cost model
    assert not split_used(2)  # 16 x batch > fine: not offered
    assert not split_used(1, channels=16)  # a 512 KiB table: not offered


def test_large_tables_of_state_powers_are_split_at_any_batch():
    # From sqrt(length) up to coarse = 2; a table far out of cache (full at 64 x 64 x 16
    # states, 128 MiB at chunks of 256) is split at batch 8 too, finer for the larger batch.
    assert state.state_splits(256) == [(16, 16), (8, 32), (4, 64), (2, 128)]
    assert state.state_splits(96) == [(12, 8), (8, 12), (6, 16), (4, 24)]
    assert state.state_splits(32) == []
    profile = state.default_profile("cpu")
    p = contractssm.plan("full", {"b": 8, "c": 64, "d": 64, "n": 16, "l": 256})
    graph, sizes = executor_module.parse(p.declaration), dict(p.sizes)
    b, _ = state.lower_stream(graph, sizes, p.strategy, p.state_inputs, profile, 4)
    fine = [s.attr("chunk") for s in b.steps if s.op == "chunk" and s.phase == "state"]
    print("full (8, 64, 64, 16) stream at chunks of 256: fine", fine)
    assert fine and fine[0] > 16
    # The fade reads the chunk copied into its matmul's order and sums the coarse powers.
    source = executors(p).stream.split_source
    assert "contiguous()" in source and "rt.weighted_sum(" in source
    assert not executors(p).stream.copied_constants


@pytest.mark.parametrize("mode", sorted(MODES))
def test_prepared_stream_with_tables_laid_out_for_their_readers(mode, monkeypatch, request):
    # Chunks of 128 steps: the hoisted powers are factorised runs, computed straight into
    # the order the per-chunk matmuls read them (rt.powers_laid_out) where that differs.
    # (The program with separate state terms: no fused chunk matrix.)
    monkeypatch.setattr(state, "_lower_fused_stream", lambda *args: None)
    executor_module._executors.cache_clear()
    request.addfinalizer(executor_module._executors.cache_clear)
    run = _run_prepared_stream(mode, 256, 128, seed=8)
    laid_out = "rt.powers_laid_out" in run.ex.stream.split_source
    print(f"{mode}: laid out: {laid_out}; output err {run.err_y:.2e}, state err {run.err_h:.2e}")
    assert run.err_y <= TOL64 and run.err_h <= TOL64
    if mode in ("full", "s4d"):  # their readers want the time axis moved
        assert laid_out
    if mode == "dws":  # its one table a^t is also its kernel's: computed once, then copied
        assert "rt.powers_laid_out" not in run.ex.stream.split_source
        assert ".permute(0, 2, 1).contiguous()" in run.ex.stream.split_source


@pytest.mark.parametrize("mode", sorted(MODES))
def test_float32_stream_of_fast_decays_matches_the_reference(mode):
    # Rates down to exp(-3) per step, chunks of 256: the state's fade a^(255 - t) underflows
    # float32 at its start; built from growing factors it overflowed and the state was NaN.
    graph, sizes = sized(mode, 256)
    length = 512
    ops = random_operands(graph, {**sizes, graph.time: length}, seed=9)
    gen = torch.Generator().manual_seed(9)
    rate = ops[graph.recurrence.name]
    ops[graph.recurrence.name] = torch.complex(
        -(0.05 + 2.95 * torch.rand(rate.shape, generator=gen, dtype=torch.float64)), rate.imag
    )
    y_ref, h_ref = reference_with_state(
        graph, contractssm.plan(graph, {**sizes, graph.time: length}, dtype="float64"), ops
    )
    args = [
        a.to(torch.complex64 if a.is_complex() else torch.float32)
        for a in canonical_args(graph, ops)
    ]
    p = contractssm.plan(graph, sizes)
    t_axis = graph.signal.indices.index(graph.time)
    run = executors(p).stream.prepare(*args[1:])
    h = torch.zeros(*[sizes[i] for i in graph.state_indices], 2)
    ys = []
    for t in range(0, length, 256):
        y, h = run(args[0].narrow(t_axis, t, 256), h)
        ys.append(y)
    y = torch.cat(ys, dim=graph.output_indices.index(graph.time))
    err_y, err_h = rel_err(y, y_ref), rel_err(torch.view_as_complex(h), h_ref)
    print(f"{mode}: output err {err_y:.2e}, state err {err_h:.2e}")
    assert y.isfinite().all() and h.isfinite().all()
    assert err_y <= 1e-4 and err_h <= 1e-4


#: Modes whose chunk is one depthwise matrix at the test sizes (s5 is too at 32 x 32 channels
#: and 32 states, where its plan puts every weight on the signal or output side).
FUSABLE = ("dws", "neck")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_fused_chunk_is_offered_where_the_chunk_is_one_depthwise_matrix(mode):
    graph, sizes = sized(mode, 16)
    p = contractssm.plan(graph, sizes)
    g = executor_module.parse(p.declaration)
    profile = state.default_profile("cpu")
    fused = state._lower_fused_stream(g, dict(p.sizes), p.strategy, p.state_inputs, profile, 8)
    print(f"{mode}: fused chunk {'offered' if fused else 'not offered'}")
    assert (fused is not None) == (mode in FUSABLE)


@pytest.mark.parametrize("mode", FUSABLE)
def test_fused_stream_matches_the_reference_prepared_called_and_compiled(mode):
    run = _run_prepared_stream(mode, 96, 32, seed=12)
    source = run.ex.stream.split_source
    print(f"{mode}: fused {'rt.chunk_apply' in source}; err y {run.err_y:.1e}, h {run.err_h:.1e}")
    assert "rt.chunk_apply" in source and run.err_y <= TOL64 and run.err_h <= TOL64
    # Called directly (the constants built per call) with gradients through the state.
    chunk = [a.clone().requires_grad_(a.is_floating_point() or a.is_complex()) for a in run.args]
    chunk[0] = chunk[0].narrow(run.t_axis, 0, 6).detach().requires_grad_()
    h0 = run.h0.clone().requires_grad_()
    graph, sizes = sized(mode, 6)
    ex6 = executors(contractssm.plan(graph, sizes, dtype="float64"))
    assert "rt.chunk_apply" in ex6.stream.source
    assert torch.autograd.gradcheck(
        lambda x, A, h: [t.sum() for t in ex6.stream(x, A, *chunk[2:], h)],
        (chunk[0], chunk[1], h0),
    )
    compiled = torch.compile(ex6.stream, fullgraph=True)
    y_c, h_c = compiled(*[t.detach() for t in chunk], h0.detach())
    y_e, h_e = ex6.stream(*[t.detach() for t in chunk], h0.detach())
    err = max(rel_err(y_c, y_e), rel_err(h_c, h_e))
    print(f"{mode}: compiled against eager {err:.1e}")
    assert err <= 1e-12
