"""The plan cache: hits and misses, the LRU bound, persistence across processes, bad files.

Every test runs against its own temporary cache directory (``CONTRACTSSM_CACHE_DIR``), never the
user's. The disk cache must survive corrupt, truncated, foreign-version and mismatching files
(one warning each, then rewritten), concurrent writers, ``CONTRACTSSM_CACHE=off`` and an
unwritable directory, and it must never execute anything it reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
from cases import random_operands

import contractssm
from contractssm.codegen.bind import canonical_args
from contractssm.codegen.executor import executors
from contractssm.modes import get_graph
from contractssm.planner.cache import PlanCache
from contractssm.planner.plan import Plan

MODE = "dws"
SIZES = {"b": 2, "c": 3, "n": 4, "l": 16}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Never touch the user's cache: every test gets its own directory."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CONTRACTSSM_CACHE_DIR", str(path))
    monkeypatch.delenv("CONTRACTSSM_CACHE", raising=False)
    return path


@pytest.fixture(scope="module")
def plans():
    """Three distinct plans made without touching any disk."""
    mem = PlanCache(directory=None)
    return [contractssm.plan(MODE, {**SIZES, "l": L}, cache=mem) for L in (8, 16, 32)]


def plan_with(cache: PlanCache, sizes=SIZES) -> Plan:
    return contractssm.plan(MODE, sizes, cache=cache)


def runtime_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, RuntimeWarning)]


def run_python(code: str, cache_dir, **popen) -> subprocess.Popen:
    env = dict(os.environ, CONTRACTSSM_CACHE_DIR=str(cache_dir))
    env.pop("CONTRACTSSM_CACHE", None)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


# -- counting and the LRU bound -----------------------------------------------------------------


def test_hits_and_misses(tmp_path, plans):
    cache = PlanCache(directory=str(tmp_path / "plans"))
    assert cache.get(("a",)) is None
    assert (cache.hits, cache.misses, cache.disk_hits) == (0, 1, 0)
    cache.put(("a",), plans[0])
    assert cache.get(("a",)) == plans[0]
    assert cache.get(("a",)) == plans[0]
    assert cache.get(("b",)) is None
    assert (cache.hits, cache.misses, cache.disk_hits) == (2, 2, 0)
    assert len(cache.files()) == 1

    # Through contractssm.plan: first call misses, the second hits memory.
    cache2 = PlanCache(directory=str(tmp_path / "plans2"))
    p1 = plan_with(cache2)
    p2 = plan_with(cache2)
    assert p1 == p2
    assert (cache2.hits, cache2.misses, cache2.disk_hits) == (1, 1, 0)
    assert len(cache2.files()) == 1


def test_lru_bound_evicts_from_memory_not_disk(tmp_path, plans):
    directory = str(tmp_path / "plans")
    cache = PlanCache(directory=directory, capacity=2)
    for k, p in enumerate(plans):
        cache.put(("key", k), p)
    assert len(cache.files()) == 3
    # The two most recent are in memory.
    assert cache.get(("key", 2)) == plans[2]
    assert cache.get(("key", 1)) == plans[1]
    assert (cache.hits, cache.disk_hits) == (2, 0)
    # The first was evicted from memory but still loads from disk ...
    assert cache.get(("key", 0)) == plans[0]
    assert (cache.hits, cache.disk_hits, cache.misses) == (2, 1, 0)
    # ... and is now in memory again, pushing out the least recently used (key 2).
    assert cache.get(("key", 0)) == plans[0]
    assert cache.get(("key", 2)) == plans[2]
    print(f"hits {cache.hits}, disk hits {cache.disk_hits}, misses {cache.misses}")
    assert (cache.hits, cache.disk_hits) == (3, 2)

    memory_only = PlanCache(directory=None, capacity=2)
    for k, p in enumerate(plans):
        memory_only.put(("key", k), p)
    assert memory_only.get(("key", 0)) is None
    assert memory_only.get(("key", 2)) == plans[2]


# -- persistence ---------------------------------------------------------------------------------


def test_persistence_across_processes(cache_dir):
    start = time.perf_counter()
    out = finish(
        run_python(
            f"""
        import contractssm
        p = contractssm.plan({MODE!r}, {SIZES!r})
        print(p.strategy.describe())
        """,
            cache_dir,
        )
    )
    child_s = time.perf_counter() - start
    cache = PlanCache()
    assert cache.directory == str(cache_dir / "plans")
    assert len(cache.files()) == 1
    p = plan_with(cache)
    print(
        f"child process planned in {child_s:.2f} s ({out.strip()}); here: hits {cache.hits}, "
        f"disk hits {cache.disk_hits}, misses {cache.misses}"
    )
    assert (cache.disk_hits, cache.misses) == (1, 0)
    assert p == plan_with(PlanCache(directory=None))
    assert p.strategy.describe() == out.strip()


# -- bad files -----------------------------------------------------------------------------------


def _corrupt(path: str, how: str) -> None:
    with open(path, "rb") as fh:
        raw = fh.read()
    if how == "garbage":
        raw = bytes(range(256)) * 4
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        data = json.loads(raw)
        if how == "foreign version":
            data["plan"]["version"] = "0.0.0-foreign"
        elif how == "key mismatch":
            data["key"] = repr(("some", "other", "key"))
        elif how == "not a plan":
            data["plan"] = {"format": "contractssm-plan"}
        raw = json.dumps(data).encode()
    with open(path, "wb") as fh:
        fh.write(raw)


@pytest.mark.parametrize(
    "how", ["garbage", "truncated", "foreign version", "key mismatch", "not a plan"]
)
def test_bad_file_is_ignored_once_and_rewritten(how):
    good = plan_with(PlanCache())
    (path,) = PlanCache().files()
    _corrupt(path, how)

    cache = PlanCache()
    with pytest.warns(RuntimeWarning) as record:
        again = plan_with(cache)
    found = runtime_warnings(record)
    print(f"{how}: {[str(w.message) for w in found]}")
    assert len(found) == 1
    assert path in str(found[0].message)
    assert (cache.disk_hits, cache.misses) == (0, 1)
    assert again == good
    # A second request in the same process hits memory: no further warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan_with(cache) == good

    # The file was rewritten with a valid plan: a fresh cache loads it without a warning.
    fresh = PlanCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = plan_with(fresh)
    assert (fresh.disk_hits, fresh.misses) == (1, 0)
    assert loaded == good
    with open(path) as fh:
        assert Plan.from_dict(json.load(fh)["plan"]) == good


def test_same_bad_file_warns_once_per_cache(tmp_path):
    cache = PlanCache(directory=str(tmp_path / "plans"))
    path = cache.path_for(("k",))
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as fh:
        fh.write(b"\x00\xff garbage")
    with pytest.warns(RuntimeWarning) as record:
        assert cache.get(("k",)) is None
        assert cache.get(("k",)) is None
    assert len(runtime_warnings(record)) == 1


# -- concurrency ---------------------------------------------------------------------------------


WRITER = """
import os, sys, time, warnings
import contractssm
from contractssm.planner.cache import PlanCache

