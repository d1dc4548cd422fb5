"""Executors: a plan's programs turned into Python functions, once, and kept with the plan.

Three executors per plan, all over the canonical operands in canonical order
(``x, A, W0.., D0..``; see :class:`~contractssm.ir.Canonical`):

* ``kernel(x, A, *weights) -> y``: the whole sequence from a zero state;
* ``stream(x, A, *weights, h) -> (y, h)``: a chunk of any length from state ``h``;
* ``step(x_t, A, *weights, h) -> (y_t, h)``: one time step (``x_t`` without the time axis).

States are real tensors: the complex state laid out as ``Graph.state_indices`` with a trailing
axis of 2 (real, imaginary). The functions run with autocast disabled, in the plan's dtype, so
FFTs and the recurrence kernel stay in float32 (or float64) under ``torch.autocast``.

Example:
    >>> import torch, contractssm
    >>> p = contractssm.plan("dws", {"b": 2, "c": 3, "n": 4, "l": 16})
    >>> ex = executors(p)
    >>> ex.kernel.params
    ('x', 'A', 'W0')
    >>> "def kernel(x, A, W0):" in ex.kernel.source
    True
"""

from __future__ import annotations

import functools
import linecache
from dataclasses import dataclass

import torch

from contractssm.codegen import runtime
from contractssm.codegen.emit import emit_function
from contractssm.codegen.fuse import fuse_fft_conv
from contractssm.planner.lower import lower_kernel
from contractssm.planner.plan import Plan
from contractssm.planner.profile import default_profile
from contractssm.planner.state import lower_step, lower_stream
from contractssm.spec import parse

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Executor:
    """One generated function with the source it was made from.

    Attributes:
        name: ``kernel``, ``stream`` or ``step``.
        params: the argument names, in call order.
        source: exactly the Python source that runs.
        fn: the compiled function.
    """

    name: str
    params: tuple[str, ...]
    source: str
    fn: object

    def __call__(self, *args):
        """Run the generated function."""
        return self.fn(*args)


@dataclass(frozen=True)
class Executors:
    """The three executors of one plan."""

    plan: Plan
    kernel: Executor
    stream: Executor
    step: Executor


def executors(plan: Plan) -> Executors:
    """Generate (once per plan, then cached) the kernel, stream and step executors."""
    return _executors(plan)


@functools.lru_cache(maxsize=256)
def _executors(plan: Plan) -> Executors:
    graph = parse(plan.declaration)
    sizes = dict(plan.sizes)
    itemsize = 8 if plan.dtype == "float64" else 4
    profile = default_profile(plan.device)  # steps are re-derived; prices do not matter here
    operands = tuple(op.name for op in graph.operands)
    header = f"{plan.strategy.describe()}\n{graph.to_text()}\nsizes: " + " ".join(
        f"{k}={v}" for k, v in plan.sizes
    )

    kb, kout = lower_kernel(graph, sizes, plan.strategy, profile, itemsize)
    kernel = _make("kernel", operands, kb, kout, plan, header, state=False)
    sb, sout = lower_stream(graph, sizes, plan.strategy, plan.state_inputs, profile, itemsize)
    stream = _make("stream", (*operands, "h0"), sb, sout, plan, header, state=True)
    step_sizes = dict(sizes, **{graph.time: 1})
    tb, tout = lower_step(graph, step_sizes, plan.state_inputs, profile, itemsize)
    step = _make("step", (*operands, "h0"), tb, tout, plan, header, state=True)
    return Executors(plan, kernel, stream, step)


def _make(name, params, builder, outputs, plan: Plan, header: str, state: bool) -> Executor:
    axes = {p: builder.tensors[p].axes for p in params}
    steps = fuse_fft_conv(tuple(builder.steps), outputs)
    body = emit_function(
        f"_{name}_body",
        params,
        steps,
        outputs,
        axes,
        sizes=builder.sizes,
        is_complex={p: builder.tensors[p].is_complex for p in params},
    )
    graph = parse(plan.declaration)
    complex_inputs = {"A"} | {w.name for w in graph.weights if w.is_complex}
    lines = [f"def {name}({', '.join(params)}):"]
    lines += [f"    # {line}" for line in header.splitlines()]
    lines.append("    with torch.autocast(x.device.type, enabled=False):")
    for p in params:
        if p == "h0":
            lines.append(
                f"        {p} = torch.view_as_complex({p}.to(torch.{plan.dtype}).contiguous())"
            )
        elif p in complex_inputs:
            lines.append(f"        {p} = rt.as_complex({p}, torch.{plan.dtype})")
        else:
            lines.append(f"        {p} = {p}.to(torch.{plan.dtype})")
    call = f"_{name}_body({', '.join(params)})"
    if state:
        lines.append(f"        y, h = {call}")
        lines.append("        return y, torch.view_as_real(h)")
    else:
        lines.append(f"        return {call}[0]")
    source = body + "\n\n" + "\n".join(lines) + "\n"
    filename = f"<contractssm-{name}-{abs(hash(plan))}>"
    # Register the source so tracebacks and torch.compile can show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"torch": torch, "rt": runtime}
    exec(compile(source, filename, "exec"), namespace)
    return Executor(name, params, source, namespace[name])


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a plan's dtype name."""
    return _DTYPES[name]
