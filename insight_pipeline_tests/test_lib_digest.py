"""Digest selection and grouping (lib/digest.py) and rendering and delivery (lib/email.py):
ranking with the per-CSM cap, groups and counts, transitive team sections, daily/weekly/off
preferences, subjects, escaping of customer data, header-injection safety, SMTP URL parsing
and redaction, retries with backoff, the outbox, and the idempotent ledger against a real
store on both backends."""

from __future__ import annotations

import ast
import email
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import event

from insight_pipeline.lib.digest import (
    build_digests,
    digest_window,
    due_users,
    one_line,
    rank_items,
    resolve_preferences,
    team_pairs,
)
from insight_pipeline.lib.email import (
    DeliveryError,
    OutboxTransport,
    SmtpConfig,
    deliver_digests,
    message_id_for,
    render_digest,
    send_with_retry,
    subject_for,
)
from insight_pipeline.lib.store import InsightStore

DAY = date(2026, 11, 24)  # a Tuesday: its digest arrives on Wednesday 25 Nov
FEED = "http://feed.test/feed"
SENDER = "Insights <insights@example.com>"

USERS = pl.DataFrame(
    {
        "user_id": ["L1", "M1", "C1", "C2", "C3"],
        "name": ["Lee Leader", "Mia Manager", "Cal Csm", "Cora Csm", "Cy Csm"],
        "email": ["lee@example.com", "mia@example.com", "cal@example.com", "cora@example.com", ""],
        "role": ["leader", "manager", "csm", "csm", "csm"],
        "manager_id": [None, "L1", "M1", "M1", "L1"],
    }
)


def insight(
    user: str,
    customer: str,
    *,
    priority: str = "medium",
    score: float = 0.5,
    category: str = "usage",
    type_: str = "usage_drop",
    raised: date = DAY,
    title: str | None = None,
    action: str | None = "Call them",
    echo_of: str | None = None,
) -> dict[str, object]:
    """One candidate row as `InsightStore.digest_insights` returns it."""
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}/{customer}/{type_}/{raised}/{score}")),
        "customer_id": customer.lower()[:8],
        "customer_name": customer,
        "user_id": user,
        "partition_date": raised,
        "last_seen_date": DAY,
        "category": category,
        "type": type_,
        "priority": priority,
        "score": score,
        "title": title or f"Usage down at {customer}",
        "summary": "summary",
        "recommended_action": json.dumps({"description": action}) if action else None,
        "status": "new",
        "score_parts": json.dumps({"severity": 0.5, "echo_of": echo_of}),
    }


CANDIDATE_SCHEMA = {
    "id": pl.String,
    "customer_id": pl.String,
    "customer_name": pl.String,
    "user_id": pl.String,
    "partition_date": pl.Date,
    "last_seen_date": pl.Date,
    "category": pl.String,
    "type": pl.String,
    "priority": pl.String,
    "score": pl.Float64,
    "title": pl.String,
    "summary": pl.String,
    "recommended_action": pl.String,
    "status": pl.String,
    "score_parts": pl.String,
}


def frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    """Candidates typed like `InsightStore.digest_insights` returns them."""
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)


# ---------------------------------------------------------------------------- selection


def test_items_rank_by_priority_then_score_and_cap_per_user() -> None:
    rows = [insight("C1", f"Acct {i}", priority="low", score=0.9 - i / 100) for i in range(8)]
    rows += [insight("C1", f"Big {i}", priority="high", score=0.3 + i / 100) for i in range(3)]
    rows += [insight("C1", f"Mid {i}", priority="medium", score=0.5) for i in range(3)]
    rows += [insight("C2", "Other", priority="low", score=0.1)]
    window = digest_window("daily", DAY)
    (cal,) = build_digests(window, USERS, frame(rows), ["C1"], cap=10)
    assert cal.open_total == 14 and cal.shown == 10 and cal.more == 4
    high = cal.groups[0]
    assert high.key == "high" and [i.customer for i in high.items] == ["Big 2", "Big 1", "Big 0"]
    trends = cal.groups[-1]
    assert trends.key == "trends" and trends.total == 11 and len(trends.items) == 7
    # medium before low, and the low ones kept are the best-scored
    customers = [i.customer for i in trends.items]
    assert set(customers[:3]) == {"Mid 0", "Mid 1", "Mid 2"}  # equal scores: order by id
    assert customers[3:] == ["Acct 0", "Acct 1", "Acct 2", "Acct 3"]


