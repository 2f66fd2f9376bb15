"""The digest in Dagster and on the wire: `daily_digest` materialised in-process sends each user's
email once to a real SMTP server (aiosmtpd on 127.0.0.1) with the right recipient, subject,
groups, counts, both parts and escaped customer names; re-runs send nothing; SMTP down ->
retried, recorded as failed and flagged, then sent by a later run; weekly and off preferences;
a range run delivers each day once; stale days are skipped; STARTTLS (self-signed certificate,
credentials) and implicit TLS through the `insight-pipeline digest` command; and
`daily_digest_sensor` requests a partition exactly once, never before the send hour, and never
the whole history on its first tick."""

from __future__ import annotations

import email
import json
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from insight_pipeline import cli
from insight_pipeline.defs.digest.assets import DIGESTS_DELIVERED, daily_digest
from insight_pipeline.defs.digest.resources import DigestResource, EmailResource
from insight_pipeline.defs.digest.sensors import build_daily_digest_sensor
from insight_pipeline.defs.partitions import daily_partitions
from insight_pipeline.defs.resources import SettingsResource, SourceResource, StoreResource
from insight_pipeline.defs.sink.assets import insights_table
from insight_pipeline.defs.sink.directory import team_directory
from insight_pipeline.lib.store import UPSERT_SCHEMA, InsightStore

DAY = date(2026, 11, 24)  # Tuesday; digests arrive Wednesday
FEED = "http://feed.test/feed"
NASTY = "Smith & <b>Sons</b>"

USERS = pl.DataFrame(
    {
        "user_id": ["M1", "C1", "C2", "C3"],
        "name": ["Mia Manager", "Cal Csm", "Cora Csm", "Cy Csm"],
        "email": ["mia@example.com", "cal@example.com", "cora@example.com", "cy@example.com"],
        "role": ["manager", "csm", "csm", "csm"],
        "manager_id": [None, "M1", "M1", "M1"],
    }
)


# ---------------------------------------------------------------------------- fixtures


@dataclass
class Inbox:
    """What the test SMTP server received, parsed."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(email.message_from_bytes(envelope.content, policy=default_policy))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"].addresses[0].addr_spec == address]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "source"
    directory.mkdir()
    USERS.write_csv(directory / "users.csv")
    return directory


def seed(db_url: str, rows: list[dict[str, object]]) -> None:
    """Write insights through the sink's own store method."""
    store = InsightStore(db_url)
    store.migrate()
    try:
        store.write_insights(
            pl.DataFrame(rows, schema=UPSERT_SCHEMA), pl.DataFrame(schema=UPSERT_SCHEMA)
        )
    finally:
        store.dispose()


def insight(
    user: str,
    customer: str,
    *,
    priority: str = "medium",
    category: str = "usage",
    type_: str = "usage_drop",
    score: float = 0.5,
    raised: date = DAY,
    expires: datetime | None = None,
) -> dict[str, object]:
    key = f"{user}/{customer}/{type_}/{raised}"
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        "customer_id": customer[:6],
        "customer_name": customer,
        "user_id": user,
        "partition_date": raised,
        "last_seen_date": raised,
        "category": category,
        "type": type_,
        "subject": "dau",
        "priority": priority,
        "score": score,
        "title": f"Usage moved at {customer}",
        "summary": "s",
        "evidence": "[]",
        "so_what": None,
        "recommended_action": json.dumps({"description": f"Call {customer}"}),
        "fingerprint": key,
        "score_parts": "{}",
        "expires_at": expires,
    }


STANDARD = [
    insight("C1", NASTY, priority="high", score=0.9),
    insight("C1", "Acme", priority="high", score=0.8, raised=DAY - timedelta(days=3)),
    insight("C1", "Growco", category="opportunity", type_="entitlement_limit"),
    insight("C1", "Slowco", priority="low", score=0.2),
    insight("C2", "Betaco", priority="high", score=0.7),
]


