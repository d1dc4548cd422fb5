"""Steps: the instructions a plan is made of, and what each one costs.

A plan lowers a graph into a straight-line program of :class:`Step` values. Each step produces
one named tensor whose axes are einsum letters: the canonical graph's lowercase indices plus
the upper-case time axes below. The code generator turns each step into one line of PyTorch;
the cost model prices each step from a :class:`~contractssm.planner.profile.MachineProfile`.

Time-like axes:
    ``T`` output time, ``J`` input time (Toeplitz), ``F`` frequency bin, ``K``/``P`` chunk
    (output/input), ``R``/``Q`` position inside a chunk (output/input), ``G``/``H`` the two
    factors of a factorised Vandermonde, ``U``/``V`` the inputs/outputs of a fused stream
    chunk (``T`` steps then the state's ``(Re, Im)`` pairs), ``Y`` the ``T + 1`` powers it is
    built from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contractssm.planner.matmul import contraction_matmul, weighted_sum_form
from contractssm.planner.profile import (
    CACHE_BYTES,
    FRESH_MEMORY_BYTES,
    MachineProfile,
    size_class,
)

#: The operations a step may perform (the code generator implements each one).
OPS = (
    "einsum",  # out = einsum(equation, *inputs)
    "einsum_real",  # out = Re(einsum(equation, *inputs)), two inputs, no complex product
    "real",  # out = inputs[0].real
    "add",  # out = inputs[0] + inputs[1] (either may be complex; the result is if any is)
    "powers",  # out[S.., X] = exp(A[S..] * (offset + scale * arange(count)))
    "chunk_scan",  # out[.., K] = sum_{P < K} exp(A * scale * (K - 1 - P)) in[.., P] (a scan)
    "closed_form",  # out[S.., F] = (1 - a^L w^(-fL)) / (1 - a w^(-f)), w = exp(2 pi i / n)
    "hermitian",  # out[.., F'] = (in[.., f] + conj(in[.., -f])) / 2 for f <= n / 2
    "rfft",  # out[.., F] = rfft(in[.., T], n)
    "fft",  # out[.., F] = fft(in[.., T], n)
    "irfft",  # out[.., T] = irfft(in[.., F], n)[.., :length]
    "ifft",  # out[.., T] = ifft(in[.., F], n)[.., :length]
    "toeplitz",  # out[.., T, J] = in[.., T - J] for J <= T else 0
    "reverse",  # out[.., T] = in[.., L - 1 - T] (time reversed, a copy)
    "chunk",  # out[.., K, R] = pad(in[.., T], chunks * chunk) split into chunks (the leading
    # axes may be reordered: then copied in that order, attribute `copied`)
    "unchunk",  # out[.., T] = in[.., K, R] merged, first `length` steps
    "truncate",  # out[.., T] = in[.., G, H] merged, first `length` steps
    "recur",  # out[state] = exp(A[S]) * h0[state] + u[..] (one step of the recurrence)
    "fft_conv",  # rfft, rfft, einsum, irfft fused by the code generator (never planned)
    "vandermonde_real",  # powers, powers, a weighting, einsum_real fused (never planned)
    "chunk_matrix",  # out[G.., U, V]: a depthwise chunk's [u | h] -> [z | h'] from a^t, w a^t
    "chunk_apply",  # out[B.., G.., V] = [u | h0][B.., G.., U] @ matrix[G.., U, V] per group
    "chunk_output",  # out[.., T] = in[.., V][:length] (a view)
    "chunk_state",  # out[state] = in[.., V][steps:] as complex pairs (a view)
)

#: Above this many powers per state the runtime factorises them (complex exp is slow on CPUs).
FACTOR_POWERS = 64
#: Below this many powers in all the runtime calls exp on every element; above, it builds
#: geometric runs by cumulative products (a few exponentials per state). ``polar``'s cos and
#: sin slow down with the angle (a run of scale 16 costs twice one of scale 1); measured on
#: 2048 states, the geometric run against one exp: 8192 powers 1.2x, 16384 0.75-0.8x,
#: 32768 0.4-0.5x (a stream's kernel factors of 16 powers, 0.49 -> 0.19 ms).
GEOMETRIC_MIN_ELEMENTS = 1 << 14
#: Chunk states of at least this many elements per chunk are scanned one chunk at a time on
#: every device (a log-depth scan rewrites every state at each of its levels).
SEQUENTIAL_SCAN_ELEMENTS = 1 << 16


def sequential_scan(device_kind: str, per_chunk: int) -> bool:
    """Whether the runtime scans chunk states one chunk at a time (else log-depth).

    On a CPU always: one small multiply-add per chunk (a few microseconds) beats the
    log-depth scan's ``log2 K`` passes over every state, measured 1.2-3.6x faster forward plus
    backward from 16 to 1024 chunks. Elsewhere only for large states, where kernel launches
    per chunk are cheap next to the passes.
    """
    return device_kind == "cpu" or per_chunk >= SEQUENTIAL_SCAN_ELEMENTS


def powers_split(count: int) -> tuple[int, int]:
    """(coarse, fine) counts of the factorisation ``t = fine * g + h`` of a run of powers."""
    fine = 1 << max(0, round(math.log2(max(1, count)) / 2))
    return -(-count // fine), fine


@dataclass(frozen=True)
class Step:
    """One instruction of a plan.

    Attributes:
        op: one of :data:`OPS`.
        output: the name of the tensor produced.
        inputs: names of the tensors consumed.
        axes: the output's axes as einsum letters, in order.
        is_complex: whether the output is complex.
        phase: which part of the computation: ``signal``, ``kernel``, ``conv``, ``output``,
            ``skip`` or ``state``.
        equation: the einsum equation (``einsum`` steps only).
        attrs: op-specific integer parameters as ``(name, value)`` pairs.
        elements: number of elements of the output.
        flops: floating-point operations (complex multiply-add counts 8).
        seconds: predicted time on the planning profile (forward only).
    """

    op: str
    output: str
    inputs: tuple[str, ...]
    axes: str
    is_complex: bool
    phase: str
    equation: str = ""
    attrs: tuple[tuple[str, int], ...] = ()
    elements: int = 0
    flops: float = 0.0
    seconds: float = 0.0

    def attr(self, name: str) -> int:
        """The value of attribute ``name``."""
        return dict(self.attrs)[name]

    def bytes(self, itemsize: int) -> int:
        """Bytes of the output for a real itemsize (complex doubles it)."""
        return self.elements * itemsize * (2 if self.is_complex else 1)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "op": self.op,
            "output": self.output,
            "inputs": list(self.inputs),
            "axes": self.axes,
            "complex": self.is_complex,
            "phase": self.phase,
            "equation": self.equation,
            "attrs": dict(self.attrs),
            "elements": self.elements,
            "flops": self.flops,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Step:
        """Inverse of :meth:`to_dict` (raises ``KeyError``/``TypeError`` on bad data)."""
        op = str(d["op"])
        if op not in OPS:
            raise ValueError(f"unknown step op {op!r}")
        return cls(
            op=op,
            output=str(d["output"]),
            inputs=tuple(str(i) for i in d["inputs"]),
            axes=str(d["axes"]),
            is_complex=bool(d["complex"]),
            phase=str(d["phase"]),
            equation=str(d["equation"]),
            attrs=tuple((str(k), int(v)) for k, v in dict(d["attrs"]).items()),
            elements=int(d["elements"]),
            flops=float(d["flops"]),
            seconds=float(d["seconds"]),
        )


# -- costs -----------------------------------------------------------------------------------


def einsum_cost(
    equation: str, sizes: dict[str, int], complex_in: tuple[bool, ...]
) -> tuple[float, int, int]:
    """FLOPs, output elements and the smallest matmul dimension of an einsum.

    Two-operand contractions are priced as a batched matmul ``(batch, M, K) x (batch, K, N)``;
    one-operand ones as a reduction. A complex-by-complex multiply-add is 8 flops, mixed
    real-by-complex 4, real 2.
    """
    ins, out = equation.split("->")
    terms = ins.split(",")
    every = set("".join(terms))
    total = math.prod(sizes[a] for a in every)
    elements = math.prod(sizes[a] for a in out)
    n_complex = sum(complex_in)
    per = 8 if n_complex == 2 else (4 if n_complex == 1 and len(terms) == 2 else 2)
    if len(terms) == 1:
        return float(total * (2 if n_complex else 1)), elements, 1
    a, b = set(terms[0]), set(terms[1])
    contracted = (a & b) - set(out)
    m = math.prod(sizes[i] for i in a - b)
    n = math.prod(sizes[i] for i in b - a)
    k = math.prod(sizes[i] for i in contracted)
    return float(total * per / 2 if not contracted else total * per), elements, min(m, n, k)


def reads_in_place(
    equation: str, sizes: dict[str, int], complex_in: tuple[bool, ...], op: str = "einsum"
) -> bool:
    """Whether the code generator emits this contraction as a matmul on views (no copies).

    Mixed real-by-complex and real-part products count when their realified form (see
    :func:`contractssm.planner.matmul.realified`) has a matmul layout.
    """
    if len(complex_in) != 2:
        return False
    return contraction_matmul(op, equation, ("a", "b"), complex_in, sizes) is not None


def is_view(step: Step, sizes: dict[str, int]) -> bool:
    """Whether the runtime makes ``step`` as a view of its input (no copy, no allocation).

    Merging chunks (``unchunk``, ``truncate``: flatten then slice) always is; splitting into
    chunks is when the length is a whole number of chunks (else the end is zero-padded).
    """
    if step.op in ("unchunk", "truncate", "chunk_output", "chunk_state"):
        return True
    return (
        step.op == "chunk"
        and sizes.get("T", 0) % step.attr("chunk") == 0
        and not dict(step.attrs).get("copied")
    )


def is_broadcast_product(step: Step) -> bool:
    """Whether ``step`` multiplies two operands and sums nothing (its output order is free).

    The runtime writes such a product straight into its output (``rt.einsum``), or into
    scratch memory when it is an FFT convolution's spectral product.
    """
    if step.op != "einsum" or len(step.inputs) != 2:
        return False
    ins, out = step.equation.split("->")
    return set(ins) - {","} == set(out)


def fresh_memory_seconds(nbytes: int, profile: MachineProfile) -> float:
    """Seconds of first-touch page faults on an allocation of ``nbytes``.

    Zero below :data:`~contractssm.planner.profile.FRESH_MEMORY_BYTES` (the heap reuses such
    blocks); above it the allocator maps the memory fresh on every call and each page faults
    on its first write, at ``profile.fresh_memory_gbps``.
    """
    if nbytes < FRESH_MEMORY_BYTES:
        return 0.0
    return nbytes / (profile.fresh_memory_gbps * 1e9)


def step_seconds(
    step: Step,
    sizes: dict[str, int],
    inputs_elements: int,
    profile: MachineProfile,
    itemsize: int,
    complex_inputs: tuple[bool, ...] = (),
    workspace_bytes: int = 0,
    output_in_scratch: bool = False,
) -> tuple[float, float]:
    """Predicted forward seconds and flops of ``step``.

    A roofline model: every step pays the launch overhead plus the larger of its compute time
    (FLOPs at the measured rate of its kind) and its memory time (inputs and output streamed
    at the elementwise bandwidth, the caches' for traffic within
    :data:`~contractssm.planner.profile.CACHE_BYTES`); transcendental work is added on top,
    and so are the page faults of an output or temporaries (``workspace_bytes``) mapped fresh
    from the OS (``workspace_bytes`` counts only temporaries the runtime allocates afresh; an
    output written into reused scratch memory, ``output_in_scratch``, never faults).
    """
    if is_view(step, sizes):
        return profile.launch_us * 1e-6, 0.0
    seconds, flops = _roofline(step, sizes, inputs_elements, profile, itemsize, complex_inputs)
    fresh = (0 if output_in_scratch else step.bytes(itemsize), workspace_bytes)
    for nbytes in fresh:
        seconds += fresh_memory_seconds(nbytes, profile)
    return seconds, flops


def _roofline(
    step: Step,
    sizes: dict[str, int],
    inputs_elements: int,
    profile: MachineProfile,
    itemsize: int,
    complex_inputs: tuple[bool, ...],
) -> tuple[float, float]:
    width = 2 if step.is_complex else 1
    traffic = (inputs_elements + step.elements * width) * itemsize
    gbps = profile.elementwise_gbps
    if traffic <= CACHE_BYTES:
        gbps = max(gbps, profile.cache_gbps)
    memory_s = traffic / (gbps * 1e9)
    launch_s = profile.launch_us * 1e-6
    op = step.op
    if op == "einsum_real":
        # Re(p q) = Re p Re q - Im p Im q: a real contraction with one more summed axis of 2
        # (both complex), or a real one against the complex operand's real part (mixed).
        flops, _, min_dim = einsum_cost(step.equation, sizes, (False, False))
        flops *= 2 if all(complex_inputs) else 1
        rate = profile.matmul_gflops["real"][size_class(min_dim)] * 1e9
        copies = 0.0 if reads_in_place(step.equation, sizes, complex_inputs, op) else memory_s
        return launch_s + max(flops / rate, memory_s) + copies, flops
    if weighted_sum_form(op, step.equation, complex_inputs, sizes):
        # A broadcast product (as large as the larger operand times the summed axes) written
        # and summed: two memory-bound passes (runtime.weighted_sum).
        flops, _, _ = einsum_cost(step.equation, sizes, complex_inputs)
        ins = step.equation.split("->")[0]
        product = math.prod(sizes[a] for a in set(ins) - {","}) * width * itemsize
        return 2 * launch_s + memory_s + 2 * product / (profile.elementwise_gbps * 1e9), flops
    if op == "einsum":
        flops, _, min_dim = einsum_cost(step.equation, sizes, complex_inputs)
        kind = "complex" if any(complex_inputs) else "real"
        rate = profile.matmul_gflops[kind][size_class(min_dim)] * 1e9
        if "->" in step.equation and "," not in step.equation:  # reduction or permute
            return launch_s + memory_s, flops
        if not reads_in_place(step.equation, sizes, complex_inputs, op):
            # torch.einsum permutes operands (and its result) into bmm order: copies.
            return launch_s + max(flops / rate, memory_s) + memory_s, flops
        return launch_s + max(flops / rate, memory_s), flops
    if op in ("rfft", "irfft", "fft", "ifft"):
        n = step.attr("n")
        # Transforms in the batch: output elements over the output's time-like length.
        length = {"rfft": n // 2 + 1, "fft": n}.get(op) or step.attr("length")
        batch = step.elements // max(1, length)
        per = 2.5 if op in ("rfft", "irfft") else 5.0
        flops = batch * per * n * math.log2(max(n, 2))
        return launch_s + max(flops / (profile.fft_gflops * 1e9), memory_s), flops
    if op == "chunk_scan":
        chunks = max(1, sizes.get("K", 1))
        if sequential_scan(profile.device_kind, step.elements // chunks):
            # One multiply-add per chunk, plus a chunk-major copy in and the stacked result.
            return launch_s * chunks + 3 * memory_s, 8.0 * step.elements
        # ceil(log2 K) passes, each reading the state twice and writing it once.
        passes = max(1, math.ceil(math.log2(max(2, chunks))))
        return launch_s * passes + 3 * passes * memory_s, 8.0 * step.elements * passes
    if op == "powers":
        # The runtime builds large runs as geometric sequences (see
        # contractssm.codegen.runtime.powers): a few exponentials per state, then multiplies.
        count = step.attr("count")
        exps = step.elements
        if count > FACTOR_POWERS or step.elements >= GEOMETRIC_MIN_ELEMENTS:
            exps = step.elements // count * 3  # start, ratio (and coarse ratio) per state
        return launch_s + 2 * memory_s + exps / (profile.transcendental_gelems * 1e9), 0.0
    if op == "chunk_apply":
        # One matmul per group, rows (batch) x U by U x V, plus the concatenation of [u | h0].
        # The matrix is read once per chunk by every row and stays in cache at the sizes
        # offered (state.FUSED_MAX_MATRIX): compute-bound, a matrix-vector product at batch 1
        # running at medium-matmul rates ((4, 1, 288) @ (4, 288, 288): 15 us, ~44 GFLOP/s).
        width = sizes["U"]
        rows = max(1, step.elements // (step.attr("groups") * sizes["V"]))
        flops = 2.0 * step.elements * width
        rate = profile.matmul_gflops["real"][size_class(max(8, min(rows, width)))] * 1e9
        signal_s = 2 * step.elements * itemsize / (profile.elementwise_gbps * 1e9)
        return 2 * launch_s + max(flops / rate, signal_s), flops
    if op == "chunk_matrix":
        # Built from the two runs by about fifteen small ops (kernel, Toeplitz, blocks).
        return 15 * launch_s + 4 * memory_s, 0.0
    if op == "closed_form":
        flops = 20.0 * step.elements
        # A complex division per element plus one power: about four elementwise passes.
        return launch_s + 4 * memory_s + step.elements / (
            profile.transcendental_gelems * 1e9
        ) / 8, flops
    return launch_s + memory_s, float(step.elements if op in ("add", "hermitian") else 0)
