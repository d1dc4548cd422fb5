"""The plan cache: a bounded in-memory LRU in front of a directory of plan JSON files.

Keys are real tuples (canonical declaration, sizes, dtype, device, options, profile, library
version), never bare hashes. The disk holds plan JSON only: written atomically (a temporary
file, then a rename), validated on load (format, version and the key stored inside the file
must match), and never executed: code is always regenerated from the plan. A corrupt,
truncated, foreign-version or mismatching file is ignored with one warning and rewritten; an
unwritable directory turns the disk cache off with one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections import OrderedDict

from contractssm._version import __version__
from contractssm.planner.cachedir import cache_dir
from contractssm.planner.plan import Plan
from contractssm.spec import parse

#: Plans kept in memory.
MEMORY_ENTRIES = 512


class PlanCache:
    """Two-level plan cache.

    Args:
        directory: where plan files go; ``None`` keeps plans in memory only. By default the
            directory named by the environment (see :mod:`contractssm.planner.cachedir`).
        capacity: in-memory entries kept (least recently used dropped first).
    """

    _UNSET = object()

    def __init__(self, directory: str | object | None = _UNSET, capacity: int = MEMORY_ENTRIES):
        self._directory = directory
        self.capacity = capacity
        self._memory: OrderedDict[tuple, Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.hits = self.misses = self.disk_hits = 0

    @property
    def directory(self) -> str | None:
        """The plan directory in use, or ``None`` (memory only)."""
        if self._directory is PlanCache._UNSET:
            base = cache_dir()
            return None if base is None else os.path.join(base, "plans")
        return self._directory  # type: ignore[return-value]

    def get(self, key: tuple) -> Plan | None:
        """The plan stored under ``key``, from memory or disk, or ``None``."""
        plan = self._memory.get(key)
        if plan is not None:
            self.hits += 1
            self._memory.move_to_end(key)
            return plan
        plan = self._load(key)
        if plan is None:
            self.misses += 1
            return None
        self.disk_hits += 1
        self._remember(key, plan)
        return plan

    def put(self, key: tuple, plan: Plan) -> None:
        """Store ``plan`` under ``key`` in memory and (when enabled) on disk."""
        self._remember(key, plan)
        self._store(key, plan)

    def clear(self, disk: bool = True) -> int:
        """Forget every plan; returns how many plan files were removed from disk."""
        with self._lock:
            self._memory.clear()
        removed = 0
        directory = self.directory
        if disk and directory and os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.endswith(".json"):
                    try:
                        os.remove(os.path.join(directory, name))
                        removed += 1
                    except OSError:
                        pass
        return removed

    def items(self) -> list[tuple[tuple, Plan]]:
        """The in-memory (key, plan) pairs, least recently used first."""
        with self._lock:
            return list(self._memory.items())

    def files(self) -> list[str]:
        """Paths of the plan files on disk."""
        directory = self.directory
        if not directory or not os.path.isdir(directory):
            return []
        return sorted(
            os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".json")
        )

    def path_for(self, key: tuple) -> str | None:
        """The file a key is stored in (``None`` when the disk is off)."""
        directory = self.directory
        if directory is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return os.path.join(directory, f"plan-{digest}.json")

    # -- internals ---------------------------------------------------------------------------

    def _remember(self, key: tuple, plan: Plan) -> None:
        with self._lock:
            self._memory[key] = plan
            self._memory.move_to_end(key)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _load(self, key: tuple) -> Plan | None:
        path = self.path_for(key)
        if path is None or not os.path.exists(path):
            return None
        try:
            with open(path) as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or data.get("key") != repr(key):
                raise ValueError("the key stored in the file does not match")
            plan = Plan.from_dict(data["plan"])
            if plan.version != __version__:
                raise ValueError(f"it was made by contractssm {plan.version}, not {__version__}")
            parse(plan.declaration)  # a SpecError (a ValueError) if the declaration is not one
        except (OSError, ValueError, KeyError, TypeError) as err:
            self._warn_once(
                path,
                f"contractssm: ignoring unusable plan file {path}: {err}; it will be rewritten",
            )
            return None
        return plan

    def _store(self, key: tuple, plan: Plan) -> None:
        path = self.path_for(key)
        if path is None:
            return
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".plan-", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump({"key": repr(key), "plan": plan.to_dict()}, fh)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
        except OSError as err:
            self._directory = None
            self._warn_once(
                "unwritable",
                f"contractssm: plan cache directory {directory} is "
                f"not writable ({err}); keeping plans in memory only",
            )


#: The process-wide cache used by :func:`contractssm.plan`.
DEFAULT_CACHE = PlanCache()
