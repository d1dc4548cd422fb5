"""The Centaurus modes as (B, L, H) LTI models with the interface of linear-RNN libraries.

``CentaurusNeck``, ``CentaurusPWNeck``, ``CentaurusDWS`` and ``CentaurusFull`` take
``(d_model, d_state, sub_state_dim, discretization='zoh')`` like lrnnx's classes of the same
names, map ``d_model -> d_model`` channels, and compute exactly SPEC.md section 3 (the
parameters, inits and formulas of :class:`~contractssm.layers.centaurus.SSMLayer`, without the
mixer: these are the linear SSMs alone). The sizes follow lrnnx, where ``d_state`` counts state
*blocks* and ``sub_state_dim`` the states inside each block:

============== ======== ========================================================== =============
class          mode     parameters (H = d_model, N = d_state, M = sub_state_dim)   state
============== ======== ========================================================== =============
CentaurusNeck  neck     A (N,M,2), log_dt (N,), B (N,H), C (H,N), E (N,M)          (B,N,M,2)
CentaurusPWNeck s5      A (N*M,2), log_dt (N*M,), B (N*M,H), C (H,N*M)             (B,N*M,2)
CentaurusDWS   dws      A (H,M,2), log_dt (H,M), E (H,M)                           (B,H,M,2)
CentaurusFull  full     A (H,H,M,2), log_dt (H,M), E (H,H,M)                       (B,H,H,M,2)
============== ======== ========================================================== =============

``neck`` is the paper's bottleneck: B projects the H channels onto N blocks, each block runs M
sub-states mixed back by E, and C maps the N blocks to H channels; ``s5`` ("pointwise
bottleneck") flattens the N*M states with one ``dt`` per block, as lrnnx's ``CentaurusPWNeck``
and the reference's ``s5`` do. In ``dws`` and ``full`` the connectivity fixes the blocks (one
per channel, one per channel pair), so ``d_state`` is not a free size there: it is accepted for
interface compatibility and ignored, and every block has ``sub_state_dim`` states. Only
``discretization='zoh'`` exists: the reference's simplified zero-order hold
(``a = exp(dt A)``, input scaled by ``dt``).

``discretize()`` and ``compute_kernel(L)`` describe every mode in one flattened form over the
S states of the state layout (row-major over the state axes above, batch excluded): discrete
``A_bar`` (S,) complex, the input normaliser ``B_bar`` (S, H) real (``dt`` and, for ``dws`` and
``full``, ``E`` folded in; one-hot over channels where the mode is depthwise) and ``C_bar``
(H, S) real, with ``y[b,t,h] = Re sum_s C_bar[h,s] sum_{j<=t} A_bar[s]^(t-j) (B_bar x[b,j])[s]``.
That form is dense (``full`` holds H^3 M entries): it is for inspection and tests, the layers
never build it. The streaming state (``stream``, ``step``, ``lengths``) is the planner's state
of the declaration, which may hold a state-only weight (E) on its input side.

Example:
    >>> import torch
    >>> model = Centaurus(d_model=8, d_state=4, sub_state_dim=2, mode="neck")
    >>> x = torch.randn(2, 32, 8)
    >>> model(x).shape
    torch.Size([2, 32, 8])
    >>> cache = model.allocate_inference_cache(batch_size=2)
    >>> y0, cache = model.step(x[:, 0], cache)
    >>> y0.shape, cache["lrnn_state"].shape
    (torch.Size([2, 8]), torch.Size([2, 4, 2, 2]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from contractssm.errors import ShapeError, SpecError
from contractssm.layers.base import SSMModule, right_aligned
from contractssm.layers.centaurus import centaurus_mode, centaurus_operands, centaurus_parameters
from contractssm.modes import get_graph
from contractssm.planner.plan import Plan

Tensor = torch.Tensor


class CentaurusBase(SSMModule):
    """A Centaurus mode as a (B, L, H) LTI model (see the module doc for sizes and mapping).

    Args:
        d_model: H, input and output channels.
        d_state: N, state blocks (``neck``, ``s5``; ignored by ``dws`` and ``full``).
        sub_state_dim: M, states per block.
        discretization: ``'zoh'`` (the only one Centaurus defines).
        **planner_options: ``objective``, ``autotune``, ``algorithm``, ``memory_limit``,
            ``length_bucket``.
    """

    mode: str = ""

    def __init__(
        self,
        d_model: int,
        d_state: int,
        sub_state_dim: int,
        discretization: str = "zoh",
        **planner_options,
    ) -> None:
        if discretization != "zoh":
            raise SpecError(
                f"{type(self).__name__} supports discretization='zoh' only (the reference's "
                f"a = exp(dt A) with the input scaled by dt), got {discretization!r}"
            )
        super().__init__(get_graph(self.mode), **planner_options)
        self.d_model = d_model
        self.d_state = d_state
        self.sub_state_dim = sub_state_dim
        self.discretization = discretization
        blocks = d_state if self.mode in ("neck", "s5") else 1
        self.B = self.C = self.E = None
        for name, value in centaurus_parameters(
            self.mode, sub_state_dim, d_model, d_model, blocks
        ).items():
            setattr(self, name, nn.Parameter(value))

    def extra_repr(self) -> str:
        """The constructor's sizes and mode."""
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, "
            f"sub_state_dim={self.sub_state_dim}, mode={self.mode!r}"
        )

    def ssm_operands(self) -> dict[str, Tensor]:
        """The effective operands of the mode's declaration (SPEC.md section 3)."""
        return centaurus_operands(self.mode, self.A, self.log_dt, self.B, self.C, self.E)

    # -- layout --------------------------------------------------------------------------------

    def _channels_first(self, x: Tensor, *, step: bool = False) -> Tensor:
        layout = "(B, H)" if step else "(B, L, H)"
        rank = 2 if step else 3
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise ShapeError(f"{name} expects a tensor laid out {layout}, got {type(x).__name__}")
        if x.dim() != rank:
            raise ShapeError(
                f"{name} expects input {layout} with {rank} axes, got {x.dim()} axes, "
                f"shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.d_model:
            raise ShapeError(
                f"{name} expects input {layout} with H = d_model = {self.d_model}, got "
                f"H = {x.shape[-1]} (shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise ShapeError(
                f"{name} expects a floating-point input (float32 or float64), got {x.dtype}"
            )
        if not step and x.shape[1] < 1:
            raise ShapeError(f"{name} expects at least one time step, got {tuple(x.shape)}")
        return x if step else x.transpose(1, 2)

    # -- running -------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        integration_timesteps: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Kernel mode on (B, L, H).

        Args:
            x: the input (B, L, H).
            integration_timesteps: not supported: Centaurus is time-invariant.
            lengths: optional (B,) integer lengths; then the call also returns each sequence's
                state after its own ``lengths[b]`` steps (the ``stream``/``step`` state layout).

        Returns:
            ``y`` (B, L, H), or ``(y, states)`` when ``lengths`` is given. Outputs past a
            sequence's length depend on the input there (causality keeps earlier ones exact).

        Raises:
            ShapeError: bad input, ``lengths`` out of range, or ``integration_timesteps`` given.
        """
        if integration_timesteps is not None:
            raise ShapeError(
                f"{type(self).__name__} is linear time-invariant: integration_timesteps "
                "(per-step dt) needs a time-varying (async / LTV) model"
            )
        xt = self._channels_first(x)  # (b, h, l)
        y = self.ssm_kernel(xt).transpose(1, 2)
        if lengths is None:
            return y
        return y, self._states_at(xt, lengths)

    def _states_at(self, xt: Tensor, lengths: Tensor) -> Tensor:
        """The state after ``lengths[b]`` steps of each sequence b.

        Each sequence is streamed right-aligned (zeros in front keep a zero state exactly zero),
        from a zero state, all in one call.
        """
        shifted = right_aligned(xt, lengths)
        batch = xt.shape[0]
        _, states = self.ssm_stream(shifted, self.init_state(batch, xt.device, xt.dtype))
        return states

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """A zero streaming state, real, ``(B, <state axes>, 2)`` (see the module doc)."""
        return torch.zeros(
            self.ssm_state_shape({"b": int(batch_size)}),
            device=device if device is not None else self.A.device,
            dtype=dtype if dtype is not None else self.A.dtype,
        )

    def stream(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """A chunk (B, L, H) of any length from ``state``; returns ``(y, new_state)``."""
        y, state = self.ssm_stream(self._channels_first(x), state)
        return y.transpose(1, 2), state

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int = 1, dtype: torch.dtype | None = None, **kwargs
    ) -> dict[str, Any]:
        """``{"lrnn_state": zero state}`` (``max_seqlen`` is unused: the model is LTI)."""
        return {"lrnn_state": self.init_state(batch_size, dtype=dtype)}

    def step(
        self, x: Tensor, inference_cache: dict[str, Any], **kwargs
    ) -> tuple[Tensor, dict[str, Any]]:
        """One time step: ``x`` (B, H) -> ``(y (B, H), inference_cache)`` with the new state."""
        if not isinstance(inference_cache, dict) or "lrnn_state" not in inference_cache:
            raise ShapeError(
                "inference_cache must be the dict allocate_inference_cache() returns, with "
                "an 'lrnn_state' entry"
            )
        y, state = self.ssm_step(self._channels_first(x, step=True), inference_cache["lrnn_state"])
        inference_cache["lrnn_state"] = state
        return y, inference_cache

    def plan(self, input_shape: tuple[int, int, int], *, training: bool | None = None) -> Plan:
        """The plan used for an input of ``input_shape`` (B, L, H), in the parameters' dtype."""
        shape = tuple(int(n) for n in input_shape)
        if len(shape) != 3 or shape[2] != self.d_model:
            raise ShapeError(
                f"input_shape must be (B, L, H) with H = d_model = {self.d_model}, got {shape}"
            )
        b, length, h = shape
        return self.plan_for(
            (b, h, length), dtype=self.A.dtype, device=self.A.device, training=training
        )

    # -- the flattened LTI form ------------------------------------------------------------------

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(A_bar (S,) complex, B_bar (S, H), C_bar (H, S))``: the flattened form (module doc)."""
        ops = self.ssm_operands()
        H, M = self.d_model, self.sub_state_dim
        a_bar = torch.exp(ops["A"]).reshape(-1)
        eye = torch.eye(H, dtype=self.A.dtype, device=self.A.device)
        if self.mode == "s5":
            return a_bar, ops["B"], ops["C"]
        if self.mode == "neck":
            n = ops["B"].shape[0]
            b_bar = ops["B"][:, None, :].expand(n, M, H).reshape(n * M, H)
            c_bar = (ops["C"][:, :, None] * ops["E"][None]).reshape(H, n * M)
            return a_bar, b_bar, c_bar
        if self.mode == "dws":
            b_bar = torch.einsum("cm,cg->cmg", ops["E"], eye).reshape(H * M, H)
            c_bar = eye[:, :, None].expand(H, H, M).reshape(H, H * M)
            return a_bar, b_bar, c_bar
        b_bar = torch.einsum("dcm,cg->dcmg", ops["E"], eye).reshape(H * H * M, H)
        c_bar = eye[:, :, None, None].expand(H, H, H, M).reshape(H, H * H * M)
        return a_bar, b_bar, c_bar

    def compute_kernel(self, L: int) -> tuple[Tensor, Tensor]:
        """``(K (S, L) complex, B_bar (S, H))`` with ``K[s, l] = A_bar[s] ** l``."""
        if not isinstance(L, int) or isinstance(L, bool) or L < 1:
            raise ShapeError(f"compute_kernel needs a positive int length L, got {L!r}")
        _, b_bar, _ = self.discretize()
        rate = self.ssm_operands()["A"].reshape(-1)  # (s,), log of A_bar
        tau = torch.arange(L, dtype=self.A.dtype, device=self.A.device)
        return torch.exp(rate[:, None] * tau), b_bar


class CentaurusNeck(CentaurusBase):
    """The ``neck`` mode (bottleneck): H -> N blocks of M sub-states -> H; see the module doc.

    Example:
        >>> import torch
        >>> CentaurusNeck(d_model=8, d_state=4, sub_state_dim=2)(torch.randn(2, 16, 8)).shape
        torch.Size([2, 16, 8])
    """

    mode = "neck"


class CentaurusPWNeck(CentaurusBase):
    """The ``s5`` mode (pointwise bottleneck): N*M flattened states, one ``dt`` per block.

    Example:
        >>> import torch
        >>> CentaurusPWNeck(d_model=8, d_state=4, sub_state_dim=2)(torch.randn(2, 16, 8)).shape
        torch.Size([2, 16, 8])
    """

    mode = "s5"


class CentaurusDWS(CentaurusBase):
    """The ``dws`` mode without its mixer: M states per channel, no channel mixing.

    Example:
        >>> import torch
        >>> CentaurusDWS(d_model=8, d_state=8, sub_state_dim=2)(torch.randn(2, 16, 8)).shape
        torch.Size([2, 16, 8])
    """

    mode = "dws"


class CentaurusFull(CentaurusBase):
    """The ``full`` mode: M states for every (output, input) channel pair.

    Example:
        >>> import torch
        >>> CentaurusFull(d_model=8, d_state=8, sub_state_dim=2)(torch.randn(2, 16, 8)).shape
        torch.Size([2, 16, 8])
    """

    mode = "full"


_CLASSES = {
    "neck": CentaurusNeck,
    "s5": CentaurusPWNeck,
    "dws": CentaurusDWS,
    "full": CentaurusFull,
}


def Centaurus(
    d_model: int,
    d_state: int,
    sub_state_dim: int,
    discretization: str = "zoh",
    mode: str = "neck",
    **planner_options,
) -> CentaurusBase:
    """The Centaurus (B, L, H) model of ``mode``.

    Args:
        d_model: H.
        d_state: N, state blocks (``neck``, ``s5``).
        sub_state_dim: M, states per block.
        discretization: ``'zoh'``.
        mode: ``'neck'``, ``'pointwise'`` / ``'pw'`` / ``'s5'``, ``'dws'`` or ``'full'``.
        **planner_options: passed to the layer.

    Example:
        >>> type(Centaurus(8, 4, 2, mode="pw")).__name__
        'CentaurusPWNeck'
    """
    return _CLASSES[centaurus_mode(mode)](
        d_model, d_state, sub_state_dim, discretization, **planner_options
    )
