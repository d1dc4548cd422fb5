"""Run a declaration on named tensors: sizes from shapes, a plan, its executors, names bound.

This is the shortest path from a declaration to numbers, and what the layers build on.

Example:
    >>> import torch, contractssm
    >>> x = torch.randn(2, 3, 16)
    >>> A = torch.complex(-torch.rand(3, 4) - 0.1, torch.randn(3, 4))
    >>> E = torch.randn(3, 4)
    >>> y = contractssm.evaluate("dws", {"x": x, "A": A, "E": E})
    >>> tuple(y.shape)
    (2, 3, 16)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from contractssm.codegen.executor import Executors, executors
from contractssm.errors import ShapeError, SpecError
from contractssm.ir import Graph
from contractssm.modes import get_graph
from contractssm.planner.api import plan as make_plan
from contractssm.planner.plan import Plan

Tensor = torch.Tensor


def canonical_args(graph: Graph, operands: Mapping[str, Tensor]) -> list[Tensor]:
    """The operands in the canonical order the executors take (``x, A, W0.., D0..``)."""
    canon = graph.canonical()
    by_canonical = {new: old for old, new in canon.operand_names}
    missing = [op.name for op in graph.operands if op.name not in operands]
    if missing:
        raise ShapeError(f"no tensor given for operand {missing[0]!r}")
    unknown = sorted(set(operands) - {op.name for op in graph.operands})
    if unknown:
        raise ShapeError(
            f"unknown operand {unknown[0]!r} (operands: "
            f"{', '.join(op.name for op in graph.operands)})"
        )
    return [operands[by_canonical[op.name]] for op in canon.graph.operands]


def sizes_of(
    graph: Graph, operands: Mapping[str, Tensor], *, step: bool = False, length: int | None = None
) -> dict[str, int]:
    """Index sizes read off the operands' shapes (``step``: the signal has no time axis)."""
    shapes = {name: tuple(t.shape) for name, t in operands.items()}
    x = graph.signal
    if step:
        shape = list(shapes[x.name])
        shape.insert(x.indices.index(graph.time), 1 if length is None else length)
        shapes[x.name] = tuple(shape)
    for name, t in operands.items():
        if not isinstance(t, Tensor):
            raise ShapeError(f"operand {name!r} is a {type(t).__name__}, expected a tensor")
    try:
        sizes = graph.infer_sizes(shapes)
    except SpecError as err:  # the tensors disagree with the declaration: a shape mistake
        raise ShapeError(str(err)) from None
    if graph.skip is not None:
        for i, n in zip(graph.skip.signal_indices, shapes[x.name], strict=False):
            if sizes.setdefault(i, n) != n:
                raise ShapeError(
                    f"the skip term maps signal axis {i!r} of size {n} onto an "
                    f"index of size {sizes[i]}"
                )
    if sizes[graph.time] < 1:
        raise ShapeError(f"signal {x.name!r} has length 0 along time index {graph.time!r}")
    for name, shape in shapes.items():
        op = next((o for o in graph.operands if o.name == name), None)
        for i, n in zip(op.indices if op else (), shape, strict=False):
            if n < 1:
                raise ShapeError(
                    f"operand {name!r} has size 0 along index {i!r} (shape {shape}); every "
                    "size must be at least 1"
                )
    return sizes


def _prepare(mode_or_declaration, operands, *, step=False, **plan_options):
    graph = get_graph(mode_or_declaration)
    sizes = sizes_of(graph, operands, step=step)
    x = operands[graph.signal.name]
    if not x.is_floating_point():
        raise ShapeError(f"signal {graph.signal.name!r} must be a floating tensor, got {x.dtype}")
    dtype = "float64" if x.dtype == torch.float64 else "float32"
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in operands.values())
    plan_options.setdefault("requires_grad", grad)
    p = make_plan(graph, sizes, dtype=dtype, device=x.device, **plan_options)
    return graph, p, executors(p), canonical_args(graph, operands)


def evaluate(
    mode_or_declaration: str | Graph,
    operands: Mapping[str, Tensor],
    *,
    state: Tensor | None = None,
    **plan_options,
) -> Tensor | tuple[Tensor, Tensor]:
    """Evaluate a mode on named tensors (kernel mode, or streaming when ``state`` is given).

    Args:
        mode_or_declaration: a mode name or declaration.
        operands: tensors by operand name (the recurrence's complex rate ``A[S]``).
        state: a real state (``zero_state``'s layout) to continue from; the call then returns
            ``(y, new_state)``.
        **plan_options: passed to :func:`contractssm.plan` (``algorithm``, ``objective``, ...).
    """
    graph, _, ex, args = _prepare(mode_or_declaration, operands, **plan_options)
    if state is None:
        return ex.kernel(*args)
    check_state(graph, ex, args[0], state)
    return ex.stream(*args, state)


def evaluate_step(
    mode_or_declaration: str | Graph,
    operands: Mapping[str, Tensor],
    state: Tensor,
    **plan_options,
) -> tuple[Tensor, Tensor]:
    """One time step: the signal in ``operands`` has no time axis; returns ``(y_t, state)``."""
    graph, _, ex, args = _prepare(mode_or_declaration, operands, step=True, **plan_options)
    check_state(graph, ex, args[0], state)
    return ex.step(*args, state)


def state_shape(plan: Plan) -> tuple[int, ...]:
    """Shape of the real state tensors of a plan: the state indices' sizes, then 2."""
    from contractssm.spec import parse

    graph = parse(plan.declaration)
    sizes = dict(plan.sizes)
    return (*[sizes[i] for i in graph.state_indices], 2)


def zero_state(
    mode_or_declaration: str | Graph, operands: Mapping[str, Tensor], *, step: bool = False
) -> Tensor:
    """A zero state for these operands (same device; float64 if the signal is)."""
    graph = get_graph(mode_or_declaration)
    sizes = sizes_of(graph, operands, step=step)
    x = operands[graph.signal.name]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    shape = (*[sizes[i] for i in graph.state_indices], 2)
    return torch.zeros(shape, dtype=dtype, device=x.device)


def check_state(graph: Graph, ex: Executors, x: Tensor, state: Tensor) -> None:
    """Raise :class:`ShapeError` unless ``state`` fits the plan (shape, dtype, device)."""
    want = state_shape(ex.plan)
    if not isinstance(state, Tensor):
        raise ShapeError(f"state must be a tensor, got {type(state).__name__}")
    if tuple(state.shape) != want:
        raise ShapeError(
            f"state has shape {tuple(state.shape)}, expected {want} "
            f"({','.join(graph.state_indices)}, re/im)"
        )
    if state.is_complex() or not state.is_floating_point():
        raise ShapeError(f"state must be a real floating tensor (re/im pairs), got {state.dtype}")
    expected = torch.float64 if ex.plan.dtype == "float64" else torch.float32
    if state.dtype != expected:
        raise ShapeError(f"state has dtype {state.dtype}, expected {expected} (the plan's dtype)")
    if state.device != x.device:
        raise ShapeError(f"state is on {state.device} but the signal is on {x.device}")
