"""Replay a recorded grid's planner picks under another cost-model profile, timing nothing.

A grid record (``python -m benchmarks.bench --json FILE``) holds, for every cell, the measured
forward+backward time of the planner's pick, of the autotuned pick and of the best candidates
by prediction. Replanning each cell under a modified machine profile and looking the new pick
up among those measurements gives the regret the modified model would have had in that run:
seconds of planning instead of a 40-minute grid. A pick the run did not time is reported as
unmeasured (its time is unknown, so it counts in no summary).

    python -m benchmarks.replay docs/bench-session16.json docs/bench-session17.json \\
        --scale elementwise_gbps=2 --set fft_gflops=20 --set matmul_gflops.real.medium=100

``--scale FIELD=FACTOR`` multiplies a rate of the CPU default profile, ``--set FIELD=VALUE``
replaces it (``--set`` after ``--scale``). Timings move by 10-40% between runs on a small
machine, so a change is worth a grid run only if it helps in every record it is replayed on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
from collections.abc import Iterator, Mapping, Sequence

from benchmarks.bench import _plan, strategy_means
from contractssm.planner import api
from contractssm.planner.profile import SIZE_CLASSES, MachineProfile, default_profile

#: The scalar rates of a profile that ``--scale``/``--set`` may change (``matmul_gflops`` is
#: addressed per entry, ``matmul_gflops.<real|complex>.<size class>``).
RATES = (
    "fft_gflops",
    "elementwise_gbps",
    "cache_gbps",
    "transcendental_gelems",
    "launch_us",
    "fresh_memory_gbps",
)


@dataclasses.dataclass(frozen=True)
class Replayed:
    """One cell replayed: the recorded pick, the new one, and their measured times (ms)."""

    mode: str
    sizes: dict
    recorded: str
    pick: str
    pick_ms: float | None  # None: the run did not time the new pick
    recorded_ms: float
    best_ms: float

    @property
    def regret(self) -> float | None:
        """The new pick's measured time over the best measured one (``None``: unmeasured)."""
        return None if self.pick_ms is None else self.pick_ms / self.best_ms


def modified_profile(
    base: MachineProfile,
    scale: Mapping[str, float] | None = None,
    values: Mapping[str, float] | None = None,
) -> MachineProfile:
    """``base`` with rates multiplied by ``scale``, then replaced by ``values``.

    The result keeps ``base``'s device kind (its name is ``<kind>:replayed``): the cost model
    prices some steps by the kind (a sequential chunk scan on CPUs).

    Raises:
        ValueError: a field is not a rate (names it, and the rates there are).
    """
    fields = {f: getattr(base, f) for f in RATES}
    matmul = {kind: dict(classes) for kind, classes in base.matmul_gflops.items()}
    steps = ((scale or {}, lambda old, x: old * x), (values or {}, lambda old, x: x))
    for changes, apply in steps:
        for name, x in changes.items():
            if name in fields:
                fields[name] = apply(fields[name], x)
                continue
            prefix, _, entry = name.partition(".")
            kind, _, size = entry.partition(".")
            if prefix == "matmul_gflops" and kind in matmul and size in SIZE_CLASSES:
                matmul[kind][size] = apply(matmul[kind][size], x)
                continue
            known = ", ".join((*RATES, "matmul_gflops.<real|complex>.<small|medium|large>"))
            raise ValueError(f"replay: {name!r} is not a profile rate (choose from {known})")
    return dataclasses.replace(
        base, name=f"{base.device_kind}:replayed", matmul_gflops=matmul, **fields
    )


@contextlib.contextmanager
def planning_with(profile: MachineProfile) -> Iterator[None]:
    """Plan on the CPU with ``profile`` inside the block (the previous lookup after it)."""
    previous = api.profile_for("cpu", "cpu")
    api.set_profile("cpu", profile)
    try:
        yield
    finally:
        api.set_profile("cpu", previous)


def measured_times(case: Mapping) -> dict[str, float]:
    """Forward+backward ms of every strategy a recorded cell timed.

    A strategy timed by two contenders (the plan and an autotuned plan that kept it) counts
    by the mean of its medians, as the recorded regret does (``bench.strategy_regret``).
    """
    contenders = (case["planner"], case.get("autotuned"), *case.get("candidates", ()))
    return strategy_means(
        (c["strategy"], c["fwdbwd_ms"])
        for c in contenders
        if c and c.get("strategy") and c.get("fwdbwd_ms") is not None
    )


def replay(cases: Sequence[Mapping], profile: MachineProfile) -> list[Replayed]:
    """Each recorded cell's forward+backward pick under ``profile``, with its measured time."""
    rows = []
    with planning_with(profile):
        for case in cases:
            times = measured_times(case)
            pick = _plan(case["mode"], case["sizes"], requires_grad=True).strategy.describe()
            rows.append(
                Replayed(
                    mode=case["mode"],
                    sizes=dict(case["sizes"]),
                    recorded=case["planner"]["strategy"],
                    pick=pick,
                    pick_ms=times.get(pick),
                    recorded_ms=times[case["planner"]["strategy"]],
                    best_ms=min(times.values()),
                )
            )
    return rows


def summary(rows: Sequence[Replayed]) -> str:
    """Median, worst and geometric-mean regret over the measured picks, and what changed."""
    regrets = [r.regret for r in rows if r.regret is not None]
    lines = []
    if regrets:
        geomean = statistics.geometric_mean(regrets)
        lines.append(
            f"regret over {len(regrets)} measured picks: median {statistics.median(regrets):.3f}, "
            f"worst {max(regrets):.3f}, geometric mean {geomean:.3f}"
        )
    changed = [r for r in rows if r.pick != r.recorded]
    for r in changed:
        cell = " ".join(f"{k}={v}" for k, v in r.sizes.items())
        if r.pick_ms is None:
            lines.append(f"  {r.mode} {cell}: {r.pick} (unmeasured in this record)")
        else:
            lines.append(
                f"  {r.mode} {cell}: {r.pick}, {r.pick_ms / r.recorded_ms:.2f}x the recorded pick"
            )
    if not changed:
        lines.append("  no pick changed")
    return "\n".join(lines)


def _assignments(items: Sequence[str], flag: str) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SystemExit(f"replay: {flag} takes FIELD=NUMBER, got {item!r}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: replay each record under the modified CPU default profile."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__)
    parser.add_argument("records", nargs="+", help="grid records written by bench --json")
    parser.add_argument("--scale", action="append", default=[], metavar="FIELD=FACTOR")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    try:
        profile = modified_profile(
            default_profile("cpu"),
            _assignments(args.scale, "--scale"),
            _assignments(args.set, "--set"),
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    for path in args.records:
        try:
            with open(path) as fh:
                cases = json.load(fh)["cases"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"replay: {path}: not a readable grid record ({err!r})") from None
        print(f"{path}:")
        print(summary(replay(cases, profile)))


if __name__ == "__main__":
    main()
