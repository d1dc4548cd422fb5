"""Small tensor helpers the generated code calls (each is a few torch operations, no syncs).

Every helper is shape-static given its integer arguments, so ``torch.compile`` traces them
without graph breaks.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import NamedTuple

import torch

from contractssm.codegen import memory
from contractssm.planner.steps import (
    FACTOR_POWERS,
    GEOMETRIC_MIN_ELEMENTS,
    powers_split,
    sequential_scan,
)

Tensor = torch.Tensor

#: Tables of powers of at least this many elements are always factorised (:func:`_factorised`).
FACTOR_MIN_ELEMENTS = 1 << 20


def complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real one (float64 -> complex128, else complex64)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _aligned(t: Tensor, axes: str, out: str) -> Tensor:
    """``t`` (axes ``axes``) permuted into ``out``'s order, size-1 axes where it has none."""
    order = [axes.index(a) for a in out if a in axes]
    if order != sorted(order):
        t = t.permute(order)
    shape = [t.shape[[a for a in out if a in axes].index(a)] if a in axes else 1 for a in out]
    return t.reshape(shape)


def einsum(equation: str, *operands: Tensor) -> Tensor:
    """``torch.einsum`` that accepts a mix of real and complex operands.

    A product that contracts nothing (every index reaches the output) is a broadcast multiply,
    which avoids the permute-reshape-bmm path (and its copies) einsum takes. A real operand
    meeting a complex one in a contraction is contracted against the complex operand's real
    and imaginary parts at once (``view_as_real`` adds a trailing axis): one real contraction
    instead of promoting the real operand to complex.
    """
    ins, out = equation.split("->")
    terms = ins.split(",")
    if len(operands) == 2 and _summed_ones(terms, operands, out):
        # Summing an axis of length 1 (a one-step decay) is dropping it.
        operands = tuple(
            o.reshape([n for n, a in zip(o.shape, t, strict=True) if a in out])
            for o, t in zip(operands, terms, strict=True)
        )
        terms = ["".join(a for a in t if a in out) for t in terms]
    if len(operands) == 2 and set(terms[0]) | set(terms[1]) == set(out):
        return _broadcast_product(operands[0], terms[0], operands[1], terms[1], out)
    if len(operands) == 2 and operands[0].is_complex() != operands[1].is_complex():
        ins, out = equation.split("->")
        left, right = ins.split(",")
        if operands[0].is_complex():
            eq = f"{left}Z,{right}->{out}Z"
            res = torch.einsum(eq, torch.view_as_real(operands[0]), operands[1])
        else:
            eq = f"{left},{right}Z->{out}Z"
            res = torch.einsum(eq, operands[0], torch.view_as_real(operands[1]))
        return torch.view_as_complex(res.contiguous())
    return torch.einsum(equation, *operands)


#: From this many elements a broadcast product without gradients is written in its output's
#: order (:func:`_broadcast_product`).
ORDERED_PRODUCT_ELEMENTS = 1 << 18


def _broadcast_product(
    p: Tensor, left: str, q: Tensor, right: str, out: str, slot: str | None = None
) -> Tensor:
    """``p * q`` aligned to ``out``'s axes (a product summing nothing), into ``slot``'s scratch.

    Without gradients the product is laid out in ``out``'s order, as the code generator
    assumes (it chooses that order for the product's readers,
    :mod:`~contractssm.codegen.layout`): ``p * q`` of permuted views is written in the order
    of their strides instead (a ``full`` stream's ``(b, a, M, d, e)`` product came out
    ``(a, M, b, d, e)``-strided and its reader's copy ran 20 ms where 1 ms reads it in order).
    """
    p, q = _aligned(p, left, out), _aligned(q, right, out)
    shape = tuple(max(m, n) for m, n in zip(p.shape, q.shape, strict=True))
    if slot is not None:
        return torch.mul(p, q, out=memory.scratch(slot, shape, p.dtype, p.device))
    if p.requires_grad or q.requires_grad or math.prod(shape) < ORDERED_PRODUCT_ELEMENTS:
        # out= records no gradient, and a copy into order cost more than the readers' own:
        # ``dws`` (32, 32, 2048) forward+backward 1.03-1.11x. A small product's out= call
        # costs more than its layout saves (``lru`` streams at batch 8, 1.11x per chunk).
        return p * q
    dtype = torch.promote_types(p.dtype, q.dtype)
    return torch.mul(p, q, out=torch.empty(shape, dtype=dtype, device=p.device))


#: From this many elements in the larger operand :func:`weighted_sum` runs one multiply-add
#: per term; below, a broadcast product and a sum (two ops: a ``dws`` stream at batch 1,
#: 16 terms over 4096 states, 16 small ops cost 1.18x the chunk).
WEIGHTED_SUM_LOOP_ELEMENTS = 1 << 18


def weighted_sum(equation: str, p: Tensor, q: Tensor) -> Tensor:
    """``einsum(equation, p, q)`` for a short weighted sum (see ``matmul.is_weighted_sum``).

    One multiply-add per term of the sum, each reading a slice of the operand holding every
    axis in its own memory order: a ``full`` stream's coarse fade ((8, 64, 64, 16) states,
    4 terms) 1.8 ms, against 2.3 ms for a broadcast product and its sum, 6.3 ms writing that
    sum in the output's order, and 20-30 ms through ``bmm`` (copies); small operands take
    the product and the sum (:data:`WEIGHTED_SUM_LOOP_ELEMENTS`). The result is the output's
    axes as a view, in the larger operand's memory order.
    """
    ins, out = equation.split("->")
    left, right = ins.split(",")
    if len(left) < len(right):
        p, q, left, right = q, p, right, left
    q = _aligned(q, right, left)
    summed = [k for k, a in enumerate(left) if a not in out]
    kept = "".join(a for a in left if a in out)
    to_out = [kept.index(a) for a in out]
    if p.numel() < WEIGHTED_SUM_LOOP_ELEMENTS:  # few elements: two ops beat one per term
        return (p * q).sum(summed).permute(to_out)
    total = None
    for index in itertools.product(*(range(p.shape[k]) for k in summed)):
        p_term, q_term = p, q
        for k, i in sorted(zip(summed, index, strict=True), reverse=True):
            p_term, q_term = p_term.select(k, i), q_term.select(k, min(i, q_term.shape[k] - 1))
        total = p_term * q_term if total is None else total.addcmul_(p_term, q_term)
    return total.permute(to_out)


def stack_conj_parts(p: Tensor) -> Tensor:
    """``(Re p, -Im p)`` on a new last axis: ``Re(p q)`` is this against ``(Re q, Im q)``.

    The pairs are the real view of ``conj(p)`` copied contiguous: one pass, where stacking
    ``p.real`` and ``-p.imag`` wrote a negated copy first and then gathered two strided
    halves. Measured on complex64 (8, 64, 64, 16): 0.69 -> 0.07 ms; (64, 8, 4, 64, 16) 3.2 ->
    0.8 ms, and 3.5 -> 0.8 ms read through a transposed view.
    """
    pairs = torch.empty(p.shape, dtype=p.dtype, device=p.device)
    return torch.view_as_real(pairs.copy_(p.conj()))


def real_pairs(x: Tensor) -> Tensor:
    """``(x, 0)`` on a new last axis: ``Re(p) x`` is ``(Re p, Im p)`` against this, summed."""
    return torch.stack((x, torch.zeros_like(x)), dim=-1)


def _summed_ones(terms: list[str], operands: tuple[Tensor, ...], out: str) -> bool:
    """Whether some axis is summed and every summed axis has length 1."""
    summed = [
        (o, t.index(a)) for o, t in zip(operands, terms, strict=True) for a in t if a not in out
    ]
    return bool(summed) and all(o.shape[k] == 1 for o, k in summed)


