"""Peak memory of forward+backward with and without the memory-lean FFT convolution.

Each measurement runs in a fresh subprocess and reports the growth of the peak resident set
size (``ru_maxrss``) over the process's state just before the forward pass.

Run: ``python -m benchmarks.memory_lean``.
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = [
    ("full", {"b": 8, "c": 64, "d": 64, "n": 16, "l": 1024}),
    ("dws", {"b": 8, "c": 64, "n": 16, "l": 4096}),
    ("neck", {"b": 8, "c": 64, "d": 64, "n": 4, "m": 16, "l": 4096}),
]

CHILD = r"""
import json, resource, sys, torch
import contractssm
from contractssm.codegen import fuse
from contractssm.codegen.bind import canonical_args
mode, sizes, fused = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
fuse.ENABLED = fused
graph = contractssm.get_graph(mode)
plan = contractssm.plan(mode, sizes, requires_grad=True, algorithm="fft")
ex = contractssm.executors(plan)
gen = torch.Generator().manual_seed(0)
ops = {}
for op in graph.operands:
    shape = [sizes[i] for i in op.indices]
    if op is graph.recurrence:
        re = -0.1 - torch.rand(shape, generator=gen)
        t = torch.complex(re, torch.randn(shape, generator=gen))
    else:
        t = torch.randn(shape, generator=gen)
    ops[op.name] = t.requires_grad_(True)
args = canonical_args(graph, ops)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ex.kernel(*args).sum().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_mib": (after - before) / 1024, "strategy": plan.strategy.describe(),
                  "fused": "fft_conv" in ex.kernel.source}))
"""


def measure(mode: str, sizes: dict, fused: bool) -> dict:
    """Run one forward+backward in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, json.dumps(sizes), "1" if fused else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print the peak memory with and without fusion for each case."""
    for mode, sizes in CASES:
        plain = measure(mode, sizes, False)
        lean = measure(mode, sizes, True)
        print(
            f"{mode:5s} {sizes}: plain autograd {plain['peak_growth_mib']:8.1f} MiB, "
            f"lean FFT conv {lean['peak_growth_mib']:8.1f} MiB "
            f"(fused={lean['fused']}; {lean['strategy']})",
            flush=True,
        )


if __name__ == "__main__":
    main()
