"""Memory allocators set for range runs (backfills), which free and allocate large arrays again
and again.

Memory handed back to the OS and taken again costs a page fault and a page zeroed by the kernel
per 4 KB (2 MB with huge pages): in a `perf` profile of the usage baselines of a 10k-account
year, the kernel zeroing fresh pages (`clear_page_erms`) was a third of the busy CPU time, on
this kind of VM. A range run gains from keeping freed memory for reuse:

- glibc's malloc (numpy's arrays): where a range run's steps run, the IO manager's setup makes
  it serve large blocks from its heap instead of a fresh `mmap` each, keeping freed ones
  (`retain_freed_memory`), and hands them back after each output is written
  (`release_freed_memory`), since the next step's frames come mostly from polars' allocator;
- polars' jemalloc: keeping freed pages 5 s instead of polars' 0.5-1 s needs `RANGE_RUN_ENV` in
  the environment of the process (jemalloc reads it once, when polars is imported), so it is
  set where backfills are launched (README, *What bounds a run*).

A daily run gains nothing measurable from either and its peak memory would grow 7-15%, so it
keeps the defaults (figures in benchmarks/optimisation-log.md). Nothing changes when the
operator has set glibc's own variables (`MALLOC_MMAP_MAX_`, ...), nor off glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

RANGE_RUN_ENV = {"_RJEM_MALLOC_CONF": "dirty_decay_ms:5000,muzzy_decay_ms:0"}
GLIBC_ALLOCATOR_ENVS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
GLIBC_TRIM_THRESHOLD = 1 << 30  # free memory kept at the heap's top during a step
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_retaining = False  # set by retain_freed_memory in this process


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc and the operator left its malloc alone."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(name in os.environ for name in GLIBC_ALLOCATOR_ENVS):
        return None
    return ctypes.CDLL(None)


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed large blocks for reuse; True if set (glibc only)."""
    global _retaining
    libc = _glibc()
    if libc is None:
        return False
    _retaining = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
    )
    return _retaining


def release_freed_memory() -> None:
    """Give the freed blocks glibc kept back to the OS (after a step's output is written); a
    process that does not retain them is left alone."""
    libc = _glibc()
    if _retaining and libc is not None:
        libc.malloc_trim(0)
