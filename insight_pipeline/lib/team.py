"""Team and strategic insights: cross-account patterns and the rollups managers and leaders read.

Pure polars (and a little numpy), no I/O: `defs/team/assets.py` fetches the frames, the store
writes the results, the API and the digest read them.

**Cross-account patterns.** An insight on one account is a CSM's business; the same insight on
five fintech accounts in the same fortnight is a leader's, because the cause is probably shared
(a release, a pricing change, a competitor) and so is the answer. For each day D:

- an account *shows* a pattern when a detector raised its type - or its type on the same metric
  or feature, e.g. usage_drop on `reports` - on any day of [D - window + 1, D]
  (`TeamSettings.window_days`, 14), and the account is a customer on D;
- groups are the accounts sharing a segment, industry, plan, region or CSM book
  (`TeamSettings.dimensions`);
- for every (pattern, group) the count x of the group's n accounts showing it is compared with
  the pattern's base rate k / N across all N accounts (k of them show it), one-sided: how
  likely are x or more of the k in a group of n by chance. By default exactly (hypergeometric,
  Fisher's test; `TeamSettings.test`), or by its binomial approximation X ~ Bin(n, k / N),
  which is conservative (the pattern's own accounts raise k / N) and on generated data missed
  29 planted 8-of-40 patterns in 100 where the exact test missed 2. Not leave-group-out: a rate
  over the *other* accounts is tiny exactly when the group holds most of the events, and on
  random scatters that raised a false pattern one day in five;
- the p-values of every (pattern, group) tested that day - m of them, counted whether or not
  any account showed the pattern - are corrected by Benjamini-Hochberg at
  `TeamSettings.fdr` (5%): among the patterns raised, about 5% are expected to be chance;
- a pattern is raised only with at least `min_accounts` (3) accounts and a lift x / (n p) of at
  least `min_lift` (1.5): significance alone is cheap in a group of thousands;
- and only while it is *rising*: x must be at least `min_rise` (1.5) times (1 + the group's
  accounts showing it in the window before). On generated data the strongest "patterns" were
  standing traits - small accounts always open more tickets - raised day after day for months;
  a trait is the base rate of its group, not news, and a leader acts on what changed;
- a pattern most of whose accounts (`overlap`, 60%) are already in a stronger raised pattern of
  the day is left out: "smb" and "starter plan" are often the same five accounts, and "usage
  drops" in fintech is mostly the same story as "reports usage drops" in fintech.

A raised pattern becomes a team-level insight (customer_id null, type `cross_account_pattern`,
category `team`) for the lowest manager above every member account's CSM (the CSM's own manager
for a CSM book; the leader when the accounts span teams), fingerprinted by
`team|cross_account_pattern|<type>|<subject>|<dimension>=<value>` so a persisting pattern
continues one open insight (lib/ranking/episodes.py). Everything is a function of the candidate
rows of the window and the accounts, so a range run and day-by-day runs agree.

**Rollups.** For a day D, judged at the end of D (midnight UTC after it): per CSM, per manager's
team (the manager and everyone reporting to them, transitively through manager_id), per segment
(for everyone, and within each manager's team) and for the whole organisation:

- open insights (what the feed would show at that instant: raised on or before D, not expired,
  and not dismissed, actioned or snoozed past it *according to the feedback history* - status
  as of D, so re-running an old day gives the same numbers), by category and priority;
- ARR at risk: the ARR of each account with an open risk insight (category risk, or a
  usage_drop or going_dark) **weighted by the highest score** among those insights - the score
  is the ranking's 0..1 urgency, so an account with one weak signal counts for little; the
  unweighted sum is kept too (`arr_with_open_risk`);
- expansion ARR signalled: the ARR of accounts with an open opportunity insight (unweighted:
  it is the base an expansion conversation starts from);
- relevance and action rates from the feedback of the trailing `rollup_window_days` (28),
  defined as in lib/ranking/quality.py (each insight acted on counts once; relevant unless its
  latest action was a dismissal as not_relevant; actioned if actioned or marked took_action);
- median hours from created_at to actioned_at of the insights actioned in that window;
- week-over-week: open insights and ARR at risk of D - 7, judged the same way.

Rollups count account insights only (team insights have no account and no ARR).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from insight_pipeline.lib.detectors.common import run_positions
from insight_pipeline.lib.insights.narrate import TemplateNarrator, humanize_metric
from insight_pipeline.lib.parallel import for_each_chunk
from insight_pipeline.lib.ranking.episodes import episode_id
from insight_pipeline.lib.settings import RankingSettings, TeamSettings
from insight_pipeline.lib.signals import EVIDENCE_TYPE

PATTERN_TYPE = "cross_account_pattern"
TEAM_CATEGORY = "team"

#: Types whose subject is a metric or feature shared across accounts (a contact id is not).
METRIC_SUBJECT_TYPES = frozenset(
    {
        "usage_spike",
        "usage_drop",
        "usage_pattern_change",
        "adoption_trend",
        "declining_usage",
        "entitlement_limit",
        "feature_discovery",
        "power_users",
        "outperforming",
        "underperforming",
    }
)

#: What a group of accounts did, per type ({s} = the metric or feature, when the test had one).
PATTERN_PHRASES: dict[str, tuple[str, str]] = {
    # type: (with a subject, without)
    "usage_spike": ("saw {s} spike", "saw usage spike"),
    "usage_drop": ("saw {s} drop", "saw usage drop"),
    "usage_pattern_change": ("changed their weekly {s} pattern", "changed their weekly pattern"),
    "adoption_trend": ("grew {s} week after week", "grew their usage week after week"),
    "feature_discovery": ("started using {s}", "started using new features"),
    "power_users": ("changed who drives {s}", "changed who drives their usage"),
    "going_dark": ("went dark", "went dark"),
    "increased_activity": ("reached out far more than usual", "reached out far more than usual"),
    "stakeholder_shift": ("had stakeholder changes", "had stakeholder changes"),
    "declining_usage": ("saw {s} decline week after week", "saw usage decline week after week"),
    "silent_account": ("went silent", "went silent"),
    "champion_left": ("lost a champion", "lost a champion"),
    "health_drop": ("dropped in health score", "dropped in health score"),
    "support_surge": ("had a support surge", "had a support surge"),
    "detractor_nps": ("gave detractor NPS scores", "gave detractor NPS scores"),
    "entitlement_limit": ("neared their {s} entitlement", "neared an entitlement limit"),
    "case_study_candidate": ("became case-study candidates", "became case-study candidates"),
    "referral_candidate": ("became referral candidates", "became referral candidates"),
    "outperforming": ("outperformed their peers on {s}", "outperformed their peers"),
    "underperforming": ("underperformed their peers on {s}", "underperformed their peers"),
    "qbr_due": ("have a QBR due", "have a QBR due"),
    "outreach_window": ("have an outreach window open", "have an outreach window open"),
}

#: Risk-side types outside the risk category (as lib/digest.py and evaluation.py count them).
RISK_TYPES = frozenset({"usage_drop", "going_dark"})

#: Columns of the day-level team candidates `cross_account_patterns` returns (plus the
#: insights-table columns of `TEAM_INSIGHT_COLUMNS`).
PATTERN_COLUMNS: dict[str, pl.DataType] = {
    "partition_date": pl.Date(),
    "pattern_type": pl.String(),
    "pattern_subject": pl.String(),
    "dimension": pl.String(),
    "group_value": pl.String(),
    "accounts": pl.Int64(),
    "accounts_before": pl.Int64(),
    "group_size": pl.Int64(),
    "base_rate": pl.Float64(),
    "expected": pl.Float64(),
    "lift": pl.Float64(),
    "p_value": pl.Float64(),
    "q_value": pl.Float64(),
    "tests": pl.Int64(),
    "members": pl.List(pl.String()),
}

#: The insights-table columns of a team insight (what the sink writes; see lib/store.py).
TEAM_INSIGHT_COLUMNS: dict[str, pl.DataType] = {
    "id": pl.String(),
    "customer_id": pl.String(),
    "customer_name": pl.String(),
    "user_id": pl.String(),
    "category": pl.String(),
    "type": pl.String(),
    "subject": pl.String(),
    "fingerprint": pl.String(),
    "priority": pl.String(),
    "score": pl.Float64(),
    "score_parts": pl.String(),
    "title": pl.String(),
    "summary": pl.String(),
    "so_what": pl.String(),
    "recommended_action": pl.String(),
    "evidence": pl.String(),
}

_ROLLUP_DIMENSION_LABELS = {
    "segment": "segment",
    "industry": "industry",
    "plan": "plan",
    "region": "region",
    "csm_user_id": "book",
}


# ---------------------------------------------------------------------------- statistics


TAIL_TERMS_PER_CHUNK = 2_000_000
"""Terms of the tail sums laid out at once per chunk (16 MB a float array): bounds memory."""


PerTerm = Callable[[np.ndarray], np.ndarray]
"""Spreads a value per tail (test) over the terms of its tail (see `_upper_tails`)."""


def _upper_tails(
    start: np.ndarray, stop: np.ndarray, log_pmf: Callable[[PerTerm, np.ndarray], np.ndarray]
) -> np.ndarray:
    """sum_{j = start_i}^{stop_i} exp(log_pmf(i, j)) for every i at once (0 where stop < start):
    all the terms of all the tails laid out in one array (segment i = the terms of tail i),
    each tail summed relative to its largest term. Chunks of ~2M terms bound the memory; they
    run on a thread per core, each tail summed within its chunk as one after another would.

    `log_pmf(per_term, j)` gets the terms' j and `per_term`, which turns an array of a value
    per tail into that value at each term (a repeat: a gather by tail index per term was a
    third of the time)."""
    count = np.maximum(stop - start + 1, 0)
    out = np.zeros(start.size, dtype=np.float64)
    terms_through = np.cumsum(count)  # terms of tails 0..i
    chunks: list[tuple[int, int]] = []
    begin = 0
    while begin < start.size:
        # as many tails as fit in the chunk (at least one)
        before = int(terms_through[begin - 1]) if begin else 0
        fit = int(np.searchsorted(terms_through, before + TAIL_TERMS_PER_CHUNK, side="right"))
        chunks.append((begin, max(begin + 1, fit)))
        begin = chunks[-1][1]

    def one(chunk: tuple[int, int]) -> None:
        begin, end = chunk
        rows = np.arange(begin, end)[count[begin:end] > 0]
        if rows.size:
            n_terms = count[rows]
            offset = np.zeros(rows.size, dtype=np.int64)
            np.cumsum(n_terms[:-1], out=offset[1:])

            def per_term(values: np.ndarray) -> np.ndarray:
                return np.repeat(values, n_terms)

            def per_term_of_tail(values: np.ndarray) -> np.ndarray:
                return per_term(values[rows])

            j = per_term(start[rows]) + (np.arange(int(n_terms.sum())) - per_term(offset))
            terms = log_pmf(per_term_of_tail, j)
            peak = np.maximum.reduceat(terms, offset)
            total = np.add.reduceat(np.exp(terms - per_term(peak)), offset)
            out[rows] = np.minimum(1.0, np.exp(peak) * total)

    for_each_chunk(one, chunks, "tails")
    return out


def binomial_sf(x: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(X >= x) for X ~ Binomial(n, p), elementwise; exact (sum of the upper tail in log space).

    No scipy here, so the tail is summed directly, for all tests at once: from x up to where the
    terms are negligible (30 standard deviations past the larger of x and the mean, never
    beyond n). x <= 0 gives 1.
    """
    x = np.asarray(x, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    out = np.ones(x.shape, dtype=np.float64)
    if x.size == 0:
        return out
    top = int(n.max(initial=0))
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, top + 1, dtype=np.float64)))])
    tested = np.flatnonzero((x > 0) & (x <= n))
    ni, xi, pi = n[tested], x[tested], p[tested]
    sd = np.sqrt(ni * pi * (1 - pi))
    stop = np.minimum(ni, (np.maximum(xi, ni * pi) + 30 * sd + 30).astype(np.int64))

    def log_pmf(per_term: PerTerm, k: np.ndarray) -> np.ndarray:
        n_k, p_k = per_term(ni), per_term(pi)
        return (
            log_fact[n_k]
            - log_fact[k]
            - log_fact[n_k - k]
            + k * np.log(p_k)
            + (n_k - k) * np.log1p(-p_k)
        )

    out[tested] = _upper_tails(xi, stop, log_pmf)
    out[x > n] = 0.0
    return out


