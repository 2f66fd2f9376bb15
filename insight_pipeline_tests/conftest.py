"""Shared fixtures: database URLs for both store backends (DuckDB file, real PostgreSQL).

PostgreSQL: a fresh database per test session on the server named by
`INSIGHTS_TEST_POSTGRES_URL` (default: the local trust-auth server), dropped at teardown. A
missing server fails the tests that need it (PostgreSQL is a real part of this product, not an
optional extra); `make test` starts it first.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from insight_pipeline.lib.store import InsightStore

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _no_dagster_state_storage_from_earlier_tests() -> Iterator[None]:
    """Each test starts with no Dagster instance's definitions-state storage in scope.

    Dagster keeps the storage of the instance last entered as a context manager in a context
    variable, reset when that instance exits. A reset that runs late (a context manager
    finalised by the garbage collector) can leave the storage of an instance that is gone, and
    the next `dg.materialize` without an instance of its own then fails with "Attempted to
    resolve undefined DagsterInstance weakref" - seen once in CI, depending on which test files
    a pytest-xdist worker ran before. No instance here outlives its test, so none is lost."""
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)
    yield


@pytest.fixture(scope="session", autouse=True)
def _data_dir_of_this_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test process (a pytest-xdist worker) keeps what runs write outside their IO
    manager's folder - quarantine files, the outcome-rate cache - in a data directory of its
    own, not in the project's `.data`: there, a run of one worker could replace or remove a
    quarantine file that another worker's run of the same days had just written and was about
    to read (`unknown_usage_days`), and a test run left files in the checkout. A test that
    needs another directory sets `INSIGHTS_DATA_DIR` itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INSIGHTS_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL database for this session (xdist: one per worker)."""
    base = make_url(os.environ.get("INSIGHTS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    name = f"insight_test_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"create database {quoted}"))
            # a throwaway database needs no wait for the disk at each commit: the tests then
            # take the same time on a machine whose disk is busy (atomicity is unchanged)
            conn.execute(text(f"alter database {quoted} set synchronous_commit = off"))
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(f"no PostgreSQL at {base.render_as_string(hide_password=True)}: {exc.orig}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where datname = :name and pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(text(f"drop database if exists {quoted}"))
        admin.dispose()


@pytest.fixture(params=["duckdb", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of an empty database on each backend: a new DuckDB file, or the session's
    PostgreSQL database with its public schema reset (so every test starts from nothing).
    """
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path_factory.mktemp('store') / 'insights.duckdb'}"
    url: str = request.getfixturevalue("postgres_url")
    return _emptied(url)


@pytest.fixture
def store(store_url: str) -> Iterator[InsightStore]:
    """A migrated InsightStore on each backend, disposed after the test."""
    insight_store = InsightStore(store_url)
    insight_store.migrate()
    try:
        yield insight_store
    finally:
        insight_store.dispose()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """The session's PostgreSQL database, emptied (for tests that run on PostgreSQL only)."""
    url: str = request.getfixturevalue("postgres_url")
    return _emptied(url)


@pytest.fixture
def pg(pg_url: str) -> Iterator[InsightStore]:
    """A migrated InsightStore on that PostgreSQL database, disposed after the test."""
    store = InsightStore(pg_url)
    store.migrate()
    try:
        yield store
    finally:
        store.dispose()


def _emptied(url: str) -> str:
    """`url` after dropping and re-creating its public schema (every test starts from nothing)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("drop schema public cascade"))
            conn.execute(text("create schema public"))
    finally:
        engine.dispose()
    return url
