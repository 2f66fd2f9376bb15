"""Source validation: structural errors fail with table, column and an example row; row-level
problems are quarantined and counted exactly once; directories (CSV, Parquet) and SQL URLs read
the same typed frames, only inside the requested date window."""

from __future__ import annotations

import os
import random
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from insight_pipeline.lib import contract
from insight_pipeline.lib.contract import (
    CONTRACT,
    ContractError,
    Source,
    _adjacent_duplicates,
    quarantine,
)

USERS = pl.DataFrame(
    {
        "user_id": ["U1", "U2"],
        "name": ["Ann", "Bo"],
        "email": ["a@example.com", "b@example.com"],
        "role": ["manager", "csm"],
        "manager_id": [None, "U1"],
    }
)
CUSTOMERS = pl.DataFrame(
    {
        "customer_id": ["C1", "C2"],
        "name": ["Acme", "Globex"],
        "industry": ["software", "retail"],
        "segment": ["smb", "enterprise"],
        "region": ["emea", "na"],
        "csm_user_id": ["U2", "U2"],
        "arr": [10000.0, 250000.0],
        "plan": ["pro", "enterprise"],
        "contract_start": ["2024-01-01", "2023-05-01"],
        "renewal_date": ["2027-01-01", "2026-05-01"],
        "churned_on": [None, None],
    }
)
USAGE = pl.DataFrame(
    {
        "customer_id": ["C1", "C1", "C2", "C2"],
        "date": ["2026-01-01", "2026-01-02", "2026-01-01", "2026-01-03"],
        "metric": ["dau", "dau", "dau", "logins"],
        "value": ["5", "6", "7.5", "3"],
    }
)


def write_source(root: Path, fmt: str = "csv", **overrides: pl.DataFrame) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tables = {"users": USERS, "customers": CUSTOMERS, "usage_daily": USAGE, **overrides}
    for name, frame in tables.items():
        if fmt == "csv":
            frame.write_csv(root / f"{name}.csv")
        else:
            frame.write_parquet(root / f"{name}.parquet")
    return root


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_reads_typed_tables_and_window(tmp_path: Path, fmt: str) -> None:
    src = Source(str(write_source(tmp_path, fmt)))
    usage = src.read("usage_daily", date_from=date(2026, 1, 2), date_to=date(2026, 1, 2))
    assert usage is not None
    assert usage.schema["date"] == pl.Date and usage.schema["value"] == pl.Float64
    assert usage["date"].to_list() == [date(2026, 1, 2)]
    assert src.read("meetings") is None  # optional and absent: reported, not an error


