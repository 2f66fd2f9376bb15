"""Runs keep freed memory for reuse: polars' jemalloc for 5 s once the package is imported
(30 s for range runs with the documented setting), and in range runs glibc's malloc during each
step (given back after it); an operator's own settings are left alone. Each case runs in a
fresh interpreter: jemalloc reads its configuration once, when polars is first imported, and
glibc's settings are per process."""

import os
import platform
import subprocess
import sys

import pytest

from insight_pipeline.allocators import (
    DAILY_RUN_ENV,
    GLIBC_ALLOCATOR_ENVS,
    POLARS_OWN_CONF,
    RANGE_RUN_ENV,
)

ALLOCATOR_ENVS = (*RANGE_RUN_ENV, *GLIBC_ALLOCATOR_ENVS, "GLIBC_TUNABLES")


def run_python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENVS}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.skipif(platform.system() != "Linux", reason="polars uses jemalloc on Linux")
def test_the_range_run_setting_makes_polars_keep_freed_pages_for_30_s() -> None:
    code = "import polars as pl\npl.DataFrame({'a': [1, 2]}).sum()\n"
    conf = RANGE_RUN_ENV["_RJEM_MALLOC_CONF"] + ",stats_print:true"
    stats = run_python(code, _RJEM_MALLOC_CONF=conf).stderr  # jemalloc prints its options
    assert "opt.dirty_decay_ms: 30000" in stats
    assert "opt.muzzy_decay_ms: 0" in stats


@pytest.mark.skipif(platform.system() != "Linux", reason="polars uses jemalloc on Linux")
def test_the_daily_setting_makes_polars_keep_freed_pages_for_5_s() -> None:
    code = "import polars as pl\npl.DataFrame({'a': [1, 2]}).sum()\n"
    conf = DAILY_RUN_ENV["_RJEM_MALLOC_CONF"] + ",stats_print:true"
    stats = run_python(code, _RJEM_MALLOC_CONF=conf).stderr
    assert "opt.dirty_decay_ms: 5000" in stats
    assert "opt.muzzy_decay_ms: 0" in stats


SETTING_AFTER_IMPORT = """
import os, sys
{before}
import insight_pipeline.definitions
print(os.environ.get("_RJEM_MALLOC_CONF"), "polars" in sys.modules)
"""


def decay_ms(conf: str) -> str:
    """The dirty_decay_ms jemalloc takes from a setting (of options of one name, the last)."""
    return [o for o in conf.split(",") if o.startswith("dirty_decay_ms:")][-1].split(":")[1]


def test_importing_the_package_sets_the_daily_setting_before_polars_reads_it() -> None:
    """What `dagster asset materialize -m insight_pipeline.definitions` does: the setting is in
    the environment when polars reads it at its import (polars writes its own defaults before
    it), and so in the environment of the run's child processes."""
    conf, polars_loaded = run_python(
        SETTING_AFTER_IMPORT.format(before="import dagster")
    ).stdout.split()
    assert polars_loaded == "True" and decay_ms(conf) == "5000"
    # the package sets it before its own modules import polars
    first = SETTING_AFTER_IMPORT.replace("insight_pipeline.definitions", "insight_pipeline")
    out = run_python(first.format(before="")).stdout.split()
    assert out == [DAILY_RUN_ENV["_RJEM_MALLOC_CONF"], "False"]
    # a process started by one that had imported polars first finds only polars' own defaults
    # there, and still gets the setting
    inherited = run_python(
        SETTING_AFTER_IMPORT.format(before=""), _RJEM_MALLOC_CONF=POLARS_OWN_CONF
    )
    assert decay_ms(inherited.stdout.split()[0]) == "5000"
    # an operator's setting (a backfill's) is kept
    ranged = RANGE_RUN_ENV["_RJEM_MALLOC_CONF"]
    out = run_python(SETTING_AFTER_IMPORT.format(before=""), _RJEM_MALLOC_CONF=ranged).stdout
    assert decay_ms(out.split()[0]) == "30000"
    # too late once polars is imported: polars' own defaults stay
    out = run_python(SETTING_AFTER_IMPORT.format(before="import polars")).stdout
    assert decay_ms(out.split()[0]) == "500"


# While a 64 MiB array is held: how many more blocks glibc has mmapped than before it (1 when
# malloc maps it on its own, 0 when it comes from the heap).
MAPPED_BLOCKS = """
import ctypes
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mapped_for_a_large_array():
    before = libc.mallinfo2().hblks
    block = np.ones(8 << 20)
    return libc.mallinfo2().hblks - before
"""


def _glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    if platform.system() != "Linux" or name != "glibc":
        return ()
    return tuple(int(part) for part in version.split("."))


glibc_only = pytest.mark.skipif(
    _glibc_version() < (2, 33), reason="glibc's mallopt, and mallinfo2 to observe it"
)


IN_A_STEP = """
import sys, tempfile
import dagster as dg
import polars as pl
from insight_pipeline.defs.resources import PolarsParquetIOManager

days = dg.DailyPartitionsDefinition(start_date="2026-10-01")

@dg.asset(partitions_def=days, backfill_policy=dg.BackfillPolicy.single_run())
def frame(context: dg.AssetExecutionContext) -> pl.DataFrame:
    print(mapped_for_a_large_array())  # inside the step, after the IO manager's setup
    return pl.DataFrame({"x": [1]})

first, last = sys.argv[1:3]
tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
with tempfile.TemporaryDirectory() as base_dir:
    dg.materialize([frame], resources={"io_manager": PolarsParquetIOManager(base_dir=base_dir)},
                   tags=tags)
print(mapped_for_a_large_array())  # after the run: glibc's defaults again
"""


@glibc_only
def test_a_range_run_reuses_freed_large_blocks_and_a_daily_run_does_not() -> None:
    def mapped_in_the_step_and_after(first: str, last: str) -> list[str]:
        return run_python(MAPPED_BLOCKS + IN_A_STEP, first, last).stdout.split()[-2:]

    assert mapped_in_the_step_and_after("2026-10-31", "2026-10-31") == ["1", "1"]
    assert mapped_in_the_step_and_after("2026-10-01", "2026-10-31") == ["0", "1"]


@glibc_only
def test_glibc_allocator_left_alone_when_the_operator_set_it() -> None:
    code = MAPPED_BLOCKS + (
        "from insight_pipeline.allocators import retain_freed_memory\n"
        "print(retain_freed_memory(), mapped_for_a_large_array())\n"
    )
    assert run_python(code, MALLOC_TRIM_THRESHOLD_="131072").stdout.split() == ["False", "1"]
    assert run_python(code).stdout.split() == ["True", "0"]


@glibc_only
def test_freed_blocks_go_back_to_the_os_at_the_end_of_a_step() -> None:
    code = (
        "import os\n"
        "import numpy as np\n"
        "from insight_pipeline.allocators import release_freed_memory, retain_freed_memory\n"
        "def resident_mb():\n"
        "    with open('/proc/self/statm') as f:\n"
        "        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
        "retain_freed_memory()\n"
        "before = resident_mb()\n"
        "block = np.ones(32 << 20)  # 256 MiB, touched\n"
        "del block\n"
        "kept = resident_mb() - before\n"
        "release_freed_memory()\n"
        "print(round(kept), round(resident_mb() - before))\n"
    )
    kept, after_release = map(int, run_python(code).stdout.split())
    assert kept >= 200  # freed, but kept by the process for reuse
    assert after_release <= 50  # given back
