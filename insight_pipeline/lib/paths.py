"""Where things live by default; every default can be overridden from the environment.

Read at run time (never at import time) so tests and deployments can set the environment late.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """`INSIGHTS_DATA_DIR`, default `<project>/.data`: sample, embedded store, intermediates."""
    return Path(os.environ.get("INSIGHTS_DATA_DIR") or PROJECT_ROOT / ".data").resolve()


def default_source() -> str:
    """`INSIGHTS_SOURCE`, default the sample directory the demo writes."""
    return os.environ.get("INSIGHTS_SOURCE") or str(data_dir() / "sample")


def default_database_url() -> str:
    """`INSIGHTS_DATABASE_URL`, default a DuckDB file under the data directory."""
    return os.environ.get("INSIGHTS_DATABASE_URL") or f"duckdb:///{data_dir() / 'insights.duckdb'}"


def intermediate_dir() -> Path:
    return data_dir() / "intermediate"
