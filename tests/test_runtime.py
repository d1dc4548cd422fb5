"""Runtime helpers the generated code calls, against plain torch on float64/complex128."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from cases import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from contractssm.codegen import runtime as rt


def _tensor(axes: str, sizes: dict[str, int], is_complex: bool) -> torch.Tensor:
    dtype = torch.complex128 if is_complex else torch.float64
    return torch.randn([sizes[a] for a in axes], dtype=dtype)


def _operands_and_product(equation: str, sizes: dict[str, int], kinds: tuple[bool, bool]):
    """Random operands of a two-term ``equation`` and their product in complex128."""
    left, right = equation.split("->")[0].split(",")
    p, q = _tensor(left, sizes, kinds[0]), _tensor(right, sizes, kinds[1])
    return p, q, torch.einsum(equation, p.to(torch.complex128), q.to(torch.complex128))


@st.composite
def products(draw):
    letters = "abcdR"
    left = "".join(draw(st.permutations(letters))[: draw(st.integers(1, 4))])
    right = "".join(draw(st.permutations(letters))[: draw(st.integers(1, 4))])
    every = sorted(set(left) | set(right))
    shared = set(left) & set(right)
    out = "".join(
        draw(st.permutations([a for a in every if a not in shared or draw(st.booleans())]))
    )
    sizes = {a: draw(st.integers(1, 4)) for a in every}
    kinds = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    return f"{left},{right}->{out}", sizes, kinds


@settings(max_examples=200, deadline=None)
@given(case=products())
def test_einsum_real_is_the_real_part_of_the_product(case):
    equation, sizes, (p_cx, q_cx) = case
    p, q, product = _operands_and_product(equation, sizes, (p_cx, q_cx))
    got = rt.einsum_real(equation, p, q)
    want = product.real
    err = (got - want).abs().max().item() if want.numel() else 0.0
    print(f"{equation} complex={p_cx, q_cx} max abs err {err:.2e}")
    assert not got.is_complex()
    assert got.shape == want.shape
    assert err < 1e-12


def test_einsum_real_gradients():
    p = torch.randn(3, 4, dtype=torch.complex128, requires_grad=True)
    q = torch.randn(2, 3, 5, dtype=torch.complex128, requires_grad=True)
    torch.autograd.gradcheck(lambda p, q: rt.einsum_real("eR,aeK->aeKR", p, q), (p, q))
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda w, q: rt.einsum_real("eR,aeK->aeKR", w, q), (w, q))


def test_bmm_matches_matmul_and_its_gradients():
    w = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(rt.bmm, (w, x))
    assert torch.equal(rt.bmm(w, x), torch.matmul(w, x))


@pytest.mark.parametrize("n", [50, rt.CEXP_POLAR_MAX, 3 * rt.CEXP_POLAR_MAX])
def test_cexp_equals_complex_exp_with_gradients(n):
    # Both forms (polar below CEXP_POLAR_MAX elements, cos and sin from it), with and without
    # gradients, on a strided view (the imaginary parts of a stream's rates are).
    z = torch.complex(-3 * torch.rand(n, dtype=torch.float64), 40 * torch.randn(n).double())
    z = z.reshape(-1, 2).t() if n > 50 else z
    err = (rt.cexp(z) - torch.exp(z)).abs().max().item()
    print(f"cexp vs exp at {n} elements: max abs err {err:.2e}")
    assert err < 1e-13
    w = z.clone().requires_grad_(True)
    g = torch.randn_like(z)
    (got,) = torch.autograd.grad(rt.cexp(w), w, g)
    (want,) = torch.autograd.grad(torch.exp(w), w, g)
    assert (got - want).abs().max().item() < 1e-12
    torch.autograd.gradcheck(rt.cexp, (w[..., :3].detach().requires_grad_(True),))


@pytest.mark.parametrize(
    ("shape", "count", "scale", "offset"),
    [
        ((3, 4), 8, 1, 0),  # one exp call
        ((2, 3), 70, 1, 1),  # factorised into two geometric runs
        ((64, 16), 64, -1, 63),  # a geometric run, reversed (chunk states)
        ((2, 3), 200, 3, 5),  # factorised, strided
        ((1024, 32), 32, 1, 1),  # short but a large table (1M elements): factorised
        ((512, 32), 64, -1, 63),  # the same, falling
    ],
)
def test_powers_values_and_analytic_gradient(shape, count, scale, offset):
    rate = torch.complex(
        -torch.rand(shape, dtype=torch.float64) - 0.01, torch.randn(shape, dtype=torch.float64)
    ).requires_grad_(True)
    tau = offset + scale * torch.arange(count, dtype=torch.float64)
    ref = torch.exp(rate[..., None] * tau)
    out = rt.powers(rate, count, scale, offset, torch.float64, "cpu")
    g = torch.randn_like(ref)
    (mine,) = torch.autograd.grad((out * g).real.sum(), rate)
    (want,) = torch.autograd.grad((ref * g).real.sum(), rate)
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    grad_err = (mine - want).abs().max().item() / want.abs().max().item()
    factorised = rt._factorised(rate, count)
    print(f"powers {shape} x {count} (factorised {factorised}): err {err:.2e}, grad {grad_err:.2e}")
    large = count >= 32 and rate.numel() * count >= rt.FACTOR_MIN_ELEMENTS
    assert factorised == (count > 64 or large)
    assert err < 1e-12 and grad_err < 1e-12
    if rate.numel() <= 12:
        small = rate.detach().clone().requires_grad_(True)
        f = lambda r: rt.powers(r, count, scale, offset, torch.float64, "cpu")  # noqa: E731
        assert torch.autograd.gradcheck(f, (small,))
    # Without a gradient the run is built directly (no autograd Function).
    plain = rt.powers(rate.detach(), count, scale, offset, torch.float64, "cpu")
    assert plain.grad_fn is None and torch.equal(plain, out.detach())


@pytest.mark.parametrize(
    ("count", "scale", "offset"),
    [
        (64, -1, 63),  # one geometric run
        (256, -1, 255),  # factorised, coarse * fine == count (a stream's fade at chunk 256)
        (300, -1, 299),  # factorised with padding
        (4096, -1, 4095),
        (16, -16, 240),  # a split stream's coarse fade
        (100, -1, 120),  # falling but never reaching a^0
    ],
)
def test_falling_powers_of_fast_decays_stay_finite_in_float32(count, scale, offset):
    # Decays down to exp(-3) per step: a^(offset) underflows float32 while the growing
    # factor a^(-(count - 1)) a forwards construction would multiply it by overflows. 64 x 32
    # states: enough that short runs take the geometric sequence, not one exp call.
    gen = torch.Generator().manual_seed(count)
    shape = (64, 32)
    rate = torch.complex(
        -3 * torch.rand(shape, generator=gen), 2 * torch.randn(shape, generator=gen)
    )
    tau = offset + scale * torch.arange(count, dtype=torch.float64)
    want = torch.exp(rate.to(torch.complex128)[..., None] * tau)
    runs = {
        "powers": rt.powers(rate, count, scale, offset, torch.float32, "cpu"),
        "laid out": rt.powers_laid_out(
            rate, count, scale, offset, torch.float32, "cpu", (2, 0, 1)
        ).permute(1, 2, 0),
        "with a gradient": rt.powers(
            rate.requires_grad_(), count, scale, offset, torch.float32, "cpu"
        ),
    }
    for name, got in runs.items():
        err = (got - want).abs().max().item()
        print(
            f"{name} {count} x a^({offset} {scale:+d} t): "
            f"finite {got.isfinite().all().item()}, max error {err:.1e}"
        )
        assert got.isfinite().all() and err < 1e-5


def test_einsum_summing_a_length_one_axis_is_a_broadcast_product():
    # A one-step decay (e, f, O) with O of length 1 against a state (a, e, f).
    decay = torch.randn(4, 3, 1, dtype=torch.complex128, requires_grad=True)
    state = torch.randn(2, 4, 3, dtype=torch.complex128, requires_grad=True)
    got = rt.einsum("efO,aef->aef", decay, state)
    want = torch.einsum("efO,aef->aef", decay, state)
    err = (got - want).abs().max().item()
    print(f"length-one sum: max error {err:.1e}")
    assert err < 1e-12
    (g_got,) = torch.autograd.grad(got.abs().sum(), decay)
    (g_want,) = torch.autograd.grad(want.abs().sum(), decay)
    assert torch.allclose(g_got, g_want)
    # A summed axis longer than 1 is still a contraction.
    long_decay = torch.randn(4, 3, 2, dtype=torch.complex128)
    pair = torch.randn(2, 4, 3, 2, dtype=torch.complex128)
    assert torch.allclose(
        rt.einsum("efO,aefO->aef", long_decay, pair),
        torch.einsum("efO,aefO->aef", long_decay, pair),
    )


@pytest.mark.parametrize(
    "equation, kernel_shape, signal_shape",
    [
        ("bdF,adF->abF", (3, 2, 7), (4, 2, 7)),  # contracts channels: frequency-major path
        ("cF,acF->acF", (2, 7), (3, 2, 7)),  # elementwise: saves the real inputs
    ],
)
@pytest.mark.parametrize("needs", [(True, True), (False, True), (True, False)])
def test_fft_conv_forward_and_gradients(equation, kernel_shape, signal_shape, needs):
    kernel = torch.randn(kernel_shape, dtype=torch.float64, requires_grad=needs[0])
    signal = torch.randn(signal_shape, dtype=torch.float64, requires_grad=needs[1])
    _check_fft_conv(kernel, signal, equation, 16, 7)


def _check_fft_conv(kernel, signal, equation, n, length):
    """FFTConv against plain rfft/einsum/irfft (printed error) and finite differences."""
    plain = torch.fft.irfft(
        torch.einsum(equation, torch.fft.rfft(kernel, n=n), torch.fft.rfft(signal, n=n)), n=n
    )[..., :length]
    got = rt.fft_conv(kernel, signal, equation, n, length)
    err = (got - plain).abs().max().item()
    print(f"{equation} n={n}: forward max error {err:.1e}")
    assert err < 1e-12
    assert torch.autograd.gradcheck(
        lambda k, u: rt.fft_conv(k, u, equation, n, length), (kernel, signal)
    )


@pytest.mark.parametrize(
    "equation, kernel_shape, signal_shape",
    [
        ("bdF,adF->abF", (3, 4, 16), (5, 4, 16)),  # full's mix
        ("pbdeF,adeF->apbF", (2, 3, 2, 2, 16), (5, 2, 2, 16)),  # groups of several axes
        ("bdF,adF->abF", (3, 4, 9), (5, 4, 16)),  # kernel shorter than the signal
    ],
)
@pytest.mark.parametrize("needs", [(True, True), (False, True), (True, False)])
def test_fft_conv_padded_channel_mix_matches_the_definition(
    monkeypatch, equation, kernel_shape, signal_shape, needs
):
    # Every product "aliases" and is "large": the padded path runs (products with a zero
    # row, the gradient's spectrum with a zero row and column), blocks of 4 rows.
    monkeypatch.setattr(rt, "TRANSPOSE_ALIASING_BYTES", 16)
    monkeypatch.setattr(rt, "TRANSPOSE_PLAIN_BYTES", 0)
    monkeypatch.setattr(rt, "TRANSPOSE_BLOCK", 4)
    monkeypatch.setattr(rt, "_pads_apart", lambda *a: True)
    taken = []
    mix_forward = rt._mix_forward
    monkeypatch.setattr(rt, "_mix_forward", lambda *a: taken.append(1) or mix_forward(*a))
    gen = torch.Generator().manual_seed(len(equation))
    kernel = torch.randn(kernel_shape, dtype=torch.float64, generator=gen)
    signal = torch.randn(signal_shape, dtype=torch.float64, generator=gen)
    _check_fft_conv(
        kernel.requires_grad_(needs[0]), signal.requires_grad_(needs[1]), equation, 32, 16
    )
    assert taken


@pytest.mark.parametrize(
    "equation", ["bdF,adF->baF", "bdF,adF->abdF", "dF,adF->aF", "bdF,dF->bF", "bdF,daF->abF"]
)
def test_padded_channel_mix_only_for_its_layout(monkeypatch, equation):
    monkeypatch.setattr(rt, "_pads_apart", lambda *a: True)
    monkeypatch.setattr(rt, "TRANSPOSE_PLAIN_BYTES", 0)
    ins = equation.split("->")[0].split(",")
    k, u = (torch.zeros([3] * (len(t) - 1) + [8]) for t in ins)
    assert rt._padded_mix(equation, k, u, 16) is None
    assert rt._padded_mix("bdF,adF->abF", torch.zeros(3, 3, 8), torch.zeros(3, 3, 8), 16)


@pytest.mark.parametrize(
    "rows, cols, apart",
    [
        (32, 32, True),  # full (32, 32, 2048): rows 8 KiB apart, 8.25 KiB with the pad
        (8, 64, True),  # full (8, 64, 1024)
        (4, 128, True),  # full (4, 128, 16384)
        (1, 256, False),  # every row of 256 complex64 is 2 KiB: the pad cannot help
        (2, 512, False),  # so is every row of 512
        (5, 33, False),  # rows do not alias in the first place
    ],
)
def test_a_zero_row_moves_aliasing_products_apart(rows, cols, apart):
    assert rt._pads_apart(rows, cols, 8) is apart


def _spectra(shapes, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.fft.rfft(torch.randn(s, dtype=torch.float64, generator=gen), n=n) for s in shapes]


@pytest.mark.parametrize(
    "equation, kernel_shape, signal_shape",
    [
        ("bdF,adF->abF", (3, 4, 16), (5, 4, 16)),  # full's chunk
        ("pbdeF,adeF->apbF", (2, 3, 2, 2, 16), (5, 2, 2, 16)),  # groups of several axes
    ],
)
@pytest.mark.parametrize("kernel_laid_out", [False, True])
def test_spectral_product_padded_mix_matches_the_definition(
    monkeypatch, equation, kernel_shape, signal_shape, kernel_laid_out
):
    monkeypatch.setattr(rt, "_pads_apart", lambda *a: True)
    monkeypatch.setattr(rt, "MIX_MIN_ROWS", 1)
    monkeypatch.setattr(rt, "TRANSPOSE_BLOCK", 4)
    taken = []
    mix_product = rt._mix_product
    monkeypatch.setattr(rt, "_mix_product", lambda *a, **k: taken.append(1) or mix_product(*a, **k))
    p, q = _spectra((kernel_shape, signal_shape), 32, 5)
    want = torch.einsum(equation, p, q)
    kernel = rt.frequency_major(p) if kernel_laid_out else p
    got = rt.spectral_product(equation, kernel, q, (kernel_laid_out, False))
    # A second product before the first is read: the first's kept buffer is held.
    other = rt.spectral_product(equation, kernel * 2, q, (kernel_laid_out, False))
    err = max((got - want).abs().max().item(), (other - 2 * want).abs().max().item())
    print(f"{equation} laid out {kernel_laid_out}: max error {err:.1e}")
    assert len(taken) == 2 and got.is_contiguous() and got.shape == want.shape
    assert err < 1e-12


def test_spectral_product_keeps_the_plain_path_under_autograd_and_for_a_laid_out_signal(
    monkeypatch,
):
    monkeypatch.setattr(rt, "_pads_apart", lambda *a: True)
    monkeypatch.setattr(rt, "MIX_MIN_ROWS", 1)
    taken = []
    monkeypatch.setattr(rt, "_mix_product", lambda *a, **k: taken.append(1))
    equation = "bdF,adF->abF"
    p, q = _spectra(((3, 4, 16), (5, 4, 16)), 32, 6)
    want = torch.einsum(equation, p, q)
    p.requires_grad_()
    got = rt.spectral_product(equation, p, q)  # autograd records p: no out= product
    got.abs().sum().backward()
    laid = rt.spectral_product(equation, p.detach(), rt.frequency_major(q), (False, True))
    with torch.no_grad():  # too few signal rows
        monkeypatch.setattr(rt, "MIX_MIN_ROWS", 6)
        few = rt.spectral_product(equation, p, q)
    errs = [(t - want).abs().max().item() for t in (got, laid, few)]
    print(f"plain paths: max errors {errs}")
    assert not taken and max(errs) < 1e-12 and p.grad is not None


def test_dense_gradient_leaves_an_fft_conv_output_to_its_backward():
    k = torch.randn(3, 4, 16, requires_grad=True)
    u = torch.randn(2, 4, 16, requires_grad=True)
    y = rt.dense_gradient(rt.fft_conv(k, u, "bdF,adF->abF", 32, 16))
    assert not y._backward_hooks  # FFTConv copies the gradient into its padded input
    z = rt.dense_gradient(k * 2)
    assert z._backward_hooks


@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("shape", [(1, 5), (127, 3), (128, 9), (129, 4), (300, 257), (513, 7)])
def test_blocked_transpose_equals_the_plain_transpose(shape, conj):
    m = torch.randn(*shape, dtype=torch.complex64)
    got = rt._transposed(m, conj=conj)
    assert got.is_contiguous() and got.shape == (shape[1], shape[0])
    assert torch.equal(got, m.t().conj() if conj else m.t())


def test_fft_conv_with_blocked_transposes_matches_the_definition(monkeypatch):
    # Blocks of 4 rows: the frequency-major spectra (12 and 8 rows) and the products
    # transposed back (17 rows) all take the blocked path, with a partial last block.
    monkeypatch.setattr(rt, "TRANSPOSE_BLOCK", 4)
    kernel = torch.randn(3, 4, 16, dtype=torch.float64, requires_grad=True)
    signal = torch.randn(2, 4, 16, dtype=torch.float64, requires_grad=True)
    _check_fft_conv(kernel, signal, "bdF,adF->abF", 32, 16)


@pytest.mark.parametrize("padded", [False, True])
def test_fft_conv_scratch_is_never_read_after_reuse(monkeypatch, padded):
    # Two convolutions of different sizes share the scratch slots: both forwards run before
    # either backward, the second backward after the first has overwritten every slot. Each
    # must still equal its own definition (values and float64 gradients). ``padded``: the
    # channel mixes take the padded path (_padded_mix).
    from contractssm.codegen import memory

    monkeypatch.setattr(rt, "TRANSPOSE_BLOCK", 4)
    if padded:
        monkeypatch.setattr(rt, "TRANSPOSE_ALIASING_BYTES", 16)
        monkeypatch.setattr(rt, "TRANSPOSE_PLAIN_BYTES", 0)
        monkeypatch.setattr(rt, "_pads_apart", lambda *a: True)
        mix_forward = rt._mix_forward
        taken = []
        monkeypatch.setattr(rt, "_mix_forward", lambda *a: taken.append(1) or mix_forward(*a))
    memory.release_scratch()
    gen = torch.Generator().manual_seed(3)
    # Channel-summing (frequency-major) and elementwise products, interleaved.
    cases = [
        ((3, 4, 16), (5, 4, 16), 32, 16, "bdF,adF->abF"),
        ((4, 9), (3, 4, 9), 18, 9, "cF,acF->acF"),
        ((6, 2, 9), (7, 2, 9), 18, 9, "bdF,adF->abF"),
        ((4, 16), (2, 4, 16), 32, 16, "cF,acF->acF"),
    ]
    leaves, outs = [], []
    for k_shape, u_shape, n, length, equation in cases:
        k = torch.randn(k_shape, dtype=torch.float64, generator=gen, requires_grad=True)
        u = torch.randn(u_shape, dtype=torch.float64, generator=gen, requires_grad=True)
        leaves.append((k, u, n, length, equation))
        outs.append(rt.fft_conv(k, u, equation, n, length))
    assert memory._pool(), "the blocked path should have used scratch memory"
    for (k, u, n, length, equation), y in zip(leaves, outs, strict=True):
        weight = torch.randn(y.shape, dtype=torch.float64, generator=gen)
        got = torch.autograd.grad((y * weight).sum(), (k, u))
        k2, u2 = k.detach().requires_grad_(), u.detach().requires_grad_()
        plain = torch.fft.irfft(
            torch.einsum(equation, torch.fft.rfft(k2, n=n), torch.fft.rfft(u2, n=n)), n=n
        )[..., :length]
        want = torch.autograd.grad((plain * weight).sum(), (k2, u2))
        errs = [(y - plain).abs().max().item()] + [
            (g - w).abs().max().item() for g, w in zip(got, want, strict=True)
        ]
        print(f"{equation} n={n}: value and gradient max errors {[f'{e:.1e}' for e in errs]}")
        assert max(errs) < 1e-12
    if padded:
        assert len(taken) == 2  # both channel mixes


@pytest.mark.parametrize(
    "equation, taken",
    [
        ("Fbd,Fad->Fab", True),  # full's forward: the signal on the left, the kernel transposed
        ("Fab,Fad->Fbd", True),  # its kernel gradient: the gradient transposed
        ("Fab,Fbd->Fad", True),  # its signal gradient: a plain bmm
        ("Fgbd,Fgad->Fgba", True),  # two shared axes; the left operand's free axis first
        ("Fbde,Faed->Fab", True),  # two summed axes, in different orders
        ("Fbd,Facd->Facb", True),  # two free axes on one side
        ("Fbd,Fad->Fba", True),  # the first operand's free axis first: it is the left one
        ("Fbd,Fad->aFb", False),  # shared axis not leading the output
        ("Fcbd,Fad->Fcab", False),  # a free axis between the shared ones and the other side's
        ("Fbd,Fbd->Fb", False),  # nothing free on either side
        ("bFd,Fad->Fab", False),  # shared axis not leading an operand
    ],
)
def test_matmul_into_scratch_equals_einsum(equation, taken):
    from contractssm.codegen import memory

    memory.release_scratch()
    gen = torch.Generator().manual_seed(len(equation))
    sizes = dict(zip("Fabcdeg", (5, 3, 4, 2, 6, 3, 2), strict=True))
    ins, _ = equation.split("->")
    p, q = (
        torch.randn([sizes[a] for a in t], dtype=torch.complex128, generator=gen)
        for t in ins.split(",")
    )
    got = rt._matmul_into(equation, p, q, "t.matmul")
    assert (got is not None) == taken
    if got is None:
        return
    want = torch.einsum(equation, p, q)
    err = (got - want).abs().max().item()
    print(f"{equation}: max error {err:.1e}")
    assert err < 1e-12 and got.is_contiguous()
    assert got.data_ptr() == memory.scratch("t.matmul", (1,), got.dtype, "cpu").data_ptr()


def test_scratch_reuses_one_buffer_per_slot_and_stays_in_bounds(monkeypatch):
    from contractssm.codegen import memory

    memory.release_scratch()
    a = memory.scratch("t.a", (4, 8), torch.float32, "cpu")
    b = memory.scratch("t.a", (2, 3), torch.float32, "cpu")  # smaller: the same memory
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 3) and b.is_contiguous()
    c = memory.scratch("t.b", (4, 8), torch.float32, "cpu")  # another slot: its own
    assert c.data_ptr() != a.data_ptr()
    d = memory.scratch("t.a", (8, 8), torch.float32, "cpu")  # larger: grown
    assert (
        d.shape == (8, 8)
        and memory.scratch("t.a", (8, 8), torch.float32, "cpu").data_ptr() == d.data_ptr()
    )
    # Over the bound, while compiling, and in another dtype: not the kept buffer.
    monkeypatch.setattr(memory, "SCRATCH_MAX_BYTES", 64)
    assert memory.scratch("t.a", (4, 8), torch.float32, "cpu").data_ptr() != d.data_ptr()
    monkeypatch.setattr(memory, "SCRATCH_MAX_BYTES", 2**20)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert memory.scratch("t.a", (4, 8), torch.float32, "cpu").data_ptr() != d.data_ptr()
    monkeypatch.undo()
    assert memory.scratch("t.a", (4,), torch.float64, "cpu").dtype == torch.float64
    _check_first_asked_for_under_inference_mode(memory.scratch, memory._pool)


def _check_first_asked_for_under_inference_mode(alloc, pool):
    """A buffer first made under inference mode is a normal tensor a training call may write."""
    from contractssm.codegen import memory

    memory.release_scratch()
    with torch.inference_mode():
        alloc("t.c", (5,), torch.float32, "cpu")
    alloc("t.c", (5,), torch.float32, "cpu").fill_(1.0)
    memory.release_scratch()
    assert not pool()


@pytest.mark.parametrize(
    "rows, cols, block",
    [
        (1024, 2049, 256),  # a full (32, 32, 2048) spectrum: 4 MiB blocks (8 MiB is over)
        (4096, 257, 512),  # at most TRANSPOSE_BLOCK rows
        (256, 4097, 128),  # at most half the rows
        (1025, 512, None),  # rows 4 KiB apart: one plain copy
        (257, 256, None),  # 2 KiB apart
        (2049, 1024, 512),  # 8 KiB apart but 16 MiB: blocks
        (40, 100, None),  # too few rows for blocks worth a dispatch
    ],
)
def test_transpose_block_follows_the_measured_rule(rows, cols, block):
    assert rt._transpose_block(rows, cols, 8) == block


@pytest.mark.parametrize("shape", [(70, 33), (33, 128), (9, 5)])
@pytest.mark.parametrize("slot, keep", [(None, False), ("t.tr", False), ("t.tr", True)])
@pytest.mark.parametrize("conj", [False, True])
def test_transposed_equals_the_transpose(monkeypatch, shape, slot, keep, conj):
    # Blocks of 16 rows (and a partial last one), one copy for 128 complex128 columns (2 KiB
    # apart), and a matrix too small for blocks; into fresh, scratch or kept memory.
    from contractssm.codegen import memory

    monkeypatch.setattr(rt, "TRANSPOSE_BLOCK", 16)
    gen = torch.Generator().manual_seed(sum(shape))
    m = torch.randn(shape, dtype=torch.complex128, generator=gen)
    original = m.clone()
    want = m.t().conj() if conj else m.t()
    got = rt._transposed(m, slot, conj, keep)
    assert got.is_contiguous() and got.shape == want.shape
    assert torch.equal(got, want.resolve_conj())
    assert torch.equal(m, original)  # the input is left as it was
    memory.release_scratch()


def test_kept_buffers_are_reused_only_once_nothing_holds_them(monkeypatch):
    from contractssm.codegen import memory

    memory.release_scratch()
    a = memory.kept("t.k", (4, 8), torch.float32, "cpu")
    first = a.data_ptr()
    b = memory.kept("t.k", (4, 8), torch.float32, "cpu")  # a still held: another buffer
    assert b.data_ptr() != first
    view = a[1:].t()  # a view alone keeps the storage held
    del a
    assert memory.kept("t.k", (4, 8), torch.float32, "cpu").data_ptr() not in (first, b.data_ptr())
    del view
    c = memory.kept("t.k", (2, 3), torch.float32, "cpu")  # smaller, now free: the same memory
    assert c.data_ptr() == first and c.shape == (2, 3) and c.is_contiguous()
    del b, c
    # A free buffer too small for a request is replaced, not kept beside the new one.
    count = len(memory._kept_pool()[("t.k", torch.float32)])
    big = memory.kept("t.k", (16, 16), torch.float32, "cpu")
    assert big.shape == (16, 16) and len(memory._kept_pool()[("t.k", torch.float32)]) == count
    del big
    # Past the bound, while compiling, or without a way to count a storage's users: fresh.
    monkeypatch.setattr(memory, "KEPT_MAX_BYTES", 0)
    memory.kept("t.other", (4,), torch.float32, "cpu")
    assert ("t.other", torch.float32) not in memory._kept_pool() or not memory._kept_pool()[
        ("t.other", torch.float32)
    ]
    monkeypatch.undo()
    monkeypatch.setattr(memory, "_storage_users", None)
    before = {k: list(v) for k, v in memory._kept_pool().items()}
    memory.kept("t.k", (4,), torch.float32, "cpu")
    monkeypatch.undo()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    memory.kept("t.k", (4,), torch.float32, "cpu")
    monkeypatch.undo()
    assert {k: [t.data_ptr() for t in v] for k, v in memory._kept_pool().items()} == {
        k: [t.data_ptr() for t in v] for k, v in before.items()
    }
    # The smallest free buffer that fits is handed out.
    memory.release_scratch()
    small, large = (memory.kept("t.f", (n,), torch.float32, "cpu") for n in (8, 64))
    small_ptr, large_ptr = small.data_ptr(), large.data_ptr()
    del large, small
    assert memory.kept("t.f", (4,), torch.float32, "cpu").data_ptr() == small_ptr
    assert memory.kept("t.f", (60,), torch.float32, "cpu").data_ptr() == large_ptr
    _check_first_asked_for_under_inference_mode(memory.kept, memory._kept_pool)


def test_fft_conv_keeps_its_saved_spectra_until_the_backward(monkeypatch):
    # full's channel-summing convolution saves both frequency-major spectra in kept buffers:
    # held from the forward through the backward, free after it (or when the graph is dropped).
    from contractssm.codegen import memory

    memory.release_scratch()
    monkeypatch.setattr(rt, "TRANSPOSE_BLOCK", 4)
    kernel = torch.randn(3, 4, 16, dtype=torch.float64, requires_grad=True)
    signal = torch.randn(5, 4, 16, dtype=torch.float64, requires_grad=True)

    def held():
        bufs = memory._kept_pool().get(
            ("fft_conv.kernel_spectrum", torch.complex128), []
        ) + memory._kept_pool().get(("fft_conv.signal_spectrum", torch.complex128), [])
        return len(bufs), sum(memory._storage_users(b) > 1 for b in bufs)

    y = rt.fft_conv(kernel, signal, "bdF,adF->abF", 32, 16)
    assert held() == (2, 2)
    y.sum().backward()
    assert held() == (2, 0)
    y = rt.fft_conv(kernel, signal, "bdF,adF->abF", 32, 16)
    assert held() == (2, 2)
    del y
    assert held() == (2, 0)
    memory.release_scratch()


def test_compiled_fft_conv_backward_equals_eager(monkeypatch):
    # Blocked transposes (scratch memory in eager) traced by torch.compile with the backward.
    monkeypatch.setattr(rt, "TRANSPOSE_BLOCK", 4)
    gen = torch.Generator().manual_seed(5)
    k = torch.randn(3, 4, 16, generator=gen, requires_grad=True)
    u = torch.randn(5, 4, 16, generator=gen, requires_grad=True)
    weight = torch.randn(5, 3, 16, generator=gen)

    def conv(k, u):
        return rt.fft_conv(k, u, "bdF,adF->abF", 32, 16)

    results = []
    for fn in (conv, torch.compile(conv, fullgraph=True)):
        y = fn(k, u)
        results.append((y.detach(), *torch.autograd.grad((y * weight).sum(), (k, u))))
    errs = [(a - b).abs().max().item() for a, b in zip(*results, strict=True)]
    print(f"compiled vs eager: value and gradient max errors {errs}")
    assert max(errs) < 1e-5


@pytest.mark.parametrize("chunks", [1, 2, 7, 8])
def test_chunk_scan_sequential_and_parallel_agree_with_the_definition(chunks, monkeypatch):
    gen = torch.Generator().manual_seed(chunks)
    rate = torch.complex(
        -torch.rand(3, 5, dtype=torch.float64, generator=gen),
        torch.randn(3, 5, dtype=torch.float64, generator=gen),
    )
    states = torch.randn(2, 3, 5, chunks, dtype=torch.complex128, generator=gen)
    decay = torch.exp(rate * 4)
    want = torch.zeros_like(states)
    for k in range(1, chunks):
        want[..., k] = decay * want[..., k - 1] + states[..., k - 1]
    for sequential in (True, False):
        monkeypatch.setattr(rt, "sequential_scan", lambda kind, per_chunk, s=sequential: s)
        got = rt.chunk_scan(rate, states, 4)
        err = (got - want).abs().max().item()
        print(f"chunks={chunks} sequential={sequential}: max error {err:.1e}")
        assert err < 1e-12
        # Gradients (the sequential scan has its own backward) against finite differences,
        # with the rate broadcast over the leading axis as the executors pass it.
        assert torch.autograd.gradcheck(
            lambda r, s: rt.chunk_scan(r[None], s, 4),
            (rate.clone().requires_grad_(), states.clone().requires_grad_()),
        )


@pytest.mark.parametrize("shape, count", [((3, 4), 256), ((2, 3, 5), 100), ((4,), 65), ((2, 2), 8)])
def test_powers_laid_out_equals_the_permuted_powers(shape, count):
    gen = torch.Generator().manual_seed(count)
    rate = torch.complex(
        -0.1 * torch.rand(shape, dtype=torch.float64, generator=gen),
        torch.randn(shape, dtype=torch.float64, generator=gen),
    )
    plain = rt.powers(rate, count, 2, 3, torch.float64, "cpu")
    worst = 0.0
    for order in itertools.permutations(range(len(shape) + 1)):
        got = rt.powers_laid_out(rate, count, 2, 3, torch.float64, "cpu", order)
        want = plain.permute(order)
        assert got.is_contiguous() and got.shape == want.shape, order
        worst = max(worst, (got - want).abs().max().item())
    print(f"{shape} x {count}: worst error over every order {worst:.1e}")
    assert worst < 1e-12


def test_chunk_matrix_is_the_chunk_recurrence():
    # [u | h0] -> [z | h'] for a depthwise chunk: z_t = Re sum_s w_s h_t[s], h_t = a h_{t-1} + u_t.
    gen = torch.Generator().manual_seed(3)
    batch, groups, states, steps = 3, (2, 2), 3, 7
    shape = (*groups, states)
    rate = torch.complex(
        -torch.rand(shape, dtype=torch.float64, generator=gen),
        torch.randn(shape, dtype=torch.float64, generator=gen),
    )
    w = torch.randn(shape, dtype=torch.complex128, generator=gen)
    u = torch.randn(batch, *groups, steps, dtype=torch.float64, generator=gen)
    h0 = torch.randn(batch, *shape, dtype=torch.complex128, generator=gen)

    def chunk(rate, w, u, h0):
        a = lambda e: torch.exp(rate[..., None] * e)  # noqa: E731
        run = a(torch.arange(steps + 1, dtype=torch.float64))
        matrix = rt.chunk_matrix(w[..., None] * run, run, len(groups))
        joined = rt.chunk_apply(u, h0, matrix)
        return joined[..., :steps], rt.chunk_state(joined, steps, h0.shape)

    z, h = chunk(rate, w, u, h0)
    h_ref, z_ref = h0.clone(), torch.zeros_like(u)
    for t in range(steps):
        h_ref = torch.exp(rate) * h_ref + u[..., t, None]
        z_ref[..., t] = (w * h_ref).real.sum(-1)
    err = max((z - z_ref).abs().max().item(), (h - h_ref).abs().max().item())
    print(f"chunk matrix against the recurrence: max error {err:.1e}")
    assert err < 1e-12
    leaves = [
        t.clone().requires_grad_() for t in (rate[:1, :1], w[:1, :1], u[:2, :1, :1], h0[:2, :1, :1])
    ]
    assert torch.autograd.gradcheck(lambda *ts: chunk(*ts), leaves)


def test_large_buffers_are_advised_as_huge_pages(monkeypatch):
    # memory.empty advises whole 2 MiB pages inside a buffer of at least 32 MiB (page faults
    # 6x cheaper where transparent huge pages are on), nothing for a small one; the advice is
    # skipped while torch.compile traces.
    from contractssm.codegen import memory

    calls = []
    monkeypatch.setattr(memory, "_madvise", lambda: lambda *a: calls.append(a) or 0)
    small = memory.empty((1024,), torch.float32, "cpu")
    assert small.shape == (1024,) and small.dtype == torch.float32 and not calls
    big = memory.empty((8, 1 << 20), torch.float32, "cpu")  # exactly 32 MiB
    assert big.shape == (8, 1 << 20) and len(calls) == 1
    start, length, advice = calls[0]
    page = memory.HUGE_PAGE_BYTES
    first = big.data_ptr()
    print(f"buffer at {first:#x}: advised {length >> 20} MiB from {start:#x}")
    assert advice == memory.MADV_HUGEPAGE and start % page == 0 and length % page == 0
    assert first <= start and start + length <= first + (32 << 20)
    assert length >= (32 << 20) - 2 * page  # every whole huge page inside
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert memory.advise_huge_pages(big) is False and len(calls) == 1


def test_advice_on_this_machine_never_fails_the_buffer():
    # The real madvise (or none off Linux): the buffer is usable either way.
    from contractssm.codegen import memory

    t = memory.empty((8, 1 << 20), torch.float32, "cpu").fill_(2.0)
    print(f"advised: {memory.advise_huge_pages(t)}")
    assert float(t.sum()) == 2.0 * t.numel()


def test_large_laid_out_powers_equal_the_permuted_powers():
    # A 32 MiB table (64 x 64 states x 1024 powers), written into an advised buffer.
    gen = torch.Generator().manual_seed(5)
    decay, phase = torch.rand(64, 64, generator=gen), torch.randn(64, 64, generator=gen)
    rate = torch.complex(-0.05 * decay, phase)
    got = rt.powers_laid_out(rate, 1024, 1, 1, torch.float32, "cpu", (2, 0, 1))
    want = rt.powers(rate, 1024, 1, 1, torch.float32, "cpu").permute(2, 0, 1)
    tau = 1 + torch.arange(1024, dtype=torch.float64)
    exact = torch.exp(rate.to(torch.complex128)[..., None] * tau).permute(2, 0, 1)
    err = (got - want).abs().max().item()
    err_exact = (got.to(torch.complex128) - exact).abs().max().item()
    print(f"32 MiB laid-out table: against powers {err:.1e}, against exp {err_exact:.1e}")
    assert got.is_contiguous() and err < 1e-6 and err_exact < 1e-4


@st.composite
def weighted_sums(draw):
    """A short weighted sum: ``small`` holds a subset of ``big``'s axes, a few summed."""
    letters = "abcdMN"
    big = "".join(draw(st.permutations(letters))[: draw(st.integers(2, 5))])
    small = "".join(a for a in draw(st.permutations(big)) if draw(st.booleans())) or big[0]
    summed = [a for a in small if draw(st.booleans())] or [small[0]]
    sizes = {a: draw(st.integers(1, 4)) for a in big}
    for a in summed:
        sizes[a] = draw(st.integers(2, 4))
    out = "".join(draw(st.permutations([a for a in big if a not in summed])))
    flip = draw(st.booleans())
    kinds = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    equation = f"{small},{big}->{out}" if flip else f"{big},{small}->{out}"
    return equation, sizes, kinds


