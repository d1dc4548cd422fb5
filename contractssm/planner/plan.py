"""The :class:`Plan` value: what the planner chose, why, and how to read it.

A plan is immutable and names everything: the canonical declaration and sizes it is for, the
chosen :class:`~contractssm.planner.lower.Strategy`, the kernel-mode program's steps with their
predicted cost, and the runner-up candidates. ``print(plan)`` shows a table in the spirit of
opt_einsum's ``PathInfo``; :meth:`Plan.to_json` / :meth:`Plan.from_json` round-trip;
:meth:`Plan.to_networkx` and :meth:`Plan.to_dot` draw the program.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from contractssm._version import __version__
from contractssm.planner.lower import Strategy
from contractssm.planner.search import Candidate
from contractssm.planner.steps import Step

#: Node colours by phase, for drawings of a plan (DOT here, matplotlib in contractssm.viz).
PHASE_COLOURS = {
    "input": "white",
    "signal": "lightblue",
    "kernel": "khaki",
    "conv": "salmon",
    "output": "palegreen",
    "skip": "lightgrey",
    "state": "plum",
}

#: How many runner-up candidates a plan keeps.
KEPT_CANDIDATES = 8


@dataclass(frozen=True)
class Plan:
    """How to evaluate one canonical graph at given sizes, dtype and device.

    Attributes:
        declaration: the canonical declaration text (the graph's cache key).
        sizes: ``(index, size)`` pairs over the canonical indices.
        dtype: ``float32`` or ``float64``.
        device: device kind (``cpu``, ``cuda``).
        requires_grad: whether the plan was costed for forward plus backward.
        objective: ``time``, ``flops`` or ``memory``.
        memory_limit: the byte limit every candidate had to meet, if any.
        strategy: the chosen strategy.
        state_inputs: weights applied on the input side of the recurrent state.
        predicted_seconds: predicted time of the chosen strategy.
        flops: its floating-point operations.
        peak_bytes: its predicted peak of intermediates.
        search: which search ran (``exhaustive`` or the heuristic's description).
        n_candidates: how many candidates were priced.
        candidates: the best candidates (the chosen one first), for "why this one".
        steps: the kernel-mode program of the chosen strategy.
        profile: the machine profile's name.
        version: the library version that made the plan.
        measured_seconds: autotune's measurement of the chosen candidate, if autotuned.
        autotune: ``(strategy description, predicted s, measured s)`` for each timed candidate.
        names: display names: ``(canonical, original)`` pairs for operands and indices.
    """

    declaration: str
    sizes: tuple[tuple[str, int], ...]
    dtype: str
    device: str
    requires_grad: bool
    objective: str
    memory_limit: int | None
    strategy: Strategy
    state_inputs: tuple[str, ...]
    predicted_seconds: float
    flops: float
    peak_bytes: int
    search: str
    n_candidates: int
    candidates: tuple[Candidate, ...]
    steps: tuple[Step, ...]
    profile: str
    version: str = __version__
    measured_seconds: float | None = None
    autotune: tuple[tuple[str, float, float], ...] = ()
    names: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def algorithm(self) -> str:
        """The convolution algorithm: ``fft``, ``direct`` or ``chunked``."""
        return self.strategy.algorithm

    @property
    def length(self) -> int:
        """The sequence length the plan is for."""
        from contractssm.spec import parse

        return dict(self.sizes)[parse(self.declaration).time]

    def with_names(self, names: tuple[tuple[str, str], ...]) -> Plan:
        """The same plan, displayed with the caller's operand and index names."""
        return replace(self, names=names)

    # -- reading -----------------------------------------------------------------------------

    def __str__(self) -> str:
        return format_plan(self)

    def __repr__(self) -> str:
        return (
            f"Plan({self.declaration!r}, {dict(self.sizes)}, {self.strategy.describe()!r}, "
            f"predicted={self.predicted_seconds * 1e3:.3f} ms)"
        )

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (see :meth:`from_dict`)."""
        return {
            "format": "contractssm-plan",
            "version": self.version,
            "declaration": self.declaration,
            "sizes": dict(self.sizes),
            "dtype": self.dtype,
            "device": self.device,
            "requires_grad": self.requires_grad,
            "objective": self.objective,
            "memory_limit": self.memory_limit,
            "algorithm": self.strategy.algorithm,
            "strategy": self.strategy.to_dict(),
            "state_inputs": list(self.state_inputs),
            "predicted_seconds": self.predicted_seconds,
            "flops": self.flops,
            "peak_bytes": self.peak_bytes,
            "search": self.search,
            "n_candidates": self.n_candidates,
            "candidates": [
                {
                    "strategy": c.strategy.to_dict(),
                    "description": c.strategy.describe(),
                    "predicted_seconds": c.seconds,
                    "flops": c.flops,
                    "peak_bytes": c.peak_bytes,
                }
                for c in self.candidates
            ],
            "steps": [s.to_dict() for s in self.steps],
            "profile": self.profile,
            "measured_seconds": self.measured_seconds,
            "autotune": [list(t) for t in self.autotune],
            "names": dict(self.names),
        }

    def to_json(self, indent: int | None = 1) -> str:
        """The plan as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """Rebuild a plan; raises ``ValueError`` when anything is missing or malformed."""
        try:
            if d.get("format") != "contractssm-plan":
                raise ValueError("not a contractssm plan")
            if d["dtype"] not in ("float32", "float64"):  # it is written into generated code
                raise ValueError(f"unsupported dtype {d['dtype']!r}")
            limit = d["memory_limit"]
            measured = d["measured_seconds"]
            return cls(
                declaration=str(d["declaration"]),
                sizes=tuple((str(k), int(v)) for k, v in dict(d["sizes"]).items()),
                dtype=str(d["dtype"]),
                device=str(d["device"]),
                requires_grad=bool(d["requires_grad"]),
                objective=str(d["objective"]),
                memory_limit=None if limit is None else int(limit),
                strategy=Strategy.from_dict(d["strategy"]),
                state_inputs=tuple(map(str, d["state_inputs"])),
                predicted_seconds=float(d["predicted_seconds"]),
                flops=float(d["flops"]),
                peak_bytes=int(d["peak_bytes"]),
                search=str(d["search"]),
                n_candidates=int(d["n_candidates"]),
                candidates=tuple(
                    Candidate(
                        Strategy.from_dict(c["strategy"]),
                        float(c["predicted_seconds"]),
                        float(c["flops"]),
                        int(c["peak_bytes"]),
                    )
                    for c in d["candidates"]
                ),
                steps=tuple(Step.from_dict(s) for s in d["steps"]),
                profile=str(d["profile"]),
                version=str(d["version"]),
                measured_seconds=None if measured is None else float(measured),
                autotune=tuple((str(a), float(b), float(c)) for a, b, c in d["autotune"]),
                names=tuple((str(k), str(v)) for k, v in dict(d.get("names", {})).items()),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"malformed plan: missing or bad field {err}") from None

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on bad text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"plan is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError("plan JSON is not an object")
        return cls.from_dict(data)

    # -- drawing -------------------------------------------------------------------------

    def to_networkx(self):
        """The kernel-mode program as a ``networkx.DiGraph``.

        Tensors are nodes (with their axes, op and phase), and an edge runs from each input to
        the step that consumes it.
        """
        import networkx as nx

        g = nx.DiGraph(declaration=self.declaration, strategy=self.strategy.describe())
        produced = {s.output for s in self.steps}
        for s in self.steps:
            for i in s.inputs:
                if i not in produced and i not in g:
                    g.add_node(i, op="input", axes="", phase="input", label=self._display(i))
            g.add_node(
                s.output,
                op=s.op,
                axes=s.axes,
                phase=s.phase,
                label=f"{s.op}\n{s.equation or s.axes}",
                seconds=s.seconds,
                flops=s.flops,
            )
            for i in s.inputs:
                g.add_edge(i, s.output)
        return g

    def to_dot(self) -> str:
        """The program in Graphviz DOT (render with ``dot -Tpng``)."""
        g = self.to_networkx()
        colours = PHASE_COLOURS
        lines = [
            "digraph plan {",
            "  rankdir=LR;",
            "  node [shape=box, style=filled];",
            f'  label="{_dot_escape(self.strategy.describe())}";',
        ]
        for node, data in g.nodes(data=True):
            lines.append(
                f'  "{node}" [label="{_dot_escape(data["label"])}", '
                f"fillcolor={colours.get(data['phase'], 'white')}];"
            )
        for a, b in g.edges:
            lines.append(f'  "{a}" -> "{b}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _display(self, canonical: str) -> str:
        name = dict(self.names).get(canonical)
        return f"{canonical} ({name})" if name and name != canonical else canonical


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_plan(plan: Plan) -> str:
    """The human-readable table behind ``print(plan)``."""
    mib = 2.0**20
    names = dict(plan.names)
    sizes = " ".join(f"{k}={v}" for k, v in plan.sizes)
    mode = "forward+backward" if plan.requires_grad else "forward"
    legend = ", ".join(f"{k}={v}" for k, v in plan.names if k != v)
    chosen = plan.candidates[0] if plan.candidates else None
    worst = max(plan.candidates, key=lambda c: c.seconds) if plan.candidates else None
    largest = max(plan.steps, key=lambda s: s.elements) if plan.steps else None
    itemsize = 8 if plan.dtype == "float64" else 4
    rows = [
        f"  Declaration:        {plan.declaration}",
        f"  Sizes:              {sizes}",
        f"  Target:             {plan.dtype} on {plan.device}, {mode}, objective={plan.objective}"
        + (f", memory limit {plan.memory_limit / mib:.1f} MiB" if plan.memory_limit else ""),
    ]
    if legend:
        rows.append(f"  Names:              {legend}")
    rows += [
        f"  Chosen:             {_named(plan.strategy.describe(), names)}",
        f"  Predicted time:     {plan.predicted_seconds * 1e3:.3f} ms"
        + (
            f"  (measured {plan.measured_seconds * 1e3:.3f} ms)"
            if plan.measured_seconds is not None
            else ""
        ),
        f"  FLOPs:              {plan.flops:.3e}",
        f"  Peak memory:        {plan.peak_bytes / mib:.2f} MiB",
    ]
    if largest is not None:
        rows.append(
            f"  Largest tensor:     {largest.output}({','.join(largest.axes)}) "
            f"{largest.bytes(itemsize) / mib:.2f} MiB"
        )
    if worst is not None and chosen is not None and worst.seconds > 0:
        rows.append(
            f"  Search:             {plan.search}, {plan.n_candidates} candidates; "
            f"worst kept {worst.seconds * 1e3:.3f} ms"
        )
    rows.append(f"  Profile:            {plan.profile}")
    header = (
        f"  {'#':>2}  {'phase':<7} {'op':<14} {'what':<34} {'axes':<10} {'MFLOP':>9} "
        f"{'MiB':>8} {'ms':>8}"
    )
    rule = "  " + "-" * (len(header) - 2)
    rows += [rule, header, rule]
    for k, s in enumerate(plan.steps):
        what = s.equation or ", ".join(f"{a}={v}" for a, v in s.attrs)
        what = _named(what, names) if not s.equation else what
        rows.append(
            f"  {k:>2}  {s.phase:<7} {s.op:<14} {what[:34]:<34} {s.axes:<10} "
            f"{s.flops / 1e6:>9.2f} {s.bytes(itemsize) / mib:>8.2f} {s.seconds * 1e3:>8.3f}"
        )
    rows.append(rule)
    if plan.candidates:
        rows.append("  Candidates (predicted, best first):")
        for k, c in enumerate(plan.candidates):
            mark = "*" if c.strategy == plan.strategy else " "
            rows.append(
                f"   {mark}{k + 1:>2}. {c.seconds * 1e3:>10.3f} ms {c.peak_bytes / mib:>9.2f}"
                f" MiB  {_named(c.strategy.describe(), names)}"
            )
    if plan.autotune:
        rows.append("  Autotune (predicted vs measured):")
        for desc, pred, meas in plan.autotune:
            rows.append(
                f"     {pred * 1e3:>10.3f} ms -> {meas * 1e3:>10.3f} ms  {_named(desc, names)}"
            )
    return "\n".join(rows)


def _named(text: str, names: dict[str, str]) -> str:
    """Replace canonical weight names (W0, D1, ...) by the caller's, longest first."""
    for canon in sorted(names, key=len, reverse=True):
        if canon[:1] in "WD" and canon[1:].isdigit():
            text = text.replace(canon, names[canon])
    return text
