"""The float64 reference (contractssm.codegen.reference): the oracle of every other test.

Hand-worked tiny cases, agreement of the explicit recurrence (``reference``) with the direct
causal sum (``reference_direct``) on every built-in mode and on random graphs, streaming with an
initial state, the dense-transition (S4) generator, and error messages.

Tolerances: cases whose numbers are exact in binary (a = 1, a = 0.5, small integers) are compared
with ``exact`` below, which allows 1e-15 relative error because ``exp(log(0.5))`` and
``cos(pi / 2)`` are only correct to an ulp; with a = 1 the comparison is bit-exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractssm.codegen.reference import reference, reference_direct
from contractssm.errors import ShapeError, SpecError
from contractssm.modes import BUILTIN_MODES, get_graph
from contractssm.spec import parse

F64 = torch.float64
C128 = torch.complex128
HALF = math.log(0.5)  # exp(HALF) = 0.5 (to an ulp)
TOL = 1e-12  # reference vs reference_direct, relative to max|y|

# Sizes for the built-in modes (SPEC.md section 1 letters): B = 2, channels 3, states 2-4.
SIZES = {"b": 2, "c": 3, "d": 3, "h": 3, "g": 3, "k": 2, "n": 2, "m": 3, "s": 4, "p": 4}


def exact(actual, expected):
    """Equal up to 1e-15 relative (see the module doc); bit-exact when inputs are exact."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, rtol=1e-15, atol=1e-15)


def rel_error(y, y_ref) -> tuple[float, float]:
    err = (y - y_ref).abs().max().item() if y.numel() else 0.0
    scale = y_ref.abs().max().item() if y_ref.numel() else 0.0
    return err, scale


def make_operands(graph, sizes, gen, *, L):
    """Random float64 operands: real signal, stable complex rate, real/complex weights."""
    sizes = {**sizes, graph.time: L}
    ops = {}
    for op in graph.operands:
        shape = tuple(sizes[i] for i in op.indices)
        if op is graph.signal:
            ops[op.name] = torch.randn(shape, generator=gen, dtype=F64)
        elif op is graph.recurrence:
            re = -(0.05 + 0.95 * torch.rand(shape, generator=gen, dtype=F64))
            im = 6 * torch.rand(shape, generator=gen, dtype=F64) - 3
            ops[op.name] = torch.complex(re, im)
        elif op.is_complex:
            ops[op.name] = torch.randn(shape, generator=gen, dtype=C128)
        else:
            ops[op.name] = torch.randn(shape, generator=gen, dtype=F64)
    return ops


def split_time(graph, ops, k):
    """The operands restricted to time steps [0, k) and [k, L)."""
    name, axis = graph.signal.name, graph.signal.indices.index(graph.time)
    x = ops[name]
    first, second = dict(ops), dict(ops)
    first[name] = x.narrow(axis, 0, k)
    second[name] = x.narrow(axis, k, x.shape[axis] - k)
    return first, second


def check_streaming(graph, ops, k):
    y, h = reference(graph, ops)
    first, second = split_time(graph, ops, k)
    y1, h1 = reference(graph, first)
    y2, h2 = reference(graph, second, h0=h1)
    t = graph.output_indices.index(graph.time)
    y_cat = torch.cat([y1, y2], dim=t)
    err_y, scale_y = rel_error(y_cat, y)
    err_h, scale_h = rel_error(h2, h)
    print(f"streaming split {k}: max err y {err_y:.3e} (max|y| {scale_y:.3e}), "
          f"h {err_h:.3e} (max|h| {scale_h:.3e})")  # fmt: skip
    assert err_y <= TOL * scale_y
    assert err_h <= TOL * scale_h


# -- hand-worked cases ------------------------------------------------------------------------

SCALAR = parse("y[b,n,l] = ssm A[n;l] * signal x[b,l]")


