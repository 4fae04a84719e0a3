"""The process's memory allocator: keep freed blocks for reuse instead of unmapping them.

On Linux with glibc, every block larger than ``M_MMAP_THRESHOLD`` (128 KiB at first, at
most 32 MiB as glibc adapts it) gets fresh pages from the kernel, and those pages are
unmapped again when the block is freed. A long-form pass allocates tens of MB per
operation (a layer's feed-forward block, a scan's decay matrices), so it spends a large
part of its time in page faults, zeroing pages it overwrites right away: measured on a
2-core EPYC, a chunked scan of 8,192 frames took 18,000-57,000 page faults per call and
about 2.6x its fault-free time.

:func:`tune_allocator` raises glibc's mmap and trim thresholds with ``mallopt`` so that
freed blocks stay in the heap and are reused. The resident set then stays near its
high-water mark instead of shrinking between operations; the high-water mark itself
moves little (the benchmarks record it). It changes nothing else: no numerical result
depends on it.

Who calls it: the console scripts that run inference (``cald-transcribe``, ``cald-bench``
and its per-configuration processes); training (the recipes) leaves the allocator as it
is. A library user calls it once at start-up, or not at all. ``CALD_MALLOC=default`` in
the environment leaves the allocator alone (the console scripts then change nothing);
glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables, when set,
win too.

Example
-------
>>> state = tune_allocator()
>>> state["mode"] in ("tuned", "default", "unsupported")
True
>>> tune_allocator() == state  # once per process; later calls report what was done
True
"""

import ctypes
import ctypes.util
import os
import platform

__all__ = ["ALLOCATOR_ENV", "MMAP_THRESHOLD_MB", "TRIM_THRESHOLD_MB", "tune_allocator"]

#: Environment variable: ``default`` leaves the allocator as glibc configures it.
ALLOCATOR_ENV = "CALD_MALLOC"
#: Blocks up to this size come from the heap (and are reused) instead of fresh pages.
MMAP_THRESHOLD_MB = 64
#: Free memory at the top of the heap kept for reuse instead of being returned.
TRIM_THRESHOLD_MB = 256

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_STATE = {"mode": None}


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_allocator(mmap_threshold_mb=MMAP_THRESHOLD_MB, trim_threshold_mb=TRIM_THRESHOLD_MB):
    """Raises glibc's mmap and trim thresholds for this process (once; later calls report).

    Arguments
    ---------
    mmap_threshold_mb : int
        Blocks up to this many MiB are served from (and returned to) the heap.
    trim_threshold_mb : int
        Free MiB at the top of the heap that are kept rather than returned to the system.

    Returns
    -------
    dict
        ``mode``: ``"tuned"``, ``"default"`` (``CALD_MALLOC=default``, or glibc's own
        variables set) or ``"unsupported"`` (not glibc); the thresholds when tuned.

    Example
    -------
    >>> tune_allocator()["mode"] in ("tuned", "default", "unsupported")
    True
    """
    if _STATE["mode"] is not None:
        return dict(_STATE)
    choice = os.environ.get(ALLOCATOR_ENV, "tuned").strip().lower()
    if choice not in ("tuned", "default"):
        from cald_speech.errors import ConfigError

        raise ConfigError(f"{ALLOCATOR_ENV}={choice!r} is not a choice (fix: set "
                          f"{ALLOCATOR_ENV} to 'tuned' or 'default')")
    libc = _libc()
    if libc is None:
        _STATE.update(mode="unsupported")
    elif choice == "default" or any(v in os.environ for v in _GLIBC_ENV):
        _STATE.update(mode="default")
    else:
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold_mb << 20))
              and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold_mb << 20)))
        if ok:
            _STATE.update(mode="tuned", mmap_threshold_mb=mmap_threshold_mb,
                          trim_threshold_mb=trim_threshold_mb)
        else:
            _STATE.update(mode="default")
    return dict(_STATE)

