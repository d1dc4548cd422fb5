"""The search: every way to evaluate a graph at given sizes, priced, and the best one picked.

The space (DESIGN.md, "What the planner searches"): each weight goes to the signal side, the
kernel side or the output side of the convolution (``3^k`` placements; inside a side, the
contraction order is optimal by :mod:`opt_einsum`); the convolution algorithm (FFT at a fast
length, direct Toeplitz, chunked state passing at several chunk lengths); and the kernel
generation method (exp in time, factorised Vandermonde, closed form in frequency).

Up to :data:`EXHAUSTIVE_WEIGHTS` weights the placements are enumerated exhaustively. Above, a
heuristic search starts from "everything on the kernel side" and moves one weight at a time to
the side that lowers the cost until no move helps; the plan records which search ran.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from contractssm.errors import PlanError
from contractssm.ir import Graph
from contractssm.planner.lower import (
    ALGORITHMS,
    Strategy,
    fast_fft_length,
    lower_kernel,
)
from contractssm.planner.profile import MachineProfile
from contractssm.planner.program import OverBudget

#: Placements of up to this many weights are enumerated exhaustively (3^6 = 729).
EXHAUSTIVE_WEIGHTS = 6
#: Chunk lengths the chunked algorithm may use.
CHUNK_LENGTHS = (16, 32, 64, 128, 256)
#: The direct (Toeplitz) algorithm materialises L x L per kernel channel: only for short L.
DIRECT_MAX_LENGTH = 4096
OBJECTIVES = ("time", "flops", "memory")
#: Branch and bound abandons a candidate once its partial time passes this times the best.
PRUNE_FACTOR = 3.0


@dataclass(frozen=True)
class Candidate:
    """A priced strategy."""

    strategy: Strategy
    seconds: float
    flops: float
    peak_bytes: int

    def score(self, objective: str) -> tuple[float, float]:
        """Sort key for an objective (ties broken by time)."""
        primary = {"time": self.seconds, "flops": self.flops, "memory": self.peak_bytes}
        return (primary[objective], self.seconds)


def vandermonde_factor(length: int) -> int:
    """The fine factor of the Vandermonde split: a power of two near sqrt(L)."""
    return max(1, 2 ** round(math.log2(max(1.0, math.sqrt(length)))))


def chunk_lengths(length: int) -> tuple[int, ...]:
    """Chunk lengths worth trying for a sequence of ``length`` steps."""
    options = tuple(t for t in CHUNK_LENGTHS if t < length)
    return options or (max(1, length),)


def algorithm_options(length: int, algorithm: str | None) -> Iterator[tuple[str, str, int, int]]:
    """(algorithm, kernel method, chunk, n_fft) choices at one sequence length."""
    algorithms = ALGORITHMS if algorithm is None else (algorithm,)
    for algo in algorithms:
        if algo == "fft":
            n = fast_fft_length(2 * length - 1)
            yield "fft", "exp", 0, n
            if length > 4:
                yield "fft", "vandermonde", vandermonde_factor(length), n
            yield "fft", "closed_form", 0, n
        elif algo == "direct":
            if length <= DIRECT_MAX_LENGTH or algorithm == "direct":
                yield "direct", "exp", 0, 0
                if length > 4:
                    yield "direct", "vandermonde", vandermonde_factor(length), 0
        elif algo == "chunked":
            for t in chunk_lengths(length):
                yield "chunked", "exp", t, 0
        else:
            raise PlanError(f"unknown algorithm {algo!r}; choose fft, direct or chunked")


def placements(weights: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], ...]]:
    """Every assignment of weights to (signal, kernel, output) sides."""
    for sides in itertools.product(range(3), repeat=len(weights)):
        yield tuple(
            tuple(w for w, s in zip(weights, sides, strict=False) if s == k) for k in range(3)
        )


def price(
    graph: Graph,
    sizes: dict[str, int],
    strategy: Strategy,
    profile: MachineProfile,
    itemsize: int,
    requires_grad: bool,
    prices: dict | None = None,
    budget: float | None = None,
) -> Candidate | None:
    """Lower one strategy and price it.

    ``prices`` is a step-price memo shared in a search; with a ``budget`` in seconds, a
    strategy whose partial cost already exceeds it is abandoned and ``None`` returned.
    """
    try:
        b, outputs = lower_kernel(
            graph, sizes, strategy, profile, itemsize, prices, budget, requires_grad
        )
    except OverBudget:
        return None
    flops = sum(s.flops for s in b.steps) * (3.0 if requires_grad else 1.0)
    return Candidate(
        strategy, b.seconds(requires_grad), flops, b.peak_bytes(outputs, requires_grad)
    )


def search(
    graph: Graph,
    sizes: dict[str, int],
    profile: MachineProfile,
    itemsize: int,
    *,
    requires_grad: bool,
    algorithm: str | None = None,
    prune: bool = False,
) -> tuple[list[Candidate], str, int]:
    """Price the search space: the priced candidates, which search ran, how many considered.

    ``graph`` must be canonical and ``sizes`` keyed by its indices. With ``prune`` (for the
    time objective without a memory limit), branch and bound: a candidate is abandoned as soon
    as its partial predicted time exceeds :data:`PRUNE_FACTOR` times the best complete one
    (costs only grow, so the optimum is never lost, and near-best runners-up stay priced).
    """
    weights = tuple(w.name for w in graph.weights)
    length = sizes[graph.time]
    options = list(algorithm_options(length, algorithm))
    prices: dict = {}
    if len(weights) <= EXHAUSTIVE_WEIGHTS:
        cands, best, pruned = [], float("inf"), 0
        for sides in placements(weights):
            for opt in options:
                budget = PRUNE_FACTOR * best if prune and best < float("inf") else None
                c = price(
                    graph,
                    sizes,
                    Strategy(*sides, *opt),
                    profile,
                    itemsize,
                    requires_grad,
                    prices,
                    budget,
                )
                if c is None:
                    pruned += 1
                    continue
                cands.append(c)
                best = min(best, c.seconds)
        total = len(cands) + pruned
        how = "exhaustive" + (
            f" (branch and bound: {pruned} of {total} abandoned early)" if pruned else ""
        )
        return cands, how, total
    cands = _local_search(graph, sizes, weights, options, profile, itemsize, requires_grad, prices)
    how = "local (more than 6 weights: one-weight moves from all-on-kernel until no move helps)"
    return cands, how, len(cands)


def _local_search(graph, sizes, weights, options, profile, itemsize, requires_grad, prices):
    seen: dict[Strategy, Candidate] = {}

    def cost(sides, opt) -> Candidate:
        st = Strategy(*sides, *opt)
        if st not in seen:
            seen[st] = price(graph, sizes, st, profile, itemsize, requires_grad, prices)
        return seen[st]

    for opt in options:
        side_of = dict.fromkeys(weights, 1)
        improved = True
        while improved:
            improved = False
            for w in weights:
                for target in (0, 1, 2):
                    trial = dict(side_of, **{w: target})
                    if cost(_sides(trial), opt).seconds < cost(_sides(side_of), opt).seconds:
                        side_of, improved = trial, True
    return list(seen.values())


def _sides(side_of: dict[str, int]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(w for w, s in side_of.items() if s == k) for k in range(3))


def choose(cands: list[Candidate], objective: str, memory_limit: int | None) -> list[Candidate]:
    """Candidates ranked best first under the objective and memory limit.

    Raises:
        PlanError: no candidate fits the memory limit (the message gives the smallest peak).
    """
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    fitting = [c for c in cands if memory_limit is None or c.peak_bytes <= memory_limit]
    if not fitting:
        smallest = min(c.peak_bytes for c in cands)
        raise PlanError(
            f"no plan fits the memory limit of {memory_limit} bytes; the smallest peak possible "
            f"is {smallest} bytes ({smallest / 2**20:.1f} MiB)"
        )
    return sorted(fitting, key=lambda c: c.score(objective))
