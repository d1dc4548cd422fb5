"""Steps -> straight-line Python source, one line (or two) per step.

The emitted function takes the program's inputs as positional tensors, reads the device and
dtypes once, and runs torch operations only: no branching on tensor values, no host syncs, no
parsing at call time. Helpers it calls live in :mod:`contractssm.codegen.runtime`.
"""

from __future__ import annotations

import math

from contractssm.codegen import runtime
from contractssm.planner.matmul import contraction_matmul, weighted_sum_form
from contractssm.planner.steps import Step


def emit_function(
    name: str,
    params: tuple[str, ...],
    steps: tuple[Step, ...],
    returns: tuple[str, ...],
    axes: dict[str, str],
    header: str = "",
    sizes: dict[str, int] | None = None,
    is_complex: dict[str, bool] | None = None,
    frequency_major: frozenset[str] = frozenset(),
    conjugated: frozenset[str] = frozenset(),
) -> str:
    """Source of a function ``name(*params)`` running ``steps`` and returning ``returns``.

    Args:
        name: function name.
        params: input tensor names, in call order.
        steps: the program.
        returns: names of the tensors returned.
        axes: axes of every input (steps add their outputs).
        header: a comment block placed above the function (e.g. the plan summary).
        sizes: axis sizes; with ``is_complex`` (of every input), lets two-operand contractions
            of like dtypes be emitted as ``torch.matmul`` on views.
        is_complex: whether each input is complex.
        frequency_major: inputs laid out by :func:`~contractssm.codegen.runtime.frequency_major`
            (read only by spectral products, see :func:`is_spectral_product`).
        conjugated: complex inputs passed as their conjugates (a prepared stream's constants
            read only by real-part contractions: see ``matmul.realified``).
    """
    axes = dict(axes)
    cplx = dict(is_complex or {})
    lines = [f"def {name}({', '.join(params)}):"]
    if header:
        lines += [f"    # {line}" if line else "    #" for line in header.splitlines()]
    lines += [
        f"    dev = {params[0]}.device",
        f"    rdt = {params[0]}.real.dtype",
        "    cdt = rt.complex_of(rdt)",
    ]
    # Free each intermediate after its last use: a local lives until the function returns,
    # which would keep every intermediate of a forward-only call alive (autograd keeps what
    # the backward needs either way). The cost model's peak assumes these frees.
    produced = {step.output for step in steps}
    last_use = {}
    for k, step in enumerate(steps):
        for i in step.inputs:
            last_use[i] = k
    for k, step in enumerate(steps):
        lines.append(f"    # {_describe(step)}")
        emitted = _emit(step, axes, sizes, cplx, frequency_major, conjugated)
        lines.extend("    " + line for line in emitted)
        axes[step.output] = step.axes
        cplx[step.output] = step.is_complex
        dead = sorted(
            {i for i in step.inputs if last_use[i] == k and i in produced and i not in returns}
        )
        if dead:
            lines.append(f"    del {', '.join(dead)}")
    if not returns:
        lines.append("    return ()")
    else:
        lines.append(f"    return {', '.join(returns)}{',' if len(returns) == 1 else ''}")
    return "\n".join(lines) + "\n"


def _broadcast(expr: str, have: str, want: str) -> str:
    """``expr`` (axes ``have``) permuted and indexed with ``None`` to broadcast as ``want``."""
    order = [have.index(ax) for ax in want if ax in have]
    if order != sorted(order):
        expr = f"{expr}.permute({', '.join(map(str, order))})"
    if len(have) == len(want):
        return expr
    return f"{expr}[{', '.join(':' if ax in have else 'None' for ax in want)}]"


def _aligned_view(name: str, have: str, out: str) -> str:
    """``name`` (axes ``have``) as a view that broadcasts against ``out``.

    Axes of ``have`` missing from ``out`` (summed, of length 1) are indexed away; the rest are
    permuted into ``out``'s order, with ``None`` for ``out``'s axes it lacks, unless they are
    only leading ones (broadcasting aligns trailing axes).
    """
    kept = "".join(a for a in have if a in out)
    expr = name
    if kept != have:
        expr = f"{expr}[{', '.join(':' if a in out else '0' for a in have)}]"
    if out.endswith(kept) and list(kept) == sorted(kept, key=out.index):
        return expr
    return _broadcast(expr, kept, out)


