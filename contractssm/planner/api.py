"""``contractssm.plan``: the planner's public entry point, with its cache fast path.

Example:
    >>> import contractssm
    >>> p = contractssm.plan("neck", {"b": 8, "c": 64, "d": 64, "n": 4, "m": 16, "l": 1024})
    >>> p.algorithm in ("fft", "direct", "chunked")
    True
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from contractssm._version import __version__
from contractssm.errors import PlanError
from contractssm.ir import DIAGONAL, Graph
from contractssm.modes import get_graph
from contractssm.planner.cache import DEFAULT_CACHE, PlanCache
from contractssm.planner.plan import KEPT_CANDIDATES, Plan
from contractssm.planner.profile import MachineProfile, default_profile
from contractssm.planner.search import OBJECTIVES, choose, search
from contractssm.planner.state import state_input_weights

_ITEMSIZE = {"float32": 4, "float64": 8}
#: Bumped whenever the search space or the cost model changes, so cached plans made by an
#: older planner of the same release are not reused (part of every cache key).
PLANNER_REVISION = 15
_PROFILES: dict[str, MachineProfile] = {}


def plan(
    mode_or_declaration: str | Graph,
    sizes: Mapping[str, int],
    *,
    dtype: object = "float32",
    device: object = "cpu",
    requires_grad: bool = False,
    objective: str = "time",
    memory_limit: int | None = None,
    algorithm: str | None = None,
    autotune: bool | int = False,
    cache: PlanCache | None = None,
) -> Plan:
    """Plan how to evaluate a mode at the given sizes.

    Args:
        mode_or_declaration: a built-in or registered mode name, or a declaration.
        sizes: a size for every index letter of the declaration (SPEC.md section 1).
        dtype: ``float32`` or ``float64`` (a string or torch dtype).
        device: device the tensors live on (a string or ``torch.device``).
        requires_grad: cost forward plus backward and count activations saved for backward.
        objective: ``time`` (default), ``flops`` or ``memory``.
        memory_limit: bytes no chosen plan may exceed.
        algorithm: force the convolution algorithm (``fft``, ``direct``, ``chunked``).
        autotune: time the best few candidates (``True``: 4, or an int) and keep the fastest.
        cache: the plan cache (default: the process-wide one).

    Returns:
        The chosen :class:`~contractssm.planner.plan.Plan`, displayed with the caller's names.

    Raises:
        SpecError: the declaration or sizes are invalid.
        PlanError: no candidate fits the memory limit, or an option is unknown.
    """
    graph = get_graph(mode_or_declaration)
    if graph.recurrence.generator != DIAGONAL:
        raise PlanError(
            f"recurrence {graph.recurrence.name!r} uses kernel generator "
            f"{graph.recurrence.generator!r}; the planner plans diagonal recurrences only "
            "(S4 runs its own DPLR kernel: contractssm.layers.S4)"
        )
    canon = graph.canonical()
    csizes = canon.rename_sizes(graph.check_sizes(sizes))
    dtype_name = _dtype_name(dtype)
    kind, device_name = _device(device)
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if memory_limit is not None and (
        isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0
    ):
        raise PlanError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
    if algorithm not in (None, "fft", "direct", "chunked"):
        raise PlanError(f"unknown algorithm {algorithm!r}; choose fft, direct or chunked")
    n_tune = (4 if autotune is True else int(autotune)) if autotune else 0
    profile = profile_for(kind, device_name, dtype_name)
    key = (
        canon.key,
        tuple(csizes.items()),
        dtype_name,
        kind,
        device_name,
        objective,
        memory_limit,
        bool(requires_grad),
        algorithm,
        n_tune,
        profile.key,
        __version__,
        PLANNER_REVISION,
    )
    cache = DEFAULT_CACHE if cache is None else cache
    found = cache.get(key)
    names = _display_names(canon)
    if found is not None:
        return found.with_names(names)
    made = _make_plan(
        canon.graph,
        csizes,
        dtype_name,
        kind,
        profile,
        bool(requires_grad),
        objective,
        memory_limit,
        algorithm,
    )
    if n_tune:
        from contractssm.planner.autotune import autotune_plan

        made = autotune_plan(made, n_tune, device, profile)
    cache.put(key, made)
    return made.with_names(names)


def _make_plan(
    graph: Graph,
    sizes: dict[str, int],
    dtype: str,
    kind: str,
    profile: MachineProfile,
    requires_grad: bool,
    objective: str,
    memory_limit: int | None,
    algorithm: str | None,
) -> Plan:
    from contractssm.planner.lower import lower_kernel

    cands, how, considered = search(
        graph,
        sizes,
        profile,
        _ITEMSIZE[dtype],
        requires_grad=requires_grad,
        algorithm=algorithm,
        prune=objective == "time" and memory_limit is None,
    )
    ranked = choose(cands, objective, memory_limit)
    best = ranked[0]
    builder, _ = lower_kernel(graph, sizes, best.strategy, profile, _ITEMSIZE[dtype])
    return Plan(
        declaration=graph.to_text(),
        sizes=tuple(sizes.items()),
        dtype=dtype,
        device=kind,
        requires_grad=requires_grad,
        objective=objective,
        memory_limit=memory_limit,
        strategy=best.strategy,
        state_inputs=state_input_weights(graph, sizes),
        predicted_seconds=best.seconds,
        flops=best.flops,
        peak_bytes=best.peak_bytes,
        search=how,
        n_candidates=considered,
        candidates=tuple(ranked[:KEPT_CANDIDATES]),
        steps=tuple(builder.steps),
        profile=profile.name,
    )


def profile_for(kind: str, device_name: str, dtype: str = "float32") -> MachineProfile:
    """The machine profile planning uses on a device.

    The one stored by ``contractssm calibrate`` for this device and dtype if any, else the
    device kind's default (looked up once per process).
    """
    found = _PROFILES.get((device_name, dtype))
    if found is None:
        if kind in ("cpu", "cuda"):
            import torch

            from contractssm.planner import calibrate

            found = calibrate.profile_for(kind, getattr(torch, dtype))
        else:
            found = default_profile(kind)
        _PROFILES[(device_name, dtype)] = found
    return found


def set_profile(device_name: str, profile: MachineProfile | None, dtype: str = "float32"):
    """Plan with ``profile`` on ``device_name`` from now on (``None``: look it up again)."""
    if profile is None:
        _PROFILES.pop((device_name, dtype), None)
    else:
        _PROFILES[(device_name, dtype)] = profile


def _dtype_name(dtype: object) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in _ITEMSIZE:
        raise PlanError(f"unsupported dtype {dtype!r}; plans are made for float32 or float64")
    return name


def _device(device: object) -> tuple[str, str]:
    return _device_name(str(device))


@functools.lru_cache(maxsize=64)
def _device_name(text: str) -> tuple[str, str]:
    """(kind, name) of a device.

    A GPU is named by its model, not its index, so that ranks on ``cuda:0`` and ``cuda:1`` of
    one machine share plans and profiles.
    """
    kind = text.split(":")[0]
    if kind not in ("cpu", "cuda", "mps", "xpu"):
        raise PlanError(f"unknown device {text!r}")
    if kind == "cuda":
        import torch

        if torch.cuda.is_available():
            index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
            return kind, f"cuda:{torch.cuda.get_device_name(index)}"
    return kind, kind


def _display_names(canon) -> tuple[tuple[str, str], ...]:
    names = canon.__dict__.get("_display_names")  # frozen value: memoised beside its fields
    if names is None:
        names = tuple((new, old) for old, new in canon.operand_names) + tuple(
            (new, old) for old, new in canon.index_names
        )
        canon.__dict__["_display_names"] = names
    return names
