"""Pictures of plans: the kernel-mode program drawn from :meth:`Plan.to_networkx` with matplotlib.

matplotlib is imported lazily (with the non-interactive ``Agg`` backend when nothing was chosen
yet), so importing this module never needs it; drawing without it raises a
:class:`~contractssm.errors.ContractSSMError` that says how to install it.

Example:
    >>> import contractssm
    >>> from contractssm.viz import save_plan_png
    >>> p = contractssm.plan("dws", {"b": 2, "c": 4, "n": 4, "l": 64})
    >>> save_plan_png(p, "plan.png")  # doctest: +SKIP
    'plan.png'
"""

from __future__ import annotations

import os
import sys
from typing import Any

from contractssm.errors import ContractSSMError
from contractssm.planner.plan import PHASE_COLOURS


def pyplot() -> Any:
    """Imports ``matplotlib.pyplot`` on the ``Agg`` backend (unless a backend is already set).

    Returns:
        The ``matplotlib.pyplot`` module.

    Raises:
        ContractSSMError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ContractSSMError(
            "drawing needs matplotlib: pip install matplotlib (or pip install 'contractssm[plot]')"
        ) from exc
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layout(graph) -> dict[str, tuple[float, float]]:
    """Left-to-right layered positions: a node's column is its longest path from an input."""
    import networkx as nx

    column: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        column[node] = 1 + max(column[p] for p in preds) if preds else 0
    by_column: dict[int, list[str]] = {}
    for node, col in column.items():
        by_column.setdefault(col, []).append(node)
    pos = {}
    for col, nodes in by_column.items():
        for row, node in enumerate(nodes):
            pos[node] = (float(col), (len(nodes) - 1) / 2.0 - row)
    return pos


def _short(label: str, width: int = 22) -> str:
    """Shortens each line of a node label to ``width`` characters."""
    return "\n".join(
        line if len(line) <= width else line[: width - 1] + "~" for line in label.splitlines()
    )


def plan_figure(plan, ax=None):
    """Draws a plan's kernel-mode program: tensors as boxes coloured by phase, steps as arrows.

    Args:
        plan: a :class:`~contractssm.planner.plan.Plan`.
        ax: the matplotlib axes to draw on; ``None`` makes a new figure.

    Returns:
        The axes drawn on.

    Raises:
        ContractSSMError: matplotlib is not installed.
    """
    plt = pyplot()
    graph = plan.to_networkx()
    pos = _layout(graph)
    columns = 1 + max((x for x, _ in pos.values()), default=0.0)
    rows = 1 + 2 * max((abs(y) for _, y in pos.values()), default=0.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 1.5 * columns), max(3.0, 0.9 * rows + 1.2)))
    for a, b in graph.edges:
        ax.annotate(
            "",
            xy=pos[b],
            xytext=pos[a],
            arrowprops={"arrowstyle": "-|>", "color": "0.35", "shrinkA": 14, "shrinkB": 14},
        )
    for node, data in graph.nodes(data=True):
        ax.text(
            *pos[node],
            _short(str(data.get("label", node))),
            ha="center",
            va="center",
            fontsize=6,
            bbox={
                "boxstyle": "round,pad=0.3",
                "facecolor": PHASE_COLOURS.get(data.get("phase", ""), "white"),
                "edgecolor": "0.2",
            },
        )
    ax.set_xlim(-0.6, columns - 0.4)
    ax.set_ylim(-rows / 2.0, rows / 2.0)
    title = f"{plan.strategy.describe()}\npredicted {plan.predicted_seconds * 1e3:.3f} ms, "
    title += f"peak {plan.peak_bytes / 2**20:.2f} MiB"
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    return ax


def save_plan_png(plan, path: str | os.PathLike) -> str:
    """Writes :func:`plan_figure` of a plan to a PNG file.

    Args:
        plan: a :class:`~contractssm.planner.plan.Plan`.
        path: where to write the PNG.

    Returns:
        The path written, as a string.

    Raises:
        ContractSSMError: matplotlib is not installed.
    """
    plt = pyplot()
    ax = plan_figure(plan)
    fig = ax.figure
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)
    return os.fspath(path)