def resources(
    db_url: str, source: Path, *, smtp_url: str, max_attempts: int = 2, max_age_days: int = 100_000
) -> dict[str, object]:
    return {
        "store": StoreResource(url=db_url),
        "source": SourceResource(location=str(source)),
        "settings": SettingsResource(),
        "email": EmailResource(
            smtp_url=smtp_url,
            sender="Insights <insights@example.com>",
            max_attempts=max_attempts,
            backoff_seconds=0.01,
        ),
        "digest": DigestResource(feed_url=FEED, max_age_days=max_age_days),
    }


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A Dagster instance of the test's own, closed when the test ends: none outlives the test
    that made it (nor is left for the next module in the same pytest-xdist worker)."""
    with dg.instance_for_test() as own:
        yield own


def materialize(
    res: dict[str, object], first: date, last: date | None = None
) -> dg.ExecuteInProcessResult:
    """One run of daily_digest for [first, last] (a single-run range when they differ), on an
    ephemeral instance of its own, closed before it returns (the digest's state is the store's
    ledger, not Dagster's)."""
    last = last or first
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.DagsterInstance.ephemeral() as own:
        result = dg.materialize([daily_digest], resources=res, tags=tags, instance=own)
    assert result.success
    return result


def meta(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (event,) = result.get_asset_materialization_events()[-1:]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def body(message: EmailMessage, kind: str) -> str:
    part = message.get_body(preferencelist=(kind,))
    assert part is not None, f"no text/{kind} part"
    return part.get_content()


# ---------------------------------------------------------------------------- the asset


def test_asset_sends_each_user_one_email_with_groups_and_counts(
    store_url: str, source_dir: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    seed(store_url, STANDARD)
    res = resources(store_url, source_dir, smtp_url=f"smtp://127.0.0.1:{port}")

    first = materialize(res, DAY)
    assert sorted(rcpt[0] for _, rcpt in inbox.envelopes) == [
        "cal@example.com",
        "cora@example.com",
        "mia@example.com",
    ]  # C3 has nothing open: no empty email
    info = meta(first)
    assert (info["sent"], info["failed"], info["nothing_to_send"]) == (3, 0, 1)
    assert "127.0.0.1" in str(info["delivery"])

    (cal,) = inbox.to("cal@example.com")
    assert cal["Subject"] == "Your daily insights — 2 high priority · 24 Nov 2026"
    assert cal["To"].addresses[0].display_name == "Cal Csm"
    assert cal["Auto-Submitted"] == "auto-generated"
    assert cal.get_content_type() == "multipart/alternative"
    text, html = body(cal, "plain"), body(cal, "html")
    assert "HIGH PRIORITY (2)" in text and "OPPORTUNITIES (1)" in text and "TRENDS (1)" in text
    assert f"- [new] {NASTY}: Usage moved — Call {NASTY}" in text
    assert "- Acme: Usage moved — Call Acme" in text  # raised 3 days ago: open, not new
    assert "4 open insights on your accounts (3 new today)" in text
    assert "Smith &amp; &lt;b&gt;Sons&lt;/b&gt;" in html and "<b>Sons</b>" not in html
    assert FEED in text and f'href="{FEED}"' in html

    (mia,) = inbox.to("mia@example.com")
    assert mia["Subject"] == "Your daily insights — team: 3 high priority · 24 Nov 2026"
    team = body(mia, "plain")
    assert "YOUR TEAM (5 open insights: 3 high, 1 medium, 1 low)" in team
    assert "Cal Csm" in team and "Cora Csm" in team

    # the ledger holds each sent digest with the Message-ID the server received
    store = InsightStore(store_url)
    ledger = store.digests(DAY, DAY)
    store.dispose()
    assert set(ledger["status"]) == {"sent"}
    assert set(ledger["message_id"]) == {m["Message-ID"] for m in inbox.messages}

    second = materialize(res, DAY)
    assert len(inbox.messages) == 3
    assert (meta(second)["sent"], meta(second)["already_sent"]) == (0, 3)


def test_smtp_down_is_retried_recorded_and_sent_by_a_later_run(
    tmp_path: Path, source_dir: Path
) -> None:
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    seed(db_url, STANDARD[:1])
    port = free_port()  # nothing listens here yet
    res = resources(db_url, source_dir, smtp_url=f"smtp://127.0.0.1:{port}", max_attempts=3)

    down = materialize(res, DAY)  # the run itself succeeds and says what failed
    info = meta(down)
    assert (info["sent"], info["failed"]) == (0, 2)  # Cal and his manager
    assert "C1" in str(info["failures"]) and "ConnectionRefusedError" in str(info["failures"])
    (check,) = down.get_asset_check_evaluations()
    assert check.check_name == DIGESTS_DELIVERED and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    store = InsightStore(db_url)
    ledger = store.digests(DAY, DAY)
    assert ledger["status"].to_list() == ["failed", "failed"]
    assert ledger["attempts"].to_list() == [3, 3]

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        up = materialize(res, DAY)
        assert (meta(up)["sent"], meta(up)["failed"]) == (2, 0)
        assert up.get_asset_check_evaluations()[0].passed
        materialize(res, DAY)
    finally:
        controller.stop()
    assert len(inbox.messages) == 2  # the third run sent nothing again
    ledger = store.digests(DAY, DAY)
    store.dispose()
    assert ledger["status"].to_list() == ["sent", "sent"]
    assert ledger["attempts"].to_list() == [4, 4]


def test_weekly_and_off_preferences(
    tmp_path: Path, source_dir: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    week = [
        insight("C1", f"W{i}", raised=DAY - timedelta(days=i), priority="high" if i == 5 else "low")
        for i in range(7)
    ] + [
        # open during the week, expired before its end: in the weekly digest, not the daily
        insight("C1", "Gone", raised=DAY - timedelta(days=4), expires=datetime(2026, 11, 22,
                                                                                tzinfo=UTC)),
        insight("C2", "Betaco", priority="high"),
    ]  # fmt: skip
    seed(db_url, week)
    store = InsightStore(db_url)
    store.set_digest_preference("C1", "weekly", 2)  # Wednesday mornings: the digest of Tuesday
    store.set_digest_preference("C2", "off")
    store.set_digest_preference("M1", "off")
    store.dispose()
    res = resources(db_url, source_dir, smtp_url=f"smtp://127.0.0.1:{port}")

    materialize(res, DAY - timedelta(days=1), DAY + timedelta(days=1))  # Mon..Wed
    assert [m["To"].addresses[0].addr_spec for m in inbox.messages] == ["cal@example.com"]
    (weekly,) = inbox.messages
    assert weekly["Subject"] == "Your weekly insights — 1 high priority · 18–24 Nov 2026"
    text = body(weekly, "plain")
    assert "8 open insights on your accounts (8 new this week)" in text
    assert "Gone: Usage moved" in text
    assert "W6" in text  # raised on the first day of the week


def test_the_synced_directory_wins_and_inactive_users_get_nothing(
    tmp_path: Path, source_dir: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    seed(db_url, STANDARD)
    store = InsightStore(db_url)
    moved = USERS.filter(pl.col("user_id") != "C2").with_columns(
        pl.when(pl.col("user_id") == "C1")
        .then(pl.lit("cal.new@example.com"))
        .otherwise(pl.col("email"))
        .alias("email")
    )
    store.sync_users(moved)  # what team_directory does: C2 left, Cal changed address
    store.dispose()
    info = meta(
        materialize(resources(db_url, source_dir, smtp_url=f"smtp://127.0.0.1:{port}"), DAY)
    )
    assert info["directory"] == "store users table"
    assert sorted(r[0] for _, r in inbox.envelopes) == ["cal.new@example.com", "mia@example.com"]


def test_a_range_run_delivers_each_day_once(
    tmp_path: Path, source_dir: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    seed(db_url, [insight("C2", "Betaco", raised=DAY - timedelta(days=2))])
    res = resources(db_url, source_dir, smtp_url=f"smtp://127.0.0.1:{port}")
    first, last = DAY - timedelta(days=3), DAY
    result = materialize(res, first, last)
    keys = sorted(e.partition for e in result.get_asset_materialization_events())
    assert keys == [(first + timedelta(days=i)).isoformat() for i in range(4)]
    # Betaco is open from 22 Nov: Cora and her manager get the 22nd, 23rd and 24th
    subjects = sorted((m["To"].addresses[0].addr_spec, m["Subject"]) for m in inbox.messages)
    assert len(subjects) == 6 and len(set(subjects)) == 6
    assert {s.rsplit("· ", 1)[1] for _, s in subjects} == {
        "22 Nov 2026",
        "23 Nov 2026",
        "24 Nov 2026",
    }
    materialize(res, first, last)
    assert len(inbox.messages) == 6


def test_stale_days_are_not_sent(tmp_path: Path, source_dir: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    old = date(2025, 3, 4)
    seed(db_url, [insight("C2", "Betaco", raised=old)])
    res = resources(db_url, source_dir, smtp_url=f"smtp://127.0.0.1:{port}", max_age_days=2)
    info = meta(materialize(res, old))
    assert info["stale_days_skipped"] == [old.isoformat()] and inbox.messages == []


def test_outbox_is_the_default(
    tmp_path: Path, source_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INSIGHTS_SMTP_URL", raising=False)
    monkeypatch.setenv("INSIGHTS_OUTBOX_DIR", str(tmp_path / "outbox"))
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    seed(db_url, STANDARD)
    info = meta(materialize(resources(db_url, source_dir, smtp_url=""), DAY))
    files = sorted((tmp_path / "outbox" / DAY.isoformat()).glob("*.eml"))
    assert info["sent"] == 3 and len(files) == 3 and "outbox" in str(info["delivery"])
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=default_policy)
    assert parsed["Subject"].startswith("Your daily insights")


# ---------------------------------------------------------------------------- TLS via the CLI


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI: no extra Python dependency)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _authenticator(inbox: Inbox):
    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        inbox.logins.append((login, password))
        return AuthResult(success=(login, password) == ("digest@corp", "p@ss:w0rd"))

    return authenticate


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # test server
@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_cli_delivers_over_tls_with_credentials_and_never_prints_them(
    mode: str,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    source_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    tls = (
        {"tls_context": context, "require_starttls": True}
        if mode == "starttls"
        # aiosmtpd only counts STARTTLS as TLS for AUTH; implicit TLS is TLS all the same
        else {"ssl_context": context, "auth_require_tls": False}
    )
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator(inbox),
        auth_required=True,
        **tls,
    )
    controller.start()
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    seed(db_url, STANDARD)
    scheme, query = ("smtp", "starttls=1&") if mode == "starttls" else ("smtps", "")
    url = f"{scheme}://digest%40corp:p%40ss%3Aw0rd@127.0.0.1:{port}?{query}cafile={cert}"
    monkeypatch.setenv("INSIGHTS_SMTP_URL", url)
    monkeypatch.setenv("INSIGHTS_DATABASE_URL", db_url)
    monkeypatch.setenv("INSIGHTS_SOURCE", str(source_dir))
    try:
        assert cli.main(["digest", "--date", DAY.isoformat()]) == 0
        assert cli.main(["digest", "--date", DAY.isoformat()]) == 0
    finally:
        controller.stop()
    out = capsys.readouterr()
    assert "sent=3 " in out.out and "already_sent=3 " in out.out
    assert "p@ss" not in out.out + out.err and "digest@corp:***@" in out.out
    assert len(inbox.messages) == 3 and inbox.logins[0] == ("digest@corp", "p@ss:w0rd")


def test_cli_reports_failures_with_exit_code(
    tmp_path: Path, source_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url = f"duckdb:///{tmp_path / 'store.duckdb'}"
    seed(db_url, STANDARD[:1])
    monkeypatch.setenv("INSIGHTS_SMTP_URL", f"smtp://127.0.0.1:{free_port()}?timeout=2")
    monkeypatch.setenv("INSIGHTS_DATABASE_URL", db_url)
    monkeypatch.setenv("INSIGHTS_SOURCE", str(source_dir))
    monkeypatch.setattr("insight_pipeline.lib.email.time.sleep", lambda _s: None)
    assert cli.main(["digest", "--date", DAY.isoformat()]) == 1


def test_cli_refuses_a_date_that_is_not_a_day(capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error naming the value (exit 2), never a traceback with a failed send's 1."""
    for bad in ("2026-13-01", "24/11/2026"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["digest", "--date", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"'{bad}' is not a day as YYYY-MM-DD" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- the sensor


def _defs(clock_at: list[datetime]) -> tuple[dg.Definitions, dg.SensorDefinition]:
    sensor = build_daily_digest_sensor(clock=lambda: clock_at[0])
    # upstream assets as bare specs: the sensor only needs their keys and partitions
    upstream = [
        dg.AssetSpec(key, partitions_def=daily_partitions)
        for key in (insights_table.key, team_directory.key)
    ]
    defs = dg.Definitions(
        assets=[*upstream, daily_digest],
        sensors=[sensor],
        resources={
            "store": StoreResource(),
            "source": SourceResource(),
            "settings": SettingsResource(),
            "email": EmailResource(),
            "digest": DigestResource(send_hour_utc=6, max_age_days=2),
        },
    )
    return defs, sensor


def _tick(
    sensor: dg.SensorDefinition,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: str | None,
) -> tuple[list[str], str | None]:
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        resources={"digest": DigestResource(send_hour_utc=6, max_age_days=2)},
    ) as context:  # closes the resources it built on the instance
        result = sensor.evaluate_tick(context)
    keys = [r.partition_key for r in result.run_requests or []]
    assert all(r.run_key == f"daily_digest:{r.partition_key}" for r in result.run_requests or [])
    return keys, result.cursor


def _materialized(instance: dg.DagsterInstance, day: date) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="insights_table", partition=day.isoformat())
    )


# Sensor tests run in the past (a daily partition exists only once its day is over), each on
# an instance of its own (the `instance` fixture).


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def test_sensor_requests_a_partition_once_and_not_before_the_send_hour(
    instance: dg.DagsterInstance,
) -> None:
    day = date(2026, 2, 10)
    now = [at(day + timedelta(days=1), 5, 59)]
    defs, sensor = _defs(now)
    _materialized(instance, day)
    keys, cursor = _tick(sensor, defs, instance, None)
    assert keys == []  # 05:59: the day is materialised but not due
    now[0] = at(day + timedelta(days=1), 6)
    keys, cursor = _tick(sensor, defs, instance, cursor)
    assert keys == [day.isoformat()]
    now[0] += timedelta(minutes=5)
    assert _tick(sensor, defs, instance, cursor)[0] == []
    _materialized(instance, day)  # the sink re-runs the day: no second request
    now[0] += timedelta(hours=3)
    assert _tick(sensor, defs, instance, cursor)[0] == []


def test_sensor_waits_for_the_sink_and_catches_up_late_partitions(
    instance: dg.DagsterInstance,
) -> None:
    day = date(2026, 4, 14)
    yesterday = day - timedelta(days=1)
    now = [at(day + timedelta(days=1), 9)]
    defs, sensor = _defs(now)
    keys, cursor = _tick(sensor, defs, instance, None)
    assert keys == []  # due, but insights_table has not materialised the day
    _materialized(instance, day)
    _materialized(instance, yesterday)
    keys, cursor = _tick(sensor, defs, instance, cursor)
    assert keys == [yesterday.isoformat(), day.isoformat()]  # within max_age_days, each once
    assert _tick(sensor, defs, instance, cursor)[0] == []
    assert json.loads(cursor or "{}") == {"requested": [yesterday.isoformat(), day.isoformat()]}
    # days later the cursor has forgotten what can never be due again
    later = day + timedelta(days=3)
    now[0] = at(later + timedelta(days=1), 9)
    _materialized(instance, later)
    keys, cursor = _tick(sensor, defs, instance, cursor)
    assert keys == [later.isoformat()]
    assert json.loads(cursor or "{}") == {"requested": [later.isoformat()]}


def test_sensor_first_tick_does_not_request_history(instance: dg.DagsterInstance) -> None:
    day = date(2026, 7, 14)
    defs, sensor = _defs([at(day + timedelta(days=1), 7)])
    for age in range(40):
        _materialized(instance, day - timedelta(days=age))
    keys, _cursor = _tick(sensor, defs, instance, None)
    assert keys == [(day - timedelta(days=1)).isoformat(), day.isoformat()]


def test_digest_definitions() -> None:
    defs, sensor = _defs([datetime.now(UTC)])
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("daily_digest"))
    assert node.group_name == "digest"
    assert node.parent_keys == {dg.AssetKey("insights_table"), dg.AssetKey("team_directory")}
    assert node.partitions_def == daily_partitions
    assert daily_digest.backfill_policy == dg.BackfillPolicy.single_run()
    assert defs.resolve_sensor_def("daily_digest_sensor") is not None
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
