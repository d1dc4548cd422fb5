"""S5 (Smith et al. 2023, "Simplified State Space Layers for Sequence Modeling").

SPEC.md section 4. Parameters (H = ``d_model``, P states, ``P = d_state // 2`` conjugate pairs
with ``conj_sym=True``, else ``P = d_state``): ``Lambda_re`` (P,), ``Lambda_im`` (P,), ``B``
(P, H, 2), ``C`` (H, P, 2), ``D`` (H,), ``log_dt`` (P,). With ``Lambda = Lambda_re + i Lambda_im``
and ``dt = exp(log_dt)``:

* ``zoh``: ``a = exp(dt Lambda)``, ``Bbar = ((a - 1) / Lambda) B``;
* ``bilinear``: ``a = (1 + dt Lambda / 2) / (1 - dt Lambda / 2)``,
  ``Bbar = (dt / (1 - dt Lambda / 2)) B``;
* ``dirac``: ``a = exp(dt Lambda)``, ``Bbar = B``;

``y[b,h,t] = Re sum_{p,g} C[h,p] sum_{j<=t} a[p]^(t-j) Bbar[p,g] x[b,g,j] + D[h] x[b,h,t]``, the
first term doubled with ``conj_sym`` (the factor 2 is folded into ``C``). It runs as the
planner's ``s5_mimo`` declaration (``y[b,h,l] = complex C[h,p] * ssm A[p;l] * complex B[p,g] *
signal x[b,g,l] + D[h] * x[b,h,l]``) with ``A = log a`` and ``B = Bbar``. The streaming state is
``(B, P, 2)``: the complex state ``h_t = a h_{t-1} + Bbar x_t``.

Init: ``Lambda`` the eigenvalues of HiPPO-N (``A_N = -I/2 + S``, ``S[n,k] =
-sqrt((2n+1)(2k+1))/2`` for ``n > k``, skew-symmetric) with eigenvectors V; ``B = V^* B0`` and
``C = C0 V`` with ``B0`` (d_state, H) ~ Normal(0, 1/H) and ``C0`` (H, d_state) ~ Normal(0,
1/d_state) real (the paper's init; with ``conj_sym`` the kept half plus its implicit conjugates
is exactly the real system ``(A_N, B0, C0)``); ``log_dt`` uniform in ``[log dt_min, log dt_max]``;
``D`` ~ Normal(0, 1).

Stability: ``Re Lambda`` is ``min(Lambda_re, -1e-4)`` (the S5 paper's eigenvalue clipping: the
identity on every stable value, so ``Lambda_re`` is the real part itself), hence negative by
construction; ``dt`` is ``exp`` of ``log_dt`` clipped to ``[-20, 20]``.

Example:
    >>> import torch
    >>> layer = S5(d_model=8, d_state=16)
    >>> x = torch.randn(3, 40, 8)
    >>> layer(x).shape
    torch.Size([3, 40, 8])
    >>> cache = layer.allocate_inference_cache(batch_size=3)
    >>> y0, cache = layer.step(x[:, 0], cache)
    >>> cache["lrnn_state"].shape
    torch.Size([3, 8, 2])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contractssm.errors import SpecError
from contractssm.layers.lti import (
    PlannedLTI,
    bilinear_rate,
    bounded_exp,
    check_discretization,
    log_dt_init,
)
from contractssm.modes import get_graph

Tensor = torch.Tensor

#: Largest real part of a continuous S5 eigenvalue (the paper's ``clip_eigs``).
MAX_REAL = -1e-4


def hippo_n(n: int) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending imaginary part) and unitary eigenvectors of HiPPO-N, complex128.

    ``A_N = -I/2 + S`` with ``S[i,k] = -sqrt((2i+1)(2k+1))/2`` for ``i > k``, skew-symmetric.

    Example:
        >>> lam, v = hippo_n(4)
        >>> lam.real.tolist()
        [-0.5, -0.5, -0.5, -0.5]
    """
    s = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    skew = torch.tril(-0.5 * torch.outer(s, s), diagonal=-1)
    skew = skew - skew.T
    w, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # -iS is Hermitian
    return torch.complex(torch.full_like(w, -0.5), w), v


