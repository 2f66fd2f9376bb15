"""Historical base rates behind each insight's "so what": how often accounts that showed a
comparable pattern churned within the horizon, against the rate for all accounts.

Computed from the source as of the first day M of the partition's month, using only data before
M (no look-ahead; every day of a month, and a range run or day-by-day runs, see the same rates).
Each insight type maps to a *comparable event* that can be read cheaply off the source history —
e.g. "a usage drop of 30% or more from one month to the next" for usage_drop — rather than
re-running every detector over 18 months. An event at day e counts when e + horizon <= M, so its
outcome is known at M; each account counts once (its first event in the window).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from insight_pipeline.lib.settings import OutcomeSettings


@dataclass(frozen=True)
class Family:
    label: str


FAMILIES: dict[str, Family] = {
    "usage_fall": Family("usage drop of 30% or more from one month to the next"),
    "usage_rise": Family("usage rise of 30% or more from one month to the next"),
    "champion_loss": Family("champion or executive sponsor leaving"),
    "detractor": Family("detractor NPS response (0-6)"),
    "promoter": Family("promoter NPS response (9-10)"),
    "health_fall": Family("health score fall of 15 points or more within a month"),
    "support_spike": Family("month with at least 3x the account's usual support tickets"),
    "dark": Family("calendar month without any meeting or inbound message"),
}

FAMILY_OF_TYPE: dict[str, str] = {
    "usage_drop": "usage_fall",
    "declining_usage": "usage_fall",
    "silent_account": "usage_fall",
    "usage_spike": "usage_rise",
    "adoption_trend": "usage_rise",
    "usage_pattern_change": "usage_rise",
    "feature_discovery": "usage_rise",
    "entitlement_limit": "usage_rise",
    "champion_left": "champion_loss",
    "stakeholder_shift": "champion_loss",
    "detractor_nps": "detractor",
    "referral_candidate": "promoter",
    "case_study_candidate": "promoter",
    "outreach_window": "promoter",
    "health_drop": "health_fall",
    "support_surge": "support_spike",
    "going_dark": "dark",
}
"""Types without a comparable event (increased_activity, qbr_due; a peer benchmark, which is no
move of the account's own usage; an outreach window before a renewal, which is no promoter's
response: `rate_key`) say so plainly instead."""

FALLING = "usage_pattern_change:down"
"""The base-rate key of a usage_pattern_change whose level fell (`rate_key`): a new, lower level
is compared with the accounts whose usage fell, not with those whose usage rose."""
FAMILY_OF_RATE_KEY = FAMILY_OF_TYPE | {FALLING: "usage_fall"}


def rate_key() -> pl.Expr:
    """The key an insight's base rate is looked up by: its type, FALLING for a pattern change
    to a lower level (its facts' change_pct below 0), and for an outreach window that no
    promoter opened (its facts' reason) a key of no family."""
    change = pl.col("facts").str.json_path_match("$.change_pct").cast(pl.Float64, strict=False)
    falling = (pl.col("type") == "usage_pattern_change") & (change < 0).fill_null(False)
    reason = pl.col("facts").str.json_path_match("$.reason")
    unprompted = (pl.col("type") == "outreach_window") & (reason != "promoter").fill_null(False)
    return (
        pl.when(falling)
        .then(pl.lit(FALLING))
        .when(unprompted)
        .then(pl.format("outreach_window:{}", reason))
        .otherwise(pl.col("type"))
    )


EVENT_SCHEMA = {"customer_id": pl.String, "event_date": pl.Date, "family": pl.String}


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def history_start(as_of: date, s: OutcomeSettings) -> date:
    total = as_of.year * 12 + (as_of.month - 1) - s.history_months
    return date(total // 12, total % 12 + 1, 1)


def _with_previous(frame: pl.DataFrame, value: str) -> pl.DataFrame:
    """`frame` sorted by customer and month, with the previous row's `value` and month of the
    same customer (`prev`, `prev_month`; null on its first row): a shift masked where the
    customer changes, not a window over customer groups (a group-by of the string keys)."""
    same = pl.col("customer_id").eq_missing(pl.col("customer_id").shift(1))
    return frame.sort("customer_id", "month").with_columns(
        pl.when(same).then(pl.col(value).shift(1)).alias("prev"),
        pl.when(same).then(pl.col("month").shift(1)).alias("prev_month"),
    )


def _whole_months(
    monthly_usage: pl.DataFrame, contract_starts: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The monthly usage without each customer's first month when that month is not whole: the
    source's record of it begins after the 1st (an export from the 24th), or the customer's
    contract does (onboarded mid-month) - a first month of a week, which the next month would
    'rise' 300% from. Without `contract_starts` (customer_id, contract_start), a first month
    whose usage began after the 1st (`first_day`) is taken as partial; with them, a customer
    whose contract and the source's record cover the month keeps it even if its first row came
    later (a sparse export without a row on the 1st)."""
    if "first_day" not in monthly_usage.columns:
        return monthly_usage
    first_month = pl.col("month") == pl.col("month").min().over("customer_id")
    late = pl.col("first_day") > pl.col("month")
    if contract_starts is None:
        return monthly_usage.filter(~(first_month & late))
    record_start = monthly_usage["first_day"].min()  # where the source's record begins
    usage = monthly_usage.join(
        contract_starts.select("customer_id", "contract_start"), on="customer_id", how="left"
    )
    covered = (pl.lit(record_start) <= pl.col("month")) & (
        pl.col("contract_start").is_null() | (pl.col("contract_start") <= pl.col("month"))
    )
    return usage.filter(~(first_month & late & ~covered)).drop("contract_start")


def _month_over_month(frame: pl.DataFrame, family: str, rule: pl.Expr) -> pl.DataFrame:
    """Events where `rule` holds between consecutive months of a `_with_previous` frame."""
    return (
        frame.filter(
            (pl.col("prev_month").dt.offset_by("1mo") == pl.col("month")) & rule.fill_null(False)
        )
        .select("customer_id", pl.col("month").dt.month_end().alias("event_date"))
        .with_columns(pl.lit(family).alias("family"))
    )


def _health_months(health: pl.DataFrame) -> pl.DataFrame:
    """(customer_id, month, score): the mean health score per customer and month (eager: a
    float sum's last bit follows the row order)."""
    return health.group_by("customer_id", pl.col("date").dt.truncate("1mo").alias("month")).agg(
        pl.col("score").mean().alias("score")
    )


def _ticket_months(tickets: pl.DataFrame) -> pl.DataFrame:
    """(customer_id, month, n): tickets opened per customer and month."""
    return (
        tickets.lazy()
        .group_by("customer_id", pl.col("opened_at").dt.date().dt.truncate("1mo").alias("month"))
        .agg(pl.len().alias("n"))
        .collect()
    )


def _two_way_months(meetings: pl.DataFrame, communications: pl.DataFrame) -> pl.DataFrame:
    """(customer_id, month, n): meetings and inbound messages per customer and month."""
    two_way = pl.concat(
        [
            meetings.lazy().select("customer_id", pl.col("start_at").dt.date().alias("date")),
            communications.lazy()
            .filter(pl.col("direction") == "inbound")
            .select("customer_id", pl.col("sent_at").dt.date().alias("date")),
        ]
    )
    return (
        two_way.group_by("customer_id", pl.col("date").dt.truncate("1mo").alias("month"))
        .agg(pl.len().cast(pl.Float64).alias("n"))
        .collect()
    )


_DAY_OF = {
    "health": pl.col("date"),
    "tickets": pl.col("opened_at").dt.date(),
    "meetings": pl.col("start_at").dt.date(),
    "communications": pl.col("sent_at").dt.date(),
}
"""The day each activity table's rows are counted in a month by."""

_DAY_COLUMN = {
    "health": "date",
    "tickets": "opened_at",
    "meetings": "start_at",
    "communications": "sent_at",
}
"""The column each `_DAY_OF` is of."""


@dataclass(frozen=True)
class SpanMonths:
    """What `comparable_events` makes of the health scores, tickets, meetings and messages,
    made once (`of`) over the rows of a span that holds several windows of whole months (a
    range run's months: 19 months each, ~18 of them shared): the tickets per month, and the
    health_fall and dark events (each from two consecutive months: a window has those of its
    months but its first). The tables of the span and of each window must come from one
    `Source.read_windows` (a window's rows are some of the span's, in their order); a window
    takes them when its rows are all the span's rows of its days (their count, and each of its
    rows' day within the window): the same rows in each month, so the same numbers. Otherwise
    it groups its own rows."""

    tables: dict[str, pl.DataFrame]
    """health, tickets, meetings, communications: the span's rows."""
    found: dict[str, pl.DataFrame]
    """tickets (their months), health_fall and dark (the events of the whole span)."""
    days: dict[str, pl.Series]
    """Each table's `_DAY_OF` of the span's rows, worked out once (a window counts the span's
    rows of its days on them: the timestamps' dates again for each of 12 windows were ~0.1 s)."""

    @classmethod
    def of(
        cls,
        health: pl.DataFrame,
        tickets: pl.DataFrame,
        meetings: pl.DataFrame,
        communications: pl.DataFrame,
        first: date,
        last: date,
    ) -> SpanMonths:
        tables = {
            "health": health,
            "tickets": tickets,
            "meetings": meetings,
            "communications": communications,
        }
        found = {
            "tickets": _ticket_months(tickets),
            "health_fall": _health_falls(_health_months(health)),
            "dark": _dark_months(_two_way_months(meetings, communications), first, last),
        }
        days = {name: table.select(_DAY_OF[name]).to_series() for name, table in tables.items()}
        return cls(tables, found, days)

    def window(
        self, name: str, frames: dict[str, pl.DataFrame], first: date, last: date
    ) -> pl.DataFrame | None:
        """`name` for the window [first, last] when `frames` (table -> the window's rows) are
        the span's rows of those days; None when not (or the window is not whole months)."""
        if first.day != 1 or (last + timedelta(days=1)).day != 1:
            return None
        for table, frame in frames.items():
            if frame.height != self.days[table].is_between(first, last).sum():
                return None
            # every row's day in the window (nulls aside, as `all` ignores them): its earliest
            # and latest are, a day being a non-decreasing function of a (UTC) timestamp
            column = _DAY_COLUMN[table]
            ends = frame.select(pl.col(column).min()).vstack(frame.select(pl.col(column).max()))
            lo, hi = ends.select(_DAY_OF[table]).to_series()
            if lo is not None and not (first <= lo and hi <= last):
                return None
        if name == "tickets":
            return self.found[name].filter(pl.col("month").is_between(first, last))
        # an event needs the month before it in the window
        month = pl.col("event_date").dt.truncate("1mo")
        return self.found[name].filter((month > first) & (pl.col("event_date") <= last))


def _health_falls(monthly: pl.DataFrame) -> pl.DataFrame:
    """health_fall events of the monthly mean scores (`_health_months`)."""
    return _month_over_month(
        _with_previous(monthly, "score"), "health_fall", pl.col("score") <= pl.col("prev") - 15
    )


def _dark_months(monthly: pl.DataFrame, first: date, last: date) -> pl.DataFrame:
    """dark events of the monthly two-way counts (`_two_way_months`) of [first, last]: every
    month of a customer with any, 0 where none."""
    months = pl.DataFrame(
        {"month": pl.date_range(month_start(first), month_start(last), "1mo", eager=True)}
    )
    dense = (
        monthly.select("customer_id")
        .unique()
        .join(months, how="cross")
        .join(monthly, on=["customer_id", "month"], how="left")
        .with_columns(pl.col("n").fill_null(0.0))
    )
    return _month_over_month(
        _with_previous(dense, "n"), "dark", (pl.col("prev") >= 2) & (pl.col("n") == 0)
    )


def comparable_events(
    monthly_usage: pl.DataFrame,
    contacts: pl.DataFrame,
    nps: pl.DataFrame,
    health: pl.DataFrame,
    tickets: pl.DataFrame,
    meetings: pl.DataFrame,
    communications: pl.DataFrame,
    first: date,
    last: date,
    contract_starts: pl.DataFrame | None = None,
    span: SpanMonths | None = None,
) -> pl.DataFrame:
    """(customer_id, event_date, family) for every comparable event dated in [first, last].
    `contract_starts`: the customers' contract_start, to tell a partial first month
    (`_whole_months`). `span`: the monthly tickets and the events of a span holding [first,
    last], taken instead of grouping the rows again where they are the same rows
    (`SpanMonths`)."""

    def found(name: str, frames: dict[str, pl.DataFrame]) -> pl.DataFrame | None:
        return None if span is None else span.window(name, frames, first, last)

    parts = [pl.DataFrame(schema=EVENT_SCHEMA)]
    if monthly_usage.height:
        whole = _whole_months(monthly_usage, contract_starts)
        usage = _with_previous(whole, "value")  # sorted once for both families
        parts.append(
            _month_over_month(
                usage,
                "usage_fall",
                (pl.col("prev") > 0) & (pl.col("value") <= 0.7 * pl.col("prev")),
            )
        )
        parts.append(
            _month_over_month(
                usage,
                "usage_rise",
                (pl.col("prev") > 0) & (pl.col("value") >= 1.3 * pl.col("prev")),
            )
        )
    if contacts.height:
        parts.append(
            contacts.filter(
                pl.col("role").is_in(["champion", "executive_sponsor"])
                & pl.col("left_on").is_not_null()
            ).select(
                "customer_id",
                pl.col("left_on").alias("event_date"),
                pl.lit("champion_loss").alias("family"),
            )
        )
    if nps.height:
        parts.append(
            nps.filter(pl.col("score") <= 6).select(
                "customer_id",
                pl.col("responded_on").alias("event_date"),
                pl.lit("detractor").alias("family"),
            )
        )
        parts.append(
            nps.filter(pl.col("score") >= 9).select(
                "customer_id",
                pl.col("responded_on").alias("event_date"),
                pl.lit("promoter").alias("family"),
            )
        )
    if health.height:
        falls = found("health_fall", {"health": health})
        parts.append(_health_falls(_health_months(health)) if falls is None else falls)
    # Counts per month are whole numbers: grouped lazily (in parallel), the same to the bit in
    # any order. (The health means stay eager: a float sum's last bit follows the row order.)
    if tickets.height:
        monthly = found("tickets", {"tickets": tickets})
        if monthly is None:
            monthly = _ticket_months(tickets)
        parts.append(
            monthly.with_columns(pl.col("n").mean().over("customer_id").alias("usual"))
            .filter((pl.col("n") >= 3) & (pl.col("n") >= 3 * pl.col("usual")))
            .select("customer_id", pl.col("month").dt.month_end().alias("event_date"))
            .with_columns(pl.lit("support_spike").alias("family"))
        )
    if meetings.height or communications.height:
        dark = found("dark", {"meetings": meetings, "communications": communications})
        if dark is None:
            dark = _dark_months(_two_way_months(meetings, communications), first, last)
        parts.append(dark)
    events = pl.concat([p.cast(EVENT_SCHEMA) for p in parts])  # type: ignore[arg-type]
    return events.filter(pl.col("event_date").is_between(first, last))


def outcome_rates(
    events: pl.DataFrame,
    customers: pl.DataFrame,
    as_of: date,
    s: OutcomeSettings,
    since: date | None = None,
) -> pl.DataFrame:
    """Per family: n accounts with the event in [as_of - history, as_of - horizon], k of them
    churned within the horizon after their first event, and the baseline churn rate within the
    horizon of all accounts active at the start of each month of the window.

    `since`, the first day of usage on record: the window starts at the first whole month from
    it. Before it the source holds neither events nor, often, the customers that churned (an
    export lists today's customers and some of the lost), so its months would count as
    accounts that stayed: 12 empty months of 18 put a 1% churn rate at 0.3%."""
    start = history_start(as_of, s)
    if since is not None:
        start = max(start, next_month(since - timedelta(days=1)))  # its first whole month
    months_on_record = (as_of.year - start.year) * 12 + as_of.month - start.month
    churn = customers.select(
        "customer_id",
        pl.when(pl.col("churned_on") < as_of).then(pl.col("churned_on")).alias("churned_on"),
        "contract_start",
    )
    firsts = (
        events.filter(pl.col("event_date").is_between(start, as_of))
        .filter(pl.col("event_date") <= pl.lit(as_of) - pl.duration(days=s.horizon_days))
        .group_by("family", "customer_id")
        .agg(pl.col("event_date").min())
        .join(churn, on="customer_id", how="inner")
        .filter(pl.col("churned_on").is_null() | (pl.col("churned_on") > pl.col("event_date")))
        .with_columns(
            (
                pl.col("churned_on").is_not_null()
                & (pl.col("churned_on") <= pl.col("event_date") + pl.duration(days=s.horizon_days))
            ).alias("churned")
        )
    )
    rates = firsts.group_by("family").agg(pl.len().alias("n"), pl.col("churned").sum().alias("k"))
    months = pl.date_range(start, as_of, "1mo", eager=True)
    month_frame = pl.DataFrame({"month": months}).filter(
        pl.col("month") <= pl.lit(as_of) - pl.duration(days=s.horizon_days)
    )
    active = churn.join(month_frame, how="cross").filter(
        (pl.col("contract_start").is_null() | (pl.col("contract_start") <= pl.col("month")))
        & (pl.col("churned_on").is_null() | (pl.col("churned_on") > pl.col("month")))
    )
    baseline = (
        active.with_columns(
            (
                pl.col("churned_on").is_not_null()
                & (pl.col("churned_on") <= pl.col("month") + pl.duration(days=s.horizon_days))
            ).alias("churned")
        )["churned"].mean()
        if active.height
        else None
    )
    families = pl.DataFrame(
        {"family": list(FAMILIES), "label": [f.label for f in FAMILIES.values()]}
    )
    return (
        families.join(rates, on="family", how="left")
        .with_columns(
            pl.col("n").fill_null(0).cast(pl.Int64),
            pl.col("k").fill_null(0).cast(pl.Int64),
            pl.lit(as_of).alias("as_of"),
            pl.lit(max(months_on_record, 0)).alias("months"),
            pl.lit(s.horizon_days).alias("horizon_days"),
            pl.lit(s.min_accounts).alias("min_n"),
            pl.lit("churned").alias("outcome"),
            pl.lit(None if baseline is None else round(float(baseline) * 100, 1), pl.Float64).alias(
                "baseline_pct"
            ),
        )
        .with_columns(
            pl.when(pl.col("n") > 0)
            .then((pl.col("k") / pl.col("n") * 100).round(1))
            .alias("rate_pct")
        )
    )


def base_rate_json(rates: pl.DataFrame) -> pl.DataFrame:
    """(as_of, type, base_rate JSON) for every insight type (and FALLING), for the narrative
    context: looked up by `rate_key`."""
    mapping = pl.DataFrame(
        {"type": list(FAMILY_OF_RATE_KEY), "family": list(FAMILY_OF_RATE_KEY.values())}
    )
    return mapping.join(rates, on="family", how="inner").select(
        "as_of",
        "type",
        pl.struct(
            "n",
            "k",
            "rate_pct",
            "baseline_pct",
            "label",
            "months",
            "horizon_days",
            "min_n",
            "outcome",
        )
        .struct.json_encode()
        .alias("base_rate"),
    )
