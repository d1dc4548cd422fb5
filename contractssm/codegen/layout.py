"""Memory orders for tensors whose layout is free, chosen so contractions run as matmuls.

A two-operand contraction runs as one batched matmul on views only when each operand's axes
fall into (batch, rows, columns) blocks as they lie in memory (see
:mod:`contractssm.planner.matmul`); otherwise ``torch.einsum`` permute-copies its operands on
every call. Some tensors can be laid out in any order at (almost) no cost:

- a broadcast product (an ``einsum`` step that sums nothing) writes its output in whatever
  order its equation names;
- a hoisted constant of a prepared stream (:meth:`Executor.prepare`) is computed once per
  stream, so one permuted copy there saves a copy on every chunk.

:func:`choose_layouts` picks those orders: for each contraction without a matmul layout it
tries every order of its free operands jointly and keeps the one that makes the most
contractions reading them matmuls (then the fewest, largest matmuls, then the fewest
permuted views). Only tensors read by contractions alone are reordered: an elementwise
``add`` or a scan needs its operands in matching orders.
"""

from __future__ import annotations

import dataclasses
import itertools

from contractssm.planner.matmul import contraction_matmul
from contractssm.planner.steps import Step, is_broadcast_product

#: Contraction ops whose operands may be read in any order.
CONTRACTIONS = ("einsum", "einsum_real")

#: Tensors of more axes are left alone (their orders would be too many to try).
MAX_AXES = 5


def choose_layouts(
    steps: tuple[Step, ...],
    free: set[str],
    keep: tuple[str, ...],
    axes: dict[str, str],
    is_complex: dict[str, bool],
    sizes: dict[str, int],
) -> dict[str, str]:
    """New axis orders ``{tensor: axes}`` for free tensors, so more contractions are matmuls.

    Args:
        steps: the program.
        free: tensors whose order may change (constants, broadcast-product outputs).
        keep: tensors returned to the caller, kept in their declared order.
        axes: the axes of every tensor (inputs and step outputs).
        is_complex: whether each tensor is complex.
        sizes: axis sizes.
    """
    readers: dict[str, list[Step]] = {}
    for st in steps:
        for i in dict.fromkeys(st.inputs):
            readers.setdefault(i, []).append(st)
    movable = {
        t
        for t in free
        if t not in keep
        and t in readers
        and len(axes[t]) <= MAX_AXES
        and all(_reads_as_declared(st, t, axes) for st in readers[t])
    }

    def score(st: Step, layouts: dict[str, str]) -> tuple[int, int, int, int]:
        eq = relabelled(st, layouts).equation
        kinds = (is_complex[st.inputs[0]], is_complex[st.inputs[1]])
        best = contraction_matmul(st.op, eq, st.inputs, kinds, sizes)
        if best is None:
            return (1, 0, 0, 0)
        (count, (narrow, permuted, views)) = best[0]
        return (0, count, narrow, permuted + views)

    layouts: dict[str, str] = {}
    for st in steps:
        if st.op not in CONTRACTIONS or len(st.inputs) != 2 or is_broadcast_product(st):
            continue
        if score(st, layouts)[0] == 0:
            continue
        moving = [i for i in dict.fromkeys(st.inputs) if i in movable]
        if not moving:
            continue
        affected = list({id(r): r for i in moving for r in readers[i]}.values())

        def total(trial, affected=affected):
            return tuple(map(sum, zip(*(score(r, trial) for r in affected), strict=True)))

        best_total, best = total(layouts), layouts
        orders = [itertools.permutations(axes[i]) for i in moving]
        for combo in itertools.product(*orders):
            trial = {**layouts, **{i: "".join(p) for i, p in zip(moving, combo, strict=True)}}
            if (found := total(trial)) < best_total:
                best_total, best = found, trial
        layouts = best
    return {t: order for t, order in layouts.items() if order != axes[t]}


def relabelled(step: Step, layouts: dict[str, str]) -> Step:
    """``step`` reading (and, for a reordered output, writing) tensors in ``layouts``' orders."""
    if not step.equation or not (set(step.inputs) | {step.output}) & set(layouts):
        return step
    ins, out = step.equation.split("->")
    terms = [layouts.get(i, t) for i, t in zip(step.inputs, ins.split(","), strict=True)]
    out = layouts.get(step.output, out)
    return dataclasses.replace(step, equation=f"{','.join(terms)}->{out}", axes=out)


def _reads_as_declared(step: Step, tensor: str, axes: dict[str, str]) -> bool:
    """Whether ``step`` is a two-operand contraction naming ``tensor`` by its axes."""
    if step.op not in CONTRACTIONS or len(step.inputs) != 2:
        return False
    terms = step.equation.split("->")[0].split(",")
    return all(t == axes[tensor] for i, t in zip(step.inputs, terms, strict=True) if i == tensor)