@settings(max_examples=150, deadline=None)
@given(case=weighted_sums())
def test_weighted_sum_is_the_einsum(case):
    from contractssm.planner.matmul import is_weighted_sum

    equation, sizes, (p_cx, q_cx) = case
    p, q, want = _operands_and_product(equation, sizes, (p_cx, q_cx))
    got = rt.weighted_sum(equation, p, q)
    err = (got - want).abs().max().item() if want.numel() else 0.0
    print(f"{equation} {sizes} complex={p_cx, q_cx} max abs err {err:.2e}")
    assert got.shape == want.shape and got.is_complex()
    assert err < 1e-12
    ins, out = equation.split("->")
    summed = math.prod(sizes[a] for a in set(ins) - {","} - set(out))
    assert is_weighted_sum(equation, sizes) == (1 < summed <= 16)


def test_weighted_sum_gradients_and_its_use_by_the_generator():
    from contractssm.codegen.emit import emit_function
    from contractssm.planner.matmul import is_weighted_sum
    from contractssm.planner.steps import Step

    p = torch.randn(3, 4, 2, dtype=torch.complex128, requires_grad=True)
    q = torch.randn(4, 5, 2, 3, dtype=torch.complex128, requires_grad=True)
    equation = "beM,eaMb->abe"
    torch.autograd.gradcheck(lambda p, q: rt.weighted_sum(equation, p, q), (p, q))
    sizes = {"a": 5, "b": 3, "e": 4, "M": 2}
    assert is_weighted_sum(equation, sizes)
    assert not is_weighted_sum(equation, {**sizes, "M": 17})  # a long sum is a matmul
    assert not is_weighted_sum("beO,eaOb->abe", {**sizes, "O": 1})  # dropped, not summed
    assert not is_weighted_sum("beM,aMc->abce", {**sizes, "c": 2})  # neither holds the other
    # The multiply-add per term (large operands) against the einsum, and its gradients.
    big_p = torch.randn(3, 4, 2, dtype=torch.complex128, requires_grad=True)
    big_q = torch.randn(4, 5, 2, 3, dtype=torch.complex128, requires_grad=True)
    small = rt.WEIGHTED_SUM_LOOP_ELEMENTS
    try:
        rt.WEIGHTED_SUM_LOOP_ELEMENTS = 1
        got = rt.weighted_sum(equation, big_p, big_q)
        torch.autograd.gradcheck(lambda p, q: rt.weighted_sum(equation, p, q), (big_p, big_q))
    finally:
        rt.WEIGHTED_SUM_LOOP_ELEMENTS = small
    err = (got - torch.einsum(equation, big_p, big_q)).abs().max().item()
    print(f"one multiply-add per term: max abs err {err:.2e}")
    assert err < 1e-12
    step = Step("einsum", "w", ("p", "q"), "abe", True, "state", equation, (), 60)
    source = emit_function(
        "f",
        ("p", "q"),
        (step,),
        ("w",),
        {"p": "beM", "q": "eaMb"},
        sizes=sizes,
        is_complex={"p": True, "q": True},
    )
    print(source)
    assert 'rt.weighted_sum("beM,eaMb->abe", p, q)' in source


