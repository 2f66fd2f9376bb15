"""Risk detectors on data unlike the sample's. silent_account: an account is silent when nobody
uses the product and nobody from it talks to its CSM - a level metric (seats in use) above 0
every day is not usage, and the CSM's own unanswered emails are not contact. Support surges and
escalations against the account's own rates, over the days on record; health on its own
swings."""

import json
from datetime import UTC, date, datetime, timedelta

import polars as pl

from insight_pipeline.defs.detectors.families import RISK_TABLES, detect_risk
from insight_pipeline.defs.sources.activity import ACTIVITY_TABLES, empty_table
from insight_pipeline.lib.detectors.risk import level_metrics_by_day
from insight_pipeline.lib.insights.narrate import TemplateNarrator, narrative_context
from insight_pipeline.lib.settings import RiskSettings, Settings
from insight_pipeline_tests.synthetic import USAGE_SCHEMA, accounts_by_group
from insight_pipeline_tests.synthetic import customers as customers_frame

END = date(2026, 6, 30)
DAYS = 112
QUIET_SINCE = END - timedelta(days=20)  # the last day of real use of the silent ones


def usage(customer: str, last_used: date, levels: tuple[str, ...] = ("seats_used",)) -> list:
    """dau until `last_used` (0 after, as sparse exports leave it), level metrics every day."""
    rows = []
    for i in range(DAYS):
        day = END - timedelta(days=DAYS - 1 - i)
        if day <= last_used:
            rows.append((customer, day, "dau", 5.0 + i % 3))
        rows += [(customer, day, level, 12.0) for level in levels]
    return rows


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 10, tzinfo=UTC)


def run(settings: Settings, crowd: int = 0) -> pl.DataFrame:
    """The five accounts, and `crowd` busy ones that keep storage too."""
    busy = [f"BUSY{i:02d}" for i in range(crowd)]
    customers = ["SILENT", "ANSWERED", "MET", "USING", "STORAGE", *busy]
    rows = (
        usage("SILENT", QUIET_SINCE)
        + usage("ANSWERED", QUIET_SINCE)
        + usage("MET", QUIET_SINCE)
        + usage("USING", END)
        + usage("STORAGE", QUIET_SINCE, ("seats_used", "storage_gb"))
    )
    for customer in busy:
        rows += usage(customer, END, ("seats_used", "storage_gb"))
    frame = pl.DataFrame(
        rows,
        schema=USAGE_SCHEMA,
        orient="row",
    )
    # the CSM writes to every account each week; only ANSWERED writes back (5 days ago)
    messages = [
        (f"out-{c}-{w}", c, at(END - timedelta(days=7 * w + 2)), "outbound")
        for c in customers
        for w in range(6)
    ] + [("in-1", "ANSWERED", at(END - timedelta(days=5)), "inbound")]
    communications = pl.DataFrame(
        [(m, c, None, t, d, "email") for m, c, t, d in messages],
        schema=empty_table("communications").schema,
        orient="row",
    )
    meetings = pl.DataFrame(
        [("mt-1", "MET", at(END - timedelta(days=3)), "check_in", 0.2)],
        schema=empty_table("meetings").schema,
        orient="row",
    )
    accounts = customers_frame(customers)
    tables = {key: empty_table(ACTIVITY_TABLES[key]) for key in RISK_TABLES}
    tables |= {"communications": communications, "meetings": meetings}
    level_days = level_metrics_by_day(frame, END, END, settings.risk)
    act = tables | {
        "usage": frame.lazy(),
        "usage_rows": frame.height,
        "level_days": level_days,
        "tickets_since": None,
    }
    signals, _ = detect_risk(END, END, settings, accounts, act)
    return signals.filter(pl.col("type") == "silent_account")


def test_a_silent_account_is_found_despite_its_seats_and_its_csms_emails() -> None:
    silent = run(Settings())
    assert silent["customer_id"].to_list() == ["SILENT"]
    assert '"days_silent":20' in silent["facts"][0]
    assert f'"last_active":"{QUIET_SINCE}"' in silent["facts"][0]
    assert "inbound message" in str(silent["evidence"][0])


