"""LRU (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences").

SPEC.md section 4, in the parameter layout of lrnnx's ``LRU`` (so its checkpoints load):
``nu_log`` (N,), ``theta_log`` (N,), ``gamma_log`` (N,), ``B_re``, ``B_im`` (N, H), ``C_re``,
``C_im`` (H, N), ``D`` (H,). With ``a = exp(-exp(nu_log) + i exp(theta_log))``,
``gamma = exp(gamma_log)``, ``B = B_re + i B_im``, ``C = C_re + i C_im``:

``y[b,h,t] = Re sum_{n,g} C[h,n] sum_{j<=t} a[n]^(t-j) gamma[n] B[n,g] x[b,g,j] + D[h] x[b,h,t]``.

It runs as the planner's ``lru`` declaration (``y[b,h,l] = complex C[h,n] * gamma[n] * ssm
A[n;l] * complex B[n,g] * signal x[b,g,l] + D[h] * x[b,h,l]``) with the rate
``A = -exp(nu_log) + i exp(theta_log)`` (``a = exp(A)``). The streaming state is ``(B, N, 2)``;
``gamma`` commutes with the recurrence, and the planner places it on one side of the state once
for the layer's sizes, so the state is ``h_t = a h_{t-1} + gamma B x_t`` or the same without
``gamma`` (``plan(...).state_inputs`` says which); either way ``stream`` and ``step`` agree.

Init: ``|a|^2`` uniform on ``[r_min^2, r_max^2]``, phase uniform in ``[0, max_phase]``,
``gamma_log = log sqrt(1 - |a|^2)``, ``B_re, B_im ~ Normal(0, 1/(2H))``, ``C_re, C_im ~
Normal(0, 1/N)``, ``D ~ Normal(0, 1)``.

Stability: ``|a| = exp(-exp(nu_log)) < 1`` by construction; the exponents of ``nu_log``,
``theta_log`` and ``gamma_log`` are clipped to ``[-20, 20]`` (``gamma_log`` from above only).

Example:
    >>> import torch
    >>> layer = LRU(d_model=8, d_state=16)
    >>> x = torch.randn(3, 40, 8)
    >>> y, states = layer(x, lengths=torch.tensor([40, 10, 0]))
    >>> y.shape, states.shape
    (torch.Size([3, 40, 8]), torch.Size([3, 16, 2]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contractssm.errors import SpecError
from contractssm.layers.lti import LOG_LIMIT, PlannedLTI, bounded_exp
from contractssm.modes import get_graph

Tensor = torch.Tensor


class LRU(PlannedLTI):
    """The Linear Recurrent Unit (module doc).

    Args:
        d_model: H, input and output channels.
        d_state: N, complex states.
        r_min: smallest initial ``|a|``.
        r_max: largest initial ``|a|``.
        max_phase: largest initial phase of ``a``.
        transposed: layout ``(B, H, L)`` instead of ``(B, L, H)``.
        bidirectional: add an anti-causal pass with its own parameters (``backward_ssm``).
        **planner_options: ``objective``, ``autotune``, ``algorithm``, ``memory_limit``,
            ``length_bucket``.
    """

    recurrence_parameters = ("nu_log", "theta_log", "gamma_log")

    def __init__(
        self,
        d_model: int,
        d_state: int,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        transposed: bool = False,
        bidirectional: bool = False,
        **planner_options,
    ) -> None:
        super().__init__(get_graph("lru"), **planner_options)
        if d_model < 1 or d_state < 1:
            raise SpecError(f"LRU needs d_model, d_state >= 1, got {d_model}, {d_state}")
        if not 0 <= r_min <= r_max <= 1:
            raise SpecError(f"LRU needs 0 <= r_min <= r_max <= 1, got {r_min}, {r_max}")
        self.d_model, self.d_state = d_model, d_state
        self.transposed, self.bidirectional = bool(transposed), bool(bidirectional)
        dtype = torch.get_default_dtype()
        u1 = torch.rand(d_state, dtype=torch.float64)
        u2 = torch.rand(d_state, dtype=torch.float64)
        r2 = (u1 * (r_max**2 - r_min**2) + r_min**2).clamp(min=1e-300)
        nu_log = torch.log(-0.5 * torch.log(r2)).clamp(-LOG_LIMIT, LOG_LIMIT)
        theta_log = torch.log(max_phase * u2).clamp(-LOG_LIMIT, LOG_LIMIT)
        gamma_log = 0.5 * torch.log(-torch.expm1(-2 * torch.exp(nu_log)))  # log sqrt(1-|a|^2)
        self.nu_log = nn.Parameter(nu_log.to(dtype))
        self.theta_log = nn.Parameter(theta_log.to(dtype))
        self.B_re = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.B_im = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.C_re = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.C_im = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.D = nn.Parameter(torch.randn(d_model))
        self.gamma_log = nn.Parameter(gamma_log.to(dtype))
        if self.bidirectional:
            self.backward_ssm = LRU(d_model, d_state, r_min, r_max, max_phase, **planner_options)

    def rate(self) -> Tensor:
        """``log a = -exp(nu_log) + i exp(theta_log)`` (N,), real part < 0."""
        return torch.complex(-bounded_exp(self.nu_log), bounded_exp(self.theta_log))

    def _gamma(self) -> Tensor:
        return torch.exp(self.gamma_log.clamp(max=LOG_LIMIT))

    def ssm_operands(self) -> dict[str, Tensor]:
        """The ``lru`` operands: rate ``A``, ``gamma``, complex ``B`` and ``C``, skip ``D``."""
        return {
            "A": self.rate(),
            "gamma": self._gamma(),
            "B": torch.complex(self.B_re, self.B_im),
            "C": torch.complex(self.C_re, self.C_im),
            "D": self.D,
        }

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """The discrete system ``(a (N,), gamma (N,), C (H, N))``, complex.

        LRU has no discretization; ``gamma`` is the input normaliser.
        """
        return torch.exp(self.rate()), self._gamma(), torch.complex(self.C_re, self.C_im)

    def _rate_and_input(self) -> tuple[Tensor, Tensor]:
        return self.rate(), self._gamma()[:, None] * torch.complex(self.B_re, self.B_im)

    def extra_repr(self) -> str:
        """The sizes shown by ``repr``."""
        return f"{super().extra_repr()}, d_state={self.d_state}"
