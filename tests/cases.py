"""Shared test cases: built-in modes at small sizes, random operands, reference helpers."""

from __future__ import annotations

import torch

from contractssm.codegen.reference import reference
from contractssm.demo import CHECK_SIZES
from contractssm.ir import Graph
from contractssm.modes import get_graph

#: Diagonal built-in modes and small sizes for each (every index, time excluded): the same
#: table the demo's kernel/stream/step check uses.
MODES = CHECK_SIZES


def random_operands(graph: Graph, sizes: dict[str, int], dtype=torch.float64, seed: int = 0):
    """Random operands by name: real signal, stable complex rate, real/complex weights."""
    gen = torch.Generator().manual_seed(seed)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    ops = {}
    for op in graph.operands:
        shape = [sizes[i] for i in op.indices]
        if op is graph.recurrence:
            re = -(0.05 + 0.6 * torch.rand(shape, generator=gen, dtype=dtype))
            im = 2.0 * torch.randn(shape, generator=gen, dtype=dtype)
            ops[op.name] = torch.complex(re, im)
        elif op.is_complex:
            ops[op.name] = torch.randn(shape, generator=gen, dtype=cdtype)
        else:
            ops[op.name] = torch.randn(shape, generator=gen, dtype=dtype)
    return ops


def state_scale(graph: Graph, plan, operands) -> torch.Tensor | float:
    """Our state h' relates to the reference's h by h' = h * (state-only weights placed on the
    input side): a factor broadcast over ``Graph.state_indices``."""
    canon = graph.canonical()
    by_canonical = {new: old for old, new in canon.operand_names}
    required = {w.name for w in graph.input_weights}
    factor: torch.Tensor | float = 1.0
    for name in plan.state_inputs:
        original = by_canonical[name]
        if original in required:
            continue
        w = next(w for w in graph.weights if w.name == original)
        t = operands[original].to(torch.complex128)
        view = [t.shape[w.indices.index(i)] if i in w.indices else 1 for i in graph.state_indices]
        perm = [w.indices.index(i) for i in graph.state_indices if i in w.indices]
        factor = factor * t.permute(perm).reshape(view)
    return factor


def reference_with_state(graph, plan, operands, h0_real=None):
    """The float64 reference in our state convention: (y, final state as complex)."""
    scale = state_scale(graph, plan, operands)
    h0 = None if h0_real is None else torch.view_as_complex(h0_real.double()) / scale
    y, h = reference(graph, operands, h0)
    return y, h * scale


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|, in double precision (complex-aware)."""
    a, b = (t.to(torch.complex128) if t.is_complex() else t.double() for t in (a, b))
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def graph_of(mode: str) -> Graph:
    return get_graph(mode)
