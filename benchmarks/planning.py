"""Planning speed: cold planning time per built-in mode on the benchmark grid, and cache hits.

Run: ``python -m benchmarks.planning`` (add ``--json FILE`` to save the numbers).

Targets (issue 3): cold planning under 50 ms per mode and grid cell on a 2-core CPU; a plan
cache hit under 20 microseconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import contractssm
from contractssm.planner.cache import PlanCache

#: (B, C = D, L, N) cells of the benchmark grid (issue 6).
GRID = [
    (8, 64, 1024, 16),
    (8, 64, 4096, 16),
    (1, 256, 4096, 16),
    (32, 32, 2048, 8),
    (4, 128, 16384, 16),
]
MODEL_GRID = [(8, 1024), (8, 4096), (32, 2048), (4, 16384)]


def centaurus_sizes(mode: str, b: int, c: int, length: int, n: int) -> dict[str, int]:
    """Sizes of a Centaurus mode at a grid cell (``state_blocks`` = 4 for s5 and neck)."""
    if mode == "dws":
        return {"b": b, "c": c, "n": n, "l": length}
    if mode == "s5":
        return {"b": b, "c": c, "d": c, "s": 4 * n, "l": length}
    if mode == "neck":
        return {"b": b, "c": c, "d": c, "n": 4, "m": n, "l": length}
    return {"b": b, "c": c, "d": c, "n": n, "l": length}


def model_sizes(mode: str, b: int, length: int, h: int = 64, n: int = 64) -> dict[str, int]:
    """Sizes of S4D, S5 (MIMO) and LRU at d_model ``h`` and d_state ``n``."""
    if mode == "s4d":
        return {"b": b, "k": 1, "h": h, "n": n // 2, "l": length}
    if mode == "s5_mimo":
        return {"b": b, "h": h, "g": h, "p": n, "l": length}
    return {"b": b, "h": h, "g": h, "n": n, "l": length}


def cases():
    """(mode, sizes) for every cell of the grid."""
    for mode in ("dws", "s5", "neck", "full"):
        for cell in GRID:
            yield mode, centaurus_sizes(mode, *cell)
    for mode in ("s4d", "s5_mimo", "lru"):
        for b, length in MODEL_GRID:
            yield mode, model_sizes(mode, b, length)


def main() -> None:
    """Measure and print planning times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rows = []
    for mode, sizes in cases():
        times = []
        for _ in range(3):
            # Collect first: a full collection of what earlier cells left lands inside some
            # cell's call otherwise (measured: one call of 114 ms against 5-7 ms, the pause).
            gc.collect()
            start = time.perf_counter()
            contractssm.plan(mode, sizes, requires_grad=True, cache=PlanCache(directory=None))
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "mode": mode,
                "sizes": sizes,
                "first_ms": times[0] * 1e3,
                "cold_ms": statistics.median(times[1:]) * 1e3,
            }
        )
        print(
            f"{mode:8s} {sizes}: first {times[0] * 1e3:7.1f} ms, "
            f"cold (plan not cached) {statistics.median(times[1:]) * 1e3:7.1f} ms",
            flush=True,
        )
    cache = PlanCache(directory=None)
    sizes = centaurus_sizes("neck", *GRID[0])
    contractssm.plan("neck", sizes, cache=cache)
    reps = 20000
    hits = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            contractssm.plan("neck", sizes, cache=cache)
        hits.append((time.perf_counter() - start) / reps)
    hit_us = min(hits) * 1e6
    cold = [r["cold_ms"] for r in rows]
    print(
        f"\ncold planning: median {statistics.median(cold):.1f} ms, worst {max(cold):.1f} ms "
        f"(target < 50 ms); cache hit {hit_us:.1f} us (target < 20 us)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cases": rows, "cache_hit_us": hit_us}, fh, indent=1)


if __name__ == "__main__":
    main()
