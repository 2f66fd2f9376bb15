"""What goes into each user's digest: selection, ranking, grouping and team roll-ups.

Pure polars, no I/O: the store hands over the candidate insights of a window
(`InsightStore.digest_insights`), this module decides who gets which digest and what it says, and
`lib/email.py` renders and delivers it. Keeping the decisions here makes them testable on small
frames without a database or an SMTP server.

Rules (the product's, in one place):
- A digest covers a window ending on its day D: D alone (daily) or D-6..D (weekly). It arrives
  the morning after D, so a weekly preference's weekday is the weekday of D + 1.
- Its items are the user's insights open in that window (the store has already dropped dismissed,
  actioned, expired and still-snoozed ones), ranked by priority, then score, then newest, capped
  at `RankingSettings.daily_cap` per user; the rest are counted ("+N more in your feed").
- Items are grouped as high priority, opportunities, then trends (everything else worth a look).
- Anyone with reports (transitively through `manager_id`) also gets a team section: counts by
  CSM and priority, and the top items across the team.
- Team-level insights (cross-account patterns, category `team`, lib/team.py) are never lines of
  the own groups or team counts: they go to the team section's "across accounts" list of the
  manager or leader they are for and of everyone above them.
- Users whose preference is off, or who would get an empty digest, get nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import polars as pl

KINDS = ("daily", "weekly")
FREQUENCIES = ("daily", "weekly", "off")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

#: Groups in display order: (key, heading).
GROUPS: tuple[tuple[str, str], ...] = (
    ("high", "High priority"),
    ("opportunities", "Opportunities"),
    ("trends", "Trends"),
)

#: Types that are openings rather than risks even outside the opportunity category: growth and
#: good standing are what a CSM turns into expansion, references and timely outreach.
OPPORTUNITY_TYPES = frozenset(
    {"adoption_trend", "feature_discovery", "outperforming", "outreach_window"}
)

_PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}

#: The category of team-level insights (no customer; lib/team.py).
TEAM_CATEGORY = "team"

USER_COLUMNS = ("user_id", "name", "email", "role", "manager_id")

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class DigestWindow:
    """The days one digest covers and the instants its selection is judged at."""

    kind: str
    day: date
    """D: the last day covered, the digest's partition and its key in the ledger."""

    @property
    def first_day(self) -> date:
        return self.day - timedelta(days=6) if self.kind == "weekly" else self.day

    @property
    def as_of(self) -> datetime:
        """The end of D (midnight UTC): snoozes and expiry are judged here, so a digest re-built
        later for the same day selects the same insights (bar the users' own later actions)."""
        return datetime.combine(self.day + timedelta(days=1), time(0), tzinfo=UTC)

    @property
    def open_after(self) -> datetime:
        """An insight must not have expired before this: the end of D for a daily digest (open
        now), the start of the week for a weekly one (open at some point that week)."""
        if self.kind == "weekly":
            return datetime.combine(self.first_day, time(0), tzinfo=UTC)
        return self.as_of

    @property
    def arrives_on(self) -> date:
        return self.day + timedelta(days=1)


def digest_window(kind: str, day: date) -> DigestWindow:
    if kind not in KINDS:
        raise ValueError(f"digest kind must be one of {KINDS}, not {kind!r}")
    return DigestWindow(kind, day)


@dataclass(frozen=True)
class Item:
    """One line of a digest: customer: title — action."""

    id: str
    customer: str
    title: str
    action: str
    priority: str
    category: str
    type: str
    is_new: bool
    owner_id: str
    owner_name: str = ""
    repeats: str = ""
    """What the insight repeats (an echo, lib/ranking/echoes.py), as words: "usage drop in
    logins"; empty for news."""


@dataclass(frozen=True)
class Group:
    key: str
    heading: str
    items: list[Item]
    total: int
    """Open items of this group before the cap (`len(items)` after it)."""


@dataclass(frozen=True)
class TeamMember:
    user_id: str
    name: str
    high: int
    medium: int
    low: int
    new: int

    @property
    def total(self) -> int:
        return self.high + self.medium + self.low


@dataclass(frozen=True)
class TeamSection:
    members: list[TeamMember]
    top: list[Item]
    patterns: list[Item] = field(default_factory=list)
    """Cross-account patterns for this user or their reports, best first (capped)."""

    @property
    def totals(self) -> dict[str, int]:
        return {
            "high": sum(m.high for m in self.members),
            "medium": sum(m.medium for m in self.members),
            "low": sum(m.low for m in self.members),
            "new": sum(m.new for m in self.members),
            "total": sum(m.total for m in self.members),
        }


