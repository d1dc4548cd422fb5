"""What S4D, S5, LRU and S4 share: layouts, checks, streaming and the LTI model interface.

Every model of SPEC.md section 4 is a sequence-to-sequence layer laid out ``(B, L, H)``
(``(B, H, L)`` with ``transposed=True``) with one API:

* ``forward(x, integration_timesteps=None, lengths=None)``: kernel mode from a zero state;
  with ``lengths`` (B,) it also returns each sequence's state after its own length;
* ``init_state(batch_size)``, ``stream(x, state) -> (y, state)`` for a chunk of any length,
  ``step(x_t, state) -> (y_t, state)`` for one step (``x_t`` is ``(B, H)``); states are real
  tensors (complex values as trailing (real, imaginary) pairs);
* the linear-RNN-library interface: ``allocate_inference_cache(batch_size)`` returns a dict with
  an ``"lrnn_state"`` entry and ``step(x, inference_cache) -> (y, inference_cache)``;
  ``discretize()`` returns ``(A_bar, input normaliser, C)``; ``compute_kernel(L)`` returns the
  state powers ``(..., N, L)`` and the normalised input matrix; ``plan(input_shape)`` the plan.

``bidirectional=True`` adds a second, anti-causal recurrence with its own parameters (the
submodule ``backward_ssm``, the same class): the SSM output is the causal pass plus the
time-reversed pass of ``backward_ssm`` on the time-reversed input, each with its own skip ``D``.
A bidirectional layer has no causal state, so ``stream``, ``step``, ``init_state`` and
``lengths`` raise :class:`~contractssm.errors.SpecError`.

Stability guards. The recurrence parameters are mapped so that the continuous rate has a
negative real part by construction (``-exp``, ``-softplus`` or a clip), and every exponent of a
log-parameter is clipped to ``[-LOG_LIMIT, LOG_LIMIT]`` (``exp(20) ~ 4.9e8``) before ``exp``, so
pushing a raw parameter to +-1e4 keeps ``|a| <= 1`` (strictly below 1 in float64 when one
parameter is pushed at a time) and every output finite. Inside the clip range the maps are the
papers' formulas exactly; outside it their gradient is zero.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contractssm.errors import ShapeError, SpecError
from contractssm.layers.base import SSMModule, right_aligned

Tensor = torch.Tensor

#: Exponents of log-parameters are clipped to this magnitude before ``exp``.
LOG_LIMIT = 20.0

_ACTIVATIONS = {
    None: nn.Identity,
    "id": nn.Identity,
    "identity": nn.Identity,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def bounded_exp(t: Tensor) -> Tensor:
    """``exp(t)`` with ``t`` clipped to ``[-LOG_LIMIT, LOG_LIMIT]`` (never 0 or inf)."""
    return torch.exp(t.clamp(-LOG_LIMIT, LOG_LIMIT))


def log_dt_init(shape: tuple[int, ...], dt_min: float, dt_max: float) -> Tensor:
    """``log dt`` uniform in ``[log dt_min, log dt_max]`` (the S4/S5 init)."""
    if not 0 < dt_min <= dt_max:
        raise SpecError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    lo, hi = math.log(dt_min), math.log(dt_max)
    return torch.rand(shape) * (hi - lo) + lo


def diagonal_powers(rate: Tensor, length: int) -> Tensor:
    """``a^tau = exp(rate * tau)`` for ``tau < length``: shape ``(*rate.shape, length)``."""
    tau = torch.arange(length, device=rate.device, dtype=rate.real.dtype)
    return torch.exp(rate[..., None] * tau)


def bilinear_rate(z: Tensor) -> tuple[Tensor, Tensor]:
    """The bilinear discretization of ``z = dt * Lambda``: ``(log a, 1 - z / 2)``.

    ``a = (1 + z/2) / (1 - z/2)``; ``Re log a`` is floored at -100 (``|a| >= 4e-44``) so that
    ``a = 0`` (``z = -2`` exactly) gives a finite rate and ``a^0 = 1``, not NaN.
    """
    den = 1 - z / 2
    rate = torch.log((1 + z / 2) / den)
    return torch.complex(rate.real.clamp(min=-100.0), rate.imag), den


def activation_module(name: str | None) -> nn.Module:
    """The activation of an S4/S4D block by name (``None`` or ``'id'`` for none)."""
    if name not in _ACTIVATIONS:
        known = ", ".join(repr(k) for k in _ACTIVATIONS)
        raise SpecError(f"unknown activation {name!r} (known: {known})")
    return _ACTIVATIONS[name]()


def check_discretization(name: str, allowed: tuple[str, ...], layer: str) -> str:
    """Validate a discretization name."""
    if name not in allowed:
        raise SpecError(f"{layer} supports discretization {allowed}, got {name!r}")
    return name


class LTILayer(nn.Module):
    """The shared public API (module doc); subclasses implement the ``_core_*`` hooks.

    A subclass sets ``d_model``, ``transposed``, ``bidirectional`` and (when bidirectional) the
    submodule ``backward_ssm``, and implements, on the graph's signal layout ``(b, h, l)``:

    * ``_core_kernel(u) -> y`` (``(b, c, l)``, channels flattened),
    * ``_core_stream(u, state) -> (y, state)`` and ``_core_step(u_t, state) -> (y_t, state)``,
    * ``_core_state_shape(batch_size)``;

    and optionally ``_post(z)``, a pointwise map on the last (channel) axis applied after the
    SSM (activation and output linear of the S4/S4D block).
    """

    d_model: int
    transposed: bool = False
    bidirectional: bool = False
    #: Names of this module's own parameters that belong to the recurrence (``param_groups``).
    recurrence_parameters: tuple[str, ...] = ()

    # -- hooks ---------------------------------------------------------------------------------

    def _core_kernel(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _core_stream(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _core_step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _core_state_shape(self, batch_size: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _post(self, z: Tensor) -> Tensor:
        return z

    # -- layout and checks ---------------------------------------------------------------------

    def _layout(self) -> str:
        return "(B, H, L)" if self.transposed else "(B, L, H)"

    def _param(self) -> Tensor:
        return next(self.parameters())

    def _check_input(self, x: Tensor, *, step: bool = False) -> Tensor:
        """Validate ``x`` and return it on the signal layout ``(b, h, l)`` (or ``(b, h)``)."""
        name, h = type(self).__name__, self.d_model
        layout = "(B, H)" if step else self._layout()
        if not isinstance(x, Tensor):
            raise ShapeError(f"{name} expects a tensor laid out {layout}, got {type(x).__name__}")
        want = 2 if step else 3
        if x.dim() != want:
            raise ShapeError(
                f"{name} expects a {want}-d input {layout} with H={h}, got a {x.dim()}-d "
                f"tensor of shape {tuple(x.shape)}"
            )
        axis = 1 if (step or self.transposed) else 2
        if x.shape[axis] != h:
            raise ShapeError(
                f"{name} expects H={h} channels on axis {axis} of {layout}, got shape "
                f"{tuple(x.shape)} ({x.shape[axis]} channels)"
            )
        if not x.is_floating_point():
            raise ShapeError(f"{name} expects a floating-point input {layout}, got {x.dtype}")
        p = self._param()
        if x.dtype != p.dtype:
            if x.element_size() < p.element_size():  # half precision in: compute in p's dtype
                x = x.to(p.dtype)
            else:
                raise ShapeError(
                    f"{name} has {p.dtype} parameters but the input is {x.dtype}; convert one "
                    "(layer.to(dtype) or x.to(dtype))"
                )
        if x.device != p.device:
            raise ShapeError(f"{name} has parameters on {p.device} but the input is on {x.device}")
        if not step and x.shape[1 if not self.transposed else 2] < 1:
            raise ShapeError(f"{name} expects at least one time step, got {tuple(x.shape)}")
        if x.shape[0] < 1:
            raise ShapeError(f"{name} expects a batch of at least 1, got shape {tuple(x.shape)}")
        return x if (step or self.transposed) else x.transpose(1, 2)

    def _finish(self, y: Tensor) -> Tensor:
        """SSM output ``(b, c, l)`` -> the block's output in the layer's layout."""
        z = self._post(y.transpose(1, 2))
        return z.transpose(1, 2) if self.transposed else z

    def _causal_only(self, what: str) -> None:
        if self.bidirectional:
            raise SpecError(
                f"{type(self).__name__}(bidirectional=True) has no causal state: {what} is "
                "undefined for a bidirectional layer (use forward on whole sequences)"
            )

    # -- kernel mode ---------------------------------------------------------------------------

    def _ssm(self, u: Tensor) -> Tensor:
        y = self._core_kernel(u)
        if self.bidirectional:
            y = y + self.backward_ssm._core_kernel(u.flip(-1)).flip(-1)
        return y

    def forward(
        self,
        x: Tensor,
        integration_timesteps: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Kernel mode (whole sequences, zero initial state).

        Args:
            x: input ``(B, L, H)`` (``(B, H, L)`` if ``transposed``).
            integration_timesteps: not supported: the layer is time-invariant.
            lengths: optional integer tensor (B,); the call then also returns each sequence's
                state after its own ``lengths[b]`` steps (the ``stream``/``step`` layout).

        Returns:
            the output in the input's layout, or ``(y, states)`` when ``lengths`` is given.
            Outputs past a sequence's length see the padding, as in any causal layer.

        Raises:
            ShapeError: bad input, ``lengths`` out of range, or ``integration_timesteps`` given.
            SpecError: ``lengths`` on a bidirectional layer.
        """
        if integration_timesteps is not None:
            raise ShapeError(
                f"{type(self).__name__} is linear time-invariant: integration_timesteps needs "
                "a time-varying (LTV) model; call it without integration_timesteps"
            )
        u = self._check_input(x)
        y = self._finish(self._ssm(u))
        if lengths is None:
            return y
        self._causal_only("lengths")
        return y, self._states_at(u, lengths)

    def _states_at(self, u: Tensor, lengths: Tensor) -> Tensor:
        """The state after ``lengths[b]`` steps of each sequence b.

        Each sequence is streamed right-aligned (the zeros before it keep the zero state zero),
        all in one pass from a zero state.
        """
        shifted = right_aligned(u, lengths)
        batch = u.shape[0]
        zero = torch.zeros(self._core_state_shape(batch), dtype=u.dtype, device=u.device)
        return self._core_stream(shifted, zero)[1]

    # -- streaming -----------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """A zero state for ``batch_size`` sequences (real; complex values as re/im pairs)."""
        self._causal_only("init_state")
        p = self._param()
        return torch.zeros(
            self._core_state_shape(int(batch_size)),
            device=p.device if device is None else device,
            dtype=p.dtype if dtype is None else dtype,
        )

    def stream(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """A chunk of any length from ``state``; returns ``(y, new_state)``.

        Concatenating the outputs of consecutive chunks gives ``forward`` of the whole sequence.
        """
        self._causal_only("stream")
        y, new = self._core_stream(self._check_input(x), state)
        return self._finish(y), new

    def step(self, x_t: Tensor, state: Tensor | dict[str, Any]) -> tuple[Tensor, Any]:
        """One time step: ``x_t`` is ``(B, H)``.

        ``state`` is a state tensor (returns ``(y_t, new_state)``) or an inference cache from
        :meth:`allocate_inference_cache` (returns ``(y_t, cache)`` with ``"lrnn_state"``
        replaced by the new state).
        """
        self._causal_only("step")
        u_t = self._check_input(x_t, step=True)
        if isinstance(state, dict):
            if "lrnn_state" not in state:
                raise ShapeError("inference cache has no 'lrnn_state' entry")
            y, new = self._core_step(u_t, state["lrnn_state"])
            state["lrnn_state"] = new
            return self._post(y), state
        y, new = self._core_step(u_t, state)
        return self._post(y), new

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int = 1, dtype=None, **kwargs
    ) -> dict[str, Any]:
        """A cache for :meth:`step`: ``{"lrnn_state": zero state}`` (``max_seqlen`` unused)."""
        return {"lrnn_state": self.init_state(batch_size, dtype=dtype)}

    def _validate_state(self, state: Tensor, u: Tensor) -> Tensor:
        """Validate a state for the custom (non-planner) layers."""
        want = self._core_state_shape(u.shape[0])
        if not isinstance(state, Tensor):
            raise ShapeError(f"state must be a tensor, got {type(state).__name__}")
        if tuple(state.shape) != want:
            raise ShapeError(f"state has shape {tuple(state.shape)}, expected {want}")
        if not state.is_floating_point():
            raise ShapeError(
                f"state must be a real floating tensor (re/im pairs), got {state.dtype}"
            )
        if state.device != u.device:
            raise ShapeError(f"state is on {state.device} but the input is on {u.device}")
        return state.to(u.dtype)

    def extra_repr(self) -> str:
        """The sizes and options shown by ``repr``."""
        parts = [f"d_model={self.d_model}"]
        if self.transposed:
            parts.append("transposed=True")
        if self.bidirectional:
            parts.append("bidirectional=True")
        return ", ".join(parts)


