"""Loader for the SQL under `sql/`, so statements live in reviewable files rather than in Python.

Layout (see docs of the Store seam):
- `sql/<dialect>/<name>.sql` overrides `sql/common/<name>.sql`; one statement per file.
- `sql/<dialect>/migrations/NNN_<name>.sql` are the versioned migrations, applied in order.

Dialect folders are `postgres` and `duckdb`; SQLAlchemy's dialect names (`postgresql`, `duckdb`)
are accepted too. Values are always bound parameters (`:name`), never formatted in.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

_DIALECT_DIRS = {"postgresql": "postgres", "postgres": "postgres", "duckdb": "duckdb"}
_NAME = re.compile(r"^[a-z0-9_]+$")
_MIGRATION = re.compile(r"^(\d+)_([a-z0-9_]+)\.sql$")
_DOLLAR_TAG = re.compile(r"\$[A-Za-z_]*\$")


def dialect_dir(dialect: str) -> str:
    """Folder name under `sql/` for a dialect, so callers can pass SQLAlchemy's names."""
    try:
        return _DIALECT_DIRS[dialect]
    except KeyError:
        raise ValueError(
            f"unknown SQL dialect {dialect!r}; expected one of {sorted(_DIALECT_DIRS)}"
        ) from None


@lru_cache(maxsize=256)
def load_sql(name: str, dialect: str) -> str:
    """The single statement in `sql/<dialect>/<name>.sql`, else `sql/common/<name>.sql`.

    Raises FileNotFoundError naming both places looked at, and ValueError when the file holds
    more or less than one statement (one statement per file keeps errors attributable).
    """
    if not _NAME.match(name):
        raise ValueError(f"bad SQL file name {name!r}: use lowercase letters, digits and _")
    candidates = [
        SQL_DIR / dialect_dir(dialect) / f"{name}.sql",
        SQL_DIR / "common" / f"{name}.sql",
    ]
    for path in candidates:
        if path.is_file():
            statements = split_statements(path.read_text(encoding="utf-8"))
            if len(statements) != 1:
                raise ValueError(f"{path} must hold exactly one statement, found {len(statements)}")
            return statements[0]
    raise FileNotFoundError(f"no SQL file {name!r}; looked in {', '.join(map(str, candidates))}")


def migrations(dialect: str) -> list[tuple[int, str, list[str]]]:
    """All migrations of a dialect as (version, name, statements), in version order.

    `name` is the file stem (e.g. `001_insights`), the value recorded in `schema_version`.
    """
    folder = SQL_DIR / dialect_dir(dialect) / "migrations"
    found: dict[int, tuple[int, str, list[str]]] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} is not named NNN_<name>.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version} in {folder}")
        statements = list(_split_cached(path.read_text(encoding="utf-8")))
        if not statements:
            raise ValueError(f"migration {path} holds no statement")
        found[version] = (version, path.stem, statements)
    return [found[v] for v in sorted(found)]


@lru_cache(maxsize=64)
def _split_cached(script: str) -> tuple[str, ...]:
    """`split_statements` of a migration's text, parsed once per process: every store open
    checks the migrations (~15 ms of character-by-character parsing each time otherwise);
    keyed by the text itself, so an edited file is parsed again."""
    return tuple(split_statements(script))


def split_statements(script: str) -> list[str]:
    """Split a script on `;` outside quotes, comments and dollar quotes; drop comment-only parts.

    A comment before a statement stays with it (headers are kept for logs).
    """
    statements: list[str] = []
    current: list[str] = []
    has_code = False
    i, n = 0, len(script)
    while i < n:
        ch = script[i]
        two = script[i : i + 2]
        if two == "--":
            end = script.find("\n", i)
            end = n if end == -1 else end
            current.append(script[i:end])
            i = end
            continue
        if two == "/*":
            end = script.find("*/", i + 2)
            end = n if end == -1 else end + 2
            current.append(script[i:end])
            i = end
            continue
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if script[end] == ch:
                    if script[end + 1 : end + 2] == ch:  # doubled quote escapes itself
                        end += 2
                        continue
                    break
                end += 1
            current.append(script[i : end + 1])
            has_code = True
            i = end + 1
            continue
        if ch == "$":
            tag = _DOLLAR_TAG.match(script, i)
            if tag:
                end = script.find(tag.group(0), tag.end())
                end = n if end == -1 else end + len(tag.group(0))
                current.append(script[i:end])
                has_code = True
                i = end
                continue
        if ch == ";":
            if has_code:
                statements.append("".join(current).strip())
            current, has_code = [], False
            i += 1
            continue
        current.append(ch)
        if not ch.isspace():
            has_code = True
        i += 1
    if has_code:
        statements.append("".join(current).strip())
    return statements