@pytest.mark.parametrize(
    ("category", "type_", "priority", "group"),
    [
        ("risk", "champion_left", "high", "high"),
        ("opportunity", "referral_candidate", "high", "high"),
        ("opportunity", "entitlement_limit", "medium", "opportunities"),
        ("usage", "adoption_trend", "low", "opportunities"),
        ("usage", "declining_usage", "medium", "trends"),
        ("engagement", "going_dark", "low", "trends"),
    ],
)
def test_groups(category: str, type_: str, priority: str, group: str) -> None:
    row = insight("C1", "Acme", category=category, type_=type_, priority=priority)
    ranked = rank_items(frame([row]), digest_window("daily", DAY))
    assert ranked["group"].to_list() == [group]


def test_line_says_customer_title_action_without_repeating_the_customer() -> None:
    rows = [
        insight("C1", "Acme", title="Logins down 40% at Acme", action="Call the champion"),
        insight("C1", "Zeta", title="Zeta renewal in 30 days", action=None, score=0.1),
    ]
    (cal,) = build_digests(digest_window("daily", DAY), USERS, frame(rows), ["C1"], cap=10)
    first, second = cal.groups[0].items
    assert (first.customer, first.title, first.action) == (
        "Acme",
        "Logins down 40%",
        "Call the champion",
    )
    assert (second.title, second.action) == ("Zeta renewal in 30 days", "")


def test_is_new_marks_insights_raised_within_the_window() -> None:
    rows = [insight("C1", "Old", raised=DAY - timedelta(days=3)), insight("C1", "Fresh")]
    (daily,) = build_digests(digest_window("daily", DAY), USERS, frame(rows), ["C1"], cap=10)
    assert {i.customer: i.is_new for i in daily.groups[0].items} == {"Old": False, "Fresh": True}
    assert daily.new_total == 1
    (weekly,) = build_digests(digest_window("weekly", DAY), USERS, frame(rows), ["C1"], cap=10)
    assert weekly.new_total == 2


def test_team_pairs_are_transitive_and_survive_cycles() -> None:
    pairs = team_pairs(USERS)
    reports = {m: set(g["user_id"]) for (m,), g in pairs.group_by("manager_id")}
    assert reports == {"L1": {"M1", "C1", "C2", "C3"}, "M1": {"C1", "C2"}}
    cyclic = pl.DataFrame(
        {"user_id": ["A", "B"], "manager_id": ["B", "A"], "name": ["A", "B"]},
    )
    assert set(team_pairs(cyclic).iter_rows()) == {("A", "B"), ("B", "A")}


def test_managers_get_team_counts_by_csm_and_priority_and_top_items() -> None:
    rows = [
        insight("C1", "A1", priority="high", score=0.9),
        insight("C1", "A2", priority="low", score=0.2, raised=DAY - timedelta(days=2)),
        insight("C2", "B1", priority="medium", score=0.7),
        insight("C3", "X1", priority="high", score=0.95),
    ]
    digests = build_digests(
        digest_window("daily", DAY), USERS, frame(rows), ["L1", "M1", "C3"], cap=10, team_top=2
    )
    by_user = {d.user_id: d for d in digests}
    assert "C3" not in by_user  # no email address: nothing to send
    mia = by_user["M1"].team
    assert mia is not None
    assert [(m.user_id, m.high, m.medium, m.low, m.new) for m in mia.members] == [
        ("C1", 1, 0, 1, 1),
        ("C2", 0, 1, 0, 1),
    ]
    assert [i.customer for i in mia.top] == ["A1", "B1"]
    lee = by_user["L1"].team
    assert lee is not None and lee.totals == {
        "high": 2,
        "medium": 1,
        "low": 1,
        "new": 3,
        "total": 4,
    }
    assert [i.customer for i in lee.top] == ["X1", "A1"]
    assert by_user["L1"].open_total == 0 and by_user["L1"].groups == []


