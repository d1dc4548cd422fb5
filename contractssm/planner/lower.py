"""Lowering: a graph, its sizes and a :class:`Strategy` become a straight-line program.

The graph is the canonical one (single lowercase letters for its indices); the time index is
renamed ``T``. A kernel-mode program has five phases (SPEC.md section 2, linearity):

* ``signal``: the signal contracted with the strategy's signal-side weights, ``U[I_U, T]``;
* ``kernel``: the recurrence ``V[S, tau] = exp(A tau)`` contracted with the kernel-side weights,
  ``K[I_K, tau]`` (by exp in time, a factorised Vandermonde, or in closed form in frequency);
* ``conv``: the causal convolution of ``K`` and ``U`` over time, contracting their shared
  indices (FFT, direct Toeplitz matmul, or chunked state passing);
* ``output``: the output-side weights, and the real part (taken as early as every remaining
  operand allows: on the kernel when all signal- and output-side weights are real);
* ``skip``: the skip term, added.

A streaming program adds the initial state's contribution and the final state; a step program
advances the state by one time step.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from contractssm.errors import PlanError
from contractssm.ir import Graph
from contractssm.planner.profile import MachineProfile
from contractssm.planner.program import ProgramBuilder, TensorInfo, _ordered

ALGORITHMS = ("fft", "direct", "chunked")
KERNEL_METHODS = ("exp", "vandermonde", "closed_form")


@dataclass(frozen=True)
class Strategy:
    """Every choice of a kernel-mode plan.

    Attributes:
        signal_weights: weights contracted with the signal before the convolution.
        kernel_weights: weights folded into the kernel.
        output_weights: weights applied after the convolution.
        algorithm: ``fft``, ``direct`` or ``chunked``.
        kernel_method: ``exp``, ``vandermonde`` or ``closed_form`` (``fft`` only).
        chunk: chunk length (``chunked``) or the fine factor of the Vandermonde split.
        n_fft: transform length (``fft`` only), a fast size >= 2L - 1.
    """

    signal_weights: tuple[str, ...]
    kernel_weights: tuple[str, ...]
    output_weights: tuple[str, ...]
    algorithm: str
    kernel_method: str
    chunk: int = 0
    n_fft: int = 0

    def describe(self) -> str:
        """A one-line summary, e.g. ``fft(n=2048) exp | signal: W2 | kernel: W1 | out: W0``."""
        algo = {"fft": f"fft(n={self.n_fft})", "chunked": f"chunked(T={self.chunk})"}.get(
            self.algorithm, self.algorithm
        )
        method = self.kernel_method + (
            f"(T={self.chunk})" if self.kernel_method == "vandermonde" else ""
        )
        sides = " | ".join(
            f"{label}: {','.join(ws) or '-'}"
            for label, ws in (
                ("signal", self.signal_weights),
                ("kernel", self.kernel_weights),
                ("output", self.output_weights),
            )
        )
        return f"{algo} {method} | {sides}"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "signal_weights": list(self.signal_weights),
            "kernel_weights": list(self.kernel_weights),
            "output_weights": list(self.output_weights),
            "algorithm": self.algorithm,
            "kernel_method": self.kernel_method,
            "chunk": self.chunk,
            "n_fft": self.n_fft,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Strategy:
        """Inverse of :meth:`to_dict`."""
        s = cls(
            tuple(map(str, d["signal_weights"])),
            tuple(map(str, d["kernel_weights"])),
            tuple(map(str, d["output_weights"])),
            str(d["algorithm"]),
            str(d["kernel_method"]),
            int(d["chunk"]),
            int(d["n_fft"]),
        )
        if s.algorithm not in ALGORITHMS or s.kernel_method not in KERNEL_METHODS:
            raise ValueError(f"unknown algorithm or kernel method in {d}")
        return s


def fast_fft_length(minimum: int) -> int:
    """The smallest even 5-smooth integer >= ``minimum`` (sizes pocketFFT and cuFFT like)."""
    n = max(2, minimum + (minimum % 2))
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2


@dataclass(frozen=True)
class Layout:
    """Axis letters of the canonical graph's tensors, with time renamed ``T``."""

    signal: str
    output: str
    states: str  # S, the recurrence's indices
    state: str  # the recurrent state h (Graph.state_indices)
    weights: dict
    skip_signal: str
    skip_weights: dict


