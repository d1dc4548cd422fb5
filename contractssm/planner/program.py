"""A program under construction: named tensors, their axes, and the steps that make them.

:class:`ProgramBuilder` is what lowering writes into. It knows every tensor's axes and
complexness, prices each step as it is added, and contracts several operands in the cheapest
pairwise order (exhaustive search with memoisation over operand subsets, via opt_einsum's
``optimal`` strategy, for up to 8 operands; its ``greedy`` one above that).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import NamedTuple

import opt_einsum

from contractssm.planner.profile import SCRATCH_MAX_BYTES, MachineProfile
from contractssm.planner.steps import Step, is_broadcast_product, reads_in_place, step_seconds

#: Time-like axis letters and what they mean; every other axis is a lowercase graph index.
TIME_AXES = "TJFWKPRQGHO"

#: Above this many operands, one contraction is ordered greedily rather than exhaustively.
EXHAUSTIVE_OPERANDS = 8


class TensorInfo(NamedTuple):
    """What the program knows about one tensor (a tuple: cheap to hash in price keys)."""

    axes: str
    is_complex: bool


class OverBudget(Exception):
    """Raised by a builder whose running cost passed its budget (the search prunes it)."""


def backward_factor(step: Step) -> float:
    """Forward plus backward cost relative to forward.

    Gradients of a contraction need two contractions; every other step about one more pass.
    """
    return 3.0 if step.op in ("einsum", "einsum_real") and "," in step.equation else 2.0


class ProgramBuilder:
    """Accumulates the steps of one program.

    Args:
        sizes: size of every axis letter (graph indices and time-like axes).
        inputs: the program's inputs by name.
        profile: the machine profile used to price steps.
        itemsize: bytes of one real element (4 for float32).
        prices: a memo of step prices shared by the builders of one search (same sizes,
            profile and itemsize): candidates repeat most of each other's steps.
    """

    def __init__(
        self,
        sizes: dict[str, int],
        inputs: dict[str, TensorInfo],
        profile: MachineProfile,
        itemsize: int,
        prices: dict | None = None,
    ) -> None:
        self.sizes = sizes
        self.tensors = dict(inputs)
        self.profile = profile
        self.itemsize = itemsize
        self.steps: list[Step] = []
        self._counter = 0
        self._prices = {} if prices is None else prices
        #: Stop (raise OverBudget) once the predicted seconds pass this, if set.
        self.budget: float | None = None
        #: Whether the running total counts forward plus backward.
        self.backward = False
        self._total = 0.0
        self._elements: dict[str, int] = {}
        self._made: dict[tuple, str] = {}
        # Time-like axis sizes vary with the strategy (chunk, FFT length): part of price keys.
        self._time_sizes = tuple(sizes.get(a) for a in TIME_AXES)

    def fresh(self, prefix: str) -> str:
        """A tensor name not used yet."""
        self._counter += 1
        return f"{prefix}{self._counter}"

    def elements(self, axes: str) -> int:
        """Number of elements of a tensor with these axes."""
        n = self._elements.get(axes)
        if n is None:
            n = self._elements[axes] = math.prod(self.sizes[a] for a in axes)
        return n

    def add(
        self,
        op: str,
        inputs: tuple[str, ...],
        axes: str,
        is_complex: bool,
        phase: str,
        *,
        name: str | None = None,
        equation: str = "",
        **attrs: int,
    ) -> str:
        """Append a step producing a new tensor; returns its name.

        A step identical to one already in the program (same op, inputs, axes, equation and
        attributes) is not added again: its tensor is reused (common subexpressions, e.g. the
        signal projection that both the output and the final state of a stream need).
        """
        sorted_attrs = tuple(sorted(attrs.items()))
        same = (op, inputs, axes, is_complex, equation, sorted_attrs)
        if name is None and same in self._made:
            return self._made[same]
        name = name or self.fresh(op[0])
        self._made.setdefault(same, name)
        ins = tuple(self.tensors[i] for i in inputs)
        key = (op, axes, is_complex, equation, sorted_attrs, ins, self._time_sizes)
        step = Step(
            op, name, inputs, axes, is_complex, phase, equation, sorted_attrs, self.elements(axes)
        )
        self.tensors[name] = TensorInfo(axes, is_complex)
        priced = self._prices.get(key)
        if priced is None:
            in_elems = sum(self.elements(t.axes) * (2 if t.is_complex else 1) for t in ins)
            priced = self._prices[key] = step_seconds(
                step,
                self.sizes,
                in_elems,
                self.profile,
                self.itemsize,
                tuple(t.is_complex for t in ins),
                *self._fresh_workspace(step),
            )
        seconds, flops = priced
        self.steps.append(replace(step, flops=flops, seconds=seconds))
        if self.budget is not None:
            last = self.steps[-1]
            self._total += last.seconds * (backward_factor(last) if self.backward else 1.0)
            if self._total > self.budget:
                raise OverBudget(name)
        return name

    def contract(
        self,
        operands: list[tuple[str, str]],
        out_axes: str,
        phase: str,
        *,
        name: str | None = None,
        real: bool = False,
    ) -> str:
        """Contract ``(tensor name, axes as used here)`` pairs into ``out_axes``.

        Pairwise, in the cheapest order. A single operand whose axes already equal
        ``out_axes`` is returned unchanged (no step). With ``real`` the result is the real
        part: the last pairwise product is an ``einsum_real`` step (no complex result is
        ever formed), or a ``real`` step after a single operand.
        """
        if real and not any(self.tensors[src].is_complex for src, _ in operands):
            real = False
        if real and len(operands) == 1:
            whole = self.contract(operands, out_axes, phase)
            return self.add("real", (whole,), out_axes, False, phase, name=name)
        if len(operands) == 1 and operands[0][1] == out_axes and name is None:
            return operands[0][0]
        live = list(operands)
        if len(live) == 1:
            ((src, axes),) = live
            return self.add(
                "einsum",
                (src,),
                out_axes,
                self.tensors[src].is_complex,
                phase,
                name=name,
                equation=f"{axes}->{out_axes}",
            )
        path = _contraction_path(
            tuple(axes for _, axes in live),
            out_axes,
            tuple(sorted((a, self.sizes[a]) for a in set("".join(a for _, a in live)))),
        )
        for n_done, (i, j) in enumerate(path):
            (src_a, axes_a), (src_b, axes_b) = live[i], live[j]
            rest = [axes for k, (_, axes) in enumerate(live) if k not in (i, j)]
            last = n_done == len(path) - 1
            if last:
                keep = out_axes
            else:
                needed = set(out_axes).union(*rest)
                keep = _ordered(axes_a + axes_b, needed)
            is_complex = self.tensors[src_a].is_complex or self.tensors[src_b].is_complex
            take_real = last and real and is_complex
            new = self.add(
                "einsum_real" if take_real else "einsum",
                (src_a, src_b),
                keep,
                is_complex and not take_real,
                phase,
                name=name if last else None,
                equation=f"{axes_a},{axes_b}->{keep}",
            )
            live = [op for k, op in enumerate(live) if k not in (i, j)] + [(new, keep)]
        return live[0][0]

    def contract_real(self, operands: list[tuple[str, str]], out_axes: str, phase: str) -> str:
        """The real part of a contraction, taken as early as the operands allow.

        The complex operands are contracted first, the real part taken (by the last product
        itself: ``einsum_real``), then the real
        operands applied (Re is linear over real factors; real arithmetic costs a quarter),
        unless that intermediate would be larger than every operand and the output (an outer
        product of the complex operands): then all are contracted together, Re taken last.
        """
        cx = [op for op in operands if self.tensors[op[0]].is_complex]
        re = [op for op in operands if not self.tensors[op[0]].is_complex]
        if not cx:
            return self.contract(operands, out_axes, phase)
        needed = set(out_axes).union(*(axes for _, axes in re))
        mid = _ordered("".join(axes for _, axes in cx), needed)
        largest = max(self.elements(axes) for _, axes in [*operands, (None, out_axes)])
        if re and self.elements(mid) > largest:
            return self.contract(operands, out_axes, phase, real=True)
        if re:
            part = self.contract(cx, mid, phase, real=True)
            return self.contract([(part, mid), *re], out_axes, phase)
        return self.contract(cx, out_axes, phase, real=True)

    # -- summaries -------------------------------------------------------------------------

    def seconds(self, backward: bool) -> float:
        """Predicted seconds of the program (forward, or forward plus backward)."""
        if not backward:
            return sum(s.seconds for s in self.steps)
        return sum(s.seconds * backward_factor(s) for s in self.steps)

    def nbytes(self, name: str) -> int:
        """Bytes of a tensor of the program (complex counts twice)."""
        info = self.tensors[name]
        return self.elements(info.axes) * self.itemsize * (2 if info.is_complex else 1)

    def _fresh_workspace(self, step: Step) -> tuple[int, bool]:
        """``step``'s temporaries allocated afresh, and whether its output is scratch memory.

        An FFT convolution (``FFTConv``) writes an elementwise spectral product into reused
        scratch memory (see ``contractssm.codegen.memory``) when it fits in
        :data:`~contractssm.planner.profile.SCRATCH_MAX_BYTES`: it never page-faults. Priced
        as fresh, ``s4d`` (4, 16384) kept chunked(T=256) (measured 152 ms) over fft(n=32768)
        (100 ms). Its zero-padded inputs are scratch too but stay priced as fresh: exempted,
        ``s5_mimo`` and ``lru`` at (32, 2048) pick fft plans with an ``exp`` kernel of all
        three weights that measure 1.34-1.43x slower than their chunked plans (the model
        underprices that kernel; the padding's price happens to cover it).
        """
        workspace = self.workspace_bytes(step)
        if is_broadcast_product(step) and all(self.tensors[i].is_complex for i in step.inputs):
            ins, out = step.equation.split("->")
            if all(t[-1:] == "F" for t in (*ins.split(","), out)):
                return workspace, self.nbytes(step.output) <= SCRATCH_MAX_BYTES
        return workspace, False

    def workspace_bytes(self, step: Step) -> int:
        """Bytes of the temporaries ``step`` allocates besides its output, at their peak.

        What the runtime does (``contractssm.codegen.runtime``): an einsum without a matmul
        layout copies its permuted operands and writes its result before permuting it; a
        mixed real-by-complex one also makes its result contiguous; ``einsum_real`` stacks
        the smaller operand's (Re, -Im); a padded FFT copies its padded input and an inverse
        one writes all ``n`` samples before the slice; the chunk scan holds a shifted product,
        a sum and the concatenation of one level at once; geometric powers keep a run.
        """
        ins = [self.nbytes(i) for i in step.inputs if i in self.tensors]
        out = self.nbytes(step.output)
        op = step.op
        if op in ("einsum", "einsum_real") and len(step.inputs) == 2:
            cx = tuple(self.tensors[i].is_complex for i in step.inputs)
            stacked = min(ins) if op == "einsum_real" and all(cx) else 0
            if is_broadcast_product(step):
                return 0  # nothing contracted: a broadcast multiply straight into the output
            if reads_in_place(step.equation, self.sizes, cx, op):
                return stacked
            mixed = op == "einsum" and cx[0] != cx[1]
            return stacked + sum(ins) + out * (2 if mixed else 1)
        if op == "einsum":
            src, kept = step.equation.split("->")
            in_order = [a for a in src if a in kept] == list(kept)
            return 0 if in_order else ins[0]  # a permuted operand is copied first
        if op in ("rfft", "fft"):
            return ins[0] * max(1, step.attr("n") // max(1, self._time_length(step.inputs[0])))
        if op in ("irfft", "ifft"):
            return out * max(1, -(-step.attr("n") // step.attr("length")))
        if op in ("chunk_scan", "powers", "closed_form"):
            return 3 * out
        return 0

    def _time_length(self, name: str) -> int:
        axes = self.tensors[name].axes
        return self.sizes[axes[-1]] if axes and axes[-1] in TIME_AXES else 1

    def peak_bytes(self, outputs: tuple[str, ...], backward: bool) -> int:
        """Peak bytes of intermediates and the temporaries of the step at the peak.

        Forward: the live tensors at the worst step plus that step's workspace (see
        :meth:`workspace_bytes`). With gradients, every intermediate (autograd saves them for
        the backward pass) plus twice the largest workspace (a step's gradient contractions
        allocate about what its forward did, for each of its two operands).
        """
        produced = [s.output for s in self.steps]
        workspace = [self.workspace_bytes(s) for s in self.steps]
        if backward:
            return sum(self.nbytes(n) for n in produced) + 2 * max(workspace, default=0)
        last_use = {}
        for k, s in enumerate(self.steps):
            for i in s.inputs:
                last_use[i] = k
        live, peak = 0, 0
        for k, s in enumerate(self.steps):
            live += self.nbytes(s.output)
            peak = max(peak, live + workspace[k])
            for i in set(s.inputs):
                if last_use.get(i) == k and i in produced and i not in outputs:
                    live -= self.nbytes(i)
        return peak


def _ordered(axes: str, needed: set[str]) -> str:
    """The needed axes of ``axes``, first appearance order, time-like axes last."""
    seen = "".join(dict.fromkeys(a for a in axes if a in needed))
    return "".join(a for a in seen if a not in TIME_AXES) + "".join(
        a for a in seen if a in TIME_AXES
    )


@functools.lru_cache(maxsize=4096)
def _contraction_path(
    terms: tuple[str, ...], out: str, sizes: tuple[tuple[str, int], ...]
) -> tuple[tuple[int, int], ...]:
    size = dict(sizes)
    shapes = [tuple(size[a] for a in t) for t in terms]
    strategy = "optimal" if len(terms) <= EXHAUSTIVE_OPERANDS else "greedy"
    path, _ = opt_einsum.contract_path(
        ",".join(terms) + "->" + out, *shapes, shapes=True, optimize=strategy
    )
    return tuple(tuple(sorted(p)) for p in path)
