"""The float64 reference: SPEC.md section 2 evaluated literally, the oracle of every test.

Two independent evaluations of a graph, sharing nothing but the IR:

* :func:`reference` runs the explicit recurrence over time, ``h_t = a * h_{t-1} + u_t``, on the
  graph's state (``Graph.state_indices``), from an optional initial state, and returns the
  output and the final state;
* :func:`reference_direct` builds ``V[S, tau] = exp(A[S] * tau)`` and evaluates the causal sum
  ``sum_{j <= t} V[S, t - j] x[..., j]`` and the whole product in one einsum.

Both work in float64/complex128 whatever the inputs' dtype, and are deliberately slow and plain.
This module imports only the IR (and torch).

A recurrence whose generator is not ``diag`` is given as a mapping ``{"transition": M,
"input": v}``: ``M[..., n, n']`` is a dense transition acting on the last state index and
``v[S]`` the input vector, so ``V[S, tau] = (M^tau v)[S]`` (S4's bilinear DPLR system is one).
"""

from __future__ import annotations

import string
from collections.abc import Mapping

import torch

from contractssm.errors import ShapeError, SpecError
from contractssm.ir import DIAGONAL, Graph

Tensor = torch.Tensor


def reference(
    graph: Graph, operands: Mapping[str, object], h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Evaluate ``graph`` by the explicit recurrence over time.

    Args:
        graph: the declaration.
        operands: tensors by operand name: the real signal, the recurrence's complex rate
            ``A[S]`` (``V = exp(A * tau)``; see the module doc for other generators), weights.
        h0: optional complex initial state laid out as ``graph.state_indices``.

    Returns:
        ``(y, h)``: the real float64 output laid out as ``graph.output_indices`` and the
        complex128 state after the last step.

    Example:
        >>> import torch
        >>> from contractssm.spec import parse
        >>> g = parse("y[b,n,l] = ssm A[n;l] * signal x[b,l]")
        >>> y, h = reference(g, {"x": torch.ones(1, 3), "A": torch.tensor([0j])})
        >>> y.tolist()
        [[[1.0, 2.0, 3.0]]]
    """
    ops = _as_float64(graph, operands)
    letters = _letters(graph)
    x = ops[graph.signal.name]
    sizes = _sizes(graph, ops)
    state = graph.state_indices
    state_shape = tuple(sizes[i] for i in state)
    time_axis = graph.signal.indices.index(graph.time)
    x_t_idx = [i for i in graph.signal.indices if i != graph.time]

    # u_t: the signal after the weights that must act before the recurrence, on state axes.
    pre = graph.input_weights
    u_idx = [i for i in state if i in x_t_idx or any(i in w.indices for w in pre)]
    pre_eq = _equation(letters, [x_t_idx, *[w.indices for w in pre]], u_idx)
    post = [w for w in graph.weights if w not in pre]
    out_t = [i for i in graph.output_indices if i != graph.time]
    post_eq = _equation(letters, [state, *[w.indices for w in post]], out_t)
    step, gain = _transition(graph, ops, state, sizes)

    h = torch.zeros(state_shape, dtype=torch.complex128)
    if h0 is not None:
        if tuple(h0.shape) != state_shape:
            raise ShapeError(
                f"initial state has shape {tuple(h0.shape)}, expected {state_shape} "
                f"({','.join(state)})"
            )
        h = h0.to(torch.complex128).clone()
    u_view = [sizes[i] if i in u_idx else 1 for i in state]
    ys = []
    for t in range(x.shape[time_axis]):
        x_t = x.select(time_axis, t).to(torch.complex128)
        u = torch.einsum(pre_eq, x_t, *[_c(ops[w.name]) for w in pre])
        h = step(h) + gain * u.reshape(u_view)
        ys.append(torch.einsum(post_eq, h, *[_c(ops[w.name]) for w in post]).real)
    y = torch.stack(ys, dim=graph.output_indices.index(graph.time))
    return y + _skip(graph, ops, letters), h


def reference_direct(graph: Graph, operands: Mapping[str, object]) -> Tensor:
    """Evaluate ``graph`` from a zero state as one einsum with an explicit causal kernel.

    ``V[S, t, j] = exp(A[S] * (t - j))`` for ``j <= t`` and 0 otherwise; then
    ``y = Re einsum(weights, V, x) + skip``. Quadratic in L: for small tests only.
    """
    ops = _as_float64(graph, operands)
    letters = _letters(graph)
    x = ops[graph.signal.name]
    L = _sizes(graph, ops)[graph.time]
    kernel = _kernel(graph, ops, L)  # (S..., tau)
    lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]  # (t, j)
    causal = kernel[..., lag.clamp(min=0)] * (lag >= 0)  # (S..., t, j)
    j = _fresh_letter(letters)
    t = letters[graph.time]
    rec = "".join(letters[i] for i in graph.recurrence.indices) + t + j
    sig = "".join(j if i == graph.time else letters[i] for i in graph.signal.indices)
    ws = ["".join(letters[i] for i in w.indices) for w in graph.weights]
    out = "".join(letters[i] for i in graph.output_indices)
    eq = ",".join([rec, sig, *ws]) + "->" + out
    weights = [ops[w.name].to(torch.complex128) for w in graph.weights]
    y = torch.einsum(eq, causal, x.to(torch.complex128), *weights).real
    return y + _skip(graph, ops, letters)


# -- pieces ----------------------------------------------------------------------------------


def _as_float64(graph: Graph, operands: Mapping[str, object]) -> dict[str, object]:
    missing = [op.name for op in graph.operands if op.name not in operands]
    if missing:
        raise SpecError(f"no tensor given for operand {missing[0]!r}")
    out: dict[str, object] = {}
    for op in graph.operands:
        value = operands[op.name]
        if op is graph.recurrence and graph.recurrence.generator != DIAGONAL:
            if not isinstance(value, Mapping) or {"transition", "input"} - set(value):
                raise SpecError(
                    f"recurrence {op.name!r} uses generator {op.generator!r}: pass "
                    "{'transition': M, 'input': v}"
                )
            out[op.name] = {k: torch.as_tensor(v).to(torch.complex128) for k, v in value.items()}
            continue
        t = torch.as_tensor(value)
        want = torch.complex128 if (op.is_complex or t.is_complex()) else torch.float64
        if t.dim() != len(op.indices):
            raise ShapeError(
                f"operand {op.name!r} has {t.dim()} axes {tuple(t.shape)}, declared "
                f"[{','.join(op.indices)}]"
            )
        out[op.name] = t.to(want)
    return out


def _sizes(graph: Graph, ops: Mapping[str, object]) -> dict[str, int]:
    shapes = {}
    for op in graph.operands:
        value = ops[op.name]
        if isinstance(value, Mapping):
            shapes[op.name] = tuple(value["input"].shape)
        else:
            shapes[op.name] = tuple(value.shape)
    sizes = graph.infer_sizes(shapes)
    if sizes[graph.time] < 1:
        raise ShapeError(
            f"signal {graph.signal.name!r} has {sizes[graph.time]} time steps (index "
            f"{graph.time!r}); the reference needs at least one"
        )
    if graph.skip is not None:
        x_shape = shapes[graph.signal.name]
        for i, n in zip(graph.skip.signal_indices, x_shape, strict=False):
            if sizes.setdefault(i, n) != n:
                raise SpecError(
                    f"skip term indexes signal {graph.signal.name!r} with {i!r} of size {n} "
                    f"but index {i!r} has size {sizes[i]} elsewhere"
                )
    return sizes


def _transition(graph: Graph, ops: Mapping[str, object], state, sizes):
    """The map h_{t-1} -> a * h_{t-1} on the state layout, and the gain applied to u_t."""
    rec = graph.recurrence
    value = ops[rec.name]
    view = [sizes[i] if i in rec.indices else 1 for i in state]
    if rec.generator == DIAGONAL:
        a = torch.exp(value).reshape(view)
        return (lambda h: a * h), 1.0
    # Dense transition over the last state index: h[..., n] <- sum_n' M[..., n, n'] h[..., n'].
    m = value["transition"]
    return (lambda h: torch.einsum("...ij,...j->...i", m, h)), value["input"].reshape(view)


def _kernel(graph: Graph, ops: Mapping[str, object], L: int) -> Tensor:
    """V[S, tau] for tau < L."""
    rec = graph.recurrence
    value = ops[rec.name]
    if rec.generator == DIAGONAL:
        tau = torch.arange(L, dtype=torch.float64)
        return torch.exp(value[..., None] * tau)
    m, v = value["transition"], value["input"]
    powers = [v]
    for _ in range(L - 1):
        powers.append(torch.einsum("...ij,...j->...i", m, powers[-1]))
    return torch.stack(powers, dim=-1)


def _skip(graph: Graph, ops: Mapping[str, object], letters: dict[str, str]) -> Tensor | float:
    if graph.skip is None:
        return 0.0
    x = ops[graph.signal.name]
    terms = [graph.skip.signal_indices, *[w.indices for w in graph.skip.weights]]
    eq = _equation(letters, terms, graph.output_indices)
    return torch.einsum(eq, x, *[ops[w.name] for w in graph.skip.weights])


def _c(t: Tensor) -> Tensor:
    return t.to(torch.complex128)


def _letters(graph: Graph) -> dict[str, str]:
    pool = string.ascii_letters
    if len(graph.indices) >= len(pool):
        raise SpecError(f"the reference supports at most {len(pool) - 1} distinct indices")
    return {i: pool[k] for k, i in enumerate(graph.indices)}


def _fresh_letter(letters: dict[str, str]) -> str:
    return next(c for c in string.ascii_letters if c not in letters.values())


def _equation(letters: dict[str, str], inputs, output) -> str:
    ins = ",".join("".join(letters[i] for i in term) for term in inputs)
    return ins + "->" + "".join(letters[i] for i in output)
