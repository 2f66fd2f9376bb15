"""Engagement detectors: going_dark, increased_activity, stakeholder_shift.

Each account's cadence is learned from its own history: an account that talks monthly is not
dark after a week. "Two-way contact" is a meeting held or an inbound communication (contract).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, timedelta

import polars as pl

from insight_pipeline.lib.detectors.common import (
    DayGrid,
    attendances,
    customer_days,
    customer_index,
    excess_dispersion,
    on_customer_days,
    poisson_g,
    population_days,
)
from insight_pipeline.lib.detectors.usage import cohort_rows, evidence_list
from insight_pipeline.lib.settings import EngagementSettings
from insight_pipeline.lib.signals import conform, empty_signals, evidence_item


def two_way_events(meetings: pl.DataFrame, communications: pl.DataFrame) -> pl.DataFrame:
    """(customer_id, date, kind) for every meeting held and every inbound message."""
    parts = []
    if meetings.height:
        parts.append(
            meetings.select(
                "customer_id",
                pl.col("start_at").dt.date().alias("date"),
                pl.lit("meeting").alias("kind"),
            )
        )
    if communications.height:
        parts.append(
            communications.filter(pl.col("direction") == "inbound").select(
                "customer_id",
                pl.col("sent_at").dt.date().alias("date"),
                pl.lit("inbound").alias("kind"),
            )
        )
    if not parts:
        return pl.DataFrame(schema={"customer_id": pl.String, "date": pl.Date, "kind": pl.String})
    return pl.concat(parts)


MIN_COHORT_ACCOUNTS = 10
"""Sampled accounts a cohort needs for its contact to be measured (`contact_population`)."""


def contact_population(
    events: pl.DataFrame,
    sample: pl.DataFrame,
    window_start: date,
    end: date,
    s: EngagementSettings,
    cohorts: Sequence[str] = (),
) -> pl.DataFrame:
    """(date, contacts, expected, cohort) per day from the first contact read (not before
    `window_start`, where the run's reading begins) to `end`: how many accounts of a fixed
    sample of all accounts (`sample`: their contract starts and churn dates) were in two-way
    contact, and how many the same weekday's share of the customers in contact over the last
    `cadence_days` predicts (null until 8 such weekdays are on record). `cohort` null for the
    whole sample; the same again for each value of the `cohorts` columns of `sample` held by
    `MIN_COHORT_ACCOUNTS` of it (`industry=education`).

    What everyone's contact did is not one account going dark: a holiday season, or a table
    that stopped arriving, silences every account at once (`detect_going_dark`); nor is what
    its cohort's did (schools over the summer, a region's holidays)."""
    schema = {"date": pl.Date, "contacts": pl.Float64, "expected": pl.Float64, "cohort": pl.String}
    events = events.filter(pl.col("date").is_between(window_start, end))
    if events.height == 0 or sample.height == 0:
        return pl.DataFrame(schema=schema)
    contacts = events.select("customer_id", "date").unique()
    groups: list[tuple[str | None, pl.DataFrame]] = [(None, sample)]
    labelled = cohort_rows(sample, [column for column in cohorts if column in sample.columns])
    for (cohort,), ids in labelled.group_by("cohort", maintain_order=True):
        if MIN_COHORT_ACCOUNTS <= ids.height < sample.height:
            groups.append((str(cohort), sample.join(ids, on="customer_id", how="semi")))
    frames = []
    for cohort, members in groups:
        days = (
            contacts
            if cohort is None
            else contacts.join(members.select("customer_id"), on="customer_id", how="semi")
        )["date"]
        if days.len() == 0:
            continue
        # a median: a past holiday season does not lower the usual
        frames.append(
            population_days(days, members, end, s.cadence_days, median=True).select(
                "date",
                pl.col("events").alias("contacts"),
                pl.col("usual").alias("expected"),
                pl.lit(cohort, pl.String).alias("cohort"),
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _cohort_discount(
    rows: pl.DataFrame,
    population: pl.DataFrame,
    accounts: pl.DataFrame,
    reach: int,
    sds: float,
) -> pl.DataFrame:
    """`_population_discount` of each row against its account's cohorts' contact
    (`contact_population`) and the whole book's, whichever explains more of its silence - the
    book's only where none of its cohorts was measured or they were quiet too (a cohort's
    season moves the book's contact: a school's summer is no reason for a software company's
    silence); `population_name` says whose ("all accounts", "education accounts")."""
    if "cohort" not in population.columns:
        population = population.with_columns(pl.lit(None, pl.String).alias("cohort"))
    rows = rows.with_row_index("_row")
    judged = []
    for (cohort,), days in population.group_by("cohort", maintain_order=True):
        if cohort is None:
            of_cohort, name = rows, "all accounts"
        else:
            column, value = str(cohort).split("=", 1)
            if column not in accounts.columns:
                continue
            ids = accounts.filter(pl.col(column).cast(pl.String) == value)["customer_id"]
            of_cohort = rows.filter(pl.col("customer_id").is_in(ids.implode()))
            name = f"{value.replace('_', '-')} accounts"
        if of_cohort.height:
            judged.append(
                _population_discount(of_cohort, days.drop("cohort"), reach, sds).with_columns(
                    pl.lit(name).alias("population_name")
                )
            )
    if not judged:
        return rows.drop("_row").with_columns(
            population_pace=1.0, silence_discount=0.0, population_name=pl.lit("all accounts")
        )
    every = pl.concat(judged)
    is_book = pl.col("population_name") == "all accounts"
    first_by_discount = {"descending": [False, True], "maintain_order": True}
    own = (
        every.filter(~is_book)
        .sort("_row", "silence_discount", **first_by_discount)
        .unique("_row", keep="first", maintain_order=True)
    )
    # the book's quiet counts where no cohort of the account's was measured, or where its
    # cohorts were quiet too (a small cohort's bound is wide: everyone's holiday explains more)
    book = (
        every.filter(is_book)
        .join(own.select("_row", pl.col("population_pace").alias("_own")), on="_row", how="left")
        .filter(pl.col("_own").is_null() | (pl.col("_own") < 1.0))
        .drop("_own")
    )
    best = (
        pl.concat([own, book])
        .sort("_row", "silence_discount", **first_by_discount)
        .unique("_row", keep="first", maintain_order=True)
    )
    missing = rows.join(best.select("_row"), on="_row", how="anti").with_columns(
        population_pace=1.0, silence_discount=0.0, population_name=pl.lit("all accounts")
    )
    return pl.concat([best, missing], how="diagonal_relaxed").sort("_row").drop("_row")


def _population_discount(
    rows: pl.DataFrame, population: pl.DataFrame, reach: int, sds: float
) -> pl.DataFrame:
    """`rows` (partition_date, date: the last contact) with `silence_discount`: the days of the
    silence that everyone's quiet explains. Over the silence's days with an expected count (those
    within `reach` of the partition day, so that a daily run and a range run read the same
    days), the population's contacts against their expected count, taken at its upper bound
    (`sds` Poisson sds above: chance never discounts), below 1 shortens the silence by the
    same share of those days."""
    known = pl.col("expected").is_not_null()
    cumulative = population.sort("date").select(
        "date",
        pl.when(known).then(pl.col("contacts")).otherwise(0.0).cum_sum().alias("_c"),
        pl.col("expected").fill_null(0.0).cum_sum().alias("_e"),
        known.cast(pl.Int32).cum_sum().alias("_n"),
    )
    since = pl.max_horizontal(pl.col("date"), pl.col("partition_date") - timedelta(days=reach))
    joined = (
        rows.with_columns(since.alias("_since"))
        .join(cumulative, left_on="partition_date", right_on="date", how="left")
        .join(cumulative, left_on="_since", right_on="date", how="left", suffix="_before")
        .with_columns(pl.col("^_[cen](_before)?$").fill_null(0))
    )
    contacts, expected = pl.col("_c") - pl.col("_c_before"), pl.col("_e") - pl.col("_e_before")
    pace = pl.min_horizontal(
        pl.lit(1.0), (contacts + sds * expected.clip(lower_bound=0.0).sqrt()) / expected
    )
    # rounded: a range's running sums start earlier than a day's, and may differ in the last bit
    pace = pl.when(expected > 0).then(pace.round(3)).otherwise(1.0)
    return joined.with_columns(
        pace.alias("population_pace"),
        ((pl.col("_n") - pl.col("_n_before")) * (1.0 - pace)).alias("silence_discount"),
    ).drop("_since", "_c", "_e", "_n", "_c_before", "_e_before", "_n_before")


def detect_going_dark(
    events: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: EngagementSettings,
    population: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Days since the last two-way contact beyond what the account's own rhythm explains:
    max(min_dark_days, dark_multiplier x its median gap, long_gap_multiplier x its 95th
    percentile gap, and the silence that contact at its mean rate (a Poisson process) and its own
    waits between conversations each leave with probability dark_alpha). Days on which every
    account was quieter than usual (`population`: `contact_population`) count as that much less
    silence."""
    if events.height == 0:
        return empty_signals()
    # Distinct contact days sorted by (customer, date) through one integer key (the customer's
    # index x 2**20 + the day): a numeric sort, duplicates adjacent, "the previous contact day" a
    # shift masked where the customer changes. The customer is its index into `ids` until the
    # few rows read remain (no strings moved by the sort); events of other customers are never
    # read (the as-of join is by the accounts' customers).
    ids = accounts["customer_id"].unique().sort()
    rows, customer = customer_index(events.filter(pl.col("date") <= end), ids)
    day = (pl.col("date") - pl.col("date").min()).dt.total_days().cast(pl.UInt64)
    same_customer = pl.col("_c") == pl.col("_c").shift(1)
    contact_days = (
        rows.select(pl.Series("_c", customer, dtype=pl.UInt64), "date")
        .select("_c", "date", (pl.col("_c") * (1 << 20) + day).alias("_key"))
        .sort("_key")
        .filter((pl.col("_key") != pl.col("_key").shift(1)).fill_null(True))
        .with_columns(
            pl.when(same_customer)
            .then(pl.col("date") - pl.col("date").shift(1))
            .dt.total_days()
            .cast(pl.Float64)
            .alias("gap")
        )
    )
    # The as-of join below reads, per customer, its last contact day up to `start` and those
    # after it ("read"); their cadence windows reach cadence_days back. Only the rows in those
    # windows are kept (for a daily run mostly the last half year of a year of history).
    next_day = pl.col("date").shift(-1)
    read = (
        (pl.col("date") >= start)
        | (pl.col("_c") != pl.col("_c").shift(-1)).fill_null(True)
        | (next_day > start)
    )
    # (a customer's last row is always read, so the backward fill stays within the customer)
    first_read = pl.when(read).then(pl.col("_key")).backward_fill()
    contact_days = contact_days.filter(pl.col("_key") + s.cadence_days > first_read).with_columns(
        read.alias("_read")
    )
    # The cadence windows (the gaps of the last cadence_days): rolling by the integer key, whose
    # window of cadence_days never reaches another customer (2**20 days apart), so no `over`.
    window = f"{s.cadence_days}i"
    contact_days = (
        contact_days.with_columns(
            pl.col("gap").rolling_median_by("_key", window_size=window).alias("median_gap"),
            pl.col("gap")
            .rolling_quantile_by("_key", window_size=window, quantile=0.95)
            .alias("long_gap"),
            pl.col("gap")
            .is_not_null()
            .cast(pl.Int32)
            .rolling_sum_by("_key", window_size=window)
            .alias("gaps"),
            pl.col("gap").rolling_mean_by("_key", window_size=window).alias("mean_gap"),
            # the waits between conversations: the gaps longer than a thread's, beyond it
            (pl.col("gap") > s.thread_gap_days)
            .cast(pl.Int32)
            .rolling_sum_by("_key", window_size=window)
            .alias("waits"),
            (pl.col("gap") - s.thread_gap_days)
            .clip(lower_bound=0.0)
            .rolling_sum_by("_key", window_size=window)
            .alias("wait_excess"),
        )
        .filter("_read")
        .select(pl.lit(ids).gather("_c").alias("customer_id"), pl.exclude("_c", "_key", "_read"))
    )
    days = customer_days(accounts, start, end).sort("partition_date")
    joined = days.join_asof(
        contact_days.sort("date"),
        left_on="partition_date",
        right_on="date",
        by="customer_id",
        strategy="backward",
    )
    # Beyond both the usual rhythm (median gap) and the account's own long silences (95th
    # percentile of its gaps): an account with irregular contact is not dark at its usual worst.
    # The rare silence, rarer than alpha both for contact at the account's mean pace arriving at
    # random (a Poisson process: ln(1/alpha) mean gaps) and for its own waits between
    # conversations: a new conversation comes after a wait beyond the thread's days that is
    # (roughly) exponential with the mean of the account's own such waits, so a silence longer
    # than u + mean excess x ln(P(gap > u) / alpha) is rarer than alpha. For contact at random
    # (memoryless) the two agree; for contact in threads the second reads the waits between
    # threads, not the day-to-day gaps inside them; for a regular cadence (weekly meetings)
    # the first is the longer.
    waits = pl.col("waits").cast(pl.Float64)
    rare = pl.when(waits > 0).then(
        s.thread_gap_days
        + pl.col("wait_excess")
        / waits
        * (waits / pl.col("gaps") / s.dark_alpha).log().clip(lower_bound=0.0)
    )
    threshold = pl.max_horizontal(
        pl.lit(float(s.min_dark_days)),
        s.dark_multiplier * pl.col("median_gap"),
        s.long_gap_multiplier * pl.col("long_gap"),
        math.log(1 / s.dark_alpha) * pl.col("mean_gap"),
        rare.fill_null(0.0),
    )
    silent = (pl.col("partition_date") - pl.col("date")).dt.total_days()
    hits = joined.filter(
        pl.col("date").is_not_null() & (pl.col("gaps") >= s.min_gaps) & (silent > threshold)
    ).with_columns(silent.alias("days_silent"), threshold.alias("threshold"))
    if population is not None and hits.height:
        reach = s.history_days - s.cadence_days
        hits = _cohort_discount(hits, population, accounts, reach, s.population_sds)
    else:
        hits = hits.with_columns(
            population_pace=1.0, silence_discount=0.0, population_name=pl.lit("all accounts")
        )
    effective = pl.col("days_silent") - pl.col("silence_discount")
    hits = hits.with_columns(effective.alias("effective_silence")).filter(
        pl.col("effective_silence") > pl.col("threshold")
    )
    if hits.height == 0:
        return empty_signals()
    last_contact = pl.format("last on {}", pl.col("date"))
    return conform(
        hits.with_columns(
            pl.lit("going_dark").alias("type"),
            pl.lit("").alias("subject"),
            (
                0.4
                + 0.6 * ((pl.col("effective_silence") / pl.col("threshold") - 1.0).clip(0.0, 1.0))
            ).alias("severity"),
            (pl.col("gaps") / (2.0 * s.min_gaps)).clip(0.3, 1.0).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.lit("days since last two-way contact"),
                    pl.col("days_silent"),
                    pl.when(pl.col("silence_discount") >= 0.5)
                    .then(
                        pl.format(
                            "{}; contact across {} since then at most {}% of its "
                            "usual pace, so counted as {} days of silence",
                            last_contact,
                            pl.col("population_name"),
                            (100 * pl.col("population_pace")).round(0).cast(pl.Int64),
                            # one decimal: rounded to days, a silence just over a threshold of
                            # 21 read "counted as 21 days" beside "21" as the longest explained
                            pl.col("effective_silence").round(1),
                        )
                    )
                    .otherwise(last_contact),
                    "meetings, communications",
                ),
                evidence_item(
                    pl.lit("usual gap between contacts (days)"),
                    pl.col("median_gap"),
                    pl.format(
                        "median of {} gaps, those of the {} days before the last contact",
                        pl.col("gaps"),
                        s.cadence_days,
                    ),
                    "meetings, communications",
                ),
                evidence_item(
                    pl.lit("longest silence its own rhythm explains (days)"),
                    pl.col("threshold").floor(),
                    pl.format(
                        "the longest of {} days, {}x its median gap, {}x its 95th-percentile "
                        "gap, and the silence that contact at its mean pace (a contact every {} "
                        "days) and its own waits between conversations (contact days over {} "
                        "days apart) each leave less than {} of the time",
                        s.min_dark_days,
                        s.dark_multiplier,
                        s.long_gap_multiplier,
                        pl.col("mean_gap").round(1),
                        s.thread_gap_days,
                        pl.lit(f"{s.dark_alpha:.1%}"),
                    ),
                    "meetings, communications",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("days_silent"),
                pl.col("median_gap").round(1).alias("usual_gap"),
                # the pace a reader should hear: contact in threads has a median gap of a day
                pl.col("mean_gap").round(1).alias("mean_gap"),
                pl.col("date").cast(pl.String).alias("last_contact"),
                pl.col("gaps"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def detect_increased_activity(
    events: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: EngagementSettings,
    since: date | None = None,
) -> pl.DataFrame:
    """Inbound messages + meetings over the last window well above the account's own rate:
    ratio >= activity_ratio and a Poisson likelihood-ratio test at p < 0.001, scaled by how much
    more the account's own windows vary than random events would (`excess_dispersion`). The
    rate is over
    the baseline days on record (`DayGrid.days_on_record`: from `since`, the tables' first day,
    and the contract start), at least min_baseline_days of them."""
    if events.height == 0:
        return empty_signals()
    w, b = s.activity_window_days, s.activity_baseline_days
    grid = DayGrid.build(accounts["customer_id"], start - timedelta(days=w + b), end)
    (counts,) = grid.counts(events, None)
    cells = grid.cells(start, end)
    recent = counts.trailing_sum(cells, w)
    # Only cells with enough recent events and history can hit (also in the filter below): the
    # days on record, the baseline and the test statistic are computed on those few.
    busy = recent >= s.min_activity_events
    cells, recent = cells[busy], recent[busy]
    on_record = grid.days_on_record(cells, accounts, since, b, w)
    keep = on_record >= s.min_baseline_days
    cells, on_record = cells[keep], on_record[keep]
    stats = grid.frame(
        cells,
        recent=recent[keep],
        expected=counts.trailing_sum(cells, b, lag=w) / on_record * w,
    ).with_columns(poisson_g(pl.col("recent"), pl.col("expected")).alias("g"))
    # A rise by the Poisson test; then (on those few) judged against the account's burstiness.
    rise = (
        stats.select(
            (pl.col("recent") >= s.min_activity_events)
            & (pl.col("recent") >= s.activity_ratio * pl.col("expected"))
            & (pl.col("g") >= s.activity_g)
        )
        .to_series()
        .to_numpy()
    )
    dispersion = excess_dispersion(counts, cells[rise], on_record[rise], w, b)
    hits = (
        stats.filter(rise)
        .with_columns(pl.col("g") / pl.Series(dispersion))
        .filter(pl.col("g") >= s.activity_g)
        .rename({"date": "partition_date"})
    )
    hits = on_customer_days(hits, accounts, start, end)
    if hits.height == 0:
        return empty_signals()
    ratio = pl.col("recent") / pl.col("expected").clip(lower_bound=0.5)
    return conform(
        hits.with_columns(
            pl.lit("increased_activity").alias("type"),
            pl.lit("").alias("subject"),
            # ratio 3 -> ~0.4, ratio 16 -> 1.0
            (ratio.log() / pl.lit(16.0).log()).clip(0.2, 1.0).alias("severity"),
            (pl.col("g") / (2 * s.activity_g)).clip(0.3, 1.0).alias("confidence"),
            pl.concat_list(
                evidence_item(
                    pl.format("inbound messages + meetings, last {} days", w),
                    pl.col("recent"),
                    pl.format("usual for {} days: {}", w, pl.col("expected").round(1)),
                    "meetings, communications",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("recent").alias("recent_events"),
                pl.col("expected").round(1).alias("usual_events"),
                pl.lit(w).alias("window_days"),
                ratio.round(1).alias("ratio"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )


def detect_stakeholder_shift(
    contacts: pl.DataFrame,
    attendees: pl.DataFrame,
    meetings: pl.DataFrame,
    accounts: pl.DataFrame,
    start: date,
    end: date,
    s: EngagementSettings,
) -> pl.DataFrame:
    """A senior contact (executive sponsor, decision maker, champion) who started recently —
    outside onboarding — is a new stakeholder for `stakeholder_window_days`."""
    if contacts.height == 0:
        return empty_signals()
    new = (
        contacts.filter(
            pl.col("role").is_in(list(s.senior_roles)) & pl.col("started_on").is_not_null()
        )
        .join(accounts.select("customer_id", "contract_start"), on="customer_id", how="inner")
        .filter(
            pl.col("contract_start").is_null()
            | (
                pl.col("started_on")
                > pl.col("contract_start") + pl.duration(days=s.onboarding_days)
            )
        )
        .with_columns(
            pl.date_ranges(
                "started_on",
                pl.col("started_on") + pl.duration(days=s.stakeholder_window_days - 1),
            ).alias("partition_date")
        )
        .explode("partition_date")
        .filter(pl.col("partition_date").is_between(start, end))
    )
    new = on_customer_days(new, accounts, start, end)
    if new.height == 0:
        return empty_signals()
    attended = attendances(attendees, meetings, new["contact_id"])
    met = (
        new.select("contact_id", "partition_date")
        .join(attended, on="contact_id", how="left")
        .filter(pl.col("met_on").is_null() | (pl.col("met_on") <= pl.col("partition_date")))
        .group_by("contact_id", "partition_date")
        .agg(pl.col("met_on").drop_nulls().len().alias("meetings_attended"))
    )
    new = new.join(met, on=["contact_id", "partition_date"], how="left").with_columns(
        pl.col("meetings_attended").fill_null(0)
    )
    return conform(
        new.with_columns(
            pl.lit("stakeholder_shift").alias("type"),
            pl.col("contact_id").alias("subject"),
            pl.when(pl.col("role") == "executive_sponsor")
            .then(0.7)
            .otherwise(0.55)
            .alias("severity"),
            pl.when(pl.col("meetings_attended") > 0).then(0.9).otherwise(0.6).alias("confidence"),
            evidence_list(
                evidence_item(
                    pl.format("new {}: {} ({})", pl.col("role"), pl.col("name"), pl.col("title")),
                    (pl.col("partition_date") - pl.col("started_on")).dt.total_days(),
                    pl.format("days since started on {}", pl.col("started_on")),
                    "contacts",
                ),
                evidence_item(
                    pl.lit("meetings attended since"),
                    pl.col("meetings_attended"),
                    pl.lit("meeting_attendees"),
                    "meeting_attendees",
                ),
            ).alias("evidence"),
            pl.struct(
                pl.col("name").alias("contact_name"),
                pl.col("title").alias("contact_title"),
                pl.col("role").str.replace("_", " ").alias("contact_role"),
                pl.col("started_on").cast(pl.String),
                pl.col("meetings_attended"),
            )
            .struct.json_encode()
            .alias("facts"),
        )
    )