@functools.lru_cache(maxsize=512)
def layout_of(graph: Graph) -> Layout:
    """Axis letters of every operand (``graph`` must be canonical: single-letter indices)."""
    for i in graph.indices:
        if len(i) != 1 or not i.islower():
            raise PlanError(f"the planner supports at most 26 indices; index {i!r} is one too many")

    def axes(indices) -> str:
        return "".join("T" if i == graph.time else i for i in indices)

    return Layout(
        signal=axes(graph.signal.indices),
        output=axes(graph.output_indices),
        states=axes(graph.recurrence.indices),
        state=axes(graph.state_indices),
        weights={w.name: axes(w.indices) for w in graph.weights},
        skip_signal=axes(graph.skip.signal_indices) if graph.skip else "",
        skip_weights={w.name: axes(w.indices) for w in graph.skip.weights} if graph.skip else {},
    )


def axis_sizes(graph: Graph, sizes: dict[str, int], strategy: Strategy | None) -> dict[str, int]:
    """Sizes of every axis letter a program over ``graph`` may use."""
    L = sizes[graph.time]
    out = {i: n for i, n in sizes.items() if i != graph.time}
    out.update(T=L, J=L, O=1)
    if strategy is not None:
        n = strategy.n_fft or 2
        real = real_kernel(graph, strategy)
        out.update(W=n, F=n // 2 + 1 if real else n)
        t = max(1, strategy.chunk)
        out.update(R=t, Q=t, K=math.ceil(L / t), P=math.ceil(L / t), H=t, G=math.ceil(L / t))
    return out


def real_kernel(graph: Graph, strategy: Strategy) -> bool:
    """Whether the real part may be taken on the kernel: every weight outside it is real."""
    by_name = {w.name: w for w in graph.weights}
    outside = strategy.signal_weights + strategy.output_weights
    return not any(by_name[w].is_complex for w in outside)


def new_builder(
    graph: Graph,
    sizes: dict[str, int],
    strategy: Strategy | None,
    profile: MachineProfile,
    itemsize: int,
    extra_inputs=(),
    prices: dict | None = None,
) -> ProgramBuilder:
    """A builder whose inputs are the canonical graph's operands (and ``extra_inputs``)."""
    lay = layout_of(graph)
    inputs = {
        "x": TensorInfo(lay.signal, False),
        "A": TensorInfo(lay.states, True),
        **{w.name: TensorInfo(lay.weights[w.name], w.is_complex) for w in graph.weights},
        **{n: TensorInfo(a, False) for n, a in lay.skip_weights.items()},
    }
    inputs.update(extra_inputs)
    return ProgramBuilder(axis_sizes(graph, sizes, strategy), inputs, profile, itemsize, prices)


# -- kernel mode -----------------------------------------------------------------------------


def lower_kernel(
    graph: Graph,
    sizes: dict[str, int],
    strategy: Strategy,
    profile: MachineProfile,
    itemsize: int,
    prices: dict | None = None,
    budget: float | None = None,
    backward: bool = False,
) -> tuple[ProgramBuilder, tuple[str]]:
    """The kernel-mode program (whole sequence, zero initial state) and its output's name.

    ``prices`` memoises step prices across the lowerings of one search (same sizes, profile
    and itemsize). With a ``budget`` (seconds, forward plus backward when ``backward``) the
    lowering stops with :class:`~contractssm.planner.program.OverBudget` once passed.
    """
    b = new_builder(graph, sizes, strategy, profile, itemsize, prices=prices)
    b.budget, b.backward = budget, backward
    return b, (emit_kernel_mode(b, graph, layout_of(graph), strategy),)


def emit_kernel_mode(
    b: ProgramBuilder, graph: Graph, lay: Layout, s: Strategy, initial_state=None, convolve=None
) -> str:
    """Append the kernel-mode steps to ``b``; returns the name of the output tensor.

    ``initial_state(b, kernel_weights, axes, real)``, when given, returns a tensor (with the
    convolution output's ``axes``, real when ``real``) added to the convolution output before
    the output-side weights: the streaming executor's initial-state term, which then shares
    the output projection instead of running its own. ``convolve(b, u, i_u, i_k, i_z,
    kernel_weights, real_kernel, u_complex)``, when given, replaces the strategy's convolution
    (the fused stream chunk, :mod:`contractssm.planner.state`).
    """
    w_axes = lay.weights
    is_cx = {w.name: w.is_complex for w in graph.weights}
    pre, ker, post = list(s.signal_weights), list(s.kernel_weights), list(s.output_weights)
    out_lower = set(lay.output) - {"T"}

    def axes_of(names) -> set[str]:
        return set("".join(w_axes[n] for n in names))

    # signal side: U[I_U, T]
    need_u = axes_of(ker + post) | set(lay.states) | out_lower
    u_axes = _ordered(lay.signal + "".join(w_axes[n] for n in pre), need_u) + "T"
    u_axes = "".join(a for a in u_axes if a != "T") + "T"
    u = b.contract([("x", lay.signal), *[(n, w_axes[n]) for n in pre]], u_axes, "signal")
    u_complex = any(is_cx[n] for n in pre)

    # kernel side: K[I_K, tau]
    need_k = axes_of(pre + post) | set(lay.signal) | out_lower
    i_k = "".join(
        a for a in _ordered(lay.states + "".join(w_axes[n] for n in ker), need_k) if a != "T"
    )
    i_u = u_axes[:-1]
    # Signal-side axes first (batch leading), so the output contraction needs no copies.
    i_z = "".join(a for a in _ordered(i_u + i_k, axes_of(post) | out_lower))
    realk = real_kernel(graph, s)

    if convolve is not None:
        z = convolve(b, u, i_u, i_k, i_z, ker, realk, u_complex)
    elif s.algorithm == "fft":
        z = _fft_conv(b, graph, lay, s, u, i_u, i_k, i_z, ker, realk, u_complex)
    elif s.algorithm == "direct":
        k = _time_kernel(b, lay, s.kernel_method, s.chunk, ker, i_k, "T", b.sizes["T"], realk)
        tk = b.add("toeplitz", (k,), i_k + "TJ", not realk, "conv")
        z = b.contract([(tk, i_k + "TJ"), (u, i_u + "J")], i_z + "T", "conv")
    else:
        z = _chunked_conv(b, lay, s, u, i_u, i_k, i_z, ker, realk)
    if initial_state is not None:
        zh = initial_state(b, ker, i_z + "T", realk)
        is_cx = b.tensors[z].is_complex or b.tensors[zh].is_complex
        z = b.add("add", (z, zh), i_z + "T", is_cx, "state")
    y = b.contract_real([(z, i_z + "T"), *[(n, w_axes[n]) for n in post]], lay.output, "output")
    if graph.skip is not None:
        sk = b.contract(
            [("x", lay.skip_signal), *[(n, a) for n, a in lay.skip_weights.items()]],
            lay.output,
            "skip",
        )
        y = b.add("add", (y, sk), lay.output, False, "skip")
    return y


def _time_kernel(
    b: ProgramBuilder,
    lay: Layout,
    method: str,
    fine: int,
    ker: list[str],
    i_k: str,
    tau: str,
    length: int,
    realk: bool,
) -> str:
    """K[I_K, tau] for tau < length, by exp in time or a factorised Vandermonde."""
    w_axes = lay.weights
    if method == "vandermonde":
        coarse = math.ceil(length / fine)
        vg = b.add(
            "powers", ("A",), lay.states + "G", True, "kernel", count=coarse, scale=fine, offset=0
        )
        vh = b.add(
            "powers", ("A",), lay.states + "H", True, "kernel", count=fine, scale=1, offset=0
        )
        kg = b.contract(
            [(vg, lay.states + "G"), (vh, lay.states + "H"), *[(n, w_axes[n]) for n in ker]],
            i_k + "GH",
            "kernel",
            real=realk,
        )
        return b.add("truncate", (kg,), i_k + tau, not realk, "kernel", length=length)
    v = b.add("powers", ("A",), lay.states + tau, True, "kernel", count=length, scale=1, offset=0)
    return b.contract(
        [(v, lay.states + tau), *[(n, w_axes[n]) for n in ker]], i_k + tau, "kernel", real=realk
    )


def _fft_conv(b, graph, lay, s, u, i_u, i_k, i_z, ker, realk, u_complex) -> str:
    n, L = s.n_fft, b.sizes["T"]
    if s.kernel_method == "closed_form":
        # All n bins of the kernel's spectrum; the real part's rfft bins by Hermitian folding.
        bins = "W" if realk else "F"
        g = b.add("closed_form", ("A",), lay.states + bins, True, "kernel", n=n, length=L)
        fk = b.contract(
            [(g, lay.states + bins), *[(w, lay.weights[w]) for w in ker]], i_k + bins, "kernel"
        )
        if realk:
            fk = b.add("hermitian", (fk,), i_k + "F", True, "kernel", n=n)
    else:
        k = _time_kernel(b, lay, s.kernel_method, s.chunk, ker, i_k, "T", L, realk)
        fk = b.add("rfft" if realk else "fft", (k,), i_k + "F", True, "kernel", n=n)
    fu = b.add("rfft" if realk else "fft", (u,), i_u + "F", True, "conv", n=n)
    fz = b.contract([(fk, i_k + "F"), (fu, i_u + "F")], i_z + "F", "conv")
    return b.add("irfft" if realk else "ifft", (fz,), i_z + "T", not realk, "conv", n=n, length=L)


def _chunked_conv(b, lay, s, u, i_u, i_k, i_z, ker, realk) -> str:
    t = s.chunk
    w_axes = lay.weights
    kernel_weights = [(n, w_axes[n]) for n in ker]
    # intra-chunk: a Toeplitz matmul with the first `t` kernel taps
    k = _time_kernel(b, lay, "exp", 0, ker, i_k, "R", t, realk)
    tk = b.add("toeplitz", (k,), i_k + "RQ", not realk, "conv")
    uc = b.add("chunk", (u,), i_u + "KR", b.tensors[u].is_complex, "conv", chunk=t)
    z1 = b.contract([(tk, i_k + "RQ"), (uc, i_u + "KQ")], i_z + "KR", "conv")
    # chunk states: g[k] = sum_q a^(t-1-q) u[k, q]; carried h[k] = sum_{p<k} a^(t(k-1-p)) g[p]
    # by a scan over chunks (one state per chunk, no chunk x chunk matrix; sequential on CPUs,
    # log-depth elsewhere: see steps.sequential_scan)
    h_axes = "".join(dict.fromkeys(i_u + lay.states))
    w_in = b.add("powers", ("A",), lay.states + "Q", True, "conv", count=t, scale=-1, offset=t - 1)
    g = b.contract([(w_in, lay.states + "Q"), (uc, i_u + "KQ")], h_axes + "K", "conv")
    hp = b.add("chunk_scan", ("A", g), h_axes + "K", True, "conv", scale=t)
    # inter-chunk: z2[k, r] = sum kernel weights * a^(r+1) * h[k]
    w_out = b.add("powers", ("A",), lay.states + "R", True, "conv", count=t, scale=1, offset=1)
    z2 = b.contract(
        [(w_out, lay.states + "R"), (hp, h_axes + "K"), *kernel_weights],
        i_z + "KR",
        "conv",
        real=realk,
    )
    z = b.add(
        "add", (z1, z2), i_z + "KR", b.tensors[z1].is_complex or b.tensors[z2].is_complex, "conv"
    )
    return b.add("unchunk", (z,), i_z + "T", b.tensors[z].is_complex, "conv", length=b.sizes["T"])
