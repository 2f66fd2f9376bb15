"""Memory allocators set for the pipeline's runs, which free and allocate large arrays again and
again.

Memory handed back to the OS and taken again costs a page fault and a page zeroed by the kernel
per 4 KB (2 MB with huge pages): in a `perf` profile of the usage baselines of a 10k-account
year, the kernel zeroing fresh pages (`clear_page_erms`) was a third of the busy CPU time, on
this kind of VM. A run gains from keeping freed memory for reuse:

- polars' jemalloc keeps freed pages 0.5-1 s by default. Importing this package sets it to 5 s
  (`DAILY_RUN_ENV`, `keep_freed_pages_briefly`), for the process and those it starts, unless the
  operator has set `_RJEM_MALLOC_CONF` or polars is already imported (jemalloc reads the
  variable once, when polars is imported). A 100k day in process: 69-77 -> 61-63 s of steps
  (system time 31-35 -> 19-20 s), peak 3.49-3.51 -> 3.60-3.67 GB (10 s: as fast, peak 4.07 GB,
  over the 4 GB a day may use). Range runs keep freed pages 30 s: `RANGE_RUN_ENV` in the
  environment of whatever launches backfills (README, *What bounds a run*);
- glibc's malloc (numpy's arrays): where a range run's steps run, the IO manager's setup makes
  it serve large blocks from its heap instead of a fresh `mmap` each, keeping freed ones
  (`retain_freed_memory`), and hands them back after each output is written
  (`release_freed_memory`), since the next step's frames come mostly from polars' allocator.
  Daily runs leave glibc alone: its retention did not separate from the noise at 100k.

Figures in benchmarks/optimisation-log.md (thirteenth, seventeenth, twenty-sixth and
twenty-seventh rounds). Nothing changes when the operator has set glibc's own variables
(`MALLOC_MMAP_MAX_`, ...), nor off glibc.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys

DAILY_RUN_ENV = {"_RJEM_MALLOC_CONF": "dirty_decay_ms:5000,muzzy_decay_ms:0"}
POLARS_OWN_CONF = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # as polars 2.1 writes it at import
RANGE_RUN_ENV = {"_RJEM_MALLOC_CONF": "dirty_decay_ms:30000,muzzy_decay_ms:0"}
GLIBC_ALLOCATOR_ENVS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
GLIBC_TRIM_THRESHOLD = 1 << 30  # free memory kept at the heap's top during a step
# mallopt parameters and their defaults, from glibc's malloc.h and malloc.c
_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD = -1, 128 * 1024
_M_MMAP_MAX, _DEFAULT_MMAP_MAX = -4, 65536
_retaining = False  # between retain_freed_memory and restore_allocator, in this process


def keep_freed_pages_briefly() -> bool:
    """Make polars' jemalloc keep freed pages a few seconds (`DAILY_RUN_ENV`) in this process and
    the processes it starts; True if set. Called when the package is imported, before polars is:
    left alone when the operator set the variable (a backfill's `RANGE_RUN_ENV`) or when polars
    was imported first (too late for this process). polars writes its own defaults into the
    variable when imported (`POLARS_OWN_CONF`, then any setting found there, the last one of a
    name winning), so a process started by one that imported polars finds those: they are not
    an operator's setting."""
    name = "_RJEM_MALLOC_CONF"
    if "polars" in sys.modules:
        return False
    if os.environ.get(name, "").removeprefix(POLARS_OWN_CONF).strip(","):
        return False
    os.environ.update(DAILY_RUN_ENV)
    return True


def _operator_set_malloc() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "glibc.malloc." in tunables or any(name in os.environ for name in GLIBC_ALLOCATOR_ENVS)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc and the operator left its malloc alone."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if _operator_set_malloc():
        return None
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed large blocks for reuse; True if set (glibc only)."""
    global _retaining
    libc = _glibc()
    if libc is None:
        return False
    no_mmap = bool(libc.mallopt(_M_MMAP_MAX, 0))
    _retaining = bool(libc.mallopt(_M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)) or no_mmap
    return _retaining


def release_freed_memory() -> None:
    """Give the freed blocks glibc kept back to the OS (after a step's output is written; it
    may run on one of polars' threads, malloc_trim is thread-safe); a process that does not
    retain them is left alone."""
    libc = _glibc()
    if _retaining and libc is not None:
        libc.malloc_trim(0)


def restore_allocator() -> None:
    """glibc's defaults again, with what was kept handed back (at the end of a range run, so
    that a later run in the same process - tests, `dg.materialize` - is not changed). glibc
    keeps its mmap threshold where it stood: after any `mallopt` it no longer adapts it."""
    global _retaining
    libc = _glibc()
    if not _retaining or libc is None:
        return
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)
    _retaining = False