@pytest.mark.parametrize("layout", ["many-values", "few-values", "values-repeated-in-no-order"])
@pytest.mark.parametrize("padding", [" C7", "C7\t", "", "\u00a0C7"])
def test_padded_or_blank_text_is_trimmed_among_many_rows(
    tmp_path: Path, layout: str, padding: str
) -> None:
    """One padded or blank id among 30,000 rows is found, whether the column holds a few
    repeated values (checked on its distinct values), a new value on every row, or hundreds of
    values repeated in no order (not a label: read whole, not hashed)."""
    n = 30_000
    ids = {
        "many-values": [f"C{i}" for i in range(n)],
        "few-values": ["C1", "C2", "C3"] * (n // 3),
        "values-repeated-in-no-order": [f"C{(i * 7919) % 500}" for i in range(n)],
    }[layout]
    ids[-1] = padding
    usage = pl.DataFrame(
        {
            "customer_id": ids,
            "date": ["2026-01-01"] * n,
            "metric": ["dau"] * n,
            "value": [1.0] * n,
        }
    )
    src = Source(str(write_source(tmp_path, "parquet", usage_daily=usage)))
    typed = src.read("usage_daily")
    assert typed is not None
    assert typed["customer_id"][-1] == (padding.strip() or None)
    assert typed["customer_id"][:-1].to_list() == ids[:-1]


def test_a_column_of_few_values_is_checked_on_a_samples_values_only_when_they_cover_it() -> None:
    """The whitespace check of a column of a few values, not grouped, reads the values of a
    strided sample when every row equals one of them (padding among them is found), and falls
    back to every distinct value when a rare one lies between the sample's rows."""
    n = 40_000
    common = pl.Series("channel", ["email", " call", "chat", None] * (n // 4))
    values = contract._few_values(common)
    assert values is not None and sorted(values.to_list()) == [" call", "chat", "email"]
    assert contract._needs_trim(common)
    rare = common.scatter(n - 3, "meeting\t")  # between the sample's rows (every 9th)
    assert contract._few_values(rare) is None
    assert contract._needs_trim(rare)
    assert set(contract._trim_values(rare).drop_nulls()) == set(rare.drop_nulls())
    clean = common.str.strip_chars()
    assert not contract._needs_trim(clean)
    # a clean column but for one rare padded value between the sample's rows: still found
    assert contract._needs_trim(clean.scatter(n - 3, "meeting\t"))


@pytest.mark.parametrize("micros", [-62_135_596_800_000_001, 253_402_300_800_000_000])
def test_a_timestamp_outside_years_1_to_9999_is_an_error(tmp_path: Path, micros: int) -> None:
    """A Parquet timestamp one microsecond before year 1 or at the start of year 10000 cannot
    be a real event (nor become a Python datetime): the read fails naming the column."""
    in_range = 1_780_000_000_000_000
    meetings = pl.DataFrame(
        {
            "meeting_id": ["m1", "m2"],
            "customer_id": ["C1", "C1"],
            "start_at": pl.Series([in_range, micros]).cast(pl.Datetime("us", "UTC")),
            "meeting_type": ["qbr", "qbr"],
            "sentiment": [0.5, 0.5],
        }
    )
    src = Source(str(write_source(tmp_path, "parquet", meetings=meetings)))
    with pytest.raises(ContractError, match=r"'start_at'.*row 2"):
        src.read("meetings")
    ok = meetings.head(1)
    src = Source(str(write_source(tmp_path / "ok", "parquet", meetings=ok)))
    assert src.read("meetings")["start_at"].dt.year().to_list() == [2026]


def test_sql_source_reads_the_same(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    engine = sa.create_engine(url)
    for name, frame in {"users": USERS, "customers": CUSTOMERS, "usage_daily": USAGE}.items():
        frame.to_pandas().to_sql(name, engine, index=False)
    engine.dispose()
    sql = Source(url).read("usage_daily", date_to=date(2026, 1, 2))
    files = Source(str(write_source(tmp_path / "dir"))).read(
        "usage_daily", date_to=date(2026, 1, 2)
    )
    assert sql is not None and files is not None
    assert sql.sort("customer_id", "date").equals(files.sort("customer_id", "date"))


def test_missing_required_table(tmp_path: Path) -> None:
    root = write_source(tmp_path)
    (root / "usage_daily.csv").unlink()
    with pytest.raises(ContractError, match="required table 'usage_daily' is missing"):
        Source(str(root)).read("usage_daily")


def test_a_table_in_two_files_is_an_error_naming_both(tmp_path: Path) -> None:
    root = write_source(tmp_path)
    USAGE.head(2).write_parquet(root / "usage_daily.parquet")  # a stale copy beside the CSV
    with pytest.raises(ContractError, match=r"usage_daily\.parquet and usage_daily\.csv"):
        Source(str(root)).read("usage_daily")
    assert Source(str(root)).read("users") is not None  # the other tables still read


def test_one_column_of_a_whole_table_reads_no_other_column(tmp_path: Path) -> None:
    """`Source.column` types one column of every row; a bad value in another column, which a
    run's window would never read, does not fail it."""
    usage = USAGE.with_columns(pl.Series("date", ["2026-01-01", "01/02/2026", "2026-01-01", "x"]))
    root = write_source(tmp_path, usage_daily=usage.with_columns(pl.col("customer_id") + " "))
    source = Source(str(root))
    assert source.column("usage_daily", "customer_id").to_list() == ["C1", "C1", "C2", "C2"]
    with pytest.raises(ContractError, match="'date'"):
        source.read("usage_daily")
    assert source.column("nps_responses", "contact_id") is None  # an absent optional table
    with pytest.raises(ValueError, match="no column 'meeting_id'"):
        source.column("usage_daily", "meeting_id")


def test_missing_column_names_table_and_column(tmp_path: Path) -> None:
    root = write_source(tmp_path, customers=CUSTOMERS.drop("arr"))
    with pytest.raises(
        ContractError, match=r"'customers' is missing required column\(s\) \['arr'\]"
    ):
        Source(str(root)).read("customers")


def test_unparseable_value_names_column_and_row(tmp_path: Path) -> None:
    bad = USAGE.with_columns(pl.Series("value", ["5", "6", "lots", "3"]))
    root = write_source(tmp_path, usage_daily=bad)
    with pytest.raises(ContractError) as err:
        Source(str(root)).read("usage_daily")
    message = str(err.value)
    assert "'usage_daily'" in message and "'value'" in message and "lots" in message
    assert "row 3" in message


def test_a_fraction_in_an_integer_column_of_floats_is_an_error(tmp_path: Path) -> None:
    """Whole floats are integers (a Parquet writer may store counts as doubles); 2.5 users are
    not, and the error names the column and the row."""
    features = pl.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2"],
            "date": [date(2026, 1, 1)] * 3,
            "feature": ["a", "b", "a"],
            "active_users": [3.0, 2.5, 4.0],
        }
    )
    root = write_source(tmp_path, "parquet", feature_usage_daily=features)
    with pytest.raises(ContractError, match=r"'active_users'.*row 2"):
        Source(str(root)).read("feature_usage_daily")
    whole = features.with_columns(pl.col("active_users").round())
    write_source(tmp_path, "parquet", feature_usage_daily=whole)
    typed = Source(str(root)).read("feature_usage_daily")
    assert typed is not None and typed["active_users"].dtype == pl.Int64
    assert typed["active_users"].to_list() == [3, 2, 4]


def test_reading_some_columns_types_those_and_keeps_the_window(tmp_path: Path) -> None:
    """A reader of a few columns gets them (and the date column its window filters on) typed
    and windowed as in the whole table; a bad value in a column it reads still fails."""
    root = write_source(tmp_path)
    source = Source(str(root))
    narrow = source.read(
        "usage_daily", date_from=date(2026, 1, 2), columns=["customer_id", "value"]
    )
    assert narrow is not None
    assert narrow.columns == ["customer_id", "date", "value"]
    whole = source.read("usage_daily", date_from=date(2026, 1, 2))
    assert whole is not None and narrow.equals(whole.select(narrow.columns))
    with pytest.raises(ValueError, match="'usage_daily' has no column"):
        source.read("usage_daily", columns=["customer_id", "volume"])
    bad = USAGE.with_columns(pl.Series("value", ["5", "6", "lots", "3"]))
    source = Source(str(write_source(tmp_path / "bad", usage_daily=bad)))
    assert source.read("usage_daily", columns=["customer_id", "metric"]) is not None
    with pytest.raises(ContractError, match="lots"):
        source.read("usage_daily", columns=["value"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_monthly_usage_of_many_windows_in_one_pass_equals_each_window(
    tmp_path: Path, fmt: str
) -> None:
    """A range run sums the usage of every month's window in one pass (segments between the
    windows' bounds and month starts); each window gets what its own pass would give, also where
    windows begin and end mid-month, and seats_used and negative values stay out."""
    days = pl.date_range(date(2025, 10, 20), date(2026, 3, 10), eager=True)
    usage = (
        pl.DataFrame({"customer_id": ["C1", "C2"]})
        .join(pl.DataFrame({"date": days}), how="cross")
        .join(pl.DataFrame({"metric": ["dau", "api_calls", "seats_used"]}), how="cross")
        .with_columns(
            pl.when(pl.col("date") == date(2026, 1, 5))
            .then(-1.0)  # negative: not counted
            .otherwise(pl.int_range(pl.len()) % 7 + 0.25)
            .alias("value")
        )
    )
    source = Source(str(write_source(tmp_path, fmt, usage_daily=usage)))
    windows = [
        (date(2025, 10, 31), date(2026, 1, 31)),
        (date(2025, 11, 30), date(2026, 2, 28)),
        (date(2025, 11, 15), date(2026, 3, 4)),
    ]
    keys = ["customer_id", "month"]
    together = list(source.monthly_usage_windows(windows))
    assert len(together) == len(windows)
    for (lo, hi), many in zip(windows, together, strict=True):
        one = source.monthly_usage(lo, hi)
        assert one.height > 0 and many.schema == one.schema
        assert many.sort(keys).equals(one.sort(keys)), (lo, hi)
    first = together[0].sort(keys).filter(pl.col("customer_id") == "C1")
    assert first["month"].to_list() == [date(2025, m, 1) for m in (10, 11, 12)] + [date(2026, 1, 1)]


def test_bad_date_is_reported(tmp_path: Path) -> None:
    bad = USAGE.with_columns(pl.Series("date", ["2026-01-01", "2026-13-45", "2026-01-01", "x"]))
    with pytest.raises(ContractError, match="'date'"):
        Source(str(write_source(tmp_path, usage_daily=bad))).read("usage_daily")


def test_quarantine_counts_each_bad_row_once() -> None:
    usage = pl.DataFrame(
        {
            "customer_id": ["C1", "C1", "C1", "C9", None, "C2", "C2"],
            "date": [date(2026, 1, 1)] * 2 + [date(2026, 1, 2)] * 4 + [date(2026, 1, 3)],
            "metric": ["dau"] * 7,
            # a null value is not a measurement of 0: quarantined like a negative one
            "value": [1.0, 2.0, -3.0, 4.0, 5.0, 6.0, None],
        }
    )
    clean, bad, report = quarantine(
        CONTRACT["usage_daily"], usage, {"customers": pl.Series(["C1", "C2"])}
    )
    assert clean.height == 2  # C1 first day (first of the duplicates) and C2
    assert report.duplicates == 1
    assert report.negative_values == 1
    assert report.unknown_ids == 1
    assert report.null_keys == 1
    assert report.null_values == 1
    assert report.rows_read == clean.height + bad.height
    assert set(bad["quarantine_reason"]) == {
        "duplicate_key",
        "negative_value",
        "unknown_id",
        "null_key",
        "null_value",
    }


def test_unknown_role_is_rejected(tmp_path: Path) -> None:
    users = USERS.with_columns(pl.Series("role", ["manager", "wizard"]))
    with pytest.raises(ContractError, match=r"'role'.*wizard"):
        Source(str(write_source(tmp_path, users=users))).read("users")


def test_missing_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist"):
        Source(str(tmp_path / "nope"))


def test_a_large_csv_is_read_through_a_mirror_renewed_when_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV file from CSV_MIRROR_MIN_BYTES on is parsed once into a Parquet mirror under the
    data directory; a rewritten file is read anew (not from the old mirror), which is removed."""
    import insight_pipeline.lib.contract as contract

    monkeypatch.setenv("INSIGHTS_DATA_DIR", str(tmp_path / "data"))
    root = write_source(tmp_path / "src")
    direct = Source(str(root)).read("usage_daily")  # a small file: the CSV itself
    assert not (tmp_path / "data" / "source_mirror").exists()
    monkeypatch.setattr(contract, "CSV_MIRROR_MIN_BYTES", 0)
    first = Source(str(root)).read("usage_daily")
    assert first is not None and direct is not None and first.equals(direct)
    mirrors = sorted((tmp_path / "data" / "source_mirror").rglob("usage_daily-*.parquet"))
    assert len(mirrors) == 1

    changed = USAGE.with_columns(pl.lit("9").alias("value")).head(3)
    changed.write_csv(root / "usage_daily.csv")
    os.utime(root / "usage_daily.csv", ns=(1, mirrors[0].stat().st_mtime_ns + 10**9))
    second = Source(str(root)).read("usage_daily")
    assert second is not None and second["value"].to_list() == [9.0, 9.0, 9.0]
    now = sorted((tmp_path / "data" / "source_mirror").rglob("usage_daily-*.parquet"))
    assert len(now) == 1 and now != mirrors
    assert Source(str(root)).count("usage_daily") == 3


def meetings_source(root: Path, fmt: str, meetings: pl.DataFrame) -> tuple[Source, pl.DataFrame]:
    """A source holding these meetings (ISO text start times; timestamps in a Parquet file),
    and the meetings as written."""
    if fmt == "parquet":
        meetings = meetings.with_columns(
            pl.col("start_at").str.to_datetime(time_zone="UTC", time_unit="us")
        )
    return Source(str(write_source(root, fmt, meetings=meetings))), meetings


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_reading_many_windows_at_once_gives_each_windows_own_read(tmp_path: Path, fmt: str) -> None:
    """`read_windows` reads the file once for overlapping windows and gives, window by window,
    the frame `read` gives: rows judged by their text date in a CSV (an offset timestamp late in
    the evening is still that day), by the UTC date of a Parquet timestamp, nulls kept."""
    starts = [
        "2026-02-28T10:00:00Z",
        "2026-03-01T23:30:00-05:00",  # the text says March 1st, UTC says March 2nd
        "2026-03-02T00:00:00Z",
        None,
        "2026-03-15T12:00:00+02:00",
        "2026-03-31T23:59:59Z",
        "2026-04-01T00:00:00Z",
    ]
    meetings = pl.DataFrame(
        {
            "meeting_id": [f"m{i}" for i in range(len(starts))],
            "customer_id": ["C1", "C2"] * 3 + ["C1"],
            "start_at": starts,
            "meeting_type": ["qbr"] * len(starts),
            "sentiment": [0.5] * len(starts),
        }
    )
    src, meetings = meetings_source(tmp_path, fmt, meetings)
    windows = [
        (date(2026, 2, 1), date(2026, 3, 1)),
        (date(2026, 3, 1), date(2026, 3, 31)),
        (date(2026, 3, 2), date(2026, 4, 30)),
        (date(2026, 1, 1), date(2026, 1, 31)),
    ]
    for columns in (None, ["customer_id", "start_at"]):
        together = list(src.read_windows("meetings", windows, columns=columns))
        for (first, last), frame in zip(windows, together, strict=True):
            alone = src.read("meetings", date_from=first, date_to=last, columns=columns)
            assert frame is not None and alone is not None
            assert frame.equals(alone), (first, last)
        assert [f.height for f in together] == [
            len(s) for s in _expected_ids(meetings, windows, fmt)
        ]
    counts = [src.count("meetings", date_from=a, date_to=b) for a, b in windows]
    assert counts == [len(s) for s in _expected_ids(meetings, windows, fmt)]
    columns = ["customer_id", "start_at"]
    prints = src.fingerprint_windows("meetings", windows, columns)
    assert [int(p.split(":")[0]) for p in prints] == counts
    assert prints == [src.fingerprint_windows("meetings", [w], columns)[0] for w in windows]
    assert list(src.read_windows("nps_responses", windows)) == [None] * len(windows)
    customers = src.read("customers")  # no date column: the whole table for every window
    assert customers is not None
    assert all(
        f is not None and f.equals(customers) for f in src.read_windows("customers", windows)
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_reading_many_windows_fails_at_the_window_with_a_bad_value_as_its_read(
    tmp_path: Path, fmt: str
) -> None:
    """The windows are typed together; a value that cannot be typed still fails where and as
    the read of its own window fails, after the windows before it were given whole."""
    meetings = pl.DataFrame(
        {
            "meeting_id": ["m1", "m2", "m3", "m4"],
            "customer_id": ["C1", "C2", "C1", "C2"],
            "start_at": [
                "2026-01-10T10:00:00Z",
                "2026-02-10T10:00:00Z",
                "2026-02-20T10:00:00Z",
                "2026-03-10T10:00:00Z",
            ],
            "meeting_type": ["qbr"] * 4,
            "sentiment": ["0.5", "0.2", "very good", "0.1"],  # February holds a bad value
        }
    )
    src, meetings = meetings_source(tmp_path, fmt, meetings)
    windows = [
        (date(2026, 1, 1), date(2026, 1, 31)),
        (date(2026, 1, 15), date(2026, 2, 28)),
        (date(2026, 3, 1), date(2026, 3, 31)),
    ]
    frames = src.read_windows("meetings", windows)
    first = next(frames)
    alone = src.read("meetings", date_from=date(2026, 1, 1), date_to=date(2026, 1, 31))
    assert first is not None and alone is not None and first.equals(alone)
    assert first["sentiment"].to_list() == [0.5]
    with pytest.raises(ContractError) as together:
        next(frames)
    with pytest.raises(ContractError) as own:
        src.read("meetings", date_from=date(2026, 1, 15), date_to=date(2026, 2, 28))
    assert str(together.value) == str(own.value)
    assert "very good" in str(together.value)


def test_window_fingerprints_count_undated_rows_in_each_and_see_any_changed_value(
    tmp_path: Path,
) -> None:
    """`fingerprint_windows` (one scan) counts as `count` does window by window - a row whose
    date is missing or not ISO text is in every window (typing rejects it later) - and its hash
    changes with any value of the columns given in the window, not with row order or with rows
    outside the window."""
    meetings = pl.DataFrame(
        {
            "meeting_id": ["a", "b", "c", "d", "e"],
            "customer_id": ["C1", "C1", "C2", "C1", "C2"],
            "start_at": ["2026-03-01T10:00:00Z", "03/02/2026", None, " 2026-03-20 ", "2026-03-21"],
            "meeting_type": ["qbr"] * 5,
            "sentiment": [0.5] * 5,
        }
    )
    windows = [(date(2026, 3, 1), date(2026, 3, 10)), (date(2026, 3, 11), date(2026, 3, 31))]
    columns = ["customer_id", "start_at"]

    def prints(frame: pl.DataFrame, name: str) -> list[str]:
        src = Source(str(write_source(tmp_path / name, "csv", meetings=frame)))
        counts = [src.count("meetings", date_from=a, date_to=b) for a, b in windows]
        found = src.fingerprint_windows("meetings", windows, columns)
        assert [int(p.split(":")[0]) for p in found] == counts
        return found

    base = prints(meetings, "base")
    assert [p.split(":")[0] for p in base] == ["3", "4"]
    assert prints(meetings.reverse(), "reversed") == base
    moved = meetings.with_columns(  # meeting e (March 21st) now belongs to C1
        pl.when(pl.col("meeting_id") == "e")
        .then(pl.lit("C1"))
        .otherwise(pl.col("customer_id"))
        .alias("customer_id")
    )
    changed = prints(moved, "moved")
    assert changed[0] == base[0] and changed[1] != base[1]
    other_column = meetings.with_columns(pl.lit(0.9).alias("sentiment"))
    assert prints(other_column, "sentiment") == base  # not a column the caller reads
    # two identical rows changed alike (an XOR of the row hashes would not see it)
    twins = pl.concat([meetings, meetings.filter(pl.col("meeting_id") == "e")])
    twins_base = prints(twins, "twins")
    twins_moved = twins.with_columns(
        pl.when(pl.col("meeting_id") == "e")
        .then(pl.lit("C1"))
        .otherwise(pl.col("customer_id"))
        .alias("customer_id")
    )
    assert prints(twins_moved, "twins_moved")[1] != twins_base[1]


def _expected_ids(meetings: pl.DataFrame, windows: list, fmt: str) -> list[list[str]]:
    """Each window's meetings as the contract defines them: the text's date for a CSV, the UTC
    date for a Parquet timestamp; a missing start is kept (and quarantined later)."""
    out = []
    for first, last in windows:
        ids = []
        for row in meetings.iter_rows(named=True):
            start = row["start_at"]
            if start is None:
                ids.append(row["meeting_id"])
                continue
            day = date.fromisoformat(start[:10]) if fmt == "csv" else start.date()
            if first <= day <= last:
                ids.append(row["meeting_id"])
        out.append(ids)
    return out


def test_undelivered_days_flag_a_missing_or_mostly_missing_day_by_its_weekday() -> None:
    """A day whose export has not (fully) arrived is told from quiet days by its weekday: a
    source that has no weekend rows keeps passing on weekends, a weekday at half its usual rows
    is usage, one at a twentieth of them (or none) is not delivered."""
    from insight_pipeline.lib.contract import undelivered_days

    start, end = date(2026, 3, 2), date(2026, 4, 26)  # Monday .. Sunday, 8 weeks
    days = pl.date_range(start, end, "1d", eager=True)
    usual = pl.Series([0 if d.weekday() >= 5 else 1000 for d in days])
    rows = pl.DataFrame({"date": days, "rows": usual}).with_columns(
        pl.when(pl.col("date") == date(2026, 4, 14))  # a Tuesday at half
        .then(500)
        .when(pl.col("date") == date(2026, 4, 16))  # a Thursday at 5%
        .then(50)
        .otherwise(pl.col("rows"))
        .alias("rows")
    )
    rows = rows.filter(pl.col("date") != date(2026, 4, 22))  # a Wednesday never delivered
    late = undelivered_days(rows, date(2026, 4, 6), end, 0.1)
    assert late["date"].to_list() == [date(2026, 4, 16), date(2026, 4, 22)]
    assert late["rows"].to_list() == [50, 0]
    assert late["usual"].to_list() == [1000.0, 1000.0]
    # the weeks before the data began have no usual count: nothing to compare, nothing flagged
    assert undelivered_days(rows, start, date(2026, 3, 8), 0.1).height == 0
    assert undelivered_days(rows, date(2026, 4, 6), end, 0.0).height == 0


def source_of(directory: Path, fmt: str, frames: dict[str, pl.DataFrame]) -> Source:
    """A source directory holding `frames` as `<table>.csv` or `<table>.parquet`."""
    for name, frame in frames.items():
        if fmt == "csv":
            frame.write_csv(directory / f"{name}.csv")
        else:
            frame.write_parquet(directory / f"{name}.parquet")
    return Source(str(directory))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_labels_spelt_as_exports_spell_them_read_as_the_contract_names_them(
    tmp_path: Path, fmt: str
) -> None:
    """`QBR`, `Check-in`, ` Onboarding ` are the contract's qbr, check_in and onboarding (a QBR
    spelt in capitals is still a QBR for qbr_due); a label the contract does not name is spelt
    alike and matches none; a users' role in capitals passes the role check."""
    from datetime import datetime

    meetings = pl.DataFrame(
        {
            "meeting_id": ["m1", "m2", "m3", "m4", "m5"],
            "customer_id": ["C1"] * 5,
            "start_at": [datetime(2026, 3, d, 10) for d in range(1, 6)],
            "meeting_type": ["QBR", "Check-in", " Onboarding ", "Demo Call", None],
            "sentiment": [0.1] * 5,
        }
    )
    users = pl.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "name": ["A", "B"],
            "email": ["a@x", "b@x"],
            "role": ["CSM", "Manager"],
            "manager_id": ["u2", None],
        }
    )
    source = source_of(tmp_path, fmt, {"meetings": meetings, "users": users})
    read = source.read("meetings")
    assert read is not None
    assert read["meeting_type"].to_list() == ["qbr", "check_in", "onboarding", "demo_call", None]
    assert read["meeting_id"].to_list() == ["m1", "m2", "m3", "m4", "m5"]
    roles = source.read("users")
    assert roles is not None and roles["role"].to_list() == ["csm", "manager"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_metric_names_spelt_differently_are_one_metric(tmp_path: Path, fmt: str) -> None:
    """`DAU` and `dau`, `API Calls` in the usage and `api_calls` in the entitlements are the
    same metric: read in one spelling, so the entitlement meets its usage, and the same day's
    `DAU` and `dau` rows are a duplicate key (quarantined and counted), not two metrics."""
    from datetime import date

    usage = pl.DataFrame(
        {
            "customer_id": ["C1"] * 4,
            "date": [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 2), date(2026, 3, 1)],
            "metric": ["DAU", "dau", " DAU", "API Calls"],
            "value": [3.0, 4.0, 4.0, 900.0],
        }
    )
    entitlements = pl.DataFrame(
        {"customer_id": ["C1"], "metric": ["api_calls"], "entitled_value": [1000.0]}
    )
    source = source_of(tmp_path, fmt, {"usage_daily": usage, "entitlements": entitlements})
    read = source.read("usage_daily")
    assert read is not None
    assert read["metric"].to_list() == ["dau", "dau", "dau", "api_calls"]
    ent = source.read("entitlements")
    assert ent is not None and ent["metric"].to_list() == ["api_calls"]
    _clean, bad, report = contract.quarantine(contract.CONTRACT["usage_daily"], read)
    assert report.duplicates == 1 and bad["metric"].to_list() == ["dau"]


@pytest.mark.parametrize(
    "labels",
    [
        # grouped in runs, a value in two of them (the check reads the runs' values)
        ["QBR"] * 40 + ["Check-in"] * 40 + ["QBR"] * 40 + ["qbr"] * 40 + [None] * 40,
        # few values, not grouped (the check reads the distinct values)
        ["QBR", "Check-in", "qbr", "Kick-off", None] * 40,
        # every value new (the check reads the whole column)
        [f"Type {i}" if i % 7 else "QBR" for i in range(200)],
    ],
)
def test_labels_are_normalised_from_the_values_the_whitespace_check_read(
    labels: list[str | None],
) -> None:
    """Typing normalises a label column from the values its whitespace check already read
    (instead of hashing the column again): the same labels as normalising every row."""
    spec = contract.CONTRACT["meetings"]
    raw = pl.DataFrame(
        {
            "meeting_id": [f"m{i:04d}" for i in range(len(labels))],
            "customer_id": ["C1"] * len(labels),
            "start_at": [None] * len(labels),
            "meeting_type": labels,
            "sentiment": [0.1] * len(labels),
        },
        schema_overrides={"start_at": pl.Datetime("us", "UTC")},
    )
    expected = [
        None
        if v is None
        else {"kick_off": "onboarding"}.get(
            v.lower().replace(" ", "_").replace("-", "_"),
            v.lower().replace(" ", "_").replace("-", "_"),
        )
        for v in labels
    ]
    assert contract._typed(spec, raw)["meeting_type"].to_list() == expected


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_other_tools_words_for_a_label_read_as_the_contract_label(tmp_path: Path, fmt: str) -> None:
    """A ticket's `P1`, `Sev 2`, `Critical`, `1 - Critical` or `Medium` (Jira, ServiceNow, on-call
    tools) is the contract's urgent/high/normal, so a P1 escalation raises support_surge as an
    urgent one does; a word no tool shares (`P9`) is kept, spelt alike, and weighs nothing
    special. Message directions and contact roles likewise."""
    from datetime import datetime

    from insight_pipeline.lib.detectors.risk import detect_support_surge
    from insight_pipeline.lib.settings import RiskSettings
    from insight_pipeline_tests.synthetic import customers

    priorities = ["P1", "Sev 2", "Critical", "1 - Critical", "Medium", "Urgent", "P9", "lowest"]
    tickets = pl.DataFrame(
        {
            "ticket_id": [f"t{i}" for i in range(len(priorities))],
            "customer_id": ["C1"] * len(priorities),
            "opened_at": [datetime(2026, 3, 1 + i, 9) for i in range(len(priorities))],
            "closed_at": [None] * len(priorities),
            "priority": priorities,
            "csat": [None] * len(priorities),
            "topic": ["billing"] * len(priorities),
        },
        schema_overrides={"closed_at": pl.Datetime, "csat": pl.Float64},
    )
    messages = pl.DataFrame(
        {
            "message_id": ["m1", "m2", "m3"],
            "customer_id": ["C1"] * 3,
            "contact_id": [None] * 3,
            "sent_at": [datetime(2026, 3, 1, 9)] * 3,
            "direction": ["Incoming", "Sent", "inbound"],
            "channel": ["E-mail", "Phone", "chat"],
        },
        schema_overrides={"contact_id": pl.String},
    )
    source = source_of(tmp_path, fmt, {"support_tickets": tickets, "communications": messages})
    read = source.read("support_tickets")
    assert read is not None
    assert read["priority"].to_list() == [
        "urgent", "high", "urgent", "urgent", "normal", "urgent", "p9", "low",
    ]  # fmt: skip
    comms = source.read("communications")
    assert comms is not None
    assert comms["direction"].to_list() == ["inbound", "outbound", "inbound"]
    assert comms["channel"].to_list() == ["email", "call", "chat"]

    accounts = customers(["C1"])
    day = date(2026, 3, 2)  # the P1 of 03-01 is within the urgent window, nothing else is
    surge = detect_support_surge(read, accounts, day, day, RiskSettings())
    assert surge.height == 1 and '"urgent_tickets":1' in surge["facts"][0]
    unknown = read.with_columns(pl.lit("p9").alias("priority"))
    assert detect_support_surge(unknown, accounts, day, day, RiskSettings()).height == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_timestamps_in_any_iso_form_are_read_and_a_local_form_fails(
    tmp_path: Path, fmt: str
) -> None:
    """A column mixing ISO forms (a bare date for midnight, as spreadsheets write it; `Z`,
    `+02:00`, `+00`; a space for `T`; no seconds) reads as the UTC instants they name; a
    `03/01/2026 09:00` is never guessed (polars would read the whole column day-first from such
    a first value): the run fails naming the row and the form expected."""
    from datetime import UTC, datetime

    def write(values: list[str | None]) -> Source:
        frame = pl.DataFrame(
            {
                "message_id": [f"m{i}" for i in range(len(values))],
                "customer_id": ["C1"] * len(values),
                "contact_id": [None] * len(values),
                "sent_at": values,
                "direction": ["inbound"] * len(values),
                "channel": ["email"] * len(values),
            },
            schema_overrides={"contact_id": pl.String, "sent_at": pl.String},
        )
        return source_of(tmp_path, fmt, {"communications": frame})

    mixed = [
        "2026-03-01T09:00:00Z",
        "2026-03-02",
        "2026-03-03 10:30",
        "2026-03-04T12:00:00+02:00",
        "2026-03-05 08:00:00+00",
        None,
        "2026-03-06T07:15:00.5",
    ]
    read = write(mixed).read("communications")
    assert read is not None
    assert read["sent_at"].to_list() == [
        datetime(2026, 3, 1, 9, tzinfo=UTC),
        datetime(2026, 3, 2, tzinfo=UTC),
        datetime(2026, 3, 3, 10, 30, tzinfo=UTC),
        datetime(2026, 3, 4, 10, tzinfo=UTC),
        datetime(2026, 3, 5, 8, tzinfo=UTC),
        None,
        datetime(2026, 3, 6, 7, 15, 0, 500000, tzinfo=UTC),
    ]
    for local in (["03/01/2026 09:00", "03/02/2026 09:00"], ["2026-03-01 09:00", "03/02/2026"]):
        with pytest.raises(ContractError, match=r"'sent_at'.*ISO 8601") as failure:
            write(local).read("communications")
        assert "03/0" in str(failure.value)


@pytest.mark.parametrize("layout", ["sorted", "grouped", "shuffled"])
@pytest.mark.parametrize("stranger", [True, False], ids=["unknown-id", "all-known"])
@pytest.mark.parametrize("collide", [False, True], ids=["hashes", "one-hash"])
def test_quarantine_reasons_whatever_the_row_layout(
    monkeypatch: pytest.MonkeyPatch, layout: str, stranger: bool, collide: bool
) -> None:
    """Each row's reason is the one a row-by-row reading of the rules gives, whether the rows
    come sorted by customer, grouped by customer in no order (both checked on the ids' runs)
    or shuffled; with a customer the accounts do not know among the runs, or none; and when
    every key hashes alike (the values decide, not the hashes)."""
    if collide:
        monkeypatch.setattr(
            contract, "_key_hash", lambda frame, key: pl.Series([0] * frame.height, dtype=pl.UInt64)
        )
    rng = random.Random(5)
    customers = [f"C{i:03d}" for i in range(60)]
    if layout == "grouped":
        rng.shuffle(customers)
    rows = [
        (c, date(2026, 1, 1) + timedelta(days=d), m, float(rng.randint(-1, 9)))
        for c in customers
        for d in range(8)
        for m in ("dau", "logins", "events")
    ]
    for i in sorted(rng.sample(range(len(rows)), 25), reverse=True):
        rows.insert(i - i % 3 + 3, rows[i])  # a duplicate at the end of its customer's day
    if layout == "shuffled":
        rng.shuffle(rows)
    known = set(customers) - ({customers[17]} if stranger else set())
    frame = pl.DataFrame(rows, schema=CONTRACT["usage_daily"].columns, orient="row")
    key = list(CONTRACT["usage_daily"].key)
    assert (_adjacent_duplicates(frame, key) is None) == (layout == "shuffled")
    clean, bad, _ = quarantine(
        CONTRACT["usage_daily"], frame, {"customers": pl.Series(sorted(known))}
    )
    seen, expected = set(), []
    for customer, day, metric, value in rows:
        duplicate = (customer, day, metric) in seen
        seen.add((customer, day, metric))
        if value < 0:
            expected.append("negative_value")
        elif customer not in known:
            expected.append("unknown_id")
        else:
            expected.append("duplicate_key" if duplicate else None)
    assert bad["quarantine_reason"].to_list() == [r for r in expected if r]
    assert clean.rows() == [row for row, r in zip(rows, expected, strict=True) if r is None]
    assert ("unknown_id" in expected) == stranger


def test_a_database_source_windows_timestamps_in_utc_whatever_its_sessions_zone(
    pg_url: str,
) -> None:
    """The contract's timestamps are UTC. A PostgreSQL whose sessions default to another zone
    (here Asia/Kolkata, +05:30) still gives a day's window as that UTC day: a timestamptz
    column and a timestamp column (naive UTC) alike, and the values read back as UTC."""
    engine = sa.create_engine(pg_url)
    sent = {
        "before": "2026-05-30 20:00:00+00",  # 01:30 on the 31st in Kolkata
        "early": "2026-05-31 00:30:00+00",
        "late": "2026-05-31 20:00:00+00",  # 01:30 on 1 June in Kolkata
        "after": "2026-06-01 02:00:00+00",
    }
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "create table communications (message_id text, customer_id text, "
                "contact_id text, sent_at timestamptz, direction text, channel text)"
            )
        )
        conn.execute(
            sa.text(
                "create table meetings (meeting_id text, customer_id text, start_at timestamp, "
                "meeting_type text, sentiment double precision)"
            )
        )
        for key, at in sent.items():
            conn.execute(
                sa.text(
                    "insert into communications values (:k, 'C1', null, cast(:at as timestamptz),"
                    " 'inbound', 'email')"
                ),
                {"k": key, "at": at},
            )
            conn.execute(
                sa.text(
                    "insert into meetings values (:k, 'C1', cast(:at as timestamptz) at time zone"
                    " 'UTC', 'check_in', null)"
                ),
                {"k": key, "at": at},
            )
    engine.dispose()
    kolkata = sa.make_url(pg_url).update_query_dict({"options": "-c timezone=Asia/Kolkata"})
    source = Source(kolkata.render_as_string(hide_password=False))
    day = date(2026, 5, 31)
    messages = source.read("communications", date_from=day, date_to=day)
    meetings = source.read("meetings", date_from=day, date_to=day)
    assert messages is not None and meetings is not None
    assert sorted(messages["message_id"]) == ["early", "late"]
    assert sorted(meetings["meeting_id"]) == ["early", "late"]
    late = messages.filter(pl.col("message_id") == "late")["sent_at"][0]
    assert late.isoformat() == "2026-05-31T20:00:00+00:00"
    source.dispose()