def hypergeometric_sf(
    x: np.ndarray, n: np.ndarray, k: np.ndarray, total: int | np.ndarray
) -> np.ndarray:
    """P(X >= x) for X ~ Hypergeometric(total, k, n): of `total` accounts, `k` show a pattern;
    how likely is a group of `n` to hold `x` or more of them by chance. Exact (the one-sided
    Fisher test), elementwise (`total` one number or one per test), all tests at once; x <= 0
    gives 1."""
    x = np.asarray(x, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    everyone = np.broadcast_to(np.asarray(total, dtype=np.int64), x.shape)
    out = np.ones(x.shape, dtype=np.float64)
    if x.size == 0:
        return out
    top_total = int(everyone.max())
    log_fact = np.concatenate(
        [[0.0], np.cumsum(np.log(np.arange(1, top_total + 1, dtype=np.float64)))]
    )

    def log_choose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return log_fact[a] - log_fact[b] - log_fact[a - b]

    tested = np.flatnonzero(x > 0)
    # A p-value depends on its (x, n, k, total) alone, and each is summed on its own: tests
    # that repeat one (~4 in 5 of a 10k year's) take the value summed once, the same bits.
    (xi, ni, ki, ti), of_test = _distinct_rows(x[tested], n[tested], k[tested], everyone[tested])
    top = np.minimum(ki, ni)
    # the group cannot hold fewer than n - (total - k) of the k: start the sum there; stop where
    # the terms are negligible (30 standard deviations past the larger of x and the mean)
    start = np.maximum(xi, ni - (ti - ki))
    share = ki / ti
    sd = np.sqrt(ni * share * (1 - share) * (ti - ni) / np.maximum(ti - 1, 1))
    stop = np.minimum(top, (np.maximum(xi, ni * share) + 30 * sd + 30).astype(np.int64))

    # What depends on the test alone is looked up once per test, not once per term: the same
    # numbers in the same operations as log_choose(k, j) + log_choose(t - k, n - j) -
    # log_choose(t, n) term by term (bit for bit), with a third of the lookups.
    rest = ti - ki
    log_fact_k, log_fact_rest, log_all = log_fact[ki], log_fact[rest], log_choose(ti, ni)

    def log_pmf(per_term: PerTerm, j: np.ndarray) -> np.ndarray:
        others = per_term(ni) - j
        return (
            (per_term(log_fact_k) - log_fact[j] - log_fact[per_term(ki) - j])
            + (per_term(log_fact_rest) - log_fact[others] - log_fact[per_term(rest) - others])
            - per_term(log_all)
        )

    out[tested] = np.where(xi > top, 0.0, _upper_tails(start, stop, log_pmf))[of_test]
    return out


def _distinct_rows(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct rows of these columns of non-negative integers (sorted), and the index of
    each row's among them."""
    sizes = [int(c.max(initial=0)) + 1 for c in columns]
    if math.prod(sizes) < 1 << 62:  # one integer key per row: a 1-D sort, not a row sort
        key = np.zeros(columns[0].size, dtype=np.int64)
        for column, size in zip(columns, sizes, strict=True):
            key = key * size + column
        distinct, of_row = np.unique(key, return_inverse=True)
        parts = []
        for size in reversed(sizes):
            parts.append(distinct % size)
            distinct = distinct // size
        return parts[::-1], of_row
    rows, of_row = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    return [np.ascontiguousarray(rows[:, i]) for i in range(len(columns))], of_row.ravel()


def benjamini_hochberg(p_values: np.ndarray, m: int) -> np.ndarray:
    """BH-adjusted q-values of the p-values given, out of a family of `m` tests (m >= given: the
    tests not listed had p = 1 and cannot change the q-values of those listed)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p
    m = max(m, p.size)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, p.size + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty_like(p)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


# ---------------------------------------------------------------------------- patterns


def active_accounts(accounts: pl.DataFrame, day: date | pl.Expr) -> pl.DataFrame:
    """Customers on `day` (a date, or a column of dates: each row judged on its own day): with
    a CSM, started (when contract_start is known) and not churned."""
    return accounts.filter(is_active(accounts.columns, day))


def account_activity(accounts: pl.DataFrame, *extra: str) -> pl.DataFrame:
    """customer_id, the `extra` columns and those of `is_active` that `accounts` has: what a
    frame joined on customer_id needs to judge each row's account on the row's own day."""
    present = [c for c in ("csm_user_id", "contract_start", "churned_on") if c in accounts.columns]
    return accounts.select("customer_id", *extra, *present)


def is_active(columns: Sequence[str], day: date | pl.Expr) -> pl.Expr:
    """`active_accounts`' test as an expression over a frame with these account columns."""
    day = day if isinstance(day, pl.Expr) else pl.lit(day)
    active = pl.col("csm_user_id").is_not_null()
    if "contract_start" in columns:
        active &= pl.col("contract_start").is_null() | (pl.col("contract_start") <= day)
    if "churned_on" in columns:
        active &= pl.col("churned_on").is_null() | (pl.col("churned_on") > day)
    return active


def steady_and_changing(
    accounts: pl.DataFrame, days: pl.DataFrame, first: date, last: date
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The accounts active on every day of [first, last], and the others laid out on each of
    `days` (a frame of one date column) they are active on. Activity is one interval, so an
    account active on the first and the last day is active on every day between: only the
    accounts that start or churn within the range need a row per day."""
    throughout = is_active(accounts.columns, first) & is_active(accounts.columns, last)
    on_days = accounts.filter(~throughout).join(days, how="cross")
    return accounts.filter(throughout), active_accounts(on_days, pl.col(days.columns[0]))


def pattern_hits(
    candidates: pl.DataFrame,
    first: date,
    last: date,
    settings: TeamSettings,
    *,
    windows_back: int = 0,
) -> pl.DataFrame:
    """(partition_date, customer_id, pattern_type, pattern_subject, first_seen) for every day D
    in [first, last] and pattern the account showed in D's window - or, with windows_back=1,
    in the window before it (the `window_days` ending the day before D's window starts).
    pattern_subject "" is the type on any subject; a metric or feature subject is also a
    pattern of its own. One row per (day, account, pattern), sorted by day, pattern and
    account."""
    return _unsorted_hits(candidates, first, last, settings, windows_back=windows_back).sort(
        "partition_date", "pattern_type", "pattern_subject", "customer_id"
    )


HIT_KEYS = ["customer_id", "pattern_type", "pattern_subject"]
_EPOCH = date(1970, 1, 1)


def _unsorted_hits(
    candidates: pl.DataFrame,
    first: date,
    last: date,
    settings: TeamSettings,
    *,
    windows_back: int = 0,
) -> pl.DataFrame:
    """`pattern_hits` in no particular order: cross_account_patterns only counts and looks
    them up, and sorting millions of rows on three text keys was most of its time."""
    sightings, row, day = _sighting_runs(
        candidates, first, last, settings, windows_back=windows_back
    )
    return _laid_out(sightings, row, day)


def _laid_out(sightings: pl.DataFrame, row: np.ndarray, day: np.ndarray) -> pl.DataFrame:
    """The hits of `_sighting_runs`: sighting `row[i]` on day `day[i]`."""
    return sightings.select(*HIT_KEYS, pl.col("seen").alias("first_seen"))[pl.Series(row)].select(
        pl.Series("partition_date", day).cast(pl.Int32).cast(pl.Date), *HIT_KEYS, "first_seen"
    )


def _sighting_runs(
    candidates: pl.DataFrame,
    first: date,
    last: date,
    settings: TeamSettings,
    *,
    windows_back: int = 0,
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The distinct sightings (customer_id, pattern_type, pattern_subject, seen) and the hits
    they give as two arrays: hit i is sighting row[i] on day day[i] (days since 1970). The hits
    (millions of rows) are laid out from the sightings by these, as codes where the text is not
    needed."""
    if candidates.height == 0:
        empty = pl.DataFrame(schema={k: pl.String for k in HIT_KEYS} | {"seen": pl.Date})
        return empty, np.zeros(0, np.int64), np.zeros(0, np.int64)
    lag = windows_back * settings.window_days
    earliest = first - timedelta(days=lag + settings.window_days - 1)
    base = candidates.select(
        pl.col("customer_id").cast(pl.String),
        pl.col("type").cast(pl.String).alias("pattern_type"),
        pl.col("subject").cast(pl.String).fill_null("").alias("subject"),
        pl.col("partition_date").cast(pl.Date).alias("seen"),
    ).filter(
        pl.col("customer_id").is_not_null()
        & ~pl.col("pattern_type").is_in(list(settings.excluded_types))
        & pl.col("seen").is_between(earliest, last)
    )
    # Each sighting as one integer: its (account, pattern) as a number in the order of the
    # texts, times the days, plus its day. Sorted on it, the sightings come by account, pattern
    # and day: a repeated sighting is the row above, and so is the previous sighting of the
    # same account and pattern. (A unique and a shift over the three text keys - a window per
    # account and pattern, tens of thousands - were most of the time.) Each text is coded once
    # per candidate; a subject's code is 1 + its place, "" (the type on any subject, first in
    # text order) 0.
    account, kind, subject = (
        _ordered_codes(base.get_column(c)) for c in ("customer_id", "pattern_type", "subject")
    )
    n_kinds, n_subjects = int(kind.max() or 0) + 1, int(subject.max() or 0) + 2
    n_days = (last - earliest).days + 1
    base = base.with_columns(
        ((account * n_kinds + kind) * n_subjects).alias("_k"), (subject + 1).alias("_subject")
    ).with_columns(pl.col("_k") * n_days + (pl.col("seen") - earliest).dt.total_days())
    by_type = base.with_columns(pl.lit("").alias("pattern_subject"))
    by_subject = base.filter(
        pl.col("pattern_type").is_in(list(METRIC_SUBJECT_TYPES)) & (pl.col("subject") != "")
    ).with_columns(
        pl.col("subject").alias("pattern_subject"),
        pl.col("_k") + pl.col("_subject") * n_days,
    )
    keys = HIT_KEYS
    hits = (
        pl.concat([by_type, by_subject])
        .drop("subject", "_subject")
        .sort("_k")
        .filter((pl.col("_k") != pl.col("_k").shift(1)).fill_null(True))
    )
    same_key = (pl.col("_k") // n_days) == (pl.col("_k").shift(1) // n_days)
    previous = pl.when(same_key).then(pl.col("seen").shift(1))
    # A sighting s counts on the days [s + lag, s + lag + window - 1] (within [first, last]),
    # and is a day's first_seen unless an earlier sighting of the same account and pattern is
    # still in that day's window: so each sighting gets only the days from where the previous
    # one's run ends. The runs do not overlap, and give the same rows as laying every
    # sighting out on all its days and taking the earliest per day (14x fewer rows to group).
    runs = hits.select(
        pl.max_horizontal(
            pl.col("seen") + timedelta(days=lag),
            previous + timedelta(days=lag + settings.window_days),
            pl.lit(first),
        )
        .to_physical()
        .alias("start"),
        pl.min_horizontal(
            pl.col("seen") + timedelta(days=lag + settings.window_days - 1), pl.lit(last)
        )
        .to_physical()
        .alias("end"),
    )
    start = runs["start"].to_numpy().astype(np.int64)
    days = np.maximum(runs["end"].to_numpy().astype(np.int64) - start + 1, 0)
    # each sighting repeated once per day of its run (none when the run is empty), its days
    # counted up from the run's start: the rows of date_ranges + explode, without the lists
    row = np.repeat(np.arange(hits.height), days)
    day = start[row] + (np.arange(row.size) - np.repeat(np.cumsum(days) - days, days))
    return hits.select(*keys, "seen"), row, day


def _ordered_codes(values: pl.Series) -> pl.Series:
    """Each value's place among the distinct values sorted (Int64): codes that sort and compare
    as the values do, the values sorted once each (a rank of the column sorts every row)."""
    if values.is_empty():  # (replace_strict would keep the values' type)
        return pl.Series(values.name, [], pl.Int64)
    distinct = values.unique().sort()
    return values.replace_strict(
        distinct, pl.Series(np.arange(distinct.len(), dtype=np.int64)), return_dtype=pl.Int64
    )


def _group_members(
    active: pl.DataFrame, dimensions: Iterable[str], keep: Sequence[str] = ()
) -> pl.DataFrame:
    """(customer_id, dimension, group_value) of every active account and dimension it has
    (with the `keep` columns first, e.g. the day)."""
    parts = [
        active.select(
            *keep,
            "customer_id",
            pl.lit(dim).alias("dimension"),
            pl.col(dim).cast(pl.String).alias("group_value"),
        )
        for dim in dimensions
        if dim in active.columns
    ]
    if not parts:
        return pl.DataFrame(
            schema={k: active.schema[k] for k in keep}
            | {"customer_id": pl.String, "dimension": pl.String, "group_value": pl.String}
        )
    return pl.concat(parts).drop_nulls("group_value")


def _count_codes(codes: pl.Series, size: int, name: str) -> pl.DataFrame:
    """`codes.to_frame().group_by(codes.name).len(name)` for integer codes in [0, size), sorted
    by code. Codes dense enough to count in an array (at most a few array slots per row) are
    counted with np.bincount, several times faster than a hash group-by on tens of millions of
    rows; sparse ones by the group-by."""
    if size > 4 * codes.len() + (1 << 20):
        return codes.to_frame().group_by(codes.name).len(name).sort(codes.name)
    counts = np.bincount(codes.to_numpy(), minlength=size)
    present = np.flatnonzero(counts)
    return pl.DataFrame(
        {
            codes.name: pl.Series(present).cast(codes.dtype),
            name: pl.Series(counts[present]).cast(pl.get_index_type()),
        }
    )


def tested_patterns(
    hits: pl.DataFrame,
    before: pl.DataFrame,
    accounts: pl.DataFrame,
    first: date,
    last: date,
    settings: TeamSettings,
) -> pl.DataFrame:
    """Every (day, pattern, group) tested, with its count, the count in the window before
    (`before`: pattern_hits with windows_back=1), base rate, p- and q-value, and whether it
    passes (`significant`); PATTERN_COLUMNS plus `significant`, `members` listed for the
    significant tests only (null on the others). Tests where no account of the group showed
    the pattern are counted in `tests` but not returned (their p-value is 1).

    All days at once: the accounts active on each day (only accounts that start or churn
    within the range are laid out per day), the groups' sizes and the patterns' totals per
    day, one test per (day, pattern, group), and the Benjamini-Hochberg adjustment within each
    day's family of tests."""
    pattern_codes = (
        pl.concat([hits.select(PATTERN_KEYS), before.select(PATTERN_KEYS)])
        .unique()
        .sort(PATTERN_KEYS)
        .with_row_index("_pattern")
    )
    account_codes = _account_codes(accounts)
    activity = account_activity(accounts).join(account_codes, on="customer_id")
    # The hits hold one row per (day, account, pattern) (`_unsorted_hits`, tested), and the
    # joins below keep that when each account has one row: then the rows need no
    # deduplication (a hash of millions of rows, ~1.2 s per call in a 10k year, that removed
    # nothing). An accounts frame repeating an id still goes through it.
    one_row_per_account = not activity.get_column("customer_id").is_duplicated().any()
    day_pattern = _day_pattern(first, pattern_codes.height)

    def on_active_days(frame: pl.DataFrame) -> pl.DataFrame:
        """(_day_pattern, _account) of the rows of accounts active on the row's day, each once:
        with the groups' (_account, _group) also unique, the accounts of a (day, pattern,
        group) are counted by its rows (len), faster than n_unique."""
        coded = (
            frame.filter(pl.col("partition_date").is_between(first, last))
            .join(activity, on="customer_id", how="inner")
            .filter(is_active(activity.columns, pl.col("partition_date")))
            .join(pattern_codes, on=PATTERN_KEYS)
            .select(day_pattern, "_account")
        )
        return coded if one_row_per_account else coded.unique()

    if hits.height == 0:
        return _no_tests()
    return _tested(
        lambda: on_active_days(hits),
        lambda: on_active_days(before),
        pattern_codes,
        account_codes,
        accounts,
        first,
        last,
        settings,
    )


PATTERN_KEYS = ["pattern_type", "pattern_subject"]


def _no_tests() -> pl.DataFrame:
    return pl.DataFrame(schema={**PATTERN_COLUMNS, "significant": pl.Boolean()})


def _account_codes(accounts: pl.DataFrame) -> pl.DataFrame:
    """(_account, customer_id): each id of `accounts` once, numbered in order."""
    return accounts.select("customer_id").unique(maintain_order=True).with_row_index("_account")


def _day_pattern(first: date, n_patterns: int) -> pl.Expr:
    """A (day, pattern) as one integer key over the partition_date and _pattern columns."""
    offset = (pl.col("partition_date") - pl.lit(first)).dt.total_days()
    return (offset * n_patterns + pl.col("_pattern")).alias("_day_pattern")


@dataclass(frozen=True)
class _AccountGroups:
    """The groups of each account (`groups[start[a]:start[a + 1]]` are account a's), to spread
    (day-pattern, account) rows over their (day, pattern, group) cells with numpy: the same
    rows as joining them with the (_account, _group) pairs (an 18M-row join in a 10k year)."""

    start: np.ndarray
    groups: np.ndarray

    @classmethod
    def of(cls, pairs: pl.DataFrame, n_accounts: int) -> _AccountGroups:
        """From the distinct (_account, _group) pairs, accounts numbered below `n_accounts`."""
        ordered = pairs.sort("_account", "_group")
        accounts = ordered.get_column("_account").to_numpy()
        start = np.searchsorted(accounts, np.arange(n_accounts + 1), side="left")
        return cls(start, ordered.get_column("_group").to_numpy().astype(np.int64))

    def spread(self, coded: pl.DataFrame, tested: np.ndarray, n_groups: int) -> pl.DataFrame:
        """(_account, _cell) of each row of `coded` (_day_pattern, _account) whose day-pattern
        is `tested`, once per group of its account (none for an account without groups):
        _cell = _day_pattern x n_groups + _group. In no particular order."""
        day_pattern = coded.get_column("_day_pattern").to_numpy()
        account = coded.get_column("_account").to_numpy()
        keep = tested[day_pattern]
        day_pattern, account = (
            day_pattern[keep].astype(np.int64, copy=False) * n_groups,
            account[keep],
        )
        first, count = self.start[account], np.diff(self.start)[account]
        # the rows' first groups, then the second groups of those with two or more, ...: a pass
        # per group of the account with the most (one per dimension), not a row index per cell
        cells, accounts = [], []
        for k in range(int(count.max(initial=0))):
            more = count > k
            rows = slice(None) if more.all() else np.flatnonzero(more)
            cells.append(day_pattern[rows] + self.groups[first[rows] + k])
            accounts.append(account[rows])
        return pl.DataFrame(
            [
                pl.Series(
                    "_account", np.concatenate([account[:0], *accounts]), coded.schema["_account"]
                ),
                pl.Series("_cell", np.concatenate([day_pattern[:0], *cells]), pl.Int64),
            ]
        )


def _tested(
    coded_hits: Callable[[], pl.DataFrame],
    coded_before: Callable[[], pl.DataFrame],
    pattern_codes: pl.DataFrame,
    account_codes: pl.DataFrame,
    accounts: pl.DataFrame,
    first: date,
    last: date,
    settings: TeamSettings,
) -> pl.DataFrame:
    """`tested_patterns` on the hits and the hits before as (_day_pattern, _account) rows of
    active accounts, each once (made when needed), with the codes of their patterns (numbered
    in the order of their text keys; patterns without hits may be among them) and accounts."""
    empty = _no_tests()
    day = "partition_date"
    days = pl.DataFrame({day: pl.date_range(first, last, eager=True)})
    # An account's groups do not change over the days; whether it is active does: only the
    # accounts that start or churn within the range are laid out per day to count group sizes.
    steady, changing = steady_and_changing(accounts, days, first, last)
    totals = (
        days.join(changing.group_by(day).len("total"), on=day, how="left")
        .with_columns(pl.col("total").fill_null(0) + steady.height)
        .filter(pl.col("total") > 0)
    )
    if totals.height == 0:
        return empty
    groups = _group_members(accounts, settings.dimensions)
    sizes = (
        pl.concat(
            [
                _group_members(steady, settings.dimensions)
                .group_by("dimension", "group_value")
                .len("group_size")
                .join(days, how="cross")
                .select(day, "dimension", "group_value", "group_size"),
                _group_members(changing, settings.dimensions, keep=[day])
                .group_by(day, "dimension", "group_value")
                .len("group_size"),
            ]
        )
        .group_by(day, "dimension", "group_value")
        .agg(pl.col("group_size").sum())
        .join(totals, on=day)
        .filter(
            (pl.col("group_size") >= settings.min_group_accounts)
            & (pl.col("group_size") < pl.col("total"))
        )
        .drop("total")
    )
    # Accounts, patterns and groups as integer codes, and (day, pattern) and (day, pattern,
    # group) each as ONE integer key: the counts below group tens of millions of rows, and
    # grouping on one integer is several times faster than on several keys (let alone on the
    # text). Patterns and groups are numbered in the order of their text keys, so sorting on
    # the key gives the order of sorting on the day and the texts.
    group_codes = (
        groups.select("dimension", "group_value")
        .unique()
        .sort("dimension", "group_value")
        .with_row_index("_group")
    )
    n_patterns, n_groups = pattern_codes.height, group_codes.height
    coded_groups = groups.join(group_codes, on=["dimension", "group_value"]).join(
        account_codes, on="customer_id"
    )
    coded_groups = coded_groups.select("_account", "_group").unique()
    coded_sizes = sizes.join(group_codes, on=["dimension", "group_value"]).drop(
        "dimension", "group_value"
    )

    def decode(frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with the day and the pattern code of its _day_pattern key."""
        return frame.with_columns(
            (pl.lit(first) + pl.duration(days=pl.col("_day_pattern") // n_patterns)).alias(day),
            (pl.col("_day_pattern") % n_patterns).cast(pl.UInt32).alias("_pattern"),
        )

    n_days = (last - first).days + 1
    hits = coded_hits()
    pattern_totals = decode(
        _count_codes(hits["_day_pattern"], n_days * n_patterns, "pattern_total").filter(
            pl.col("pattern_total") >= settings.min_accounts
        )
    )
    tests = (
        pattern_totals.group_by(day)
        .len("patterns")
        .join(coded_sizes.group_by(day).len("groups"), on=day)
        .select(day, (pl.col("patterns") * pl.col("groups")).alias("tests"))
    )
    if tests.height == 0:
        return empty
    # only the tested patterns' counts before are looked up (the others are never joined)
    n_cells = n_days * n_patterns * n_groups
    tested = np.zeros(n_days * n_patterns, dtype=bool)
    tested[pattern_totals.get_column("_day_pattern").to_numpy()] = True
    account_groups = _AccountGroups.of(coded_groups, account_codes.height)
    previous = _count_codes(
        account_groups.spread(coded_before(), tested, n_groups).get_column("_cell"),
        n_cells,
        "accounts_before",
    )
    # the groups too small (or everyone) to test drop out at the join with their sizes
    in_groups = account_groups.spread(hits, tested, n_groups)
    observed = (
        decode(
            _count_codes(in_groups["_cell"], n_cells, "accounts").with_columns(
                (pl.col("_cell") // n_groups).alias("_day_pattern"),
                (pl.col("_cell") % n_groups).cast(pl.UInt32).alias("_group"),
            )
        )
        .join(coded_sizes, on=[day, "_group"], how="inner")
        .join(pattern_totals.drop(day, "_pattern"), on="_day_pattern", how="inner")
        .join(totals, on=day, how="inner")
        .join(tests, on=day, how="inner")
        # k x (1 / N), as polars divides a column by a number: the same bits as one day's test
        .with_columns((pl.col("pattern_total") * (1.0 / pl.col("total"))).alias("base_rate"))
        .with_columns((pl.col("group_size") * pl.col("base_rate")).alias("expected"))
        .with_columns((pl.col("accounts") / pl.col("expected")).alias("lift"))
        .join(previous, on="_cell", how="left")
        .with_columns(pl.col("accounts_before").fill_null(0).cast(pl.Int64))
        .sort("_cell")
        .join(pattern_codes, on="_pattern", how="left", maintain_order="left")
        .join(group_codes, on="_group", how="left", maintain_order="left")
    )
    if observed.height == 0:
        return empty
    if settings.test == "binomial":
        p_values = binomial_sf(
            observed["accounts"].to_numpy(),
            observed["group_size"].to_numpy(),
            observed["base_rate"].to_numpy(),
        )
    else:
        p_values = hypergeometric_sf(
            observed["accounts"].to_numpy(),
            observed["group_size"].to_numpy(),
            observed["pattern_total"].to_numpy(),
            observed["total"].to_numpy(),
        )
    # Benjamini-Hochberg within each day: rank by p (ties in row order), p x m / rank, then the
    # running minimum from the largest p down; m = the day's tests (at least those listed).
    m = pl.max_horizontal(pl.col("tests"), pl.len().over(day)).cast(pl.Float64)
    q_values = (
        observed.select(day, "tests", pl.Series("p", p_values))
        .with_row_index("_row")
        .sort(day, "p", "_row")
        .with_columns((pl.col("p") * m / pl.int_range(1, pl.len() + 1).over(day)).alias("q"))
        .with_columns(pl.col("q").cum_min(reverse=True).over(day).clip(upper_bound=1.0))
        .sort("_row")["q"]
        .to_numpy()
    )
    judged = observed.with_columns(
        pl.Series("p_value", _round_sig(p_values), pl.Float64),
        pl.Series("q_value", _round_sig(q_values), pl.Float64),
        pl.col("tests").cast(pl.Int64),
    ).with_columns(
        (
            (pl.col("q_value") <= settings.fdr)
            & (pl.col("accounts") >= settings.min_accounts)
            & (pl.col("lift") >= settings.min_lift)
            & (pl.col("accounts") >= settings.min_rise * (pl.col("accounts_before") + 1))
        ).alias("significant"),
        # rounded like Signals: what is stored never depends on the last bits of a float sum
        pl.col("base_rate", "expected", "lift").round(6),
    )
    # The member accounts are listed for the significant tests only (a year of days holds
    # millions of tests; the others are counted, and their lists were most of the time).
    listed = (
        in_groups.join(judged.filter("significant"), on="_cell", how="semi")
        .join(account_codes, on="_account")
        .group_by("_cell")
        .agg(pl.col("customer_id").unique().sort().alias("members"))
    )
    return judged.join(listed, on="_cell", how="left", maintain_order="left").select(
        [*PATTERN_COLUMNS, "significant"]
    )


def _round_sig(values: np.ndarray, digits: int = 6) -> np.ndarray:
    """Round to `digits` significant digits (p-values span many orders of magnitude)."""
    values = np.asarray(values, dtype=np.float64)
    # Below ~1e-290 the scale 10^(digits - 1 - exponent) overflows (a p-value of 1e-310 would
    # become inf / inf = NaN): such values are kept as they are.
    roundable = (values > 1e-290) & np.isfinite(values)
    safe = np.where(roundable, values, 1.0)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(safe)))
    return np.where(roundable, np.round(safe * scale) / scale, values)


def distinct_patterns(tested: pl.DataFrame, overlap: float) -> pl.DataFrame:
    """The significant patterns of each day, strongest first, without near-duplicates: a
    pattern with at least `overlap` of its accounts in one already kept pattern is dropped.

    Strongest = smallest q-value, then p-value, then more accounts, then the more specific
    (with a subject), then the smaller group; the rest of the key only makes the order total.
    """
    order = [
        ("partition_date", False),
        ("q_value", False),
        ("p_value", False),
        ("accounts", True),
        ("pattern_subject", True),
        ("group_size", False),
        ("pattern_type", False),
        ("dimension", False),
        ("group_value", False),
    ]
    significant = tested.filter("significant").sort(
        [c for c, _ in order], descending=[d for _, d in order]
    )
    keep: list[bool] = []
    kept_by_day: dict[date, list[set[str]]] = {}
    for day, members in significant.select("partition_date", "members").iter_rows():
        mine = set(members)
        kept = kept_by_day.setdefault(day, [])
        duplicate = any(len(mine & other) >= overlap * len(mine) for other in kept)
        keep.append(not duplicate)
        if not duplicate:
            kept.append(mine)
    return significant.filter(pl.Series(keep, dtype=pl.Boolean)).drop("significant")


# ---------------------------------------------------------------------------- who it is for


def managers_above(users: pl.DataFrame) -> dict[str, list[str]]:
    """Each user's chain of managers through manager_id, nearest first (cycle-safe)."""
    manager_of = {
        str(u): (str(m) if m is not None else None)
        for u, m in users.select("user_id", "manager_id").iter_rows()
    }
    chains: dict[str, list[str]] = {}
    for user in manager_of:
        chain: list[str] = []
        seen = {user}
        boss = manager_of.get(user)
        while boss is not None and boss not in seen:
            chain.append(boss)
            seen.add(boss)
            boss = manager_of.get(boss)
        chains[user] = chain
    return chains


def pattern_owner(
    csms: Iterable[str], users: pl.DataFrame, chains: dict[str, list[str]] | None = None
) -> str | None:
    """The lowest manager above every CSM in `csms` (a CSM book's own manager; the leader when
    the accounts span teams). With no common manager: the first leader, else the first
    manager, else the first CSM (ids in order), so a pattern always has an owner. `chains`:
    `managers_above(users)`, when the caller asks for many patterns."""
    chains = managers_above(users) if chains is None else chains
    ids = sorted(set(csms))
    common: list[str] | None = None
    for csm in ids:
        chain = chains.get(csm, [])
        common = chain if common is None else [m for m in common if m in set(chain)]
    if common:
        return common[0]
    roles = dict(users.select("user_id", "role").iter_rows())
    for role in ("leader", "manager"):
        found = sorted(u for u, r in roles.items() if r == role)
        if found:
            return found[0]
    return ids[0] if ids else None


# ---------------------------------------------------------------------------- narrative


def _group_phrase(dimension: str, value: str, count: int, names: dict[str, str]) -> str:
    """ "5 fintech accounts", "5 accounts in Will Carter's book", "5 accounts on the Pro plan"
    (the count is the group's size when naming the whole group)."""
    accounts = "account" if count == 1 else "accounts"
    if dimension == "segment":
        return f"{count} {value.replace('_', '-')} {accounts}"
    if dimension == "industry":
        return f"{count} {value.replace('_', ' ')} {accounts}"
    if dimension == "plan":
        return f"{count} {accounts} on the {value.replace('_', ' ').title()} plan"
    if dimension == "region":
        return f"{count} {accounts} in {value}"
    if dimension == "csm_user_id":
        name = names.get(value, value)
        return f"{count} {accounts} in {name}'{'' if name.endswith('s') else 's'} book"
    return f"{count} {accounts} with {dimension.replace('_', ' ')} {value}"


def group_label(dimension: str, value: str, names: dict[str, str]) -> str:
    """What the group is called where an account name would go: "Fintech accounts"."""
    if dimension == "segment":
        return f"{value.replace('_', '-').capitalize()} accounts"
    if dimension == "industry":
        return f"{value.replace('_', ' ').capitalize()} accounts"
    if dimension == "plan":
        return f"{value.replace('_', ' ').title()} plan accounts"
    if dimension == "region":
        return f"{value} accounts"
    if dimension == "csm_user_id":
        name = names.get(value, value)
        return f"{name}'{'' if name.endswith('s') else 's'} book"
    return f"{dimension.replace('_', ' ')} {value}"


def pattern_phrase(pattern_type: str, subject: str) -> str:
    with_subject, without = PATTERN_PHRASES.get(
        pattern_type, ("showed {s}", pattern_type.replace("_", " "))
    )
    if subject and "{s}" in with_subject:
        return with_subject.format(s=humanize_metric(subject))
    return without


@dataclass(frozen=True)
class _Member:
    customer_id: str
    name: str
    arr: float
    renewal_date: date | None
    csm_user_id: str
    first_seen: date


def _members(row: dict[str, Any], info: dict[str, dict[str, Any]], seen: dict) -> list[_Member]:
    out = []
    for cid in row["members"]:
        account = info.get(cid, {})
        out.append(
            _Member(
                customer_id=cid,
                name=str(account.get("name") or cid),
                arr=float(account.get("arr") or 0.0),
                renewal_date=account.get("renewal_date"),
                csm_user_id=str(account.get("csm_user_id") or ""),
                first_seen=seen.get(
                    (row["partition_date"], cid, row["pattern_type"], row["pattern_subject"]),
                    row["partition_date"],
                ),
            )
        )
    return sorted(out, key=lambda m: (-m.arr, m.customer_id))


def team_insights(
    patterns: pl.DataFrame,
    hits: pl.DataFrame,
    accounts: pl.DataFrame,
    users: pl.DataFrame,
    team: TeamSettings,
    ranking: RankingSettings,
) -> pl.DataFrame:
    """The raised patterns as day-level team insight candidates: PATTERN_COLUMNS plus the
    insights-table columns (TEAM_INSIGHT_COLUMNS, evidence as JSON text) and partition_date.

    `id` is the episode id the pattern would get if this day opened it; lib/ranking/episodes.py
    decides which days open episodes and which continue one.
    """
    if patterns.height == 0:
        return patterns.with_columns(
            [pl.lit(None, dtype=t).alias(c) for c, t in TEAM_INSIGHT_COLUMNS.items()]
        )
    member_ids = patterns.select(pl.col("members").explode().unique().alias("customer_id"))
    info = {  # the members' accounts only (a run may hold 100k accounts)
        r["customer_id"]: r
        for r in accounts.join(member_ids, on="customer_id", how="semi")
        .select("customer_id", "name", "arr", "renewal_date", "csm_user_id")
        .iter_rows(named=True)
    }
    names = {str(u): str(n) for u, n in users.select("user_id", "name").iter_rows()}
    chains = managers_above(users)  # once, not per pattern
    keys = ["partition_date", "pattern_type", "pattern_subject"]
    seen = {  # first sightings of the raised patterns' members only (hits has millions of rows)
        (d, c, t, s): f
        for d, c, t, s, f in hits.join(patterns.select(keys).unique(), on=keys, how="semi")
        .select("partition_date", "customer_id", "pattern_type", "pattern_subject", "first_seen")
        .iter_rows()
    }
    narrator = TemplateNarrator()
    rows: list[dict[str, Any]] = []
    for row in patterns.iter_rows(named=True):
        members = _members(row, info, seen)
        rows.append(_formulate(row, members, users, chains, names, narrator, team, ranking))
    built = pl.DataFrame(rows, schema=TEAM_INSIGHT_COLUMNS, orient="row")
    return pl.concat([patterns, built], how="horizontal")


def _formulate(
    row: dict[str, Any],
    members: list[_Member],
    users: pl.DataFrame,
    chains: dict[str, list[str]],
    names: dict[str, str],
    narrator: TemplateNarrator,
    team: TeamSettings,
    ranking: RankingSettings,
) -> dict[str, Any]:
    day: date = row["partition_date"]
    horizon = day + timedelta(days=team.renewal_horizon_days)
    renewing = [m for m in members if m.renewal_date is not None and day <= m.renewal_date]
    renewing = [m for m in renewing if m.renewal_date is not None and m.renewal_date <= horizon]
    member_arr = sum(m.arr for m in members)
    subject = row["pattern_subject"] or ""
    count = int(row["accounts"])
    facts = {
        "accounts": count,
        "accounts_before": int(row["accounts_before"]),
        "group_size": int(row["group_size"]),
        "accounts_phrase": _group_phrase(row["dimension"], row["group_value"], count, names),
        "group_phrase": _group_phrase(
            row["dimension"], row["group_value"], int(row["group_size"]), names
        ),
        "group_kind": _ROLLUP_DIMENSION_LABELS.get(row["dimension"], row["dimension"]),
        "pattern": pattern_phrase(row["pattern_type"], subject),
        "window_days": team.window_days,
        "base_rate_pct": 100.0 * float(row["base_rate"]),
        "expected": float(row["expected"]),
        "lift": float(row["lift"]),
        "q_value": float(row["q_value"]),
        "tests": int(row["tests"]),
        "member_arr": member_arr,
        "renewing": len(renewing),
        "renewing_arr": sum(m.arr for m in renewing),
        "horizon_days": team.renewal_horizon_days,
        "names": [m.name for m in members[:3]],
        "more_names": max(0, len(members) - 3),
    }
    text = narrator.narrate([{"type": PATTERN_TYPE, "f": facts}])[0]
    # Every raised pattern already passed the test, the count, the lift and the rise, so the
    # score starts at 0.3 (low) and the parts lift it from there: significance (saturating at
    # an adjusted p of 1e-4), breadth (1 for 10+ accounts), money involved (member ARR against
    # 1M USD) and urgency (the share renewing soon).
    significance = min(1.0, -math.log10(max(float(row["q_value"]), 1e-12)) / 4.0)
    breadth = min(1.0, (count - 1) / 9.0)
    money = min(1.0, member_arr / 1_000_000.0)
    impact = 0.5 * money + 0.5 * (len(renewing) / count if count else 0.0)
    parts = 0.4 * significance + 0.3 * breadth + 0.3 * impact
    score = round(min(1.0, max(0.0, 0.3 + 0.7 * parts)), 6)
    priority = (
        "high"
        if score >= ranking.high_cutoff
        else "medium"
        if score >= ranking.medium_cutoff
        else "low"
    )
    dimension_value = f"{row['dimension']}={row['group_value']}"
    fingerprint = "|".join(["team", PATTERN_TYPE, row["pattern_type"], subject, dimension_value])
    csms = [m.csm_user_id for m in members if m.csm_user_id]
    return {
        "id": episode_id(fingerprint, day),
        "customer_id": None,
        "customer_name": group_label(row["dimension"], row["group_value"], names),
        "user_id": pattern_owner(csms, users, chains),
        "category": TEAM_CATEGORY,
        "type": PATTERN_TYPE,
        "subject": f"{row['pattern_type']}:{subject}|{dimension_value}",
        "fingerprint": fingerprint,
        "priority": priority,
        "score": score,
        "score_parts": json.dumps(
            {
                "significance": round(significance, 3),
                "breadth": round(breadth, 3),
                "impact": round(impact, 3),
                "q_value": float(row["q_value"]),
                "lift": round(float(row["lift"]), 3),
            }
        ),
        "title": text["title"],
        "summary": text["summary"],
        "so_what": text["so_what"],
        "recommended_action": json.dumps(
            {
                "type": "Review the pattern",
                "description": text["action"],
                "quick_action_id": "review_account",
            }
        ),
        "evidence": _evidence_json(row, members, day, team),
    }


def _evidence_json(
    row: dict[str, Any], members: list[_Member], day: date, team: TeamSettings
) -> str:
    items = [
        {
            "metric": "accounts_with_pattern",
            "value": float(row["accounts"]),
            "comparison": (
                f"of {row['group_size']} in the group over the last {team.window_days} days; "
                f"{float(row['expected']):.1f} expected at the {100 * float(row['base_rate']):.1f}"
                f"% rate of all accounts"
            ),
            "source": "insight_candidates",
        },
        {
            # in percent: the feed shows values with one decimal, and q = 0.0004 would read 0.0
            "metric": "adjusted_p_pct",
            "value": round(100 * float(row["q_value"]), 3),
            "comparison": (
                f"% (Benjamini-Hochberg over {row['tests']} pattern x group tests that day; "
                f"{team.test} p = {float(row['p_value']):.2g})"
            ),
            "source": "cross_account_patterns",
        },
    ]
    for m in members:
        renews = f", renews {m.renewal_date.isoformat()}" if m.renewal_date else ""
        items.append(
            {
                "metric": "member_arr",
                "value": m.arr,
                "comparison": (
                    f"USD ARR, {m.name} ({m.customer_id}): since {m.first_seen.isoformat()}{renews}"
                ),
                "source": "accounts",
            }
        )
    frame = pl.DataFrame({"evidence": [items]}, schema={"evidence": EVIDENCE_TYPE})
    return frame.select(
        pl.concat_str(
            [
                pl.lit("["),
                pl.col("evidence").list.eval(pl.element().struct.json_encode()).list.join(","),
                pl.lit("]"),
            ]
        )
    ).item()


def cross_account_patterns(
    candidates: pl.DataFrame,
    accounts: pl.DataFrame,
    users: pl.DataFrame,
    first: date,
    last: date,
    team: TeamSettings,
    ranking: RankingSettings,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(team insight candidates of [first, last], every test run) from the account-level
    insight candidates of [first - 2 x window + 1, last] (this window and the one before), the
    accounts and the users directory."""
    # The window before day D's is day (D - window)'s window: both from one pass over the days
    # [first - window, last] (equal to pattern_hits(..., windows_back=1), tested).
    lag = timedelta(days=team.window_days)
    sightings, row, day = _sighting_runs(candidates, first - lag, last, team)
    account_codes = _account_codes(accounts)
    activity = account_activity(accounts).join(account_codes, on="customer_id")
    if (
        activity.get_column("customer_id").is_duplicated().any()
        or "csm_user_id" not in activity.columns
        or sightings.height == 0
    ):
        every = _laid_out(sightings, row, day)
        hits = every.filter(pl.col("partition_date") >= first)
        before = every.filter(pl.col("partition_date") <= last - lag).with_columns(
            pl.col("partition_date") + lag
        )
        tested = tested_patterns(hits, before, accounts, first, last, team)
        raised = distinct_patterns(tested, team.overlap)
        return team_insights(raised, hits, accounts, users, team, ranking), tested
    # Each account once: tested_patterns' joins of the hits (and of the hits before) with the
    # accounts and the patterns' codes made once per sighting, and the hits laid out as codes
    # (a year of 10k accounts: ~2M sightings, ~3.7M hits, each joined twice on the text keys).
    # The patterns are numbered over all the sightings, a superset of those with hits: only
    # their order counts (that of their text keys), and the tests' results are the same.
    pattern_codes = (
        sightings.select(PATTERN_KEYS).unique().sort(PATTERN_KEYS).with_row_index("_pattern")
    )
    # is_active's columns, the CSM as a flag (null where there is none) rather than its text
    judged_by = [c for c in ("contract_start", "churned_on") if c in activity.columns]
    coded = (
        sightings.select(HIT_KEYS)
        .join(
            activity.select(
                "customer_id",
                "_account",
                pl.when(pl.col("csm_user_id").is_not_null()).then(True).alias("csm_user_id"),
                *judged_by,
            ),
            on="customer_id",
            how="left",
            maintain_order="left",
        )
        .join(pattern_codes, on=PATTERN_KEYS, how="left", maintain_order="left")
        .drop(HIT_KEYS)
    )
    # the sightings of accounts in `accounts` with a CSM (others are never active)
    known = coded.get_column("csm_user_id").is_not_null().to_numpy()[row]
    laid = coded[pl.Series(row[known])].with_columns(
        pl.Series("partition_date", day[known]).cast(pl.Int32).cast(pl.Date)
    )
    active = is_active(laid.columns, pl.col("partition_date"))
    day_pattern = _day_pattern(first, pattern_codes.height)
    tested = _tested(
        lambda: laid.filter((pl.col("partition_date") >= first) & active).select(
            day_pattern, "_account"
        ),
        lambda: (
            laid.filter(pl.col("partition_date") <= last - lag)
            .with_columns(pl.col("partition_date") + lag)
            .filter(active)
            .select(day_pattern, "_account")
        ),
        pattern_codes,
        account_codes,
        accounts,
        first,
        last,
        team,
    )
    raised = distinct_patterns(tested, team.overlap)
    # team_insights looks up the first sightings of the raised patterns' members: the hits of
    # those patterns are all it needs in text
    wanted = pattern_codes.join(raised.select(PATTERN_KEYS), on=PATTERN_KEYS, how="semi")
    shown = (day >= (first - _EPOCH).days) & np.isin(
        coded.get_column("_pattern").to_numpy()[row], wanted.get_column("_pattern").to_numpy()
    )
    hits = _laid_out(sightings, row[shown], day[shown])
    return team_insights(raised, hits, accounts, users, team, ranking), tested


# ---------------------------------------------------------------------------- rollups

ROLLUP_GROUPS = ("csm", "manager", "segment", "total")
EVERYONE = "*"

#: Columns of the team_rollups table (one row per day, grouping, scope and group).
ROLLUP_COLUMNS: dict[str, pl.DataType] = {
    "rollup_date": pl.Date(),
    "group_by": pl.String(),
    "scope_id": pl.String(),
    "group_key": pl.String(),
    "label": pl.String(),
    "accounts": pl.Int64(),
    "arr_total": pl.Float64(),
    "open_insights": pl.Int64(),
    "open_high": pl.Int64(),
    "open_medium": pl.Int64(),
    "open_low": pl.Int64(),
    "open_by_category": pl.String(),
    "raised_7d": pl.Int64(),
    "risk_accounts": pl.Int64(),
    "arr_at_risk": pl.Float64(),
    "arr_with_open_risk": pl.Float64(),
    "opportunity_accounts": pl.Int64(),
    "expansion_arr": pl.Float64(),
    "acted": pl.Int64(),
    "relevant": pl.Int64(),
    "actioned": pl.Int64(),
    "relevance_rate": pl.Float64(),
    "action_rate": pl.Float64(),
    "actions_timed": pl.Int64(),
    "median_hours_to_action": pl.Float64(),
    "open_insights_prev": pl.Int64(),
    "arr_at_risk_prev": pl.Float64(),
}


def _utc(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Datetime("us", "UTC"))


def open_at(insights: pl.DataFrame, events: pl.DataFrame, day: date) -> pl.DataFrame:
    """The insights open at the end of `day`, with the columns given (see `open_on_days`)."""
    return open_on_days(insights, events, day, day).drop("rollup_date")


def _on_days(frame: pl.DataFrame, start: pl.Expr, end: pl.Expr) -> pl.DataFrame:
    """`frame` with one row per day in [start, end] of each row (none when start > end), the
    day in `rollup_date`: per-day questions answered for many days in one pass. Each row
    repeated by a gather and its days counted up from its start (the rows, in the order, of
    date_ranges + explode, without a list per row)."""
    bounds = frame.select(start.cast(pl.Int32).alias("start"), end.cast(pl.Int32).alias("end"))
    first = bounds.get_column("start").fill_null(0).to_numpy()
    days = (bounds.get_column("end") - bounds.get_column("start") + 1).fill_null(0).to_numpy()
    days = np.maximum(days, 0)
    row = np.repeat(np.arange(frame.height), days)
    day = first[row] + run_positions(np.cumsum(days) - days, days)
    return frame[pl.Series(row)].with_columns(pl.Series("rollup_date", day, pl.Int32).cast(pl.Date))


def _day_end() -> pl.Expr:
    """The instant each row's rollup_date is judged at: midnight UTC after it (as the digest
    does)."""
    return (
        (pl.col("rollup_date") + pl.duration(days=1))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
        .alias("_instant")
    )


def open_on_days(
    insights: pl.DataFrame, events: pl.DataFrame, first: date, last: date
) -> pl.DataFrame:
    """The insights open at the end of each day in [first, last]: a row per insight and day,
    the day in `rollup_date`.

    Open: raised on or before the day, not expired at the instant, and - by the latest feedback
    event at or before it - not dismissed, not actioned and not snoozed past it. An insight
    with no event yet counts as actioned once its actioned_at has passed (set without an event);
    a dismissal without an event cannot be dated and is not seen.
    """
    # An insight is only expanded over the days it can be open: to the last day whose end is
    # before its expiry (a year's range would otherwise give each insight ~half a year of rows,
    # filtered away below, when insights expire within weeks). The filter still decides.
    last_unexpired = (_utc("expires_at") - pl.duration(microseconds=1)).dt.date() - pl.duration(
        days=1
    )
    pairs = _on_days(
        insights,
        pl.max_horizontal(pl.col("partition_date"), pl.lit(first)),
        pl.min_horizontal(pl.lit(last), last_unexpired),
    ).with_columns(_day_end())
    pairs = pairs.filter(pl.col("expires_at").is_null() | (_utc("expires_at") > pl.col("_instant")))
    # The latest event at or before each instant: of events at the same instant, the last by id.
    latest = (
        events.select(
            "insight_id",
            _utc("created_at").alias("_event_at"),
            "id",
            "action",
            _utc("snoozed_until").alias("snoozed_until"),
        )
        .sort("_event_at", "id")
        .unique(["insight_id", "_event_at"], keep="last", maintain_order=True)
        .drop("id")
    )
    # Only the insights with feedback are looked up (sorted for the as-of join); the others,
    # most of them, have no event at any instant.
    with_feedback = pl.col("id").is_in(latest["insight_id"].unique().implode()).fill_null(False)
    looked_up = (
        pairs.filter(with_feedback)
        .sort("_instant")
        .join_asof(
            latest,
            left_on="_instant",
            right_on="_event_at",
            by_left="id",
            by_right="insight_id",
            strategy="backward",
            check_sortedness=False,  # both sorted on the instants; `by` hides it from polars
        )
    )
    pairs = pl.concat([looked_up, pairs.filter(~with_feedback)], how="diagonal_relaxed")
    closed = (
        pl.when(pl.col("action").is_null())
        .then(pl.col("actioned_at").is_not_null() & (_utc("actioned_at") <= pl.col("_instant")))
        .otherwise(
            pl.col("action").is_in(["dismiss", "actioned"])
            | ((pl.col("action") == "snooze") & (pl.col("snoozed_until") > pl.col("_instant")))
        )
    )
    return pairs.filter(~closed.fill_null(False)).drop(
        "action", "snoozed_until", "_event_at", "_instant"
    )


def _within_window(
    frame: pl.DataFrame, at: str, first: date, last: date, window_days: int
) -> pl.DataFrame:
    """`frame` once per day D in [first, last] whose `window_days` ending with D (the instants
    in (midnight after D - window, midnight after D]) hold the row's `at`."""
    when = _utc(at)
    return (
        _on_days(
            frame.filter(when.is_not_null()),
            pl.max_horizontal(when.dt.date() - pl.duration(days=1), pl.lit(first)),
            pl.min_horizontal(when.dt.date() + pl.duration(days=window_days), pl.lit(last)),
        )
        .with_columns(_day_end())
        .filter(
            (when <= pl.col("_instant"))
            & (when > pl.col("_instant") - pl.duration(days=window_days))
        )
        .drop("_instant")
    )


def feedback_window(events: pl.DataFrame, day: date, window_days: int) -> pl.DataFrame:
    """Each insight acted on in the `window_days` ending with `day` (see `feedback_on_days`)."""
    return feedback_on_days(events, day, day, window_days).drop("rollup_date")


def feedback_on_days(
    events: pl.DataFrame, first: date, last: date, window_days: int
) -> pl.DataFrame:
    """For each day in [first, last], each insight acted on in the `window_days` ending with
    it: rollup_date, insight_id, relevant, actioned - lib/ranking/quality.py's definitions
    (latest action decides relevance; any action or took_action counts as actioned)."""
    return (
        _within_window(events, "created_at", first, last, window_days)
        .sort("created_at", "id")
        .group_by("rollup_date", "insight_id", maintain_order=True)
        .agg(
            (
                ~((pl.col("action") == "dismiss") & (pl.col("feedback") == "not_relevant"))
                .fill_null(False)
                .last()
            ).alias("relevant"),
            ((pl.col("action") == "actioned") | (pl.col("feedback") == "took_action"))
            .fill_null(False)
            .any()
            .alias("actioned"),
        )
    )


def team_pairs_with_self(users: pl.DataFrame) -> pl.DataFrame:
    """(manager_id, user_id) for every user with reports and each member of their team: the
    manager themselves and everyone reporting to them, transitively (cycle-safe)."""
    chains = managers_above(users)
    pairs = {(m, u) for u, chain in chains.items() for m in chain if m != u}
    pairs |= {(m, m) for m, _u in pairs}
    return pl.DataFrame(
        sorted(pairs), schema={"manager_id": pl.String, "user_id": pl.String}, orient="row"
    )


def _assignments(users: pl.DataFrame, owners: Iterable[str]) -> pl.DataFrame:
    """Which rollup rows an owner's insights (and accounts) count in: (owner, group_by,
    scope_id, group_key); group_key null for segment rows (the account's segment fills it)."""
    everyone = sorted({*map(str, users["user_id"].to_list()), *owners})
    pairs = team_pairs_with_self(users)
    rows: list[tuple[str, str, str, str | None]] = []
    for owner in everyone:
        rows += [
            (owner, "csm", EVERYONE, owner),
            (owner, "total", EVERYONE, EVERYONE),
            (owner, "segment", EVERYONE, None),
        ]
    for manager, member in pairs.iter_rows():
        rows += [(member, "manager", EVERYONE, manager), (member, "segment", manager, None)]
    return pl.DataFrame(
        rows,
        schema={
            "owner": pl.String,
            "group_by": pl.String,
            "scope_id": pl.String,
            "_key": pl.String,
        },
        orient="row",
    )


def _assign(frame: pl.DataFrame, assignments: pl.DataFrame) -> pl.DataFrame:
    """`frame` (with owner and segment) repeated once per rollup row it counts in."""
    return frame.join(assignments, on="owner", how="inner").with_columns(
        pl.coalesce(pl.col("_key"), pl.col("segment")).alias("group_key")
    )


KEYS = ["group_by", "scope_id", "group_key"]


DAY_KEYS = ["rollup_date", "_cell"]
"""What the rollup passes group on: the day and the rollup row as an integer (`_Cells`)."""


@dataclass(frozen=True)
class _Cells:
    """Rollup rows (KEYS) and (owner, segment) pairs numbered once, so that the passes over
    many insight-days and account-days group and join on integers, not on three or four text
    columns (most of a year's rollup time went to hashing those strings).

    `pairs`: owner, segment -> `_os`; `spread`: `_os` -> each `_cell` its rows count in;
    `rows`: `_cell` -> KEYS (every row of `_assignments` and the people, managers and total)."""

    pairs: pl.DataFrame
    spread: pl.DataFrame
    rows: pl.DataFrame

    @classmethod
    def build(cls, assignments: pl.DataFrame, pairs: pl.DataFrame, always: pl.DataFrame) -> _Cells:
        pairs = (
            pairs.drop_nulls("owner").unique().sort("owner", "segment").with_row_index("_os")
        ).with_columns(pl.col("_os").cast(pl.Int64))
        assigned = _assign(pairs, assignments).select("_os", *KEYS)
        rows = (
            pl.concat([assigned.select(KEYS), always.select(KEYS)])
            .unique()
            .sort(KEYS)
            .with_row_index("_cell")
            .with_columns(pl.col("_cell").cast(pl.Int64))
        )
        spread = assigned.join(rows, on=KEYS).select("_os", "_cell")
        return cls(pairs, spread, rows)

    def code(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` (owner, segment) with its pair's `_os` (null for an unknown owner)."""
        return frame.join(self.pairs, on=["owner", "segment"], how="left")

    def assign(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` (with `_os`) repeated once per rollup row (`_cell`) it counts in."""
        return frame.join(self.spread, on="_os", how="inner")


def _range_counts(
    insights: pl.DataFrame,
    events: pl.DataFrame,
    accounts: pl.DataFrame,
    cells: _Cells,
    first: date,
    last: date,
    window_days: int,
) -> pl.DataFrame:
    """The additive and account-level metrics of each day in [first, last], per rollup row that
    has any (DAY_KEYS); each day judged on its own (open insights, active accounts, windows).
    `insights` carry `_os` and `_customer` (integer codes of owner-segment and customer)."""
    risky = (pl.col("category") == "risk") | pl.col("type").is_in(list(RISK_TYPES))
    # Counted per owner and segment, one column per category x priority, then spread over the
    # rollup rows each counts in (a CSM's counts go to their managers, segments and the total):
    # one row per day and owner-segment to spread and group, not one per category and priority.
    # The pairs are those of all the insights: a pair no insight of a day has counts 0 there,
    # which no count, total or text shows.
    pair_codes = _category_priorities(insights)
    pairs = list(pair_codes.drop("_pair").iter_rows())
    # Each insight is laid out over the days it is open (millions of rows in a year): it goes
    # with the columns the counts need only, its pair as a code and whether it is a risk or an
    # opportunity worked out once per insight, not once per day.
    opened = open_on_days(
        insights.join(
            pair_codes, on=["category", "priority"], how="left", maintain_order="left"
        ).select(
            "id",
            "partition_date",
            "expires_at",
            "actioned_at",
            "_os",
            "_customer",
            "score",
            "_pair",  # null where the category or priority is
            risky.alias("_risky"),
            (pl.col("category") == "opportunity").alias("_opportunity"),
        ),
        events,
        first,
        last,
    )
    sums = _pair_counts(opened, cells, first, last, len(pairs))

    def total(wanted: Sequence[int]) -> pl.Expr:
        columns = [pl.col(f"_n{i}") for i in wanted]
        return (pl.sum_horizontal(columns) if columns else pl.lit(0)).cast(pl.Int64)

    counts = sums.select(
        *DAY_KEYS,
        pl.col("_all").cast(pl.Int64).alias("open_insights"),
        *(
            total([i for i, (_c, p) in enumerate(pairs) if p == level]).alias(f"open_{level}")
            for level in ("high", "medium", "low")
        ),
    )
    by_category = _open_by_category(sums, pairs)
    # Only an account's open risks and opportunities add to its sums (ARR at risk, expansion):
    # its other insights are left out before grouping (a missing sum is 0 in the rollup).
    valued = opened.filter(pl.col("_risky") | pl.col("_opportunity"))
    accounts_of_owners = valued.group_by("rollup_date", "_os", "_customer").agg(
        pl.col("score").filter(pl.col("_risky")).max().alias("_risk_score"),
        pl.col("_opportunity").any(),
    )
    customers = (
        insights.select("_customer", "customer_id")
        .unique("_customer")
        .join(account_activity(accounts, "arr"), on="customer_id", how="left")
        .drop("customer_id")
    )

    def with_arr(frame: pl.DataFrame) -> pl.DataFrame:
        """An account that is not active that day (or not known) counts with no ARR."""
        return frame.join(customers, on="_customer", how="left").with_columns(
            pl.when(is_active(accounts.columns, pl.col("rollup_date")))
            .then(pl.col("arr"))
            .fill_null(0.0)
            .alias("arr")
        )

    def account_sums() -> list[pl.Expr]:
        """Account counts and ARR sums (in whole cents, so partial sums add up exactly)."""
        return [
            pl.col("_risk_score").is_not_null().sum().cast(pl.Int64).alias("risk_accounts"),
            _cents(pl.col("arr") * pl.col("_risk_score").fill_null(0.0)).sum().alias("_at_risk"),
            _cents(pl.col("arr").filter(pl.col("_risk_score").is_not_null()))
            .sum()
            .alias("_with_risk"),
            pl.col("_opportunity").sum().cast(pl.Int64).alias("opportunity_accounts"),
            _cents(pl.col("arr").filter(pl.col("_opportunity"))).sum().alias("_expansion"),
        ]

    # An account counts once per rollup row. Each account has one owner and segment a day
    # (`_os`) unless its insights carry two owners (its CSM changed): then its rows are merged
    # per rollup row first. Otherwise the sums are taken per day and `_os` and then added up
    # over the rollup rows each `_os` counts in: a few rows per CSM and day instead of one per
    # account, day and rollup row.
    if accounts_of_owners.select(
        pl.struct("rollup_date", "_customer").is_duplicated().any()
    ).item():
        merged = (
            cells.assign(accounts_of_owners)
            .group_by([*DAY_KEYS, "_customer"])
            .agg(pl.col("_risk_score").max(), pl.col("_opportunity").any())
        )
        partial = with_arr(merged).group_by(DAY_KEYS).agg(account_sums())
    else:
        per_os = with_arr(accounts_of_owners).group_by("rollup_date", "_os").agg(account_sums())
        partial = (
            cells.assign(per_os)
            .group_by(DAY_KEYS)
            .agg(
                pl.col(
                    "risk_accounts", "_at_risk", "_with_risk", "opportunity_accounts", "_expansion"
                ).sum()
            )
        )
    per_account = partial.select(
        *DAY_KEYS,
        pl.col("risk_accounts").cast(pl.Int64),
        (pl.col("_at_risk") / 100).alias("arr_at_risk"),
        (pl.col("_with_risk") / 100).alias("arr_with_open_risk"),
        pl.col("opportunity_accounts").cast(pl.Int64),
        (pl.col("_expansion") / 100).alias("expansion_arr"),
    )
    raised_per_day = insights.group_by("partition_date", "_os").len()
    raised = (
        cells.assign(
            _on_days(
                raised_per_day,
                pl.max_horizontal(pl.col("partition_date"), pl.lit(first)),
                pl.min_horizontal(pl.col("partition_date") + pl.duration(days=6), pl.lit(last)),
            ),
        )
        .group_by(DAY_KEYS)
        .agg(pl.col("len").sum().cast(pl.Int64).alias("raised_7d"))
    )
    judged = feedback_on_days(events, first, last, window_days).join(
        insights.select("id", "_os"), left_on="insight_id", right_on="id"
    )
    feedback = (
        cells.assign(judged)
        .group_by(DAY_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("acted"),
            pl.col("relevant").sum().cast(pl.Int64),
            pl.col("actioned").sum().cast(pl.Int64),
        )
    )
    timed = _within_window(insights, "actioned_at", first, last, window_days).with_columns(
        ((_utc("actioned_at") - _utc("created_at")).dt.total_seconds() / 3600.0)
        .clip(lower_bound=0.0)
        .alias("_hours")
    )
    speed = (
        cells.assign(timed)
        .group_by(DAY_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("actions_timed"),
            pl.col("_hours").median().alias("median_hours_to_action"),
        )
    )
    out = counts
    for part in (by_category, per_account, raised, feedback, speed):
        out = out.join(part, on=DAY_KEYS, how="full", coalesce=True)
    return out


def _pair_counts(
    opened: pl.DataFrame, cells: _Cells, first: date, last: date, n_pairs: int
) -> pl.DataFrame:
    """DAY_KEYS, `_all` (open insights) and `_n{i}` (those of category x priority pair i) of
    every rollup row and day with any open insight. Counted in a dense array per owner-segment
    pair, day and category x priority pair (null last, in `_all` only), then added up over the
    owner-segment pairs each rollup row counts in: integer counts, the same numbers as grouping
    the insight-days and then the spread rows (two hash group-bys with a column per pair were
    most of `_range_counts`)."""
    n_days, n_os, width = (last - first).days + 1, cells.pairs.height, n_pairs + 1
    key = (
        opened.filter(pl.col("_os").is_not_null())  # an unknown owner counts nowhere
        .select(
            (
                (pl.col("_os") * n_days + (pl.col("rollup_date") - pl.lit(first)).dt.total_days())
                * width
                + pl.col("_pair").fill_null(n_pairs)
            ).cast(pl.Int64)
        )
        .to_series()
        .to_numpy()
    )
    per_os = np.bincount(key, minlength=n_os * n_days * width).astype(np.int32)
    spread = cells.spread.sort("_cell", "_os")
    cell = spread.get_column("_cell").to_numpy()
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]]) if cell.size else cell
    per_cell = (
        np.add.reduceat(per_os.reshape(n_os, -1)[spread.get_column("_os").to_numpy()], starts)
        if cell.size
        else np.zeros((0, n_days * width), np.int32)
    ).reshape(-1, n_days, width)
    every = per_cell.sum(axis=2)
    at, day = np.nonzero(every)  # rollup row by row, each day by day
    counts = per_cell[at, day]
    index = pl.get_index_type()
    return pl.DataFrame(
        [
            pl.Series("rollup_date", day + (first - _EPOCH).days, pl.Int32).cast(pl.Date),
            pl.Series("_cell", cell[starts][at], pl.Int64),
            pl.Series("_all", every[at, day]).cast(index),
            *(pl.Series(f"_n{i}", counts[:, i]).cast(index) for i in range(n_pairs)),
        ]
    )


def _category_priorities(insights: pl.DataFrame) -> pl.DataFrame:
    """The (category, priority) pairs among `insights`, sorted, numbered in `_pair`: pair i is
    the count column `_n{i}` of the rollup passes (both are NOT NULL in the insights table; a
    null is counted in the open insights, in no pair)."""
    pairs = insights.select("category", "priority").unique().drop_nulls()
    return pairs.sort("category", "priority").with_row_index("_pair")


def _open_by_category(sums: pl.DataFrame, pairs: list[tuple[str, str]]) -> pl.DataFrame:
    """DAY_KEYS and open_by_category: {"category": {"priority": n, ...}, ...} with sorted keys,
    as json.dumps(sort_keys=True) writes it, from the counts per day and cell of each category
    x priority pair (`_n{i}` of `pairs`, 0 where none). Each row's text is concatenated from
    those columns, absent pairs skipped: no per-row group-by, sort or Python call."""
    quoted = {value: json.dumps(value, ensure_ascii=False) for pair in pairs for value in pair}
    pieces: dict[str, list[pl.Expr]] = {}  # per category (sorted), its "priority": n texts
    present: dict[str, list[pl.Expr]] = {}  # per category, whether each of those is there
    for i, (category, priority) in enumerate(pairs):
        count = pl.when(pl.col(f"_n{i}") > 0).then(pl.col(f"_n{i}").cast(pl.String))
        pieces.setdefault(category, []).append(
            pl.concat_str(pl.lit(f"{quoted[priority]}: "), count)
        )
        # a text is there iff its count is > 0: tested on the counts, not on the texts
        present.setdefault(category, []).append(pl.col(f"_n{i}") > 0)
    by_category = [
        pl.when(pl.any_horizontal(present[category])).then(
            pl.concat_str(
                pl.lit(f"{quoted[category]}: {{"),
                pl.concat_str(texts, separator=", ", ignore_nulls=True),
                pl.lit("}"),
            )
        )
        for category, texts in pieces.items()
    ]
    text = pl.concat_str(by_category, separator=", ", ignore_nulls=True) if pieces else pl.lit("")
    return sums.select(
        *DAY_KEYS, pl.concat_str(pl.lit("{"), text, pl.lit("}")).alias("open_by_category")
    )


def _daily_rows(users: pl.DataFrame) -> pl.DataFrame:
    """The rollup rows (KEYS) every day has, even with no accounts: each CSM, each manager's
    team and the total."""
    people = users.filter(pl.col("role") == "csm").select(
        pl.lit("csm").alias("group_by"),
        pl.lit(EVERYONE).alias("scope_id"),
        pl.col("user_id").alias("group_key"),
    )
    managers = team_pairs_with_self(users).select(
        pl.lit("manager").alias("group_by"),
        pl.lit(EVERYONE).alias("scope_id"),
        pl.col("manager_id").alias("group_key"),
    )
    total = pl.DataFrame({"group_by": ["total"], "scope_id": [EVERYONE], "group_key": [EVERYONE]})
    return pl.concat([people, managers, total])


def _universe(
    accounts: pl.DataFrame,
    always: pl.DataFrame,
    cells: _Cells,
    first: date,
    last: date,
) -> pl.DataFrame:
    """Every rollup row each day in [first, last] has, even when quiet: CSMs, managers,
    segments of each scope and the total, with their accounts and ARR (accounts active that
    day). `accounts` carry their pair's `_os`; `always` lists the rows every day has."""
    days = pl.DataFrame({"rollup_date": pl.date_range(first, last, eager=True)})
    # Summed per day and owner-segment pair first, then spread over the rollup rows each pair
    # counts in (its CSM, their managers, segments, the total): whole cents add up exactly in
    # any grouping, and the account-days are grouped once, not once per rollup row.
    # (an account of a pair that counts in no rollup row is left out before its ARR is
    # converted, as it was never spread)
    spread = accounts.join(cells.spread.select("_os").unique(), on="_os", how="semi")
    sums = [
        pl.len().cast(pl.Int64).alias("accounts"),
        _cents(pl.col("arr").fill_null(0.0)).sum().alias("_cents"),
    ]
    # accounts active on every day summed once per pair, the others day by day
    steady, changing = steady_and_changing(spread, days, first, last)
    on_days = changing.group_by("rollup_date", "_os").agg(sums)
    per_pair = pl.concat(
        [steady.group_by("_os").agg(sums).join(days, how="cross").select(on_days.columns), on_days]
    )
    sized = (
        cells.assign(per_pair)
        .group_by(DAY_KEYS)
        .agg(pl.col("accounts").sum(), (pl.col("_cents").sum() / 100).alias("arr_total"))
    )
    every_day = (
        always.join(cells.rows, on=KEYS).select("_cell").join(days, how="cross").select(DAY_KEYS)
    )
    keys = pl.concat([every_day, sized.select(DAY_KEYS)]).unique()
    return keys.join(sized, on=DAY_KEYS, how="left").with_columns(
        pl.col("accounts").fill_null(0), pl.col("arr_total").fill_null(0.0)
    )


ROLLUP_CELLS_PER_PASS = 3_000_000
"""Account-days rolled up in one pass: a long range goes in blocks of days, so a year of 100k
accounts never expands into one frame of every account and day."""


def _cents(amounts: pl.Expr) -> pl.Expr:
    """Each amount to whole cents (see `_sum_in_cents`)."""
    return (amounts * 100).round().cast(pl.Int64)


def _sum_in_cents(amounts: pl.Expr) -> pl.Expr:
    """A sum of money that does not depend on the order of its terms: each amount to whole
    cents, summed as integers. A float sum in a parallel group-by adds in varying order, and a
    total such as 136717.295 then rounds to .29 on one run and .30 on the next."""
    return _cents(amounts).sum() / 100


def rollup_frame(
    insights: pl.DataFrame,
    events: pl.DataFrame,
    accounts: pl.DataFrame,
    users: pl.DataFrame,
    first: date,
    last: date,
    settings: TeamSettings,
) -> pl.DataFrame:
    """ROLLUP_COLUMNS rows for every day in [first, last].

    insights: the store's rollup inputs (id, customer_id, user_id, category, type, priority,
    score, partition_date, expires_at, created_at, actioned_at), team insights included or not
    (they are dropped here); events: the store's feedback history (FEEDBACK_SCHEMA); accounts:
    customer_id, csm_user_id, segment, arr (+ contract_start, churned_on); users: user_id, name,
    role, manager_id.
    """
    account_rows = insights.filter(pl.col("customer_id").is_not_null())
    segments = accounts.select("customer_id", pl.col("segment").fill_null("unknown"))
    frame = account_rows.join(segments, on="customer_id", how="left").with_columns(
        pl.col("user_id").alias("owner"), pl.col("segment").fill_null("unknown")
    )
    assignments = _assignments(users, frame["owner"].unique().drop_nulls().to_list())
    books = accounts.with_columns(
        pl.col("csm_user_id").alias("owner"), pl.col("segment").fill_null("unknown")
    )
    always = _daily_rows(users)
    cells = _Cells.build(
        assignments,
        pl.concat([frame.select("owner", "segment"), books.select("owner", "segment")]),
        always,
    )
    frame = cells.code(frame).with_columns(
        pl.col("customer_id").rank("dense").cast(pl.Int64).alias("_customer")
    )
    books = cells.code(books)
    names = {str(u): str(n) for u, n in users.select("user_id", "name").iter_rows()}
    window = settings.rollup_window_days
    block = max(1, min(31, ROLLUP_CELLS_PER_PASS // max(accounts.height, 1)))
    week = timedelta(days=7)
    parts = []
    # One pass per block of days (all accounts, all days of the block), from a week before
    # `first`: each day's counts come with those of the same day a week before, taken from this
    # block or the week of counts kept from the blocks before (each day is counted once).
    earlier: pl.DataFrame | None = None  # the counts of the 7 days before `begin`
    begin = first - week
    while begin <= last:
        end = min(last, begin + timedelta(days=block - 1))
        counts = _range_counts(frame, events, accounts, cells, begin, end, window)
        recent = counts if earlier is None else pl.concat([earlier, counts], how="diagonal_relaxed")
        shown_from = max(begin, first)
        if shown_from <= end:
            before = recent.select(
                pl.col("rollup_date") + pl.duration(days=7),
                "_cell",
                pl.col("open_insights").alias("open_insights_prev"),
                pl.col("arr_at_risk").alias("arr_at_risk_prev"),
            ).filter(pl.col("rollup_date").is_between(shown_from, end))
            parts.append(
                _universe(books, always, cells, shown_from, end)
                .join(
                    counts.filter(pl.col("rollup_date") >= shown_from),
                    on=DAY_KEYS,
                    how="full",
                    coalesce=True,
                )
                .join(before, on=DAY_KEYS, how="left")
            )
        earlier = recent.filter(pl.col("rollup_date") > end - week)
        begin = end + timedelta(days=1)
    if not parts:
        return pl.DataFrame(schema=ROLLUP_COLUMNS)
    out = pl.concat(parts, how="diagonal_relaxed").join(cells.rows, on="_cell")
    zero_ints = [
        "accounts",
        "open_insights",
        "open_high",
        "open_medium",
        "open_low",
        "raised_7d",
        "risk_accounts",
        "opportunity_accounts",
        "acted",
        "relevant",
        "actioned",
        "actions_timed",
        "open_insights_prev",
    ]
    zero_floats = ["arr_total", "arr_at_risk", "arr_with_open_risk", "expansion_arr"]
    rate = pl.when(pl.col("acted") > 0)
    label = (
        pl.when(pl.col("group_by").is_in(["csm", "manager"]))
        .then(pl.col("group_key").replace_strict(names, default=pl.col("group_key")))
        .when(pl.col("group_by") == "segment")
        .then(pl.col("group_key").str.replace_all("_", " "))
        .otherwise(pl.lit("Everyone"))
    )
    return (
        out.with_columns(
            *(pl.col(c).fill_null(0).cast(pl.Int64) for c in zero_ints),
            *(pl.col(c).fill_null(0.0).cast(pl.Float64).round(2) for c in zero_floats),
            pl.col("arr_at_risk_prev").fill_null(0.0).cast(pl.Float64).round(2),
            pl.col("open_by_category").fill_null("{}"),
        )
        .with_columns(
            rate.then((pl.col("relevant") / pl.col("acted")).round(4)).alias("relevance_rate"),
            rate.then((pl.col("actioned") / pl.col("acted")).round(4)).alias("action_rate"),
            pl.col("median_hours_to_action").cast(pl.Float64).round(2),
            label.alias("label"),
        )
        # the rollup rows are numbered in the order of their keys (`_Cells`), each row of a
        # day once: sorted on the numbers as on the texts
        .sort("rollup_date", "_cell")
        .select([pl.col(c).cast(t) for c, t in ROLLUP_COLUMNS.items()])
    )