def test_broadcast_product_is_laid_out_in_its_output_order():
    # Permuted views multiply in their strides' order; the code generator chose the output's.
    h = torch.randn(16, 32, 32, 8, dtype=torch.complex128)
    w = torch.randn(32, 32, 8, 4, dtype=torch.complex128)
    assert h.numel() * 4 >= rt.ORDERED_PRODUCT_ELEMENTS
    got = rt.einsum("abde,bdeM->baMde", h, w)
    want = torch.einsum("abde,bdeM->baMde", h, w)
    print(f"strides {got.stride()}")
    assert got.is_contiguous() and torch.allclose(got, want, rtol=1e-14, atol=0)
    # With gradients: p * q as it comes (a copy into order measured slower in training).
    got = rt.einsum("abde,bdeM->baMde", h.requires_grad_(), w)
    assert torch.allclose(got.detach(), want, rtol=1e-14, atol=0)
    small_h, small_w = h[:2, :3, :4, :5].detach(), w[:3, :4, :5, :2]
    torch.autograd.gradcheck(
        lambda h: rt.einsum("abde,bdeM->baMde", h, small_w), (small_h.requires_grad_(),)
    )


def test_stack_conj_parts_is_re_and_minus_im():
    p = torch.randn(3, 4, 5, dtype=torch.complex128)
    for view in (p, p.transpose(0, 2), p[:, ::2]):
        got = rt.stack_conj_parts(view)
        assert got.is_contiguous()
        assert torch.equal(got, torch.stack((view.real, -view.imag), dim=-1))
    x = torch.randn(3, 4, dtype=torch.complex128, requires_grad=True)
    torch.autograd.gradcheck(lambda x: rt.stack_conj_parts(x.t()), (x,))