def test_empty_digests_are_not_built() -> None:
    assert build_digests(digest_window("daily", DAY), USERS, frame([]), ["C1", "M1"], cap=10) == []


def test_preferences_default_daily_weekly_on_the_arrival_weekday_and_off() -> None:
    stored = pl.DataFrame(
        {
            "user_id": ["C1", "C2", "M1"],
            "frequency": ["weekly", "off", "weekly"],
            "weekday": [2, None, 0],
        },
        schema_overrides={"weekday": pl.Int16},
    )
    prefs = resolve_preferences(USERS, stored)
    assert due_users(prefs, "daily", DAY) == ["C3", "L1"]
    # DAY is a Tuesday; its digest arrives Wednesday (weekday 2)
    assert due_users(prefs, "weekly", DAY) == ["C1"]
    assert due_users(prefs, "weekly", DAY + timedelta(days=5)) == ["M1"]


def test_windows() -> None:
    daily, weekly = digest_window("daily", DAY), digest_window("weekly", DAY)
    midnight = datetime(2026, 11, 25, tzinfo=UTC)
    assert daily.first_day == DAY and daily.as_of == daily.open_after == midnight
    assert weekly.first_day == date(2026, 11, 18)
    assert weekly.open_after == datetime(2026, 11, 18, tzinfo=UTC) and weekly.as_of == midnight
    with pytest.raises(ValueError, match="kind"):
        digest_window("monthly", DAY)


# ---------------------------------------------------------------------------- rendering


def _digest(rows: list[dict[str, object]], user: str = "C1", kind: str = "daily"):
    (digest,) = build_digests(digest_window(kind, DAY), USERS, frame(rows), [user], cap=10)
    return digest


@pytest.mark.parametrize(
    ("rows", "user", "kind", "subject"),
    [
        (
            [insight("C1", "A", priority="high"), insight("C1", "B", priority="high")],
            "C1",
            "daily",
            "Your daily insights — 2 high priority · 24 Nov 2026",
        ),
        ([insight("C1", "A")], "C1", "daily", "Your daily insights — 1 insight · 24 Nov 2026"),
        (
            [insight("C1", "A"), insight("C1", "B", score=0.1)],
            "C1",
            "weekly",
            "Your weekly insights — 2 insights · 18–24 Nov 2026",
        ),
        (
            [insight("C1", "A", priority="high")],
            "M1",
            "daily",
            "Your daily insights — team: 1 high priority · 24 Nov 2026",
        ),
    ],
)
def test_subject(rows: list[dict[str, object]], user: str, kind: str, subject: str) -> None:
    assert subject_for(_digest(rows, user, kind)) == subject


def _parts(message: EmailMessage) -> tuple[str, str]:
    parsed = email.message_from_bytes(message.as_bytes(), policy=default_policy)
    text = parsed.get_body(preferencelist=("plain",)).get_content()
    html = parsed.get_body(preferencelist=("html",)).get_content()
    return text, html


def test_an_echo_says_what_it_repeats_in_both_parts() -> None:
    """An insight repeating an open one (score_parts.echo_of) says so on its line, in the text
    and the HTML part (escaped); news does not."""
    rows = [
        insight("C1", "Acme", title="Logins declining", echo_of="usage_drop <b>logins</b>"),
        insight("C1", "Zeta", title="Zeta went silent", echo_of="silent_account", score=0.4),
        insight("C1", "Kilo", title="Kilo usage down", score=0.3),
    ]
    digest = _digest(rows)
    repeats = {item.customer: item.repeats for group in digest.groups for item in group.items}
    assert repeats == {"Acme": "usage drop in <b>logins</b>", "Zeta": "silent account", "Kilo": ""}
    message = render_digest(
        digest, sender=SENDER, feed_url=FEED, message_id="<m@example.com>", now=datetime.now(UTC)
    )
    text, html = _parts(message)
    assert "Acme: Logins declining (repeats the open usage drop in <b>logins</b>)" in text
    assert "Zeta: Zeta went silent (repeats the open silent account)" in text
    assert text.count("repeats the open") == 2
    assert "(repeats the open usage drop in &lt;b&gt;logins&lt;/b&gt;)" in html
    assert "<b>logins" not in html


