"""The declaration language (contractssm.spec) and the IR (contractssm.ir).

Tables of built-in declarations and bad declarations, round trips, canonical-key invariants
(hypothesis over renamings, factor orders and random valid declarations) and parser fuzzing.
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contractssm.modes as modes_module
from contractssm.errors import ContractSSMError, SpecError
from contractssm.ir import DIAGONAL, Graph, Operand, Role, Skip
from contractssm.modes import ALIASES, BUILTIN_MODES, declaration_of, get_graph, register_mode
from contractssm.spec import parse

ALL_MODE_NAMES = [*BUILTIN_MODES, *ALIASES]

# SPEC.md section 3/4: the axes of the recurrent state in step mode (section 4's models: the
# state of the diagonal recurrence after the input projection).
#   mode: (state indices, input weights, state-only weights)
STEP_STATE = {
    "dws": (("b", "c", "n"), (), ("E",)),
    "s5": (("b", "s"), ("B",), ()),
    "neck": (("b", "n", "m"), ("B",), ("E",)),
    "full": (("b", "d", "c", "n"), (), ("E",)),
    "s4d": (("b", "h", "n"), (), ()),
    "s4": (("b", "h", "n"), (), ()),
    "s5_mimo": (("b", "p"), ("B",), ()),
    "lru": (("b", "n"), ("B",), ("gamma",)),
}

MODIFIER_WORDS = {"signal", "ssm", "complex", "real"}

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- helpers ----------------------------------------------------------------------------------


def rename(graph: Graph, index_map: dict[str, str], name_map: dict[str, str]) -> Graph:
    """The same graph with every index and operand (and the output) renamed."""

    def op(o: Operand) -> Operand:
        return replace(o, name=name_map[o.name], indices=tuple(index_map[i] for i in o.indices))

    skip = None
    if graph.skip is not None:
        skip = Skip(
            tuple(op(w) for w in graph.skip.weights),
            tuple(index_map[i] for i in graph.skip.signal_indices),
            graph.skip.signal_position,
        )
    return Graph(
        name_map[graph.output_name],
        tuple(index_map[i] for i in graph.output_indices),
        index_map[graph.time],
        tuple(op(f) for f in graph.factors),
        skip,
    )


def operand_names(graph: Graph) -> list[str]:
    return [graph.output_name, *(op.name for op in graph.operands)]


def with_factors(graph: Graph, factors) -> Graph:
    return Graph(graph.output_name, graph.output_indices, graph.time, tuple(factors), graph.skip)


def with_skip_order(graph: Graph, weights, position: int) -> Graph:
    skip = Skip(tuple(weights), graph.skip.signal_indices, position)
    return Graph(graph.output_name, graph.output_indices, graph.time, graph.factors, skip)


identifiers = st.from_regex(
    r"[A-Za-z_\u03b1-\u03c9][A-Za-z0-9_\u03b1-\u03c9]{0,4}", fullmatch=True
).filter(lambda s: s.isidentifier() and not keyword.iskeyword(s) and s not in MODIFIER_WORDS)


def fresh_names(n: int):
    return st.lists(identifiers, min_size=n, max_size=n, unique=True)


@st.composite
def renamings(draw, graph: Graph):
    """An injective renaming of the graph's indices, and one of its operand names."""
    names = operand_names(graph)
    new_idx = draw(fresh_names(len(graph.indices)))
    new_names = draw(fresh_names(len(names)))
    return dict(zip(graph.indices, new_idx, strict=True)), dict(zip(names, new_names, strict=True))


# A random *valid* declaration: one signal with the time index, one recurrence with 1-3 state
# indices, 0-4 weights over a small index pool, an output covering the time index and carried
# indices only, and optionally a skip term (re-indexed signal and real weights).
INDEX_POOL = ["b", "c", "d", "h", "k", "m", "n", "p"]