@dataclass(frozen=True)
class Digest:
    """Everything one email says, ready for the templates."""

    user_id: str
    name: str
    email: str
    window: DigestWindow
    groups: list[Group]
    open_total: int
    """The user's open items in the window before the cap."""
    new_total: int
    team: TeamSection | None = None

    @property
    def kind(self) -> str:
        return self.window.kind

    @property
    def day(self) -> date:
        return self.window.day

    @property
    def shown(self) -> int:
        return sum(len(g.items) for g in self.groups)

    @property
    def more(self) -> int:
        return self.open_total - self.shown

    def group_total(self, key: str) -> int:
        """Open items of group `key` before the cap (0 when the group is absent)."""
        return next((g.total for g in self.groups if g.key == key), 0)

    @property
    def high_total(self) -> int:
        return self.group_total("high")

    @property
    def item_count(self) -> int:
        """Lines in the email, own and team: what the ledger records."""
        team = len(self.team.top) + len(self.team.patterns) if self.team else 0
        return self.shown + team

    @property
    def is_empty(self) -> bool:
        return self.shown == 0 and (self.team is None or not (self.team.top or self.team.patterns))


def one_line(value: object) -> str:
    """Text with every line break and control character made a single space.

    Names and titles come from customer data: in a header a CR/LF would inject headers, in the
    text part it would break the layout. (Python's email policy also refuses CR/LF in headers;
    cleaning first means such a user still gets a digest instead of an error.)
    """
    return " ".join(_CONTROL.sub(" ", str(value or "")).split())


# ---------------------------------------------------------------------------- preferences


def resolve_preferences(users: pl.DataFrame, stored: pl.DataFrame) -> pl.DataFrame:
    """Every user's (frequency, weekday): the stored choice, else daily."""
    return (
        users.select("user_id")
        .join(stored.select("user_id", "frequency", "weekday"), on="user_id", how="left")
        .with_columns(
            pl.col("frequency").fill_null("daily"),
            pl.col("weekday").cast(pl.Int16),
        )
    )


def due_users(preferences: pl.DataFrame, kind: str, day: date) -> list[str]:
    """Users who get a `kind` digest for day D: daily ones always, weekly ones when D + 1 (the
    morning it arrives) is their weekday; 'off' never."""
    if kind == "daily":
        due = preferences.filter(pl.col("frequency") == "daily")
    else:
        arrives = (day + timedelta(days=1)).weekday()
        due = preferences.filter((pl.col("frequency") == "weekly") & (pl.col("weekday") == arrives))
    return sorted(due.get_column("user_id").to_list())


# ---------------------------------------------------------------------------- selection


def rank_items(insights: pl.DataFrame, window: DigestWindow) -> pl.DataFrame:
    """The candidates of `window` with their digest fields, best first within each user.

    Adds `group`, `is_new` (raised within the window), `customer` (name, else id), a
    de-duplicated `line_title` and the recommended action's text; `rank` is 1 for each user's
    best item. Ties are broken by newest then id so the order is total and reproducible.
    """
    frame = insights.filter(pl.col("partition_date") <= window.day)
    customer = pl.coalesce(pl.col("customer_name"), pl.col("customer_id"), pl.lit("?"))
    action = pl.col("recommended_action").str.json_path_match("$.description")
    echo = (
        pl.col("score_parts").str.json_path_match("$.echo_of")
        if "score_parts" in frame.columns
        else pl.lit(None, dtype=pl.String)
    )
    echo_type = echo.str.splitn(" ", 2).struct.field("field_0").str.replace_all("_", " ")
    echo_subject = echo.str.splitn(" ", 2).struct.field("field_1").str.replace_all("_", " ")
    frame = frame.with_columns(
        pl.when(echo_subject.is_not_null() & (echo_subject != ""))
        .then(pl.format("{} in {}", echo_type, echo_subject))
        .otherwise(echo_type)
        .fill_null("")
        .alias("repeats"),
        customer.alias("customer"),
        pl.col("priority").replace_strict(_PRIORITY_RANK, default=3).alias("_prio"),
        (pl.col("partition_date") >= window.first_day).alias("is_new"),
        pl.coalesce(action, pl.lit("")).alias("action"),
        pl.when(pl.col("priority") == "high")
        .then(pl.lit("high"))
        .when((pl.col("category") == "opportunity") | pl.col("type").is_in(list(OPPORTUNITY_TYPES)))
        .then(pl.lit("opportunities"))
        .otherwise(pl.lit("trends"))
        .alias("group"),
    ).with_columns(_line_title().alias("line_title"))
    frame = frame.sort(
        ["user_id", "_prio", "score", "partition_date", "id"],
        descending=[False, False, True, True, False],
    )
    return frame.with_columns(pl.int_range(1, pl.len() + 1).over("user_id").alias("rank")).drop(
        "_prio"
    )


def _line_title() -> pl.Expr:
    """The title without a trailing " at <customer>": the line already starts with the name."""
    title = pl.col("title")
    for joiner in (" at ", " for "):
        suffix = pl.lit(joiner) + pl.col("customer")
        title = (
            pl.when(title.str.ends_with(suffix) & (title.str.len_chars() > suffix.str.len_chars()))
            .then(title.str.head(title.str.len_chars() - suffix.str.len_chars()))
            .otherwise(title)
        )
    return title


