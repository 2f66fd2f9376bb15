"""The sample-data generator: deterministic output (same seed, any chunk size, Parquet or CSV),
every contract table and column with its type, a ground truth that points at real customers and
days and whose planted patterns really show in the data (usage drops, churn), and enough clean
accounts for detectors to prove they stay quiet."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from insight_pipeline.lib.contract import CONTRACT, Source, quarantine
from insight_pipeline.sample import FEATURES, METRICS, PATTERN_TYPES, generate_sample

ACCOUNTS, DAYS, SEED = 300, 240, 3
END = date(2025, 3, 31)
START = END - timedelta(days=DAYS - 1)

TEXT, DATE, FLOAT, INT = pl.String, pl.Date, pl.Float64, pl.Int64
TS = pl.Datetime("us", "UTC")
# Section 1 of the data contract, written out here so the test reads like the contract.
CONTRACT_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "customers": {
        "customer_id": TEXT,
        "name": TEXT,
        "industry": TEXT,
        "segment": TEXT,
        "region": TEXT,
        "csm_user_id": TEXT,
        "arr": FLOAT,
        "plan": TEXT,
        "contract_start": DATE,
        "renewal_date": DATE,
        "churned_on": DATE,
    },
    "users": {"user_id": TEXT, "name": TEXT, "email": TEXT, "role": TEXT, "manager_id": TEXT},
    "usage_daily": {"customer_id": TEXT, "date": DATE, "metric": TEXT, "value": FLOAT},
    "entitlements": {"customer_id": TEXT, "metric": TEXT, "entitled_value": FLOAT},
    "feature_usage_daily": {
        "customer_id": TEXT,
        "date": DATE,
        "feature": TEXT,
        "active_users": INT,
    },
    "contacts": {
        "contact_id": TEXT,
        "customer_id": TEXT,
        "name": TEXT,
        "email": TEXT,
        "title": TEXT,
        "role": TEXT,
        "started_on": DATE,
        "left_on": DATE,
    },
    "meetings": {
        "meeting_id": TEXT,
        "customer_id": TEXT,
        "start_at": TS,
        "meeting_type": TEXT,
        "sentiment": FLOAT,
    },
    "meeting_attendees": {"meeting_id": TEXT, "contact_id": TEXT},
    "communications": {
        "message_id": TEXT,
        "customer_id": TEXT,
        "contact_id": TEXT,
        "sent_at": TS,
        "direction": TEXT,
        "channel": TEXT,
    },
    "support_tickets": {
        "ticket_id": TEXT,
        "customer_id": TEXT,
        "opened_at": TS,
        "closed_at": TS,
        "priority": TEXT,
        "csat": FLOAT,
        "topic": TEXT,
    },
    "nps_responses": {
        "customer_id": TEXT,
        "contact_id": TEXT,
        "responded_on": DATE,
        "score": FLOAT,
        "comment": TEXT,
    },
    "health_scores": {"customer_id": TEXT, "date": DATE, "score": FLOAT},
}
DATED = {
    "usage_daily": "date",
    "feature_usage_daily": "date",
    "meetings": "start_at",
    "communications": "sent_at",
    "support_tickets": "opened_at",
    "nps_responses": "responded_on",
    "health_scores": "date",
}
INSIGHT_TYPES = set(PATTERN_TYPES) | {"churn"}


def _generate(out: Path, **kwargs: object) -> dict[str, int]:
    args: dict[str, object] = {"accounts": ACCOUNTS, "days": DAYS, "seed": SEED, "end_date": END}
    return generate_sample(out, **{**args, **kwargs})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    _generate(out)
    return out


def _read(directory: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(directory / f"{table}.parquet")


def _truth(directory: Path) -> pl.DataFrame:
    return pl.read_csv(
        directory / "ground_truth.csv",
        schema_overrides={"subject": pl.String, "start_date": pl.Date, "end_date": pl.Date},
    ).with_columns(pl.col("subject").fill_null(""))


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_same_seed_gives_identical_files(sample: Path, tmp_path: Path) -> None:
    _generate(tmp_path)
    assert _digests(tmp_path) == _digests(sample)
    assert len(_digests(sample)) == len(CONTRACT_COLUMNS) + 1


def test_different_seed_gives_different_data(sample: Path, tmp_path: Path) -> None:
    _generate(tmp_path, seed=SEED + 1)
    for table in ("customers", "usage_daily", "meetings", "ground_truth.csv"):
        name = table if table.endswith(".csv") else f"{table}.parquet"
        assert (tmp_path / name).read_bytes() != (sample / name).read_bytes(), table


def test_chunk_size_does_not_change_output(sample: Path, tmp_path: Path) -> None:
    counts = _generate(tmp_path, chunk_size=100)  # three chunks, the last one partial
    for table in CONTRACT_COLUMNS:
        assert _read(tmp_path, table).equals(_read(sample, table)), table
        assert counts[table] == _read(sample, table).height
    assert (tmp_path / "ground_truth.csv").read_bytes() == (
        sample / "ground_truth.csv"
    ).read_bytes()


def test_every_contract_table_and_column_with_its_type(sample: Path) -> None:
    for table, columns in CONTRACT_COLUMNS.items():
        frame = _read(sample, table)
        assert frame.height > 0, table
        assert {c: frame.schema[c] for c in columns} == columns, table


def test_the_pipeline_reads_the_sample_without_quarantining_anything(sample: Path) -> None:
    source = Source(str(sample))
    frames = {name: source.read(name) for name in CONTRACT}
    known = {"customers": frames["customers"]["customer_id"], "users": frames["users"]["user_id"]}
    for name, spec in CONTRACT.items():
        frame = frames[name]
        assert frame is not None, name
        _, bad, _ = quarantine(spec, frame, known)
        assert bad.height == 0, (name, bad.head(3))


def test_ids_link_up(sample: Path) -> None:
    customers, users = _read(sample, "customers"), _read(sample, "users")
    contacts, meetings = _read(sample, "contacts"), _read(sample, "meetings")
    assert (
        customers["csm_user_id"]
        .is_in(users.filter(pl.col("role") == "csm")["user_id"].implode())
        .all()
    )
    assert set(users["role"]) == {"csm", "manager", "leader"}
    assert users.filter(pl.col("manager_id").is_null())["role"].to_list() == ["leader"]
    attendees = (
        _read(sample, "meeting_attendees")
        .join(meetings.select("meeting_id", "customer_id"), on="meeting_id")
        .join(contacts.select("contact_id", pl.col("customer_id").alias("of")), on="contact_id")
    )
    assert attendees.height == _read(sample, "meeting_attendees").height
    assert (attendees["customer_id"] == attendees["of"]).all()
    per_meeting = attendees.group_by("meeting_id").len()["len"]
    assert per_meeting.min() >= 2 and per_meeting.max() <= 4
    per_account = contacts.group_by("customer_id").len()["len"]
    assert per_account.min() >= 3 and per_account.max() <= 9  # 3-8, plus a new executive


def test_ground_truth_points_at_customers_and_days_in_the_history(sample: Path) -> None:
    truth = _truth(sample)
    customers, contacts = _read(sample, "customers"), _read(sample, "contacts")
    assert truth["customer_id"].is_in(customers["customer_id"].implode()).all()
    assert set(truth["type"]) == INSIGHT_TYPES  # every planted type occurs at this size
    assert truth["start_date"].is_between(START, END).all()
    ended = truth.filter(pl.col("end_date").is_not_null())
    assert (ended["end_date"] >= ended["start_date"]).all() and (ended["end_date"] <= END).all()
    metric_types = {"usage_drop", "usage_spike", "adoption_trend", "declining_usage"}
    assert truth.filter(pl.col("type").is_in(metric_types))["subject"].is_in(METRICS[:4]).all()
    assert truth.filter(pl.col("type") == "feature_discovery")["subject"].is_in(FEATURES).all()
    people = truth.filter(pl.col("type").is_in(["champion_left", "stakeholder_shift"]))
    joined = people.join(contacts, left_on="subject", right_on="contact_id", suffix="_c")
    assert joined.height == people.height
    assert (joined["customer_id"] == joined["customer_id_c"]).all()
    left = joined.filter(pl.col("type") == "champion_left")
    assert (left["left_on"] == left["start_date"]).all()
    assert left["role"].is_in(["champion", "executive_sponsor"]).all()
    churn = truth.filter(pl.col("type") == "churn").join(customers, on="customer_id")
    assert (churn["churned_on"] == churn["start_date"]).all()
    assert churn.height == customers["churned_on"].is_not_null().sum()


def _daily(usage: pl.DataFrame, customer: dict[str, object], metric: str) -> pl.DataFrame:
    """One metric of one customer as a dense daily series, missing rows read as 0."""
    first = max(START, customer["contract_start"])  # type: ignore[type-var]
    churned = customer["churned_on"]
    last = churned - timedelta(days=1) if isinstance(churned, date) else END
    days = pl.DataFrame({"date": pl.date_range(first, last, eager=True)})
    rows = usage.filter(
        (pl.col("customer_id") == customer["customer_id"]) & (pl.col("metric") == metric)
    )
    return days.join(rows.select("date", "value"), on="date", how="left").fill_null(0.0)


def test_a_planted_usage_drop_shows_in_usage_daily(sample: Path) -> None:
    usage, customers = _read(sample, "usage_daily"), _read(sample, "customers")
    drops = _truth(sample).filter(pl.col("type") == "usage_drop")
    assert drops.height >= 5
    for row in drops.iter_rows(named=True):
        customer = customers.filter(pl.col("customer_id") == row["customer_id"]).row(0, named=True)
        series = _daily(usage, customer, row["subject"])
        start = row["start_date"]
        before = series.filter(pl.col("date").is_between(start - timedelta(days=28), start, "left"))
        after = series.filter(pl.col("date") >= start)
        assert after["value"].mean() < 0.6 * before["value"].mean(), row


def test_nothing_is_dated_on_or_after_churn_or_before_contract_start(sample: Path) -> None:
    customers = _read(sample, "customers").select("customer_id", "churned_on", "contract_start")
    for table, column in DATED.items():
        frame = _read(sample, table).join(customers, on="customer_id")
        day = frame[column].cast(pl.Date)
        assert not (day >= frame["churned_on"]).fill_null(False).any(), table
        assert not (day < frame["contract_start"]).any(), table
    tickets = _read(sample, "support_tickets").join(customers, on="customer_id")
    assert not (tickets["closed_at"].cast(pl.Date) >= tickets["churned_on"]).fill_null(False).any()


def test_churn_and_clean_accounts(sample: Path) -> None:
    customers, truth = _read(sample, "customers"), _truth(sample)
    churned = customers.filter(pl.col("churned_on").is_not_null())
    assert 0.07 * ACCOUNTS <= churned.height <= 0.13 * ACCOUNTS
    assert (churned["churned_on"] < START + timedelta(days=DAYS // 2)).any()
    clean = customers.filter(~pl.col("customer_id").is_in(truth["customer_id"].implode()))
    assert clean.height >= 0.3 * ACCOUNTS
    assert clean["churned_on"].is_null().all()
    # What a detector would flag on a clean account must not be there by chance.
    clean_ids = clean["customer_id"].implode()
    nps = _read(sample, "nps_responses").filter(pl.col("customer_id").is_in(clean_ids))
    assert nps["score"].is_between(7, 8).all()
    tickets = _read(sample, "support_tickets").filter(pl.col("customer_id").is_in(clean_ids))
    assert not (tickets["priority"] == "urgent").any()


def test_csv_format_holds_the_same_data(sample: Path, tmp_path: Path) -> None:
    counts = _generate(tmp_path, fmt="csv")
    assert not list(tmp_path.glob("*.parquet"))
    for table in CONTRACT_COLUMNS:
        assert (tmp_path / f"{table}.csv").exists()
        assert counts[table] == _read(sample, table).height
    csv_source, parquet_source = Source(str(tmp_path)), Source(str(sample))
    for table in ("usage_daily", "meetings", "support_tickets", "contacts", "customers"):
        assert csv_source.read(table).equals(parquet_source.read(table)), table  # type: ignore[union-attr]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        generate_sample(tmp_path, accounts=10, days=30, fmt="json")
    with pytest.raises(ValueError, match="chunk_size"):
        generate_sample(tmp_path, accounts=10, days=30, chunk_size=150)