@st.composite
def declarations(draw, with_skip: bool = True) -> str:
    time = draw(st.sampled_from(["l", "t"]))
    idx = st.sampled_from(INDEX_POOL)
    sig_axes = draw(st.lists(idx, unique=True, max_size=2))
    tpos = draw(st.integers(0, len(sig_axes)))
    sig = [*sig_axes[:tpos], time, *sig_axes[tpos:]]
    states = draw(st.lists(idx, unique=True, min_size=1, max_size=3))
    weights = []
    for k in range(draw(st.integers(0, 4))):
        w_idx = draw(st.lists(idx, unique=True, min_size=0, max_size=3))
        weights.append((f"W{k}", w_idx, draw(st.booleans())))
    carried = sorted(set(sig_axes) | set(states) | {i for _, ix, _ in weights for i in ix})
    out_axes = draw(st.lists(st.sampled_from(carried), unique=True, max_size=3))
    opos = draw(st.integers(0, len(out_axes)))
    out = [*out_axes[:opos], time, *out_axes[opos:]]

    factors = [f"signal x[{','.join(sig)}]", f"ssm A[{','.join(states)};{time}]"]
    for name, ix, cplx in weights:
        factors.append(f"{'complex ' if cplx else ''}{name}[{','.join(ix)}]")
    factors = draw(st.permutations(factors))
    text = f"y[{','.join(out)}] = {' * '.join(factors)}"

    if with_skip and draw(st.booleans()):
        skip_axes = draw(st.lists(idx, unique=True, min_size=len(sig_axes), max_size=len(sig_axes)))
        skip_sig = [*skip_axes[:tpos], time, *skip_axes[tpos:]]
        missing = [i for i in out_axes if i not in skip_axes]
        skip_ws = []
        if missing:
            extra = draw(st.lists(idx.filter(lambda i: i not in missing), unique=True, max_size=1))
            skip_ws.append(missing + extra)
        for _ in range(draw(st.integers(0, 1))):
            skip_ws.append(draw(st.lists(idx, unique=True, max_size=2)))
        parts = [f"x[{','.join(skip_sig)}]"]
        parts += [f"D{k}[{','.join(ix)}]" for k, ix in enumerate(skip_ws)]
        text += " + " + " * ".join(draw(st.permutations(parts)))
    return text


# -- built-in declarations --------------------------------------------------------------------


def test_state_table_covers_every_builtin():
    assert set(STEP_STATE) == set(BUILTIN_MODES)


@pytest.mark.parametrize("name", ALL_MODE_NAMES)
def test_builtin_parses_and_round_trips(name):
    g = get_graph(name)
    assert isinstance(g, Graph)
    assert g == parse(declaration_of(name))
    assert parse(g.to_text()) == g
    assert parse(str(g)) == g
    assert Graph.from_dict(g.to_dict()) == g
    assert Graph.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert hash(parse(g.to_text())) == hash(g)


@pytest.mark.parametrize("name", ALL_MODE_NAMES)
def test_builtin_canonical_is_idempotent(name):
    g = get_graph(name)
    can = g.canonical()
    assert can.graph.canonical().key == can.key
    assert can.graph.to_text() == can.key
    assert parse(can.key) == can.graph
    assert g.to_dict()["canonical_key"] == can.key
    # The name maps are complete and injective.
    assert {old for old, _ in can.operand_names} == set(operand_names(g))
    assert {old for old, _ in can.index_names} == set(g.indices)
    assert len({new for _, new in can.index_names}) == len(g.indices)
    sizes = {i: k + 2 for k, i in enumerate(g.indices)}
    renamed = can.rename_sizes(sizes)
    assert {renamed[new] for old, new in can.index_names} == set(sizes.values())
    assert all(renamed[new] == sizes[old] for old, new in can.index_names)
    assert can.graph.check_sizes(renamed) == {i: renamed[i] for i in can.graph.indices}


