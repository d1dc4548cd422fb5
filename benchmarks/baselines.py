"""The two baselines the benchmark measures the planner against, as plain torch functions.

Both take the *effective* operands of a built-in declaration by name (``contractssm.modes``:
real signal ``x``, complex rate ``A`` with ``V[S, tau] = exp(A[S] * tau)``, weights, skip
weights), exactly what the executors contract, so outputs can be compared numerically.

* **Baseline A, the public Centaurus rule** (:func:`baseline_a`): for ``s5``/``neck`` build the
  full ``(D, C, L)`` kernel when ``1/C + 1/D > 1/B + 1/N`` (``N``: state channels left after
  folding sub-states, ``S`` for ``s5``, the blocks ``n`` for ``neck``), else project with ``B``,
  run a depthwise FFT convolution and project with ``C``; ``dws``/``full`` always build the
  kernel by time-domain exp and sum over states. Transforms are rfft/irfft padded to ``2L`` and
  the real part is taken on the kernel. A real kernel is built in real arithmetic,
  ``Re(W exp(A tau)) = exp(Re A tau) (Re W cos(Im A tau) - Im W sin(Im A tau))``, a real
  ``(..., N, L)`` tensor summed over states: what the public code materializes (its 17.5 GiB
  peak for ``full`` at B=1, C=D=256, L=4096 is that float32 tensor), and ~4x faster than
  torch's complex ``exp``, which would make the baseline a straw man. The model modes
  (``s4d``, ``s5_mimo``, ``lru``) follow the same rule: S4D builds its depthwise kernel;
  S5/LRU take the kernel branch under the same inequality, else project with ``B`` into
  complex states and convolve with a complex FFT.
* **Baseline B, one frequency-domain einsum** (:func:`baseline_b`), the aTENNuate/lrnnx
  fallback: complex FFT of the input and of the kernel ``V``, then a single
  ``opt_einsum.contract(..., optimize="optimal")`` over the frequency axis with every weight,
  inverse FFT, real part, first ``L`` samples.

Example:
    >>> import torch
    >>> ops = {"x": torch.randn(2, 3, 8), "A": torch.complex(-torch.rand(3, 4) - 0.1,
    ...        torch.randn(3, 4)), "E": torch.randn(3, 4)}
    >>> tuple(baseline_a("dws", ops).shape), tuple(baseline_b("dws", ops).shape)
    ((2, 3, 8), (2, 3, 8))
"""

from __future__ import annotations

import string
from collections.abc import Mapping

import opt_einsum
import torch

from contractssm.modes import get_graph

Tensor = torch.Tensor

#: Modes baseline A implements.
BASELINE_A_MODES = ("dws", "s5", "neck", "full", "s4d", "s5_mimo", "lru")


# -- baseline A: the public Centaurus rule -------------------------------------------------------


def _exp_kernel(rate: Tensor, length: int) -> Tensor:
    """V[S, tau] = exp(A[S] * tau) by time-domain exp: (S..., l) complex."""
    tau = torch.arange(length, dtype=rate.real.dtype, device=rate.device)
    return torch.exp(rate[..., None] * tau)


def _real_exp_kernel(equation: str, weight: Tensor, rate: Tensor, length: int) -> Tensor:
    """``Re einsum(equation, weight, exp(rate * tau))`` in real arithmetic: (..., l) real."""
    tau = torch.arange(length, dtype=rate.real.dtype, device=rate.device)
    decay = torch.exp(rate.real[..., None] * tau)
    phase = rate.imag[..., None] * tau
    kernel = torch.einsum(equation, weight.real, decay * torch.cos(phase))
    if weight.is_complex():
        kernel = kernel - torch.einsum(equation, weight.imag, decay * torch.sin(phase))
    return kernel


def _rconv(u: Tensor, k: Tensor, length: int) -> Tensor:
    """Causal convolution of real ``u`` with real ``k`` (broadcast) by rfft padded to 2L."""
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :length]


