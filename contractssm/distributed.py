"""Distributed training helpers: one set of plans for every rank.

Plans depend only on sizes, dtype, device kind and the machine profile, so ranks of one job
usually choose alike; autotuning, though, measures, and timings differ per rank. Ranks that ran
different code would still agree numerically, but :func:`share_plans` makes every rank use
rank 0's plans so that all ranks run the same generated code (and compile the same graphs).

Layers keep the executors they have built, so the order matters: plan (or autotune) on rank 0
first, share, and only then let the other ranks run the model.

Example:
    ::

        if dist.get_rank() == 0:
            model.prepare(shape)        # or one warm-up forward pass; autotune happens here
        contractssm.distributed.share_plans()
        model.prepare(shape)            # other ranks now find rank 0's plans in their cache
"""

from __future__ import annotations

import torch.distributed as dist

from contractssm.planner.cache import DEFAULT_CACHE, PlanCache
from contractssm.planner.plan import Plan


def share_plans(cache: PlanCache | None = None, *, src: int = 0, group=None) -> int:
    """Replace every rank's in-memory plans by rank ``src``'s; returns how many were shared.

    Call it after rank ``src`` has planned (or autotuned) and before the other ranks run their
    layers: layers keep the executors they have already built.
    """
    cache = DEFAULT_CACHE if cache is None else cache
    if not dist.is_available() or not dist.is_initialized():
        return 0
    payload = [None]
    if dist.get_rank(group) == src:
        payload[0] = [(key, plan.to_json(indent=None)) for key, plan in cache.items()]
    dist.broadcast_object_list(payload, src=src, group=group)
    shared = 0
    for key, text in payload[0]:
        cache.put(key, Plan.from_json(text))
        shared += 1
    return shared
