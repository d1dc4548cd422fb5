"""Programs that carry state: chunked streaming (state in, state out) and step mode.

The recurrent state ``h`` is laid out as ``Graph.state_indices``. It follows
``h_t = a * h_{t-1} + u_t``, where ``u_t`` is the signal contracted with the *state-input*
weights: the weights that must act before the recurrence (``Graph.input_weights``) plus the
state-only weights that :func:`state_input_weights` places on the input side. Every executor
of a graph at given channel sizes uses the same placement, so a state from ``stream`` can be
fed to ``step`` and back.
"""

from __future__ import annotations

import functools
import itertools
import math

from contractssm.ir import Graph
from contractssm.planner.lower import (
    Strategy,
    emit_kernel_mode,
    layout_of,
    new_builder,
)
from contractssm.planner.profile import MachineProfile, default_profile
from contractssm.planner.program import ProgramBuilder, TensorInfo


def state_input_weights(graph: Graph, sizes: dict[str, int]) -> tuple[str, ...]:
    """The weights applied on the input side of the state (canonical graph, sorted names).

    State-only weights commute with the recurrence (SPEC.md section 2), so each may sit on
    either side. The side changes what the state holds, so it must not depend on batch size,
    length, dtype or device: it is chosen by the FLOPs of one step at batch 1 on the default
    CPU profile, from the channel and state sizes alone.
    """
    key = tuple(sorted((i, n) for i, n in sizes.items() if i not in _batch_like(graph)))
    return _state_input_weights(graph, key)


@functools.lru_cache(maxsize=1024)
def _state_input_weights(graph: Graph, sizes_key: tuple) -> tuple[str, ...]:
    sizes = dict(sizes_key)
    for i in _batch_like(graph):
        sizes[i] = 1
    sizes[graph.time] = 1
    required = tuple(w.name for w in graph.input_weights)
    optional = [w.name for w in graph.state_only_weights]
    best, best_flops = required, None
    for r in range(len(optional) + 1):
        for extra in itertools.combinations(optional, r):
            sides = tuple(sorted(required + extra))
            b, _ = lower_step(graph, sizes, sides, default_profile("cpu"), 4)
            flops = sum(s.flops + s.elements for s in b.steps)
            if best_flops is None or flops < best_flops - 1e-9:
                best, best_flops = sides, flops
    return best


def _batch_like(graph: Graph) -> frozenset[str]:
    """Signal axes no weight or state index touches (pure batch axes such as ``b``)."""
    touched = set(graph.recurrence.indices).union(*(w.indices for w in graph.weights))
    return frozenset(i for i in graph.signal.indices if i not in touched and i != graph.time)


def _state_extra_inputs(graph: Graph) -> dict[str, TensorInfo]:
    return {"h0": TensorInfo(layout_of(graph).state, True)}