@pytest.mark.parametrize("L", [1, 2, 3])
def test_scalar_state_a_is_one_bit_exact(L):
    # a = exp(0) = 1: h_t is the running sum of x.
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], dtype=F64)[:, :L]
    A = torch.tensor([0j], dtype=C128)
    y, h = reference(SCALAR, {"x": x, "A": A})
    expected = torch.tensor([[1.0, 3.0, 6.0], [-1.0, -0.5, 3.5]], dtype=F64)[:, :L]
    assert y.dtype == F64 and h.dtype == C128
    assert torch.equal(y, expected[:, None, :])
    assert torch.equal(h, expected[:, -1:].to(C128))
    assert torch.equal(reference_direct(SCALAR, {"x": x, "A": A}), expected[:, None, :])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_scalar_state_two_rates(L):
    # Two states: a = 0.5 and a = 1. h_t = sum_j a^(t-j) x_j.
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)[:, :L]
    A = torch.tensor([HALF + 0j, 0j], dtype=C128)
    y, h = reference(SCALAR, {"x": x, "A": A})
    half = [1.0, 2.5, 4.25][:L]  # 1; 0.5*1 + 2; 0.5*2.5 + 3
    one = [1.0, 3.0, 6.0][:L]
    exact(y, [[half, one]])
    exact(h, torch.tensor([[half[-1], one[-1]]], dtype=C128))
    exact(reference_direct(SCALAR, {"x": x, "A": A}), [[half, one]])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_dws_complex_rate_takes_real_part(L):
    # dws: y[b,c,t] = Re sum_n E[c,n] h[b,c,n,t]. State n=0 has a = 0.5i (rotation by pi/2),
    # n=1 has a = 1. For x = 1, 2, 3 on channel c:
    #   a = 0.5i: h = 1; 2 + 0.5i; 3 + 0.5i (2 + 0.5i) = 2.75 + 1i   -> Re: 1, 2, 2.75
    #   a = 1:    h = 1; 3; 6
    g = get_graph("dws")
    x = torch.tensor([[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]], dtype=F64)[..., :L]  # (b, c, l)
    A = torch.tensor([[HALF + 1j * math.pi / 2, 0j]] * 2, dtype=C128)  # (c, n)
    E = torch.tensor([[1.0, 0.0], [1.0, 10.0]], dtype=F64)  # (c, n)
    y, h = reference(g, {"x": x, "A": A, "E": E})
    rot = [1.0, 2.0, 2.75][:L]
    acc = [1.0, 3.0, 6.0][:L]
    expected = [[rot, [2 * r + 10 * 2 * a for r, a in zip(rot, acc, strict=True)]]]
    exact(y, expected)
    h_rot = [1.0, 2 + 0.5j, 2.75 + 1j][L - 1]
    exact(h, torch.tensor([[[h_rot, acc[-1]], [2 * h_rot, 2 * acc[-1]]]], dtype=C128))
    assert h[0, 0, 0].imag.abs() > 0 or L == 1  # the state itself stays complex
    exact(reference_direct(g, {"x": x, "A": A, "E": E}), expected)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_complex_weight_real_part_after_weights(L):
    # y = Re(W h) with W = 1 + 2i and h as above (a = 0.5i): Re h - 2 Im h = 1, 1, 0.75.
    g = parse("y[b,l] = complex W[n] * ssm A[n;l] * signal x[b,l]")
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)[:, :L]
    A = torch.tensor([HALF + 1j * math.pi / 2], dtype=C128)
    ops = {"x": x, "A": A, "W": torch.tensor([1 + 2j], dtype=C128)}
    exact(reference(g, ops)[0], [[1.0, 1.0, 0.75][:L]])
    exact(reference_direct(g, ops), [[1.0, 1.0, 0.75][:L]])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_s5_projections(L):
    # y[b,d,t] = Re sum_s C[d,s] h[b,s,t], h = a h + sum_c B[s,c] x[b,c,t].
    # B = [[1, 2]], x channels (1,2,3) and (4,5,6): u = 9, 12, 15.
    #   a = 1:   h = 9, 21, 36;        a = 0.5: h = 9, 16.5, 23.25
    # C = [[3, 1], [0, -2]]: y0 = 3 h_a1 + h_a05, y1 = -2 h_a05.
    g = get_graph("s5")
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]], dtype=F64)[..., :L]
    A = torch.tensor([0j, HALF + 0j], dtype=C128)
    B = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64)
    C = torch.tensor([[3.0, 1.0], [0.0, -2.0]], dtype=F64)
    ops = {"x": x, "A": A, "B": B, "C": C}
    h1, h05 = [9.0, 21.0, 36.0][:L], [9.0, 16.5, 23.25][:L]
    expected = [[[3 * p + q for p, q in zip(h1, h05, strict=True)], [-2 * q for q in h05]]]
    y, h = reference(g, ops)
    exact(y, expected)
    exact(h, torch.tensor([[h1[-1], h05[-1]]], dtype=C128))
    exact(reference_direct(g, ops), expected)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_skip_term(L):
    # y[b,h,t] = Re h[b,h,t] + D[h] x[b,h,t], a = 0.5: h = 1, 2.5, 4.25 for x = 1, 2, 3.
    g = parse("y[b,h,l] = ssm A[h;l] * signal x[b,h,l] + D[h] * x[b,h,l]")
    x = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]], dtype=F64)[..., :L]
    A = torch.tensor([HALF, HALF], dtype=C128)
    D = torch.tensor([10.0, -1.0], dtype=F64)
    expected = [[[1.0 + 10, 2.5 + 20, 4.25 + 30][:L], [0.0, 0.0, 1.0 - 1.0][:L]]]
    y, _ = reference(g, {"x": x, "A": A, "D": D})
    exact(y, expected)
    exact(reference_direct(g, {"x": x, "A": A, "D": D}), expected)


