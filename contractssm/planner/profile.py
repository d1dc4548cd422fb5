"""Machine profiles: the measured rates the cost model turns FLOPs and bytes into seconds.

A :class:`MachineProfile` holds throughput for each kind of work the executors do. The default
profile is the one measured on the reference 2-core CPU (float32): matmul ~140 GFLOP/s, FFT
16 GFLOP/s counting ``2.5 n log2 n`` per real transform (the calibration measures 15-39 there;
the brief's ~6.5 counts differently, and priced at 6.5 the planner over-chose chunked plans:
worst regret 2.04 against 1.47 at 16 when the recorded grid was re-planned), elementwise
complex work at a few GB/s, and first touches of memory the allocator maps fresh from the
operating system at ~2 GB/s (see :attr:`MachineProfile.fresh_memory_gbps`). :func:`calibrate`
measures the current device in a few seconds; profiles are stored as JSON per device under the
cache directory.

Example:
    >>> p = default_profile("cpu")
    >>> p.matmul_gflops["real"]["large"] > p.fft_gflops
    True
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field

#: Allocations of at least this many bytes are mapped fresh from the OS on every call (glibc's
#: largest mmap threshold, ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit), so their first touch
#: page-faults; smaller ones are reused from the heap.
FRESH_MEMORY_BYTES = 32 * 2**20

#: The largest temporary the runtime keeps in reused scratch memory
#: (:func:`contractssm.codegen.memory.scratch`): an FFT convolution's zero-padded input and its
#: elementwise spectral product up to this size never page-fault.
SCRATCH_MAX_BYTES = 64 * 2**20

#: A step moving at most this many bytes (inputs read plus output written) works in the caches:
#: its memory time is priced at ``cache_gbps``, a larger one's at ``elementwise_gbps``.
CACHE_BYTES = 1 << 20

#: Size classes of a contraction, by its smallest matmul dimension.
SIZE_CLASSES = ("small", "medium", "large")


def size_class(min_dim: int) -> str:
    """The size class of a contraction whose smallest matmul dimension is ``min_dim``."""
    if min_dim < 8:
        return "small"
    if min_dim < 64:
        return "medium"
    return "large"


@dataclass(frozen=True)
class MachineProfile:
    """Measured throughputs of one device.

    Attributes:
        name: a label (device kind and name), part of every plan-cache key.
        matmul_gflops: GFLOP/s of contractions, ``[real|complex][small|medium|large]``.
        fft_gflops: GFLOP/s of FFTs, counting ``2.5 n log2 n`` flops per real transform.
        elementwise_gbps: GB/s of memory-bound elementwise work (reads plus writes) on
            tensors larger than the caches.
        cache_gbps: the same for a step whose traffic fits in :data:`CACHE_BYTES` (never
            taken below ``elementwise_gbps``: a device whose small ops are launch-bound, like a
            GPU, has that cost in ``launch_us``). Priced at
            ``elementwise_gbps``, small steps were overpriced ~20x: a stream's chunk of
            ``s5`` at batch 1 (256 channels, 64 states), the spectral product over 64 x 257
            complex predicted 205 us against ~10 us measured, which rated its FFT program
            (measured 15-20% faster per chunk) equal to the chunked one.
        transcendental_gelems: billions of complex ``exp`` evaluations per second.
        launch_us: fixed overhead per operation in microseconds.
        fresh_memory_gbps: GB/s at which a tensor of at least :data:`FRESH_MEMORY_BYTES` is
            first written. glibc serves such allocations by ``mmap`` every time (its mmap
            threshold never rises past 32 MiB) and returns them on free, so each one page-faults
            afresh: measured 0.48 ms per MiB here, a cliff at 32 MiB (a 33 MiB fill took 18.5
            ms fresh against 2.2 ms reused; 31 MiB: no difference). Large by default on CUDA
            (its caching allocator reuses blocks), and measured large on a CPU process run with
            ``MALLOC_MMAP_MAX_=0``.
        calibrated: whether the numbers were measured here (False: defaults).
    """

    name: str
    matmul_gflops: dict = field(hash=False)
    fft_gflops: float = 16.0
    elementwise_gbps: float = 4.0
    cache_gbps: float = 40.0
    transcendental_gelems: float = 0.15
    launch_us: float = 8.0
    fresh_memory_gbps: float = 2.0
    calibrated: bool = False

    @property
    def device_kind(self) -> str:
        """The device type the profile was measured on (``cpu``, ``cuda``, ...), from its name.

        Names are ``cpu-default``, ``cuda-default`` or, when calibrated, ``cpu:...``/``cuda:...``
        (see :func:`contractssm.planner.calibrate.profile_name`).
        """
        return self.name.split(":")[0].removesuffix("-default")

    @functools.cached_property
    def key(self) -> tuple:
        """A hashable summary of the profile, for cache keys."""
        mm = tuple(
            (kind, cls, round(self.matmul_gflops[kind][cls], 1))
            for kind in ("real", "complex")
            for cls in SIZE_CLASSES
        )
        return (
            self.name,
            mm,
            round(self.fft_gflops, 2),
            round(self.elementwise_gbps, 2),
            round(self.cache_gbps, 2),
            round(self.transcendental_gelems, 3),
            round(self.launch_us, 1),
            round(self.fresh_memory_gbps, 2),
        )

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MachineProfile:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on malformed data."""
        try:
            mm = {
                k: {c: float(data["matmul_gflops"][k][c]) for c in SIZE_CLASSES}
                for k in ("real", "complex")
            }
            return cls(
                name=str(data["name"]),
                matmul_gflops=mm,
                fft_gflops=float(data["fft_gflops"]),
                elementwise_gbps=float(data["elementwise_gbps"]),
                # Profiles stored before a field existed: the built-in default.
                cache_gbps=float(data.get("cache_gbps", cls.cache_gbps)),
                transcendental_gelems=float(data["transcendental_gelems"]),
                launch_us=float(data["launch_us"]),
                fresh_memory_gbps=float(data.get("fresh_memory_gbps", cls.fresh_memory_gbps)),
                calibrated=bool(data.get("calibrated", False)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed machine profile: {err}") from None


def default_profile(device_kind: str = "cpu") -> MachineProfile:
    """The built-in profile for a device kind, used until :func:`calibrate` has run."""
    if device_kind == "cuda":
        return MachineProfile(
            name="cuda-default",
            matmul_gflops={
                "real": {"small": 500.0, "medium": 5000.0, "large": 30000.0},
                "complex": {"small": 400.0, "medium": 4000.0, "large": 20000.0},
            },
            fft_gflops=2000.0,
            elementwise_gbps=1500.0,
            transcendental_gelems=100.0,
            launch_us=6.0,
            fresh_memory_gbps=1e6,
        )
    return MachineProfile(
        name=f"{device_kind}-default",
        matmul_gflops={
            "real": {"small": 8.0, "medium": 60.0, "large": 140.0},
            "complex": {"small": 4.0, "medium": 25.0, "large": 60.0},
        },
        # 4 GB/s until session 17. Replayed against both recorded grids (benchmarks.replay
        # docs/bench-session16.json docs/bench-session17a.json --scale elementwise_gbps=2),
        # 8 moved three picks, each 0.87-0.97x as fast in both runs but one (s5 at batch 1,
        # 256 channels: 1.06x and 0.95x); worst regret 1.409 -> 1.229 and 1.274 -> 1.274.
        # This machine measures 34-40 (contractssm calibrate); the full calibrated profile
        # replayed worse on one cell (dws (8, 64, 4096): 1.84x in session 16's run).
        elementwise_gbps=8.0,
    )


def profile_path(cache_dir: str, device_name: str) -> str:
    """Where the profile of ``device_name`` is stored under ``cache_dir``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device_name)
    return os.path.join(cache_dir, f"profile-{safe}.json")


def save_profile(profile: MachineProfile, path: str) -> None:
    """Write a profile atomically (temp file, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(profile.to_dict(), fh, indent=1)
    os.replace(tmp, path)


def load_profile(path: str) -> MachineProfile | None:
    """Read a stored profile; ``None`` if it is absent or unreadable."""
    try:
        with open(path) as fh:
            return MachineProfile.from_dict(json.load(fh))
    except (OSError, ValueError):
        return None
