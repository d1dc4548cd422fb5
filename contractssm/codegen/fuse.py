"""Peephole fusion of generated programs (the plan's steps stay as the planner chose them).

``rfft(k)``, ``rfft(u)``, their frequency-domain contraction and the ``irfft`` become one
:func:`contractssm.codegen.runtime.fft_conv` call with its own backward: an elementwise
product saves the real inputs instead of both complex spectra (about half the saved
activations of the convolution); a channel-contracting one runs frequency-major and saves
those spectra, so the backward needs no FFT of them.

A factorised Vandermonde kernel (two runs of powers of the rate, a real weight multiplied into
one, the real part of their contraction over the states) becomes one
:func:`contractssm.codegen.runtime.vandermonde_real` call with a closed-form backward.

In a prepared stream, whose constants hold the table of state powers over one chunk, a kernel
built another way (a factorised Vandermonde product, a closed-form spectrum) is read from that
table instead (:func:`kernel_from_table`, :func:`spectrum_from_table`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from contractssm.planner.steps import Step

#: Benchmarks switch fusion off to measure what it saves.
ENABLED = True


def fuse_fft_conv(steps: tuple[Step, ...], outputs: tuple[str, ...]) -> tuple[Step, ...]:
    """Replace each rfft/rfft/einsum/irfft chain whose intermediates have no other use."""
    if not ENABLED:
        return steps
    uses = _reads(steps, outputs)
    by_output = {s.output: s for s in steps}
    fused: dict[str, Step] = {}  # irfft output -> fused step
    dropped: set[str] = set()
    for s in steps:
        if s.op != "irfft":
            continue
        mix = by_output.get(s.inputs[0])
        if mix is None or mix.op != "einsum" or len(mix.inputs) != 2 or uses[mix.output] != 1:
            continue
        ffts = [by_output.get(i) for i in mix.inputs]
        if any(f is None or f.op != "rfft" or uses[f.output] != 1 for f in ffts):
            continue
        if {f.attr("n") for f in ffts} != {s.attr("n")}:
            continue
        fused[s.output] = replace(
            s,
            op="fft_conv",
            inputs=(ffts[0].inputs[0], ffts[1].inputs[0]),
            equation=mix.equation,
        )
        dropped |= {mix.output, ffts[0].output, ffts[1].output}
    return tuple(fused.get(s.output, s) for s in steps if s.output not in dropped)


def fuse_vandermonde(
    steps: tuple[Step, ...],
    outputs: tuple[str, ...],
    is_complex: dict[str, bool],
    axes: dict[str, str],
) -> tuple[Step, ...]:
    """Replace each powers/powers/weighting/einsum_real chain of a Vandermonde kernel.

    The chain: ``V_a = powers(rate)`` and ``V_b = powers(rate)`` on the rate's axes then
    their run's axis, ``E = V_b * W`` for a real parameter ``W`` on some of the rate's axes
    (a broadcast product), ``K = Re einsum(V_a, E)`` keeping both run axes; ``V_a``, ``V_b``
    and ``E`` read by nothing else. ``axes`` holds the parameters' axes; ``is_complex``
    every tensor's dtype kind.
    """
    if not ENABLED:
        return steps
    uses = _reads(steps, outputs)
    by_output = {s.output: s for s in steps}
    fused: dict[str, Step] = {}
    dropped: set[str] = set()
    for s in steps:
        chain = _vandermonde_chain(s, by_output, uses, is_complex, axes)
        if chain is None:
            continue
        v_a, v_b, weighting, weight = chain
        a_term, e_term = s.equation.split("->")[0].split(",")[
            :: 1 if s.inputs[0] == v_a.output else -1
        ]
        w_term = weighting.equation.split("->")[0].split(",")[weighting.inputs.index(weight)]
        fused[s.output] = replace(
            s,
            op="vandermonde_real",
            inputs=(v_a.inputs[0], weight),
            # The weighting's equation, then the contraction's (the step is emitted only).
            equation=f"{v_b.axes},{w_term}->{weighting.axes}|{a_term},{e_term}->{s.axes}",
            attrs=tuple(
                (f"{run}_{k}", st.attr(k))
                for run, st in (("a", v_a), ("b", v_b))
                for k in ("count", "scale", "offset")
            ),
        )
        dropped |= {v_a.output, v_b.output, weighting.output}
    return tuple(fused.get(s.output, s) for s in steps if s.output not in dropped)


def _vandermonde_chain(s, by_output, uses, is_complex, axes):
    """``(V_a, V_b, weighting step, weight name)`` when ``s`` ends a Vandermonde chain."""
    if s.op != "einsum_real" or len(s.inputs) != 2:
        return None
    for k in (0, 1):
        v_a, weighting = by_output.get(s.inputs[k]), by_output.get(s.inputs[1 - k])
        if v_a is None or weighting is None or v_a.op != "powers":
            continue
        if weighting.op != "einsum" or len(weighting.inputs) != 2:
            continue
        powers = [by_output.get(i) for i in weighting.inputs]
        if sum(p is not None and p.op == "powers" for p in powers) != 1:
            continue
        v_b = next(p for p in powers if p is not None and p.op == "powers")
        weight = next(i for i in weighting.inputs if i != v_b.output)
        rate = v_a.inputs[0]
        states = axes.get(rate)
        ins, out = s.equation.split("->")
        w_ins, w_out = weighting.equation.split("->")
        if (
            weight in by_output
            or is_complex.get(weight, True)
            or rate in by_output
            or v_b.inputs[0] != rate
            or any(uses.get(t.output, 0) != 1 for t in (v_a, v_b, weighting))
            or states is None
            or v_a.axes != states + v_a.axes[-1:]
            or v_b.axes != states + v_b.axes[-1:]
            or not set(axes.get(weight, "?")) <= set(states)
            or set(w_ins) - {","} != set(w_out)  # a broadcast product, nothing summed
            or ins.split(",")[k] != v_a.axes
            or not {v_a.axes[-1], v_b.axes[-1]} <= set(out)
            or not set(out) <= set(states) | {v_a.axes[-1], v_b.axes[-1]}
        ):
            continue
        return v_a, v_b, weighting, weight
    return None


def _reads(steps: tuple[Step, ...], outputs: tuple[str, ...]) -> Counter[str]:
    """How many times each tensor is read (by a step, or returned)."""
    return Counter([i for s in steps for i in s.inputs] + list(outputs))


def _tables_of_powers(steps: tuple[Step, ...]) -> dict[tuple[str, int], Step]:
    """The ``powers(rate, count, 1, 0)`` steps (``a^t``, ``t < count``) by (rate, count)."""
    return {
        (s.inputs[0], s.attr("count")): s
        for s in steps
        if s.op == "powers" and s.attr("scale") == 1 and s.attr("offset") == 0
    }


def kernel_from_table(
    steps: tuple[Step, ...], outputs: tuple[str, ...], axes: dict[str, str]
) -> tuple[Step, ...]:
    """A prepared stream's factorised kernel read from its table of state powers instead.

    A stream's constants can hold both the chunk's kernel, built as a factorised Vandermonde
    product (``Re sum_states W V_a[g] V_b[h]``, truncated to the chunk, ``t = g fine + h``),
    and the table ``P[t] = a^t`` for ``t`` in the chunk that each chunk's state readout and
    update read. Then the kernel is ``Re sum_states W P[t]``: one small contraction against
    the table, where the two runs, the weighted product and the contraction over both runs
    each made a pass (``s4d`` (8, 1024) chunks of 256: 1.2-1.5 of a 2.3-3.5 ms prepare,
    measured). ``axes`` holds the parameters' axes. Steps are returned in an order that
    computes every input first.
    """
    if not ENABLED:
        return steps
    uses = _reads(steps, outputs)
    by_output = {s.output: s for s in steps}
    tables = _tables_of_powers(steps)
    replaced: dict[str, Step] = {}
    dropped: set[str] = set()
    for s in steps:
        chain = _table_kernel_chain(s, by_output, uses, tables, axes)
        if chain is None:
            continue
        table, weight, w_term, dead = chain
        time_axis = s.axes[-1]
        count_axis = next(a for a in table.axes if a not in axes[table.inputs[0]])
        t_term = table.axes.replace(count_axis, time_axis)
        replaced[s.output] = replace(
            s,
            op="einsum_real",
            inputs=(table.output, weight),
            equation=f"{t_term},{w_term}->{s.axes}",
            attrs=(),
        )
        dropped |= dead
    if not replaced:
        return steps
    kept = [replaced.get(s.output, s) for s in steps if s.output not in dropped]
    return _in_dependency_order(kept)


def spectrum_from_table(steps: tuple[Step, ...], outputs: tuple[str, ...]) -> tuple[Step, ...]:
    """A prepared stream's closed-form kernel spectrum as the rfft of its table of powers.

    The closed form builds all ``n`` bins of ``sum_tau (a w^-f)^tau`` per state (a complex
    division per bin) and folds them to the rfft bins of the real part (:func:`hermitian`,
    through weights contracted in between, or none). A stream that also holds the table ``P[t]
    = a^t`` of the chunk's length (its state readout and update read it) has that kernel in
    the time domain already: the spectrum is ``rfft(Re P)``, or ``rfft(Re einsum(P, W))``
    through one weight ``W``. Measured on ``s5`` (batch 1, 256 channels, 64 states), chunks
    of 256: the closed form and its fold took 380 us of a 640 us prepare; the real part and its
    rfft take 40 us (prepare 0.90-0.99 -> 0.63-0.73 ms between chunks of a stream).
    Steps are returned in an order that computes every input first.
    """
    if not ENABLED:
        return steps
    uses = _reads(steps, outputs)
    by_output = {s.output: s for s in steps}
    tables = _tables_of_powers(steps)
    replaced: dict[str, tuple[Step, ...]] = {}
    dropped: set[str] = set()
    for s in steps:
        chain = _closed_form_chain(s, by_output, uses)
        if chain is None:
            continue
        form, weighting = chain
        table = tables.get((form.inputs[0], form.attr("length")))
        if table is None:
            continue
        bins, extra = form.axes[-1], set(table.axes) - set(form.axes)
        if len(extra) != 1 or set(form.axes) - set(table.axes) != {bins}:
            continue  # not the same states, time in place of the bins
        (time,) = extra
        if weighting is None:
            if table.axes != form.axes.replace(bins, time):  # rfft reads time last
                continue
            kernel = Step("real", f"{s.output}_t", (table.output,), table.axes, False, s.phase)
        else:  # the table's term, in its own order, where the closed form's stood
            ins, out = weighting.equation.split("->")
            terms = ins.split(",")
            terms[weighting.inputs.index(form.output)] = table.axes
            kernel = replace(
                weighting,
                op="einsum_real",
                output=f"{s.output}_t",
                inputs=tuple(table.output if i == form.output else i for i in weighting.inputs),
                axes=weighting.axes.replace(bins, time),
                is_complex=False,
                equation=f"{','.join(terms)}->{out.replace(bins, time)}",
            )
        spectrum = replace(s, op="rfft", inputs=(kernel.output,), attrs=(("n", form.attr("n")),))
        replaced[s.output] = (kernel, spectrum)
        dropped |= {form.output} | ({weighting.output} if weighting is not None else set())
    if not replaced:
        return steps
    kept = [t for s in steps if s.output not in dropped for t in replaced.get(s.output, (s,))]
    return _in_dependency_order(kept)


def _closed_form_chain(s, by_output, uses):
    """``(closed_form step, weighting step or None)`` when ``s`` folds such a spectrum.

    ``s`` is a ``hermitian`` fold of a ``closed_form`` spectrum, directly or through one
    two-operand ``einsum`` with a parameter; the intermediates read by nothing else.
    """
    if s.op != "hermitian":
        return None
    inner = by_output.get(s.inputs[0])
    if inner is None or uses[inner.output] != 1:
        return None
    if inner.op == "closed_form":
        return inner, None
    if inner.op != "einsum" or len(inner.inputs) != 2:
        return None
    for j in (0, 1):
        form, weight = by_output.get(inner.inputs[j]), inner.inputs[1 - j]
        if form is not None and form.op == "closed_form" and uses[form.output] == 1:
            return (form, inner) if weight not in by_output else None
    return None


def _table_kernel_chain(s, by_output, uses, tables, axes):
    """``(table, weight, weight's term, dropped outputs)`` when ``s`` truncates such a kernel.

    ``s`` truncates ``K = Re einsum(V_x, einsum(V_y, W))`` (either run weighted, ``W`` a
    parameter, complex or real, multiplied in summing nothing) whose two run axes come last,
    coarse then fine, both runs rising from exponent 0, to exactly the length of a
    ``powers(rate, length, 1, 0)`` table; ``V_x``, ``V_y``, their product and ``K`` read by
    nothing else.
    """
    if s.op != "truncate":
        return None
    k = by_output.get(s.inputs[0])
    if k is None or k.op != "einsum_real" or len(k.inputs) != 2 or uses[k.output] != 1:
        return None
    for j in (0, 1):
        v_x, weighting = by_output.get(k.inputs[j]), by_output.get(k.inputs[1 - j])
        if v_x is None or weighting is None or v_x.op != "powers" or weighting.op != "einsum":
            continue
        runs = [by_output.get(i) for i in weighting.inputs]
        if len(runs) != 2 or sum(r is not None and r.op == "powers" for r in runs) != 1:
            continue
        v_y = next(r for r in runs if r is not None and r.op == "powers")
        weight = next(i for i in weighting.inputs if i != v_y.output)
        rate = v_x.inputs[0]
        w_ins, w_out = weighting.equation.split("->")
        run_of = {v_x.axes[-1]: v_x, v_y.axes[-1]: v_y}
        coarse, fine = (run_of.get(a) for a in k.axes[-2:])
        table = tables.get((rate, s.attr("length")))
        if (
            table is None
            or coarse is None
            or fine is None
            or coarse is fine
            or weight in by_output
            or rate in by_output
            or v_y.inputs[0] != rate
            or rate not in axes
            or any(uses[t.output] != 1 for t in (v_x, v_y, weighting))
            or set(w_ins) - {","} != set(w_out)
            or fine.attr("scale") != 1
            or coarse.attr("scale") != fine.attr("count")
            or coarse.attr("offset") != 0
            or fine.attr("offset") != 0
            or coarse.attr("count") * fine.attr("count") < s.attr("length")
        ):
            continue
        w_term = w_ins.split(",")[weighting.inputs.index(weight)]
        return table, weight, w_term, {v_x.output, v_y.output, weighting.output, k.output}
    return None


def _in_dependency_order(steps: list[Step]) -> tuple[Step, ...]:
    """``steps`` reordered (stably) so that each comes after the steps producing its inputs."""
    produced = {s.output for s in steps}
    done: set[str] = set()
    ordered: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(i in done or i not in produced for i in s.inputs)]
        if not ready:
            raise ValueError("steps read one another's outputs in a cycle")
        for s in ready:
            ordered.append(s)
            done.add(s.output)
        pending = [s for s in pending if s.output not in done]
    return tuple(ordered)
