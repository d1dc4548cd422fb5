"""CLI subcommands about plans: ``plan``, ``explain``, ``cache``, ``calibrate`` and ``bench``.

Registered into :data:`contractssm.cli.COMMANDS`; each builder adds one subparser.
"""

from __future__ import annotations

import argparse
import json
import re

from contractssm.errors import PlanError, SpecError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "gib": 2**30,
}


def parse_sizes(text: str) -> dict[str, int]:
    """``"b=8,c=64,l=1024"`` -> ``{"b": 8, "c": 64, "l": 1024}``."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([A-Za-z_]\w*)\s*=\s*(\d+)", part)
        if m is None:
            raise SpecError(f"--sizes entry {part!r} is not NAME=INTEGER (e.g. b=8,c=64,l=1024)")
        if m.group(1) in sizes:
            raise SpecError(f"--sizes gives index {m.group(1)!r} twice")
        sizes[m.group(1)] = int(m.group(2))
    if not sizes:
        raise SpecError("--sizes is empty; give e.g. b=8,c=64,l=1024")
    return sizes


def parse_bytes(text: str) -> int:
    """``"2GiB"`` -> 2147483648; plain integers are bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise PlanError(f"--memory-limit {text!r} is not a size like 512MiB, 2GiB or 1000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "mode",
        metavar="MODE_OR_DECLARATION",
        help="a built-in mode (dws, s5, neck, full, s4d, s5_mimo, lru) or a declaration",
    )
    p.add_argument("--sizes", required=True, help="index sizes, e.g. b=8,c=64,d=64,n=16,l=1024")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--objective", default="time", choices=("time", "flops", "memory"))
    p.add_argument("--memory-limit", default=None, help="bytes, or e.g. 512MiB, 2GiB")
    p.add_argument("--algorithm", default=None, choices=("fft", "direct", "chunked"))
    p.add_argument("--train", action="store_true", help="cost forward plus backward")
    p.add_argument("--autotune", action="store_true", help="time the best 4 candidates")


def _make_plan(args: argparse.Namespace):
    from contractssm.planner.api import plan

    limit = None if args.memory_limit is None else parse_bytes(args.memory_limit)
    return plan(
        args.mode,
        parse_sizes(args.sizes),
        dtype=args.dtype,
        device=args.device,
        requires_grad=args.train,
        objective=args.objective,
        memory_limit=limit,
        algorithm=args.algorithm,
        autotune=args.autotune,
    )


def _write_dot(plan, path: str) -> None:
    with open(path, "w") as fh:
        fh.write(plan.to_dot())


def _write_png(plan, path: str, *, to_stderr: bool = False) -> None:
    """Draws the plan with :func:`contractssm.viz.save_plan_png` and says where it went."""
    import sys

    from contractssm.viz import save_plan_png

    try:
        written = save_plan_png(plan, path)
    except OSError as exc:
        raise PlanError(f"cannot write --png {path!r}: {exc.strerror or exc}") from exc
    print(f"plan picture written to {written}", file=sys.stderr if to_stderr else sys.stdout)


def _run_plan(args: argparse.Namespace) -> int:
    p = _make_plan(args)
    if args.dot:
        _write_dot(p, args.dot)
    print(p.to_json() if args.json else p)
    if args.png:
        _write_png(p, args.png, to_stderr=args.json)  # keep --json output parseable
    return 0