def test_a_group_whose_items_all_fell_below_the_top_says_they_are_in_the_feed() -> None:
    """Ten high-priority items fill the day's top ten: the trends group has none of its own
    to show, and both parts say where its items are rather than a heading over nothing."""
    rows = [insight("C1", f"Big {i}", priority="high", score=0.9) for i in range(10)]
    rows += [insight("C1", f"Low {i}", priority="low", score=0.1) for i in range(2)]
    digest = _digest(rows)
    trends = digest.groups[-1]
    assert trends.key == "trends" and trends.total == 2 and not trends.items
    message = render_digest(
        digest, sender=SENDER, feed_url=FEED, message_id="<m@example.com>", now=datetime.now(UTC)
    )
    text, html = _parts(message)
    assert "TRENDS (0 of 2)\n2 in your feed, below today's top 10." in text
    assert "2 in your feed, below today" in html


def test_render_is_multipart_with_escaped_customer_data() -> None:
    nasty = "<script>alert('x')</script> & Sons"
    digest = _digest([insight("C1", nasty, priority="high", title="Logins down", action="Call")])
    message = render_digest(
        digest, sender=SENDER, feed_url=FEED, message_id="<m@example.com>", now=datetime.now(UTC)
    )
    assert message.get_content_type() == "multipart/alternative"
    text, html = _parts(message)
    assert nasty in text  # plain text shows the name as typed
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Sons" in html
    assert f'href="{FEED}#insight-' in html
    assert "High priority" in html and "HIGH PRIORITY (1)" in text


def test_no_header_injection_from_names() -> None:
    users = USERS.with_columns(
        pl.when(pl.col("user_id") == "C1")
        .then(pl.lit("Cal\r\nBcc: victim@evil.test\nX-Evil: 1"))
        .otherwise(pl.col("name"))
        .alias("name")
    )
    (digest,) = build_digests(
        digest_window("daily", DAY),
        users,
        frame([insight("C1", "Acme\r\nX-Bad: 1")]),
        ["C1"],
        cap=10,
    )
    message = render_digest(
        digest, sender=SENDER, feed_url=FEED, message_id="<m@example.com>", now=datetime.now(UTC)
    )
    raw = message.as_bytes()
    parsed = email.message_from_bytes(raw, policy=default_policy)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None and parsed["X-Bad"] is None
    assert parsed["To"].addresses[0].addr_spec == "cal@example.com"
    assert "Bcc: victim@evil.test" in parsed["To"].addresses[0].display_name


@pytest.mark.parametrize(
    "address", ["cal@example.com\r\nBcc: x@evil.test", "not-an-address", "a@b@c", "<>"]
)
def test_bad_recipient_addresses_are_refused(address: str) -> None:
    users = USERS.with_columns(
        pl.when(pl.col("user_id") == "C1").then(pl.lit(address)).otherwise("email").alias("email")
    )
    (digest,) = build_digests(
        digest_window("daily", DAY), users, frame([insight("C1", "Acme")]), ["C1"], cap=10
    )
    with pytest.raises(ValueError):
        render_digest(
            digest, sender=SENDER, feed_url=FEED, message_id="<m@x>", now=datetime.now(UTC)
        )


def test_one_line() -> None:
    assert one_line("a\r\nb\tc\u2028d\x00e  f") == "a b c d e f"
    assert one_line(None) == ""


