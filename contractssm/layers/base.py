"""The base of every layer: a graph, operands computed from parameters, generated executors.

A subclass owns its parameters and implements :meth:`SSMModule.ssm_operands`, which returns
every operand of its graph except the signal (complex tensors allowed: they live only inside
the forward pass). The base plans for each signal shape (through the plan cache), keeps the
executors, and runs kernel mode, chunked streaming and step mode on tensors laid out as the
graph's signal.

Under ``torch.compile(fullgraph=True)`` planning cannot be traced: run the module once eagerly
at each input shape first, or call :meth:`SSMModule.prepare`. Length bucketing
(``length_bucket``) pads kernel-mode inputs to a few lengths so that a training loop with varying
L reuses plans and compiled graphs (causality makes the padding exact).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contractssm.codegen.executor import Executors, executors
from contractssm.errors import ShapeError
from contractssm.ir import Graph
from contractssm.planner.api import plan as make_plan
from contractssm.planner.plan import Plan

Tensor = torch.Tensor


def bucket_length(length: int, bucket: str | int | None) -> int:
    """The length a sequence is padded to.

    ``None`` keeps it, ``"pow2"`` rounds up to a power of two, an integer ``m`` rounds up to a
    multiple of ``m``.
    """
    if bucket is None:
        return length
    if bucket == "pow2":
        return 1 << max(0, math.ceil(math.log2(length)))
    if isinstance(bucket, int) and bucket > 0:
        return -(-length // bucket) * bucket
    raise ShapeError(f"length_bucket must be None, 'pow2' or a positive int, got {bucket!r}")


def right_aligned(x: Tensor, lengths) -> Tensor:
    """``x`` (B, C, L) with each sequence b shifted to end at the last step, zeros in front.

    Streaming the result from a zero state leaves each sequence's state after ``lengths[b]``
    of its own steps (the zeros keep the zero state exactly zero).

    Raises:
        ShapeError: ``lengths`` is not an integer tensor of shape (B,) with values in [0, L].
    """
    batch, _, length = x.shape
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
        raise ShapeError(
            f"lengths must be an integer tensor of shape ({batch},) (B), got "
            f"{lengths.dtype} of shape {tuple(lengths.shape)}"
        )
    lengths = lengths.to(x.device)
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > length:
        raise ShapeError(f"lengths must lie in [0, L = {length}], got values in [{lo}, {hi}]")
    source = torch.arange(length, device=x.device) - (length - lengths)[:, None]  # (b, l)
    index = source.clamp(min=0)[:, None, :].expand(-1, x.shape[1], -1)
    return torch.gather(x, 2, index) * (source >= 0)[:, None, :].to(x.dtype)


class SSMModule(nn.Module):
    """Runs a graph's generated executors on operands computed by the subclass.

    Args:
        graph: the declaration's graph.
        objective: the planner's objective (``time``, ``flops``, ``memory``).
        autotune: time the best few candidates on first use of each shape.
        algorithm: force the convolution algorithm (for tests and benchmarks).
        memory_limit: bytes no plan may exceed.
        length_bucket: pad kernel-mode inputs to ``"pow2"`` or a multiple of an int.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        objective: str = "time",
        autotune: bool = False,
        algorithm: str | None = None,
        memory_limit: int | None = None,
        length_bucket: str | int | None = None,
    ) -> None:
        super().__init__()
        self.graph = graph
        self.plan_options = {
            "objective": objective,
            "autotune": autotune,
            "algorithm": algorithm,
            "memory_limit": memory_limit,
        }
        self.length_bucket = length_bucket
        bucket_length(1, length_bucket)  # validate early
        canon = graph.canonical()
        by_canonical = {new: old for old, new in canon.operand_names}
        self._order = tuple(by_canonical[op.name] for op in canon.graph.operands)
        self._executors: dict[tuple, Executors] = {}

    # -- subclass interface ------------------------------------------------------------------

    def ssm_operands(self) -> dict[str, Tensor]:
        """Every operand of the graph but the signal, by name (complex where declared)."""
        raise NotImplementedError

    # -- planning ------------------------------------------------------------------------------

    def _sizes(self, signal_shape: tuple[int, ...], operands: dict[str, Tensor]) -> dict:
        g = self.graph
        if len(signal_shape) != len(g.signal.indices):
            raise ShapeError(
                f"expected the signal with {len(g.signal.indices)} axes "
                f"[{','.join(g.signal.indices)}], got shape {tuple(signal_shape)}"
            )
        shapes = {name: tuple(t.shape) for name, t in operands.items()}
        shapes[g.signal.name] = tuple(signal_shape)
        try:
            return g.infer_sizes(shapes)
        except Exception as err:  # a SpecError about sizes is a shape mistake here
            raise ShapeError(str(err)) from None

    def _key(self, signal_shape, dtype, device, training) -> tuple:
        return (tuple(signal_shape), dtype, str(device), training)

    def executors_for(
        self,
        signal_shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        training: bool,
    ) -> Executors:
        """The executors for a signal shape (planned on first use, then cached)."""
        key = self._key(signal_shape, dtype, device, training)
        found = self._executors.get(key)
        if found is not None:
            return found
        if torch.compiler.is_compiling():
            raise ShapeError(
                f"{type(self).__name__} has no plan for input shape {tuple(signal_shape)} yet; "
                "run it once eagerly (or call .prepare(shape)) before torch.compile"
            )
        with torch.no_grad():
            operands = self.ssm_operands()
        sizes = self._sizes(signal_shape, operands)
        if min(sizes.values()) < 1:
            zero = next(i for i, n in sizes.items() if n < 1)
            raise ShapeError(f"index {zero!r} has size 0 in input shape {tuple(signal_shape)}")
        plan = make_plan(
            self.graph,
            sizes,
            dtype="float64" if dtype == torch.float64 else "float32",
            device=device,
            requires_grad=training,
            **self.plan_options,
        )
        found = self._executors[key] = executors(plan)
        return found

    def plan_for(
        self,
        signal_shape: tuple[int, ...],
        *,
        dtype=torch.float32,
        device="cpu",
        training: bool | None = None,
    ) -> Plan:
        """The plan this layer uses for a signal of ``signal_shape`` (graph signal layout)."""
        training = self.training if training is None else training
        return self.executors_for(tuple(signal_shape), dtype, torch.device(device), training).plan

    def prepare(self, signal_shape: tuple[int, ...], *, dtype=torch.float32, device="cpu"):
        """Plan ahead for a shape (before ``torch.compile``), for training and inference."""
        for training in (True, False):
            self.executors_for(tuple(signal_shape), dtype, torch.device(device), training)
        step_shape = list(signal_shape)
        step_shape[self.graph.signal.indices.index(self.graph.time)] = 1
        self.executors_for(tuple(step_shape), dtype, torch.device(device), False)

    # -- running -------------------------------------------------------------------------------

    def _args(self, x: Tensor) -> list[Tensor]:
        ops = self.ssm_operands()
        ops[self.graph.signal.name] = x
        return [ops[name] for name in self._order]

    def _training(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _check_signal(self, x: Tensor, step: bool = False) -> None:
        if not isinstance(x, Tensor):
            raise ShapeError(f"expected a tensor, got {type(x).__name__}")
        axes = [i for i in self.graph.signal.indices if not (step and i == self.graph.time)]
        if x.dim() != len(axes):
            raise ShapeError(
                f"expected the input with {len(axes)} axes [{','.join(axes)}], got shape "
                f"{tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ShapeError(f"expected a floating-point input, got {x.dtype}")

    def ssm_kernel(self, x: Tensor) -> Tensor:
        """Kernel mode on ``x`` laid out as the graph's signal (zero initial state)."""
        self._check_signal(x)
        t_axis = self.graph.signal.indices.index(self.graph.time)
        length = x.shape[t_axis]
        padded = bucket_length(length, self.length_bucket) if length else 0
        if padded != length:
            pad = [0, 0] * (x.dim() - 1 - t_axis) + [0, padded - length]
            x = torch.nn.functional.pad(x, pad)
        ex = self.executors_for(tuple(x.shape), x.dtype, x.device, self._training())
        y = ex.kernel(*self._args(x))
        if padded != length:
            y = y.narrow(self.graph.output_indices.index(self.graph.time), 0, length)
        return y

    def ssm_stream(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """A chunk of any length from ``state``; returns the output and the new state."""
        self._check_signal(x)
        ex = self.executors_for(tuple(x.shape), x.dtype, x.device, self._training())
        self._check_state(ex, x, state)
        return ex.stream(*self._args(x), state)

    def ssm_step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One time step: ``x_t`` is the signal without its time axis."""
        self._check_signal(x_t, step=True)
        shape = list(x_t.shape)
        shape.insert(self.graph.signal.indices.index(self.graph.time), 1)
        ex = self.executors_for(tuple(shape), x_t.dtype, x_t.device, self._training())
        self._check_state(ex, x_t, state)
        return ex.step(*self._args(x_t), state)

    def ssm_state_shape(self, batch_shape: dict[str, int]) -> tuple[int, ...]:
        """Shape of the real state for the given sizes of the signal's batch-like axes."""
        with torch.no_grad():
            ops = self.ssm_operands()
        shapes = {name: tuple(t.shape) for name, t in ops.items()}
        sizes = self.graph.infer_sizes(shapes)
        sizes.update(batch_shape)
        missing = [i for i in self.graph.state_indices if i not in sizes]
        if missing:
            raise ShapeError(f"state index {missing[0]!r} needs a size")
        return (*[sizes[i] for i in self.graph.state_indices], 2)

    def _check_state(self, ex: Executors, x: Tensor, state: Tensor) -> None:
        from contractssm.codegen.bind import check_state

        check_state(self.graph, ex, x, state)

    # -- pickling ------------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_executors"] = {}  # generated functions are rebuilt from plans on demand
        return state
