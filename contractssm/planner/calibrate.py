"""Calibration: measure the rates of a :class:`MachineProfile` on the current device.

The cost model (:func:`~contractssm.planner.steps.step_seconds`) never times anything itself:
it counts the FLOPs, bytes and transcendental evaluations of each step and divides them by the
rates of a profile. A plan is only as good as those rates, so :func:`calibrate` measures them
on the device and dtype the plans will run on, with workloads shaped like the executors':

* ``matmul_gflops``: batched ``einsum`` contractions ``(F, M, K) x (F, K, N)`` (one product per
  frequency bin, say) whose smallest dimension falls in each size class of
  :func:`~contractssm.planner.profile.size_class`, real and complex, counting flops like
  :func:`~contractssm.planner.steps.einsum_cost` (real multiply-add 2, complex 8).
* ``fft_gflops``: ``rfft`` then ``irfft`` over the last axis at lengths 2048 to 8192 over a
  batch of channels, counting ``2.5 n log2 n`` flops per real transform.
* ``elementwise_gbps``: a complex multiply-add ``c + a * b`` of tensors larger than the caches,
  counting the bytes read and written.
* ``cache_gbps``: the same multiply-add on tensors whose traffic fits in
  :data:`~contractssm.planner.profile.CACHE_BYTES`, repeated in place.
* ``transcendental_gelems``: complex exponentials (``runtime.cexp``) of a large tensor.
* ``launch_us``: the fixed cost of one tiny op, Python dispatch included.
* ``fresh_memory_gbps``: a fill of a new tensor of twice
  :data:`~contractssm.planner.profile.FRESH_MEMORY_BYTES` against the same fill of a reused one;
  the difference is the first-touch cost of memory mapped fresh from the OS (CPU only: CUDA's
  caching allocator reuses its blocks).

Every timing is the fastest of several repeats after a warm-up, with the problem grown until one
call is long enough to time and capped so that the whole run stays within ``budget_s``.
:func:`profile_for` returns the stored profile of a device, calibrating on request.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable

import torch

from contractssm.planner.cachedir import cache_dir
from contractssm.planner.profile import (
    CACHE_BYTES,
    FRESH_MEMORY_BYTES,
    SIZE_CLASSES,
    MachineProfile,
    default_profile,
    load_profile,
    profile_path,
    save_profile,
)

#: ``(M, K, N)`` of one matmul per size class: smallest dimension 4, 32 and 128.
MATMUL_SHAPES = {"small": (4, 128, 128), "medium": (32, 128, 128), "large": (128, 128, 256)}
#: Transform lengths of the FFT measurement.
FFT_LENGTHS = (2048, 4096, 8192)
#: Share of the budget per measurement (six matmuls, three FFT lengths, the rest once each).
_SHARE = {
    "matmul": 0.09,
    "fft": 0.053,
    "elementwise": 0.1,
    "cache": 0.04,
    "exp": 0.11,
    "launch": 0.04,
}


def profile_name(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The profile name of a device and dtype, e.g. ``cpu:x86_64:2t:float32``."""
    dev = torch.device(device)
    kind = str(dtype).removeprefix("torch.")
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}:{kind}"
    if dev.type == "cpu":
        cpu = platform.processor() or platform.machine() or "unknown"
        return f"cpu:{cpu}:{torch.get_num_threads()}t:{kind}"
    return f"{dev.type}:{kind}"


