"""CPU buffer memory: huge-page tables and reused scratch, first touches that cost less.

**Huge pages.**
glibc maps every allocation of 32 MiB or more fresh from the operating system and returns it
on free (:data:`~contractssm.planner.profile.FRESH_MEMORY_BYTES`), so each first write of
such a tensor page-faults one 4 KiB page at a time: 41.7 ms for a 128 MiB fill on the
reference 2-core CPU, against ~5 ms for the arithmetic. Linux backs memory with 2 MiB pages
where it is advised to (``madvise(MADV_HUGEPAGE)``; transparent huge pages in their default
``madvise`` mode): the same fill then took 6.8 ms. PyTorch can do this for every allocation
(``THP_MEM_ALLOC_ENABLE=1``, read once when the process starts); the runtime advises the
buffers it allocates itself and then writes with ``out=``: a prepared stream's tables of
powers (``full`` at 64 x 64 x 16 states, two 128 MiB tables: prepare 137 -> 60 ms,
stream/kernel at (8, 64, 1024) 0.38 -> 0.50). Kernel mode's buffers are left alone: advised
there (its factorised powers and FFT outputs), ``full`` (8, 64, 1024) forward+backward
measured 1.5x slower beside baseline A's allocations (huge pages are compacted
synchronously on fault under the ``madvise`` defrag mode when memory is fragmented), and
advising heap buffers of 16 MiB (``full`` (32, 32, 2048)) gained nothing.

**Scratch.** Heap buffers are reused without faults only while glibc keeps them: it returns
the top of its heap to the system once more than twice its (grown) mmap threshold is free
there, so the 16 MiB spectra of ``full`` (32, 32, 2048) page-faulted afresh on most calls
(~16k faults, ~60 MiB, per forward+backward). :func:`scratch` keeps one buffer per named slot
and thread for a temporary that dies inside one runtime call: in ``FFTConv``, each
zero-padded FFT input, the frequency-major gradient spectrum that both backward products
read, each product (transposed back, or elementwise) that the inverse FFT reads at once,
and a channel-summing product's ``bmm`` result, which that transpose reads at once
(``full`` (32, 32, 2048) FFTConv forward+backward 80.7 -> 58.5 and 80.9 -> 71.6 ms, 21
interleaved rounds in two processes; every other FFT plan of the grid has an elementwise
product).
Against the FFTConv of 8214c53 (same programs, 11 interleaved rounds): ``full`` (32, 32,
2048) forward+backward 72.8 -> 64.3 ms, (8, 64, 1024) 192 -> 150 ms; ``dws`` (8, 64, 1024)
15.7 -> 12.1 ms, (8, 64, 4096) 51.4 -> 37.7 ms; ``s4d`` (32, 2048) 141 -> 103 ms; cells of
a few milliseconds unchanged within noise. FFT outputs are not written into scratch:
``torch.fft.rfft(..., out=)`` computes into a fresh tensor and copies (0.9 ms more per
(1024, 2049) spectrum). Kept buffers are bounded by :data:`SCRATCH_MAX_BYTES` each (larger
temporaries, as in ``full`` (8, 64, 4096), are allocated as before); :func:`release_scratch`
frees them.

**Kept buffers.** A value saved for the backward, or a prepared stream's constant, outlives
the call, so it cannot be scratch; allocated fresh, it page-faults like any heap tensor glibc
has returned. :func:`kept` hands out a buffer from a per-thread list and hands it out again
only once no tensor shares its storage (the backward has freed its saved tensors, the graph
was dropped, the stream's constants were released): a buffer still held is never reused, so
nothing can be overwritten while it is read. ``FFTConv`` keeps its two frequency-major input
spectra there, and :func:`empty` (the tables of powers a stream prepares) draws from it.
Measured on ``full`` (32, 32, 2048): minor page faults per forward+backward 4064-12262 -> 0
with baseline A's calls interleaved (7 rounds; the freed spectra had kept glibc's heap
churning, so the FFTs' own outputs page-faulted too), 92.8 -> 76.3 ms alternating both in
one process; a forward without autograd 44 -> 33 ms; the stream's prepare 5448 faults -> 0.
The lists hold at most :data:`KEPT_MAX_BYTES` per thread (what a training step saves at its
peak, up to that bound); :func:`release_scratch` frees them with the scratch buffers.

Nothing here is traced by ``torch.compile`` (the advice is skipped and scratch is freshly
allocated while compiling) and a platform without ``madvise`` gets plain tensors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import sys
import threading

import torch

# The largest buffer scratch() keeps between calls (the cost model prices what it covers); a
# larger temporary is allocated each time: it bounds what an idle thread holds.
from contractssm.planner.profile import FRESH_MEMORY_BYTES, SCRATCH_MAX_BYTES

#: The huge page size of x86-64 and arm64 Linux.
HUGE_PAGE_BYTES = 2 * 2**20
#: ``MADV_HUGEPAGE`` from ``<sys/mman.h>`` on Linux.
MADV_HUGEPAGE = 14

#: The most bytes of :func:`kept` buffers one thread holds; past it saved values are fresh.
KEPT_MAX_BYTES = 4 * SCRATCH_MAX_BYTES
#: :func:`empty` keeps buffers from this size (glibc's initial mmap threshold, 128 KiB).
KEPT_MIN_BYTES = 128 * 2**10

_pools = threading.local()


def empty(shape, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialised tensor the runtime writes with ``out=``: a :func:`kept` buffer.

    Where none is kept (above :data:`SCRATCH_MAX_BYTES`, say), a fresh tensor, advised as
    huge-page memory when large and on a Linux CPU.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    # Below glibc's initial mmap threshold an allocation comes from the heap, fault-free.
    if nbytes < KEPT_MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    out = kept("empty", shape, dtype, device)
    if out.device.type == "cpu" and nbytes >= FRESH_MEMORY_BYTES:
        advise_huge_pages(out)
    return out


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Advise the whole huge pages inside ``t``'s memory as huge-page backed.

    Best before the first write (pages already touched stay small until the kernel's
    background merging). Returns whether the advice was given.
    """
    madvise = _madvise()
    if madvise is None or torch.compiler.is_compiling():
        return False
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    last = end // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    return last > first and madvise(first, last - first, MADV_HUGEPAGE) == 0