def test_reindexed_identity_skip():
    # Identity skip with the signal re-indexed from channel c onto output channel d (C = D).
    g = parse("y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l] + x[b,d,l]")
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=F64)  # (b, c, l)
    ops = {"x": x, "A": torch.tensor([0j]), "B": torch.ones(1, 2), "C": torch.zeros(2, 1)}
    y, _ = reference(g, ops)
    assert torch.equal(y, x)
    ops["C"] = torch.tensor([[1.0], [0.0]])
    y, _ = reference(g, ops)
    assert torch.equal(y, x + torch.tensor([[[4.0, 10.0], [0.0, 0.0]]], dtype=F64))
    assert torch.equal(reference_direct(g, ops), y)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_initial_state_and_final_state(L):
    # h_t = a^(t+1) h0 + sum_j a^(t-j) x_j with a = 0.5, h0 = 8, x = 1, 2, 3:
    #   h0 part 4, 2, 1; input part 1, 2.5, 4.25 -> 5, 4.5, 5.25.
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)[:, :L]
    A = torch.tensor([HALF + 0j, 0j], dtype=C128)
    h0 = torch.tensor([[8.0 + 0j, -1j]], dtype=C128)  # (b, n); a = 1 keeps h0 = -i
    y, h = reference(SCALAR, {"x": x, "A": A}, h0=h0)
    half = [5.0, 4.5, 5.25][:L]
    one = [1.0, 3.0, 6.0][:L]  # Re(-i + cumsum) = cumsum
    exact(y, [[half, one]])
    exact(h, torch.tensor([[half[-1], one[-1] - 1j]], dtype=C128))
    # h0 is not modified in place.
    assert torch.equal(h0, torch.tensor([[8.0 + 0j, -1j]], dtype=C128))


def test_initial_state_accepts_real_tensor():
    x = torch.zeros(1, 2, dtype=F64)
    y, h = reference(SCALAR, {"x": x, "A": torch.tensor([0j])}, h0=torch.ones(1, 1))
    assert torch.equal(y, torch.ones(1, 1, 2, dtype=F64))
    assert h.dtype == C128


def test_inputs_in_float32_are_promoted():
    g = get_graph("s5")
    gen = torch.Generator().manual_seed(0)
    ops = make_operands(g, SIZES, gen, L=5)
    ops32 = {k: v.to(torch.complex64 if v.is_complex() else torch.float32) for k, v in ops.items()}
    ops64 = {k: v.to(C128 if v.is_complex() else F64) for k, v in ops32.items()}
    y32, h32 = reference(g, ops32)
    y64, h64 = reference(g, ops64)
    assert y32.dtype == F64 and h32.dtype == C128
    assert torch.equal(y32, y64) and torch.equal(h32, h64)