@pytest.mark.parametrize("name", sorted(STEP_STATE))
def test_builtin_state_indices(name):
    state, pre, state_only = STEP_STATE[name]
    g = get_graph(name)
    assert g.state_indices == state, f"{name}: {g.state_indices} != {state}"
    assert tuple(w.name for w in g.input_weights) == pre
    assert tuple(w.name for w in g.state_only_weights) == state_only


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_resolve_to_their_target(alias):
    assert get_graph(alias) == get_graph(ALIASES[alias])


def test_builtin_keys_are_distinct():
    keys = {name: get_graph(name).canonical().key for name in BUILTIN_MODES}
    assert len(set(keys.values())) == len(keys), keys


def test_builtin_structure():
    s5 = get_graph("s5")
    assert s5.time == "l"
    assert s5.signal == Operand("x", ("b", "c", "l"), Role.SIGNAL)
    assert s5.recurrence == Operand("A", ("s",), Role.RECURRENCE, True, DIAGONAL)
    assert [w.name for w in s5.weights] == ["C", "B"]
    assert s5.skip is None
    s4 = get_graph("s4")
    assert s4.recurrence.generator == "s4"
    assert s4.skip is not None and [w.name for w in s4.skip.weights] == ["D"]
    assert s4.skip.signal_indices == ("b", "h", "l")
    lru = get_graph("lru")
    assert [(w.name, w.is_complex) for w in lru.weights] == [
        ("C", True),
        ("gamma", False),
        ("B", True),
    ]


def test_get_graph_passes_graphs_through():
    g = get_graph("dws")
    assert get_graph(g) is g
    assert get_graph(BUILTIN_MODES["dws"]) == g


def test_whitespace_is_free():
    text = BUILTIN_MODES["lru"]
    spaced = re.sub(r"([\[\],;=*+()])", r"  \1\t", text)
    squeezed = re.sub(r"\s*([\[\],;=*+()])\s*", r"\1", text)
    assert parse(spaced) == parse(squeezed) == parse(text)
    assert parse("\n" + text + "\n  ") == parse(text)


def test_operand_named_like_a_modifier():
    # An operand may be named like a modifier word when '[' follows it directly.
    g = parse("y[b,l] = real[n] * ssm A[n;l] * signal x[b,l]")
    assert [w.name for w in g.weights] == ["real"]
    assert parse(g.to_text()) == g


# -- canonical key invariants -----------------------------------------------------------------


@SETTINGS
@given(data=st.data(), name=st.sampled_from(sorted(BUILTIN_MODES)))
def test_renaming_builtin_keeps_canonical_key(data, name):
    g = get_graph(name)
    index_map, name_map = data.draw(renamings(g))
    h = rename(g, index_map, name_map)
    assert parse(h.to_text()) == h
    assert h.canonical().key == g.canonical().key
    assert h.state_indices == tuple(index_map[i] for i in g.state_indices)


@SETTINGS
@given(data=st.data(), name=st.sampled_from(sorted(BUILTIN_MODES)))
def test_factor_order_keeps_canonical_key(data, name):
    g = get_graph(name)
    h = with_factors(g, data.draw(st.permutations(g.factors)))
    if g.skip is not None:
        weights = data.draw(st.permutations(g.skip.weights))
        h = with_skip_order(h, weights, data.draw(st.integers(0, len(weights))))
    assert parse(h.to_text()) == h
    assert h.canonical().key == g.canonical().key
    assert h.state_indices == g.state_indices


