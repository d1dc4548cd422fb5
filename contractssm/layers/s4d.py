"""S4D (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal SSMs").

SPEC.md section 4. Parameters (H = ``d_model``, N2 = ``d_state / 2`` conjugate pairs,
K = ``channels``): ``log_dt`` (H,), ``log_A_real`` (H, N2), ``A_imag`` (H, N2), ``C`` (K, H, N2, 2),
``D`` (K, H), and with ``final_act='glu'`` ``output_linear`` (K*H -> 2H). With
``A = -exp(log_A_real) + i A_imag`` and ``dt = exp(log_dt)``:

* ``zoh``: ``a = exp(dt A)``, ``W = C (a - 1) / A``;
* ``bilinear``: ``a = (1 + dt A / 2) / (1 - dt A / 2)``, ``W = C dt / (1 - dt A / 2)``;

``y[b,k,h,t] = 2 Re sum_n W[k,h,n] sum_{j<=t} a[h,n]^(t-j) x[b,h,j] + D[k,h] x[b,h,t]``, heads
flattened into channels as ``k * H + h``, then ``activation``, dropout and (``final_act='glu'``)
the 1x1 linear K*H -> 2H and a GLU. The SSM runs as the planner's ``s4d`` declaration
(``y[b,k,h,l] = complex W[k,h,n] * ssm A[h,n;l] * signal x[b,h,l] + D[k,h] * x[b,h,l]``) with the
operand ``A`` the rate ``log a`` and the factor 2 of ``2 Re`` folded into ``W``. The streaming
state is ``(B, H, N2, 2)``: the complex state ``h[b,h,n]`` of the recurrence above.

Example:
    >>> import torch
    >>> layer = S4D(d_model=8, d_state=16, channels=2)
    >>> x = torch.randn(3, 50, 8)
    >>> layer(x).shape
    torch.Size([3, 50, 8])
    >>> state = layer.init_state(3)
    >>> y, state = layer.stream(x[:, :20], state)
    >>> state.shape
    torch.Size([3, 8, 8, 2])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contractssm.errors import SpecError
from contractssm.layers.lti import (
    PlannedLTI,
    activation_module,
    bilinear_rate,
    bounded_exp,
    check_discretization,
    glu_output,
    log_dt_init,
)
from contractssm.modes import get_graph

Tensor = torch.Tensor


def complex_normal(*shape: int) -> Tensor:
    """Complex standard normal (E|z|^2 = 1) as a real tensor with a trailing axis of 2."""
    z = torch.randn(*shape, dtype=torch.complex128)
    return torch.view_as_real(z).to(torch.get_default_dtype()).contiguous()


def setup_block(
    module: nn.Module,
    d_model: int,
    channels: int,
    activation: str | None,
    final_act: str | None,
    dropout: float,
) -> None:
    """The S4/S4D block after the SSM: activation, dropout, ``output_linear`` + GLU."""
    module.activation = activation_module(activation)
    module.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    if final_act == "glu":
        module.output_linear = nn.Linear(channels * d_model, 2 * d_model)
    elif final_act is None:
        module.output_linear = None
    else:
        raise SpecError(f"final_act must be 'glu' or None, got {final_act!r}")


class S4D(PlannedLTI):
    """The S4D layer (module doc): diagonal complex SSM per channel, ``channels`` heads.

    Args:
        d_model: H, the model channels.
        d_state: N, the state size (even: N2 = N / 2 conjugate pairs are stored).
        channels: K, output heads per channel.
        dt_min: smallest initial step (``log_dt`` uniform in ``[log dt_min, log dt_max]``).
        dt_max: largest initial step.
        discretization: ``'zoh'`` or ``'bilinear'``.
        activation: ``'gelu'`` (default), ``'relu'``, ``'silu'``, ``'tanh'``, or ``None``.
        final_act: ``'glu'`` (1x1 linear K*H -> 2H and GLU) or ``None`` (returns K*H channels).
        transposed: layout ``(B, H, L)`` instead of ``(B, L, H)``.
        bidirectional: add an anti-causal pass with its own parameters (``backward_ssm``).
        dropout: dropout after the activation.
        **planner_options: ``objective``, ``autotune``, ``algorithm``, ``memory_limit``,
            ``length_bucket``.
    """

    recurrence_parameters = ("log_dt", "log_A_real", "A_imag")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        discretization: str = "zoh",
        activation: str | None = "gelu",
        final_act: str | None = "glu",
        transposed: bool = False,
        bidirectional: bool = False,
        dropout: float = 0.0,
        **planner_options,
    ) -> None:
        super().__init__(get_graph("s4d"), **planner_options)
        if d_state < 2 or d_state % 2:
            raise SpecError(f"S4D needs an even d_state >= 2 (conjugate pairs), got {d_state}")
        if d_model < 1 or channels < 1:
            raise SpecError(f"S4D needs d_model, channels >= 1, got {d_model}, {channels}")
        n2 = d_state // 2
        self.d_model, self.d_state, self.channels = d_model, d_state, channels
        self.discretization = check_discretization(discretization, ("zoh", "bilinear"), "S4D")
        self.transposed, self.bidirectional = bool(transposed), bool(bidirectional)
        dtype = torch.get_default_dtype()
        self.log_dt = nn.Parameter(log_dt_init((d_model,), dt_min, dt_max))
        self.log_A_real = nn.Parameter(torch.full((d_model, n2), math.log(0.5), dtype=dtype))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n2, dtype=dtype).repeat(d_model, 1))
        self.C = nn.Parameter(complex_normal(channels, d_model, n2))
        self.D = nn.Parameter(torch.randn(channels, d_model))
        setup_block(self, d_model, channels, activation, final_act, dropout)
        if self.bidirectional:
            self.backward_ssm = S4D(
                d_model,
                d_state,
                channels,
                dt_min,
                dt_max,
                discretization,
                activation=None,
                final_act=None,
                **planner_options,
            )

    def _discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(rate = log a (H, N2), input normaliser (H, N2), C (K, H, N2))``, complex."""
        dt = bounded_exp(self.log_dt)[:, None]  # (h, 1)
        A = torch.complex(-bounded_exp(self.log_A_real), self.A_imag)  # (h, n)
        z = dt * A
        C = torch.view_as_complex(self.C.contiguous())  # (k, h, n)
        if self.discretization == "zoh":
            return z, torch.expm1(z) / A, C
        rate, den = bilinear_rate(z)
        return rate, dt / den, C

    def ssm_operands(self) -> dict[str, Tensor]:
        """The ``s4d`` operands: rate ``A``, ``W = 2 C * normaliser``, skip ``D``."""
        rate, norm, C = self._discrete()
        return {"A": rate, "W": 2 * C * norm, "D": self.D}

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(a (H, N2), input normaliser (H, N2), 2 C (K, H, N2))``, complex.

        ``y = Re sum_n (2 C)[k,h,n] sum_j a^(t-j) normaliser x_j + D x`` (S4D's B is 1).
        """
        rate, norm, C = self._discrete()
        return torch.exp(rate), norm, 2 * C

    def _rate_and_input(self) -> tuple[Tensor, Tensor]:
        rate, norm, _ = self._discrete()
        return rate, norm

    def _post(self, z: Tensor) -> Tensor:
        return glu_output(self.dropout(self.activation(z)), self.output_linear)

    def extra_repr(self) -> str:
        """The sizes and options shown by ``repr``."""
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, channels={self.channels}, "
            f"discretization={self.discretization!r}"
        )