@functools.cache
def _madvise():
    """The C library's ``madvise`` (``None`` off Linux or where it cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def scratch(slot: str, shape, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory is reused by the next request for ``slot``.

    For a temporary that dies inside the runtime call asking for it: the next :func:`scratch`
    of the same ``slot`` in this thread overwrites it, so it must not be returned, saved for
    the backward or read after that. Off the CPU (the CUDA allocator caches already), while
    compiling, and above :data:`SCRATCH_MAX_BYTES`, a fresh ``torch.empty``.
    """
    numel = math.prod(shape)
    device = torch.device(device)
    if (
        device.type != "cpu"
        or numel * dtype.itemsize > SCRATCH_MAX_BYTES
        or torch.compiler.is_compiling()
    ):
        return torch.empty(shape, dtype=dtype, device=device)
    pool = _pool()
    buf = pool.get((slot, dtype))
    if buf is None or buf.numel() < numel:
        # A normal tensor even under inference mode, so later training calls may write it.
        with torch.inference_mode(False):
            buf = torch.empty(numel, dtype=dtype)
        pool[(slot, dtype)] = buf
    return buf[:numel].view(shape)


def kept(slot: str, shape, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialised CPU tensor for a value saved for the backward, its memory reused.

    The buffer comes from this thread's list for ``slot`` and is handed out again only once
    no tensor shares its storage any more, so the result may be saved, returned or read
    after later calls. Off the CPU, while compiling, above :data:`SCRATCH_MAX_BYTES`, past
    :data:`KEPT_MAX_BYTES` of kept buffers, or where PyTorch cannot count a storage's users,
    a fresh ``torch.empty``.
    """
    numel = math.prod(shape)
    device = torch.device(device)
    nbytes = numel * dtype.itemsize
    if (
        device.type != "cpu"
        or nbytes > SCRATCH_MAX_BYTES
        or torch.compiler.is_compiling()
        or _storage_users is None
    ):
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = _kept_pool().setdefault((slot, dtype), [])
    free = [i for i, buf in enumerate(buffers) if _storage_users(buf) == 1]
    fits = [i for i in free if buffers[i].numel() >= numel]
    if fits:  # the smallest that fits, leaving larger ones to larger requests
        best = min(fits, key=lambda i: buffers[i].numel())
        return buffers[best][:numel].view(shape)
    if free:  # a free buffer too small for this request: replaced by one that fits
        del buffers[free[0]]
    held = sum(buf.numel() * buf.element_size() for bufs in _kept_pool().values() for buf in bufs)
    if held + nbytes > KEPT_MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    # A normal tensor even under inference mode, so later training calls may write it.
    with torch.inference_mode(False):
        buf = torch.empty(numel, dtype=dtype)
    buffers.append(buf)
    return buf.view(shape)


def _count_storage_users():
    """``tensor -> number of tensors sharing its storage``, or ``None`` without the hook."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return None

    def users(t: torch.Tensor) -> int:
        # The storage object made to ask holds one reference of its own.
        return use_count(t.untyped_storage()._cdata) - 1

    return users


_storage_users = _count_storage_users()


def release_scratch() -> None:
    """Free this thread's :func:`scratch` and :func:`kept` buffers (made again when needed).

    A kept buffer still held by a saved tensor stays alive through that tensor.
    """
    _pool().clear()
    _kept_pool().clear()


def _kept_pool() -> dict[tuple[str, torch.dtype], list[torch.Tensor]]:
    pool = getattr(_pools, "kept", None)
    if pool is None:
        pool = _pools.kept = {}
    return pool


def _pool() -> dict[tuple[str, torch.dtype], torch.Tensor]:
    pool = getattr(_pools, "pool", None)
    if pool is None:
        pool = _pools.pool = {}
    return pool