def _structural_variants(g: Graph):
    """Graphs that differ from ``g`` in structure (not names), where still valid."""
    for w in g.weights:
        rest = [f for f in g.factors if f is not w]
        try:
            dropped = with_factors(g, rest)
        except SpecError:  # an output index loses its only carrier
            dropped = None
        if dropped is not None:
            yield f"drop {w.name}", dropped
        flipped = replace(w, is_complex=not w.is_complex)
        yield f"flip {w.name}", with_factors(g, [flipped if f is w else f for f in g.factors])
    if g.skip is not None:
        yield "drop skip", Graph(g.output_name, g.output_indices, g.time, g.factors)
    rec = g.recurrence
    other = "s4" if rec.generator == DIAGONAL else DIAGONAL
    new_rec = replace(rec, generator=other)
    yield "generator", with_factors(g, [new_rec if f is rec else f for f in g.factors])
    extra = Operand("Zextra", (g.recurrence.indices[0],), Role.WEIGHT)
    yield "add weight", with_factors(g, [*g.factors, extra])


@pytest.mark.parametrize("name", sorted(BUILTIN_MODES))
def test_structure_changes_the_key(name):
    g = get_graph(name)
    key = g.canonical().key
    variants = list(_structural_variants(g))
    assert len(variants) >= 2
    for what, h in variants:
        assert h.canonical().key != key, f"{name}: {what} kept key {key}"


def test_s4_and_s4d_differ_only_in_generator():
    s4, s4d = get_graph("s4"), get_graph("s4d")
    assert s4.canonical().key != s4d.canonical().key
    assert s4.canonical().key.replace("ssm(s4)", "ssm") == s4d.canonical().key


def test_output_layout_changes_the_key():
    a = parse("y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]")
    b = parse("y[d,b,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]")
    c = parse("y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[c,b,l]")
    assert len({a.canonical().key, b.canonical().key, c.canonical().key}) == 3


# -- random valid declarations ----------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(text=declarations())
def test_random_declarations_round_trip(text):
    g = parse(text)
    assert parse(g.to_text()) == g
    assert Graph.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert g.canonical().graph.canonical().key == g.canonical().key
    # The state holds the recurrence's indices, last, and only signal axes besides.
    state = g.state_indices
    assert state[len(state) - len(g.recurrence.indices) :] == g.recurrence.indices
    assert set(state) <= set(g.signal.indices) | set(g.recurrence.indices)
    assert g.time not in state
    # Input weights and state-only weights are disjoint subsets of the weights.
    assert not set(g.input_weights) & set(g.state_only_weights)
    assert set(g.input_weights) | set(g.state_only_weights) <= set(g.weights)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), text=declarations())
def test_random_declarations_canonical_invariance(data, text):
    g = parse(text)
    index_map, name_map = data.draw(renamings(g))
    h = rename(g, index_map, name_map)
    h = with_factors(h, data.draw(st.permutations(h.factors)))
    if h.skip is not None:
        weights = data.draw(st.permutations(h.skip.weights))
        h = with_skip_order(h, weights, data.draw(st.integers(0, len(weights))))
    assert parse(h.to_text()) == h
    assert h.canonical().key == g.canonical().key
    assert h.state_indices == tuple(index_map[i] for i in g.state_indices)


@settings(max_examples=60, deadline=None)
@given(text=declarations(), spaces=st.sampled_from(["", " ", "  ", "\t", "\n "]))
def test_random_declarations_whitespace(text, spaces):
    respaced = re.sub(r"\s*([\[\],;=*+()])\s*", spaces + r"\1" + spaces, text)
    assert parse(respaced) == parse(text)


# -- errors -----------------------------------------------------------------------------------

S = "* ssm A[n;l] * signal x[b,l]"  # a valid tail for short cases