def _inline_product(step: Step, sizes) -> str | None:
    """A small product summing nothing as one multiply of aligned views, or ``None``.

    ``rt.einsum`` parses its equation and aligns the operands at every call (about 25 us,
    measured), several times the multiply itself below
    :data:`~contractssm.codegen.runtime.ORDERED_PRODUCT_ELEMENTS` elements, where it
    multiplies plainly too: a stream's per-chunk decays of its state and spectral products are
    such steps. The alignment is known here. A real part of such a product (``einsum_real``)
    is the real view of the complex product: matmuls of the pairs along a summed axis of 2
    ran one batched matmul per element row (``s5``'s readout of its initial state, 73 -> 11 us
    per chunk). Larger products keep the runtime's ordered layout.
    """
    if step.op not in ("einsum", "einsum_real") or len(step.inputs) != 2 or sizes is None:
        return None
    ins, out = step.equation.split("->")
    terms = ins.split(",")
    letters = set(ins) - {","}
    if not letters <= set(sizes) or any(sizes[a] != 1 for a in letters - set(out)):
        return None
    if math.prod(sizes[a] for a in out) >= runtime.ORDERED_PRODUCT_ELEMENTS:
        return None
    p, q = (_aligned_view(n, t, out) for n, t in zip(step.inputs, terms, strict=True))
    return f"({p} * {q}).real" if step.op == "einsum_real" else f"{p} * {q}"


def _describe(step: Step) -> str:
    shape = f"({', '.join(step.axes)})"
    what = step.equation or ", ".join(f"{k}={v}" for k, v in step.attrs)
    return f"[{step.phase}] {step.op} {what} -> {shape}{' complex' if step.is_complex else ''}"


def is_spectral_product(step: Step, cplx: dict[str, bool]) -> bool:
    """Whether ``step`` is a complex product of spectra summing channels (frequency last).

    Emitted as :func:`~contractssm.codegen.runtime.spectral_product`: complex matmuls on
    frequency-strided views copy matrix by matrix on CPU.
    """
    return (
        step.op == "einsum"
        and len(step.inputs) == 2
        and all(bool(cplx.get(i)) for i in step.inputs)
        and step.equation.endswith("F")
        and runtime.sums_channels(step.equation)
    )