def test_message_id_is_stable_and_safe() -> None:
    digest = _digest([insight("C1", "A")])
    first = message_id_for(digest, SENDER)
    assert first == message_id_for(digest, SENDER)
    assert first.startswith("<digest.daily.2026-11-24.C1.") and first.endswith("@example.com>")


# ---------------------------------------------------------------------------- SMTP config


@pytest.mark.parametrize(
    ("url", "mode", "port", "user", "password"),
    [
        ("smtp://mail.test", "plain", 25, None, None),
        ("smtp://u:p@mail.test:2525", "plain", 2525, "u", "p"),
        ("smtp://u%40x:p%3Aw@mail.test?starttls=1", "starttls", 587, "u@x", "p:w"),
        ("smtps://mail.test", "ssl", 465, None, None),
    ],
)
def test_smtp_url(url: str, mode: str, port: int, user: str | None, password: str | None) -> None:
    config = SmtpConfig.from_url(url, environ={})
    assert (config.mode, config.port, config.username, config.password) == (
        mode,
        port,
        user,
        password,
    )


def test_smtp_credentials_from_environment_and_never_shown() -> None:
    config = SmtpConfig.from_url(
        "smtp://mail.test?starttls=1",
        environ={"INSIGHTS_SMTP_USER": "bot", "INSIGHTS_SMTP_PASSWORD": "s3cret"},
    )
    assert (config.username, config.password) == ("bot", "s3cret")
    assert "s3cret" not in repr(config) and "s3cret" not in config.redacted()
    assert config.redacted() == "smtp://bot:***@mail.test:587?starttls=1"
    with pytest.raises(ValueError, match="smtp://"):
        SmtpConfig.from_url("http://mail.test")


# ---------------------------------------------------------------------------- delivery


class FlakyTransport:
    """Fails the first `failures` sends (transient unless `permanent`)."""

    def __init__(self, failures: int = 0, permanent: bool = False) -> None:
        self.failures, self.permanent = failures, permanent
        self.sent: list[EmailMessage] = []
        self.calls = 0

    def send(self, message: EmailMessage) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise DeliveryError("451 try later", permanent=self.permanent)
        self.sent.append(message)

    def describe(self) -> str:
        return "flaky"

    def close(self) -> None:
        return None


def test_retry_backs_off_exponentially_then_gives_up() -> None:
    waits: list[float] = []
    ok = send_with_retry(
        FlakyTransport(failures=2),
        EmailMessage(),
        max_attempts=3,
        backoff_seconds=1.5,
        sleep=waits.append,
    )
    assert ok.ok and ok.attempts == 3 and waits == [1.5, 3.0]
    waits.clear()
    bad = send_with_retry(
        FlakyTransport(failures=9),
        EmailMessage(),
        max_attempts=4,
        backoff_seconds=1,
        sleep=waits.append,
    )
    assert not bad.ok and bad.attempts == 4 and waits == [1, 2, 4] and "451" in (bad.error or "")
    waits.clear()
    permanent = send_with_retry(
        FlakyTransport(failures=9, permanent=True),
        EmailMessage(),
        max_attempts=4,
        backoff_seconds=1,
        sleep=waits.append,
    )
    assert not permanent.ok and permanent.attempts == 1 and waits == []


def test_outbox_writes_one_file_per_digest(tmp_path: Path) -> None:
    digest = _digest([insight("C1", "A")])
    outbox = OutboxTransport(tmp_path)
    message = render_digest(
        digest,
        sender=SENDER,
        feed_url=FEED,
        message_id=message_id_for(digest, SENDER),
        now=datetime.now(UTC),
    )
    outbox.send(message)
    outbox.send(message)
    files = list(tmp_path.rglob("*.eml"))
    assert len(files) == 1 and files[0].parent.name == "2026-11-24"
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=default_policy)
    assert parsed["To"].addresses[0].addr_spec == "cal@example.com"