def test_a_level_metric_the_source_names_is_not_usage_once_configured() -> None:
    levels = RiskSettings(level_metrics=("seats_used", "storage_gb"))
    silent = run(Settings(risk=levels))
    assert sorted(silent["customer_id"]) == ["SILENT", "STORAGE"]


def test_a_metric_that_behaves_as_a_level_is_recognised_without_being_named() -> None:
    """Among 30 busy accounts that keep storage, `storage_gb` barely moves from day to day: a
    level, found by its behaviour, so the account with nothing but storage left is silent;
    `dau` moves daily and stays activity (the busy accounts are not silent)."""
    silent = run(Settings(), crowd=30)
    assert sorted(silent["customer_id"]) == ["SILENT", "STORAGE"]
    off = run(Settings(risk=RiskSettings(level_change=0.0)), crowd=30)
    assert off["customer_id"].to_list() == ["SILENT"]


def test_an_urgent_ticket_is_an_escalation_only_where_urgent_tickets_are_rare() -> None:
    """A first urgent ticket in months is an escalation; the same ticket at an account that
    files one every ten days is routine, unless several come within the window."""
    from insight_pipeline.lib.detectors.risk import detect_support_surge

    def tickets(customer: str, days_ago: list[int]) -> list[tuple]:
        return [
            (f"{customer}-{d}", customer, at(END - timedelta(days=d)), None, "urgent", None, "x")
            for d in days_ago
        ]

    routine = list(range(12, 190, 10))  # 18 urgent tickets over the baseline half-year
    rows = (
        tickets("RARE", [1])
        + tickets("ROUTINE", [1, *routine])
        + tickets("BURST", [0, 1, 2, *routine])
    )
    frame = pl.DataFrame(rows, schema=empty_table("support_tickets").schema, orient="row")
    accounts = customers_frame(["RARE", "ROUTINE", "BURST"])
    found = detect_support_surge(frame, accounts, END, END, RiskSettings())
    assert sorted(found["customer_id"]) == ["BURST", "RARE"]
    assert (found["severity"] >= 0.75).all()
    assert all(json.loads(f)["usual_known"] for f in found["facts"])
    # the tickets' record begun 10 days ago: still an escalation, but no usual to quote
    # (trial 7b: "against about 0 usually" on accounts 0-13 days old)
    young = frame.filter(pl.col("customer_id") == "RARE")
    found = detect_support_surge(
        young, accounts, END, END, RiskSettings(), since=END - timedelta(days=10)
    )
    facts = json.loads(found["facts"].item())
    assert facts["usual_known"] is False
    context = narrative_context(
        {"type": "support_surge", "category": "risk", "customer_id": "RARE", "facts": facts}
    )
    summary = TemplateNarrator().narrate([context])[0]["summary"]
    assert "too early in its record of tickets to know its usual" in summary
    assert "usually" not in summary


def test_a_source_whose_every_metric_looks_steady_keeps_them_as_usage() -> None:
    """If every metric of a day looked like a level (a source of steady giants), none is taken
    for one: otherwise every account of that source would read as silent."""
    steady = pl.DataFrame(
        [
            (f"G{i:02d}", END - timedelta(days=d), metric, 5000.0 + i)
            for i in range(30)
            for d in range(60)
            for metric in ("dau", "events")
        ],
        schema=USAGE_SCHEMA,
        orient="row",
    )
    assert level_metrics_by_day(steady, END, END, RiskSettings()).height == 0
    seats = steady.with_columns(
        pl.when(pl.col("metric") == "events")
        .then(pl.lit("storage_gb"))
        .otherwise("metric")
        .alias("metric")
    )
    with_wiggle = pl.concat(
        [
            seats.filter(pl.col("metric") == "storage_gb"),
            seats.filter(pl.col("metric") == "dau").with_columns(
                (pl.col("value") * (1 + 0.3 * (pl.col("date").dt.day() % 2))).alias("value")
            ),
        ]
    )
    found = level_metrics_by_day(with_wiggle, END, END, RiskSettings())
    assert found["metric"].to_list() == ["storage_gb"]


