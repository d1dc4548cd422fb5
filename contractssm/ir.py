"""The intermediate representation: an SSM connectivity mode as an einsum graph.

A :class:`Graph` is the product of one real input signal ``x``, exactly one diagonal recurrence
``V[S, tau] = exp(A[S] * tau)`` over state indices ``S``, and any number of time-invariant
weights, contracted to a real output (the real part of the product), plus an optional skip term
(real weights times the signal, re-indexed). SPEC.md section 2 defines the meaning; this module
only holds structure. Sizes are kept apart from structure: a graph is bound to sizes with
:meth:`Graph.check_sizes` or :meth:`Graph.infer_sizes`.

Every value here is a frozen, hashable dataclass. :meth:`Graph.canonical` relabels operands and
indices so that declarations differing only in names share one key.

Example:
    >>> from contractssm.spec import parse
    >>> g = parse("y[b,c,l] = E[c,n] * ssm A[c,n;l] * signal x[b,c,l]")
    >>> g.state_indices
    ('b', 'c', 'n')
    >>> g.canonical().key
    'y[a,b,c] = W0[b,d] * ssm A[b,d;c] * signal x[a,b,c]'
"""

from __future__ import annotations

import enum
import functools
import itertools
import keyword
from collections.abc import Mapping
from dataclasses import dataclass, field

from contractssm.errors import SpecError

#: Kernel generators a recurrence may name. ``diag`` is the Vandermonde ``exp(A * tau)`` of a
#: diagonal rate tensor; others (S4's DPLR) are registered by the layers that provide them.
DIAGONAL = "diag"

#: Above this many weights, canonical ordering of weights is greedy instead of exhaustive.
_EXHAUSTIVE_CANONICAL_WEIGHTS = 6


class Role(str, enum.Enum):
    """What an operand is in the graph."""

    SIGNAL = "signal"
    RECURRENCE = "ssm"
    WEIGHT = "weight"