# -- reference vs direct causal sum on every built-in mode ------------------------------------

DIAGONAL_MODES = [m for m in BUILTIN_MODES if m != "s4"]


@pytest.mark.parametrize("L", [1, 2, 5, 17])
@pytest.mark.parametrize("mode", DIAGONAL_MODES)
def test_builtin_reference_matches_direct(mode, L):
    g = get_graph(mode)
    gen = torch.Generator().manual_seed(1000 * L + len(mode))
    ops = make_operands(g, SIZES, gen, L=L)
    y, h = reference(g, ops)
    y_direct = reference_direct(g, ops)
    err, scale = rel_error(y, y_direct)
    print(f"{mode} L={L}: max abs err {err:.3e}, max|y| {scale:.3e}, rel {err / scale:.3e}")
    expected_shape = tuple({**SIZES, "l": L}[i] for i in g.output_indices)
    assert y.shape == y_direct.shape == expected_shape
    assert h.shape == tuple(SIZES[i] for i in g.state_indices)
    assert y.dtype == y_direct.dtype == F64
    assert scale > 0
    assert err <= TOL * scale


@pytest.mark.parametrize("mode", DIAGONAL_MODES)
def test_builtin_streaming(mode):
    g = get_graph(mode)
    gen = torch.Generator().manual_seed(7)
    ops = make_operands(g, SIZES, gen, L=11)
    for k in (1, 4, 10):
        check_streaming(g, ops, k)


def test_linearity_in_the_signal():
    g = get_graph("lru")
    gen = torch.Generator().manual_seed(3)
    ops = make_operands(g, SIZES, gen, L=6)
    other = dict(ops, x=torch.randn(ops["x"].shape, generator=gen, dtype=F64))
    both = dict(ops, x=2 * ops["x"] - other["x"])
    y = 2 * reference(g, ops)[0] - reference(g, other)[0]
    err, scale = rel_error(reference(g, both)[0], y)
    print(f"linearity: max abs err {err:.3e}, max|y| {scale:.3e}")
    assert err <= TOL * scale


def test_causality():
    g = get_graph("neck")
    gen = torch.Generator().manual_seed(4)
    ops = make_operands(g, SIZES, gen, L=8)
    y = reference(g, ops)[0]
    changed = ops["x"].clone()
    changed[..., 5:] += 1.0
    y2 = reference(g, dict(ops, x=changed))[0]
    assert torch.equal(y[..., :5], y2[..., :5])
    assert not torch.equal(y[..., 5:], y2[..., 5:])


# -- the dense-transition generator (S4) ------------------------------------------------------


def s4_operands(gen, H=3, N=4, K=2, B=2, L=9):
    m = torch.randn(H, N, N, generator=gen, dtype=C128)
    radius = torch.linalg.eigvals(m).abs().amax(dim=-1)  # (h,)
    m = m / (1.25 * radius[:, None, None])  # spectral radius 0.8
    return {
        "x": torch.randn(B, H, L, generator=gen, dtype=F64),
        "A": {"transition": m, "input": torch.randn(H, N, generator=gen, dtype=C128)},
        "W": torch.randn(K, H, N, generator=gen, dtype=C128),
        "D": torch.randn(K, H, generator=gen, dtype=F64),
    }


@pytest.mark.parametrize("L", [1, 2, 5, 17])
def test_s4_generator_matches_direct(L):
    g = get_graph("s4")
    gen = torch.Generator().manual_seed(L)
    ops = s4_operands(gen, L=L)
    y, h = reference(g, ops)
    y_direct = reference_direct(g, ops)
    err, scale = rel_error(y, y_direct)
    print(f"s4 L={L}: max abs err {err:.3e}, max|y| {scale:.3e}")
    assert y.shape == y_direct.shape == (2, 2, 3, L)
    assert h.shape == (2, 3, 4)
    assert err <= TOL * scale