def build_plan(subparsers, add_parser) -> None:
    """Register ``contractssm plan``."""
    p = add_parser(
        subparsers,
        "plan",
        "Plan a mode at given sizes and print the plan.",
        "examples:\n"
        "  contractssm plan neck --sizes b=8,c=64,d=64,n=4,m=16,l=1024\n"
        "  contractssm plan full --sizes b=1,c=256,d=256,n=16,l=4096 --train --json\n"
        "  contractssm plan s5 --sizes b=8,c=64,d=64,s=64,l=4096 --memory-limit 64MiB --dot p.dot\n"
        "  contractssm plan dws --sizes b=2,c=4,n=4,l=64 --png plan.png",
    )
    _add_plan_options(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--dot", metavar="FILE", help="also write the plan's graph in DOT")
    p.add_argument("--png", metavar="FILE", help="also draw the plan to a PNG (needs matplotlib)")
    p.set_defaults(func=_run_plan)


def _run_explain(args: argparse.Namespace) -> int:
    from contractssm.codegen.executor import executors

    p = _make_plan(args)
    ex = executors(p)
    print(p)
    print("\n# generated kernel-mode executor\n")
    print(ex.kernel.source)
    if args.all:
        print("# generated streaming executor\n")
        print(ex.stream.source)
        print("# generated step executor\n")
        print(ex.step.source)
    if args.dot:
        _write_dot(p, args.dot)
    if args.png:
        _write_png(p, args.png)
    return 0


def build_explain(subparsers, add_parser) -> None:
    """Register ``contractssm explain``."""
    p = add_parser(
        subparsers,
        "explain",
        "Print a plan and the exact source of its generated executors.",
        "examples:\n"
        "  contractssm explain dws --sizes b=8,c=64,n=16,l=1024\n"
        "  contractssm explain 'y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]' \\\n"
        "      --sizes b=2,c=8,d=8,s=16,l=256 --all\n"
        "  contractssm explain neck --sizes b=2,c=8,d=8,n=2,m=4,l=64 --png plan.png",
    )
    _add_plan_options(p)
    p.add_argument("--all", action="store_true", help="also show stream and step executors")
    p.add_argument("--dot", metavar="FILE", help="write the plan's graph in DOT")
    p.add_argument("--png", metavar="FILE", help="draw the plan to a PNG (needs matplotlib)")
    p.set_defaults(func=_run_explain)


def _run_cache(args: argparse.Namespace) -> int:
    from contractssm.planner.cache import DEFAULT_CACHE

    directory = DEFAULT_CACHE.directory
    if args.action == "path":
        print(directory if directory else "(disk cache disabled: CONTRACTSSM_CACHE=off)")
    elif args.action == "info":
        files = DEFAULT_CACHE.files()
        size = sum(_size(f) for f in files)
        print(f"directory: {directory or '(disabled)'}")
        print(f"plans on disk: {len(files)} ({size / 1024:.1f} KiB)")
    else:
        print(f"removed {DEFAULT_CACHE.clear()} plan files from {directory or '(disabled)'}")
    return 0


def _size(path: str) -> int:
    import os

    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def build_cache(subparsers, add_parser) -> None:
    """Register ``contractssm cache``."""
    p = add_parser(
        subparsers,
        "cache",
        "Show or clear the on-disk plan cache.",
        "examples:\n  contractssm cache info\n  contractssm cache path\n  contractssm cache clear\n"
        "environment: CONTRACTSSM_CACHE_DIR overrides the directory; CONTRACTSSM_CACHE=off "
        "disables it",
    )
    p.add_argument("action", choices=("info", "path", "clear"))
    p.set_defaults(func=_run_cache)


def _run_calibrate(args: argparse.Namespace) -> int:
    import torch

    from contractssm.planner.calibrate import calibrate, default_cache_dir, profile_name
    from contractssm.planner.profile import profile_path, save_profile

    if not args.budget > 0 or args.budget == float("inf"):
        raise PlanError(f"--budget must be a positive number of seconds, got {args.budget:g}")
    if not args.device.strip():
        raise PlanError("--device is empty; give e.g. cpu or cuda")
    dtype = getattr(torch, args.dtype)
    print(f"calibrating {args.device} ({args.dtype}), about {args.budget:.0f} s ...", flush=True)
    profile = calibrate(args.device, dtype, budget_s=args.budget)
    directory = default_cache_dir()
    print(json.dumps(profile.to_dict(), indent=1))
    if directory:
        path = profile_path(directory, profile_name(args.device, dtype))
        save_profile(profile, path)
        print(f"saved to {path}; new plans on this device use it")
    else:
        print("disk cache disabled (CONTRACTSSM_CACHE=off): profile not saved")
    return 0


def build_calibrate(subparsers, add_parser) -> None:
    """Register ``contractssm calibrate``."""
    p = add_parser(
        subparsers,
        "calibrate",
        "Measure this device's rates for the cost model and store them.",
        "examples:\n  contractssm calibrate\n  contractssm calibrate --device cuda --budget 20",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--budget", type=float, default=12.0, help="seconds to spend (default 12)")
    p.set_defaults(func=_run_calibrate)


def _import_bench():
    """``benchmarks.bench`` from the source checkout (it is not part of the installed package).

    Returns ``None`` when no ``benchmarks/bench.py`` is importable, from ``sys.path`` or from the
    current directory.
    """
    import importlib
    import sys
    from pathlib import Path

    try:
        return importlib.import_module("benchmarks.bench")
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.bench"):
            raise
    if not (Path.cwd() / "benchmarks" / "bench.py").is_file():
        return None
    sys.modules.pop("benchmarks", None)
    sys.path.insert(0, str(Path.cwd()))
    return importlib.import_module("benchmarks.bench")


def _run_bench(args: argparse.Namespace) -> int:
    import sys

    bench = _import_bench()
    if bench is None:
        print(
            "contractssm: error: bench needs the source checkout: run it from the repository "
            "root (no benchmarks/bench.py here)",
            file=sys.stderr,
        )
        return 2
    _check_bench_args(args, bench)
    argv = ["--quick"] if args.quick else []
    if args.json:
        argv += ["--json", args.json]
    if args.plot:
        argv += ["--plot", args.plot]
    if args.modes:
        argv += ["--modes", *args.modes]
    if args.rounds:
        argv += ["--rounds", str(args.rounds)]
    if args.no_memory:
        argv.append("--no-memory")
    return bench.main(argv)


def _check_bench_args(args: argparse.Namespace, bench) -> None:
    """Rejects unknown modes and non-positive rounds up front, as one-line errors."""
    known = tuple(getattr(bench, "CENTAURUS_MODES", ())) + tuple(getattr(bench, "MODEL_MODES", ()))
    for mode in args.modes or ():
        if known and mode not in known:
            raise SpecError(f"--modes: unknown mode {mode!r}; choose from {', '.join(known)}")
    if args.rounds is not None and args.rounds < 1:
        raise PlanError(f"--rounds must be at least 1, got {args.rounds}")


def build_bench(subparsers, add_parser) -> None:
    """Register ``contractssm bench``."""
    p = add_parser(
        subparsers,
        "bench",
        "Benchmark the planner against the Centaurus rule and a one-einsum baseline.",
        "examples:\n  contractssm bench --quick\n"
        "  contractssm bench --json bench.json --plot bench.png\n"
        "run from the repository root (the harness lives in benchmarks/, outside the package)",
    )
    p.add_argument("--quick", action="store_true", help="a subset in under 3 minutes")
    p.add_argument("--json", metavar="FILE", help="write one record per case")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    p.add_argument("--modes", nargs="+", help="modes to run (default: all seven)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds")
    p.add_argument("--no-memory", action="store_true", help="skip subprocess peak memory")
    p.set_defaults(func=_run_bench)


def _run_demo(args: argparse.Namespace) -> int:
    from contractssm.demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed, quick=args.quick)
    return 0


def build_demo(subparsers, add_parser) -> None:
    """Register ``contractssm demo``."""
    p = add_parser(
        subparsers,
        "demo",
        "Plan every mode, check kernel/stream/step, train a small network on the digits data "
        "set, stream it and draw the result (under a minute on 2 CPU cores).",
        "examples:\n"
        "  contractssm demo\n"
        "  contractssm demo --out demo-out --epochs 20\n"
        "  contractssm demo --quick            # 3 epochs, for a smoke test",
    )
    p.add_argument("--out", default=".", metavar="DIR", help="folder for the PNG (default: .)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of data split and init")
    p.add_argument("--quick", action="store_true", help="train briefly (3 epochs)")
    p.set_defaults(func=_run_demo)