def _cconv(u: Tensor, k: Tensor, length: int) -> Tensor:
    """Causal convolution of complex ``u`` with complex ``k`` by a complex FFT padded to 2L."""
    n = 2 * length
    return torch.fft.ifft(torch.fft.fft(u, n=n) * torch.fft.fft(k, n=n), n=n)[..., :length]


def _full_conv(x: Tensor, kernel: Tensor, length: int) -> Tensor:
    """y[b,d,l] = sum_c (K[d,c] (*) x[b,c])_l with rfft/irfft padded to 2L."""
    n = 2 * length
    xf = torch.fft.rfft(x, n=n)  # (b, c, f)
    kf = torch.fft.rfft(kernel, n=n)  # (d, c, f)
    yf = torch.einsum("bcf,dcf->bdf", xf, kf)
    return torch.fft.irfft(yf, n=n)[..., :length]


def build_full_kernel(b: int, c: int, d: int, n: int) -> bool:
    """The Centaurus rule: build the (D, C, L) kernel when 1/C + 1/D > 1/B + 1/N."""
    return 1 / c + 1 / d > 1 / b + 1 / n


def baseline_a(mode: str, ops: Mapping[str, Tensor], *, full_kernel: bool | None = None) -> Tensor:
    """Evaluate a built-in mode by the public Centaurus rule.

    Args:
        mode: ``dws``, ``s5``, ``neck``, ``full``, ``s4d``, ``s5_mimo`` or ``lru``.
        ops: the declaration's operands by name.
        full_kernel: force the kernel (``True``) or projection (``False``) branch of
            ``s5``/``neck``/``s5_mimo``/``lru``; ``None`` applies the rule.

    Returns:
        The real output, laid out as the declaration's output.
    """
    x, rate = ops["x"], ops["A"]
    length = x.shape[-1]
    if mode == "dws":
        kernel = _real_exp_kernel("cn,cnl->cl", ops["E"], rate, length)  # (c, l)
        return _rconv(x, kernel, length)
    if mode == "full":
        kernel = _real_exp_kernel("dcn,dcnl->dcl", ops["E"], rate, length)  # (d, c, l)
        return _full_conv(x, kernel, length)
    if mode == "s4d":
        kernel = _real_exp_kernel("khn,hnl->khl", ops["W"], rate, length)  # (k, h, l)
        y = _rconv(x[:, None], kernel, length)  # (b, k, h, l)
        return y + ops["D"][None, :, :, None] * x[:, None]
    if mode in ("s5", "neck"):
        bw, cw = ops["B"], ops["C"]  # (n, c), (d, n)
        # real weights on both sides: the real part may be taken on the kernel
        if mode == "neck":  # fold sub-states m
            v = _real_exp_kernel("nm,nml->nl", ops["E"], rate, length)
        else:
            v = _real_exp_kernel("n,nl->nl", torch.ones_like(rate.real), rate, length)
        b, c, d, n = x.shape[0], x.shape[1], cw.shape[0], bw.shape[0]
        if build_full_kernel(b, c, d, n) if full_kernel is None else full_kernel:
            kernel = torch.einsum("dn,nc,nl->dcl", cw, bw, v)
            return _full_conv(x, kernel, length)
        u = torch.einsum("nc,bcl->bnl", bw, x)
        return torch.einsum("dn,bnl->bdl", cw, _rconv(u, v, length))
    if mode in ("s5_mimo", "lru"):
        v = _exp_kernel(rate, length)  # the projection branch convolves complex states
        bw, cw = ops["B"], ops["C"]  # complex (p, g), (h, p)
        if mode == "lru":
            bw = ops["gamma"][:, None] * bw
        b, g, h, p = x.shape[0], x.shape[1], cw.shape[0], bw.shape[0]
        skip = ops["D"][None, :, None] * x
        if build_full_kernel(b, g, h, p) if full_kernel is None else full_kernel:
            kernel = torch.einsum("hp,pg,pl->hgl", cw, bw, v).real
            return _full_conv(x, kernel, length) + skip
        u = torch.einsum("pg,bgl->bpl", bw, x.to(bw.dtype))
        z = _cconv(u, v, length)  # (b, p, l) complex
        return torch.einsum("hp,bpl->bhl", cw, z).real + skip
    raise ValueError(f"baseline A has no rule for mode {mode!r} (known: {BASELINE_A_MODES})")