ERROR_CASES = [
    # (id, declaration, substrings the message must contain)
    ("empty", "", ["empty declaration"]),
    ("whitespace", "  \n\t ", ["empty declaration"]),
    ("operand 2x", "y[b,l] = ssm A[n;l] * signal 2x[b,l]", ["'2x'", "operand name", "column"]),
    ("operand a-b", "y[b,l] = W[n] * ssm A[n;l] * signal a-b[b,l]", ["'a-b'", "operand name"]),
    ("index 2x", "y[b,l] = W[2x] " + S, ["'2x'", "'W'", "column"]),
    ("index a-b", "y[b,l] = ssm A[a-b;l] * signal x[b,l]", ["'a-b'", "'A'"]),
    ("output index a-b", "y[a-b,l] " + "= ssm A[n;l] * signal x[b,l]", ["'a-b'", "'y'"]),
    ("output name", "2y[b,l] = ssm A[n;l] * signal x[b,l]", ["'2y'", "output name"]),
    ("keyword name", "y[b,l] = class[n] " + S, ["'class'", "not an identifier"]),
    ("keyword index", "y[b,l] = W[for] " + S, ["'for'", "'W'"]),
    ("duplicate operand", "y[b,l] = W[n] * W[b] " + S, ["'W'", "declared twice"]),
    ("duplicate signal name", "y[b,l] = x[n] " + S, ["'x'", "declared twice"]),
    ("operand named like output", "y[b,l] = y[n] " + S, ["'y'", "declared twice", "output"]),
    ("skip weight duplicates", "y[b,l] = W[n] " + S + " + W[b] * x[b,l]", ["'W'", "twice"]),
    ("uncarried output", "y[b,q,l] = ssm A[n;l] * signal x[b,l]", ["'q'", "carried by no"]),
    ("uncarried by skip", "y[b,n,l] " + "= ssm A[n;l] * signal x[b,l] + x[b,l]", ["'n'", "skip"]),
    ("no recurrence", "y[b,l] = W[n] * signal x[b,l]", ["exactly one recurrence", "found 0"]),
    (
        "two recurrences",
        "y[b,l] = ssm A[n;l] * ssm Q[m;l] * signal x[b,l]",
        ["exactly one recurrence", "found 2", "'A'", "'Q'"],
    ),
    ("no state indices", "y[b,l] = ssm A[;l] * signal x[b,l]", ["'A'", "no state indices"]),
    ("no time on ssm", "y[b,l] = ssm A[n] * signal x[b,l]", ["'A'", "no time index"]),
    ("time as state", "y[b,l] = ssm A[l;l] * signal x[b,l]", ["'A'", "'l'", "state index"]),
    ("time on weight", "y[b,l] = W[n,l] " + S, ["'W'", "'l'", "time-invariant"]),
    ("';' on weight", "y[b,l] = W[n;l] " + S, ["'W'", "';'"]),
    ("signal without time", "y[b,l] = ssm A[n;l] * signal x[b]", ["'x'", "'l'", "time index"]),
    ("missing signal", "y[b,l] = ssm A[n;l] * x[b,l]", ["exactly one signal", "found 0"]),
    (
        "two signals",
        "y[b,l] = ssm A[n;l] * signal x[b,l] * signal z[b,l]",
        ["exactly one signal", "found 2", "'x'", "'z'"],
    ),
    ("complex signal", "y[b,l] = ssm A[n;l] * signal complex x[b,l]", ["'x'", "real"]),
    ("real ssm", "y[b,l] = real ssm A[n;l] * signal x[b,l]", ["'A'", "complex"]),
    ("output without time", "y[b,n] = ssm A[n;l] * signal x[b,l]", ["'y'", "'l'", "time"]),
    ("output with ';'", "y[b;l] = ssm A[n;l] * signal x[b,l]", ["'y'", "';'"]),
    ("repeated weight index", "y[b,l] = W[n,n] " + S, ["'W'", "'n'", "repeats"]),
    ("repeated signal index", "y[b,l] = ssm A[n;l] * signal x[b,b,l]", ["'x'", "'b'", "repeats"]),
    ("repeated state index", "y[b,l] = ssm A[n,n;l] * signal x[b,l]", ["'A'", "'n'", "repeats"]),
    ("repeated output index", "y[b,b,l] = ssm A[n;l] * signal x[b,l]", ["'y'", "'b'", "repeats"]),
    (
        "complex skip weight",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + complex D[b] * x[b,l]",
        ["'D'", "real"],
    ),
    (
        "skip without signal",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + D[b,l]",
        ["'x'", "skip", "found it 0 times"],
    ),
    (
        "skip signal twice",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + x[b,l] * x[b,l]",
        ["'x'", "skip", "found it 2 times"],
    ),
    (
        "skip with ssm",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + ssm Q[n;l] * x[b,l]",
        ["'Q'", "skip"],
    ),
    (
        "skip weight with time",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + D[b,l] * x[b,l]",
        ["'D'", "'l'", "time-invariant"],
    ),
    (
        "skip signal with ';'",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + x[b,l;q]",
        ["'x'", "skip", "';'"],
    ),
    (
        "skip signal time moved",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + x[l,b]",
        ["'x'", "'l'", "axis 1"],
    ),
    (
        "skip signal rank",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + x[b,c,l]",
        ["'x'", "skip", "3 axes", "[b,l]"],
    ),
    (
        "skip signal complex",
        "y[b,l] = ssm A[n;l] * signal x[b,l] + complex x[b,l]",
        ["'x'", "skip", "modifiers"],
    ),
    ("two skips", "y[b,l] = ssm A[n;l] * signal x[b,l] + x[b,l] + x[b,l]", ["'+'", "column"]),
    ("trailing garbage", "y[b,l] = ssm A[n;l] * signal x[b,l] garbage", ["'garbage'", "column"]),
    ("trailing bracket", "y[b,l] = ssm A[n;l] * signal x[b,l] ]", ["']'", "column 37"]),
    ("trailing star", "y[b,l] = ssm A[n;l] * signal x[b,l] *", ["ends early"]),
    ("missing '='", "y[b,l] ssm A[n;l] * signal x[b,l]", ["'='", "'y'", "'ssm'"]),
    ("missing ']'", "y[b,l = ssm A[n;l] * signal x[b,l]", ["']'", "'y'", "'='"]),
    ("missing '[' ", "y[b,l] = ssm A * signal x[b,l]", ["'['", "'A'"]),
    ("repeated modifier", "y[b,l] = ssm A[n;l] * signal signal x[b,l]", ["'signal'", "repeated"]),
    ("conflicting modifiers", "y[b,l] = ssm signal A[n;l] * x[b,l]", ["'A'", "conflicting"]),
    ("complex and real", "y[b,l] = complex real W[n] " + S, ["'W'", "conflicting"]),
    ("bad generator", "y[b,l] = ssm(2) A[n;l] * signal x[b,l]", ["'2'", "generator"]),
    ("unclosed generator", "y[b,l] = ssm(s4 A[n;l] * signal x[b,l]", ["')'", "'A'"]),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_declaration(text, expected):
    with pytest.raises(SpecError, match=re.escape(expected[0])) as info:
        parse(text)
    message = str(info.value)
    missing = [s for s in expected if s not in message]
    assert not missing, f"message {message!r} lacks {missing}"
    # get_graph gives the same error for a declaration.
    if "=" in text:
        with pytest.raises(SpecError):
            get_graph(text)


def test_spec_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse("")
    assert issubclass(SpecError, ContractSSMError)


@pytest.mark.parametrize("value", [None, 3, b"y[b,l] = ssm A[n;l] * signal x[b,l]", ["y"]])
def test_parse_rejects_non_strings(value):
    with pytest.raises(SpecError, match=type(value).__name__):
        parse(value)


def test_ir_validation_without_parser():
    sig = Operand("x", ("b", "l"), Role.SIGNAL)
    rec = Operand("A", ("n",), Role.RECURRENCE, True)
    w = Operand("W", ("n",))
    cases = [
        (Graph, ("y", ("b", "l"), "l", (sig, w)), ["found 0", "recurrence"]),
        (Graph, ("y", ("b", "l"), "l", (rec, w)), ["found 0", "signal"]),
        (Graph, ("y", ("b", "l"), "l", (sig, rec, rec)), ["found 2", "'A'"]),
        (Graph, ("y", ("b", "l"), "l", (replace(sig, is_complex=True), rec)), ["'x'", "real"]),
        (Graph, ("2y", ("b", "l"), "l", (sig, rec)), ["'2y'", "output name"]),
        (Graph, ("y", ("b", "l"), "l", (sig, rec, replace(w, name="a b"))), ["'a b'"]),
        (Graph, ("y", ("b", "l"), "1l", (sig, rec)), ["'1l'", "time index"]),
        (Graph, ("y", ("b", "l"), "l", (sig, replace(rec, indices=()))), ["'A'", "no state"]),
        (
            Graph,
            ("y", ("b", "l"), "l", (sig, rec), Skip((replace(w, is_complex=True),), ("b", "l"))),
            ["'W'", "real"],
        ),
        (
            Graph,
            ("y", ("b", "l"), "l", (sig, rec), Skip((), ("b", "b"))),
            ["'x'", "'l'", "axis 1"],
        ),
    ]
    for cls, args, expected in cases:
        with pytest.raises(SpecError) as info:
            cls(*args)
        message = str(info.value)
        assert all(s in message for s in expected), (args, message)


# -- sizes ------------------------------------------------------------------------------------


def test_infer_sizes_reads_shapes():
    g = get_graph("s5")
    sizes = g.infer_sizes({"B": (4, 3), "x": (2, 3, 10), "C": (5, 4), "A": (4,)})
    assert sizes == {"s": 4, "c": 3, "b": 2, "l": 10, "d": 5}
    assert g.check_sizes(sizes) == {i: sizes[i] for i in g.indices}
    assert list(g.check_sizes(sizes)) == list(g.indices)


def test_infer_sizes_conflict_names_both_operands():
    g = get_graph("s5")
    with pytest.raises(SpecError, match="'c'") as info:
        g.infer_sizes({"B": (4, 64), "x": (2, 48, 10)})
    message = str(info.value)
    for part in ("'B'", "'x'", "'c'", "64", "48"):
        assert part in message, message


def test_infer_sizes_wrong_rank_and_unknown_operand():
    g = get_graph("s5")
    with pytest.raises(SpecError, match="'B'") as info:
        g.infer_sizes({"B": (4,)})
    assert "[s,c]" in str(info.value) and "1 axes" in str(info.value)
    with pytest.raises(SpecError, match="'Q'") as info:
        g.infer_sizes({"Q": (4,)})
    assert "x, A, C, B" in str(info.value)


def test_check_sizes_missing_index_names_its_users():
    g = get_graph("s5")
    with pytest.raises(SpecError, match="'c'") as info:
        g.check_sizes({"b": 2, "d": 3, "l": 4, "s": 5})
    assert "x, B" in str(info.value)
    with pytest.raises(SpecError, match="'l'") as info:
        g.check_sizes({"b": 2, "d": 3, "c": 4, "s": 5})
    assert "x" in str(info.value)


def test_check_sizes_unknown_index():
    g = get_graph("s5")
    sizes = {"b": 2, "d": 3, "l": 4, "s": 5, "c": 2, "zz": 1}
    with pytest.raises(SpecError, match="'zz'") as info:
        g.check_sizes(sizes)
    assert "b, d, l, c, s" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, -64, 2.0, 2.5, "4", None, True, False])
