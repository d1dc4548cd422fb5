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

import dataclasses
import functools
import linecache
import math
from dataclasses import dataclass

import torch

from contractssm.codegen import runtime
from contractssm.codegen.emit import emit_function, is_spectral_product
from contractssm.codegen.fuse import (
    fuse_fft_conv,
    fuse_vandermonde,
    kernel_from_table,
    spectrum_from_table,
)
from contractssm.codegen.layout import choose_layouts, relabelled
from contractssm.planner.lower import lower_kernel
from contractssm.planner.matmul import contraction_matmul, weighted_sum_form
from contractssm.planner.plan import Plan
from contractssm.planner.profile import default_profile
from contractssm.planner.state import hoisted, lower_step, lower_stream
from contractssm.planner.steps import is_broadcast_product
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
    #: For ``stream`` and ``step``: the program split in two (see :meth:`prepare`).
    split: tuple[object, object] | None = None
    #: The source of the split functions.
    split_source: str = ""
    #: For ``stream`` and ``step``: ``(equation, matmuls)`` of each per-chunk contraction of
    #: the split program that reads a prepared constant: the number of matrices of its matmul
    #: on views, ``None`` where it runs through ``einsum`` (which permute-copies the constant
    #: on every chunk).
    constant_reads: tuple[tuple[str, int | None], ...] = ()

    @property
    def copied_constants(self) -> tuple[str, ...]:
        """Equations of the per-chunk contractions that copy a prepared constant."""
        return tuple(eq for eq, matmuls in self.constant_reads if matmuls is None)

    def __call__(self, *args):
        """Run the generated function."""
        return self.fn(*args)

    def prepare(self, *parameters: torch.Tensor):
        """Hoist the parameter-only work: ``prepare(A, *weights)(x, h) -> (y, h)``.

        Streaming calls one executor per chunk with the same rate and weights; the steps
        that read only those (powers of the rate, the kernel and its spectrum, decays) are
        loop-invariant. ``prepare`` runs them once and returns a function of the signal and
        the state that runs the rest, equal to calling the executor itself. For inference:
        the prepared tensors are computed with the parameters' values at this call (with
        gradients, call the executor instead).
        """
        if self.split is None:
            raise TypeError(f"the {self.name} executor has no state to stream; call it")
        constants, apply = self.split
        saved = constants(*parameters)

        def run(x: torch.Tensor, h: torch.Tensor):
            return apply(x, saved, *parameters, h)

        return run


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
    # Steps are re-derived from the strategy; prices only pick the stream's form of the state
    # powers (lower_stream), by the default profile so generation is deterministic.
    profile = default_profile(plan.device)
    operands = tuple(op.name for op in graph.operands)
    header = f"{plan.strategy.describe()}\n{graph.to_text()}\nsizes: " + " ".join(
        f"{k}={v}" for k, v in plan.sizes
    )

    kb, kout = lower_kernel(graph, sizes, plan.strategy, profile, itemsize)
    kernel = _make("kernel", operands, kb, kout, plan, header, state=False)
    stream, shares = _make_stream(graph, sizes, plan, profile, itemsize, header, True)
    if shares:
        # One table of state powers where its two readers run as well from it as from a
        # table each: as few matrices in all (``full`` at (8, 64, 1024, 16) would read a
        # shared table as 4096 strided 8 x 256 matrices, 0.7x; see lower_stream).
        two, _ = _make_stream(graph, sizes, plan, profile, itemsize, header, False)
        if _matrices(two) < _matrices(stream):
            stream = two
    step_sizes = dict(sizes, **{graph.time: 1})
    tb, tout = lower_step(graph, step_sizes, plan.state_inputs, profile, itemsize)
    step = _make("step", (*operands, "h0"), tb, tout, plan, header, state=True)
    return Executors(plan, kernel, stream, step)


def _matrices(stream: Executor) -> float:
    """The matrices a chunk's contractions read its prepared constants as (einsum: infinite)."""
    return sum(math.inf if m is None else m for _, m in stream.constant_reads)


