"""Gradients (gradcheck in float64) for every step kind, torch.compile and autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch
from cases import random_operands, rel_err
from test_executors import VARIANTS, forced, sized

import contractssm
from contractssm.codegen.bind import canonical_args
from contractssm.codegen.executor import executors


def _leaves(args):
    return [a.detach().clone().requires_grad_(True) for a in args]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}")
@pytest.mark.parametrize("mode", ["neck", "s5_mimo"])
def test_gradcheck_kernel_mode(mode, variant):
    graph, sizes = sized(mode, 7)
    sizes = {i: min(n, 2) if i != graph.time else n for i, n in sizes.items()}
    ops = random_operands(graph, sizes, seed=5)
    ex = executors(forced(mode, sizes, variant, requires_grad=True))
    args = _leaves(canonical_args(graph, ops))
    assert torch.autograd.gradcheck(ex.kernel.fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", ["dws", "lru"])
def test_gradcheck_stream_and_step(mode):
    graph, sizes = sized(mode, 5)
    sizes = {i: min(n, 2) if i != graph.time else n for i, n in sizes.items()}
    ops = random_operands(graph, sizes, seed=6)
    ex = executors(contractssm.plan(graph, sizes, dtype="float64", requires_grad=True))
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    args = _leaves([*canonical_args(graph, ops), h0])
    assert torch.autograd.gradcheck(ex.stream.fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)
    t_axis = graph.signal.indices.index(graph.time)
    step_args = list(args)
    step_args[0] = args[0].detach().select(t_axis, 0).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(ex.step.fn, step_args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["fft", "direct", "chunked"])
def test_compile_fullgraph_no_graph_breaks(algorithm):
    graph, sizes = sized("neck", 48)
    ops = random_operands(graph, sizes, dtype=torch.float32, seed=7)
    ex = executors(contractssm.plan(graph, sizes, algorithm=algorithm))
    args = canonical_args(graph, ops)
    explained = torch._dynamo.explain(ex.kernel.fn)(*args)
    print(
        f"{algorithm}: graph breaks {explained.graph_break_count}, graphs {explained.graph_count}"
    )
    assert explained.graph_break_count == 0
    compiled = torch.compile(ex.kernel.fn, fullgraph=True)
    err = rel_err(compiled(*args), ex.kernel(*args))
    print(f"{algorithm}: compiled vs eager rel err {err:.2e}")
    assert err <= 1e-5


def test_compile_stream_and_step():
    graph, sizes = sized("s5_mimo", 16)
    ops = random_operands(graph, sizes, dtype=torch.float32, seed=8)
    ex = executors(contractssm.plan(graph, sizes))
    args = canonical_args(graph, ops)
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2)
    for fn, call in ((ex.stream, [*args, h0]), (ex.step, [args[0][..., 0], *args[1:], h0])):
        explained = torch._dynamo.explain(fn.fn)(*call)
        assert explained.graph_break_count == 0, explained.break_reasons
        y_c, h_c = torch.compile(fn.fn, fullgraph=True)(*call)
        y_e, h_e = fn(*call)
        err = max(rel_err(y_c, y_e), rel_err(h_c, h_e))
        print(f"{fn.name}: compiled vs eager rel err {err:.2e}")
        assert err <= 1e-5


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_float32(half):
    graph, sizes = sized("neck", 64)
    ops = random_operands(graph, sizes, dtype=torch.float32, seed=9)
    y32 = contractssm.evaluate("neck", ops)
    with torch.autocast("cpu", dtype=half):
        y = contractssm.evaluate("neck", ops)
    err = rel_err(y, y32)
    print(f"autocast {half}: dtype {y.dtype}, rel err vs float32 {err:.2e}")
    assert y.dtype == torch.float32 and err <= 1e-6


def test_lean_fft_conv_gradients_equal_plain_autograd():
    from contractssm.codegen import fuse

    graph, sizes = sized("full", 40)
    ops = random_operands(graph, sizes, seed=10)
    plan = forced("full", sizes, ("fft", "exp", 0), requires_grad=True)
    grads = {}
    for enabled in (True, False):
        fuse.ENABLED = enabled
        try:
            ex = contractssm.codegen.executor._make.__globals__["_executors"].__wrapped__(plan)
        finally:
            fuse.ENABLED = True
        assert ("rt.fft_conv" in ex.kernel.source) == enabled
        args = _leaves(canonical_args(graph, ops))
        ex.kernel(*args).pow(2).sum().backward()
        grads[enabled] = [a.grad for a in args]
    errs = [rel_err(a, b) for a, b in zip(grads[True], grads[False], strict=True)]
    print(f"lean vs plain gradients: max rel err {max(errs):.2e}")
    assert max(errs) <= 1e-10


@pytest.mark.parametrize("mode", ["dws", "full", "neck"])
def test_fused_vandermonde_kernel_gradients_equal_plain_autograd(mode, monkeypatch):
    # rt.vandermonde_real (closed-form backward) against autograd through its four steps:
    # same kernel-mode values and gradients, float64, with a fade before and after.
    from contractssm.codegen import executor as executor_module

    graph, sizes = sized(mode, 48)
    ops = random_operands(graph, sizes, seed=12)
    plan = forced(mode, sizes, ("fft", "vandermonde", 8), requires_grad=True)
    out, grads = {}, {}
    for enabled in (True, False):
        if not enabled:
            monkeypatch.setattr(executor_module, "fuse_vandermonde", lambda steps, *a: steps)
        ex = executor_module._executors.__wrapped__(plan)
        assert ("rt.vandermonde_real" in ex.kernel.source) == enabled
        args = _leaves(canonical_args(graph, ops))
        y = ex.kernel(*args)
        (y.pow(2) * torch.linspace(0, 1, y.shape[-1], dtype=y.dtype)).sum().backward()
        out[enabled], grads[enabled] = y.detach(), [a.grad for a in args]
    errs = [rel_err(a, b) for a, b in zip(grads[True], grads[False], strict=True)]
    print(f"{mode}: output {rel_err(out[True], out[False]):.2e}, gradients {max(errs):.2e}")
    assert rel_err(out[True], out[False]) <= 1e-12 and max(errs) <= 1e-10


@pytest.mark.parametrize("half", [torch.bfloat16, None])
def test_stream_and_step_convert_their_inputs_under_autocast_or_not(half):
    # The wrappers skip no-op conversions and the autocast context where autocast is off;
    # what they convert (a float64 signal, a transposed float64 state) must still arrive.
    graph, sizes = sized("s5", 16)
    ops = random_operands(graph, sizes, dtype=torch.float32, seed=11)
    ex = executors(contractssm.plan(graph, sizes))
    args = canonical_args(graph, ops)
    h0 = torch.randn(*[sizes[i] for i in graph.state_indices], 2, dtype=torch.float64)
    odd_h0 = h0.transpose(0, 1).contiguous().transpose(0, 1)  # same values, not contiguous
    x64 = args[0].double()
    y_ref, h_ref = ex.stream(*args, h0.float())
    context = torch.autocast("cpu", dtype=half) if half else contextlib.nullcontext()
    with context:
        y, h = ex.stream(x64, *args[1:], odd_h0)
        t_axis = graph.signal.indices.index(graph.time)
        y_t, h_t = ex.step(x64.select(t_axis, 0), *args[1:], odd_h0)
    err = max(rel_err(y, y_ref), rel_err(h, h_ref))
    print(f"autocast {half}: stream dtypes {y.dtype} {h.dtype}, err vs float32 inputs {err:.1e}")
    assert y.dtype == h.dtype == y_t.dtype == h_t.dtype == torch.float32
    assert err <= 1e-6
    step_err = rel_err(y_t, y_ref.select(graph.output_indices.index(graph.time), 0))
    assert step_err <= 1e-5