def team_pairs(users: pl.DataFrame) -> pl.DataFrame:
    """(manager_id, user_id) for every report, direct or transitive, via `manager_id`.

    A cycle in the reporting lines (bad data) ends the walk instead of looping, and nobody is
    their own report.
    """
    direct = users.filter(pl.col("manager_id").is_not_null()).select(
        pl.col("manager_id").cast(pl.String), pl.col("user_id").cast(pl.String)
    )
    pairs = direct.unique()
    for _ in range(users.height):
        deeper = (
            pairs.join(direct, left_on="user_id", right_on="manager_id", suffix="_report")
            .select("manager_id", pl.col("user_id_report").alias("user_id"))
            .filter(pl.col("manager_id") != pl.col("user_id"))
        )
        grown = pl.concat([pairs, deeper]).unique()
        if grown.height == pairs.height:
            break
        pairs = grown
    return pairs.filter(pl.col("manager_id") != pl.col("user_id")).sort("manager_id", "user_id")


def build_digests(
    window: DigestWindow,
    users: pl.DataFrame,
    insights: pl.DataFrame,
    recipients: list[str],
    *,
    cap: int,
    team_top: int = 5,
) -> list[Digest]:
    """The digests of `window` for `recipients` (ids), skipping empty ones and users without an
    email address. `users` holds USER_COLUMNS; `insights` the store's candidates."""
    ranked = rank_items(insights, window)
    strategic = ranked.filter(pl.col("category") == TEAM_CATEGORY)
    ranked = ranked.filter(pl.col("category") != TEAM_CATEGORY)
    names = dict(users.select("user_id", "name").iter_rows())
    pairs = team_pairs(users)
    people = users.filter(pl.col("user_id").is_in(recipients)).sort("user_id")
    by_user = ranked.partition_by("user_id", as_dict=True, maintain_order=True)
    empty = ranked.clear()
    digests = []
    for person in people.iter_rows(named=True):
        email = (person["email"] or "").strip()
        if not email:
            continue
        own = by_user.get((person["user_id"],), empty)
        groups = _groups(own, cap, names)
        reports = pairs.filter(pl.col("manager_id") == person["user_id"])["user_id"].to_list()
        patterns = strategic.filter(pl.col("user_id").is_in([person["user_id"], *reports]))
        team = _team(ranked.filter(pl.col("user_id").is_in(reports)), names, team_top, patterns)
        digest = Digest(
            user_id=person["user_id"],
            name=one_line(person["name"] or person["user_id"]),
            email=email,
            window=window,
            groups=groups,
            open_total=own.height,
            new_total=int(own["is_new"].sum()) if own.height else 0,
            team=team,
        )
        if not digest.is_empty:
            digests.append(digest)
    return digests


def _items(frame: pl.DataFrame, names: dict[str, str]) -> list[Item]:
    return [
        Item(
            id=row["id"],
            customer=one_line(row["customer"]),
            title=one_line(row["line_title"]),
            action=one_line(row["action"]),
            priority=row["priority"],
            category=row["category"],
            type=row["type"],
            is_new=bool(row["is_new"]),
            owner_id=row["user_id"],
            owner_name=one_line(names.get(row["user_id"]) or row["user_id"]),
            repeats=one_line(row.get("repeats") or ""),
        )
        for row in frame.iter_rows(named=True)
    ]


def _groups(own: pl.DataFrame, cap: int, names: dict[str, str]) -> list[Group]:
    """The capped top items split into GROUPS, each with its uncapped total."""
    shown = own.filter(pl.col("rank") <= cap)
    groups = []
    for key, heading in GROUPS:
        total = own.filter(pl.col("group") == key).height
        items = _items(shown.filter(pl.col("group") == key), names)
        if total:
            groups.append(Group(key, heading, items, total))
    return groups


def _team(
    team: pl.DataFrame, names: dict[str, str], top: int, patterns: pl.DataFrame | None = None
) -> TeamSection | None:
    """Counts by CSM and priority plus the best `top` items across the team, and the best `top`
    cross-account patterns (None if all are quiet)."""
    patterns = patterns if patterns is not None else team.clear()
    best_patterns = _items(_best(patterns).head(top), names)
    if team.is_empty():
        return TeamSection(members=[], top=[], patterns=best_patterns) if best_patterns else None
    counts = (
        team.group_by("user_id")
        .agg(
            *(
                (pl.col("priority") == level).sum().cast(pl.Int64).alias(level)
                for level in _PRIORITY_RANK
            ),
            pl.col("is_new").sum().cast(pl.Int64).alias("new"),
        )
        .with_columns(
            pl.col("user_id").replace_strict(names, default=pl.col("user_id")).alias("name")
        )
        .sort(["high", "medium", "low", "name"], descending=[True, True, True, False])
    )
    members = [
        TeamMember(r["user_id"], r["name"], r["high"], r["medium"], r["low"], r["new"])
        for r in counts.iter_rows(named=True)
    ]
    return TeamSection(
        members=members, top=_items(_best(team).head(top), names), patterns=best_patterns
    )


def _best(frame: pl.DataFrame) -> pl.DataFrame:
    """Priority, then score, then newest, then id: a total order."""
    return frame.with_columns(
        pl.col("priority").replace_strict(_PRIORITY_RANK, default=3).alias("_prio")
    ).sort(["_prio", "score", "partition_date", "id"], descending=[False, True, True, False])
