"""Long sequences under a memory limit: the planner must pick plans that fit, and they run.

Each case runs in a fresh subprocess: plan with ``memory_limit``, build random operands, run
forward (and backward with ``--train``), and report the predicted peak, the measured growth of
the peak resident set size (``ru_maxrss``) and the wall time.

Run: ``python -m benchmarks.long_sequences [--train] [--limit-gib 4] [--cases dws s5 neck full]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    "dws": {"b": 1, "c": 64, "n": 16, "l": 2**20},
    "s5": {"b": 1, "c": 64, "d": 64, "s": 64, "l": 2**20},
    "neck": {"b": 1, "c": 64, "d": 64, "n": 4, "m": 16, "l": 2**20},
    "full": {"b": 1, "c": 256, "d": 256, "n": 16, "l": 16384},
}

CHILD = r"""
import json, resource, sys, time, torch
import contractssm
from contractssm.codegen.bind import canonical_args
mode, sizes = sys.argv[1], json.loads(sys.argv[2])
limit, train = int(sys.argv[3]), sys.argv[4] == "1"
graph = contractssm.get_graph(mode)
plan = contractssm.plan(mode, sizes, requires_grad=train, memory_limit=limit)
ex = contractssm.executors(plan)
gen = torch.Generator().manual_seed(0)
ops = {}
for op in graph.operands:
    shape = [sizes[i] for i in op.indices]
    if op is graph.recurrence:
        re = -0.01 - 0.1 * torch.rand(shape, generator=gen)
        t = torch.complex(re, torch.randn(shape, generator=gen))
    else:
        t = torch.randn(shape, generator=gen) / 8
    ops[op.name] = t.requires_grad_(train)
args = canonical_args(graph, ops)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
y = ex.kernel(*args)
if train:
    y.sum().backward()
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"strategy": plan.strategy.describe(), "predicted_gib": plan.peak_bytes / 2**30,
                  "measured_gib": (after - before) / 2**20, "seconds": seconds,
                  "finite": bool(torch.isfinite(y).all())}))
"""


def main(argv=None) -> None:
    """Run the cases and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--limit-gib", type=float, default=4.0)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args(argv)
    limit = int(args.limit_gib * 2**30)
    for name in args.cases:
        sizes = CASES[name]
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                name,
                json.dumps(sizes),
                str(limit),
                "1" if args.train else "0",
            ],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            print(f"{name:5s} {sizes}: failed: {run.stderr.strip().splitlines()[-1]}", flush=True)
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"{name:5s} {sizes} limit {args.limit_gib:.1f} GiB "
            f"{'fwd+bwd' if args.train else 'forward'}: {r['seconds']:.1f} s, peak RSS growth "
            f"{r['measured_gib']:.2f} GiB (predicted {r['predicted_gib']:.2f}), "
            f"finite={r['finite']}; {r['strategy']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