def test_s4_streaming():
    g = get_graph("s4")
    ops = s4_operands(torch.Generator().manual_seed(11), L=10)
    for k in (1, 3, 9):
        check_streaming(g, ops, k)


def test_s4_with_diagonal_transition_equals_s4d():
    # M = diag(exp(A)), v = 1 gives V[tau] = exp(A tau): the s4 graph then computes s4d.
    gen = torch.Generator().manual_seed(5)
    s4d = get_graph("s4d")
    ops = make_operands(s4d, SIZES, gen, L=7)
    dense = dict(
        ops, A={"transition": torch.diag_embed(torch.exp(ops["A"])), "input": torch.ones(3, 2)}
    )
    y_d, h_d = reference(s4d, ops)
    y_s4, h_s4 = reference(get_graph("s4"), dense)
    err, scale = rel_error(y_s4, y_d)
    print(f"s4 (diagonal M) vs s4d: max abs err {err:.3e}, max|y| {scale:.3e}")
    assert err <= TOL * scale
    assert (h_s4 - h_d).abs().max().item() <= TOL * h_d.abs().max().item()
    err_direct, _ = rel_error(reference_direct(get_graph("s4"), dense), y_d)
    assert err_direct <= TOL * scale


def test_s4_generator_needs_a_mapping():
    g = get_graph("s4")
    ops = s4_operands(torch.Generator().manual_seed(0))
    ops["A"] = torch.zeros(3, 4, dtype=C128)
    with pytest.raises(SpecError, match="'A'") as info:
        reference(g, ops)
    assert "'s4'" in str(info.value) and "transition" in str(info.value)
    ops["A"] = {"transition": torch.zeros(3, 4, 4)}
    with pytest.raises(SpecError, match="'A'"):
        reference_direct(g, ops)


# -- random graphs ----------------------------------------------------------------------------

POOL = ["b", "c", "d", "h", "k", "m", "n"]


