"""A layer from any declaration: parameters from per-operand init rules, nothing else to write.

Example:
    >>> import torch
    >>> layer = DeclaredSSM(
    ...     "y[b,g,d,l] = C[g,d,s] * ssm A[g,s;l] * B[g,s,c] * signal x[b,g,c,l]",
    ...     {"g": 2, "c": 8, "d": 8, "s": 4},
    ... )
    >>> layer(torch.randn(3, 2, 8, 50)).shape
    torch.Size([3, 2, 8, 50])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from contractssm.errors import ShapeError, SpecError
from contractssm.ir import Graph
from contractssm.layers.base import SSMModule
from contractssm.modes import get_graph

Tensor = torch.Tensor
Init = Callable[[tuple[int, ...]], Tensor] | Tensor


def inverse_softplus(y: float) -> float:
    """``softplus^-1(y) = log(exp(y) - 1)``."""
    return math.log(math.expm1(y))


class DeclaredSSM(SSMModule):
    """An SSM layer for any declaration (a built-in mode name or declaration text).

    Parameters are real tensors. The recurrence ``A[S]`` is parameterised as
    ``Lambda = exp(<A>_log_dt) * (-softplus(<A>[..., 0]) + i <A>[..., 1])``, so its real part is
    negative by construction; complex weights are stored as trailing (real, imaginary) pairs.

    Default inits: ``Re = -0.5``, ``Im = pi * q`` along the last state index, ``dt`` geometric in
    ``[dt_min, dt_max]`` along the first; real weights Normal(0, 1 / fan_in) with fan_in the
    size of the indices they contract; complex weights the same split over real and imaginary
    parts; skip weights Normal(0, 1).

    Args:
        declaration: a mode name or a declaration.
        sizes: sizes of every index the parameters use (batch and time come from the input).
        init: per-operand overrides: a tensor of the operand's (real) parameter shape, or a
            function of that shape returning one.
        dt_min: smallest initial step size.
        dt_max: largest initial step size.
        **options: planner options (``objective``, ``autotune``, ``algorithm``,
            ``memory_limit``, ``length_bucket``).
    """

    def __init__(
        self,
        declaration: str | Graph,
        sizes: Mapping[str, int],
        *,
        init: Mapping[str, Init] | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        **options,
    ) -> None:
        graph = get_graph(declaration)
        super().__init__(graph, **options)
        init = dict(init or {})
        unknown = sorted(set(init) - {op.name for op in graph.operands})
        if unknown:
            raise SpecError(f"init names {unknown[0]!r}, which is not an operand of {graph}")
        self.sizes = dict(sizes)
        for op in graph.operands:
            if op is graph.signal:
                continue
            missing = [i for i in op.indices if i not in self.sizes]
            if missing:
                raise SpecError(f"operand {op.name!r} needs a size for index {missing[0]!r}")
        rec = graph.recurrence
        s_shape = tuple(self.sizes[i] for i in rec.indices)
        self._complex = {w.name for w in graph.weights if w.is_complex}
        self.register_parameter(
            rec.name,
            nn.Parameter(
                self._initial(init, rec.name, (*s_shape, 2), lambda: _default_rate(s_shape))
            ),
        )
        self.register_parameter(
            f"{rec.name}_log_dt", nn.Parameter(_default_log_dt(s_shape, dt_min, dt_max))
        )
        out = set(graph.output_indices)
        for w in graph.weights:
            shape = tuple(self.sizes[i] for i in w.indices)
            fan_in = math.prod(self.sizes[i] for i in w.indices if i not in out) or 1
            full = (*shape, 2) if w.is_complex else shape
            scale = 1.0 / math.sqrt(fan_in * (2 if w.is_complex else 1))
            self.register_parameter(
                w.name,
                nn.Parameter(
                    self._initial(init, w.name, full, lambda f=full, s=scale: torch.randn(f) * s)
                ),
            )
        if graph.skip is not None:
            for w in graph.skip.weights:
                shape = tuple(self.sizes[i] for i in w.indices)
                self.register_parameter(
                    w.name,
                    nn.Parameter(
                        self._initial(init, w.name, shape, lambda s=shape: torch.randn(s))
                    ),
                )

    @staticmethod
    def _initial(
        init: Mapping[str, Init], name: str, shape: tuple[int, ...], default: Callable[[], Tensor]
    ) -> Tensor:
        rule = init.get(name)
        value = default() if rule is None else (rule(shape) if callable(rule) else rule)
        value = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
        if tuple(value.shape) != tuple(shape):
            raise ShapeError(f"init for {name!r} has shape {tuple(value.shape)}, expected {shape}")
        return value

    def rate(self) -> Tensor:
        """The complex rate ``Lambda[S]`` (``V = exp(Lambda * tau)``), real part < 0."""
        name = self.graph.recurrence.name
        raw = getattr(self, name)
        dt = torch.exp(getattr(self, f"{name}_log_dt"))
        return torch.complex(-torch.nn.functional.softplus(raw[..., 0]) * dt, raw[..., 1] * dt)

    def ssm_operands(self) -> dict[str, Tensor]:
        """Every operand but the signal: the rate, the weights (complex where declared)."""
        ops = {self.graph.recurrence.name: self.rate()}
        for w in self.graph.weights:
            p = getattr(self, w.name)
            ops[w.name] = torch.view_as_complex(p.contiguous()) if w.is_complex else p
        if self.graph.skip is not None:
            for w in self.graph.skip.weights:
                ops[w.name] = getattr(self, w.name)
        return ops

    def forward(self, x: Tensor) -> Tensor:
        """Kernel mode: ``x`` laid out as the declaration's signal, output as its output."""
        return self.ssm_kernel(x)

    def init_state(self, batch_size: int | Mapping[str, int], device=None, dtype=None) -> Tensor:
        """A zero state; ``batch_size`` sizes the signal's batch axis (or a mapping of axes)."""
        batch = self._batch_sizes(batch_size)
        p = next(self.parameters())
        return torch.zeros(
            self.ssm_state_shape(batch), device=device or p.device, dtype=dtype or p.dtype
        )

    def stream(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """A chunk of any length from ``state``; returns ``(y, new_state)``."""
        return self.ssm_stream(x, state)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One time step (``x_t`` without the time axis); returns ``(y_t, new_state)``."""
        return self.ssm_step(x_t, state)

    def plan(self, input_shape: tuple[int, ...], **options):
        """The plan this layer would use for an input of ``input_shape`` (signal layout)."""
        return self.plan_for(tuple(input_shape), **options)

    def _batch_sizes(self, batch_size) -> dict[str, int]:
        if isinstance(batch_size, Mapping):
            return dict(batch_size)
        free = [
            i for i in self.graph.signal.indices if i != self.graph.time and i not in self.sizes
        ]
        if len(free) != 1:
            raise ShapeError(f"give the sizes of the signal's batch axes {free} as a mapping")
        return {free[0]: int(batch_size)}


def _default_rate(s_shape: tuple[int, ...]) -> Tensor:
    raw = torch.empty((*s_shape, 2))
    raw[..., 0] = inverse_softplus(0.5)
    q = torch.arange(s_shape[-1], dtype=raw.dtype)
    raw[..., 1] = math.pi * q
    return raw


def _default_log_dt(s_shape: tuple[int, ...], dt_min: float, dt_max: float) -> Tensor:
    dt = torch.exp(torch.linspace(math.log(dt_min), math.log(dt_max), s_shape[0]))
    return torch.log(dt).reshape(-1, *([1] * (len(s_shape) - 1))).expand(s_shape).clone()