def test_ledger_sends_once_retries_failures_and_counts_attempts(store: InsightStore) -> None:
    digests = build_digests(
        digest_window("daily", DAY),
        USERS,
        frame([insight("C1", "A"), insight("C2", "B")]),
        ["C1", "C2"],
        cap=10,
    )
    down = FlakyTransport(failures=99)
    report = deliver_digests(
        store,
        down,
        digests,
        sender=SENDER,
        feed_url=FEED,
        max_attempts=2,
        backoff_seconds=0,
        sleep=lambda _s: None,
    )
    assert report.counts()["failed"] == 2 and down.calls == 4
    ledger = store.digests(DAY, DAY)
    assert ledger["status"].to_list() == ["failed", "failed"]
    assert ledger["attempts"].to_list() == [2, 2] and ledger["last_error"][0] == "451 try later"

    up = FlakyTransport()
    report = deliver_digests(
        store, up, digests, sender=SENDER, feed_url=FEED, sleep=lambda _s: None
    )
    assert report.counts()["sent"] == 2 and len(up.sent) == 2
    ledger = store.digests(DAY, DAY)
    assert ledger["status"].to_list() == ["sent", "sent"] and ledger["attempts"].to_list() == [3, 3]
    assert ledger["message_id"].to_list() == [m["Message-ID"] for m in up.sent]
    assert ledger["last_error"].to_list() == [None, None]

    again = FlakyTransport()
    report = deliver_digests(store, again, digests, sender=SENDER, feed_url=FEED)
    assert report.counts()["already_sent"] == 2 and again.calls == 0


def test_a_live_claim_blocks_a_concurrent_send_and_a_stale_one_does_not(
    store: InsightStore,
) -> None:
    (digest,) = build_digests(
        digest_window("daily", DAY), USERS, frame([insight("C1", "A")]), ["C1"], cap=10
    )
    now = datetime(2026, 11, 25, 6, tzinfo=UTC)
    claim = store.claim_digest(
        "C1", DAY, "daily", message_id="<x@y>", recipient="cal@example.com", subject="s",
        item_count=1, now=now, stale_before=now - timedelta(minutes=15),
    )  # fmt: skip
    assert claim == ("<x@y>", 0)  # a run that claimed it and then died
    transport = FlakyTransport()
    soon = deliver_digests(
        store,
        transport,
        [digest],
        sender=SENDER,
        feed_url=FEED,
        clock=lambda: now + timedelta(minutes=5),
    )
    assert soon.counts()["in_flight"] == 1 and transport.calls == 0
    later = deliver_digests(
        store,
        transport,
        [digest],
        sender=SENDER,
        feed_url=FEED,
        clock=lambda: now + timedelta(hours=1),
    )
    assert later.counts()["sent"] == 1 and transport.sent[0]["Message-ID"] == "<x@y>"


