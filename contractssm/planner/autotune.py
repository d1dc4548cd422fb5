"""Autotune: time the best few candidates on real tensors and keep the fastest.

The cost model ranks candidates; autotuning builds the executors of the top ``n`` (default 4),
runs each on random tensors of the plan's sizes (forward, plus backward when the plan is for
training), interleaved over several rounds, and keeps the one with the lowest median time.
The plan records predicted and measured seconds for every timed candidate.

Only candidates that are safe and plausible are timed: predicted at most
:data:`TIME_RATIO` times slower than the best (the cost model is not that far off), and
predicted to fit in the memory budget (the plan's memory limit, else half the memory the
device has free). The plan's own pick always runs: it was chosen to fit.

This is the one place the planner builds executors (it imports the code generator lazily).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import replace

from contractssm.planner.plan import Plan
from contractssm.planner.profile import MachineProfile

#: Rounds of interleaved timing (each round runs every candidate once).
ROUNDS = 5

#: Candidates predicted more than this many times slower than the best are not timed.
TIME_RATIO = 4.0


def memory_budget(device: object, limit: int | None) -> int | None:
    """Bytes a timed candidate may use: ``limit``, else half the device's free memory.

    ``None`` when neither is known (then only the time rule applies).
    """
    import torch

    if limit is not None:
        return limit
    dev = torch.device(str(device))
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free // 2
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        return int(fields["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):
        return None


def timed_candidates(plan: Plan, n: int, budget: int | None) -> list:
    """The candidates autotuning runs: the best ``n`` that are plausible and fit."""
    best = plan.candidates[0].seconds
    out = []
    for k, cand in enumerate(plan.candidates):
        if len(out) == max(1, n):
            break
        fits = budget is None or cand.peak_bytes <= budget
        if k == 0 or (fits and cand.seconds <= TIME_RATIO * best):
            out.append(cand)
    return out


def interleaved_orders(count: int, rounds: int) -> list[list[int]]:
    """The order contenders ``0..count-1`` run in, per round: a fresh seeded shuffle each.

    A contender that frees large buffers makes the next one's allocations fault pages in. A
    fixed (or rotated) order keeps the same predecessor for each contender, so one of them
    would pay that every round (measured in the benchmark: the same strategy 6.21 vs 3.45 ms
    fwd+bwd by position alone); shuffles give each random predecessors, reproducibly.
    """
    rng = random.Random(count)
    return [rng.sample(range(count), count) for _ in range(rounds)]


def autotune_plan(plan: Plan, n: int, device: object, profile: MachineProfile) -> Plan:
    """Time the plan's best ``n`` candidates; return the plan of the fastest, with timings."""
    import torch

    from contractssm.codegen.executor import dtype_of, executors
    from contractssm.planner.lower import lower_kernel
    from contractssm.spec import parse

    graph = parse(plan.declaration)
    sizes = dict(plan.sizes)
    dtype = dtype_of(plan.dtype)
    dev = torch.device(str(device))
    gen = torch.Generator(device="cpu").manual_seed(0)
    args = []
    for op in graph.operands:
        shape = [sizes[i] for i in op.indices]
        if op is graph.recurrence:
            t = torch.complex(
                -0.05 - 0.5 * torch.rand(shape, generator=gen, dtype=dtype),
                torch.randn(shape, generator=gen, dtype=dtype),
            )
        elif op.is_complex:
            t = torch.complex(
                torch.randn(shape, generator=gen, dtype=dtype),
                torch.randn(shape, generator=gen, dtype=dtype),
            )
        else:
            t = torch.randn(shape, generator=gen, dtype=dtype)
        args.append(t.to(dev).requires_grad_(plan.requires_grad))

    contenders = timed_candidates(plan, n, memory_budget(device, plan.memory_limit))
    runs = []
    for cand in contenders:
        fn = executors(replace(plan, strategy=cand.strategy)).kernel

        def run(fn=fn):
            y = fn(*args)
            if plan.requires_grad:
                y.sum().backward()
            return y

        run()  # warm-up (allocations, lazy initialisation)
        runs.append(run)
    times: list[list[float]] = [[] for _ in runs]
    for order in interleaved_orders(len(runs), ROUNDS):
        for k in order:
            run = runs[k]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            run()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[k].append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    best = min(range(len(contenders)), key=medians.__getitem__)
    winner = contenders[best]
    itemsize = 8 if plan.dtype == "float64" else 4
    builder, _ = lower_kernel(graph, sizes, winner.strategy, profile, itemsize)
    return replace(
        plan,
        strategy=winner.strategy,
        predicted_seconds=winner.seconds,
        flops=winner.flops,
        peak_bytes=winner.peak_bytes,
        steps=tuple(builder.steps),
        measured_seconds=medians[best],
        autotune=tuple(
            (c.strategy.describe(), c.seconds, m) for c, m in zip(contenders, medians, strict=False)
        ),
    )