def test_check_sizes_rejects_non_positive_or_non_int(bad):
    g = get_graph("s5")
    sizes = {"b": 2, "d": 3, "l": 4, "s": 5, "c": bad}
    with pytest.raises(SpecError, match="'c'") as info:
        g.check_sizes(sizes)
    assert repr(bad) in str(info.value)


# -- modes registry ---------------------------------------------------------------------------


@pytest.fixture
def clean_user_modes():
    saved = dict(modes_module._USER_MODES)
    yield
    modes_module._USER_MODES.clear()
    modes_module._USER_MODES.update(saved)


def test_get_graph_unknown_mode_names_it():
    with pytest.raises(SpecError, match="'nosuch'") as info:
        get_graph("nosuch")
    assert "dws" in str(info.value)
    with pytest.raises(SpecError, match="int"):
        get_graph(3)


@pytest.mark.parametrize("name", ALL_MODE_NAMES)
def test_register_mode_rejects_builtin_names(name, clean_user_modes):
    with pytest.raises(SpecError, match=repr(name)):
        register_mode(name, BUILTIN_MODES["dws"])
    with pytest.raises(SpecError, match=repr(name)):
        register_mode(name, BUILTIN_MODES["dws"], overwrite=True)
    assert get_graph(name) == parse(declaration_of(name))


