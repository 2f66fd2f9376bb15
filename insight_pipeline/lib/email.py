"""Digest emails: rendering (Jinja2, text + HTML) and delivery (SMTP or an outbox folder).

Delivery is idempotent through the store's digest ledger, one row per (user, day, kind):

1. the digest is registered and *claimed* in one transaction (a sent one, or one another run is
   sending right now, cannot be claimed);
2. it is sent with bounded retries and exponential backoff (a permanent 5xx answer stops early);
3. the outcome is recorded: sent with its Message-ID, or failed with the error and the attempts.

So a re-run never sends a sent digest twice, and retries the failed ones. The one gap is the
classic one: a crash after the server accepted the message but before the ledger said so leaves
a claim that expires after the lease, and the retry then sends again - with the same
deterministic Message-ID, which lets mail systems and readers recognise the duplicate.

Credentials come from the SMTP URL (or INSIGHTS_SMTP_USER / INSIGHTS_SMTP_PASSWORD) and are
never logged or recorded: only `SmtpConfig.redacted()` leaves this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from insight_pipeline.lib.digest import GROUPS, Digest, one_line
from insight_pipeline.lib.paths import data_dir

if TYPE_CHECKING:
    from insight_pipeline.lib.store import InsightStore

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "digest"
DEFAULT_SENDER = "Insight Pipeline <insights@localhost>"
DEFAULT_FEED_URL = "http://127.0.0.1:8000/feed"

_TRUE = {"1", "true", "yes", "on"}
_SLUG = re.compile(r"[^A-Za-z0-9-]+")
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to hand mail over: parsed from INSIGHTS_SMTP_URL.

    `smtp://user:pass@host:port` (plain, port 25), `smtp://...?starttls=1` (STARTTLS, port 587;
    refuses to continue in clear text if the server does not offer it), `smtps://...` (implicit
    TLS, port 465). Optional query: `timeout` (seconds, default 30), `cafile` (a PEM bundle to
    trust instead of the system's, for a private relay).
    """

    host: str
    port: int
    mode: str = "plain"
    """plain | starttls | ssl"""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    cafile: str | None = None

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> SmtpConfig:
        env = os.environ if environ is None else environ
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ValueError(f"SMTP URL must start with smtp:// or smtps://, not {scheme!r}://")
        if not parts.hostname:
            raise ValueError("SMTP URL has no host")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        starttls = query.get("starttls", "").lower() in _TRUE
        mode = "ssl" if scheme == "smtps" else "starttls" if starttls else "plain"
        default_port = {"ssl": 465, "starttls": 587, "plain": 25}[mode]
        username = unquote(parts.username) if parts.username else env.get("INSIGHTS_SMTP_USER")
        password = unquote(parts.password) if parts.password else env.get("INSIGHTS_SMTP_PASSWORD")
        return cls(
            host=parts.hostname,
            port=parts.port or default_port,
            mode=mode,
            username=username or None,
            password=password or None,
            timeout=float(query.get("timeout", 30.0)),
            cafile=query.get("cafile") or None,
        )

    def redacted(self) -> str:
        """The URL without its password: the only form that is logged or put in metadata."""
        scheme = "smtps" if self.mode == "ssl" else "smtp"
        user = f"{self.username}:***@" if self.username else ""
        tls = "?starttls=1" if self.mode == "starttls" else ""
        return f"{scheme}://{user}{self.host}:{self.port}{tls}"


# ---------------------------------------------------------------------------- transports