def einsum_real(equation: str, p: Tensor, q: Tensor) -> Tensor:
    """``einsum(equation, p, q).real`` without forming the complex product.

    ``Re(p q) = Re p Re q - Im p Im q``: the smaller complex operand is stacked as
    ``(Re, -Im)`` along a new summed axis and met by the other's ``view_as_real`` (no copy),
    one real contraction writing a real result (a complex product writes twice the bytes and
    its real part is another pass). (The code generator emits a matmul on views instead when
    the layout allows.)
    """
    if p.is_complex() != q.is_complex():
        # Re of the mixed product: the real part alone is a stride-2 view that a contraction
        # copies (matrix by matrix in a bmm); both halves through one real contraction.
        return einsum(equation, p, q).real
    ins, out = equation.split("->")
    left, right = ins.split(",")
    if p.numel() > q.numel():
        p, q, left, right = q, p, right, left
    return einsum(f"{left}Z,{right}Z->{out}", stack_conj_parts(p), torch.view_as_real(q))


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``torch.matmul`` of two equally ranked operands whose batch axes broadcast, as one bmm.

    ``torch.matmul`` folds a broadcast operand's batch into the matrix rows, which needs the
    other operand transposed into a contiguous copy (and again in the backward); expanding the
    broadcast operand (a stride-0 view) and calling ``bmm`` reads both as they lie. A weight
    times a (batch, channel, length) signal measured 1.6-2.3x faster forward+backward.
    """
    # Equal ranks (the generator reshapes both): the broadcast batch is the elementwise max.
    # (torch.broadcast_shapes imports 30 MiB of modules on first use.)
    batch = tuple(max(p, q) for p, q in zip(a.shape[:-2], b.shape[:-2], strict=True))
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    return torch.bmm(a3, b3).reshape(*batch, a.shape[-2], b.shape[-1])


#: From this many elements :func:`cexp` calls vectorised ``cos`` and ``sin`` (fewer: ``polar``).
CEXP_POLAR_MAX = 4096


def cexp(z: Tensor) -> Tensor:
    """``exp(z)`` of a complex tensor from real ``exp``, ``cos`` and ``sin``.

    PyTorch's complex ``exp`` runs about 45 million per second on this CPU. ``polar(exp(Re z),
    Im z)`` measured 3.5x faster, but its cos and sin are not vectorised and slow down with the
    angle (7 ns an element at angles within 1, 17-22 ns at hundreds of radians, as a stream's
    decays over a chunk have). From :data:`CEXP_POLAR_MAX` elements the vectorised ``cos`` and
    ``sin`` scaled by ``exp(Re z)`` win: 32768 elements 708 -> 277 us, 2^19 5.9 -> 3.3 ms,
    forward+backward 1.74 -> 1.34 ms (same values to 1e-7 in float32); below, ``polar``'s one
    call beats five. Without gradients the scaling is in place (no temporaries).
    """
    if z.numel() < CEXP_POLAR_MAX:
        return torch.polar(torch.exp(z.real), z.imag)
    modulus, angle = torch.exp(z.real), z.imag
    if z.requires_grad:
        return torch.complex(modulus * torch.cos(angle), modulus * torch.sin(angle))
    return torch.complex(torch.cos(angle).mul_(modulus), torch.sin(angle).mul_(modulus))


def _geometric(base: Tensor, count: int) -> Tensor:
    """``base[..., None] ** arange(count)`` by a cumulative product.

    Complex exponentials are slow on CPUs (see :func:`cexp`) while a complex multiply is
    cheap; the rounding grows like ``count`` ulps, far inside the float32 tolerance for the
    counts used here (runs of about sqrt(L): 256 at L = 2^16).
    """
    run = base.unsqueeze(-1).expand(*base.shape, count - 1)
    ones = torch.ones_like(base).unsqueeze(-1)
    return torch.cat([ones, torch.cumprod(run, dim=-1)], dim=-1)


def powers(rate: Tensor, count: int, scale: int, offset: int, rdt, dev) -> Tensor:
    """``exp(rate[..., None] * (offset + scale * arange(count)))``: V[S, tau] and its factors.

    Short runs are a geometric sequence from two exponentials (the first term and the ratio);
    long runs are factorised: with ``t = fine * g + h``, ``a^(offset + scale t)`` is
    ``a^offset * a^(scale fine g) * a^(scale h)``, two short geometric runs and one complex
    multiply per element. The gradient is analytic (:class:`Powers`).
    """
    if rate.requires_grad and not _one_exp(rate, count):
        return Powers.apply(rate, count, scale, offset)
    return _powers(rate, count, scale, offset, rdt, dev)


def powers_laid_out(
    rate: Tensor, count: int, scale: int, offset: int, rdt, dev, order: tuple[int, ...]
) -> Tensor:
    """``powers(...).permute(order)``, contiguous: computed in that memory order.

    A prepared stream stores its hoisted tables in the order its per-chunk matmuls read
    them; writing a factorised run's outer product there directly saves the copy (a pass
    over the table and, from 32 MiB on, its page faults): the two 128 MiB tables of a
    ``full`` (8, 64, 64, 16) stream at chunks of 256, prepare 253 -> 136 ms; written into
    huge-page memory (:func:`~contractssm.codegen.memory.empty`) from factors copied into the
    table's order, 137 -> 60 ms. Small runs (one exp, or one geometric sequence) are
    computed and copied as before.
    """
    if not _factorised(rate, count):
        return powers(rate, count, scale, offset, rdt, dev).permute(order).contiguous()
    outer, inner, start = _factors(rate, count, scale, offset)
    coarse, fine = outer.shape[-2], inner.shape[-1]
    # The count axis (last, index ndim-1) becomes (coarse, fine) at its place in `order`.
    last = rate.dim()
    split = [a for i in order for a in ((last, last + 1) if i == last else (i,))]
    shape = [(*rate.shape, coarse, fine)[a] for a in split]
    out = memory.empty(shape, outer.dtype, outer.device)
    # Both factors copied into the table's order first (each is 1/fine or 1/coarse of it):
    # the broadcast product then reads them unit-strided, where the permuted views gathered.
    torch.mul(outer.permute(split).contiguous(), inner.permute(split).contiguous(), out=out)
    at = order.index(last)
    out = out.flatten(at, at + 1)
    return out if coarse * fine == count else out.narrow(at, start, count).contiguous()


def _factorised(rate: Tensor, count: int) -> bool:
    """Whether a run is built as the outer product of two short runs (:func:`_factors`).

    Long runs always are; short ones too when the table is large (``FACTOR_MIN_ELEMENTS``):
    a geometric run's cumulative product, its concatenation and its start factor each write
    a full table, and from a few MiB every fresh table also pays its page faults; the outer
    product writes one. Measured (65536 states, ``full`` at 64 x 64 x 16): 64 powers laid out
    for a stream's matmul 38.5 -> 5.2 ms; ``full`` (8, 64, 1024) kernel mode, whose kernel
    factor has 32 powers, fwd+bwd 216 -> 181 ms, (8, 64, 4096) 853 -> 805 ms. At 16 powers
    the outer product of 4 x 4 measured no faster (a stream's prepare 1.02-1.07x).
    """
    return count > FACTOR_POWERS or (count >= 32 and rate.numel() * count >= FACTOR_MIN_ELEMENTS)


def _one_exp(rate: Tensor, count: int) -> bool:
    """Whether a run is small enough for one exp call (its autograd is two cheap ops)."""
    return count <= FACTOR_POWERS and rate.numel() * count < GEOMETRIC_MIN_ELEMENTS


class Powers(torch.autograd.Function):
    """:func:`powers` with its gradient in closed form.

    ``d exp(rate tau) / d rate = tau exp(rate tau)``, so (PyTorch's convention for complex
    inputs) ``grad_rate = sum_tau tau * conj(V[tau]) * grad[tau]``: one product and a weighted
    sum over the run. Autograd through the construction instead replays the cumulative
    products (``cumprod``'s backward divides, flips and sums), the concatenations and the
    polar form of every factor.
    """

    @staticmethod
    def forward(ctx, rate: Tensor, count: int, scale: int, offset: int) -> Tensor:
        """The run of powers; saves it for the backward."""
        out = _powers(rate, count, scale, offset, rate.real.dtype, rate.device)
        ctx.save_for_backward(out)
        ctx.count, ctx.scale, ctx.offset = count, scale, offset
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        """``sum_tau tau * conj(V) * grad`` over the run."""
        (out,) = ctx.saved_tensors
        tau = ctx.offset + ctx.scale * torch.arange(
            ctx.count, device=out.device, dtype=out.real.dtype
        )
        # (grad * conj V) against tau: one real matrix-vector product over (Re, Im) pairs.
        pairs = torch.view_as_real(grad * out.conj()).transpose(-1, -2)  # (..., 2, count)
        d_rate = torch.view_as_complex(torch.matmul(pairs, tau).contiguous())
        return d_rate, None, None, None


def _powers(rate: Tensor, count: int, scale: int, offset: int, rdt, dev) -> Tensor:
    if _one_exp(rate, count):
        # Small: one exp call beats three ops.
        tau = offset + scale * torch.arange(count, device=dev, dtype=rdt)
        return cexp(rate.unsqueeze(-1) * tau)
    if not _factorised(rate, count):
        if scale < 0:  # a falling run is the rising one from its last exponent, reversed
            return _powers(rate, count, -scale, offset + scale * (count - 1), rdt, dev).flip(-1)
        return cexp(rate * offset).unsqueeze(-1) * _geometric(cexp(rate * scale), count)
    outer, inner, start = _factors(rate, count, scale, offset)
    return (outer * inner).flatten(-2)[..., start : start + count]


def _factors(rate: Tensor, count: int, scale: int, offset: int) -> tuple[Tensor, Tensor, int]:
    """The two runs of a factorised ``a^(offset + scale t)``, and where the run starts.

    ``(..., coarse, 1)`` and ``(..., 1, fine)`` tensors whose broadcast product, flattened, holds
    the run at ``[start, start + count)`` (``coarse * fine >= count``). Both factors are
    decaying geometric runs (exponents >= 0 wherever the run's are): a rising run
    (``scale >= 0``) is ``a^(offset + scale fine g) * a^(scale h)`` with ``t = fine g + h``
    (``start`` 0, the padding at the end); a falling one is read backwards from its smallest
    exponent, ``base = offset + scale (count - 1)``: ``a^(base + |scale| (fine (coarse - 1 - g)
    + fine - 1 - h))``, both factors reversed and the padding in front. Built forwards, a
    falling run's factors would grow: ``a^(-16 * 15)`` overflows float32 once ``Re(rate) <
    -0.37`` while every product is at most 1 (inf * 0 = NaN in the stream's state powers).
    """
    coarse, fine = powers_split(count)
    if scale >= 0:
        first, step, start = offset, scale, 0
    else:
        first, step, start = offset + scale * (count - 1), -scale, coarse * fine - count
    outer = cexp(rate * first).unsqueeze(-1) * _geometric(cexp(rate * (step * fine)), coarse)
    inner = _geometric(cexp(rate * step), fine)
    if scale < 0:
        outer, inner = outer.flip(-1), inner.flip(-1)
    return outer.unsqueeze(-1), inner.unsqueeze(-2), start


def vandermonde_real(
    rate: Tensor,
    weight: Tensor,
    runs: tuple[tuple[int, int, int], tuple[int, int, int]],
    weighting: str,
    equation: str,
) -> Tensor:
    """``Re(einsum(equation, V_a, einsum(weighting, V_b, weight)))``, a factorised kernel.

    ``V_a`` and ``V_b`` are :func:`powers` of ``rate`` (``runs``: each one's ``(count,
    scale, offset)``), laid out as the rate's axes then the run's; ``weighting`` multiplies
    the real ``weight`` into ``V_b`` (a broadcast product) and ``equation`` contracts the
    states: the Vandermonde kernel ``K[.., G, H] = Re sum_s W a^(fine G) a^H`` (see
    ``codegen.fuse.fuse_vandermonde``). One :class:`VandermondeReal` node whose backward
    is two contractions of the kernel's gradient against ``conj(V_b)`` and ``tau_b
    conj(V_b)``, then sums over the small factor ``V_a``; autograd through the four steps
    formed and conjugate-copied every gradient table instead.
    """
    return VandermondeReal.apply(rate, weight, runs, weighting, equation)


class VandermondeReal(torch.autograd.Function):
    """:func:`vandermonde_real` with its gradient in closed form.

    With ``R_1[S, g] = sum_h dK conj(V_b)`` and ``R_2 = sum_h dK tau_b conj(V_b)`` (``S`` the
    rate's axes, ``dK`` broadcast over the states it sums): ``grad_W = Re sum_g conj(V_a)
    R_1`` (summed over the states ``W`` lacks) and ``grad_rate = W sum_g conj(V_a) (tau_a
    R_1 + R_2)``, the chain rule through :class:`Powers` of both runs in PyTorch's convention.
    Saves both runs (not the weighted one, nor its stacked copy).
    """

    @staticmethod
    def forward(ctx, rate, weight, runs, weighting, equation):
        """The kernel; saves the two runs of powers and the weight."""
        rdt, dev = rate.real.dtype, rate.device
        v_a = _powers(rate, *runs[0], rdt, dev)
        v_b = _powers(rate, *runs[1], rdt, dev)
        ctx.save_for_backward(v_a, v_b, weight)
        ctx.runs, ctx.weighting, ctx.equation = runs, weighting, equation
        return einsum_real(equation, v_a, einsum(weighting, v_b, weight))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        """Two contractions of ``grad`` against the weighted run, then sums over the other."""
        v_a, v_b, weight = ctx.saved_tensors
        terms, out = ctx.equation.split("->")
        a_axes = terms.split(",")[0]
        b_axes, w_axes = ctx.weighting.split("->")[0].split(",")
        states, g, h = a_axes[:-1], a_axes[-1], b_axes[-1]
        tau_a, tau_b = (
            offset + scale * torch.arange(count, device=grad.device, dtype=grad.dtype)
            for count, scale, offset in ctx.runs
        )
        kept = "".join(a for a in states if a in out)
        summed = "".join(a for a in states if a not in out)
        # Both contractions as one batched matmul over the kept states: conj(V_b) and tau_b
        # conj(V_b) on a new axis y, written once in the order the matmul reads them.
        y, z = _spare_letters(ctx.equation + ctx.weighting, 2)
        order = kept + h + summed
        span = [1] * len(order)
        span[len(kept)] = -1
        conj_b, tau_b = _aligned(v_b, b_axes, order), tau_b.view(span)
        if torch.compiler.is_compiling():  # compiled code takes no strided out=
            conj_b = torch.conj_physical(conj_b)
            q = torch.stack([conj_b, conj_b * tau_b], dim=-1)
        else:
            q = torch.empty((*conj_b.shape, 2), dtype=v_b.dtype, device=v_b.device)
            torch.conj_physical(conj_b, out=q[..., 0])
            torch.mul(q[..., 0], tau_b, out=q[..., 1])
        r = torch.einsum(
            f"{out},{order}{y}{z}->{kept}{g}{summed}{y}{z}", grad, torch.view_as_real(q)
        )
        if r.stride(-1) != 1 or any(st % 2 for st in r.stride()[:-1]):
            r = r.contiguous()  # einsum returned a view no complex view can be taken of
        r = torch.view_as_complex(r)  # (kept, g, summed, y): R_1 and R_2
        t = torch.conj_physical(_aligned(v_a, a_axes, kept + g + summed)).unsqueeze(-1) * r
        at = len(kept)  # the g axis
        span = [1] * (len(states) + 1)
        span[at] = -1
        x1 = t[..., 0].sum(at)
        x2 = t[..., 1].sum(at) + (t[..., 0] * tau_a.view(span)).sum(at)
        x1, x2 = (_aligned(x, kept + summed, states) for x in (x1, x2))
        d_rate = d_weight = None
        if ctx.needs_input_grad[0]:
            d_rate = x2 * _aligned(weight, w_axes, states)
        if ctx.needs_input_grad[1]:
            d_weight = torch.einsum(f"{states}->{w_axes}", x1.real)
        return d_rate, d_weight, None, None, None


def _spare_letters(used: str, count: int) -> str:
    """``count`` axis letters that do not occur in ``used``."""
    return "".join([c for c in "YZXWVUQRPONMLKJI" if c not in used][:count])


def chunk_scan(rate: Tensor, states: Tensor, chunk: int) -> Tensor:
    """Carried chunk states: ``out[..., k] = sum_{p < k} a^(chunk (k - 1 - p)) states[..., p]``.

    ``rate`` is broadcast against ``states`` without its last (chunk) axis, ``a = exp(rate)``.
    On CPUs (and for large chunk states anywhere, see
    :func:`~contractssm.planner.steps.sequential_scan`) the states are scanned one chunk at a
    time, ``out[k] = a^chunk out[k-1] + states[k-1]``, by :class:`SequentialScan`. Elsewhere
    small ones take a Hillis-Steele scan, ``ceil(log2 K)`` shifted multiply-adds with the
    decays ``a^(chunk 2^i)`` computed directly (not by repeated squaring), then a shift by one
    chunk makes it exclusive: fewer, larger ops, but each level rewrites every state.
    Straight-line either way: the number of ops is fixed by the shape.
    """
    count = states.shape[-1]
    if sequential_scan(states.device.type, states.numel() // count):
        return SequentialScan.apply(rate, states, chunk)
    h = states
    step = 1
    while step < count:
        decay = cexp(rate * (chunk * step)).unsqueeze(-1)
        h = torch.cat([h[..., :step], h[..., step:] + decay * h[..., :-step]], dim=-1)
        step *= 2
    return torch.nn.functional.pad(h[..., :-1], (1, 0))


class SequentialScan(torch.autograd.Function):
    """:func:`chunk_scan` one chunk at a time, with its own backward.

    Forward: ``h[0] = 0``, ``h[k] = d h[k-1] + s[k-1]`` with ``d = exp(rate chunk)``, one
    ``addcmul`` per chunk on chunk-major rows. Backward, the same recurrence run in reverse
    with ``conj(d)``: ``ds[K-1] = 0``, ``ds[k-1] = g[k] + conj(d) ds[k]``; and ``d rate =
    chunk conj(d) sum_k ds[k] conj(h[k])``. Autograd through the loop would record two nodes
    per chunk and, through the log-depth scan, a concatenation and zero-filled slice gradients
    per level: measured 2-3.6x slower forward plus backward on chunk states of 4096 to 65536
    elements (16 to 256 chunks), equal at 1024 chunks of 256.
    """

    @staticmethod
    def forward(ctx, rate: Tensor, states: Tensor, chunk: int) -> Tensor:
        """Scan; saves the decay and the carried states (chunk-major)."""
        decay = cexp(rate * chunk)
        rows = states.movedim(-1, 0).contiguous().unbind(0)
        carried = [torch.zeros_like(rows[0])]
        for row in rows[:-1]:
            carried.append(torch.addcmul(row, decay, carried[-1]))
        # Stacked chunk-last (one strided write): a chunk-major result returned as a view
        # would reach the consumers' bmm (and send its gradient back) matrix by matrix.
        out = torch.stack(carried, dim=-1)
        ctx.save_for_backward(decay, out)
        ctx.chunk, ctx.rate_shape = chunk, rate.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        """The reverse scan for the states' gradient, one reduction for the rate's."""
        decay, out = ctx.saved_tensors
        rows = grad.movedim(-1, 0).contiguous().unbind(0)
        back = decay.conj()
        acc = [torch.zeros_like(rows[0])]  # ds[K-1]
        for row in rows[:0:-1]:  # ds[k-1] = g[k] + conj(d) ds[k], k = K-1 .. 1
            acc.append(torch.addcmul(row, back, acc[-1]))
        d_states = torch.stack(acc[::-1], dim=-1)
        d_rate = None
        if ctx.needs_input_grad[0]:
            d_decay = (d_states * out.conj()).sum(-1)
            d_rate = (d_decay * back * ctx.chunk).sum_to_size(ctx.rate_shape)
        return d_rate, d_states, None


def closed_form(rate: Tensor, n: int, length: int, rdt, dev) -> Tensor:
    """The length-``n`` DFT of ``exp(rate * tau)`` for ``tau < length``, in closed form.

    ``sum_tau (a w^-f)^tau = (1 - a^L w^(-fL)) / (1 - a w^-f)`` with ``w = exp(2 pi i / n)``.
    """
    f = torch.arange(n, device=dev, dtype=rdt)
    cdt = complex_of(rdt)
    # Reduce f*L modulo n before scaling: keeps the phase exact for long sequences.
    phase_l = torch.remainder(f * length, n) * (-2 * math.pi / n)
    w_l = torch.polar(torch.ones_like(phase_l), phase_l).to(cdt)
    w_1 = torch.polar(torch.ones_like(f), f * (-2 * math.pi / n)).to(cdt)
    a = cexp(rate).unsqueeze(-1)
    a_l = cexp(rate * length).unsqueeze(-1)
    return (1 - a_l * w_l) / (1 - a * w_1)


def hermitian(spectrum: Tensor, n: int) -> Tensor:
    """Rfft bins of the real part of a signal whose full length-``n`` DFT is ``spectrum``."""
    mirrored = torch.roll(torch.flip(spectrum, [-1]), 1, -1)  # spectrum[..., (n - f) % n]
    half = n // 2 + 1
    return 0.5 * (spectrum[..., :half] + mirrored[..., :half].conj())


def toeplitz(kernel: Tensor, dev) -> Tensor:
    """``out[..., t, j] = kernel[..., t - j]`` for ``j <= t``, else 0.

    Sliding windows over the kernel left-padded with zeros (``unfold``), reversed: a gather
    by a lag index costs 3-4x more forward+backward (its gradient is an index_put scatter).
    """
    n = kernel.shape[-1]
    padded = torch.nn.functional.pad(kernel, (n - 1, 0))
    # windows[..., t, i] = padded[..., t + i] = kernel[..., t + i - (n - 1)]; i = n - 1 - j
    return padded.unfold(-1, n, 1).flip(-1)


def chunk_matrix(weighted: Tensor, powers: Tensor, n_groups: int) -> Tensor:
    """The real matrix of one chunk per channel group: ``[u | h] -> [z | h']``.

    A depthwise chunk of ``T`` steps is linear in its input ``u`` (``T`` reals) and initial
    state ``h`` (``S`` complex, as ``(Re, Im)`` pairs): with ``a^t`` the powers and ``w`` the
    kernel weights, ``z[t] = sum_j k[t - j] u[j] + Re sum_s w a^(t+1) h[s]`` (the kernel
    ``k[t] = Re sum_s w a^t``) and ``h'[s] = a^T h[s] + sum_j a^(T-1-j) u[j]``. Everything is
    read from the one run ``a^t``, ``t = 0..T``, and its weighted copy. Rows are the inputs
    ``[j | (s, Re/Im)]``, columns the outputs ``[t | (s, Re/Im)]``, so a chunk is one matmul,
    :func:`chunk_apply`.

    Args: ``weighted`` (``w a^t``) and ``powers`` (``a^t``), (G.., S.., T + 1) complex, the
    ``n_groups`` group axes first. Returns (G.., T + 2S, T + 2S).
    """
    steps = powers.shape[-1] - 1
    groups = powers.shape[:n_groups]
    weighted = weighted.reshape(*groups, -1, steps + 1)
    powers = powers.reshape(*groups, -1, steps + 1)
    states = powers.shape[-2]
    kernel = weighted[..., :steps].real.sum(-2)
    grow, fade, decay = weighted[..., 1:], powers[..., :steps].flip(-1), powers[..., steps]
    # The four blocks are written into one matrix (concatenations copied each block twice).
    out = kernel.new_empty((*groups, steps + 2 * states, steps + 2 * states))
    # u[j] -> z[t]: the Toeplitz transposed, k[t - j] for t >= j: the windows of the kernel
    # left-padded with zeros, rows reversed (windows[n - 1 - j, t] = k[t - j]).
    windows = torch.nn.functional.pad(kernel, (steps - 1, 0)).unfold(-1, steps, 1)
    if torch.compiler.is_compiling() or kernel.requires_grad:  # no strided out= there
        out[..., :steps, :steps] = windows.flip(-2)
    else:  # gathered straight into the block: no flipped copy (1 MiB fresh at 4 x 256 x 256)
        reverse = torch.arange(steps - 1, -1, -1, device=kernel.device)
        torch.index_select(windows, -2, reverse, out=out[..., :steps, :steps])
    # u[j] -> h'[s]: (Re, Im) of the fade a^(T-1-j)
    out[..., :steps, steps:] = torch.view_as_real(fade.transpose(-1, -2)).flatten(-2)
    # (Re h, Im h)[s] -> z[t]: Re(g h) = Re g Re h - Im g Im h
    out[..., steps:, :steps] = torch.stack([grow.real, -grow.imag], -2).flatten(-3, -2)
    # (Re h, Im h)[s] -> (Re h', Im h')[s]: multiplication by a^T as a 2 x 2 real block
    dr, di = decay.real, decay.imag
    block = torch.stack([torch.stack([dr, di], -1), torch.stack([-di, dr], -1)], -2)
    n = block.dim()
    diagonal = torch.diag_embed(block.permute(*range(n - 3), n - 2, n - 1, n - 3))
    out[..., steps:, steps:] = diagonal.permute(*range(n - 3), n - 1, n - 3, n, n - 2).reshape(
        *groups, 2 * states, 2 * states
    )
    return out


def chunk_apply(u: Tensor, h0: Tensor, matrix: Tensor) -> Tensor:
    """``[u | h0] @ matrix`` per channel group: ``[z | h']`` of a chunk, (B.., G.., T + 2S).

    ``u`` (B.., G.., T) real, ``h0`` (B.., G.., S..) complex, ``matrix`` from
    :func:`chunk_matrix`. The batch is the rows of each group's matmul (a row vector at batch
    1, the fast orientation on CPU); the result is returned as a (transposed) view. At batch 1
    the rows are read as they lie, (G, 1, W): two transposes and their dispatch less per chunk.
    """
    count, width = math.prod(matrix.shape[:-2]), matrix.shape[-1]
    joined = torch.cat([u, torch.view_as_real(h0).reshape(*u.shape[:-1], -1)], -1)
    matrices = matrix if matrix.dim() == 3 else matrix.reshape(count, width, width)
    if joined.numel() == count * width:  # batch 1: (G, 1, W) is the same memory, no transposes
        return torch.matmul(joined.reshape(count, 1, width), matrices).reshape(joined.shape)
    rows = joined.reshape(-1, count, width).transpose(0, 1)
    return torch.matmul(rows, matrices).transpose(0, 1).reshape(joined.shape)


def chunk_state(joined: Tensor, steps: int, shape: tuple[int, ...]) -> Tensor:
    """The final state of :func:`chunk_apply`'s result: its last columns as complex ``shape``."""
    tail = joined[..., steps:]
    if steps % 2 or joined.stride(-2) % 2:
        tail = tail.contiguous()
    return torch.view_as_complex(tail.reshape(*shape, 2))


def chunk(x: Tensor, size: int) -> Tensor:
    """Split the last (time) axis into chunks of ``size``, zero-padding the end."""
    n = x.shape[-1]
    chunks = -(-n // size)
    padded = torch.nn.functional.pad(x, (0, chunks * size - n)) if chunks * size != n else x
    return padded.reshape(*x.shape[:-1], chunks, size)


def no_autocast(device_type: str):
    """``torch.autocast(device_type, enabled=False)`` where autocast is on, else a no-op context.

    The executors run in their plan's dtype. Entering an autocast context costs ~5.6 us on
    this CPU, a null one ~0.5 us: 3% of a ``neck`` chunk of 256 steps at batch 1 (~180 us).
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def to_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, skipping the dispatch when it is already that (1.4 us -> 0.15 us)."""
    return t if t.dtype == dtype else t.to(dtype)


def as_complex(t: Tensor, real_dtype: torch.dtype) -> Tensor:
    """``t`` as the complex dtype matching ``real_dtype`` (real tensors become complex)."""
    return to_dtype(t, complex_of(real_dtype))


def complex_state(h: Tensor, real_dtype: torch.dtype) -> Tensor:
    """A state stored as real ``(..., 2)`` pairs, viewed as complex in ``real_dtype``'s kind."""
    h = to_dtype(h, real_dtype)
    return torch.view_as_complex(h if h.is_contiguous() else h.contiguous())


def spectral_product(
    equation: str, p: Tensor, q: Tensor, laid_out: tuple[bool, bool] = (False, False)
) -> Tensor:
    """``einsum(equation, p, q)`` of two spectra whose last axis is the frequency.

    A product that contracts channels is one complex matmul per frequency. Read in place the
    matrices have the frequency stride, which CPU complex ``bmm`` copies one matrix at a time
    (tens of thousands of copies at 2049 frequencies); frequency-major copies of both
    operands cost two passes instead: ~3x faster for 32 x 32 channels. The product is
    transposed back (see :func:`_product`). An operand flagged in ``laid_out`` is already
    frequency-major (:func:`frequency_major`: a prepared stream's kernel spectrum, copied once).
    """
    mixed = _spectral_mix(equation, p, q, laid_out)
    if mixed is not None:
        return mixed
    major = sums_channels(equation)
    p, q = (t if done else _laid_out(t, major) for t, done in zip((p, q), laid_out, strict=True))
    return _product(equation, p, q, major)


#: The fewest signal rows ``Y`` for which :func:`spectral_product` pads a channel mix: the
#: zero row adds ``1 / Y`` to the product's matmul (at ``Y = 1``, twice the work: ``full``
#: (1, 256, 256) chunks of 256 measured 6.8 -> 9.3 ms per product).
MIX_MIN_ROWS = 8


def _spectral_mix(equation: str, p: Tensor, q: Tensor, laid_out: tuple[bool, bool]):
    """:func:`spectral_product` of a channel mix ``XSF,YSF->YXF`` with a padded product.

    The frequency-major product ``(F, Y, X)`` is transposed back for the inverse FFT; where
    its rows lie a multiple of 2 KiB apart (:func:`_aliasing`) that transpose is a plain copy
    reading rows in the same cache sets. As :func:`_mix_forward` does, the signal's spectrum is
    laid out with a zero row (:func:`_padded_frequency_major`), so the product has one row
    more, and the transpose reads it in blocks. Measured on prepared ``full`` streams at
    chunks of 256, alternated in one process with kernel calls between (15 rounds): (32, 32,
    2048) 0.962x and 0.952x (two processes), (8, 64, 1024) 0.933x; the product's plain copy
    back took 0.57 ms per chunk there.

    The result is a :func:`~contractssm.codegen.memory.kept` buffer (reused only once
    nothing holds it); the temporaries are scratch, read at once. ``None`` (the plain path)
    for other layouts, a laid-out signal (``laid_out[1]``), fewer than
    :data:`MIX_MIN_ROWS` signal rows, rows that do not alias, mixed dtypes, while autograd
    records either operand (``out=`` has no gradient) and while compiling.
    """
    axes = _mix_axes(equation)
    if axes is None or laid_out[1] or p.dtype != q.dtype or torch.compiler.is_compiling():
        return None
    if torch.is_grad_enabled() and (p.requires_grad or q.requires_grad):
        return None
    nx, ny, _ = axes
    freqs = q.shape[-1]
    x_shape = tuple(p.shape[1 : 1 + nx] if laid_out[0] else p.shape[:nx])
    y_shape = tuple(q.shape[:ny])
    x, y = math.prod(x_shape), math.prod(y_shape)
    s = math.prod(q.shape[ny:-1])
    if y < MIX_MIN_ROWS or not _pads_apart(y, x, q.element_size()):
        return None
    if laid_out[0]:  # (F, X..., S...), as frequency_major lays it out
        kernel = p.reshape(freqs, x, s)
    else:
        kernel = _frequency_major(p.reshape(x, s, freqs), "spectral_product.kernel")
    signal = _padded_frequency_major(q.reshape(y, s, freqs), "spectral_product.signal")
    product = _mix_product(
        signal, kernel.transpose(1, 2), y, x, conj=False, kept_slot="spectral_product"
    )
    return product.view(*y_shape, *x_shape, freqs)


def frequency_major(spectrum: Tensor) -> Tensor:
    """``spectrum`` laid out as :func:`spectral_product` reads a channel-summing operand.

    Its last (frequency) axis moved first, copied: a constant read by every chunk of a stream
    is laid out once (a ``full`` (8, 64, 64) chunk's product 2.9 -> 1.2 ms).
    """
    return _frequency_major(spectrum)


def sums_channels(equation: str) -> bool:
    """Whether a two-operand product with the frequency last in every term sums some axis."""
    ins, out = equation.split("->")
    left, right = ins.split(",")
    if not (out and left and right):
        return False
    return set(left) | set(right) != set(out) and left[-1] == right[-1] == out[-1]


def _frequency_first(equation: str) -> str:
    """``equation`` with the last axis of every term moved first."""
    ins, out = equation.split("->")
    terms = [*ins.split(","), out]
    moved = [t[-1] + t[:-1] for t in terms]
    return f"{','.join(moved[:-1])}->{moved[-1]}"


def _laid_out(
    spectrum: Tensor, major: bool, slot: str | None = None, conj: bool = False, keep: bool = False
) -> Tensor:
    """``spectrum`` as :func:`_product` reads it: frequency-major (copied) or as it is.

    With a ``slot``, the copy is :func:`~contractssm.codegen.memory.scratch` memory, or with
    ``keep`` :func:`~contractssm.codegen.memory.kept` memory (for a copy saved for the
    backward). With ``conj``, conjugated: by the copy itself, or in place (``spectrum`` is
    then overwritten).
    """
    if major:
        return _frequency_major(spectrum, slot, conj, keep)
    return spectrum.conj_physical_() if conj else spectrum


def _product(
    equation: str, p: Tensor, q: Tensor, major: bool, slot: str | None = None, conj: bool = False
) -> Tensor:
    """``einsum(equation, ...)`` of two :func:`_laid_out` spectra, frequency last, contiguous.

    A frequency-major product is transposed back before the inverse FFT reads it: the FFT of
    lines strided by the channel count costs ~4x an FFT of contiguous lines (MKL c2r of a
    (1024, 2049) spectrum: 9.6 ms strided, 2.4 ms contiguous plus 1.9 ms for the transpose).
    With a ``slot`` (for an inverse FFT that reads the result at once), that transpose, or an
    elementwise product, is written into scratch memory. With ``conj``, the product is
    conjugated (by the transpose back, at no extra pass: (1024, 2049) 3.65 -> 2.93 ms).
    """
    if major:
        first = _frequency_first(equation)
        product = None if slot is None else _matmul_into(first, p, q, f"{slot}.matmul")
        if product is None:
            product = torch.einsum(first, p, q)
        return _transposed(product.reshape(product.shape[0], -1), slot, conj).reshape(
            *product.shape[1:], product.shape[0]
        )
    ins, out = equation.split("->")
    left, right = ins.split(",")
    if slot is None or set(left) | set(right) != set(out):
        product = einsum(equation, p, q)
    else:
        product = _broadcast_product(p, left, q, right, out, slot)
    return product.conj_physical_() if conj else product


def _matmul_into(equation: str, p: Tensor, q: Tensor, slot: str) -> Tensor | None:
    """``einsum(equation, p, q)`` as one ``bmm`` written into scratch memory, or ``None``.

    For a product read once, at once, by the transpose after it (:func:`_product`): a fresh
    16 MiB product page-faults on most calls (see :mod:`~contractssm.codegen.memory`): the
    three products of ``full`` (32, 32, 2048) in scratch took its FFTConv forward+backward
    80.7 -> 58.5 and 80.9 -> 71.6 ms (21 interleaved rounds, two processes). Taken when
    the output is the shared (batch) axes, leading every term in one order, then one
    operand's free axes and the other's, so the ``bmm`` result is the product laid out (the
    operands may be transposed views: ``bmm`` reads them in place); otherwise, for mixed
    dtypes and while compiling (scratch is fresh memory there), ``None``.
    """
    if torch.compiler.is_compiling() or p.dtype != q.dtype:
        return None
    ins, out = equation.split("->")
    left, right = ins.split(",")
    shared = "".join(a for a in out if a in left and a in right)
    summed = "".join(a for a in left if a in right and a not in out)
    if not (shared and summed and all(t.startswith(shared) for t in (left, right, out))):
        return None
    sizes = dict(zip(left, p.shape, strict=True)) | dict(zip(right, q.shape, strict=True))
    for a, a_axes, b, b_axes in ((p, left, q, right), (q, right, p, left)):
        a_free = "".join(x for x in a_axes if x not in b_axes)
        b_free = "".join(x for x in b_axes if x not in a_axes)
        if out != shared + a_free + b_free or not (a_free and b_free):
            continue
        batch, inner = math.prod(sizes[x] for x in shared), math.prod(sizes[x] for x in summed)
        rows, cols = math.prod(sizes[x] for x in a_free), math.prod(sizes[x] for x in b_free)
        lhs = _aligned(a, a_axes, shared + a_free + summed).reshape(batch, rows, inner)
        rhs = _aligned(b, b_axes, shared + summed + b_free).reshape(batch, inner, cols)
        result = memory.scratch(slot, (batch, rows, cols), p.dtype, p.device)
        torch.bmm(lhs, rhs, out=result)
        return result.view([sizes[x] for x in out])
    return None


def _frequency_major(
    t: Tensor, slot: str | None = None, conj: bool = False, keep: bool = False
) -> Tensor:
    """``t`` with its last (frequency) axis moved first, copied (one 2-D transpose)."""
    m = _transposed(t.reshape(-1, t.shape[-1]), slot, conj, keep)
    return m.reshape(t.shape[-1], *t.shape[:-1])


#: The most rows of one block of :func:`_transposed`, and the most bytes of input it reads.
TRANSPOSE_BLOCK = 512
TRANSPOSE_BLOCK_BYTES = 6 * 2**20
#: An input of at most ``TRANSPOSE_PLAIN_BYTES`` whose row stride is a multiple of
#: ``TRANSPOSE_ALIASING_BYTES`` (rows falling into the same cache sets) is copied at once.
TRANSPOSE_ALIASING_BYTES = 2048
TRANSPOSE_PLAIN_BYTES = 8 * 2**20


def _transpose_block(rows: int, cols: int, itemsize: int) -> int | None:
    """Rows per block for :func:`_transposed` (``None``: one plain copy).

    ``rows`` rows lie ``cols`` elements (of ``itemsize`` bytes) apart.

    A block's columns are read down its rows. Where the rows lie a multiple of 2 KiB apart
    those reads fall into a few cache sets and a plain copy of an input of up to 8 MiB is
    faster: complex64 (257, 1024) 0.46 -> 0.24 ms, (1025, 512) 0.98 -> 0.47 ms, (4097, 256)
    2.9 -> 1.0 ms against blocks of 128 rows. A larger one is not: ``full`` (32, 32, 2048)
    transposes its (2049, 1024) products back from memory the ``bmm`` just wrote, 3.7-4.4 ms
    in blocks against 4.7 ms at once. Otherwise the largest power-of-two block of at
    most :data:`TRANSPOSE_BLOCK` rows and :data:`TRANSPOSE_BLOCK_BYTES`, and at most half
    the rows, was fastest: (1024, 2049) 1.18 -> 0.97 ms (256 rows), (4096, 257) 0.88 ->
    0.39 ms (512), (1024, 257) 0.19 -> 0.09 ms (512), (4096, 1025) 3.37 -> 2.50 ms (512).
    """
    if _aliasing(cols, itemsize) and rows * cols * itemsize <= TRANSPOSE_PLAIN_BYTES:
        return None
    limit = min(TRANSPOSE_BLOCK, rows // 2, TRANSPOSE_BLOCK_BYTES // (cols * itemsize))
    # Blocks of a few rows cost a dispatched copy each for nothing: small inputs are copied.
    return None if limit < min(32, TRANSPOSE_BLOCK) else 1 << (limit.bit_length() - 1)


def _aliasing(cols: int, itemsize: int) -> bool:
    """Whether rows ``cols`` elements apart lie a multiple of 2 KiB apart (same cache sets)."""
    return (cols * itemsize) % TRANSPOSE_ALIASING_BYTES == 0


def _transposed(
    m: Tensor, slot: str | None = None, conj: bool = False, keep: bool = False
) -> Tensor:
    """The contiguous transpose of the 2-D ``m``, copied a block of rows at a time.

    ``m.t().contiguous()`` walks the whole input once per output row; blocks of rows keep
    the reads in cache (:func:`_transpose_block` says how many rows, or one plain copy).
    Measured on a 2-core EPYC, complex64: (1024, 2049) 1.95 -> 1.28 ms, (512, 4097) 1.99 ->
    0.98 ms, (16384, 1025) 74 -> 52 ms; FFTConv of ``full`` (32, 32, 2048) forward+backward
    with the transposes back 67 -> 48 ms (21 interleaved rounds). With a ``slot`` (never
    under autograd) the transpose is written into scratch memory, or with ``keep`` into
    :func:`~contractssm.codegen.memory.kept` memory. With ``conj``, each block is conjugated
    as it is copied (the same time as a plain copy).
    """
    rows, cols = m.shape
    block = _transpose_block(rows, m.stride(0), m.element_size())
    if m.requires_grad or (block is None and slot is None):
        out = m.t().contiguous()
        return torch.conj_physical(out) if conj else out
    if slot is None:
        out = torch.empty(cols, rows, dtype=m.dtype, device=m.device)
    elif keep:
        out = memory.kept(slot, (cols, rows), m.dtype, m.device)
    else:
        out = memory.scratch(slot, (cols, rows), m.dtype, m.device)
    block = block or rows
    # Compiled code takes no strided out=: there the conjugate is a pass of its own, as it is
    # after one plain copy (a whole-matrix conjugating copy measured 1.5x a copy and an
    # in-place conjugate: (2049, 1024) 6.5 against 4.2 ms).
    fused = conj and block < rows and not torch.compiler.is_compiling()
    for start in range(0, rows, block):
        source = m[start : start + block].t()
        dest = out[:, start : start + block]
        if fused:
            torch.conj_physical(source, out=dest)
        else:
            dest.copy_(source)
    return out.conj_physical_() if conj and not fused else out


class FFTConv(torch.autograd.Function):
    """Causal convolution of real ``kernel`` and ``signal`` through one real FFT.

    ``z = irfft(einsum(equation, rfft(kernel, n), rfft(signal, n)), n)[..., :length]``. The
    gradients are FFT cross-correlations, ``dK[tau] = sum_t dz[t] u[t - tau]`` and
    ``dU[j] = sum_t dz[t] k[t - j]`` (exact because ``n >= 2L - 1`` leaves no wrap-around):
    the output gradient's spectrum against each input's conjugate spectrum.

    Both input spectra are saved for the backward: recomputing them there costs two FFTs
    (13-22% of an elementwise ``dws`` convolution's forward+backward, measured at (8, 64,
    1024) to (8, 64, 4096)) and, for a product that contracts channels (``full``, ``s5``,
    run frequency-major, see :func:`spectral_product`), two transposes as well. The memory
    model counts the spectra as saved. Frequency-major copies are written into
    :func:`~contractssm.codegen.memory.kept` buffers, reused once the backward (or the
    dropped graph) frees them: fresh, they page-faulted on most calls.
    """

    @staticmethod
    def forward(ctx, kernel: Tensor, signal: Tensor, equation: str, n: int, length: int):
        """Convolve; saves both spectra (frequency-major when channels are contracted)."""
        ctx.equation, ctx.n = equation, n
        ctx.major = sums_channels(equation)
        ctx.lengths = (kernel.shape[-1], signal.shape[-1])
        ctx.mix = _padded_mix(equation, kernel, signal, n)
        if ctx.mix is not None:
            return _mix_forward(ctx, kernel, signal, n, length)
        fk = _laid_out(_padded_rfft(kernel, n), ctx.major, "fft_conv.kernel_spectrum", keep=True)
        fu = _laid_out(_padded_rfft(signal, n), ctx.major, "fft_conv.signal_spectrum", keep=True)
        ctx.save_for_backward(fk, fu)
        spectrum = _product(equation, fk, fu, ctx.major, slot="fft_conv.product")
        return torch.fft.irfft(spectrum, n=n)[..., :length]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        """Cross-correlate the output gradient with each input's spectrum."""
        n, (k_len, u_len) = ctx.n, ctx.lengths
        if ctx.mix is not None:
            return (*_mix_backward(ctx, grad, n, k_len, u_len), None, None, None)
        ins, out = ctx.equation.split("->")
        k_axes, u_axes = ins.split(",")
        fk, fu = ctx.saved_tensors
        # conj(g) against the saved spectra, the product conjugated after: equal to g against
        # their conjugates, without conjugate copies of them. The layout is the forward's
        # (whether the forward product sums channels; a backward product may sum the batch).
        g = _laid_out(_padded_rfft(grad, n), ctx.major, slot="fft_conv.gradient", conj=True)

        def correlate(equation, spectrum):
            return _product(equation, g, spectrum, ctx.major, slot="fft_conv.product", conj=True)

        d_kernel = d_signal = None
        if ctx.needs_input_grad[0]:
            d_kernel = correlate(f"{out},{u_axes}->{k_axes}", fu)
            d_kernel = torch.fft.irfft(d_kernel, n=n)[..., :k_len]
        if ctx.needs_input_grad[1]:
            d_signal = correlate(f"{out},{k_axes}->{u_axes}", fk)
            d_signal = torch.fft.irfft(d_signal, n=n)[..., :u_len]
        return d_kernel, d_signal, None, None, None


class _Mix(NamedTuple):
    """Sizes of a channel mix ``XSF,YSF->YXF`` (see :func:`_padded_mix`)."""

    x: int
    y: int
    s: int
    kernel_shape: tuple[int, ...]  # without the time axis
    signal_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _padded_mix(equation: str, kernel: Tensor, signal: Tensor, n: int) -> _Mix | None:
    """The sizes when :func:`_mix_forward` takes a convolution, else ``None``.

    The channel mix ``XSF,YSF->YXF`` (kernel axes ``X`` then summed ``S``, signal axes ``Y``
    then ``S``, output ``Y`` then ``X``: ``full``'s ``bdF,adF->abF``) whose frequency-major
    product rows alias in cache and a zero row moves them apart (:func:`_pads_apart`), too
    large for one plain copy. (Smaller ones measured no faster forward+backward: ``full``
    (8, 64, 1024), (1025, 8, 64) products, 0.99-1.02x in 3 processes of 21 rounds; the
    backward's products have a zero row too.) Not while compiling (scratch and strided
    ``out=`` are eager-only).
    """
    axes = _mix_axes(equation)
    if axes is None or torch.compiler.is_compiling():
        return None
    nx, ny, _ = axes
    x_shape = tuple(kernel.shape[:nx])
    y_shape = tuple(signal.shape[:ny])
    x, y = math.prod(x_shape), math.prod(y_shape)
    itemsize = 2 * kernel.element_size()  # the spectra are complex
    if not _pads_apart(y, x, itemsize) or (n // 2 + 1) * y * x * itemsize <= TRANSPOSE_PLAIN_BYTES:
        return None
    s = math.prod(kernel.shape[nx:-1])
    return _Mix(x, y, s, tuple(kernel.shape[:-1]), tuple(signal.shape[:-1]), y_shape + x_shape)


def _pads_apart(rows: int, cols: int, itemsize: int) -> bool:
    """Whether ``(F, rows, cols)`` products alias and one zero row more moves them apart.

    See :func:`_aliasing`; the zero row cannot help where one row alone is a multiple of 2 KiB.
    """
    return _aliasing(rows * cols, itemsize) and not _aliasing((rows + 1) * cols, itemsize)


def _mix_axes(equation: str) -> tuple[int, int, int] | None:
    """``(len X, len Y, len S)`` of a channel mix ``XSF,YSF->YXF``, else ``None``.

    Kernel axes ``X`` then summed ``S``, signal axes ``Y`` then ``S``, output ``Y`` then
    ``X``, the frequency last in each (``full``'s ``bdF,adF->abF``).
    """
    ins, out = equation.split("->")
    k_axes, u_axes = ins.split(",")
    if not k_axes[-1] == u_axes[-1] == out[-1]:
        return None
    k_axes, u_axes, out = k_axes[:-1], u_axes[:-1], out[:-1]
    summed = "".join(a for a in k_axes if a in u_axes)
    x_axes = k_axes[: len(k_axes) - len(summed)]
    y_axes = u_axes[: len(u_axes) - len(summed)]
    laid_out = (x_axes + summed, y_axes + summed, y_axes + x_axes) == (k_axes, u_axes, out)
    if not (x_axes and y_axes and summed and laid_out):
        return None
    return len(x_axes), len(y_axes), len(summed)


def _mix_forward(ctx, kernel: Tensor, signal: Tensor, n: int, length: int) -> Tensor:
    """:class:`FFTConv`'s forward of a channel mix (:func:`_padded_mix`), padded products.

    A frequency-major product ``(F, Y, X)`` whose rows lie a multiple of 2 KiB apart is
    transposed back for the inverse FFT at a third of the speed of one whose rows do not
    (``full`` (32, 32, 2048): 3.8 against 1.5 ms per (2049, 1024) product): those reads
    fall into the same cache sets. Each product here is computed with one zero row more
    (its left operand has one, so the ``bmm`` writes ``(F, Y + 1, X)``: 0.15-0.5 ms more per
    product) and read back without it. The signal's spectrum is saved with a zero row after
    its ``Y`` rows; the gradient's gets a zero row and column (:func:`_mix_backward`).
    """
    mix = ctx.mix
    spectrum = _padded_rfft(kernel, n).view(mix.x, mix.s, -1)
    freqs = spectrum.shape[-1]
    fk = _frequency_major(spectrum, "fft_conv.kernel_spectrum", keep=True)
    spectrum = _padded_rfft(signal, n).view(mix.y, mix.s, freqs)
    fu = _padded_frequency_major(spectrum, "fft_conv.signal_spectrum", keep=True)
    ctx.save_for_backward(fk, fu)
    product = _mix_product(fu, fk.transpose(1, 2), mix.y, mix.x, conj=False)
    return torch.fft.irfft(product, n=n)[..., :length].view(*mix.out_shape, length)


def _mix_backward(ctx, grad: Tensor, n: int, k_len: int, u_len: int):
    """The kernel's and the signal's gradients of :func:`_mix_forward`, padded products.

    The gradient's spectrum (conjugated, as in :class:`FFTConv`'s backward) is laid out
    ``(F, Y + 1, X + 1)`` with a zero row and column, so both products have a zero row:
    ``conj(G)^T U`` as ``(F, X + 1, S)`` and ``conj(G) K`` as ``(F, Y + 1, S)``.
    """
    mix = ctx.mix
    fk, fu = ctx.saved_tensors
    spectrum = _padded_rfft(grad, n).view(mix.y, mix.x, -1)
    g = _padded_frequency_major(spectrum, "fft_conv.gradient", conj=True, pad_cols=True)
    d_kernel = d_signal = None
    if ctx.needs_input_grad[0]:
        product = _mix_product(g[:, : mix.y].transpose(1, 2), fu[:, : mix.y], mix.x, mix.s)
        d_kernel = torch.fft.irfft(product, n=n)[..., :k_len].view(*mix.kernel_shape, k_len)
    if ctx.needs_input_grad[1]:
        product = _mix_product(g[:, :, : mix.x], fk, mix.y, mix.s)
        d_signal = torch.fft.irfft(product, n=n)[..., :u_len].view(*mix.signal_shape, u_len)
    return d_kernel, d_signal


def _mix_product(
    lhs: Tensor,
    rhs: Tensor,
    rows: int,
    cols: int,
    conj: bool = True,
    kept_slot: str | None = None,
) -> Tensor:
    """``lhs @ rhs`` per frequency (``lhs`` has one zero row more), transposed back.

    Returns the ``(rows * cols, F)`` spectrum (conjugated with ``conj``) in scratch memory,
    which the inverse FFT reads at once, or with ``kept_slot`` in that
    :func:`~contractssm.codegen.memory.kept` slot.
    """
    freqs = lhs.shape[0]
    product = memory.scratch(
        "fft_conv.product.matmul", (freqs, rows + 1, cols), lhs.dtype, lhs.device
    )
    torch.bmm(lhs, rhs, out=product)
    valid = product.view(freqs, -1)[:, : rows * cols]
    if kept_slot is not None:
        return _transposed(valid, kept_slot, conj, keep=True)
    return _transposed(valid, "fft_conv.product", conj)


def _padded_frequency_major(
    spectrum: Tensor,
    slot: str,
    conj: bool = False,
    keep: bool = False,
    pad_cols: bool = False,
) -> Tensor:
    """The ``(R, C, F)`` ``spectrum`` laid out ``(F, R + 1, C)`` with a zero last row.

    With ``pad_cols`` ``(F, R + 1, C + 1)``, with a zero last column too. Copied in blocks of
    whole rows as :func:`_transposed` copies (``conj``: conjugated as copied), into scratch
    memory or, with ``keep``, :func:`~contractssm.codegen.memory.kept` memory.
    """
    rows, cols, freqs = spectrum.shape
    shape = (freqs, rows + 1, cols + pad_cols)
    alloc = memory.kept if keep else memory.scratch
    out = alloc(slot, shape, spectrum.dtype, spectrum.device)
    out[:, rows].zero_()
    if pad_cols:
        out[:, :, cols].zero_()
    block = _transpose_block(rows * cols, freqs, spectrum.element_size()) or rows * cols
    step = max(1, block // cols)
    for start in range(0, rows, step):
        source = spectrum[start : start + step].permute(2, 0, 1)
        dest = out[:, start : start + step, :cols]
        if conj:
            torch.conj_physical(source, out=dest)
        else:
            dest.copy_(source)
    return out


def _padded_rfft(t: Tensor, n: int) -> Tensor:
    """``torch.fft.rfft(t, n=n)`` of ``t`` zero-padded in scratch memory.

    ``rfft`` pads into a fresh zero-filled tensor; here the pad is a reused buffer (see
    :mod:`~contractssm.codegen.memory`) whose tail alone is zeroed.
    """
    length = t.shape[-1]
    if n <= length:
        return torch.fft.rfft(t, n=n)
    padded = memory.scratch("fft_conv.padded", (*t.shape[:-1], n), t.dtype, t.device)
    padded[..., :length].copy_(t)
    padded[..., length:].zero_()
    return torch.fft.rfft(padded)


def dense_gradient(t: Tensor) -> Tensor:
    """``t``, whose gradient is made contiguous before it flows back through the executor.

    The gradient of ``y.sum()`` or ``y.mean()`` is an expanded scalar (stride 0 on every
    axis); CPU ``bmm`` copies such an operand one matrix at a time, and the chunked and
    direct executors' backward is bmm: ``dws`` (1, 256, 4096), chunk 64, measured 4.7 ms per
    gradient bmm against 1.0 ms on a dense gradient, 44 -> 31 ms forward plus backward. A
    tensor hook (not an autograd Function, whose output users could not modify in place);
    a dense gradient passes through as is. Not for an :class:`FFTConv` output: its backward
    copies the gradient into its zero-padded FFT input anyway (a copy saved, 8 MiB for
    ``full`` (32, 32, 2048)).
    """
    if t.requires_grad and (
        # Compiled code cannot read grad_fn; it keeps the hook.
        torch.compiler.is_compiling() or not isinstance(t.grad_fn, FFTConv._backward_cls)
    ):
        t.register_hook(_contiguous)
    return t


def _contiguous(grad: Tensor | None) -> Tensor | None:
    # None: an undefined gradient (gradcheck's per-output vector-Jacobian products).
    return None if grad is None else grad.contiguous()


def fft_conv(kernel: Tensor, signal: Tensor, equation: str, n: int, length: int) -> Tensor:
    """:class:`FFTConv` (the causal FFT convolution of two real tensors)."""
    return FFTConv.apply(kernel, signal, equation, n, length)