def _make_stream(
    graph, sizes, plan: Plan, profile, itemsize, header, shared_table: bool
) -> tuple[Executor, bool]:
    """The stream executor, and whether its program reads one shared table of state powers."""
    sb, sout = lower_stream(
        graph, sizes, plan.strategy, plan.state_inputs, profile, itemsize, shared_table
    )
    operands = (*(op.name for op in graph.operands), "h0")
    shares = any(st.op == "reverse" for st in sb.steps)
    return _make("stream", operands, sb, sout, plan, header, state=True), shares


def _make(name, params, builder, outputs, plan: Plan, header: str, state: bool) -> Executor:
    steps = fuse_fft_conv(tuple(builder.steps), outputs)
    every_axes = {p: builder.tensors[p].axes for p in params} | {s.output: s.axes for s in steps}
    cplx = {p: builder.tensors[p].is_complex for p in params}
    cplx |= {s.output: s.is_complex for s in steps}
    free = {s.output for s in steps if is_broadcast_product(s)}
    layouts = choose_layouts(steps, free, outputs, every_axes, cplx, builder.sizes)
    steps = tuple(relabelled(s, layouts) for s in steps)
    axes = {p: every_axes[p] for p in params}
    steps = fuse_vandermonde(steps, outputs, cplx, axes)
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
    lines.append("    with rt.no_autocast(x.device.type):")
    lines += [_converted(p, plan.dtype, complex_inputs) for p in params]
    call = f"_{name}_body({', '.join(params)})"
    split = None
    split_source, reads = "", ()
    if state:
        split_source, reads = _split_source(name, params, builder, outputs, plan, complex_inputs)
        split_ns = {"torch": torch, "rt": runtime}
        split_file = f"<contractssm-{name}-split-{abs(hash(plan))}>"
        linecache.cache[split_file] = (
            len(split_source),
            None,
            split_source.splitlines(True),
            split_file,
        )
        exec(compile(split_source, split_file, "exec"), split_ns)
        split = (split_ns[f"{name}_constants"], split_ns[f"{name}_apply"])
    if state:
        lines.append(f"        y, h = {call}")
        lines.append("        return rt.dense_gradient(y), torch.view_as_real(h)")
    else:
        lines.append(f"        return rt.dense_gradient({call}[0])")
    source = body + "\n\n" + "\n".join(lines) + "\n"
    filename = f"<contractssm-{name}-{abs(hash(plan))}>"
    # Register the source so tracebacks and torch.compile can show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"torch": torch, "rt": runtime}
    exec(compile(source, filename, "exec"), namespace)
    return Executor(name, params, source, namespace[name], split, split_source, reads)


def _converted(p: str, dtype: str, complex_inputs: set[str]) -> str:
    """The line converting argument ``p`` to the plan's dtype inside a wrapper."""
    if p == "h0":
        return f"        {p} = rt.complex_state({p}, torch.{dtype})"
    if p in complex_inputs:
        return f"        {p} = rt.as_complex({p}, torch.{dtype})"
    return f"        {p} = rt.to_dtype({p}, torch.{dtype})"


