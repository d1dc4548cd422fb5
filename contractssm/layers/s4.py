"""S4 (Gu, Goel and Re 2022, ICLR): the DPLR state space layer, bilinear discretization.

SPEC.md section 4. **S4 runs outside the planner.** Its transition ``A = Lambda - P P^*`` is
diagonal plus low rank, so the discrete state matrix ``Abar`` is dense: the state of one channel
is a vector acted on by a full N x N matrix, which the planner's diagonal-recurrence executors do
not cover (the built-in declaration ``s4``, ``y[b,k,h,l] = complex W[k,h,n] * ssm(s4) A[h,n;l]
* signal x[b,h,l] + D[k,h] * x[b,h,l]``, names the operands: ``W`` the output weights, ``A`` the
recurrence with generator ``s4``, ``D`` the skip; the float64 reference evaluates it from
``{'transition': Abar, 'input': Bbar}``). This module computes every mode itself:

* kernel mode: the kernel ``K[k,h,tau]`` by the paper's Algorithm 1 (``C~ = C (I - Abar^L)``,
  Cauchy sums at the L roots of unity, Woodbury identity, inverse FFT), then a causal FFT
  convolution and the skip ``D``;
* step mode: ``h_t = Abar h_{t-1} + Bbar x_t``, ``y_t = Re C h_t + D x_t`` with the dense bilinear
  ``Abar = (I - dt/2 A)^-1 (I + dt/2 A)``, ``Bbar = (I - dt/2 A)^-1 dt B``;
* streaming (state in, state out): kernel mode for the zero-state part plus the initial state's
  contribution ``Re C Abar^(t+1) h0``, and the final state ``Abar^L h0 + sum_j Abar^(L-1-j) Bbar
  x_j``, with the powers of ``Abar`` built by doubling (log L matrix products).

Parameters (H = ``d_model``, N2 = ``d_state / 2``, R = ``rank``, K = ``channels``): ``log_dt``
(H,), ``log_A_real`` (H, N2), ``A_imag`` (H, N2), ``P`` (R, H, N2, 2), ``B`` (H, N2, 2), ``C``
(K, H, N2, 2), ``D`` (K, H), and with ``final_act='glu'`` ``output_linear`` (K*H -> 2H). With
``Lambda = -exp(log_A_real) + i A_imag``: the N2 stored values stand for conjugate pairs, so the
system is the real system of size N = ``d_state`` written in its eigenbasis,
``Lambda_f = (Lambda, conj Lambda)``, ``P_f = (P, conj P)``, ``B_f = (B, conj B)``,
``C_f = (C, conj C)`` and ``A = diag(Lambda_f) - sum_r P_f[r] P_f[r]^*``; the output
``Re C_f h = 2 Re C h`` is S4D's ``2 Re``. The Cauchy sums ``k_rs(w) = sum_n conj(u_r[n])
v_s[n] / (g(w) - Lambda_f[n])`` run over those N terms. Algorithm 1's factor ``2 / (1 + w)`` is
moved inside the resolvent (``K^(w) = dt (k00 - c k01 (1 + c k11)^-1 k10)`` with
``R = 1 / ((1 - w) - c Lambda_f)``, ``c = (1 + w) dt / 2``), the same quantity without the
singular point ``w = -1``. The streaming state is ``(B, H, N, 2)``: the full complex state.

Init: HiPPO-LegS in NPLR form: ``A_LegS = A_N - p p^T`` with ``p[n] = sqrt(n + 1/2)``,
``A_N = -I/2 + S`` normal; ``Lambda`` its eigenvalues with positive imaginary part, ``P = V^* p``,
``B = V^* b`` (``b[n] = sqrt(2n + 1)``) in the eigenbasis V, repeated over H (extra ranks zero);
``C`` complex standard normal; ``D`` standard normal; ``log_dt`` uniform in
``[log dt_min, log dt_max]``. ``Re Lambda = -exp(...) < 0`` makes ``A + A^*`` negative definite,
so every eigenvalue of ``Abar`` lies inside the unit disc.

Example:
    >>> import torch
    >>> layer = S4(d_model=4, d_state=8)
    >>> x = torch.randn(2, 30, 4)
    >>> y = layer(x)
    >>> state = layer.init_state(2)
    >>> y1, state = layer.stream(x[:, :12], state)
    >>> y2, state = layer.stream(x[:, 12:], state)
    >>> bool(torch.allclose(torch.cat([y1, y2], 1), y, atol=1e-4))
    True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from contractssm.errors import ShapeError, SpecError
from contractssm.layers.lti import LTILayer, bounded_exp, glu_output, log_dt_init
from contractssm.layers.s4d import complex_normal, setup_block

Tensor = torch.Tensor


def hippo_legs_nplr(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """HiPPO-LegS in NPLR form: ``(Lambda, V, p, b)`` (complex128 / float64).

    ``A_LegS = V diag(Lambda) V^* - p p^T`` with V unitary, ``b`` the LegS input vector;
    eigenvalues ascend by imaginary part.

    Example:
        >>> lam, v, p, b = hippo_legs_nplr(4)
        >>> q = torch.arange(4.0, dtype=torch.float64)
        >>> legs = -torch.tril(torch.outer(b, b), -1) - torch.diag(q + 1)
        >>> rebuilt = v @ torch.diag(lam) @ v.conj().T - torch.outer(p, p)
        >>> bool(torch.allclose(rebuilt.real, legs)) and bool(rebuilt.imag.abs().max() < 1e-12)
        True
    """
    q = torch.arange(n, dtype=torch.float64)
    b = torch.sqrt(2 * q + 1)
    p = torch.sqrt(q + 0.5)
    skew = torch.tril(-0.5 * torch.outer(b, b), diagonal=-1)
    skew = skew - skew.T  # A_LegS + p p^T = -I/2 + skew
    w, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    return torch.complex(torch.full_like(w, -0.5), w), v, p, b


class _System(NamedTuple):
    """The full (conjugate-completed) system of every channel, complex."""

    dt: Tensor  # (h,) real
    lam: Tensor  # (h, n)
    p: Tensor  # (r, h, n)
    b: Tensor  # (h, n)
    c: Tensor  # (k, h, n)
    A: Tensor  # (h, n, n)
    Abar: Tensor  # (h, n, n)
    Bbar: Tensor  # (h, n)
    norm: Tensor  # (h, n, n): (I - dt/2 A)^-1 dt


def _right_powers(mat: Tensor, v: Tensor, length: int) -> Tensor:
    """``mat^tau v`` for ``tau < length``: ``(h, n, length)`` by doubling."""
    out, power = v[..., None], mat
    while out.shape[-1] < length:
        out = torch.cat([out, power @ out], dim=-1)
        power = power @ power
    return out[..., :length]


def _left_powers(row: Tensor, mat: Tensor, length: int) -> Tensor:
    """``row mat^tau`` for ``tau < length``: ``(k, h, n, length)`` by doubling."""
    out, power = row[..., None], mat
    while out.shape[-1] < length:
        out = torch.cat([out, torch.einsum("khnt,hnm->khmt", out, power)], dim=-1)
        power = power @ power
    return out[..., :length]


class S4(LTILayer):
    """The S4 layer (module doc): DPLR SSM per channel, bilinear, ``channels`` heads.

    Args:
        d_model: H, the model channels.
        d_state: N, the state size (even: N2 = N / 2 conjugate pairs are stored).
        channels: K, output heads per channel.
        rank: R, the rank of the low-rank term ``P P^*``.
        dt_min: smallest initial step.
        dt_max: largest initial step.
        activation: ``'gelu'`` (default), ``'relu'``, ``'silu'``, ``'tanh'``, or ``None``.
        final_act: ``'glu'`` (1x1 linear K*H -> 2H and GLU) or ``None`` (returns K*H channels).
        transposed: layout ``(B, H, L)`` instead of ``(B, L, H)``.
        bidirectional: add an anti-causal pass with its own parameters (``backward_ssm``).
        dropout: dropout after the activation.
        discretization: ``'bilinear'`` (the only one S4 defines).
    """

    recurrence_parameters = ("log_dt", "log_A_real", "A_imag", "P", "B")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        rank: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        activation: str | None = "gelu",
        final_act: str | None = "glu",
        transposed: bool = False,
        bidirectional: bool = False,
        dropout: float = 0.0,
        discretization: str = "bilinear",
    ) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise SpecError(f"S4 needs an even d_state >= 2 (conjugate pairs), got {d_state}")
        if min(d_model, channels, rank) < 1:
            raise SpecError(
                f"S4 needs d_model, channels, rank >= 1, got {d_model}, {channels}, {rank}"
            )
        if discretization != "bilinear":
            raise SpecError(f"S4 is defined with discretization='bilinear', got {discretization!r}")
        n2 = d_state // 2
        self.d_model, self.d_state, self.channels, self.rank = d_model, d_state, channels, rank
        self.discretization = discretization
        self.transposed, self.bidirectional = bool(transposed), bool(bidirectional)
        dtype = torch.get_default_dtype()
        lam, v, p, b = hippo_legs_nplr(d_state)
        v = v[:, n2:]  # positive imaginary parts
        p_eig = torch.zeros(rank, d_model, n2, dtype=torch.complex128)
        p_eig[0] = (v.conj().T @ p.to(v.dtype)).expand(d_model, n2)
        b_eig = (v.conj().T @ b.to(v.dtype)).expand(d_model, n2)
        self.log_dt = nn.Parameter(log_dt_init((d_model,), dt_min, dt_max))
        self.log_A_real = nn.Parameter(torch.log(-lam.real[n2:]).repeat(d_model, 1).to(dtype))
        self.A_imag = nn.Parameter(lam.imag[n2:].repeat(d_model, 1).to(dtype))
        self.P = nn.Parameter(torch.view_as_real(p_eig).to(dtype).contiguous())
        self.B = nn.Parameter(torch.view_as_real(b_eig.contiguous()).to(dtype).contiguous())
        self.C = nn.Parameter(complex_normal(channels, d_model, n2))
        self.D = nn.Parameter(torch.randn(channels, d_model))
        setup_block(self, d_model, channels, activation, final_act, dropout)
        if self.bidirectional:
            self.backward_ssm = S4(
                d_model, d_state, channels, rank, dt_min, dt_max, activation=None, final_act=None
            )

    # -- the system ----------------------------------------------------------------------------

    def _system(self) -> _System:
        dt = bounded_exp(self.log_dt)  # (h,)
        lam = torch.complex(-bounded_exp(self.log_A_real), self.A_imag)  # (h, n2)

        def full(t: Tensor) -> Tensor:
            return torch.cat([t, t.conj()], dim=-1)

        lam_f = full(lam)
        p = full(torch.view_as_complex(self.P.contiguous()))  # (r, h, n)
        b = full(torch.view_as_complex(self.B.contiguous()))  # (h, n)
        c = full(torch.view_as_complex(self.C.contiguous()))  # (k, h, n)
        A = torch.diag_embed(lam_f) - torch.einsum("rhn,rhm->hnm", p, p.conj())
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        half = (dt / 2)[:, None, None]
        minus = eye - half * A
        norm = torch.linalg.solve(minus, dt[:, None, None] * eye)  # (I - dt/2 A)^-1 dt
        Abar = torch.linalg.solve(minus, eye + half * A)
        Bbar = torch.einsum("hnm,hm->hn", norm, b)
        return _System(dt, lam_f, p, b, c, A, Abar, Bbar, norm)

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """The discrete system ``(Abar, input normaliser, C_f)``, complex.

        ``Abar`` (H, N, N), the normaliser ``(I - dt/2 A)^-1 dt`` (H, N, N) (so ``Bbar`` is it
        times ``B_f``) and ``C_f`` (K, H, N), on the conjugate-completed state (``y = Re C_f h``).
        """
        s = self._system()
        return s.Abar, s.norm, s.c

    def compute_kernel(self, L: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """State powers ``Abar^tau Bbar`` (H, N, L) and ``Bbar`` (H, N) (extra args ignored)."""
        if not isinstance(L, int) or L < 1:
            raise ShapeError(f"compute_kernel needs a positive int length L, got {L!r}")
        s = self._system()
        return _right_powers(s.Abar, s.Bbar, L), s.Bbar

    def convolution_kernel(self, L: int, system: _System | None = None) -> Tensor:
        """The real kernel ``K[k,h,tau]`` (K, H, L) by Algorithm 1 (module doc)."""
        s = self._system() if system is None else system
        real = s.dt.dtype
        c_tilde = s.c - torch.einsum("khn,hnm->khm", s.c, torch.linalg.matrix_power(s.Abar, L))
        angle = torch.arange(L, dtype=real, device=s.dt.device) * (-2 * math.pi / L)
        w = torch.polar(torch.ones_like(angle), angle)  # (w,) roots of unity
        cw = (1 + w)[None, :] * (s.dt / 2)[:, None]  # (h, w)
        res = 1 / ((1 - w)[None, None, :] - cw[:, None, :] * s.lam[:, :, None])  # (h, n, w)
        k00 = torch.einsum("khn,hnw,hn->khw", c_tilde, res, s.b)
        k01 = torch.einsum("khn,hnw,rhn->khwr", c_tilde, res, s.p)
        k10 = torch.einsum("rhn,hnw,hn->hwr", s.p.conj(), res, s.b)
        k11 = torch.einsum("rhn,hnw,shn->hwrs", s.p.conj(), res, s.p)
        eye = torch.eye(self.rank, dtype=k11.dtype, device=k11.device)
        sol = torch.linalg.solve(eye + cw[..., None, None] * k11, k10[..., None])[..., 0]
        corr = torch.einsum("khwr,hwr->khw", k01, sol)
        k_hat = s.dt[None, :, None] * (k00 - cw[None] * corr)  # (k, h, w)
        return torch.fft.ifft(k_hat, dim=-1).real

    # -- modes ---------------------------------------------------------------------------------

    def _convolve(self, u: Tensor, kernel: Tensor) -> Tensor:
        """Causal FFT convolution plus skip: ``(b, h, l)`` -> ``(b, k*h, l)``."""
        length = u.shape[-1]
        n = 2 * length
        uf = torch.fft.rfft(u, n=n)  # (b, h, f)
        kf = torch.fft.rfft(kernel, n=n)  # (k, h, f)
        y = torch.fft.irfft(uf[:, None] * kf[None], n=n)[..., :length]  # (b, k, h, l)
        return (y + self.D[None, :, :, None] * u[:, None]).flatten(1, 2)

    def _core_kernel(self, u: Tensor) -> Tensor:
        return self._convolve(u, self.convolution_kernel(u.shape[-1]))

    def _core_stream(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        h0 = torch.view_as_complex(self._validate_state(state, u).contiguous())  # (b, h, n)
        s = self._system()
        length = u.shape[-1]
        y = self._convolve(u, self.convolution_kernel(length, s))
        first = torch.einsum("khn,hnm->khm", s.c, s.Abar)  # C Abar
        from_state = torch.einsum("khnt,bhn->bkht", _left_powers(first, s.Abar, length), h0)
        powers = _right_powers(s.Abar, s.Bbar, length).flip(-1)  # Abar^(L-1-j) Bbar
        h = torch.einsum("hnm,bhm->bhn", torch.linalg.matrix_power(s.Abar, length), h0)
        h = h + torch.einsum("hnj,bhj->bhn", powers, u.to(powers.dtype))
        return y + from_state.real.flatten(1, 2), torch.view_as_real(h)

    def _core_step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.view_as_complex(self._validate_state(state, u_t).contiguous())  # (b, h, n)
        s = self._system()
        h = torch.einsum("hnm,bhm->bhn", s.Abar, h) + s.Bbar[None] * u_t[..., None]
        y = torch.einsum("khn,bhn->bkh", s.c, h).real + self.D[None] * u_t[:, None]
        return y.flatten(1), torch.view_as_real(h)

    def _core_state_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.d_model, self.d_state, 2)

    def _post(self, z: Tensor) -> Tensor:
        return glu_output(self.dropout(self.activation(z)), self.output_linear)

    def plan(self, input_shape: tuple[int, int, int], **kwargs) -> None:
        """S4 runs outside the planner (dense state, module doc): there is no plan; ``None``."""
        if len(input_shape) != 3:
            raise ShapeError(f"input_shape must be {self._layout()}, got {tuple(input_shape)}")
        return None

    def extra_repr(self) -> str:
        """The sizes shown by ``repr``."""
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, channels={self.channels}, "
            f"rank={self.rank}"
        )