def test_a_weekly_health_score_is_judged_on_its_own_swings() -> None:
    """Weekly scores carried forward look still six days a week; the noise is measured from
    reading to reading, so a 16-point fall of an account whose readings swing by 10 is not a
    drop, while the same fall of a steady account is."""
    from insight_pipeline.lib.detectors.risk import detect_health_drop

    rows = []
    for customer, swing in (("NOISY", 10.0), ("STEADY", 1.0)):
        for week in range(16):  # 70, 50, 70, ... (or 61, 59, ...), then 44 on the last day
            day = END - timedelta(days=7 * (15 - week))
            score = 60.0 + swing * (-1.0) ** week if week < 15 else 44.0
            rows.append((customer, day, score))
    health = pl.DataFrame(
        rows, schema={"customer_id": pl.String, "date": pl.Date, "score": pl.Float64}, orient="row"
    )
    accounts = customers_frame(["NOISY", "STEADY"])
    found = detect_health_drop(health, accounts, END, END, RiskSettings())
    assert found["customer_id"].to_list() == ["STEADY"]


def test_a_baseline_is_a_rate_over_the_days_on_record() -> None:
    """Six inbound messages and six tickets in the last two weeks, none before: for a customer
    of a month, or in a source exported for six weeks, there is no quiet half-year to compare
    with (nothing is raised); for a customer of years whose record covers the half-year, it is a
    surge of its activity and of its tickets."""
    from insight_pipeline.lib.detectors.engagement import detect_increased_activity
    from insight_pipeline.lib.detectors.risk import detect_support_surge
    from insight_pipeline.lib.settings import EngagementSettings

    ids = ["NEW", "OLD"]
    accounts = customers_frame(ids).with_columns(
        pl.when(pl.col("customer_id") == "NEW")
        .then(pl.lit(END - timedelta(days=30)))
        .otherwise(pl.col("contract_start"))
        .alias("contract_start")
    )
    recent = [END - timedelta(days=d) for d in (1, 2, 4, 6, 8, 10)]
    events = pl.DataFrame({"customer_id": [c for c in ids for _ in recent], "date": recent * 2})
    tickets = pl.DataFrame(
        [(f"{c}-{d}", c, at(d), None, "normal", None, "x") for c in ids for d in recent],
        schema=empty_table("support_tickets").schema,
        orient="row",
    )

    def raised(since: date | None) -> tuple[list[str], list[str]]:
        active = detect_increased_activity(events, accounts, END, END, EngagementSettings(), since)
        surge = detect_support_surge(tickets, accounts, END, END, RiskSettings(), since)
        return sorted(active["customer_id"]), sorted(surge["customer_id"])

    assert raised(None) == (["OLD"], ["OLD"])
    assert raised(END - timedelta(days=45)) == ([], [])  # exported for six weeks


def test_the_trailing_maximum_at_a_few_columns_is_that_of_the_whole_matrix() -> None:
    """A day's run reads the health scores' trailing maximum at one column: taken from that
    column's own window, it equals the doubling spans' over the whole matrix (NaN ignored, NaN
    where the window holds none), and a column whose window is cut by the matrix's start or
    many columns still take the doubling."""
    import numpy as np

    from insight_pipeline.lib.detectors.risk import _trailing_max, _trailing_max_at

    rng = np.random.default_rng(2)
    matrix = rng.normal(50, 10, (40, 95))
    matrix[rng.random(matrix.shape) < 0.6] = np.nan
    matrix[3, 40:80] = np.nan  # a window with no reading
    whole = _trailing_max(matrix, 28)
    for columns in ([94], [60, 87, 94], [5, 94], list(range(95))):
        cols = np.array(columns)
        np.testing.assert_array_equal(_trailing_max_at(matrix, 28, cols), whole[:, cols])
    assert np.isnan(_trailing_max_at(matrix, 28, np.array([79])))[3, 0]