def lower_stream(
    graph: Graph,
    sizes: dict[str, int],
    strategy: Strategy,
    state_inputs: tuple[str, ...],
    profile: MachineProfile,
    itemsize: int,
    shared_table: bool = True,
) -> tuple[ProgramBuilder, tuple[str, str]]:
    """Kernel mode from initial state ``h0``; outputs ``y`` and the final state ``h``.

    The state's two time-dependent terms (its contribution ``a^(t+1) h0`` to the outputs and
    the final state's ``sum_t a^(L-1-t) u_t``) read a table of powers with one entry per state
    and time step. Split as ``t = fine * m + n`` (:func:`state_split`) they read two tables of
    ``L / fine`` and ``fine`` entries instead, the same products in a different order: 16x
    less memory at a chunk of 256 (``dws`` at c=256, 16 states: 8 MiB per chunk). The split
    writes ``batch * L / fine`` products per state where the plain program reads ``L`` powers
    per state, and turns one matmul into two smaller ones. Where the table is in cache reach
    (1 to 64 MiB) only the first split (fine about sqrt(L)) is offered, at batch at most
    ``fine / 16`` (1 at chunks of 256). Measured per chunk of 256 (prepared stream, idle
    machine): ``dws`` (1, 256, 16 states) 1.84 -> 0.78 ms; where it is not offered it lost:
    ``s4d`` at batch 4 (64 x 32 states) 0.74 -> 1.02 ms, ``neck``/``s5`` at batch 1 (64
    states, a 128 KiB table) 2-4% (two more ops). Tables of 64 MiB and more
    (:data:`LARGE_TABLE_BYTES`) are streamed from memory by every chunk: there every split
    of :func:`state_splits` is offered at any batch, a larger batch taking a larger ``fine``
    (fewer products against the state and the chunk). The cheapest program by
    :func:`stream_seconds` is kept. Against the unsplit program (prepare and every chunk,
    7 interleaved rounds): ``full`` (8, 64, 1024) 171 -> 113 ms (split (4, 64); stream/kernel
    0.39 -> 0.59), (8, 64, 4096) 616 -> 444 ms, (1, 256, 4096) 9.5 -> 6.4 s, (4, 128, 16384)
    7.4 -> 6.1 s. (The first split at batch 8 measured 29 -> 76 ms per chunk at 64 x 64 x 16
    states: a 64 MiB product against the state.)

    Unsplit, the output's ``a^(t+1) h0`` is ``a^t (a h0)`` and the final state reads the
    same table ``a^t`` against the chunk reversed (``shared_table``): a prepared stream builds
    one table and every chunk reads one. Measured (prepare and 4 chunks of 256, one process):
    ``s4d`` (8, 1024) 11.2 -> 6.9 ms, (8, 4096) 1.12x, ``dws`` (8, 64, 1024) 1.11x. Where its
    two readers want the table in different memory orders (``full``: one of them would copy
    it every chunk) the code generator asks for two tables (``shared_table=False``).

    Where a chunk is one depthwise matrix per channel group (:func:`_lower_fused_stream`),
    that program is taken instead when the cost model predicts it cheaper per chunk
    (:func:`per_chunk_seconds`: what a prepared stream runs per chunk).
    """
    best = _lower_stream(
        graph, sizes, strategy, state_inputs, profile, itemsize, None, shared_table
    )
    lay = layout_of(graph)
    batch = math.prod(sizes[i] for i in _batch_like(graph))
    table_bytes = math.prod(sizes[a] for a in lay.states) * sizes[graph.time] * 2 * itemsize
    splits = []  # time is split only as the output's last axis
    if lay.output.endswith("T") and table_bytes >= LARGE_TABLE_BYTES:
        splits = state_splits(sizes[graph.time])
    elif lay.output.endswith("T") and table_bytes >= SPLIT_TABLE_BYTES:
        first = state_split(sizes[graph.time])
        splits = [first] if first is not None and 16 * batch <= first[1] else []
    for split in splits:
        factored = _lower_stream(
            graph, sizes, strategy, state_inputs, profile, itemsize, split, shared_table
        )
        best = min((best, factored), key=lambda built: stream_seconds(built[0]))
    fused = _lower_fused_stream(graph, sizes, strategy, state_inputs, profile, itemsize)
    if fused is not None and per_chunk_seconds(fused[0]) < per_chunk_seconds(best[0]):
        return fused
    return best


def hoisted(steps, parameters) -> set[str]:
    """The parameters and the outputs of the steps that read only them (directly or not).

    What ``Executor.prepare`` computes once: every other step reads the chunk or the state.
    """
    constant = set(parameters)
    for st in steps:
        if all(i in constant for i in st.inputs):
            constant.add(st.output)
    return constant


def per_chunk_seconds(b: ProgramBuilder) -> float:
    """Predicted forward seconds of the steps a prepared stream runs per chunk (not hoisted)."""
    produced = {st.output for st in b.steps}
    constant = hoisted(b.steps, (n for n in b.tensors if n not in produced | {"x", "h0"}))
    return sum(st.seconds for st in b.steps if st.output not in constant)


#: The smallest table of state powers (bytes) for which the stream is offered the split.
SPLIT_TABLE_BYTES = 1 << 20

#: From this table size (bytes, far out of cache) every split of :func:`state_splits` is
#: offered at any batch: each chunk's matmuls stream the tables from memory, and a split
#: with ``fine`` nearer ``batch x coarse`` reads less. Below it only the first split, at
#: batch at most ``fine / 16``: tables in cache are read at cache speed, which the cost model
#: (pricing each step alone) does not see; offered there, its picks measured 1.14-1.23x
#: slower (``s4d`` (8, 64, 32 states), ``dws`` (8, 64, 16), ``full`` (32, 32, 32, 8)).
LARGE_TABLE_BYTES = 64 << 20

#: The chunks over which a stream's choice of program amortises its prepare
#: (:func:`stream_seconds`); the grid's streams run 4 to 64 chunks of 256.
AMORTISED_CHUNKS = 4


def stream_seconds(b: ProgramBuilder) -> float:
    """Predicted seconds per chunk of a prepared stream, its prepare over a few chunks."""
    chunk = per_chunk_seconds(b)
    return chunk + (b.seconds(backward=False) - chunk) / AMORTISED_CHUNKS