def _split_source(
    name, params, builder, outputs, plan: Plan, complex_inputs
) -> tuple[str, tuple[tuple[str, int | None], ...]]:
    """``{name}_constants(A, *weights)`` and ``{name}_apply(x, consts, A, *weights, h0)``.

    Returns the source and :func:`_constant_reads` of the per-chunk steps.

    A step is constant when every input is a parameter (not ``x``, not ``h0``) or a constant
    step's output (:func:`~contractssm.planner.state.hoisted`, which the stream's per-chunk
    pricing shares). The unfused steps are used: the kernel's spectrum is then a constant too.
    """
    weights = tuple(p for p in params if p not in ("x", "h0"))
    steps = tuple(builder.steps)
    constant = hoisted(steps, weights)
    const_steps = tuple(st for st in steps if st.output in constant)
    var_steps = tuple(st for st in steps if st.output not in constant)
    needed = []
    for st in var_steps:
        for i in st.inputs:
            if i in constant and i not in weights and i not in needed:
                needed.append(i)
    for o in outputs:  # an output that is constant (rare) is returned through the constants
        if o in constant and o not in weights and o not in needed:
            needed.append(o)
    kw = {"sizes": builder.sizes}
    cplx = {t: info.is_complex for t, info in builder.tensors.items()}
    axes = {t: info.axes for t, info in builder.tensors.items()}
    free = set(needed) | {st.output for st in var_steps if is_broadcast_product(st)}
    layouts = choose_layouts(var_steps, free, outputs, axes, cplx, builder.sizes)
    var_steps = tuple(relabelled(st, layouts) for st in var_steps)
    apply_axes = {**axes, **layouts}
    # A hoisted table of powers read only per chunk is computed in its readers' order
    # (rt.powers_laid_out) instead of copied into it after.
    read_by_constants = {i for st in const_steps for i in st.inputs}
    laid_out = {
        st.output
        for st in const_steps
        if st.op == "powers" and st.output in layouts and st.output not in read_by_constants
    }
    const_steps = tuple(
        dataclasses.replace(st, axes=layouts[st.output]) if st.output in laid_out else st
        for st in const_steps
    )
    const_steps = kernel_from_table(const_steps, tuple(needed), axes)
    const_steps = spectrum_from_table(const_steps, tuple(needed))
    read_by_constants = {i for st in const_steps for i in st.inputs}
    # A hoisted spectrum read only by channel-summing products is laid out frequency-major
    # once, instead of by every chunk's product.
    readers = {c: [st for st in var_steps if c in st.inputs] for c in needed}
    spectra = frozenset(
        c
        for c in needed
        if c not in layouts
        and c not in outputs
        and readers[c]
        and all(is_spectral_product(st, cplx) for st in readers[c])
    )
    # A table of powers read only per chunk, by real-part products, is computed conjugated.
    tables = [st.output for st in const_steps if st.op == "powers"]
    tables = [c for c in tables if c in readers and c not in read_by_constants | set(outputs)]
    conjugated = _conjugated_constants(tables, readers, cplx, builder.sizes)
    const_steps = tuple(
        dataclasses.replace(st, attrs=(*st.attrs, ("conjugate", 1)))
        if st.output in conjugated
        else st
        for st in const_steps
    )
    const_src = emit_function(
        f"_{name}_constants_body",
        weights,
        const_steps,
        tuple(needed),
        {p: axes[p] for p in weights},
        is_complex={p: cplx[p] for p in weights},
        **kw,
    )
    apply_params = ("x", "h0", *weights, *needed)
    apply_src = emit_function(
        f"_{name}_apply_body",
        apply_params,
        var_steps,
        outputs,
        {p: apply_axes[p] for p in apply_params},
        is_complex={p: cplx[p] for p in apply_params},
        frequency_major=spectra,
        conjugated=conjugated,
        **kw,
    )
    dtype = plan.dtype
    lines = [f"def {name}_constants({', '.join(weights)}):"]
    lines.append(f"    with rt.no_autocast({weights[0]}.device.type):")
    lines += [_converted(p, dtype, complex_inputs) for p in weights]
    made = f"_{name}_constants_body({', '.join(weights)})"
    if any((c in layouts and c not in laid_out) or c in spectra for c in needed):
        # Hoisted constants are stored in the memory order their readers want.
        lines.append(f"        c = {made}")
        parts = []
        for k, c in enumerate(needed):
            if c in layouts and c not in laid_out:  # computed once, copied into that order
                perm = ", ".join(str(axes[c].index(a)) for a in layouts[c])
                parts.append(f"c[{k}].permute({perm}).contiguous()")
            elif c in spectra:
                parts.append(f"rt.frequency_major(c[{k}])")
            else:
                parts.append(f"c[{k}]")
        made = f"({', '.join(parts)},)"
    lines.append(f"        return {made}")
    lines.append("")
    lines.append("")
    lines.append(f"def {name}_apply(x, constants, {', '.join(weights)}, h0):")
    lines.append("    with rt.no_autocast(x.device.type):")
    lines += [_converted(p, dtype, complex_inputs) for p in ("x", *weights, "h0")]
    args = ", ".join(("x", "h0", *weights, "*constants"))
    lines.append(f"        y, h = _{name}_apply_body({args})")
    lines.append("        return y, torch.view_as_real(h)")
    source = const_src + "\n\n" + apply_src + "\n\n" + "\n".join(lines) + "\n"
    return source, _constant_reads(var_steps, needed, cplx, builder.sizes, conjugated)