def test_health_drops_of_a_range_are_those_of_its_days() -> None:
    """Weekly and fortnightly scores, some falling by 15-30 points: a range run raises exactly
    what runs of each day alone raise (the noise's look-back reaches before the first day)."""
    import numpy as np

    from insight_pipeline.lib.detectors.risk import detect_health_drop

    rng = np.random.default_rng(3)
    rows = []
    for i in range(300):
        every = 7 if i % 2 else 14
        fall_at = 260 + i % 60
        for day in range(0, 320, every):
            score = 70 + rng.normal(0, 6) - (15 + i % 16 if day >= fall_at else 0)
            rows.append((f"A{i:02d}", END - timedelta(days=319 - day), float(round(score, 1))))
    health = pl.DataFrame(
        rows, schema={"customer_id": pl.String, "date": pl.Date, "score": pl.Float64}, orient="row"
    )
    accounts = customers_frame([f"A{i:02d}" for i in range(300)])
    s, first = RiskSettings(), END - timedelta(days=59)
    whole = detect_health_drop(health, accounts, first, END, s)
    days = [
        detect_health_drop(
            health, accounts, first + timedelta(days=k), first + timedelta(days=k), s
        )
        for k in range(60)
    ]
    assert whole.height > 3
    assert (
        pl.concat(days)
        .sort("customer_id", "partition_date")
        .equals(whole.sort("customer_id", "partition_date"))
    )


def test_support_surges_with_fractional_priority_weights_are_a_ranges_and_its_days() -> None:
    """Priority weights an organisation chose (0.3, 1.1, 2.7, 4.9) make no sums exact in
    binary: the weighted ticket totals are added in a fixed order, so a range and each day
    alone, whose grids start on different days, raise the same surges with the same numbers."""
    import numpy as np

    from insight_pipeline.lib.detectors.risk import detect_support_surge

    rng = np.random.default_rng(8)
    ids = [f"C{i:02d}" for i in range(20)]
    accounts = customers_frame(ids)
    rows = []
    for index, customer in enumerate(ids):
        days = rng.integers(1, 300, size=25).tolist()
        if index < 4:  # a surge in the last fortnight
            days += rng.integers(1, 14, size=12).tolist()
        for n, day in enumerate(days):
            priority = ["low", "normal", "high", "urgent"][int(rng.integers(0, 4))]
            rows.append(
                (
                    f"{customer}-{n}",
                    customer,
                    at(END - timedelta(days=day)),
                    None,
                    priority,
                    None,
                    "x",
                )
            )
    tickets = pl.DataFrame(rows, schema=empty_table("support_tickets").schema, orient="row")
    s = RiskSettings(priority_weights={"low": 0.3, "normal": 1.1, "high": 2.7, "urgent": 4.9})
    first = END - timedelta(days=20)
    key = ["customer_id", "partition_date", "type"]
    ranged = detect_support_surge(tickets, accounts, first, END, s).sort(key)
    daily = pl.concat(
        [
            detect_support_surge(tickets, accounts, day, day, s)
            for day in pl.date_range(first, END, "1d", eager=True)
        ],
        how="vertical_relaxed",
    ).sort(key)
    assert ranged.height > 0
    assert ranged.equals(daily)


def test_day_grid_counts_are_those_of_a_join_of_the_events_on_the_customers() -> None:
    """`DayGrid.counts` finds each event's customer by an Enum cast, not a join: the same cells
    and sums, events of customers outside the grid, null ids and days outside it ignored, and a
    null customer in the grid (sorted first) keeping its row of zeros."""
    import numpy as np

    from insight_pipeline.lib.detectors.common import DayGrid

    rng = np.random.default_rng(3)
    n, first, last = 5_000, date(2026, 1, 1), date(2026, 3, 31)
    names = [None, "c-07", "c-02", "c-11", "c-03", "other", "zz"]
    events = pl.DataFrame(
        {
            "customer_id": rng.choice(np.array(names, dtype=object), n).tolist(),
            "date": [first + timedelta(days=int(d)) for d in rng.integers(-10, 100, n)],
            "weight": rng.integers(0, 5, n) / 4,
        }
    )
    for customers in (["c-02", "c-03", "c-07", "c-11"], [None, "c-11", "c-02", "c-07"]):
        grid = DayGrid.build(pl.Series("customer_id", customers), first, last)
        rows, weight = grid.counts(events, None, "weight")
        index = pl.DataFrame(
            {"customer_id": grid.ids, "_c": pl.int_range(grid.ids.len(), eager=True)}
        )
        joined = events.filter(pl.col("date").is_between(first, last)).join(index, on="customer_id")
        cell = joined["_c"].to_numpy() * grid.n_days + (joined["date"] - first).dt.total_days()
        size = grid.ids.len() * grid.n_days
        assert np.array_equal(rows.values, np.bincount(cell, minlength=size))
        want = np.bincount(cell, weights=joined["weight"].to_numpy(), minlength=size)
        assert np.array_equal(weight.values, want)
        assert rows.values.sum() > 0
        assert grid.ids[0] is not None or rows.values[: grid.n_days].sum() == 0