def test_register_and_resolve_user_mode(clean_user_modes):
    name = "test_spec_grouped_mode"
    decl = "y[b,g,d,l] = C[g,d,s] * ssm A[g,s;l] * B[g,s,c] * signal x[b,g,c,l]"
    graph = register_mode(name, decl)
    assert graph == parse(decl)
    assert get_graph(name) == graph
    assert declaration_of(name) == decl
    assert name in modes_module.mode_names()
    assert graph.state_indices == ("b", "g", "s")
    with pytest.raises(SpecError, match="already registered"):
        register_mode(name, BUILTIN_MODES["dws"])
    register_mode(name, BUILTIN_MODES["dws"], overwrite=True)
    assert get_graph(name) == get_graph("dws")


def test_register_mode_rejects_bad_input(clean_user_modes):
    with pytest.raises(SpecError, match="'not a name'"):
        register_mode("not a name", BUILTIN_MODES["dws"])
    with pytest.raises(SpecError, match="'x'"):
        register_mode("test_spec_bad_mode", "y[b,l] = ssm A[n;l] * signal x[b]")
    assert "test_spec_bad_mode" not in modes_module.mode_names()
    with pytest.raises(SpecError, match="test_spec_bad_mode"):
        get_graph("test_spec_bad_mode")


def test_user_modes_are_cleaned_up(clean_user_modes):
    assert not [m for m in modes_module.mode_names() if m.startswith("test_spec_")]