class S5(PlannedLTI):
    """The S5 layer (module doc): one MIMO diagonal SSM over all H channels.

    Args:
        d_model: H, input and output channels.
        d_state: the state size of the real system (P = d_state // 2 with ``conj_sym``).
        discretization: ``'zoh'``, ``'bilinear'`` or ``'dirac'``.
        conj_sym: keep one eigenvalue of each conjugate pair and double the output term.
        dt_min: smallest initial step.
        dt_max: largest initial step.
        transposed: layout ``(B, H, L)`` instead of ``(B, L, H)``.
        bidirectional: add an anti-causal pass with its own parameters (``backward_ssm``).
        **planner_options: ``objective``, ``autotune``, ``algorithm``, ``memory_limit``,
            ``length_bucket``.
    """

    recurrence_parameters = ("Lambda_re", "Lambda_im", "log_dt")

    def __init__(
        self,
        d_model: int,
        d_state: int,
        discretization: str = "zoh",
        conj_sym: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        transposed: bool = False,
        bidirectional: bool = False,
        **planner_options,
    ) -> None:
        super().__init__(get_graph("s5_mimo"), **planner_options)
        if d_model < 1 or d_state < 1:
            raise SpecError(f"S5 needs d_model, d_state >= 1, got {d_model}, {d_state}")
        if conj_sym and d_state % 2:
            raise SpecError(f"S5 with conj_sym=True needs an even d_state, got {d_state}")
        self.d_model, self.d_state, self.conj_sym = d_model, d_state, bool(conj_sym)
        self.discretization = check_discretization(
            discretization, ("zoh", "bilinear", "dirac"), "S5"
        )
        self.transposed, self.bidirectional = bool(transposed), bool(bidirectional)
        p = d_state // 2 if conj_sym else d_state
        dtype = torch.get_default_dtype()
        lam, v = hippo_n(d_state)
        v = v[:, :p]  # (n, p)
        b0 = torch.randn(d_state, d_model, dtype=torch.float64) / math.sqrt(d_model)
        c0 = torch.randn(d_model, d_state, dtype=torch.float64) / math.sqrt(d_state)
        b = v.conj().T @ b0.to(v.dtype)  # (p, h)
        c = c0.to(v.dtype) @ v  # (h, p)
        self.Lambda_re = nn.Parameter(lam.real[:p].to(dtype))
        self.Lambda_im = nn.Parameter(lam.imag[:p].to(dtype))
        self.B = nn.Parameter(torch.view_as_real(b).to(dtype).contiguous())
        self.C = nn.Parameter(torch.view_as_real(c).to(dtype).contiguous())
        self.D = nn.Parameter(torch.randn(d_model))
        self.log_dt = nn.Parameter(log_dt_init((p,), dt_min, dt_max))
        if self.bidirectional:
            self.backward_ssm = S5(
                d_model, d_state, discretization, conj_sym, dt_min, dt_max, **planner_options
            )

    def eigenvalues(self) -> Tensor:
        """The continuous eigenvalues ``Lambda`` (P,), real part clipped to ``<= -1e-4``."""
        return torch.complex(self.Lambda_re.clamp(max=MAX_REAL), self.Lambda_im)

    def _discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(rate = log a (P,), input normaliser (P,), C (H, P) with the factor 2)``."""
        dt = bounded_exp(self.log_dt)
        lam = self.eigenvalues()
        z = dt * lam
        if self.discretization == "zoh":
            rate, norm = z, torch.expm1(z) / lam
        elif self.discretization == "bilinear":
            rate, den = bilinear_rate(z)
            norm = dt / den
        else:  # dirac
            rate, norm = z, torch.ones_like(z)
        C = torch.view_as_complex(self.C.contiguous())
        return rate, norm, (2 * C if self.conj_sym else C)

    def ssm_operands(self) -> dict[str, Tensor]:
        """The ``s5_mimo`` operands: rate ``A``, ``B = Bbar``, ``C`` (doubled), skip ``D``."""
        rate, norm, C = self._discrete()
        B = norm[:, None] * torch.view_as_complex(self.B.contiguous())
        return {"A": rate, "B": B, "C": C, "D": self.D}

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """The discrete system ``(a (P,), input normaliser (P,), C (H, P))``, complex.

        ``C`` carries the factor 2 of ``conj_sym``, so
        ``y = Re C sum_j a^(t-j) (normaliser B) x_j + D x``.
        """
        rate, norm, C = self._discrete()
        return torch.exp(rate), norm, C

    def _rate_and_input(self) -> tuple[Tensor, Tensor]:
        rate, norm, _ = self._discrete()
        return rate, norm[:, None] * torch.view_as_complex(self.B.contiguous())

    def extra_repr(self) -> str:
        """The sizes and options shown by ``repr``."""
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, conj_sym={self.conj_sym}, "
            f"discretization={self.discretization!r}"
        )