warnings.simplefilter("error")
directory, tag = sys.argv[1], sys.argv[2]
p = contractssm.plan({mode!r}, {sizes!r}, cache=PlanCache(directory=None))
cache = PlanCache(directory=directory)
open(os.path.join(directory, "..", "ready-" + tag), "w").close()
deadline = time.time() + 60
while not os.path.exists(os.path.join(directory, "..", "go")) and time.time() < deadline:
    time.sleep(0.002)
bad = 0
for _ in range(20):
    cache.put(("race", 1), p)
    # Readers never see a half-written file (atomic rename).
    if PlanCache(directory=directory).get(("race", 1)) != p:
        bad += 1
print(bad)
"""


def test_two_processes_writing_the_same_key(tmp_path):
    directory = tmp_path / "shared" / "plans"
    directory.mkdir(parents=True)
    code = WRITER.format(mode=MODE, sizes=SIZES)
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(directory), tag],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    deadline = time.time() + 60
    while not all((tmp_path / "shared" / f"ready-{t}").exists() for t in "ab"):
        assert time.time() < deadline, "writers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    start = time.perf_counter()
    (tmp_path / "shared" / "go").touch()
    outs = [finish(p) for p in procs]
    print(
        f"two writers x 20 puts in {time.perf_counter() - start:.2f} s; "
        f"torn reads: {[o.strip() for o in outs]}"
    )
    assert [o.strip() for o in outs] == ["0", "0"]
    names = os.listdir(directory)
    assert len(names) == 1 and names[0].endswith(".json"), names  # no temporary files left
    cache = PlanCache(directory=str(directory))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = cache.get(("race", 1))
    assert p == plan_with(PlanCache(directory=None))
    assert cache.disk_hits == 1


# -- disk off, unwritable ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["off", "OFF", "0", "no"])
def test_cache_off_writes_nothing(cache_dir, monkeypatch, value):
    monkeypatch.setenv("CONTRACTSSM_CACHE", value)
    cache = PlanCache()
    assert cache.directory is None
    p = plan_with(cache)
    assert plan_with(cache) == p
    assert cache.hits == 1
    assert cache.files() == []
    assert not cache_dir.exists() or not any(cache_dir.rglob("*"))


def test_unwritable_directory_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a directory")
    cache = PlanCache(directory=str(blocker / "sub"))
    with pytest.warns(RuntimeWarning) as record:
        p = plan_with(cache)
    found = runtime_warnings(record)
    print([str(w.message) for w in found])
    assert len(found) == 1
    assert "sub" in str(found[0].message)
    assert cache.directory is None
    assert p == plan_with(PlanCache(directory=None))
    # Planning keeps working, from memory, without further warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan_with(cache) == p
        other = plan_with(cache, {**SIZES, "l": 40})
    assert other.length == 40
    assert cache.hits == 1
    assert blocker.read_text() == "a regular file, not a directory"


# -- nothing read from disk is executed -----------------------------------------------------------


PAYLOAD = "__import__('os').system('touch PWNED')"


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        ("declaration", PAYLOAD, True),
        ("declaration", f"y[b,c,l] = W0[c,n] * ssm A[c,n;l] * signal x[b,c,l] # {PAYLOAD}", True),
        # dtype is written into generated source (``x.to(torch.<dtype>)``): it must be validated.
        ("dtype", f"float32 if {PAYLOAD} else torch.float32", True),
        ("device", PAYLOAD, False),  # only a label: accepting it is harmless, running it is not
    ],
)
def test_nothing_read_from_disk_is_executed(tmp_path, monkeypatch, field, value, refused):
    monkeypatch.chdir(tmp_path)
    good = plan_with(PlanCache())
    (path,) = PlanCache().files()
    with open(path) as fh:
        data = json.load(fh)
    data["plan"][field] = value
    with open(path, "w") as fh:
        json.dump(data, fh)

    # Direct load of a crafted file through cache.get.
    key = ("crafted", 1)
    crafted = PlanCache(directory=str(tmp_path / "crafted"))
    os.makedirs(crafted.directory)
    with open(crafted.path_for(key), "w") as fh:
        json.dump({"key": repr(key), "plan": data["plan"]}, fh)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            loaded = crafted.get(key)
        except ValueError:
            loaded = None

    # End to end: plan through the tampered file, build the executors and run them.
    graph = get_graph(MODE)
    ops = random_operands(graph, SIZES, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = plan_with(PlanCache())
    try:
        y = executors(p).kernel(*canonical_args(graph, ops))
        ran = f"ran, output {tuple(y.shape)}"
    except Exception as err:  # a malformed plan may fail to build; it must not run the payload
        ran = f"{type(err).__name__}: {err}"
    print(
        f"{field}: loaded={loaded is not None}, warnings={len(runtime_warnings(record))}, "
        f"executor {ran}"
    )
    assert not (tmp_path / "PWNED").exists(), f"{field}={value!r} was executed"
    assert not any(f.name == "PWNED" for f in tmp_path.rglob("*"))
    if refused:
        assert loaded is None, f"a plan file with {field}={value!r} was accepted"
        assert len(runtime_warnings(record)) == 1
        assert p == good  # the tampered file was ignored and replanned


# -- clear ---------------------------------------------------------------------------------------


def test_clear_removes_files(plans, tmp_path):
    cache = PlanCache()
    plan_with(cache)
    for k, p in enumerate(plans):
        cache.put(("extra", k), p)
    files = cache.files()
    assert len(files) == 4
    foreign = os.path.join(cache.directory, "notes.txt")
    with open(foreign, "w") as fh:
        fh.write("not ours")
    assert cache.clear() == 4
    assert cache.files() == []
    assert not any(os.path.exists(f) for f in files)
    assert os.path.exists(foreign)  # only plan files are removed
    misses = cache.misses
    assert cache.get(("extra", 0)) is None  # memory is cleared too
    assert cache.misses == misses + 1
    assert PlanCache(directory=None).clear() == 0