# -- fuzzing ----------------------------------------------------------------------------------


def _parse_or_spec_error(text):
    try:
        g = parse(text)
    except SpecError as err:
        assert str(err), "empty message"
        return None
    assert isinstance(g, Graph)
    assert parse(g.to_text()) == g
    return g


@settings(max_examples=400, deadline=None)
@given(text=st.text())
def test_fuzz_text(text):
    _parse_or_spec_error(text)


TOKENS = [
    "y", "x", "A", "W", "D", "b", "c", "n", "l", "2x", "class", "\u03b1",
    "[", "]", ",", ";", "=", "*", "+", "(", ")",
    "ssm", "signal", "complex", "real", "ssm(", "s4", " ", "\t",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=40))
def test_fuzz_tokens(tokens):
    _parse_or_spec_error("".join(tokens))


@st.composite
def near_declarations(draw):
    """Valid declarations with a few tokens deleted, duplicated, swapped or replaced."""
    text = draw(declarations())
    tokens = re.findall(r"[\[\],;=*+()]|[^\s\[\],;=*+()]+", text)
    for _ in range(draw(st.integers(1, 3))):
        if not tokens:
            break
        k = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "replace", "swap"]))
        if op == "delete":
            del tokens[k]
        elif op == "duplicate":
            tokens.insert(k, tokens[k])
        elif op == "replace":
            tokens[k] = draw(st.sampled_from(TOKENS))
        else:
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[k], tokens[j] = tokens[j], tokens[k]
    return " ".join(tokens)


@settings(max_examples=400, deadline=None)
@given(text=near_declarations())
def test_fuzz_near_declarations(text):
    _parse_or_spec_error(text)