# -- baseline B: one frequency-domain einsum ordered by opt_einsum "optimal" ---------------------


def baseline_b(mode: str, ops: Mapping[str, Tensor]) -> Tensor:
    """Evaluate a built-in (or any diagonal) mode as one frequency-domain einsum.

    Complex FFTs (``n = 2L``) of the signal and of ``V = exp(A * tau)``, one
    ``opt_einsum.contract(..., optimize="optimal")`` with every weight, inverse FFT, real part,
    first ``L`` samples, plus the skip term.

    Args:
        mode: a mode name or declaration.
        ops: the declaration's operands by name.

    Returns:
        The real output, laid out as the declaration's output.
    """
    graph = get_graph(mode)
    letters = {i: string.ascii_letters[k] for k, i in enumerate(graph.indices)}
    freq = next(ch for ch in string.ascii_letters if ch not in letters.values())
    x = ops[graph.signal.name]
    time_axis = graph.signal.indices.index(graph.time)
    length = x.shape[time_axis]
    n = 2 * length
    xf = torch.fft.fft(x, n=n, dim=time_axis)
    vf = torch.fft.fft(_exp_kernel(ops[graph.recurrence.name], length), n=n, dim=-1)

    def term(indices):
        return "".join(freq if i == graph.time else letters[i] for i in indices)

    rec = "".join(letters[i] for i in graph.recurrence.indices) + freq
    terms = [rec, term(graph.signal.indices), *[term(w.indices) for w in graph.weights]]
    eq = ",".join(terms) + "->" + term(graph.output_indices)
    weights = [ops[w.name].to(xf.dtype) for w in graph.weights]
    yf = opt_einsum.contract(eq, vf, xf, *weights, optimize="optimal")
    out_axis = graph.output_indices.index(graph.time)
    y = torch.fft.ifft(yf, n=n, dim=out_axis).narrow(out_axis, 0, length).real
    if graph.skip is not None:
        skip_terms = [graph.skip.signal_indices, *[w.indices for w in graph.skip.weights]]
        skip_eq = (
            ",".join("".join(letters[i] for i in t) for t in skip_terms)
            + "->"
            + "".join(letters[i] for i in graph.output_indices)
        )
        y = y + torch.einsum(skip_eq, x, *[ops[w.name] for w in graph.skip.weights])
    return y


# -- size predictions (to skip cells that would not fit) -----------------------------------------


def predicted_bytes(name: str, mode: str, sizes: Mapping[str, int], itemsize: int = 4) -> int:
    """A rough peak-memory prediction of a baseline's forward+backward.

    Counts the largest complex intermediates (``V``, its transform, the transformed signal and
    output) and assumes autograd keeps about three of each alive; good enough to skip cells
    that cannot fit, not a measurement.
    """
    graph = get_graph(mode)
    length = sizes[graph.time]
    state = 1
    for i in graph.recurrence.indices:
        state *= sizes[i]
    batch_x = 1
    for i in graph.signal.indices:
        if i != graph.time:
            batch_x *= sizes[i]
    out = 1
    for i in graph.output_indices:
        if i != graph.time:
            out *= sizes[i]
    complex_item = 2 * itemsize
    if name == "baseline_a":
        elems = state * length + batch_x * (length + 1) + out * (length + 1)
        if mode in ("s5", "neck", "s5_mimo", "lru"):
            elems += sizes.get("d", sizes.get("h", 1)) * sizes.get("c", sizes.get("g", 1)) * length
        return 3 * elems * complex_item
    elems = state * 2 * length * 2 + batch_x * 2 * length + out * 2 * length * 2
    return 3 * elems * complex_item