class DeliveryError(Exception):
    """A send failed; `permanent` when retrying cannot help (a 5xx answer, a bad address)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    """Hands one message over; raises DeliveryError. Implementations may keep a connection."""

    def send(self, message: EmailMessage) -> None: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class SmtpTransport:
    """smtplib over one reused connection, re-opened after any error."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._conn: smtplib.SMTP | None = None

    def describe(self) -> str:
        return self.config.redacted()

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        context = ssl.create_default_context(cafile=cfg.cafile)
        conn: smtplib.SMTP
        if cfg.mode == "ssl":
            conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
        else:
            conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            if cfg.mode == "starttls":
                conn.starttls(context=context)  # raises rather than fall back to clear text
        if cfg.username:
            conn.login(cfg.username, cfg.password or "")
        return conn

    def send(self, message: EmailMessage) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            refused = self._conn.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"recipient refused: {exc.recipients}", permanent=all(c >= 500 for c in codes)
            ) from exc
        except smtplib.SMTPResponseException as exc:
            self._reset()
            reason = exc.smtp_error.decode("utf-8", "replace") if exc.smtp_error else ""
            raise DeliveryError(
                f"{type(exc).__name__} {exc.smtp_code}: {reason}", permanent=exc.smtp_code >= 500
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            # e.g. no STARTTLS or AUTH offered: a configuration problem, retrying cannot help
            self._reset()
            raise DeliveryError(f"{type(exc).__name__}: {exc}", permanent=True) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._reset()
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        if refused:
            raise DeliveryError(f"recipient refused: {refused}", permanent=True)

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                _log.debug("closing a broken SMTP connection failed", exc_info=True)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()


class OutboxTransport:
    """Writes each message as an `.eml` file: the embedded default, and a preview for humans.

    The file name derives from the Message-ID, so sending the same digest again replaces its
    file rather than adding one; writes are atomic (a reader never sees half a message).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return f"outbox {self.directory}"

    def path_for(self, message: EmailMessage) -> Path:
        local = str(message["Message-ID"]).strip("<>").split("@", 1)[0]
        parts = local.split(".")
        day = parts[2] if len(parts) > 2 else "undated"
        return self.directory / _SLUG.sub("_", day) / f"{_SLUG.sub('_', local)}.eml"

    def send(self, message: EmailMessage) -> None:
        path = self.path_for(message)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(message.as_bytes())
            tmp.replace(path)
        except OSError as exc:
            raise DeliveryError(f"cannot write {path}: {exc}") from exc

    def close(self) -> None:
        return None


def default_outbox_dir() -> Path:
    """`INSIGHTS_OUTBOX_DIR`, default `<data dir>/outbox` (read at run time)."""
    configured = os.environ.get("INSIGHTS_OUTBOX_DIR")
    return Path(configured).resolve() if configured else data_dir() / "outbox"


def make_transport(smtp_url: str | None, outbox_dir: Path) -> Transport:
    """SMTP when a URL is given, else the outbox folder (the contract's embedded default)."""
    if smtp_url:
        return SmtpTransport(SmtpConfig.from_url(smtp_url))
    return OutboxTransport(outbox_dir)


# ---------------------------------------------------------------------------- rendering


def fmt_day(day: date) -> str:
    """25 Nov 2026: unambiguous in every locale, unlike 11/25."""
    return f"{day.day} {day:%b %Y}"


def fmt_long_day(day: date) -> str:
    return f"{day:%A} {day.day} {day:%B %Y}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def date_label(digest: Digest) -> str:
    if digest.kind == "weekly":
        first = digest.window.first_day
        if first.year == digest.day.year:
            start = f"{first.day} {first:%b}" if first.month != digest.day.month else f"{first.day}"
        else:
            start = fmt_day(first)
        return f"{start}–{fmt_day(digest.day)}"
    return fmt_day(digest.day)


def subject_for(digest: Digest) -> str:
    """ "Your daily insights — 3 high priority · 25 Nov 2026".

    The count is what decides whether to open it now: high-priority items if any, else all of
    the user's items; a manager with nothing of their own sees the team's. Built only from
    counts and dates, never from customer data.
    """
    if digest.high_total:
        what = f"{digest.high_total} high priority"
    elif digest.open_total:
        what = _plural(digest.open_total, "insight")
    else:
        totals = digest.team.totals if digest.team else {"high": 0, "total": 0}
        patterns = len(digest.team.patterns) if digest.team else 0
        what = (
            f"team: {totals['high']} high priority"
            if totals["high"]
            else f"team: {_plural(totals['total'], 'insight')}"
            if totals["total"] or not patterns
            else f"team: {_plural(patterns, 'cross-account pattern')}"
        )
    return f"Your {digest.kind} insights — {what} · {date_label(digest)}"


def message_id_for(digest: Digest, sender: str) -> str:
    """A Message-ID fixed by (kind, day, user): a retried send is recognisably the same mail."""
    domain = _address(sender).domain or "localhost"
    digest_hash = hashlib.sha256(f"{digest.kind}|{digest.day}|{digest.user_id}".encode())
    slug = _SLUG.sub("-", digest.user_id).strip("-")[:40] or "user"
    local = f"digest.{digest.kind}.{digest.day.isoformat()}.{slug}.{digest_hash.hexdigest()[:12]}"
    return f"<{local}@{domain}>"


def _address(value: str) -> Address:
    """An Address from "Name <a@b>" or "a@b"; ValueError when it is not one safe address."""
    text = str(value or "").strip()
    if any(ch in text for ch in "\r\n"):
        raise ValueError("address contains a line break")
    match = re.fullmatch(r"(?:(.*?)\s*<([^<>\s]+)>|([^<>\s]+))", text)
    if not match:
        raise ValueError(f"not an email address: {text!r}")
    name, spec = (match.group(1) or ""), (match.group(2) or match.group(3))
    if spec.count("@") != 1 or spec.startswith("@") or spec.endswith("@"):
        raise ValueError(f"not an email address: {spec!r}")
    return Address(display_name=one_line(name.strip('"')), addr_spec=spec)


def recipient_address(digest: Digest) -> Address:
    """The To: address; the display name cleaned of line breaks (no header injection)."""
    address = _address(digest.email)
    return Address(display_name=one_line(digest.name), addr_spec=address.addr_spec)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=StrictUndefined,
        # only the HTML part is escaped: customer names are data, and `&amp;` in a plain-text
        # email would be a visible bug
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(day=fmt_day, long_day=fmt_long_day, plural=_plural)
    return env


_ENV: Environment | None = None


def render_parts(digest: Digest, *, feed_url: str) -> tuple[str, str]:
    """(text, html) bodies of a digest."""
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    context = {
        "digest": digest,
        "feed_url": feed_url,
        "subject": subject_for(digest),
        "date_label": date_label(digest),
        "first_name": (digest.name.split() or [digest.name])[0],
        "groups": GROUPS,
    }
    text = _ENV.get_template("digest.txt.j2").render(context)
    html = _ENV.get_template("digest.html.j2").render(context)
    return text, html


def render_digest(
    digest: Digest, *, sender: str, feed_url: str, message_id: str, now: datetime
) -> EmailMessage:
    """The multipart/alternative email (text first, HTML preferred by clients that can)."""
    text, html = render_parts(digest, feed_url=feed_url)
    message = EmailMessage()
    message["Subject"] = subject_for(digest)
    message["From"] = _address(sender)
    message["To"] = recipient_address(digest)
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = message_id
    # RFC 3834: out-of-office replies and auto-responders should stay quiet
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message["X-Insights-Digest"] = f"{digest.kind}; date={digest.day.isoformat()}"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


# ---------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class SendResult:
    ok: bool
    attempts: int
    error: str | None = None
    permanent: bool = False


def send_with_retry(
    transport: Transport,
    message: EmailMessage,
    *,
    max_attempts: int,
    backoff_seconds: float,
    sleep: Callable[[float], None] | None = None,
) -> SendResult:
    """Up to `max_attempts` sends, waiting backoff, 2 x backoff, ... (capped at a minute)
    between them; a permanent error ends the tries at once."""
    error = "not attempted"
    for attempt in range(1, max(1, max_attempts) + 1):
        try:
            transport.send(message)
            return SendResult(True, attempt)
        except DeliveryError as exc:
            error = str(exc)
            if exc.permanent or attempt >= max_attempts:
                return SendResult(False, attempt, error, permanent=exc.permanent)
            (sleep or time.sleep)(min(60.0, backoff_seconds * 2 ** (attempt - 1)))
    return SendResult(False, max_attempts, error)


@dataclass(frozen=True)
class Delivery:
    """What happened to one digest in one run."""

    user_id: str
    day: date
    kind: str
    status: str
    """sent | already_sent | in_flight | failed"""
    attempts: int = 0
    error: str | None = None
    message_id: str | None = None
    item_count: int = 0


@dataclass
class DeliveryReport:
    deliveries: list[Delivery] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"sent": 0, "already_sent": 0, "in_flight": 0, "failed": 0}
        for d in self.deliveries:
            out[d.status] = out.get(d.status, 0) + 1
        return out

    @property
    def failed(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.status == "failed"]

    def extend(self, other: DeliveryReport) -> None:
        self.deliveries.extend(other.deliveries)


def deliver_digests(
    store: InsightStore,
    transport: Transport,
    digests: Iterable[Digest],
    *,
    sender: str,
    feed_url: str,
    max_attempts: int = 3,
    backoff_seconds: float = 2.0,
    lease: timedelta = timedelta(minutes=15),
    give_up_after: int = 3,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] | None = None,
) -> DeliveryReport:
    """Send each digest at most once (see the module docstring), recording every outcome.

    One digest's failure (a bad address, even a rendering bug) is recorded as failed and never
    stops the others. But after `give_up_after` digests in a row failed on transient errors the
    server is taken as down: the rest are recorded as failed without being tried, so an
    unreachable relay costs a few timeouts rather than retries x timeout for every user.
    """
    report = DeliveryReport()
    failures_in_a_row = 0
    digests = list(digests)
    sent_before: set[tuple[str, date, str]] = set()
    for day in sorted({d.day for d in digests}):
        ledger = store.digests(day, day)
        sent_before |= {
            (r["user_id"], r["digest_date"], r["kind"])
            for r in ledger.filter(ledger["status"] == "sent").iter_rows(named=True)
        }
    # A send's outcome is committed on the connection that then claims the next digest, in
    # its own transaction just before the claim: a DuckDB file is opened once per digest, not
    # twice (each opening costs ~50 ms with the checkpoint at its close), and is never held
    # across a send. Only the next digest's ledger check runs between a send and its record;
    # `finally` records the last one, or one left when anything raises before the next claim.
    outcome: _Outcome | None = None
    try:
        for digest in digests:
            key = (digest.user_id, digest.day, digest.kind)
            if key in sent_before:
                report.deliveries.append(Delivery(*key, status="already_sent"))
                continue
            now = clock()
            subject = subject_for(digest)
            with store.session():  # each call commits on its own; the file is freed after
                outcome, last = None, outcome
                if last is not None:
                    last.record(store)
                claim = store.claim_digest(
                    *key,
                    message_id=message_id_for(digest, sender),
                    recipient=digest.email,
                    subject=subject,
                    item_count=digest.item_count,
                    now=now,
                    stale_before=now - lease,
                )
            if claim is None:
                report.deliveries.append(Delivery(*key, status="in_flight"))
                continue
            message_id, _previous_attempts = claim
            try:
                message = render_digest(
                    digest, sender=sender, feed_url=feed_url, message_id=message_id, now=now
                )
            except Exception as exc:  # the claim must be released whatever went wrong
                result = SendResult(False, 1, f"cannot build the message: {exc}")
            else:
                if give_up_after and failures_in_a_row >= give_up_after:
                    result = SendResult(
                        False,
                        0,
                        f"not attempted: the last {failures_in_a_row} digests failed, "
                        f"{transport.describe()} looks down",
                    )
                else:
                    result = send_with_retry(
                        transport,
                        message,
                        max_attempts=max_attempts,
                        backoff_seconds=backoff_seconds,
                        sleep=sleep,
                    )
                    transient = not result.ok and not result.permanent
                    failures_in_a_row = failures_in_a_row + 1 if transient else 0
            outcome = _Outcome(key, result, clock())
            if not result.ok:
                _log.warning(
                    "digest %s %s for %s failed after %d attempt(s) via %s: %s",
                    digest.kind,
                    digest.day,
                    digest.user_id,
                    result.attempts,
                    transport.describe(),
                    result.error,
                )
            report.deliveries.append(
                Delivery(
                    *key,
                    status="sent" if result.ok else "failed",
                    attempts=result.attempts,
                    error=result.error,
                    message_id=message_id,
                    item_count=digest.item_count,
                )
            )
    finally:
        if outcome is not None:
            outcome.record(store)
    return report


@dataclass(frozen=True)
class _Outcome:
    """A claimed digest's send result, not yet in the ledger."""

    key: tuple[str, date, str]
    result: SendResult
    at: datetime

    def record(self, store: InsightStore) -> None:
        r = self.result
        store.finish_digest(*self.key, sent=r.ok, attempts=r.attempts, error=r.error, at=self.at)