class PlannedLTI(LTILayer, SSMModule):
    """An LTI layer whose SSM runs through the planner's executors (S4D, S5, LRU).

    Subclasses implement :meth:`SSMModule.ssm_operands` for their declaration; the output's
    non-batch, non-time axes are flattened row-major into channels (S4D: ``k * H + h``).
    """

    def _core_kernel(self, u: Tensor) -> Tensor:
        return self.ssm_kernel(u).flatten(1, -2)

    def _core_stream(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, h = self.ssm_stream(u, state)
        return y.flatten(1, -2), h

    def _core_step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, h = self.ssm_step(u_t, state)
        return y.flatten(1), h

    def _core_state_shape(self, batch_size: int) -> tuple[int, ...]:
        return self.ssm_state_shape({"b": batch_size})

    def plan(self, input_shape: tuple[int, int, int], *, training: bool | None = None):
        """The plan kernel mode uses for an input of ``input_shape`` (the layer's layout)."""
        if len(input_shape) != 3:
            raise ShapeError(f"input_shape must be {self._layout()}, got {tuple(input_shape)}")
        b, a1, a2 = (int(n) for n in input_shape)
        h, length = (a1, a2) if self.transposed else (a2, a1)
        if h != self.d_model:
            raise ShapeError(
                f"input_shape {tuple(input_shape)} has {h} channels, expected H={self.d_model} "
                f"{self._layout()}"
            )
        p = self._param()
        return self.plan_for((b, h, length), dtype=p.dtype, device=p.device, training=training)

    def compute_kernel(self, L: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """State powers ``a^tau`` (``(*S, L)``) and the normalised input matrix.

        Extra positional arguments (lrnnx passes the discretized matrices) are accepted and
        ignored: the layer recomputes them from its parameters.
        """
        if not isinstance(L, int) or L < 1:
            raise ShapeError(f"compute_kernel needs a positive int length L, got {L!r}")
        rate, norm_b = self._rate_and_input()
        return diagonal_powers(rate, L), norm_b

    def _rate_and_input(self) -> tuple[Tensor, Tensor]:
        """The rate ``log a`` (the graph's ``A`` operand) and the normalised input matrix."""
        raise NotImplementedError


def glu_output(z: Tensor, linear: nn.Linear | None) -> Tensor:
    """The S4 block's output: ``GLU(linear(z))`` over the last axis (identity without one)."""
    return z if linear is None else F.glu(linear(z), dim=-1)