def _ramp(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Cheap deterministic values in [-1, 1] (random generation costs seconds on a CPU)."""
    x = torch.linspace(-1.0, 1.0, numel, device=device)
    return (torch.complex(x, x.flip(0)) if dtype.is_complex else x).to(dtype)


class _Bench:
    """Timing on one device: ``cap`` elements bound the largest operand."""

    def __init__(self, device: torch.device, budget_s: float) -> None:
        self.dev, self.budget_s = device, budget_s
        self.cap = 2**25 if device.type == "cuda" else 2**22

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def time(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def rate(
        self,
        make: Callable[[int], Callable[[], object]],
        work: Callable[[int], float],
        sizes: list[int],
        measure: str,
    ) -> float:
        """Work per second of ``make(size)``, timed in the budget's share for ``measure``.

        The size is the first whose call takes a twelfth of the slice (else the last); the time
        is the fastest of 3 to 15 repeats after a warm-up (scheduler stalls only ever add
        time, so the minimum is the stable statistic on shared machines).
        """
        slice_s = _SHARE[measure] * self.budget_s
        end = time.perf_counter() + slice_s
        for size in sizes:
            fn = make(size)
            self.time(fn)  # warm-up
            elapsed = self.time(fn)
            if elapsed >= slice_s / 12 or time.perf_counter() + 8 * elapsed > end:
                break
        times = [elapsed]
        while len(times) < 3 or (len(times) < 15 and time.perf_counter() + elapsed < end):
            times.append(self.time(fn))
        return work(size) / max(min(times), 1e-9)

    def batches(self, per: int) -> list[int]:
        """Growing batch counts of items of ``per`` elements, up to the cap."""
        return [max(1, (self.cap // per) >> k) for k in range(6, -1, -1)]

    def matmul(self, dtype: torch.dtype, m: int, k: int, n: int) -> float:
        """GFLOP/s of ``einsum('fmk,fkn->fmn')`` (multiply-add: 2 flops, complex 8)."""
        sizes = self.batches(max(m * k, k * n))
        a = _ramp(sizes[-1] * m * k, dtype, self.dev).reshape(-1, m, k)
        b = _ramp(sizes[-1] * k * n, dtype, self.dev).reshape(-1, k, n)
        flops = m * k * n * (8 if dtype.is_complex else 2)
        mm = lambda f: lambda: torch.einsum("fmk,fkn->fmn", a[:f], b[:f])  # noqa: E731
        return 1e-9 * self.rate(mm, lambda f: f * flops, sizes, "matmul")

    def fft(self, dtype: torch.dtype) -> float:
        """GFLOP/s of ``rfft`` then ``irfft`` (``2.5 n log2 n`` each), equal work per length."""
        x, seconds, total = _ramp(self.cap, dtype, self.dev), 0.0, 0.0
        for n in FFT_LENGTHS:
            flops = 2 * 2.5 * n * math.log2(n)  # per channel
            rate = self.rate(
                lambda c, n=n: lambda: torch.fft.irfft(torch.fft.rfft(x[: c * n].view(c, n)), n),
                lambda c, f=flops: c * f,
                self.batches(n),
                "fft",
            )
            total += flops * (self.cap // n)
            seconds += flops * (self.cap // n) / rate
        return 1e-9 * total / seconds

    def memory(self, dtype: torch.dtype) -> tuple[float, float, float]:
        """GB/s of ``c + a * b`` (4 tensors moved), past the caches and within them; exp/s.

        Returns ``(elementwise GB/s, cache GB/s, billions of exp per second)``.
        """
        a, b, c, out = (_ramp(self.cap, dtype, self.dev) for _ in range(4))
        item = a.element_size()
        add = lambda e: lambda: torch.addcmul(c[:e], a[:e], b[:e], out=out[:e])  # noqa: E731
        # A quarter of the cap is already past the caches.
        gbps = self.rate(
            add, lambda e: 4 * e * item, [self.cap >> k for k in (2, 1, 0)], "elementwise"
        )
        # Within the caches: half of CACHE_BYTES moved per call, calls repeated to be timeable.
        e = max(1, min(self.cap, CACHE_BYTES // (8 * item)))

        def in_cache(repeats: int):
            ins = (c[:e], a[:e], b[:e])
            return lambda: [torch.addcmul(*ins, out=out[:e]) for _ in range(repeats)]

        cache = self.rate(in_cache, lambda r: 4 * e * item * r, [1, 8, 64, 256], "cache")
        z = torch.complex(-2.0 - 2.0 * a.real, 50.0 * a.imag)  # decays and phases, like exp(A t)
        from contractssm.codegen.runtime import cexp  # as the executors compute it

        exp = lambda e: lambda: cexp(z[:e])  # noqa: E731
        return 1e-9 * gbps, 1e-9 * cache, 1e-9 * self.rate(exp, float, self.batches(1), "exp")

    def fresh_memory_gbps(self, repeats: int = 5) -> float:
        """GB/s of first writes to memory mapped fresh (large: no such cost measured)."""
        if self.dev.type != "cpu":
            return 1e6
        numel = 2 * FRESH_MEMORY_BYTES // 4
        reused = torch.empty(numel)
        fresh = min(self.time(lambda: torch.empty(numel).fill_(1.0)) for _ in range(repeats))
        warm = min(self.time(lambda: reused.fill_(1.0)) for _ in range(repeats))
        extra = fresh - warm
        # Below a tenth of the warm fill the difference is timing noise: no fault cost.
        return 1e6 if extra <= 0.1 * warm else 1e-9 * numel * 4 / extra

    def launch_us(self, loop: int = 200) -> float:
        """Microseconds per tiny op, Python dispatch included."""
        x, out = torch.ones(1, device=self.dev), torch.empty(1, device=self.dev)
        ops = lambda _: lambda: [torch.add(x, 1.0, out=out) for _ in range(loop)]  # noqa: E731
        return 1e6 / self.rate(ops, lambda _: float(loop), [loop], "launch")


def calibrate(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, budget_s: float = 12.0
) -> MachineProfile:
    """Measure the rates of the cost model on ``device`` in about ``budget_s`` seconds.

    Args:
        device: the device to measure.
        dtype: the real dtype plans will use; complex work uses its complex counterpart
            (``complex128`` for ``float64``, else ``complex64``; transforms and elementwise work
            run in ``float32``/``complex64`` unless ``dtype`` is ``float64``).
        budget_s: the time to spend; problem sizes and repeats shrink to fit it.

    Returns:
        A profile named by :func:`profile_name`, with ``calibrated=True``.
    """
    dev = torch.device(device)
    bench = _Bench(dev, budget_s)
    real = torch.float64 if dtype == torch.float64 else torch.float32
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    matmul = {
        kind: {cls: bench.matmul(dt, *MATMUL_SHAPES[cls]) for cls in SIZE_CLASSES}
        for kind, dt in (("real", dtype), ("complex", cplx))
    }
    fft = bench.fft(real)
    gbps, cache_gbps, gelems = bench.memory(cplx)
    return MachineProfile(
        name=profile_name(dev, dtype),
        matmul_gflops=matmul,
        fft_gflops=fft,
        elementwise_gbps=gbps,
        cache_gbps=cache_gbps,
        transcendental_gelems=gelems,
        launch_us=bench.launch_us(),
        fresh_memory_gbps=bench.fresh_memory_gbps(),
        calibrated=True,
    )


def default_cache_dir() -> str | None:
    """The package's cache directory (``None`` when the disk cache is off)."""
    return cache_dir()


def profile_for(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    cache_dir: str | None = None,
    calibrate_if_missing: bool = False,
) -> MachineProfile:
    """The profile to plan with on ``device``.

    Args:
        device: the device plans will run on.
        dtype: the real dtype plans will use.
        cache_dir: where profiles are stored; ``None``: :func:`default_cache_dir`.
        calibrate_if_missing: calibrate (and store, when there is a cache directory) if no
            profile is stored for this device.

    Returns:
        The stored profile, else a fresh calibration if asked, else the default profile of the
        device kind (``cpu`` or ``cuda``).
    """
    dev = torch.device(device)
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    path = profile_path(directory, profile_name(dev, dtype)) if directory else None
    stored = load_profile(path) if path else None
    if stored is not None:
        return stored
    if calibrate_if_missing:
        profile = calibrate(dev, dtype)
        if path:
            save_profile(profile, path)
        return profile
    return default_profile("cuda" if dev.type == "cuda" else "cpu")