def check_identifier(name: str, what: str) -> str:
    """Return ``name`` if it is a plain identifier, else raise :class:`SpecError` naming it."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise SpecError(f"{what} {name!r} is not an identifier (letters, digits, '_')")
    return name


@dataclass(frozen=True)
class Operand:
    """One tensor of the graph.

    Attributes:
        name: the operand's name in the declaration (a Python identifier).
        indices: index names in the tensor's axis order. For the recurrence these are the state
            indices only (its tensor is the rate ``A[S]``; the time axis is generated).
        role: signal, recurrence or weight.
        is_complex: whether the tensor is complex (the recurrence always is; the signal never).
        generator: for the recurrence, the kernel generator's name (``"diag"`` by default).
    """

    name: str
    indices: tuple[str, ...]
    role: Role = Role.WEIGHT
    is_complex: bool = False
    generator: str = DIAGONAL

    def to_text(self, time: str | None = None) -> str:
        """The operand as declaration text, e.g. ``ssm A[c,n;l]`` or ``complex B[n,c]``."""
        if self.role is Role.RECURRENCE:
            kind = "ssm " if self.generator == DIAGONAL else f"ssm({self.generator}) "
            return f"{kind}{self.name}[{','.join(self.indices)};{time}]"
        kind = {Role.SIGNAL: "signal ", Role.WEIGHT: "complex " if self.is_complex else ""}
        return f"{kind[self.role]}{self.name}[{','.join(self.indices)}]"


@dataclass(frozen=True)
class Skip:
    """The skip term: real weights times the signal re-indexed by ``signal_indices``.

    Attributes:
        weights: the real weights of the term (possibly none: an identity skip).
        signal_indices: how the signal is indexed in this term (same rank as the signal, the
            time index at the same axis), e.g. ``('b', 'h', 'l')`` for ``D[h] * x[b,h,l]``.
        signal_position: where the signal stands among the term's factors (for display only).
    """

    weights: tuple[Operand, ...]
    signal_indices: tuple[str, ...]
    signal_position: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Graph:
    """A validated SSM einsum graph. Construct with :func:`contractssm.spec.parse` or directly.

    Attributes:
        output_name: name of the (real) output.
        output_indices: the output's axes, including the time index.
        time: the time index (written after ``;`` in the recurrence).
        factors: the operands of the main product in written order: exactly one signal, one
            recurrence, and any weights.
        skip: the optional skip term.
    """

    output_name: str
    output_indices: tuple[str, ...]
    time: str
    factors: tuple[Operand, ...]
    skip: Skip | None = None

    def __post_init__(self) -> None:
        _validate(self)

    # -- structure -------------------------------------------------------------------------

    @functools.cached_property
    def signal(self) -> Operand:
        """The input signal."""
        return next(f for f in self.factors if f.role is Role.SIGNAL)

    @functools.cached_property
    def recurrence(self) -> Operand:
        """The diagonal recurrence (its indices are the state indices S)."""
        return next(f for f in self.factors if f.role is Role.RECURRENCE)

    @functools.cached_property
    def weights(self) -> tuple[Operand, ...]:
        """The time-invariant weights of the main product, in written order."""
        return tuple(f for f in self.factors if f.role is Role.WEIGHT)

    @functools.cached_property
    def operands(self) -> tuple[Operand, ...]:
        """Every tensor a caller supplies: signal, recurrence, weights, then skip weights."""
        skip_weights = self.skip.weights if self.skip else ()
        return (self.signal, self.recurrence, *self.weights, *skip_weights)

    @functools.cached_property
    def indices(self) -> tuple[str, ...]:
        """Every index name, in order of first appearance (output first)."""
        seen = dict.fromkeys(self.output_indices)
        for op in self.operands:
            seen.update(dict.fromkeys(op.indices))
        if self.skip:
            seen.update(dict.fromkeys(self.skip.signal_indices))
        return tuple(seen)

    @functools.cached_property
    def state_indices(self) -> tuple[str, ...]:
        """Axes of the recurrent state h (batch-like signal axes first, then S).

        A signal axis stays in the state when it is a state index, reaches the output, or is
        touched by a weight that also carries an index foreign to the signal and the state; any
        other signal axis is contracted into the state by the weights before the recurrence.
        """
        states = self.recurrence.indices
        signal_axes = tuple(i for i in self.signal.indices if i != self.time)
        near = set(signal_axes) | set(states)
        kept = []
        for i in signal_axes:
            if i in states:
                continue
            foreign = any(i in w.indices and not set(w.indices) <= near for w in self.weights)
            if i in self.output_indices or foreign:
                kept.append(i)
        return (*kept, *states)

    @functools.cached_property
    def input_weights(self) -> tuple[Operand, ...]:
        """Weights that must act on the signal before the recurrence.

        They contract signal axes that do not survive into the state.
        """
        state = set(self.state_indices)
        dropped = {i for i in self.signal.indices if i != self.time and i not in state}
        return tuple(w for w in self.weights if dropped & set(w.indices))

    @functools.cached_property
    def state_only_weights(self) -> tuple[Operand, ...]:
        """Weights indexed by state indices only.

        They commute with the recurrence, so step mode may apply them on either side of the
        state (SPEC.md section 2).
        """
        states = set(self.recurrence.indices)
        return tuple(
            w for w in self.weights if set(w.indices) <= states and w not in self.input_weights
        )

    # -- sizes -----------------------------------------------------------------------------

    def check_sizes(self, sizes: Mapping[str, int]) -> dict[str, int]:
        """Validate a size for every index; return them in :attr:`indices` order.

        Raises:
            SpecError: an index has no size, an unknown index is given, or a size is not a
                positive integer.
        """
        unknown = sorted(set(sizes) - set(self.indices))
        if unknown:
            raise SpecError(
                f"sizes name index {unknown[0]!r}, which the declaration does not use "
                f"(indices: {', '.join(self.indices)})"
            )
        out = {}
        for i in self.indices:
            if i not in sizes:
                users = [op.name for op in self.operands if i in op.indices]
                where = f" (used by {', '.join(users)})" if users else ""
                raise SpecError(f"index {i!r}{where} has no size; pass it in sizes")
            size = sizes[i]
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise SpecError(f"index {i!r} has size {size!r}; sizes must be integers >= 1")
            out[i] = int(size)
        return out

    def infer_sizes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Read index sizes off operand shapes, checking that they agree.

        ``shapes`` maps operand names to tensor shapes (the recurrence's shape is that of its
        rate tensor ``A[S]``). Operands may be omitted; the result holds the indices seen.

        Raises:
            SpecError: a shape has the wrong rank, or two operands disagree on an index size;
                the message names both operands, the index and both sizes.
        """
        by_name = {op.name: op for op in self.operands}
        by_name.setdefault(self.signal.name, self.signal)
        sizes: dict[str, int] = {}
        source: dict[str, str] = {}
        for name, shape in shapes.items():
            if name not in by_name:
                raise SpecError(f"no operand named {name!r} (operands: {', '.join(by_name)})")
            op = by_name[name]
            shape = tuple(shape)
            if len(shape) != len(op.indices):
                raise SpecError(
                    f"operand {name!r} has {len(shape)} axes {shape} but is declared with "
                    f"{len(op.indices)} [{','.join(op.indices)}]"
                )
            for i, n in zip(op.indices, shape, strict=False):
                if i in sizes and sizes[i] != n:
                    raise SpecError(
                        f"operand {name!r} gives index {i!r} size {n} but operand "
                        f"{source[i]!r} gives it {sizes[i]}"
                    )
                sizes[i], source[i] = int(n), name
        return sizes

    # -- text and serialisation ------------------------------------------------------------

    def to_text(self) -> str:
        """The declaration as normalised text; ``parse(g.to_text()) == g``."""
        main = " * ".join(f.to_text(self.time) for f in self.factors)
        text = f"{self.output_name}[{','.join(self.output_indices)}] = {main}"
        if self.skip is not None:
            parts = [w.to_text() for w in self.skip.weights]
            ref = f"{self.signal.name}[{','.join(self.skip.signal_indices)}]"
            pos = self.skip.signal_position
            parts.insert(len(parts) if pos < 0 else pos, ref)
            text += " + " + " * ".join(parts)
        return text

    def __str__(self) -> str:
        return self.to_text()

    def to_dict(self) -> dict:
        """A JSON-ready description of the graph (inverse: :meth:`from_dict`)."""
        return {
            "declaration": self.to_text(),
            "output": {"name": self.output_name, "indices": list(self.output_indices)},
            "time": self.time,
            "signal": _operand_dict(self.signal),
            "recurrence": _operand_dict(self.recurrence),
            "weights": [_operand_dict(w) for w in self.weights],
            "skip": None
            if self.skip is None
            else {
                "weights": [_operand_dict(w) for w in self.skip.weights],
                "signal_indices": list(self.skip.signal_indices),
            },
            "state_indices": list(self.state_indices),
            "canonical_key": self.canonical().key,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Graph:
        """Rebuild a graph from :meth:`to_dict` output (through its declaration text)."""
        from contractssm.spec import parse

        try:
            return parse(data["declaration"])
        except (KeyError, TypeError):
            raise SpecError("graph description has no 'declaration' text") from None

    # -- canonical form --------------------------------------------------------------------

    def canonical(self) -> Canonical:
        """The name-independent form of this graph (cached per graph)."""
        return _canonical(self)


@dataclass(frozen=True)
class Canonical:
    """A graph with canonical names, and how the original names map onto them.

    Attributes:
        key: the canonical declaration text; equal for graphs that differ only in names or in
            the written order of the main product's factors.
        graph: the canonical graph (operands ``x``, ``A``, ``W0..``, ``D0..``, output ``y``,
            indices ``a, b, c, ...`` in order of first appearance).
        operand_names: pairs (original name, canonical name).
        index_names: pairs (original index, canonical index).
    """

    key: str
    graph: Graph
    operand_names: tuple[tuple[str, str], ...]
    index_names: tuple[tuple[str, str], ...]

    def rename_sizes(self, sizes: Mapping[str, int]) -> dict[str, int]:
        """Map sizes keyed by original index names to canonical index names."""
        return {new: sizes[old] for old, new in self.index_names if old in sizes}


# -- helpers ----------------------------------------------------------------------------------


def _operand_dict(op: Operand) -> dict:
    out = {"name": op.name, "indices": list(op.indices), "complex": op.is_complex}
    if op.role is Role.RECURRENCE:
        out["generator"] = op.generator
    return out


def _validate(g: Graph) -> None:
    """Raise :class:`SpecError` for every structural mistake, naming the culprit."""
    check_identifier(g.output_name, "output name")
    signals = [f for f in g.factors if f.role is Role.SIGNAL]
    recurrences = [f for f in g.factors if f.role is Role.RECURRENCE]
    if len(recurrences) != 1:
        names = ", ".join(repr(r.name) for r in recurrences) or "none"
        raise SpecError(
            f"a declaration needs exactly one recurrence (marked 'ssm'), found {len(recurrences)}"
            f" ({names})"
        )
    if len(signals) != 1:
        names = ", ".join(repr(s.name) for s in signals) or "none"
        raise SpecError(
            f"a declaration needs exactly one signal (marked 'signal'), found {len(signals)}"
            f" ({names})"
        )
    rec, sig, time = recurrences[0], signals[0], g.time
    check_identifier(time, "time index")
    seen_names = {g.output_name: "the output"}
    all_ops = list(g.factors) + (list(g.skip.weights) if g.skip else [])
    for op in all_ops:
        check_identifier(op.name, "operand name")
        if op.name in seen_names:
            raise SpecError(f"operand {op.name!r} is declared twice (also {seen_names[op.name]})")
        seen_names[op.name] = "an operand"
        for i in op.indices:
            check_identifier(i, f"index of operand {op.name!r}:")
        dup = [i for i in op.indices if op.indices.count(i) > 1]
        if dup:
            raise SpecError(f"operand {op.name!r} repeats index {dup[0]!r} (diagonals unsupported)")
    for i in g.output_indices:
        check_identifier(i, "output index")
    dup = [i for i in g.output_indices if g.output_indices.count(i) > 1]
    if dup:
        raise SpecError(f"output {g.output_name!r} repeats index {dup[0]!r}")
    if not rec.indices:
        raise SpecError(
            f"recurrence {rec.name!r} has no state indices (write e.g. {rec.name}[n;l])"
        )
    if time in rec.indices:
        raise SpecError(f"recurrence {rec.name!r} uses the time index {time!r} as a state index")
    if time not in sig.indices:
        raise SpecError(
            f"signal {sig.name!r} [{','.join(sig.indices)}] does not carry the time index {time!r}"
        )
    if sig.is_complex:
        raise SpecError(f"signal {sig.name!r} must be real")
    for w in g.weights:
        if time in w.indices:
            raise SpecError(
                f"weight {w.name!r} carries the time index {time!r}; weights are time-invariant"
            )
    if time not in g.output_indices:
        raise SpecError(f"output {g.output_name!r} does not carry the time index {time!r}")
    carried = set(sig.indices) | set(rec.indices)
    for w in g.weights:
        carried |= set(w.indices)
    for i in g.output_indices:
        if i not in carried:
            raise SpecError(f"output index {i!r} is carried by no operand of the main term")
    if g.skip is not None:
        _validate_skip(g, sig, time)


def _validate_skip(g: Graph, sig: Operand, time: str) -> None:
    skip = g.skip
    assert skip is not None
    if len(skip.signal_indices) != len(sig.indices):
        raise SpecError(
            f"skip term indexes signal {sig.name!r} with {len(skip.signal_indices)} axes "
            f"[{','.join(skip.signal_indices)}] but it has {len(sig.indices)} "
            f"[{','.join(sig.indices)}]"
        )
    axis = sig.indices.index(time)
    if skip.signal_indices[axis] != time:
        raise SpecError(
            f"skip term must index signal {sig.name!r} with the time index {time!r} at axis "
            f"{axis}, got {skip.signal_indices[axis]!r}"
        )
    dup = [i for i in skip.signal_indices if skip.signal_indices.count(i) > 1]
    if dup:
        raise SpecError(f"skip term repeats index {dup[0]!r} on signal {sig.name!r}")
    carried = set(skip.signal_indices)
    for w in skip.weights:
        if w.is_complex:
            raise SpecError(f"skip weight {w.name!r} must be real")
        if time in w.indices:
            raise SpecError(
                f"skip weight {w.name!r} carries the time index {time!r}; weights are "
                "time-invariant"
            )
        carried |= set(w.indices)
    for i in g.output_indices:
        if i not in carried:
            raise SpecError(f"output index {i!r} is carried by no factor of the skip term")


def _canonical(g: Graph) -> Canonical:
    cached = g.__dict__.get("_canonical_form")
    if cached is not None:
        return cached
    best = None
    for main_order in _weight_orders(g.weights):
        for skip_order in _weight_orders(g.skip.weights if g.skip else ()):
            cand = _relabel(g, main_order, skip_order)
            if best is None or cand.key < best.key:
                best = cand
    assert best is not None
    g.__dict__["_canonical_form"] = best  # frozen dataclass: cache beside the fields
    return best


def _weight_orders(weights: tuple[Operand, ...]):
    if len(weights) <= _EXHAUSTIVE_CANONICAL_WEIGHTS:
        return itertools.permutations(weights)
    # Greedy: a deterministic order by shape class; exhaustive search would be k! relabellings.
    return [tuple(sorted(weights, key=lambda w: (w.is_complex, len(w.indices))))]


def _relabel(g: Graph, main: tuple[Operand, ...], skip: tuple[Operand, ...]) -> Canonical:
    labels: dict[str, str] = {}

    def lab(i: str) -> str:
        if i not in labels:
            n = len(labels)
            labels[i] = chr(ord("a") + n) if n < 26 else f"i{n}"
        return labels[i]

    out_idx = tuple(lab(i) for i in g.output_indices)
    sig = Operand("x", tuple(lab(i) for i in g.signal.indices), Role.SIGNAL)
    rec = Operand(
        "A",
        tuple(lab(i) for i in g.recurrence.indices),
        Role.RECURRENCE,
        True,
        g.recurrence.generator,
    )
    names = [(g.output_name, "y"), (g.signal.name, "x"), (g.recurrence.name, "A")]
    ws = []
    for k, w in enumerate(main):
        ws.append(Operand(f"W{k}", tuple(lab(i) for i in w.indices), Role.WEIGHT, w.is_complex))
        names.append((w.name, f"W{k}"))
    new_skip = None
    if g.skip is not None:
        sk_sig = tuple(lab(i) for i in g.skip.signal_indices)
        sws = []
        for k, w in enumerate(skip):
            sws.append(Operand(f"D{k}", tuple(lab(i) for i in w.indices)))
            names.append((w.name, f"D{k}"))
        new_skip = Skip(tuple(sws), sk_sig)
    graph = Graph("y", out_idx, lab(g.time), (*ws, rec, sig), new_skip)
    return Canonical(graph.to_text(), graph, tuple(names), tuple(labels.items()))