@st.composite
def graphs_and_sizes(draw):
    """A random valid declaration (as in test_spec.py) with index sizes that fit it."""
    idx = st.sampled_from(POOL)
    sig_axes = draw(st.lists(idx, unique=True, max_size=2))
    tpos = draw(st.integers(0, len(sig_axes)))
    sig = [*sig_axes[:tpos], "l", *sig_axes[tpos:]]
    states = draw(st.lists(idx, unique=True, min_size=1, max_size=3))
    factors = [f"signal x[{','.join(sig)}]", f"ssm A[{','.join(states)};l]"]
    carried = set(sig_axes) | set(states)
    for k in range(draw(st.integers(0, 3))):
        w = draw(st.lists(idx, unique=True, max_size=3))
        carried |= set(w)
        factors.append(f"{'complex ' if draw(st.booleans()) else ''}W{k}[{','.join(w)}]")
    out_axes = draw(st.lists(st.sampled_from(sorted(carried)), unique=True, max_size=3))
    opos = draw(st.integers(0, len(out_axes)))
    out = [*out_axes[:opos], "l", *out_axes[opos:]]
    text = f"y[{','.join(out)}] = {' * '.join(draw(st.permutations(factors)))}"
    skip_pairs = []
    if draw(st.booleans()):
        skip_axes = draw(st.lists(idx, unique=True, min_size=len(sig_axes), max_size=len(sig_axes)))
        skip_pairs = list(zip(sig_axes, skip_axes, strict=True))
        parts = [f"x[{','.join([*skip_axes[:tpos], 'l', *skip_axes[tpos:]])}]"]
        missing = [i for i in out_axes if i not in skip_axes]
        if missing:
            parts.append(f"D0[{','.join(missing)}]")
        if draw(st.booleans()):
            parts.append(f"D1[{','.join(draw(st.lists(idx, unique=True, max_size=2)))}]")
        text += " + " + " * ".join(draw(st.permutations(parts)))
    graph = parse(text)

    # Sizes 1-3; a re-indexed skip ties the sizes of paired signal axes (union-find).
    parent = {i: i for i in POOL}

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in skip_pairs:
        parent[root(a)] = root(b)
    by_root = {r: draw(st.integers(1, 3)) for r in sorted({root(i) for i in POOL})}
    sizes = {i: by_root[root(i)] for i in POOL}
    L = draw(st.integers(1, 7))
    return graph, sizes, L


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=graphs_and_sizes(), seed=st.integers(0, 2**31 - 1))
def test_random_graphs_reference_matches_direct(case, seed):
    graph, sizes, L = case
    gen = torch.Generator().manual_seed(seed)
    ops = make_operands(graph, sizes, gen, L=L)
    y, h = reference(graph, ops)
    y_direct = reference_direct(graph, ops)
    err, scale = rel_error(y, y_direct)
    print(f"{graph}: max abs err {err:.3e}, max|y| {scale:.3e}")
    assert y.shape == y_direct.shape == tuple({**sizes, "l": L}[i] for i in graph.output_indices)
    assert h.shape == tuple(sizes[i] for i in graph.state_indices)
    assert err <= TOL * scale
    if L >= 2:
        check_streaming(graph, ops, L // 2)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [reference, reference_direct])
@pytest.mark.parametrize("missing", ["x", "A", "C", "B"])
def test_missing_operand(fn, missing):
    g = get_graph("s5")
    ops = make_operands(g, SIZES, torch.Generator().manual_seed(0), L=3)
    del ops[missing]
    with pytest.raises(SpecError, match=f"operand '{missing}'"):
        fn(g, ops)


@pytest.mark.parametrize("fn", [reference, reference_direct])
@pytest.mark.parametrize(("name", "shape"), [("x", (2, 3)), ("B", (4, 3, 1)), ("A", ())])
def test_wrong_rank(fn, name, shape):
    g = get_graph("s5")
    ops = make_operands(g, SIZES, torch.Generator().manual_seed(0), L=3)
    ops[name] = torch.zeros(shape, dtype=ops[name].dtype)
    with pytest.raises(ShapeError, match=f"operand '{name}'") as info:
        fn(g, ops)
    assert str(len(shape)) in str(info.value)


@pytest.mark.parametrize("fn", [reference, reference_direct])
@pytest.mark.parametrize("c", [5, 1])  # 1: must not broadcast silently
def test_inconsistent_sizes_name_both_operands(fn, c):
    g = get_graph("s5")
    ops = make_operands(g, SIZES, torch.Generator().manual_seed(0), L=3)
    ops["B"] = torch.zeros(4, c, dtype=F64)  # but x has c = 3
    with pytest.raises(SpecError, match="'c'") as info:
        fn(g, ops)
    message = str(info.value)
    assert all(s in message for s in ("'B'", "'x'", f"size {c}", "3")), message


@pytest.mark.parametrize("fn", [reference, reference_direct])
def test_empty_sequence(fn):
    g = get_graph("dws")
    ops = make_operands(g, SIZES, torch.Generator().manual_seed(0), L=0)
    with pytest.raises(ShapeError, match="'x'") as info:
        fn(g, ops)
    assert "'l'" in str(info.value)


def test_skip_reindex_size_mismatch():
    g = parse("y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l] + x[b,d,l]")
    ops = {
        "x": torch.zeros(1, 3, 2),
        "A": torch.zeros(2, dtype=C128),
        "B": torch.zeros(2, 3),
        "C": torch.zeros(4, 2),
    }
    with pytest.raises(SpecError, match="'d'") as info:
        reference(g, ops)
    assert "'x'" in str(info.value) and "3" in str(info.value) and "4" in str(info.value)


@pytest.mark.parametrize("shape", [(2,), (2, 4, 1), (3, 4), (2, 3)])
def test_wrong_initial_state_shape(shape):
    g = get_graph("s5")
    ops = make_operands(g, SIZES, torch.Generator().manual_seed(0), L=3)
    with pytest.raises(ShapeError, match="initial state") as info:
        reference(g, ops, h0=torch.zeros(shape, dtype=C128))
    message = str(info.value)
    assert str(shape) in message and "(2, 4)" in message and "b,s" in message, message