def _emit(
    step: Step,
    axes: dict[str, str],
    sizes,
    cplx: dict[str, bool],
    frequency_major=frozenset(),
    conjugated=frozenset(),
) -> list[str]:
    out, ins, a = step.output, step.inputs, step.attrs and dict(step.attrs)
    op = step.op
    # Operands held conjugated or frequency-major are read by their own forms (matmuls on
    # views, spectral products); the runtime's spectral product also sums length-1 channels.
    held = (conjugated | frequency_major) & set(ins) or is_spectral_product(step, cplx)
    inline = None if held else _inline_product(step, sizes)
    if inline is not None:
        return [f"{out} = {inline}"]
    if op in ("einsum", "einsum_real") and len(ins) == 2 and sizes:
        kinds = (bool(cplx.get(ins[0])), bool(cplx.get(ins[1])))
        if weighted_sum_form(op, step.equation, kinds, sizes):
            return [f'{out} = rt.weighted_sum("{step.equation}", {ins[0]}, {ins[1]})']
        if is_spectral_product(step, cplx):
            call = f'rt.spectral_product("{step.equation}", {ins[0]}, {ins[1]}'
            if frequency_major & set(ins):
                call += f", {tuple(i in frequency_major for i in ins)!r}"
            return [f"{out} = {call})"]
        conj = tuple(i in conjugated for i in ins)
        best = contraction_matmul(op, step.equation, (ins[0], ins[1]), kinds, sizes, conj)
        if best is not None:
            return [f"{out} = {best[1]}"]
        if any(conj):
            raise ValueError(f"{step.equation}: a conjugated operand needs a matmul form")
    if op == "einsum" and len(ins) == 1:
        have, want = step.equation.split("->")
        if sorted(have) == sorted(want) and len(set(have)) == len(have):
            # A permutation: the view torch.einsum returns, without parsing at call time.
            return [f"{out} = {_broadcast(ins[0], have, want)}"]
    if op == "einsum":
        args = ", ".join(ins)
        return [f'{out} = rt.einsum("{step.equation}", {args})']
    if op == "einsum_real":
        return [f'{out} = rt.einsum_real("{step.equation}", {ins[0]}, {ins[1]})']
    if op == "real":
        return [f"{out} = {ins[0]}.real"]
    if op == "add":
        return [f"{out} = {ins[0]} + {ins[1]}"]
    if op == "powers":
        # A table stored conjugated (a prepared stream's, see executor._split_source) is the
        # powers of the conjugate rate: conj(a)^t = conj(a^t), no pass over the table.
        rate = f"torch.conj_physical({ins[0]})" if a.get("conjugate") else ins[0]
        call = f"{rate}, {a['count']}, {a['scale']}, {a['offset']}, rdt, dev"
        count_axis = next(x for x in step.axes if x not in axes[ins[0]])
        natural = axes[ins[0]] + count_axis
        if step.axes != natural:  # a hoisted table laid out for its readers
            order = tuple(natural.index(x) for x in step.axes)
            return [f"{out} = rt.powers_laid_out({call}, {order})"]
        return [f"{out} = rt.powers({call})"]
    if op == "vandermonde_real":
        weighting, equation = step.equation.split("|")
        runs = tuple(tuple(a[f"{r}_{k}"] for k in ("count", "scale", "offset")) for r in "ab")
        return [
            f'{out} = rt.vandermonde_real({ins[0]}, {ins[1]}, {runs!r}, "{weighting}", '
            f'"{equation}")'
        ]
    if op == "chunk_scan":
        return [
            f"{out} = rt.chunk_scan({_broadcast(ins[0], axes[ins[0]], step.axes[:-1])}, "
            f"{ins[1]}, {a['scale']})"
        ]
    if op == "closed_form":
        return [f"{out} = rt.closed_form({ins[0]}, {a['n']}, {a['length']}, rdt, dev)"]
    if op == "hermitian":
        return [f"{out} = rt.hermitian({ins[0]}, {a['n']})"]
    if op in ("rfft", "fft"):
        return [f"{out} = torch.fft.{op}({ins[0]}, n={a['n']})"]
    if op in ("irfft", "ifft"):
        return [f"{out} = torch.fft.{op}({ins[0]}, n={a['n']})[..., :{a['length']}]"]
    if op == "reverse":
        return [f"{out} = {ins[0]}.flip({axes[ins[0]].index('T')})"]
    if op == "toeplitz":
        return [f"{out} = rt.toeplitz({ins[0]}, dev)"]
    if op == "chunk":
        chunked = f"rt.chunk({ins[0]}, {a['chunk']})"
        natural = axes[ins[0]][:-1] + step.axes[-2:]
        if step.axes != natural:  # leading axes reordered for a matmul: a copy (`copied`)
            order = ", ".join(str(natural.index(x)) for x in step.axes)
            chunked = f"{chunked}.permute({order}).contiguous()"
        return [f"{out} = {chunked}"]
    if op == "fft_conv":
        eq = step.equation
        return [f'{out} = rt.fft_conv({ins[0]}, {ins[1]}, "{eq}", {a["n"]}, {a["length"]})']
    if op == "recur":
        a = _broadcast(f"rt.cexp({ins[0]})", axes[ins[0]], step.axes)
        u = _broadcast(ins[2], axes[ins[2]], step.axes)
        return [f"{out} = {a} * {ins[1]} + {u}"]
    if op in ("unchunk", "truncate"):
        return [f"{out} = {ins[0]}.flatten(-2)[..., :{a['length']}]"]
    if op == "chunk_matrix":
        return [f"{out} = rt.chunk_matrix({ins[0]}, {ins[1]}, {a['group_axes']})"]
    if op == "chunk_apply":
        return [f"{out} = rt.chunk_apply({', '.join(ins)})"]
    if op == "chunk_output":
        return [f"{out} = {ins[0]}[..., :{a['length']}]"]
    if op == "chunk_state":
        shape = tuple(sizes[x] for x in step.axes)  # streams are always emitted with sizes
        return [f"{out} = rt.chunk_state({ins[0]}, {a['steps']}, {shape})"]
    raise ValueError(f"no code generator for step op {op!r}")
