"""Chunks of numpy work on a thread per core.

numpy's gathers, sorts and ufunc loops release the GIL, so array work split into chunks that
each write only their own slice of the result runs on every core with the numbers it would give
one chunk after another."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import polars as pl

T = TypeVar("T")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it), no more than
    polars' own pool (so POLARS_MAX_THREADS limits both) and at most 8 (each thread holds a
    chunk's arrays, up to ~60 MB)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(1, min(cores, pl.thread_pool_size(), 8))


def for_each_chunk(work: Callable[[T], None], chunks: Iterable[T], name: str) -> None:
    """`work(chunk)` for every chunk, on a thread per usable core (in this thread when there is
    one core or one chunk); a chunk's error is raised here."""
    items = list(chunks)
    workers = min(len(items), usable_cores())
    if workers <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        list(pool.map(work, items))  # list(): re-raises a chunk's error here