def test_window_sums_at_a_few_cells_are_those_read_off_every_cell() -> None:
    """`CellCounts.trailing_sum` reads a few cells (a day's run) by a binary search among the
    events and many (a range) from prefix sums of every cell: the same sums, lagged and partial
    windows included, for counts and exact weights; unsorted events are sorted first."""
    import numpy as np

    from insight_pipeline.lib.detectors.common import DayGrid

    rng = np.random.default_rng(11)
    first, last = date(2026, 1, 1), date(2026, 6, 30)
    customers = pl.Series("customer_id", [f"c-{i:03d}" for i in range(60)])
    n = 3_000
    events = pl.DataFrame(
        {
            "customer_id": rng.choice(customers.to_numpy(), n).tolist(),
            "date": [first + timedelta(days=int(d)) for d in rng.integers(0, 181, n)],
            "weight": rng.integers(0, 9, n) / 4,
        }
    )
    grid = DayGrid.build(customers, first, last)
    every = np.arange(customers.len() * grid.n_days)
    few = rng.choice(every, every.size // 40, replace=False)
    assert 16 * few.size < every.size <= 16 * every.size  # one path each
    for counts in grid.counts(events, None, "weight"):
        assert counts.exact and bool((np.diff(counts.cells) >= 0).all())
        for window, lag, partial in ((14, 0, False), (30, 14, False), (7, 0, True)):
            dense = counts.trailing_sum(every, window, lag=lag, partial=partial)[few]
            sparse = counts.trailing_sum(few, window, lag=lag, partial=partial)
            np.testing.assert_array_equal(sparse, dense)
            assert np.nansum(sparse) > 0


def test_rows_on_customer_days_are_those_of_the_semi_join_on_customer_days() -> None:
    """`on_customer_days` tests each row on its account's contract start and churn instead of
    semi-joining every customer day: the same rows in the same order, with accounts listed once
    (null ids, null or edge dates, days outside the range) and listed twice (the semi-join)."""
    import numpy as np

    from insight_pipeline.lib.detectors.common import customer_days, on_customer_days

    rng = np.random.default_rng(5)
    start, end, n = date(2026, 3, 1), date(2026, 3, 31), 4_000

    def some_days(k: int, nulls: float) -> list:
        days = [start + timedelta(days=int(d)) for d in rng.integers(-5, 36, k)]
        return [None if rng.random() < nulls else d for d in days]

    ids = [f"c-{i}" for i in range(12)]
    accounts = pl.DataFrame(
        {
            "customer_id": [*ids, None],
            "contract_start": some_days(13, 0.3),
            "churned_on": some_days(13, 0.5),
            "renewal_date": [None] * 13,
        },
        schema_overrides={"renewal_date": pl.Date},
    )
    frame = pl.DataFrame(
        {
            "customer_id": rng.choice(np.array([*ids, None, "other"], dtype=object), n).tolist(),
            "partition_date": some_days(n, 0.02),
            "row": np.arange(n),
        }
    )
    twice = pl.concat([accounts, accounts.with_columns(pl.col("churned_on").shift(3))])
    for listed in (accounts, twice):
        days = customer_days(listed, start, end).select("customer_id", "partition_date")
        want = frame.join(days, on=["customer_id", "partition_date"], how="semi")
        got = on_customer_days(frame, listed, start, end)
        assert got.equals(want) and 0 < got.height < n


def test_a_leaving_champions_meetings_are_counted_as_a_run_of_the_day_reads_them() -> None:
    """champion_left's meetings_attended counts the meetings of the look-back up to the day
    judged: a range run, which reads further back and further on, gives each day the count a
    run of that day alone gives (neither the meeting a year and more before, nor the one the
    day after, which is not known yet)."""
    from insight_pipeline.lib.detectors.risk import detect_champion_left

    left_on = END - timedelta(days=2)
    contacts = pl.DataFrame(
        [("K1", "CHAMP", "Ann Lee", "a@x", "VP", "champion", None, left_on)],
        schema=empty_table("contacts").schema,
        orient="row",
    )
    met = {"mt-old": END - timedelta(days=400), "mt-1": END - timedelta(days=60),
           "mt-2": END - timedelta(days=10), "mt-next": END + timedelta(days=1)}  # fmt: skip
    meetings = pl.DataFrame(
        [(m, "CHAMP", at(day), "check_in", None) for m, day in met.items()],
        schema=empty_table("meetings").schema,
        orient="row",
    )
    attendees = pl.DataFrame({"meeting_id": list(met), "contact_id": ["K1"] * len(met)})
    accounts = customers_frame(["CHAMP"])
    s = Settings()

    def counts(start: date, end: date) -> dict[date, int]:
        found = detect_champion_left(
            contacts, attendees, meetings, accounts, start, end, s.risk,
            s.engagement.history_days,
        )  # fmt: skip
        return {
            day: json.loads(facts)["meetings_attended"]
            for day, facts in found.select("partition_date", "facts").iter_rows()
        }

    ranged = counts(left_on, END + timedelta(days=3))
    assert ranged[END] == counts(END, END)[END] == 2
    assert ranged[END + timedelta(days=1)] == 3  # the next day knows its own meeting


def test_tickets_filed_in_clusters_are_no_support_surge_and_a_real_surge_is() -> None:
    """150 accounts whose tickets come in clusters (an incident files 2-6 within a few days,
    about monthly) and 150 filing at random, 10 of which file five times as many in the last two
    weeks. Judged against its own clustered past, an incident is seldom a surge: fewer than 1
    in 6 clustered accounts raised in a quarter (23 of 150), where the Poisson test alone raises
    more than 1 in 3 (73); the planted surges are all found, as by the Poisson test alone, and
    the random filers stay as quiet."""
    from unittest import mock

    import numpy as np

    from insight_pipeline.lib.detectors.risk import detect_support_surge

    rng = np.random.default_rng(12)
    days = 400
    first = END - timedelta(days=days - 1)
    opened: list[tuple[str, int]] = []  # (customer, day index)
    for i in range(150):
        incidents = np.flatnonzero(rng.poisson(rng.uniform(0.7, 1.5) / 30.44, days))
        for start in incidents:
            opened += [(f"K{i:03d}", d) for d in start + rng.integers(0, 3, rng.integers(2, 7))]
    surge = np.where(np.arange(days) >= days - 14, 5.0, 1.0)
    for i in range(150):
        rate = rng.uniform(3, 6) / 30.44 * (surge if i < 10 else 1.0)
        opened += [(f"R{i:03d}", d) for d in np.repeat(np.arange(days), rng.poisson(rate))]
    frame = pl.DataFrame(
        [
            (f"T{n}", customer, at(first + timedelta(days=int(d))), None, "normal", None, "x")
            for n, (customer, d) in enumerate(opened)
            if d < days
        ],
        schema=empty_table("support_tickets").schema,
        orient="row",
    )
    accounts = customers_frame(
        [f"K{i:03d}" for i in range(150)] + [f"R{i:03d}" for i in range(150)]
    )
    planted = pl.col("customer_id").is_in([f"R{i:03d}" for i in range(10)])

    def raised() -> dict[str, int]:
        found = detect_support_surge(frame, accounts, END - timedelta(days=89), END, RiskSettings())
        return accounts_by_group(found, planted)

    judged = raised()
    with mock.patch(
        "insight_pipeline.lib.detectors.risk.excess_dispersion",
        lambda counts, cells, *_: np.ones(cells.size),
    ):
        poisson_only = raised()
    assert judged.get("planted", 0) >= 9 and judged.get("planted") == poisson_only.get("planted")
    assert judged.get("K", 0) < 150 / 6 < 150 / 3 < poisson_only.get("K", 0)
    assert judged.get("R", 0) == poisson_only.get("R", 0) <= 3


def test_an_incident_that_makes_most_accounts_file_is_no_accounts_surge() -> None:
    """An outage 40 days before the end makes 60% of 200 accounts filing at random open 3-8
    tickets within two days; 10 others file several times their usual in the last two weeks.
    Judged alone, most of the outage's accounts raise a surge; against everyone's tickets
    (`ticket_population`: their count at its lower bound against their usual) fewer than 1 in
    8 do, the evidence says why, and the planted surges are still found. Each day's factor is
    the one a run of that day alone measures."""
    import numpy as np

    from insight_pipeline.lib.detectors.risk import detect_support_surge, ticket_population

    rng = np.random.default_rng(14)
    days, n = 400, 200
    first = END - timedelta(days=days - 1)
    counts = rng.poisson(rng.uniform(2, 5, n)[:, None] / 30.44, (n, days))
    counts[:10, days - 14 :] += rng.poisson(4 * 3.5 / 30.44, (10, 14))
    hit = np.flatnonzero(rng.random(n) < 0.6)
    hit = hit[hit >= 10]
    counts[hit, days - 40] += rng.integers(2, 5, hit.size)
    counts[hit, days - 39] += rng.integers(1, 5, hit.size)
    account, day = np.nonzero(counts)
    account, day = np.repeat(account, counts[account, day]), np.repeat(day, counts[account, day])
    frame = pl.DataFrame(
        [
            (f"T{i}", f"R{a:03d}", at(first + timedelta(days=int(d))), None, "normal", None, "x")
            for i, (a, d) in enumerate(zip(account, day, strict=True))
        ],
        schema=empty_table("support_tickets").schema,
        orient="row",
    )
    accounts = customers_frame([f"R{i:03d}" for i in range(n)])
    planted = pl.col("customer_id").is_in([f"R{i:03d}" for i in range(10)])
    outage = pl.col("customer_id").is_in([f"R{i:03d}" for i in hit])
    start, s = END - timedelta(days=89), RiskSettings()
    population = ticket_population(frame, accounts, start - timedelta(days=365), END, s)

    def raised(population: pl.DataFrame | None) -> tuple[pl.DataFrame, dict[str, int]]:
        found = detect_support_surge(frame, accounts, start, END, s, population=population)
        return found, {
            name: found.filter(group)["customer_id"].n_unique()
            for name, group in (
                ("planted", planted),
                ("outage", outage),
                ("other", ~planted & ~outage),
            )
        }

    _, alone = raised(None)
    found, judged = raised(population)
    assert alone["outage"] > 0.75 * hit.size and judged["outage"] < hit.size / 8
    assert judged["planted"] == alone["planted"] >= 6 and judged["other"] <= alone["other"]
    outage_weeks = pl.col("partition_date").is_between(
        END - timedelta(days=40), END - timedelta(days=27)
    )
    during = found.filter(outage & outage_weeks)
    assert during.height and all(
        "everyone's tickets at" in e[0]["comparison"] for e in during["evidence"]
    )
    on = pl.col("date") == END - timedelta(days=39)
    assert population.filter(on)["factor"].item() > 1.5
    for offset in (41, 40, 39, 30, 0):
        day = END - timedelta(days=offset)
        alone_day = ticket_population(frame, accounts, day - timedelta(days=365), day, s)
        same_day = pl.col("date") == day
        assert alone_day.filter(same_day).equals(population.filter(same_day)), day