def _conjugated_constants(tables, readers, cplx, sizes) -> frozenset[str]:
    """The hoisted tables of powers a prepared stream stores conjugated.

    ``Re(p q)`` of two complex operands is a real matmul of ``(Re p, -Im p)`` stacked (a copy
    of ``p`` every chunk) against ``(Re q, Im q)`` viewed; with the table ``q`` held as
    ``conj(q)`` (the powers of the conjugate rate, no extra pass) both are views: the
    ``full`` (8, 64, 64, 16) stream's readout of its initial state, chunks of 256, stacks a
    16 MiB product per chunk otherwise (2.2 of its 36 ms, measured). Taken for a table read
    only by such products, each with a matmul form on views (see ``matmul.realified``).
    """
    chosen: set[str] = set()
    for c in tables:
        if cplx.get(c) and all(_reads_conjugated(st, c, chosen, cplx, sizes) for st in readers[c]):
            chosen.add(c)
    return frozenset(chosen)


def _reads_conjugated(st, table: str, chosen: set[str], cplx, sizes) -> bool:
    """Whether ``st`` can read the conjugated ``table``.

    A real-part product of two complex operands, one ``table`` (the other not conjugated
    already), with a matmul form on views of both.
    """
    kinds = tuple(bool(cplx.get(i)) for i in st.inputs)
    return (
        st.op == "einsum_real"
        and len(st.inputs) == 2
        and all(kinds)
        and st.inputs.count(table) == 1
        and not chosen & set(st.inputs)
        and not weighted_sum_form(st.op, st.equation, kinds, sizes)
        and contraction_matmul(
            st.op, st.equation, st.inputs, kinds, sizes, tuple(i == table for i in st.inputs)
        )
        is not None
    )


def _constant_reads(
    steps, constants, cplx, sizes, conjugated=frozenset()
) -> tuple[tuple[str, int | None], ...]:
    """``(equation, matrices)`` of ``steps``' contractions that read one of ``constants``.

    The emitter's own dispatch (:func:`~contractssm.codegen.emit._emit`): a matmul on views
    reads its operands in place (as ``matrices`` matrices); a spectral product (one matrix per
    frequency), a product summing only axes of length 1 (a broadcast multiply) and a short
    weighted sum (a broadcast multiply and a sum) are not contractions here; the rest run
    through einsum (``None``).
    """
    reads = []
    for st in steps:
        if st.op not in ("einsum", "einsum_real") or len(st.inputs) != 2:
            continue
        if not set(st.inputs) & set(constants) or is_spectral_product(st, cplx):
            continue
        ins, out = st.equation.split("->")
        if all(sizes[a] == 1 for a in set(ins) - {","} - set(out)):
            continue
        kinds = (bool(cplx.get(st.inputs[0])), bool(cplx.get(st.inputs[1])))
        if weighted_sum_form(st.op, st.equation, kinds, sizes):  # reads in any order
            continue
        conj = tuple(i in conjugated for i in st.inputs)
        best = contraction_matmul(st.op, st.equation, st.inputs, kinds, sizes, conj)
        reads.append((st.equation, None if best is None else best[0][0]))
    return tuple(reads)


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a plan's dtype name."""
    return _DTYPES[name]
