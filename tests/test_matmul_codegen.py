"""Two-operand contractions emitted as torch.matmul on views equal torch.einsum."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contractssm.codegen import runtime as rt
from contractssm.codegen.emit import _emit
from contractssm.planner.matmul import contraction_matmul, matmul_expression
from contractssm.planner.steps import Step

LETTERS = "abcdeT"


@st.composite
def contractions(draw):
    left = draw(st.permutations(LETTERS).map(lambda p: "".join(p[: draw(st.integers(0, 4))])))
    right = draw(st.permutations(LETTERS).map(lambda p: "".join(p[: draw(st.integers(0, 4))])))
    every = sorted(set(left) | set(right))
    shared = set(left) & set(right)
    out = [a for a in every if a not in shared or draw(st.booleans())]
    out = "".join(draw(st.permutations(out)))
    sizes = {a: draw(st.integers(1, 4)) for a in every}
    return f"{left},{right}->{out}", sizes


@settings(max_examples=300, deadline=None)
@given(case=contractions(), complex_=st.booleans())
def test_matmul_expression_equals_einsum(case, complex_):
    equation, sizes = case
    ins, _ = equation.split("->")
    left, right = ins.split(",")
    dtype = torch.complex128 if complex_ else torch.float64
    x = torch.randn([sizes[a] for a in left], dtype=dtype)
    y = torch.randn([sizes[a] for a in right], dtype=dtype)
    expr = matmul_expression(equation, "x", "y", sizes)
    if expr is None:
        return  # the generator keeps the einsum for this layout
    got = eval(expr, {"torch": torch, "rt": rt, "x": x, "y": y})
    want = torch.einsum(equation, x, y)
    assert got.shape == want.shape, (equation, expr)
    assert torch.allclose(got, want, atol=1e-12), (equation, expr)


def test_scalar_result_and_plain_matmul():
    assert matmul_expression("a,a->", "x", "y", {"a": 3}).endswith(".reshape(())")
    # Operands already of the matmul's shapes are read as they are (no reshape op).
    assert matmul_expression("ab,bc->ac", "x", "y", {"a": 3, "b": 4, "c": 2}) == (
        "torch.matmul(x, y)"
    )
    assert matmul_expression("ab,ab->ab", "x", "y", {"a": 2, "b": 2}) is None  # no contraction


def test_broadcast_weight_uses_one_bmm_without_copies():
    # A weight times a batched signal: the weight is expanded (a view), never folded into the
    # signal's rows (torch.matmul's fold copies a transposed signal, twice in the backward).
    sizes = {"a": 8, "d": 64, "T": 1024, "e": 4}
    assert matmul_expression("adT,ed->aeT", "x", "w", sizes) == ("rt.bmm(w.reshape(1, 4, 64), x)")


def test_partial_broadcast_is_left_to_einsum():
    # Batch (a, e) where the Toeplitz has e but not a: flattening the expanded batch would
    # materialise a copies of the Toeplitz, so no matmul layout is offered.
    sizes = {"a": 8, "e": 64, "K": 8, "R": 128, "Q": 128}
    assert matmul_expression("eRQ,aeKQ->aeKR", "t", "u", sizes) is None


def realified_expression(op, equation, names, kinds, sizes):
    """The expression the generator emits for a mixed or real-part product, or None."""
    best = contraction_matmul(op, equation, names, kinds, sizes)
    return None if best is None else best[1]


@settings(max_examples=300, deadline=None)
@given(
    case=contractions(),
    which=st.sampled_from(
        ["mixed-left", "mixed-right", "real-part", "real-part-mixed-left", "real-part-mixed-right"]
    ),
)
def test_realified_expression_equals_einsum(case, which):
    # Mixed real-by-complex products and real parts of complex products, as matmuls over
    # (Re, Im) axes: the stacked operand and view_as_real feed one real bmm.
    equation, sizes = case
    left, right = equation.split("->")[0].split(",")
    cx = {
        "mixed-left": (True, False),
        "mixed-right": (False, True),
        "real-part": (True, True),
        "real-part-mixed-left": (True, False),
        "real-part-mixed-right": (False, True),
    }
    kinds = cx[which]
    op = "einsum_real" if which.startswith("real-part") else "einsum"

    def make(axes, is_complex):
        shape = [sizes[a] for a in axes]
        dtype = torch.complex128 if is_complex else torch.float64
        return torch.randn(shape, dtype=dtype)

    x, y = make(left, kinds[0]), make(right, kinds[1])
    expr = realified_expression(op, equation, ("x", "y"), kinds, sizes)
    if expr is None:
        return
    got = eval(expr, {"torch": torch, "rt": rt, "x": x, "y": y})
    want = torch.einsum(equation, x.to(torch.complex128), y.to(torch.complex128))
    want = want.real if op == "einsum_real" else want
    assert got.shape == want.shape and got.is_complex() == want.is_complex(), (equation, expr)
    assert torch.allclose(got, want, atol=1e-12), (equation, expr)


@settings(max_examples=300, deadline=None)
@given(case=contractions(), conjugated_first=st.booleans())
def test_real_part_against_a_conjugated_operand_equals_einsum(case, conjugated_first):
    # A prepared stream stores a constant conjugated: Re(p q) is then one real matmul of both
    # operands' (Re, Im) views (nothing stacked), fed conj(q) for q.
    equation, sizes = case
    left, right = equation.split("->")[0].split(",")
    x = torch.randn([sizes[a] for a in left], dtype=torch.complex128)
    y = torch.randn([sizes[a] for a in right], dtype=torch.complex128)
    flags = (conjugated_first, not conjugated_first)
    best = contraction_matmul("einsum_real", equation, ("x", "y"), (True, True), sizes, flags)
    if best is None:
        return
    stored = {"x": x.conj_physical() if flags[0] else x, "y": y.conj_physical() if flags[1] else y}
    got = eval(best[1], {"torch": torch, "rt": rt, **stored})
    want = torch.einsum(equation, x, y).real
    print(equation, best[1])
    assert "stack_conj_parts" not in best[1], best[1]
    assert got.shape == want.shape and not got.is_complex(), (equation, best[1])
    assert torch.allclose(got, want, atol=1e-12), (equation, best[1])


def test_conjugated_operands_only_for_real_parts_of_complex_products():
    sizes = {"a": 2, "b": 3, "c": 4}
    for op, kinds, flags in (
        ("einsum", (True, True), (False, True)),  # a complex product keeps its conjugates
        ("einsum_real", (False, True), (False, True)),  # mixed: no (Re, Im) pairing
        ("einsum_real", (True, True), (True, True)),  # both conjugated: Re(conj(p q)) pairs
    ):
        assert contraction_matmul(op, "ab,bc->ac", ("x", "y"), kinds, sizes, flags) is None


def test_chunked_state_products_are_matmuls():
    # The chunked algorithm's state products (per-state vectors against the chunked signal)
    # are bmm calls on views, the small per-state operand expanded over the batch.
    sizes = {"a": 8, "e": 64, "K": 64, "Q": 16, "R": 16}
    mixed = realified_expression("einsum", "eQ,aeKQ->aeK", ("p", "u"), (True, False), sizes)
    assert mixed is not None and "rt.bmm" in mixed and "view_as_complex" in mixed
    real_part = realified_expression("einsum_real", "eR,aeK->aeKR", ("p", "h"), (True, True), sizes)
    assert real_part is not None and "rt.stack_conj_parts(p)" in real_part


def test_a_narrow_result_is_computed_as_the_transposed_product():
    # A chunk's Toeplitz (e, T, J) against one signal row per channel: (4, 256, 256) @ (4, 256,
    # 1) is ~10x slower on CPU than (4, 1, 256) @ (4, 256, 256)^T, the same numbers.
    one = {"a": 1, "e": 4, "T": 256, "J": 256}
    assert matmul_expression("eTJ,aeJ->aeT", "t", "u", one) == (
        "torch.matmul(u.reshape(1, 4, 1, 256), t.reshape(1, 4, 256, 256).transpose(-1, -2))"
        ".reshape((1, 4, 256))"
    )
    # Eight columns: still narrow, the transposed product permuted back (a small copy).
    expr = matmul_expression("eTJ,aeJ->aeT", "t", "u", {**one, "a": 8})
    assert expr.startswith("torch.matmul(u.") and expr.endswith(".permute(1, 0, 2)")
    # 32 columns: not narrow; of the two orders the one whose result keeps the output's
    # innermost axis (T) innermost, so its readers read rows (measured with an add after it:
    # (64, 256, 256) Toeplitz 3.1 against 6.3 ms for the result laid out (e, T, a)).
    expr = matmul_expression("eTJ,aeJ->aeT", "t", "u", {**one, "a": 32})
    print(expr)
    assert expr.startswith("torch.matmul(u.") and expr.endswith(".permute(1, 0, 2)")
    # One unbatched matrix-vector product stays one (torch's mv is fast either way).
    assert matmul_expression("TJ,J->T", "t", "u", {"T": 256, "J": 256}) == (
        "torch.matmul(t, u.reshape(256, 1)).reshape((256,))"
    )
    x = {"t": torch.randn(4, 256, 256, dtype=torch.float64)}
    for a in (1, 8, 32):
        u = torch.randn(a, 4, 256, dtype=torch.float64)
        got = eval(
            matmul_expression("eTJ,aeJ->aeT", "t", "u", {**one, "a": a}),
            {"torch": torch, "t": x["t"], "u": u},
        )
        err = (got - torch.einsum("eTJ,aeJ->aeT", x["t"], u)).abs().max().item()
        print(f"batch {a}: max error {err:.1e}")
        assert err < 1e-12


@st.composite
def products(draw):
    """A two-operand product summing nothing but axes of length 1, with its sizes."""
    left = draw(st.permutations(LETTERS).map(lambda p: "".join(p[: draw(st.integers(0, 4))])))
    right = draw(st.permutations(LETTERS).map(lambda p: "".join(p[: draw(st.integers(0, 4))])))
    every = sorted(set(left) | set(right))
    ones = {a for a in every if draw(st.booleans()) and draw(st.booleans())}
    out = "".join(draw(st.permutations([a for a in every if a not in ones])))
    sizes = {a: 1 if a in ones else draw(st.integers(1, 4)) for a in every}
    return f"{left},{right}->{out}", sizes


@settings(max_examples=300, deadline=None)
@given(
    case=products(),
    op=st.sampled_from(["einsum", "einsum_real"]),
    kinds=st.sampled_from([(True, True), (True, False), (False, True), (False, False)]),
)
def test_inline_product_equals_einsum(case, op, kinds):
    # A small product summing nothing is emitted as one multiply of aligned views.
    equation, sizes = case
    if op == "einsum_real" and not any(kinds):
        kinds = (True, True)
    ins, out = equation.split("->")
    left, right = ins.split(",")
    dtypes = [torch.complex128 if k else torch.float64 for k in kinds]
    x = torch.randn([sizes[a] for a in left], dtype=dtypes[0])
    y = torch.randn([sizes[a] for a in right], dtype=dtypes[1])
    step = Step(op, "z", ("x", "y"), out, op == "einsum" and any(kinds), "state", equation)
    line = _emit(step, {"x": left, "y": right}, sizes, {"x": kinds[0], "y": kinds[1]})
    assert len(line) == 1 and "einsum" not in line[0], line
    env = {"torch": torch, "rt": rt, "x": x, "y": y}
    exec(line[0], env)
    want = torch.einsum(equation, x.to(torch.complex128), y.to(torch.complex128))
    want = want.real if op == "einsum_real" or not any(kinds) else want
    err = (env["z"] - want).abs().max().item() if want.numel() else 0.0
    print(equation, op, kinds, line[0], f"max error {err:.1e}")
    assert env["z"].shape == want.shape, (equation, line)
    assert err < 1e-12, (equation, line)


def test_large_or_conjugated_products_keep_the_runtime_product():
    # From ORDERED_PRODUCT_ELEMENTS the runtime writes the product in its output's order, and a
    # conjugated operand is only ever read by a matmul (it would be multiplied conjugated).
    big = {"a": 64, "b": 64, "c": 64}
    step = Step("einsum", "z", ("x", "y"), "abc", True, "state", "ab,bc->abc")
    kinds = {"x": True, "y": True}
    assert _emit(step, {"x": "ab", "y": "bc"}, big, kinds) == ['z = rt.einsum("ab,bc->abc", x, y)']
    small = {"a": 4, "b": 4, "c": 4}
    assert _emit(step, {"x": "ab", "y": "bc"}, small, kinds) == ["z = x[:, :, None] * y"]
    real = Step("einsum_real", "z", ("x", "y"), "abc", False, "state", "ab,bc->abc")
    assert _emit(real, {"x": "ab", "y": "bc"}, small, kinds) == ["z = (x[:, :, None] * y).real"]
    held = _emit(real, {"x": "ab", "y": "bc"}, small, kinds, conjugated=frozenset({"x"}))
    assert len(held) == 1 and "torch.matmul" in held[0], held


def test_mixed_real_part_sums_against_the_padded_real_operand():
    # Re(P) W summing the states between P's time axis and its (Re, Im) axis: no matmul keeps
    # that axis last, so W (much the smaller) is padded to (W, 0) pairs and the axis summed.
    sizes = {"b": 3, "T": 7, "d": 5}
    p = torch.randn(3, 7, 5, dtype=torch.complex128)
    w = torch.randn(3, 5, dtype=torch.float64)
    expr = realified_expression("einsum_real", "bTd,bd->bT", ("p", "w"), (True, False), sizes)
    print(expr)
    assert expr is not None and "rt.real_pairs(w)" in expr
    got = eval(expr, {"torch": torch, "rt": rt, "p": p, "w": w})
    assert torch.allclose(got, torch.einsum("bTd,bd->bT", p.real, w), atol=1e-12)
    # Not where the real operand is as large as the complex one (its copy would cost more).
    same = {"b": 3, "T": 7, "d": 5}
    expr = realified_expression("einsum_real", "bTd,bTd->bT", ("p", "w"), (True, False), same)
    assert expr is None or "real_pairs" not in expr