@settings(max_examples=20, deadline=None)
@given(
    layout=st.sampled_from(
        [("bde", "bde", "bd"), ("cn", "n", "c"), ("cn", "cn", "c"), ("sn", "s", "")]
    ),
    runs=st.sampled_from(
        [((4, 8, 0), (8, 1, 0)), ((4, -8, 30), (8, -1, 7)), ((3, 5, 2), (5, 1, 1))]
    ),
    weight_on_second=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_vandermonde_real_gradcheck(layout, runs, weight_on_second, seed):
    # The fused Vandermonde kernel against its four steps (powers, powers, the weighting,
    # einsum_real) and finite differences, float64: any kept/summed states, rising and falling
    # runs, the weight on all or some of the rate's axes, on either factor.
    states, w_axes, kept = layout
    g = torch.Generator().manual_seed(seed)
    size = {"b": 3, "d": 2, "e": 4, "c": 3, "n": 5, "s": 4}
    shape = [size[a] for a in states]
    rate = torch.complex(
        -0.3 * torch.rand(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
    ).requires_grad_()
    weight = torch.randn([size[a] for a in w_axes], generator=g, dtype=torch.float64)
    weight.requires_grad_()
    a_run, b_run = runs if weight_on_second else runs[::-1]
    a, b = ("G", "H") if weight_on_second else ("H", "G")
    weighting = f"{states}{b},{w_axes}->{states}{b}"
    equation = f"{states}{a},{states}{b}->{kept}GH"

    def steps(r, w):
        v_a = rt.powers(r, *a_run, torch.float64, r.device)
        v_b = rt.powers(r, *b_run, torch.float64, r.device)
        return rt.einsum_real(equation, v_a, rt.einsum(weighting, v_b, w))

    def fused(r, w):
        return rt.vandermonde_real(r, w, (a_run, b_run), weighting, equation)

    want, got = steps(rate, weight), fused(rate, weight)
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    g_want = torch.autograd.grad(want, (rate, weight), cot)
    g_got = torch.autograd.grad(got, (rate, weight), cot)
    errs = [rel_err(x, y) for x, y in zip(g_got, g_want, strict=True)]
    print(f"{layout} {runs} weight on second={weight_on_second}: {rel_err(got, want):.1e} {errs}")
    assert rel_err(got, want) <= 1e-13 and max(errs) <= 1e-12
    assert torch.autograd.gradcheck(fused, (rate, weight), fast_mode=True)