def state_split(length: int) -> tuple[int, int] | None:
    """``(coarse, fine)`` with ``coarse * fine == length``, fine the largest divisor <= sqrt.

    ``None`` for short chunks (under 64 steps) and lengths without a divisor of at least 4.
    """
    if length < 64:
        return None
    fine = next(d for d in range(math.isqrt(length), 0, -1) if length % d == 0)
    return (length // fine, fine) if fine >= 4 else None


#: The most splits of a chunk's time a stream is offered (:func:`state_splits`).
SPLITS_OFFERED = 4


def state_splits(length: int) -> list[tuple[int, int]]:
    """The ``(coarse, fine)`` splits of a chunk's time offered to a stream, finest first.

    From :func:`state_split` (fine about sqrt(length)) through the next divisors up to
    ``coarse = 2``. The tables hold ``fine`` powers per state, the products against the
    initial state and the chunk's ``batch x coarse`` (see :func:`lower_stream`): a larger
    batch wants a larger ``fine``; the cost model picks.
    """
    first = state_split(length)
    if first is None:
        return []
    fines = [d for d in range(first[1], length // 2 + 1) if length % d == 0]
    return [(length // d, d) for d in fines[:SPLITS_OFFERED]]


def _lower_stream(graph, sizes, strategy, state_inputs, profile, itemsize, split, shared_table):
    b = new_builder(graph, sizes, strategy, profile, itemsize, _state_extra_inputs(graph))
    lay = layout_of(graph)
    out_side = [w.name for w in graph.weights if w.name not in state_inputs]
    length = b.sizes["T"]
    if split is not None:
        # Time as (M, N): t = N m + n (state_split keeps M N = T, no padding, so no a^-t).
        b.sizes["M"], b.sizes["N"] = split

    def powers(axis: str, count: int, scale: int, offset: int) -> tuple[str, str]:
        name = b.add(
            "powers",
            ("A",),
            lay.states + axis,
            True,
            "state",
            count=count,
            scale=scale,
            offset=offset,
        )
        return name, lay.states + axis

    def grow() -> list[tuple[str, str]]:
        """``a^(t+1) h0`` as terms over ``T``, or over ``M, N`` when split."""
        if split is not None:
            coarse, fine = split
            return [powers("M", coarse, fine, 0), powers("N", fine, 1, 1), ("h0", lay.state)]
        if not shared_table:
            return [powers("T", length, 1, 1), ("h0", lay.state)]
        # a^t (a h0): the table a^t is the one the final state reads reversed.
        step = b.add("powers", ("A",), lay.states + "O", True, "state", count=1, scale=1, offset=1)
        h1 = b.contract([(step, lay.states + "O"), ("h0", lay.state)], lay.state, "state")
        return [powers("T", length, 1, 0), (h1, lay.state)]

    def over_time(terms, axes: str, real: bool, early: bool = False) -> str:
        """Contract ``terms`` into ``axes`` (time last), through ``M, N`` when split.

        ``real`` takes the real part; ``early`` takes it as early as the operands allow
        (:meth:`ProgramBuilder.contract_real`).
        """
        target = axes if split is None else axes[:-1] + "MN"
        if early:
            t = b.contract_real(terms, target, "state")
        else:
            t = b.contract(terms, target, "state", real=real)
        if split is None:
            return t
        return b.add("truncate", (t,), axes, b.tensors[t].is_complex, "state", length=length)

    # The initial state's contribution: Re sum(out-side weights * a^(t+1) * h0). When the
    # state holds what the convolution reads (the state-input weights are the signal-side
    # ones), it joins the convolution output before the output-side weights (one projection).
    if set(state_inputs) == set(strategy.signal_weights):

        def initial_state(b, ker, axes, real):
            terms = [*grow(), *[(n, lay.weights[n]) for n in ker]]
            return over_time(terms, axes, real)

        y = emit_kernel_mode(b, graph, lay, strategy, initial_state)
    else:
        y0 = emit_kernel_mode(b, graph, lay, strategy)
        terms = [*grow(), *[(n, lay.weights[n]) for n in out_side]]
        yh = over_time(terms, lay.output, real=True, early=True)
        y = b.add("add", (y0, yh), lay.output, False, "state")
    # The final state: a^L h0 + sum_j a^(L-1-j) u_j.
    u_axes = _u_axes(graph, lay, state_inputs)
    u = b.contract(
        [("x", lay.signal), *[(n, lay.weights[n]) for n in state_inputs]], u_axes + "T", "state"
    )
    if split is None and shared_table:
        # sum_t a^(L-1-t) u_t = sum_s a^s u_(L-1-s): the output's table against u reversed.
        flipped = b.add("reverse", (u,), u_axes + "T", b.tensors[u].is_complex, "state")
        hx = b.contract([powers("T", length, 1, 0), (flipped, u_axes + "T")], lay.state, "state")
    elif split is None:
        fade = [powers("T", length, -1, length - 1)]
        hx = b.contract([*fade, (u, u_axes + "T")], lay.state, "state")
    else:
        # a^(T-1-t) = a^(N (M-1-m)) a^(N-1-n): the fine powers against the chunked input first
        # (one matmul per axis the state shares with the input, the chunk copied into that
        # order), kept in the matmul's own order, then the coarse powers summed over the M
        # chunks (a short weighted sum, rt.weighted_sum, for M <= 16). Left to the cheapest
        # order, einsum copied the table every chunk (the chunk's axes do not fall into matmul
        # blocks) and the coarse sum read the product through a permuted view, copied:
        # ``full`` (8, 64, 64, 16) 32 MiB and 16 MiB copies per chunk.
        coarse, fine = split
        shared = "".join(a for a in lay.states if a in u_axes)
        rest = "".join(a for a in lay.states if a not in u_axes)
        outer = "".join(a for a in u_axes if a not in lay.states)
        uc_axes = shared + outer + "MN"
        moved = {"copied": 1} if uc_axes[:-2] != u_axes else {}
        uc = b.add("chunk", (u,), uc_axes, b.tensors[u].is_complex, "state", chunk=fine, **moved)
        # The matmul's own order: (shared, chunk rows, state rows), the (Re, Im) pairs of the
        # complex powers last when the chunk is real.
        by_chunk = shared + outer + "M" + rest
        late = b.contract([powers("N", fine, -1, fine - 1), (uc, uc_axes)], by_chunk, "state")
        early = powers("M", coarse, -fine, fine * (coarse - 1))
        hx = b.contract([early, (late, by_chunk)], lay.state, "state")
    decay = b.add(
        "powers", ("A",), lay.states + "O", True, "state", count=1, scale=1, offset=b.sizes["T"]
    )
    hd = b.contract([(decay, lay.states + "O"), ("h0", lay.state)], lay.state, "state")
    h = b.add("add", (hd, hx), lay.state, True, "state")
    return b, (y, h)


#: The largest fused chunk a stream is offered, in multiply-adds per chunk: batch x groups x
#: (T + 2S)^2. The fused chunk trades about eight small ops for one dense matmul that does
#: more arithmetic than the convolution it replaces; measured at chunks of 256 it pays off up
#: to ~1e7 multiply-adds (``neck`` at batch 32, 4 groups: stream/kernel 0.80 -> 0.89) and not
#: at ~7.5e7 (``s5`` at batch 32, 32 x 32 channels: 1.08 -> 0.76; ``dws`` at 32 channels:
#: unchanged), where the prepared matrix also costs more to build than the tables it replaces.
FUSED_MAX_MACS = 1 << 24

#: The largest fused chunk matrix (elements, groups x (T + 2S)^2). Every chunk reads all of
#: it; past a few MiB that is a memory-bound pass and the prepare's page faults: ``s5`` at
#: batch 1 with 64 one-state groups (64 x 258^2, 17 MB) measured 17 ms to prepare and 0.32 ms
#: per chunk, stream/kernel 0.12 against 0.22-0.44 without it.
FUSED_MAX_MATRIX = 1 << 20


class _NotFusable(Exception):
    """The graph's chunk is not one depthwise matrix per channel group (see below)."""


def _lower_fused_stream(graph, sizes, strategy, state_inputs, profile, itemsize):
    """The stream as one matmul per channel group and chunk, or ``None`` where it does not apply.

    Where the state holds exactly what the convolution reads (the state-input weights are
    the signal-side ones), the convolution is depthwise (the kernel's channels are the
    signal's) and real, and the kernel-side weights act per state, a chunk of each channel
    group is linear in ``[u | h0]`` (``T`` signal steps, ``S`` complex states): its outputs
    before the output-side weights and its final state are one ``(T + 2S)``-square matrix
    product (``rt.chunk_matrix``, hoisted by ``prepare``; ``rt.chunk_apply`` per chunk).
    That replaces the convolution, both state terms and their additions, about eight ops,
    with one matmul: op count, not arithmetic, is what a small chunk costs. ``neck`` (1,
    256, 4096) at chunks of 256: 156 -> 84 us per chunk; (8, 64, 1024): 200 -> 124 us.
    """
    lay = layout_of(graph)
    if set(state_inputs) != set(strategy.signal_weights) or not lay.output.endswith("T"):
        return None
    b = new_builder(graph, sizes, strategy, profile, itemsize, _state_extra_inputs(graph))
    length = b.sizes["T"]
    found = {}

    def convolve(b, u, i_u, i_k, i_z, ker, realk, u_complex):
        groups = "".join(a for a in i_u if a in lay.states)
        batch = "".join(a for a in i_u if a not in lay.states)
        per_state = "".join(a for a in lay.states if a not in groups)
        if (
            not realk
            or u_complex
            or i_z != i_u
            or i_u != batch + groups
            or i_k != groups
            or lay.states != groups + per_state
            or lay.state != batch + groups + per_state
            or any(set(lay.weights[n]) - set(lay.states) for n in ker)
        ):
            raise _NotFusable
        width = length + 2 * math.prod(b.sizes[a] for a in per_state)
        count = math.prod(b.sizes[a] for a in groups)
        rows = math.prod(b.sizes[a] for a in batch) * count
        if rows * width * width > FUSED_MAX_MACS or count * width * width > FUSED_MAX_MATRIX:
            raise _NotFusable
        b.sizes["U"] = b.sizes["V"] = width
        b.sizes["Y"] = length + 1
        # One run a^t, t = 0..T, and its kernel-weighted copy: the kernel, both state terms
        # and the decay are read from them (rt.chunk_matrix).
        run = b.add(
            "powers", ("A",), lay.states + "Y", True, "state", count=length + 1, scale=1, offset=0
        )
        weighted = b.contract(
            [(run, lay.states + "Y"), *[(n, lay.weights[n]) for n in ker]],
            lay.states + "Y",
            "state",
        )
        matrix = b.add(
            "chunk_matrix", (weighted, run), groups + "UV", False, "state", group_axes=len(groups)
        )
        joined = b.add("chunk_apply", (u, "h0", matrix), i_u + "V", False, "state", groups=count)
        found["h"] = b.add("chunk_state", (joined,), lay.state, True, "state", steps=length)
        return b.add("chunk_output", (joined,), i_u + "T", False, "state", length=length)

    try:
        y = emit_kernel_mode(b, graph, lay, strategy, convolve=convolve)
    except _NotFusable:
        return None
    return b, (y, found["h"])


#: From this many states a step reads its new state in place for the output (see below).
#: Measured per step (20 steps, one process, old vs new program): ``full`` at 64 x 64 x 16
#: states (65536) 0.69-0.73x; at 32 x 32 x 8 (8192) 1.36x (a matmul with a 2-column
#: result, where the copy of 8192 floats was cheap); ``neck`` (64 states) 1.06-1.12x.
STEP_STATE_IN_PLACE = 1 << 15


def lower_step(
    graph: Graph,
    sizes: dict[str, int],
    state_inputs: tuple[str, ...],
    profile: MachineProfile,
    itemsize: int,
) -> tuple[ProgramBuilder, tuple[str, str]]:
    """One time step: ``x`` without its time axis and ``h0`` in, ``y`` and ``h`` out."""
    b = new_builder(graph, sizes, None, profile, itemsize, _state_extra_inputs(graph))
    lay = layout_of(graph)
    x_axes = lay.signal.replace("T", "")
    b.tensors["x"] = TensorInfo(x_axes, False)
    u_axes = _u_axes(graph, lay, state_inputs)
    u = b.contract([("x", x_axes), *[(n, lay.weights[n]) for n in state_inputs]], u_axes, "state")
    b.add("recur", ("A", "h0", u), lay.state, True, "state", name="h")
    out = lay.output.replace("T", "")
    out_side = [w.name for w in graph.weights if w.name not in state_inputs]
    y_terms = [("h", lay.state), *[(n, lay.weights[n]) for n in out_side]]
    if b.elements(lay.state) >= STEP_STATE_IN_PLACE:
        # Re taken by the last product (einsum_real: the state read as (Re, Im) pairs in
        # place), not first: Re of the state is a strided view that the matmul copies whole.
        y = b.contract(y_terms, out, "output", real=True)
    else:
        y = b.contract_real(y_terms, out, "output")
    if graph.skip is not None:
        sk = b.contract(
            [
                ("x", lay.skip_signal.replace("T", "")),
                *[(n, a) for n, a in lay.skip_weights.items()],
            ],
            out,
            "skip",
        )
        y = b.add("add", (y, sk), out, False, "skip")
    return b, (y, "h")


def _u_axes(graph: Graph, lay, state_inputs: tuple[str, ...]) -> str:
    present = set(lay.signal) | set("".join(lay.weights[n] for n in state_inputs))
    return "".join(a for a in lay.state if a in present)