class PeekingTransport(FlakyTransport):
    """At each send, reads the ledger from ANOTHER process (so the file must be free) and
    raises a bug (not a DeliveryError) on send number `crash_at`."""

    def __init__(self, path: Path, crash_at: int = 0) -> None:
        super().__init__()
        self.path, self.crash_at = path, crash_at
        self.seen: list[list[tuple[str, str, bool]]] = []

    def send(self, message: EmailMessage) -> None:
        script = (
            "import duckdb,sys; c=duckdb.connect(sys.argv[1]); print(c.sql('select user_id, "
            "status, claimed_at is not null from digests order by user_id').fetchall())"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(self.path)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr  # the file is not held during a send
        self.seen.append([tuple(row) for row in ast.literal_eval(out.stdout)])
        if self.calls + 1 == self.crash_at:
            raise RuntimeError("a bug in the transport")
        super().send(message)


def test_duckdb_delivery_opens_the_file_once_per_digest_and_never_across_a_send(
    tmp_path: Path,
) -> None:
    path = tmp_path / "insights.duckdb"
    store = InsightStore(f"duckdb:///{path}")
    opened: list[int] = []
    event.listen(store._engine, "connect", lambda *_: opened.append(1))
    users = ["C1", "C2", "M1"]
    digests = build_digests(
        digest_window("daily", DAY), USERS, frame([insight(u, "A") for u in users]), users, cap=10
    )
    try:
        store.migrate()
        opened.clear()
        transport = PeekingTransport(path)
        report = deliver_digests(store, transport, digests, sender=SENDER, feed_url=FEED)
        assert report.counts()["sent"] == 3
        # the ledger read, then each digest's claim (with the previous one's outcome), then
        # the last outcome: one opening per digest, not two
        assert len(opened) == 1 + 3 + 1
        # each send sees its own digest claimed and every earlier one recorded as sent
        assert transport.seen == [
            [("C1", "queued", True)],
            [("C1", "sent", False), ("C2", "queued", True)],
            [("C1", "sent", False), ("C2", "sent", False), ("M1", "queued", True)],
        ]
        assert store.digests(DAY, DAY)["status"].to_list() == ["sent"] * 3

        def crash(day: date, transport: FlakyTransport, clock: Callable[[], datetime]) -> None:
            rows = [insight(u, "A", raised=day) for u in users]
            later = build_digests(digest_window("daily", day), USERS, frame(rows), users, cap=10)
            with pytest.raises(RuntimeError, match="a bug"):
                deliver_digests(store, transport, later, sender=SENDER, feed_url=FEED, clock=clock)

        def ledger(day: date) -> list[tuple[str, str, bool]]:
            rows = store.digests(day, day)
            return rows.select("user_id", "status", rows["claimed_at"].is_not_null()).rows()

        # a crash in a send: what was sent is recorded, the crashed one stays claimed (until the
        # lease runs out), the rest untouched
        crash(
            DAY + timedelta(days=1), PeekingTransport(path, crash_at=2), lambda: datetime.now(UTC)
        )
        assert ledger(DAY + timedelta(days=1)) == [("C1", "sent", False), ("C2", "queued", True)]
        # a crash after a send, before the next claim: the send is still recorded
        calls: list[int] = []

        def clock() -> datetime:  # C1's claim, C1's outcome, then C2's claim: raises
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("a bug in the clock")
            return datetime.now(UTC)

        crash(DAY + timedelta(days=2), FlakyTransport(), clock)
        assert ledger(DAY + timedelta(days=2)) == [("C1", "sent", False)]
    finally:
        store.dispose()


def test_preferences_are_stored_and_validated(store: InsightStore) -> None:
    store.set_digest_preference("C1", "weekly", 0)
    store.set_digest_preference("C1", "weekly", 4)
    store.set_digest_preference("C2", "off")
    prefs = store.digest_preferences()
    assert prefs.rows() == [("C1", "weekly", 4), ("C2", "off", None)]
    for args in [("C1", "weekly"), ("C1", "daily", 2), ("C1", "weekly", 7), ("C1", "hourly")]:
        with pytest.raises(ValueError):
            store.set_digest_preference(*args)  # type: ignore[arg-type]


def test_a_server_that_stays_down_is_not_tried_for_every_user(store: InsightStore) -> None:
    users = pl.DataFrame(
        {
            "user_id": [f"C{i}" for i in range(6)],
            "name": [f"Csm {i}" for i in range(6)],
            "email": [f"c{i}@example.com" for i in range(6)],
            "role": ["csm"] * 6,
            "manager_id": [None] * 6,
        }
    )
    rows = [insight(f"C{i}", f"Acct {i}") for i in range(6)]
    digests = build_digests(
        digest_window("daily", DAY), users, frame(rows), users["user_id"].to_list(), cap=10
    )
    down = FlakyTransport(failures=99)
    report = deliver_digests(
        store, down, digests, sender=SENDER, feed_url=FEED, max_attempts=2, give_up_after=3,
        sleep=lambda _s: None,
    )  # fmt: skip
    assert report.counts()["failed"] == 6 and down.calls == 6  # 3 digests x 2 tries, then stop
    assert [d.attempts for d in report.deliveries] == [2, 2, 2, 0, 0, 0]
    assert "looks down" in (report.deliveries[-1].error or "")
    assert set(store.digests(DAY, DAY)["status"]) == {"failed"}  # all retried by a later run
