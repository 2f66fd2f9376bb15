"""Deterministic sample source with planted, labelled patterns (``insight-pipeline sample``).

Detectors can only be tuned and evaluated on data whose truth is known, so this module writes every
table of the data contract (section 1) with the structure real customer-success data has —
segments, weekly seasonality, global holidays, overdispersed noise, missing zero rows, absent
metrics, late-starting and churning customers — and plants patterns of the contract's insight types
whose truth it writes to ``ground_truth.csv``.

Determinism: account-level choices (segments, who churns, which pattern starts when) come from
``numpy.random.default_rng(seed)``; day-level draws come from one generator per table and per block
of ``RNG_BLOCK`` accounts, seeded by ``(seed, table, block)``. A chunk is a run of whole blocks, so
the content of the files depends on (accounts, days, seed, end_date) only, never on ``chunk_size``.

Memory: the account plan is a few arrays per account; day-level tables are built one chunk of
accounts at a time (fully vectorised over accounts x days) and appended to their files: 100,000
accounts x 365 days take about 1.5 minutes and under 1 GB of memory at the default chunk size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FEATURES",
    "HOLIDAYS",
    "METRICS",
    "PATTERN_TYPES",
    "RNG_BLOCK",
    "generate_sample",
    "holiday_dates",
]

RNG_BLOCK = 100
"""Accounts per random generator; chunk sizes are multiples of it so output ignores chunking."""
DEFAULT_CHUNK_SIZE = 2000

METRICS = ("dau", "logins", "events", "api_calls", "seats_used")
DAU, LOGINS, EVENTS, API_CALLS, SEATS = range(5)
N_COUNTS = 4  # dau..api_calls are daily counts; seats_used is a level
FEATURES = ("reports", "dashboards", "integrations", "alerts", "workflows", "ai_assistant")
SEGMENTS = ("enterprise", "mid_market", "smb")
INDUSTRIES = (
    "fintech",
    "healthcare",
    "retail",
    "manufacturing",
    "software",
    "education",
    "media",
    "logistics",
)
REGIONS = ("NA", "EMEA", "APAC", "LATAM")
PLANS = ("enterprise", "business", "pro", "starter")
ROLES = ("champion", "executive_sponsor", "decision_maker", "admin", "user")
CHAMPION, EXEC, DECIDER, ADMIN, USER = range(5)
# Contact slots per account: 0 champion, 1 decision maker, 2 admin, 3 executive sponsor or user,
# 4-7 users, 8 the executive a stakeholder_shift brings in.
SLOTS = 9
NEW_EXEC_SLOT = 8
MEETING_TYPES = ("check_in", "qbr", "onboarding", "escalation", "other")
CHECK_IN, QBR, ONBOARDING, ESCALATION, OTHER = range(5)
CHANNELS = ("email", "call", "chat")
PRIORITIES = ("low", "normal", "high", "urgent")
TOPICS = (
    "billing",
    "sso",
    "reports",
    "api",
    "performance",
    "integrations",
    "permissions",
    "data_export",
)

HOLIDAYS = ((1, 1), (5, 27), (7, 4), (9, 2), (11, 28), (12, 24), (12, 25), (12, 31))
"""(month, day) of the global holidays: every account's counts fall to HOLIDAY_FACTOR that day."""
HOLIDAY_FACTOR = 0.3

_US_PER_DAY = 86_400_000_000
_FAR = 1_000_000  # day index meaning "never" (left_on) or "before history" (negated)


# --------------------------------------------------------------------------------------------
# Pattern kinds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    """How one planted pattern type is placed: the days it may start on and what it touches."""

    name: str
    weight: float  # relative frequency among planted patterns
    tail: int  # days that must follow the start inside the history so the pattern shows
    days: str  # which calendar days may start it (see _Calendar.allowed)
    groups: frozenset[str]  # two patterns on one account never share a group
    subject: str  # metric | contact | feature | seats | none


def _kind(name: str, weight: float, tail: int, days: str, groups: str, subject: str) -> _Kind:
    return _Kind(name, weight, tail, days, frozenset(groups.split()), subject)


_ALL_GROUPS = "usage neg people engagement health tickets nps seats features growth"
_KINDS = (
    _kind("usage_drop", 1.2, 10, "workday", "usage neg", "metric"),
    _kind("usage_spike", 1.2, 10, "spike", "usage", "metric"),
    _kind("adoption_trend", 1.0, 35, "workday", "usage", "metric"),
    _kind("declining_usage", 1.0, 42, "workday", "usage neg", "metric"),
    _kind("usage_pattern_change", 1.0, 21, "workday", "usage", "metric"),
    _kind("champion_left", 1.0, 10, "any", "people neg", "contact"),
    _kind("going_dark", 1.0, 45, "any", "engagement neg", "none"),
    _kind("increased_activity", 1.0, 21, "workday", "engagement", "none"),
    _kind("stakeholder_shift", 0.8, 10, "workday", "engagement people", "contact"),
    _kind("silent_account", 0.5, 30, "any", _ALL_GROUPS, "none"),
    _kind("health_drop", 1.0, 10, "any", "health neg", "none"),
    _kind("support_surge", 1.0, 14, "any", "tickets neg", "none"),
    _kind("detractor_nps", 1.0, 10, "any", "nps people neg", "contact"),
    _kind("entitlement_limit", 0.8, 10, "any", "seats", "seats"),
    _kind("feature_discovery", 1.0, 10, "workday", "features", "feature"),
    _kind("referral_candidate", 0.8, 10, "any", "nps neg growth", "none"),
    _kind("case_study_candidate", 0.6, 10, "any", "nps neg growth health", "none"),
)
PATTERN_TYPES = tuple(k.name for k in _KINDS)
_KIND_INDEX = {k.name: i for i, k in enumerate(_KINDS)}
_CONFLICT = np.array([[bool(a.groups & b.groups) for b in _KINDS] for a in _KINDS])

# Churners mostly get one risk pattern first; the minimum lead lets it show before the churn.
_PRECURSORS = {
    "declining_usage": 42,
    "champion_left": 30,
    "going_dark": 46,
    "detractor_nps": 30,
    "silent_account": 31,
    "usage_drop": 30,
    "health_drop": 30,
}

CHURN_SHARE = 0.10
PATTERN_SHARE = 0.50  # of all accounts; the rest (about 40%) stay clean
TWO_PATTERN_SHARE = 0.4
WARNED_CHURN_SHARE = 0.8
LATE_START_SHARE = 0.05


# --------------------------------------------------------------------------------------------
# Calendar
# --------------------------------------------------------------------------------------------
def holiday_dates(start: date, end: date) -> list[date]:
    """The global holidays in [start, end]: the days every account's usage falls to ~30%."""
    years = range(start.year, end.year + 1)
    days = (date(y, m, d) for y in years for m, d in HOLIDAYS)
    return sorted(d for d in days if start <= d <= end)


@dataclass(frozen=True)
class _Calendar:
    start: date
    days: int
    epoch0: int  # start as days since 1970-01-01
    dow: np.ndarray  # (days,) Monday = 0
    holiday: np.ndarray  # (days,) bool

    @classmethod
    def build(cls, start: date, days: int) -> _Calendar:
        epoch0 = (start - date(1970, 1, 1)).days
        dow = (epoch0 + np.arange(days) + 3) % 7
        holiday = np.zeros(days, dtype=bool)
        for day in holiday_dates(start, start + timedelta(days=days - 1)):
            holiday[(day - start).days] = True
        return cls(start, days, epoch0, dow, holiday)

    def allowed(self, name: str) -> np.ndarray:
        """Days a pattern may start on, so that its first day is visible (no holiday, and the
        weekday a day-of-week baseline compares it with)."""
        workday = (self.dow < 5) & ~self.holiday
        if name == "workday":
            return workday
        if name == "spike":  # Monday-Thursday with a working next day: two-day spikes stay visible
            return workday & (self.dow <= 3) & ~np.append(self.holiday[1:], False)
        if name == "saturday":
            return (self.dow == 5) & ~self.holiday
        if name == "monday":
            return self.dow == 0
        return np.ones(self.days, dtype=bool)

    def next_allowed(self, name: str) -> np.ndarray:
        """next[t] = first allowed day >= t (days when none); indexable by 0..days."""
        idx = np.where(self.allowed(name), np.arange(self.days), self.days)
        return np.append(np.minimum.accumulate(idx[::-1])[::-1], self.days)

    def prev_allowed(self, name: str) -> np.ndarray:
        """prev[t] = last allowed day <= t (-1 when none)."""
        return np.maximum.accumulate(np.where(self.allowed(name), np.arange(self.days), -1))


# --------------------------------------------------------------------------------------------
# Per-block random generators
# --------------------------------------------------------------------------------------------
class _BlockRandom:
    """Random draws for the accounts [lo, hi) of one table, made block by block.

    Each block of RNG_BLOCK accounts has its own generator and receives the same sequence of calls
    whatever chunk it sits in, which is what makes the output independent of the chunk size.
    """

    def __init__(self, seed: int, stream: int, lo: int, hi: int) -> None:
        starts = list(range(lo, hi, RNG_BLOCK))
        self._cuts = [s - lo for s in starts] + [hi - lo]
        self._rngs = [np.random.default_rng([seed, stream, s // RNG_BLOCK]) for s in starts]

    def accounts(self, fn: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
        """fn(rng, size, *block_slices) over arrays whose first axis is the chunk's accounts."""
        return self._run(self._cuts, fn, arrays)

    def rows(
        self, counts: np.ndarray, fn: Callable[..., np.ndarray], *arrays: np.ndarray
    ) -> np.ndarray:
        """The same over rows sorted by account, counts[i] rows for account i."""
        edges = np.concatenate(([0], np.cumsum(counts)))
        return self._run([int(edges[c]) for c in self._cuts], fn, arrays)

    def _run(
        self, cuts: list[int], fn: Callable[..., np.ndarray], arrays: tuple[np.ndarray, ...]
    ) -> np.ndarray:
        parts = [
            fn(rng, b - a, *(x[a:b] for x in arrays))
            for rng, a, b in zip(self._rngs, cuts[:-1], cuts[1:], strict=True)
        ]
        return np.concatenate(parts)


_S_USAGE, _S_FEATURES, _S_MEETINGS, _S_COMMS, _S_TICKETS, _S_NPS, _S_HEALTH = range(1, 8)


def _gamma_noise(*dims: int) -> Callable[..., np.ndarray]:
    """Mean-one gamma multipliers with a shape per account: Poisson draws on top of them are
    negative binomial, the overdispersion real usage counts show."""

    def draw(rng: np.random.Generator, size: int, shape: np.ndarray) -> np.ndarray:
        s = shape.reshape((size,) + (1,) * len(dims))
        return rng.gamma(s, 1.0 / s, size=(size, *dims))

    return draw


# --------------------------------------------------------------------------------------------
# The account plan: everything decided per account, before any day is drawn
# --------------------------------------------------------------------------------------------
@dataclass
class _Patterns:
    """Planted patterns, one row per (pattern, subject), sorted by account."""

    acc: np.ndarray  # account index
    kind: np.ndarray  # index into _KINDS
    start: np.ndarray  # day index of the first day the pattern shows
    stop: np.ndarray  # first day index after its effect (the account's data end if it persists)
    subject: np.ndarray  # metric, feature or contact slot; -1 when none
    mag: np.ndarray  # the ground truth magnitude
    p1: np.ndarray  # kind-specific float parameter
    p2: np.ndarray  # kind-specific int parameter

    def of(self, kind: str) -> np.ndarray:
        return np.flatnonzero(self.kind == _KIND_INDEX[kind])

    def take(self, idx: np.ndarray) -> _Patterns:
        return _Patterns(**{f: getattr(self, f)[idx] for f in self.__dataclass_fields__})


@dataclass
class _Plan:
    n: int
    cal: _Calendar
    customer_ids: pa.Array
    names: pa.Array
    seg: np.ndarray
    industry: np.ndarray
    region: np.ndarray
    plan: np.ndarray
    arr: np.ndarray
    csm_user: np.ndarray  # index into users
    user_ids: list[str]
    user_rows: dict[str, list[str | None]]
    cs: np.ndarray  # contract start, day index (negative: before the history)
    renewal: np.ndarray  # days since epoch
    churn: np.ndarray  # churn day index; cal.days when the customer did not churn
    late: np.ndarray
    # usage
    has: np.ndarray  # (n, 5)
    level: np.ndarray  # (n, 5) weekday level at day 0 (seats: seats in use)
    weekend: np.ndarray  # (n, 4) weekend level / weekday level per count metric
    weekday: np.ndarray  # (n, 5) Monday..Friday shape
    growth: np.ndarray  # organic growth, log per day
    seat_growth: np.ndarray
    ent_seats: np.ndarray
    ent_api: np.ndarray  # nan: no api allowance
    k_common: np.ndarray
    k_metric: np.ndarray
    sparse: np.ndarray  # zero rows are left out for these accounts
    used: np.ndarray  # (n, 6) feature used
    share: np.ndarray  # (n, 6) share of daily active users using the feature
    fstart: np.ndarray  # (n, 6) first day a discovered feature is used (0 otherwise)
    # engagement
    cadence: np.ndarray  # days between check-ins
    qbr: np.ndarray
    inbound: np.ndarray  # per day
    outbound: np.ndarray
    sentiment: np.ndarray
    tickets: np.ndarray  # per day
    health_base: np.ndarray
    health_weekly: np.ndarray
    nps_phase: np.ndarray
    # contacts (n, SLOTS)
    contact_no: np.ndarray  # global contact number, -1 for an empty slot
    role: np.ndarray
    c_start: np.ndarray
    c_left: np.ndarray
    c_first: np.ndarray
    c_last: np.ndarray
    c_title: np.ndarray
    patterns: _Patterns
    churn_lead: np.ndarray  # days from the precursor's start to the churn, 0 without warning
    churn_prec: np.ndarray  # kind index of the precursor, -1 without warning


_FIRST = (
    "Ava Ben Chloe Daniel Elena Felix Grace Hugo Isla Jack Kira Liam Maya Noah Olivia Paul Quinn "
    "Rosa Sam Tara Umar Vera Will Xena Yusuf Zoe Aaron Bella Carlos Dana Ethan Fatima George Hana "
    "Ivan Julia Kenji Lena Marco Nina Omar Priya Raj Sofia Tom Ursula Victor Wen Yara Zack Amir "
    "Beatriz Chen Deepa Emil Freya Gabriel Ines Jonas Leila"
).split()
_LAST = (
    "Smith Johnson Garcia Miller Davis Martinez Lopez Wilson Anderson Thomas Taylor Moore Martin "
    "Lee Thompson White Harris Clark Lewis Walker Hall Young King Wright Scott Green Baker Adams "
    "Nelson Hill Campbell Mitchell Roberts Carter Phillips Evans Turner Torres Parker Collins "
    "Edwards Stewart Morris Nguyen Murphy Rivera Cook Rogers Morgan Peterson Cooper Reed Bailey "
    "Kim Patel Schmidt Rossi Novak Silva Tanaka"
).split()
_PREFIX = (
    "Acme Apex Atlas Beacon Blue Bright Cedar Clear Cobalt Crest Delta Ever Falcon First Golden "
    "Granite Green Harbor Horizon Iron Keystone Lake Maple Meridian Nimbus North Nova Oak Orion "
    "Pacific Peak Pine Pioneer Prime Quantum Red River Silver Sky Stone Summit Sun Terra True "
    "Union Vertex Vista West Wild Zen"
).split()
_CORE = ["", "bridge", "field", "gate", "line", "point", "stone", "view", "wave", "works"]
_SUFFIX = {
    "fintech": ["Pay", "Capital", "Finance", "Ledger", "Bank"],
    "healthcare": ["Health", "Care", "Medical", "Clinics", "Bio"],
    "retail": ["Retail", "Stores", "Outfitters", "Market", "Goods"],
    "manufacturing": ["Manufacturing", "Industries", "Fabrication", "Components", "Machines"],
    "software": ["Software", "Labs", "Systems", "Cloud", "Technologies"],
    "education": ["Learning", "Academy", "Education", "Schools", "Institute"],
    "media": ["Media", "Studios", "Publishing", "Broadcasting", "Digital"],
    "logistics": ["Logistics", "Freight", "Shipping", "Transport", "Supply"],
}
_TITLES = {
    CHAMPION: ["Head of Operations", "Director of Customer Experience", "Product Lead"],
    EXEC: ["VP Operations", "Chief Operating Officer", "Chief Technology Officer", "CFO"],
    DECIDER: ["Director of IT", "VP Finance", "Head of Procurement"],
    ADMIN: ["IT Administrator", "Systems Administrator", "Platform Owner"],
    USER: ["Analyst", "Specialist", "Team Lead", "Coordinator"],
}
_TITLE_LIST = [t for r in range(5) for t in _TITLES[r]]
_TITLE_OFFSET = np.cumsum([0] + [len(_TITLES[r]) for r in range(4)])
_TITLE_COUNT = np.array([len(_TITLES[r]) for r in range(5)])


def _lognormal(rng: np.random.Generator, median: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(rng.normal(np.log(median), sigma))


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(numbers, type=pa.int64()).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _gumbel_top(keys_rng: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise keys whose descending order is a weighted sample without replacement."""
    with np.errstate(divide="ignore"):
        return np.log(weights) - np.log(-np.log(keys_rng))


def _pick(rng: np.random.Generator, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One random True column per row, and whether the row had any."""
    keys = np.where(mask, rng.random(mask.shape), -1.0)
    return keys.argmax(axis=1), mask.any(axis=1)


def _make_plan(n: int, cal: _Calendar, seed: int) -> _Plan:
    rng = np.random.default_rng(seed)
    days = cal.days

    # -- customers and users -------------------------------------------------------------------
    seg = rng.choice(3, n, p=[0.15, 0.35, 0.5])
    industry = rng.integers(0, len(INDUSTRIES), n)
    region = rng.choice(4, n, p=[0.45, 0.3, 0.17, 0.08])
    arr = np.round(_lognormal(rng, np.array([200_000.0, 50_000.0, 10_000.0])[seg], 0.45), -2)
    u = rng.random(n)
    tier = np.select(
        [seg == 0, seg == 1],
        [np.where(u < 0.8, 0, 1), np.where(u < 0.6, 1, 2)],
        np.where(u < 0.3, 2, 3),
    )
    late = (rng.random(n) < LATE_START_SHARE) & (days >= 150)
    cs = np.where(late, rng.integers(30, max(31, days - 90), n), -rng.integers(30, 1500, n))

    n_csm = max(3, round(n / 25))
    n_mgr = max(1, -(-n_csm // 5))
    n_users = 1 + n_mgr + n_csm
    user_ids = [f"U{i + 1:04d}" for i in range(n_users)]
    first = rng.integers(0, len(_FIRST), n_users)
    last = rng.integers(0, len(_LAST), n_users)
    emails: list[str] = []
    seen: set[str] = set()
    for i in range(n_users):
        email = f"{_FIRST[first[i]]}.{_LAST[last[i]]}".lower()
        if email in seen:
            email = f"{email}{i + 1}"
        seen.add(email)
        emails.append(f"{email}@example.com")
    roles = ["leader"] + ["manager"] * n_mgr + ["csm"] * n_csm
    managers = [None] + [user_ids[0]] * n_mgr + [user_ids[1 + k % n_mgr] for k in range(n_csm)]
    user_rows = {
        "user_id": user_ids,
        "name": [f"{_FIRST[f]} {_LAST[s]}" for f, s in zip(first, last, strict=True)],
        "email": emails,
        "role": roles,
        "manager_id": managers,
    }
    csm_user = 1 + n_mgr + rng.permutation(n) % n_csm

    width = max(6, len(str(n)))
    customer_ids = _ids("C", np.arange(1, n + 1), width)
    prefix = pa.array(_PREFIX).take(pa.array(rng.integers(0, len(_PREFIX), n)))
    core = pa.array(_CORE).take(pa.array(rng.integers(0, len(_CORE), n)))
    suffix_list = [s for name in INDUSTRIES for s in _SUFFIX[name]]
    suffix = pa.array(suffix_list).take(pa.array(industry * 5 + rng.integers(0, 5, n)))
    names = pc.binary_join_element_wise(pc.binary_join_element_wise(prefix, core, ""), suffix, " ")

    # -- usage ---------------------------------------------------------------------------------
    ent_seats = np.clip(
        np.round(_lognormal(rng, np.array([400.0, 80.0, 20.0])[seg], 0.5)),
        np.array([100, 25, 10])[seg],
        np.array([5000, 400, 60])[seg],
    )
    seat_frac = rng.uniform(0.5, 0.72, n)
    dau = ent_seats * seat_frac * rng.uniform(0.35, 0.7, n)
    level = np.stack(
        [
            dau,
            dau * rng.uniform(1.2, 2.5, n),
            dau * rng.uniform(20, 80, n),
            _lognormal(rng, np.array([20_000.0, 5_000.0, 800.0])[seg], 0.7),
            ent_seats * seat_frac,
        ],
        axis=1,
    )
    has = np.ones((n, 5), dtype=bool)
    has[:, LOGINS] = rng.random(n) < 0.88
    has[:, EVENTS] = rng.random(n) < 0.95
    has[:, API_CALLS] = rng.random(n) < np.array([0.85, 0.65, 0.4])[seg]
    base_weekend = rng.uniform(0.2, 0.6, n)
    weekend = np.clip(base_weekend[:, None] * rng.uniform(0.9, 1.1, (n, N_COUNTS)), 0.15, 0.65)
    weekend[:, API_CALLS] = 1 - (1 - base_weekend) * 0.3  # machines work weekends too
    weekday = 1 + rng.normal(0, 0.05, (n, 5))
    weekday[:, 4] *= rng.uniform(0.85, 1.0, n)
    growth = np.log1p(rng.uniform(-0.01, 0.02, n)) / 30.44
    seat_growth = np.log1p(rng.uniform(0, 0.005, n)) / 30.44
    api_allowance = (rng.random(n) < 0.5) & has[:, API_CALLS]
    api_headroom = rng.uniform(3, 4, n)
    ent_api = np.where(api_allowance, 0.0, np.nan)  # the value waits for the final growth
    k_common = rng.uniform(30, 80, n)
    k_metric = rng.uniform(40, 120, n)
    sparse = rng.random(n) < 0.5

    feature_weight = np.array([5.0, 4.0, 2.0, 3.0, 2.0, 1.0])
    order = np.argsort(-_gumbel_top(rng.random((n, 6)), np.broadcast_to(feature_weight, (n, 6))))
    n_used = rng.integers(2, 6, n)
    used = np.zeros((n, 6), dtype=bool)
    np.put_along_axis(used, order, np.arange(6)[None, :] < n_used[:, None], axis=1)
    share = np.maximum(rng.uniform(0.2, 0.7, (n, 6)), np.minimum(0.9, 2.0 / dau)[:, None])
    fstart = np.zeros((n, 6), dtype=np.int64)

    # -- engagement ----------------------------------------------------------------------------
    cadence = rng.choice(np.array([7, 14, 30, 91]), n, p=[0.2, 0.3, 0.35, 0.15])
    qbr = rng.random(n) < np.array([0.7, 0.4, 0.1])[seg]
    inbound = np.clip(_lognormal(rng, np.full(n, 0.2), 0.6), 0.05, 1.5)
    outbound = inbound * rng.uniform(0.8, 2.0, n)
    sentiment = rng.uniform(0.0, 0.6, n)
    tickets = _lognormal(rng, np.array([8.0, 3.0, 1.0])[seg] / 30, 0.5)
    health_base = rng.uniform(55, 88, n)
    health_weekly = rng.random(n) < 0.3
    nps_phase = rng.integers(0, 91, n)

    # -- contacts ------------------------------------------------------------------------------
    n_contacts = rng.integers(3, 9, n)
    slot = np.arange(SLOTS)[None, :]
    role = np.full((n, SLOTS), -1, dtype=np.int8)
    role[:, 0], role[:, 1], role[:, 2] = CHAMPION, DECIDER, ADMIN
    has_exec = (n_contacts >= 4) & (rng.random(n) < 0.8)
    role[:, 3] = np.where(n_contacts >= 4, np.where(has_exec, EXEC, USER), -1)
    role[:, 4:NEW_EXEC_SLOT] = np.where(slot[:, 4:NEW_EXEC_SLOT] < n_contacts[:, None], USER, -1)
    c_start = np.full((n, SLOTS), -_FAR, dtype=np.int64)
    c_left = np.full((n, SLOTS), _FAR, dtype=np.int64)
    dated = rng.random((n, SLOTS)) < np.where(role == USER, 0.35, 0.1)
    inside = (role == USER) & (rng.random((n, SLOTS)) < 0.5)
    c_start = np.where(dated, -rng.integers(1, 700, (n, SLOTS)), c_start)
    c_start = np.where(dated & inside, rng.integers(0, days, (n, SLOTS)), c_start)
    c_start = np.where(late[:, None], cs[:, None], c_start)
    leaves = (role == USER) & (rng.random((n, SLOTS)) < 0.12)
    c_left = np.where(
        leaves, np.maximum(c_start, 0) + rng.integers(30, max(31, days), (n, SLOTS)), c_left
    )
    c_left = np.where(c_left < days, c_left, _FAR)
    c_first = rng.integers(0, len(_FIRST), (n, SLOTS))
    c_last = rng.integers(0, len(_LAST), (n, SLOTS))
    title_draw = rng.integers(0, 1_000, (n, SLOTS))

    plan_ = _Plan(
        n=n,
        cal=cal,
        customer_ids=customer_ids,
        names=names,
        seg=seg,
        industry=industry,
        region=region,
        plan=tier,
        arr=arr,
        csm_user=csm_user,
        user_ids=user_ids,
        user_rows=user_rows,
        cs=cs,
        renewal=np.zeros(n, dtype=np.int64),
        churn=np.full(n, days, dtype=np.int64),
        late=late,
        has=has,
        level=level,
        weekend=weekend,
        weekday=weekday,
        growth=growth,
        seat_growth=seat_growth,
        ent_seats=ent_seats,
        ent_api=ent_api,
        k_common=k_common,
        k_metric=k_metric,
        sparse=sparse,
        used=used,
        share=share,
        fstart=fstart,
        cadence=cadence,
        qbr=qbr,
        inbound=inbound,
        outbound=outbound,
        sentiment=sentiment,
        tickets=tickets,
        health_base=health_base,
        health_weekly=health_weekly,
        nps_phase=nps_phase,
        contact_no=np.zeros((n, SLOTS), dtype=np.int64),
        role=role,
        c_start=c_start,
        c_left=c_left,
        c_first=c_first,
        c_last=c_last,
        c_title=title_draw,
        patterns=_Patterns(*(np.zeros(0, dtype=np.int64) for _ in range(8))),
        churn_lead=np.zeros(n, dtype=np.int64),
        churn_prec=np.full(n, -1, dtype=np.int64),
    )
    _plan_patterns(plan_, rng)

    # Contacts are numbered after the patterns, which may add a new executive in slot 8.
    exists = plan_.role >= 0
    plan_.contact_no = np.where(exists, np.cumsum(exists.ravel()).reshape(n, SLOTS), -1)
    safe_role = np.maximum(plan_.role, 0)
    plan_.c_title = _TITLE_OFFSET[safe_role] + title_draw % _TITLE_COUNT[safe_role]
    plan_.c_left = np.where(plan_.c_left < plan_.churn[:, None], plan_.c_left, _FAR)
    plan_.renewal = _renewal(cal, plan_.cs, plan_.churn)
    # The allowance leaves 3-4x headroom over the history's highest expected level, so no planted
    # growth or spike reaches it by chance: only entitlement_limit (on seats) is planted.
    peak = level[:, API_CALLS] * np.exp(np.maximum(plan_.growth, 0) * days)
    plan_.ent_api = np.where(
        api_allowance, np.maximum(100, np.round(peak * api_headroom, -2)), np.nan
    )
    return plan_


def _renewal(cal: _Calendar, cs: np.ndarray, churn: np.ndarray) -> np.ndarray:
    """Yearly anniversaries of contract_start: the first one after the end of the history (or on or
    after the churn day for churned customers)."""
    start = (cal.epoch0 + cs).astype("datetime64[D]")
    month = start.astype("datetime64[M]")
    day_in_month = start - month.astype("datetime64[D]")
    bound = (cal.epoch0 + np.minimum(churn, cal.days)).astype("datetime64[D]")
    bound = np.where(churn < cal.days, bound - np.timedelta64(1, "D"), bound)
    years = (bound.astype("datetime64[Y]") - start.astype("datetime64[Y]")).astype(np.int64)

    def anniversary(k: np.ndarray) -> np.ndarray:
        return (month + 12 * np.maximum(k, 1)).astype("datetime64[D]") + day_in_month

    this_year = anniversary(years)  # the smallest anniversary strictly after the bound
    return np.where(this_year > bound, this_year, anniversary(years + 1)).astype(np.int64)


def _pattern_metrics(p: _Plan) -> np.ndarray:
    """(n, 4) count metrics busy enough (weekday level >= 10) to carry a usage pattern."""
    return p.has[:, :N_COUNTS] & (p.level[:, :N_COUNTS] >= 10)


def _quiet_weekends(p: _Plan) -> np.ndarray:
    """(n, 4) pattern metrics whose weekends are at most half of weekdays (api_calls never)."""
    quiet = _pattern_metrics(p) & (p.weekend <= 0.5)
    quiet[:, API_CALLS] = False
    return quiet


def _plan_patterns(p: _Plan, rng: np.random.Generator) -> None:
    """Choose churners, pattern accounts and clean accounts; place every pattern and adjust the
    account's parameters so the pattern can show (cadence, health, growth, contacts)."""
    n, cal, days = p.n, p.cal, p.cal.days
    lo_day = min(120, max(28, days // 3))
    nxt = {
        name: cal.next_allowed(name) for name in ("any", "workday", "spike", "saturday", "monday")
    }
    prv = {name: cal.prev_allowed(name) for name in nxt}

    order = rng.permutation(n)
    churn_pool = order[~p.late[order]]
    churners = churn_pool[: round(CHURN_SHARE * n) if days >= 28 else 0]
    is_churn = np.zeros(n, dtype=bool)
    is_churn[churners] = True
    others = order[~is_churn[order]]
    pattern_accts = others[: round(PATTERN_SHARE * n)]

    rows_acc: list[np.ndarray] = []
    rows_kind: list[np.ndarray] = []
    rows_start: list[np.ndarray] = []

    # -- churners ------------------------------------------------------------------------------
    nc = len(churners)
    prec_names = list(_PRECURSORS)
    prec_kind = rng.choice(len(prec_names), nc)
    min_lead = np.array([_PRECURSORS[k] for k in prec_names])[prec_kind]
    warned = rng.random(nc) < WARNED_CHURN_SHARE
    c_lo = lo_day + min_lead
    warned &= c_lo <= days - 1
    churn_day = np.where(
        warned,
        rng.integers(np.minimum(c_lo, days - 1), days),
        rng.integers(min(30, days // 4), days, nc),
    )
    lead = rng.integers(min_lead, np.maximum(np.minimum(120, churn_day - lo_day), min_lead) + 1)
    kinds = np.array([_KIND_INDEX[prec_names[k]] for k in prec_kind])
    start = churn_day - lead
    day_rule = np.array([_KINDS[k].days for k in kinds], dtype=object)
    day_rule[(kinds == _KIND_INDEX["health_drop"]) & p.health_weekly[churners]] = "monday"
    for rule in np.unique(day_rule):  # move to an allowed day, keeping the lead within 30-120
        sel = day_rule == rule
        earlier = prv[rule][np.clip(start[sel], 0, days - 1)]
        later = nxt[rule][np.clip(start[sel], 0, days)]
        fits = (earlier >= lo_day) & (churn_day[sel] - earlier <= 120)
        start[sel] = np.where(fits, earlier, later)
    lead = churn_day - start
    warned &= (start >= lo_day) & (lead >= min_lead) & (lead <= 120)
    p.churn[churners] = churn_day
    p.churn_lead[churners] = np.where(warned, churn_day - start, 0)
    p.churn_prec[churners] = np.where(warned, kinds, -1)
    rows_acc.append(churners[warned])
    rows_kind.append(kinds[warned])
    rows_start.append(start[warned])

    # -- accounts with one or two patterns -----------------------------------------------------
    weights = np.array([k.weight for k in _KINDS])
    weights /= weights.sum()
    na = len(pattern_accts)
    first = rng.choice(len(_KINDS), na, p=weights)
    second = rng.choice(len(_KINDS), na, p=weights)
    two = rng.random(na) < TWO_PATTERN_SHARE
    for _ in range(30):
        bad = two & _CONFLICT[first, second]
        if not bad.any():
            break
        second[bad] = rng.choice(len(_KINDS), int(bad.sum()), p=weights)
    two &= ~_CONFLICT[first, second]
    acc = np.concatenate([pattern_accts, pattern_accts[two]])
    kind = np.concatenate([first, second[two]])
    # usage_pattern_change: a weekend-shape shift where weekends are quiet enough to show it,
    # else a level step
    variant = (rng.random(len(acc)) < 0.5) & _quiet_weekends(p).any(axis=1)[acc]
    rule = np.array([_KINDS[k].days for k in kind] + [""], dtype=object)[:-1]
    rule[(kind == _KIND_INDEX["usage_pattern_change"]) & variant] = "saturday"
    rule[(kind == _KIND_INDEX["health_drop"]) & p.health_weekly[acc]] = "monday"
    lo = np.maximum(lo_day, p.cs[acc] + 90)
    hi = days - 1 - np.array([_KINDS[k].tail for k in kind], dtype=np.int64)
    start = lo + np.floor(rng.random(len(acc)) * np.maximum(hi - lo + 1, 1)).astype(np.int64)
    for r in np.unique(rule):
        sel = rule == r
        start[sel] = nxt[r][np.clip(start[sel], 0, days)]
    ok = (hi >= lo) & (start <= hi)
    rows_acc.append(acc[ok])
    rows_kind.append(kind[ok])
    rows_start.append(start[ok])
    var_all = np.concatenate([np.zeros(int(warned.sum()), dtype=bool), variant[ok]])

    pat_acc = np.concatenate(rows_acc).astype(np.int64)
    pat_kind = np.concatenate(rows_kind).astype(np.int64)
    pat_start = np.concatenate(rows_start).astype(np.int64)
    _fill_patterns(p, rng, pat_acc, pat_kind, pat_start, var_all)


def _fill_patterns(
    p: _Plan,
    rng: np.random.Generator,
    acc: np.ndarray,
    kind: np.ndarray,
    start: np.ndarray,
    variant: np.ndarray,
) -> None:
    """Subjects, magnitudes and durations per kind (vectorised per kind); rows whose account
    cannot carry the pattern (no suitable metric) are dropped."""
    m = len(acc)
    data_end = p.churn[acc]
    stop = data_end.copy()
    subject = np.full(m, -1, dtype=np.int64)
    mag = np.ones(m)
    p1 = np.zeros(m)
    p2 = np.zeros(m, dtype=np.int64)
    keep = np.ones(m, dtype=bool)
    counts = _pattern_metrics(p)
    no_allowance = np.isnan(p.ent_api)

    def sel(name: str) -> np.ndarray:
        return np.flatnonzero(kind == _KIND_INDEX[name])

    def metric(
        idx: np.ndarray, allowed: tuple[int, ...], avoid_allowance: bool, only: np.ndarray = counts
    ) -> None:
        mask = np.zeros((len(idx), N_COUNTS), dtype=bool)
        mask[:, list(allowed)] = only[acc[idx]][:, list(allowed)]
        if avoid_allowance:  # keep api_calls below a contractual allowance (entitlement_limit)
            mask[:, API_CALLS] &= no_allowance[acc[idx]]
        pick, any_ = _pick(rng, mask)
        subject[idx] = pick
        keep[idx] &= any_

    i = sel("usage_drop")
    metric(i, (DAU, LOGINS, EVENTS, API_CALLS), False)
    mag[i] = rng.uniform(0.2, 0.5, len(i))

    i = sel("usage_spike")
    metric(i, (LOGINS, EVENTS, API_CALLS), True)
    mag[i] = rng.uniform(3, 6, len(i))
    p2[i] = rng.integers(1, 3, len(i))
    stop[i] = np.minimum(start[i] + p2[i], data_end[i])

    i = sel("adoption_trend")
    metric(i, (DAU, LOGINS, EVENTS, API_CALLS), True)
    mag[i] = rng.uniform(0.10, 0.20, len(i))
    p2[i] = rng.integers(5, 9, len(i))
    stop[i] = np.minimum(start[i] + 7 * p2[i], data_end[i])

    i = sel("usage_pattern_change")
    weekend_shift = variant[i]
    metric(i[weekend_shift], (DAU, LOGINS, EVENTS), False, only=_quiet_weekends(p))
    metric(i[~weekend_shift], (DAU, LOGINS, EVENTS, API_CALLS), True)
    new_ratio = rng.uniform(0.9, 1.05, len(i))
    old_ratio = p.weekend[acc[i], np.maximum(subject[i], 0)]
    mag[i] = np.where(weekend_shift, new_ratio / old_ratio, rng.uniform(1.5, 1.8, len(i)))
    p2[i] = weekend_shift

    i = sel("champion_left")
    exec_ok = p.role[acc[i], 3] == EXEC
    subject[i] = np.where(exec_ok & (rng.random(len(i)) < 0.35), 3, 0)

    i = sel("going_dark")
    p.cadence[acc[i]] = np.where(p.cadence[acc[i]] <= 14, p.cadence[acc[i]], 14)
    stop[i] = np.minimum(start[i] + rng.integers(45, 91, len(i)), data_end[i])
    mag[i] = stop[i] - start[i]

    i = sel("increased_activity")
    stop[i] = np.minimum(start[i] + rng.integers(21, 43, len(i)), data_end[i])
    p1[i] = np.maximum(3 * p.inbound[acc[i]], 0.5)  # inbound per day; quiet accounts too show it
    mag[i] = np.round(p1[i] / p.inbound[acc[i]], 2)

    i = sel("stakeholder_shift")
    subject[i] = NEW_EXEC_SLOT
    p.role[acc[i], NEW_EXEC_SLOT] = EXEC
    p.c_start[acc[i], NEW_EXEC_SLOT] = start[i]
    p.cadence[acc[i]] = np.minimum(p.cadence[acc[i]], 30)

    i = sel("silent_account")
    mag[i] = data_end[i] - start[i]

    i = sel("health_drop")
    mag[i] = np.round(rng.uniform(25, 40, len(i)), 1)
    p2[i] = rng.integers(1, 4, len(i))
    p.health_base[acc[i]] = rng.uniform(65, 88, len(i))

    i = sel("support_surge")
    base = p.tickets[acc[i]]
    p1[i] = np.maximum(4 * base, 6 / 14)  # at least ~5 tickets in the two weeks, plus the urgent
    mag[i] = np.round(p1[i] / base, 2)
    p2[i] = rng.integers(0, len(TOPICS), len(i))
    stop[i] = np.minimum(start[i] + 14, data_end[i])

    i = sel("detractor_nps")
    senior = np.ones((len(i), 3), dtype=bool)  # slots 0, 1, 3: champion, decision maker, exec
    senior[:, 2] = p.role[acc[i], 3] == EXEC
    subject[i] = np.array([0, 1, 3])[_pick(rng, senior)[0]]
    mag[i] = rng.integers(0, 7, len(i))

    i = sel("entitlement_limit")
    ent = p.ent_seats[acc[i]]
    target = np.ceil(rng.uniform(0.93, 1.0, len(i)) * ent)
    p1[i] = target
    mag[i] = np.round(target / ent, 3)

    i = sel("feature_discovery")
    feature, unused = _pick(rng, ~p.used[acc[i]])
    unused &= p.level[acc[i], DAU] >= 3  # someone must be there to discover it
    keep[i] &= unused
    i, feature = i[unused], feature[unused]
    subject[i] = feature
    dau = p.level[acc[i], DAU]
    p.share[acc[i], feature] = np.maximum(rng.uniform(0.2, 0.6, len(i)), np.minimum(0.9, 3 / dau))
    p.used[acc[i], feature] = True
    p.fstart[acc[i], feature] = start[i]
    mag[i] = np.round(p.level[acc[i], DAU] * p.share[acc[i], feature], 1)

    for name, growth, health in (
        ("referral_candidate", (0.005, 0.02), (75, 90)),
        ("case_study_candidate", (0.04, 0.06), (80, 92)),
    ):
        i = sel(name)
        p1[i] = np.where(rng.random(len(i)) < 0.7, 0, 1)  # promoter: champion or decision maker
        mag[i] = rng.integers(9, 11, len(i))
        p.growth[acc[i]] = np.log1p(rng.uniform(*growth, len(i))) / 30.44
        p.health_base[acc[i]] = rng.uniform(*health, len(i))
        if name == "case_study_candidate":
            p.sentiment[acc[i]] = rng.uniform(0.6, 0.9, len(i))

    # declining_usage may take several metrics: one ground-truth row per metric
    i = sel("declining_usage")
    mask = counts[acc[i]][:, :API_CALLS]
    n_metrics = rng.integers(1, 4, len(i))
    keys = np.where(mask, rng.random(mask.shape), -1.0)
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    chosen = mask & (rank < n_metrics[:, None])

    rate = rng.uniform(0.08, 0.15, len(i))
    weeks = rng.integers(6, 11, len(i))
    extra_rows, extra_metric = np.nonzero(chosen)
    keep[i] = False  # replaced by the per-metric rows below
    base_idx = i[extra_rows]

    idx = np.concatenate([np.flatnonzero(keep), base_idx])
    pats = _Patterns(acc, kind, start, stop, subject, mag, p1, p2).take(idx)
    tail = len(idx) - len(base_idx)
    pats.subject[tail:] = extra_metric
    pats.mag[tail:] = rate[extra_rows]
    pats.p2[tail:] = weeks[extra_rows]
    pats.stop[tail:] = np.minimum(pats.start[tail:] + 7 * pats.p2[tail:], data_end[base_idx])
    pats.mag = np.round(pats.mag, 3)
    order = np.lexsort((pats.subject, pats.kind, pats.start, pats.acc))
    p.patterns = pats.take(order)

    # Accounts whose precursor was dropped churn without warning.
    has_pattern = np.zeros(p.n, dtype=bool)
    has_pattern[p.patterns.acc] = True
    p.churn_prec = np.where(has_pattern, p.churn_prec, -1)
    p.churn_lead = np.where(has_pattern, p.churn_lead, 0)

    pt = p.patterns
    left = pt.of("champion_left")
    p.c_left[pt.acc[left], pt.subject[left]] = pt.start[left]


# --------------------------------------------------------------------------------------------
# Tables written once
# --------------------------------------------------------------------------------------------
def _date_array(epoch_days: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pa.array(epoch_days.astype(np.int32), type=pa.date32(), mask=null)


def _users_table(p: _Plan) -> pa.Table:
    return pa.table(p.user_rows, schema=SCHEMAS["users"])


def _customers_table(p: _Plan) -> pa.Table:
    e0 = p.cal.epoch0
    return pa.table(
        {
            "customer_id": p.customer_ids,
            "name": p.names,
            "industry": pa.array(INDUSTRIES).take(pa.array(p.industry)),
            "segment": pa.array(SEGMENTS).take(pa.array(p.seg)),
            "region": pa.array(REGIONS).take(pa.array(p.region)),
            "csm_user_id": pa.array(p.user_ids).take(pa.array(p.csm_user)),
            "arr": p.arr,
            "plan": pa.array(PLANS).take(pa.array(p.plan)),
            "contract_start": _date_array(e0 + p.cs),
            "renewal_date": _date_array(p.renewal),
            "churned_on": _date_array(e0 + p.churn, null=p.churn >= p.cal.days),
        },
        schema=SCHEMAS["customers"],
    )


def _contacts_table(p: _Plan) -> pa.Table:
    acc, slot = np.nonzero(p.role >= 0)
    no = p.contact_no[acc, slot]
    first = pa.array(_FIRST).take(pa.array(p.c_first[acc, slot]))
    last = pa.array(_LAST).take(pa.array(p.c_last[acc, slot]))
    customer = p.customer_ids.take(pa.array(acc))
    domain = pc.binary_join_element_wise(pc.utf8_lower(customer), "example.com", ".")
    local = pc.utf8_lower(pc.binary_join_element_wise(first, last, "."))
    start = p.c_start[acc, slot]
    left = p.c_left[acc, slot]
    e0 = p.cal.epoch0
    return pa.table(
        {
            "contact_id": _ids("K", no, 7),
            "customer_id": customer,
            "name": pc.binary_join_element_wise(first, last, " "),
            "email": pc.binary_join_element_wise(local, domain, "@"),
            "title": pa.array(_TITLE_LIST).take(pa.array(p.c_title[acc, slot])),
            "role": pa.array(ROLES).take(pa.array(p.role[acc, slot].astype(np.int64))),
            "started_on": _date_array(e0 + np.maximum(start, -_FAR // 2), null=start <= -_FAR),
            "left_on": _date_array(e0 + np.minimum(left, _FAR // 2), null=left >= _FAR),
        },
        schema=SCHEMAS["contacts"],
    )


def _entitlements_table(p: _Plan) -> pa.Table:
    api = np.flatnonzero(~np.isnan(p.ent_api))
    acc = np.concatenate([np.arange(p.n), api])
    metric = np.concatenate([np.full(p.n, SEATS), np.full(len(api), API_CALLS)])
    value = np.concatenate([p.ent_seats, p.ent_api[api]])
    order = np.lexsort((metric, acc))
    return pa.table(
        {
            "customer_id": p.customer_ids.take(pa.array(acc[order])),
            "metric": pa.array(METRICS).take(pa.array(metric[order])),
            "entitled_value": value[order].astype(np.float64),
        },
        schema=SCHEMAS["entitlements"],
    )


def _ground_truth_table(p: _Plan) -> pa.Table:
    pt, e0 = p.patterns, p.cal.epoch0
    contact_ids = _ids("K", np.maximum(p.contact_no[pt.acc, np.maximum(pt.subject, 0)], 0), 7)
    subjects: list[str] = []
    notes: list[str] = []
    ends: list[int | None] = []
    for r in range(len(pt.acc)):
        k = _KINDS[pt.kind[r]]
        s = int(pt.subject[r])
        subjects.append(
            METRICS[s]
            if k.subject == "metric"
            else FEATURES[s]
            if k.subject == "feature"
            else contact_ids[r].as_py()
            if k.subject == "contact"
            else "seats_used"
            if k.subject == "seats"
            else ""
        )
        notes.append(_note(p, r))
        data_end = int(p.churn[pt.acc[r]])
        ends.append(int(pt.stop[r]) - 1 if pt.stop[r] < data_end else None)
    churned = np.flatnonzero(p.churn < p.cal.days)
    churn_notes = [
        f"churned {p.churn_lead[a]} days after {_KINDS[p.churn_prec[a]].name} began"
        if p.churn_prec[a] >= 0
        else "churned without a planted warning"
        for a in churned
    ]
    acc = np.concatenate([pt.acc, churned])
    start = np.concatenate([pt.start, p.churn[churned]])
    kind_names = [_KINDS[k].name for k in pt.kind] + ["churn"] * len(churned)
    end_days = [None if e is None else e0 + e for e in ends] + [None] * len(churned)
    table = pa.table(
        {
            "customer_id": p.customer_ids.take(pa.array(acc)),
            "type": kind_names,
            "subject": subjects + [""] * len(churned),
            "start_date": _date_array(e0 + start),
            "end_date": pa.array(end_days, type=pa.int32()).cast(pa.date32()),
            "magnitude": np.concatenate([pt.mag, p.churn_lead[churned]]).astype(np.float64),
            "note": notes + churn_notes,
        }
    )
    return table.sort_by(
        [
            ("customer_id", "ascending"),
            ("start_date", "ascending"),
            ("type", "ascending"),
            ("subject", "ascending"),
        ]
    )


def _note(p: _Plan, r: int) -> str:
    """A human sentence for one ground-truth row (what was planted, in the data's own terms)."""
    pt = p.patterns
    name, mag, p2 = _KINDS[pt.kind[r]].name, float(pt.mag[r]), int(pt.p2[r])
    prefix = "churn precursor; " if p.churn_prec[pt.acc[r]] >= 0 else ""
    text = {
        "usage_drop": f"level x{mag:.2f} from start_date to the end of the data",
        "usage_spike": f"x{mag:.2f} for {p2} day(s)",
        "adoption_trend": f"+{mag:.0%} per week for {p2} weeks, then flat",
        "declining_usage": f"-{mag:.0%} per week for {p2} weeks, then flat",
        "usage_pattern_change": (
            f"weekend level x{mag:.2f} (weekends now like weekdays), persists"
            if p2
            else f"level step x{mag:.2f}, persists"
        ),
        "champion_left": f"{ROLES[p.role[pt.acc[r], pt.subject[r]]]} left_on = start_date",
        "going_dark": f"no meetings or inbound messages for {mag:.0f} days; outbound continues",
        "increased_activity": f"inbound messages x{mag:.1f} and meetings x3",
        "stakeholder_shift": "new executive_sponsor starts and joins meetings",
        "silent_account": f"no usage, messages, meetings or tickets for {mag:.0f} days, to the end",
        "health_drop": f"health -{mag:.1f} points over {p2} day(s), stays low",
        "support_surge": f"tickets x{mag:.1f} for 14 days, urgent ticket on start_date",
        "detractor_nps": f"NPS {mag:.0f} from the subject contact",
        "entitlement_limit": f"seats_used at {mag:.1%} of entitled seats from start_date",
        "feature_discovery": f"first use; weekday active users ramp to ~{mag:.1f}",
        "referral_candidate": f"NPS {mag:.0f}; healthy usage growing slowly",
        "case_study_candidate": f"NPS {mag:.0f}; usage +4-6%/month, high health and sentiment",
    }[name]
    return prefix + text


# --------------------------------------------------------------------------------------------
# Day-level tables, one chunk of accounts at a time
# --------------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    lo: int
    hi: int
    alive: np.ndarray  # (n, days): on or after contract_start and before churned_on
    quiet: np.ndarray  # (n, days): inside a silent_account pattern
    pats: _Patterns  # the chunk's patterns, acc relative to lo

    @property
    def n(self) -> int:
        return self.hi - self.lo

    @property
    def present(self) -> np.ndarray:
        return self.alive & ~self.quiet


def _window(start: np.ndarray, stop: np.ndarray, days: int) -> np.ndarray:
    t = np.arange(days)
    return (t >= start[:, None]) & (t < stop[:, None])


def _chunk(p: _Plan, lo: int, hi: int) -> _Chunk:
    days = p.cal.days
    t = np.arange(days)
    a, b = np.searchsorted(p.patterns.acc, [lo, hi])
    pats = p.patterns.take(np.arange(a, b))
    pats.acc = pats.acc - lo
    alive = (t >= p.cs[lo:hi, None]) & (t < p.churn[lo:hi, None])
    quiet = np.zeros_like(alive)
    i = pats.of("silent_account")
    quiet[pats.acc[i]] = _window(pats.start[i], pats.stop[i], days)
    return _Chunk(lo, hi, alive, quiet, pats)


def _pattern_window(c: _Chunk, kind: str, days: int) -> np.ndarray:
    """(n, days) mask of the days inside a pattern of this kind."""
    mask = np.zeros((c.n, days), dtype=bool)
    i = c.pats.of(kind)
    mask[c.pats.acc[i]] = _window(c.pats.start[i], c.pats.stop[i], days)
    return mask


def _rate_with_pattern(c: _Chunk, kind: str, base: np.ndarray, days: int) -> np.ndarray:
    """(n, days) daily rates: the account's base rate, the pattern's rate (p1) inside its window."""
    rate = np.repeat(base[:, None], days, axis=1)
    i = c.pats.of(kind)
    a = c.pats.acc[i]
    rate[a] = np.where(
        _window(c.pats.start[i], c.pats.stop[i], days), c.pats.p1[i][:, None], rate[a]
    )
    return rate


def _usage_multipliers(p: _Plan, c: _Chunk) -> np.ndarray:
    """(n, days, 4) planted multipliers of the count metrics."""
    days = p.cal.days
    t = np.arange(days)
    mult = np.ones((c.n, days, N_COUNTS))
    pt = c.pats
    for name in (
        "usage_drop",
        "usage_spike",
        "adoption_trend",
        "declining_usage",
        "usage_pattern_change",
    ):
        i = pt.of(name)
        s, mag, weeks = pt.start[i][:, None], pt.mag[i][:, None], pt.p2[i][:, None]
        since = t[None, :] - s
        if name == "usage_drop":
            curve = np.where(since >= 0, mag, 1.0)
        elif name == "usage_spike":
            curve = np.where((since >= 0) & (since < weeks), mag, 1.0)
        elif name == "adoption_trend":
            curve = (1 + mag) ** (np.clip(since + 1, 0, 7 * weeks) / 7)
        elif name == "declining_usage":
            curve = (1 - mag) ** (np.clip(since + 1, 0, 7 * weeks) / 7)
        else:
            weekend_days = (p.cal.dow >= 5)[None, :] | (weeks == 0)
            curve = np.where((since >= 0) & weekend_days, mag, 1.0)
        mult[pt.acc[i], :, pt.subject[i]] *= curve
    return mult


def _ar1(noise: np.ndarray, phi: float) -> np.ndarray:
    """Smooth day-to-day wander (AR(1) along the day axis); a loop over days, vectorised over
    accounts."""
    out = np.empty_like(noise)
    out[:, 0] = noise[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, noise.shape[1]):
        out[:, t] = phi * out[:, t - 1] + noise[:, t]
    return out


def _usage(p: _Plan, c: _Chunk, seed: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """usage_daily for the chunk, plus the realised dau (for features) and the planted usage index
    (for health)."""
    cal, days, sl = p.cal, p.cal.days, slice(c.lo, c.hi)
    t = np.arange(days)
    br = _BlockRandom(seed, _S_USAGE, c.lo, c.hi)
    weekly = np.concatenate(
        [
            np.repeat(p.weekday[sl][:, :, None], N_COUNTS, axis=2),
            np.repeat(p.weekend[sl][:, None, :], 2, axis=1),
        ],
        axis=1,
    )  # (n, 7, 4)
    growth = np.exp(p.growth[sl][:, None] * t[None, :])
    onboarding = np.clip(0.3 + 0.7 * (t[None, :] - p.cs[sl][:, None]) / 14, 0.3, 1.0)
    holiday = np.where(cal.holiday, HOLIDAY_FACTOR, 1.0)
    mult = _usage_multipliers(p, c)
    expected = (
        p.level[sl, None, :N_COUNTS]
        * weekly[:, cal.dow, :]
        * (growth * onboarding * holiday[None, :])[:, :, None]
        * mult
    )
    expected *= br.accounts(_gamma_noise(days), p.k_common[sl])[:, :, None]
    expected *= br.accounts(_gamma_noise(days, N_COUNTS), p.k_metric[sl])
    counts = br.accounts(lambda g, k, lam: g.poisson(lam), expected).astype(np.float64)

    wander = _ar1(br.accounts(lambda g, k: g.normal(0, 0.004, (k, days))), 0.97)
    seats = np.round(
        p.level[sl, SEATS][:, None]
        * np.exp(p.seat_growth[sl][:, None] * t)
        * (1 + np.clip(wander, -0.05, 0.05))
    )
    i = c.pats.of("entitlement_limit")
    a, s = c.pats.acc[i], c.pats.start[i]
    ent = p.ent_seats[sl][a]
    ramp_to = np.floor(0.86 * ent)
    for back in range(1, 8):  # a week of hiring before the limit is reached
        d = s - back
        frac = (8 - back) / 8
        seats[a, d] = np.maximum(
            seats[a, d], np.floor(seats[a, d] + (ramp_to - seats[a, d]) * frac)
        )
    seats[a] = np.where(t[None, :] >= s[:, None], c.pats.p1[i][:, None], seats[a])
    seats = np.maximum(seats, 1)

    values = np.concatenate([counts, seats[:, :, None]], axis=2)
    keep = c.present[:, :, None] & p.has[sl][:, None, :]
    keep &= (values > 0) | ~p.sparse[sl][:, None, None]
    acc, day, metric = np.nonzero(keep)
    table = pa.table(
        {
            "customer_id": p.customer_ids.take(pa.array(acc + c.lo)),
            "date": _date_array(cal.epoch0 + day),
            "metric": pa.array(METRICS).take(pa.array(metric)),
            "value": values[acc, day, metric],
        },
        schema=SCHEMAS["usage_daily"],
    )
    dau = np.where(c.present, counts[:, :, DAU], 0).astype(np.int64)
    has_counts = p.has[sl][:, :N_COUNTS]
    index = (mult * has_counts[:, None, :]).sum(axis=2) / has_counts.sum(axis=1)[:, None]
    index = index * np.exp(p.growth[sl][:, None] * t) * c.present
    return table, dau, index


def _features(p: _Plan, c: _Chunk, seed: int, dau: np.ndarray) -> pa.Table:
    """feature_usage_daily: each used feature reaches a share of the day's active users."""
    days, sl = p.cal.days, slice(c.lo, c.hi)
    t = np.arange(days)
    since = t[None, :, None] - p.fstart[sl][:, None, :]
    ramp = np.clip(0.3 + 0.7 * since / 14, 0.0, 1.0)
    discovered = p.fstart[sl] > 0
    ramp = np.where(discovered[:, None, :], np.where(since >= 0, ramp, 0.0), 1.0)
    prob = p.share[sl][:, None, :] * p.used[sl][:, None, :] * ramp
    br = _BlockRandom(seed, _S_FEATURES, c.lo, c.hi)
    active = br.accounts(lambda g, k, n_, q: g.binomial(n_[:, :, None], q), dau, prob)
    i = c.pats.of("feature_discovery")
    a, s, f = c.pats.acc[i], c.pats.start[i], c.pats.subject[i]
    active[a, s, f] = np.maximum(active[a, s, f], 1)  # the discovery day shows
    acc, day, feature = np.nonzero(active > 0)
    return pa.table(
        {
            "customer_id": p.customer_ids.take(pa.array(acc + c.lo)),
            "date": _date_array(p.cal.epoch0 + day),
            "feature": pa.array(FEATURES).take(pa.array(feature)),
            "active_users": active[acc, day, feature],
        },
        schema=SCHEMAS["feature_usage_daily"],
    )


def _renewal_process(
    br: _BlockRandom, rate: np.ndarray, shape: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events of a renewal process with intensity `rate` per account-day: (account, day, fraction
    of that day's intensity). Gamma gaps (shape > 1) make contact rhythmic, as real cadences are,
    so a planted silence stands out against an account's own cadence."""
    n, days = rate.shape
    lam = np.cumsum(rate, axis=1)
    total = lam[:, -1]
    counts = np.ceil(total + 4 * np.sqrt(total / shape + 1) + 3).astype(np.int64)
    gaps = br.rows(counts, lambda g, k: g.gamma(shape, 1 / shape, k))
    phase = br.accounts(lambda g, k: g.random(k))
    first = np.cumsum(counts) - counts
    gaps[first] *= phase  # a random phase, so accounts do not all start with an event
    csum = np.cumsum(gaps)
    owner = np.repeat(np.arange(n), counts)
    op_time = csum - np.repeat(csum[first] - gaps[first], counts)
    keep = op_time < total[owner] - 1e-9
    op_time, owner = op_time[keep], owner[keep]
    offset = np.cumsum(total + 1) - (total + 1)
    flat = (lam + offset[:, None]).ravel()
    flat_rate = rate.ravel()
    idx = np.searchsorted(flat, op_time + offset[owner], side="right")
    ok = (idx // days == owner) & (flat_rate[np.minimum(idx, flat.size - 1)] > 0)
    idx, owner, op_time = idx[ok], owner[ok], op_time[ok]
    frac = (op_time + offset[owner] - (flat[idx] - flat_rate[idx])) / flat_rate[idx]
    return owner, idx % days, np.clip(frac, 0.0, 0.999)


def _timestamps(p: _Plan, day: np.ndarray, seconds: np.ndarray) -> pa.Array:
    us = (p.cal.epoch0 + day).astype(np.int64) * _US_PER_DAY + seconds.astype(np.int64) * 1_000_000
    return pa.array(us, type=pa.timestamp("us", tz="UTC"))


def _sorted_events(*keys: np.ndarray) -> np.ndarray:
    return np.lexsort(keys[::-1])


def _meetings(p: _Plan, c: _Chunk, seed: int, offset: int) -> tuple[pa.Table, pa.Table]:
    """meetings and meeting_attendees: cadence check-ins, QBRs for some accounts, onboarding for
    new customers, and the meetings patterns force (a new executive's first meeting, an
    escalation after an urgent ticket)."""
    cal, days, sl = p.cal, p.cal.days, slice(c.lo, c.hi)
    t = np.arange(days)
    workday = ((cal.dow < 5) & ~cal.holiday)[None, :]
    dark = _pattern_window(c, "going_dark", days)
    busy = _pattern_window(c, "increased_activity", days)
    since_start = t[None, :] - p.cs[sl][:, None]
    onboarding = (since_start >= 0) & (since_start < 28) & p.late[sl][:, None]
    open_ = c.present & ~dark & workday
    rate = (7 / 5) / p.cadence[sl][:, None] * open_ * np.where(busy, 3.0, 1.0)
    rate *= np.where(onboarding, 2.0, 1.0)
    qbr_rate = (7 / 5) / 91 * open_ * p.qbr[sl][:, None]
    br = _BlockRandom(seed, _S_MEETINGS, c.lo, c.hi)
    a1, d1, f1 = _renewal_process(br, rate, 6.0)
    a2, d2, f2 = _renewal_process(br, qbr_rate, 12.0)
    pt = c.pats
    i = pt.of("stakeholder_shift")
    j = pt.of("support_surge")
    nxt = cal.next_allowed("workday")
    esc_day = nxt[np.minimum(pt.start[j] + 1, days)]
    ok = esc_day < p.churn[sl][pt.acc[j]]
    a3 = np.concatenate([pt.acc[i], pt.acc[j][ok]])
    d3 = np.concatenate([pt.start[i], esc_day[ok]])
    kind3 = np.concatenate([np.full(len(i), OTHER), np.full(int(ok.sum()), ESCALATION)])
    acc = np.concatenate([a1, a2, a3])
    day = np.concatenate([d1, d2, d3])
    frac = np.concatenate([f1, f2, np.full(len(a3), 0.25)])
    base_type = np.where(onboarding[a1, d1], ONBOARDING, CHECK_IN)
    mtype = np.concatenate([base_type, np.full(len(a2), QBR), kind3])
    order = _sorted_events(acc, day, frac)
    acc, day, frac, mtype = acc[order], day[order], frac[order], mtype[order]
    per_acc = np.bincount(acc, minlength=c.n)

    u = br.rows(per_acc, lambda g, k: g.random((k, 4)))
    gumbel = br.rows(per_acc, lambda g, k: g.random((k, SLOTS)))
    mtype = np.where((mtype == CHECK_IN) & (u[:, 0] < 0.12), OTHER, mtype)
    sentiment = np.where(
        mtype == ESCALATION,
        -0.2 - 0.6 * u[:, 1],
        np.clip(p.sentiment[sl][acc] + 0.25 * (u[:, 1] - 0.5) * 2, -1, 1),
    )
    minutes = 13 * 60 + (frac * 32).astype(np.int64) * 15  # 13:00-20:45 UTC on quarter hours
    n_meet = len(acc)
    ids = _ids("M", offset + np.arange(1, n_meet + 1), 9)
    meetings = pa.table(
        {
            "meeting_id": ids,
            "customer_id": p.customer_ids.take(pa.array(acc + c.lo)),
            "start_at": _timestamps(p, day, minutes * 60),
            "meeting_type": pa.array(MEETING_TYPES).take(pa.array(mtype)),
            "sentiment": pa.array(np.round(sentiment, 2), mask=u[:, 2] < 0.2),
        },
        schema=SCHEMAS["meetings"],
    )

    role = p.role[sl][acc]
    active = (p.c_start[sl][acc] <= day[:, None]) & (day[:, None] < p.c_left[sl][acc])
    weights = (
        np.select(
            [role == CHAMPION, role == DECIDER, role == ADMIN, role == EXEC],
            [5.0, 3.0, 2.0, np.where(mtype == QBR, 4.0, 1.0)[:, None]],
            0.0,
        )
        * active
    )
    keys = _gumbel_top(gumbel, weights)
    new_exec = (np.arange(SLOTS) == NEW_EXEC_SLOT)[None, :] & active & (role == EXEC)
    keys = np.where(new_exec, np.inf, keys)
    eligible = ((weights > 0) | new_exec).sum(axis=1)
    size = np.minimum(2 + (u[:, 3] * 3).astype(np.int64), eligible)
    ranked = np.argsort(-keys, axis=1, kind="stable")
    take = np.arange(SLOTS)[None, :] < size[:, None]
    meet_idx, rank = np.nonzero(take)
    slot = ranked[meet_idx, rank]
    slot_order = np.lexsort((slot, meet_idx))
    meet_idx, slot = meet_idx[slot_order], slot[slot_order]
    attendees = pa.table(
        {
            "meeting_id": ids.take(pa.array(meet_idx)),
            "contact_id": _ids("K", p.contact_no[sl][acc[meet_idx], slot], 7),
        },
        schema=SCHEMAS["meeting_attendees"],
    )
    return meetings, attendees


def _communications(p: _Plan, c: _Chunk, seed: int, offset: int) -> pa.Table:
    """communications: inbound and outbound messages on each account's own rhythm."""
    cal, days, sl = p.cal, p.cal.days, slice(c.lo, c.hi)
    weekend = (cal.dow >= 5)[None, :]
    dark = _pattern_window(c, "going_dark", days)
    rate_in = _rate_with_pattern(c, "increased_activity", p.inbound[sl], days)
    rate_in = rate_in * np.where(weekend, 0.15, 1.0) * c.present * ~dark
    rate_out = p.outbound[sl][:, None] * np.where(weekend, 0.05, 1.0) * c.present
    rate_out *= np.where(dark, 1.5, 1.0)  # the CSM keeps chasing
    br = _BlockRandom(seed, _S_COMMS, c.lo, c.hi)
    a1, d1, f1 = _renewal_process(br, rate_in, 2.0)
    a2, d2, f2 = _renewal_process(br, rate_out, 2.0)
    # A forced inbound message pins the pattern's first day: the last contact before going dark,
    # and the first message of the busy period.
    pt = c.pats
    i, j = pt.of("going_dark"), pt.of("increased_activity")
    a3 = np.concatenate([pt.acc[i], pt.acc[j]])
    d3 = np.concatenate([pt.start[i] - 1, pt.start[j]])
    acc = np.concatenate([a1, a3, a2])
    day = np.concatenate([d1, d3, d2])
    frac = np.concatenate([f1, np.full(len(a3), 0.4), f2])
    inbound = np.concatenate([np.ones(len(a1) + len(a3), bool), np.zeros(len(a2), bool)])
    order = _sorted_events(acc, day, frac, ~inbound)
    acc, day, frac, inbound = acc[order], day[order], frac[order], inbound[order]
    per_acc = np.bincount(acc, minlength=c.n)
    u = br.rows(per_acc, lambda g, k: g.random((k, 2)))
    gumbel = br.rows(per_acc, lambda g, k: g.random((k, SLOTS)))

    role = p.role[sl][acc]
    active = (p.c_start[sl][acc] <= day[:, None]) & (day[:, None] < p.c_left[sl][acc])
    w_in = np.select(
        [role == CHAMPION, role == EXEC, role == DECIDER, role == ADMIN, role == USER],
        [4.0, 0.5, 2.0, 3.0, 2.0],
        0.0,
    )
    w_out = np.select(
        [role == CHAMPION, role == EXEC, role == DECIDER, role == ADMIN, role == USER],
        [4.0, 1.0, 2.0, 2.0, 1.0],
        0.0,
    )
    weights = np.where(inbound[:, None], w_in, w_out) * active
    slot = np.argmax(_gumbel_top(gumbel, weights), axis=1)
    no_contact = (u[:, 0] < np.where(inbound, 0.1, 0.25)) | (weights.sum(axis=1) == 0)
    contact_no = p.contact_no[sl][acc, slot]
    channel = np.searchsorted([0.7, 0.82], u[:, 1], side="right")
    seconds = (7 * 3600 + frac * 15 * 3600).astype(np.int64)
    return pa.table(
        {
            "message_id": _ids("X", offset + np.arange(1, len(acc) + 1), 10),
            "customer_id": p.customer_ids.take(pa.array(acc + c.lo)),
            "contact_id": pc.if_else(
                pa.array(no_contact),
                pa.scalar(None, pa.string()),
                _ids("K", np.maximum(contact_no, 0), 7),
            ),
            "sent_at": _timestamps(p, day, seconds),
            "direction": pa.array(np.where(inbound, "inbound", "outbound")),
            "channel": pa.array(CHANNELS).take(pa.array(channel)),
        },
        schema=SCHEMAS["communications"],
    )


def _tickets(p: _Plan, c: _Chunk, seed: int, offset: int) -> pa.Table:
    """support_tickets: Poisson per account-day; surges add tickets, urgent ones and bad CSAT."""
    cal, days, sl = p.cal, p.cal.days, slice(c.lo, c.hi)
    weekend = (cal.dow >= 5)[None, :]
    pt = c.pats
    i = pt.of("support_surge")
    surge = _pattern_window(c, "support_surge", days)
    rate = _rate_with_pattern(c, "support_surge", p.tickets[sl], days)
    rate = rate * np.where(weekend, 0.3, 1.0) * c.present
    br = _BlockRandom(seed, _S_TICKETS, c.lo, c.hi)
    counts = br.accounts(lambda g, k, lam: g.poisson(lam), rate)
    flat = np.flatnonzero(counts)
    cells = np.repeat(flat, counts.ravel()[flat])
    acc = np.concatenate([cells // days, pt.acc[i]])
    day = np.concatenate([cells % days, pt.start[i]])
    forced = np.concatenate([np.zeros(len(cells), bool), np.ones(len(i), bool)])
    order = _sorted_events(acc, day, ~forced)
    acc, day, forced = acc[order], day[order], forced[order]
    per_acc = np.bincount(acc, minlength=c.n)
    u = br.rows(per_acc, lambda g, k: g.random((k, 6)))
    z = br.rows(per_acc, lambda g, k: g.normal(size=k))

    in_surge = surge[acc, day]
    cum_bg, cum_surge = np.cumsum([0.3, 0.5, 0.2, 0.0]), np.cumsum([0.1, 0.35, 0.4, 0.15])
    priority = np.where(
        in_surge,
        np.searchsorted(cum_surge[:-1], u[:, 0], side="right"),
        np.searchsorted(cum_bg[:-1], u[:, 0], side="right"),
    )
    priority = np.where(forced, 3, np.minimum(priority, 3))
    topic = (u[:, 1] * len(TOPICS)).astype(np.int64)
    surge_topic = np.zeros(c.n, dtype=np.int64)
    surge_topic[pt.acc[i]] = pt.p2[i]
    topic = np.where(in_surge & (u[:, 2] < 0.7), surge_topic[acc], topic)
    opened_s = (6 * 3600 + u[:, 3] * 16 * 3600).astype(np.int64)
    median_h = np.array([96.0, 48.0, 24.0, 8.0])[priority]
    hours = np.exp(np.log(median_h) + 0.9 * z)
    opened_us = (cal.epoch0 + day) * _US_PER_DAY + opened_s * 1_000_000
    closed_us = opened_us + (hours * 3600).astype(np.int64) * 1_000_000
    # Nothing is dated on or after churned_on; elsewhere a ticket still open at the end has none.
    end_us = (cal.epoch0 + p.churn[sl][acc]) * _US_PER_DAY
    churned = p.churn[sl][acc] < days
    still_open = ~churned & (closed_us >= end_us)
    closed_us = np.where(churned & (closed_us >= end_us), end_us - 60_000_000, closed_us)
    cum_bg_csat = np.cumsum([0.02, 0.04, 0.14, 0.3])
    cum_surge_csat = np.cumsum([0.1, 0.2, 0.3, 0.25])
    csat = 1 + np.where(
        in_surge,
        np.searchsorted(cum_surge_csat, u[:, 4], side="right"),
        np.searchsorted(cum_bg_csat, u[:, 4], side="right"),
    )
    no_csat = still_open | (u[:, 5] < 0.4)
    ts = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "ticket_id": _ids("T", offset + np.arange(1, len(acc) + 1), 9),
            "customer_id": p.customer_ids.take(pa.array(acc + c.lo)),
            "opened_at": pa.array(opened_us, type=ts),
            "closed_at": pa.array(closed_us, type=ts, mask=still_open),
            "priority": pa.array(PRIORITIES).take(pa.array(priority)),
            "csat": pa.array(csat.astype(np.float64), mask=no_csat),
            "topic": pa.array(TOPICS).take(pa.array(topic)),
        },
        schema=SCHEMAS["support_tickets"],
    )


_COMMENTS_BAD = ("Too many outages lately", "Support is slow to respond", "Hard to get value")
_COMMENTS_GOOD = ("Our team relies on it every day", "Great product and great support")


def _nps(p: _Plan, c: _Chunk, seed: int) -> pa.Table:
    """nps_responses: quarterly survey waves answered by some contacts (passives, 7-8), plus the
    planted detractor and promoter responses."""
    days, sl = p.cal.days, slice(c.lo, c.hi)
    waves = days // 91 + 2
    wave_day = p.nps_phase[sl][:, None] + 91 * np.arange(waves)[None, :]  # (n, W)
    br = _BlockRandom(seed, _S_NPS, c.lo, c.hi)
    u = br.accounts(lambda g, k: g.random((k, SLOTS, waves, 3)))
    day = wave_day[:, None, :] + (u[..., 1] * 14).astype(np.int64)
    in_range = np.minimum(day, days - 1)
    acc_idx = np.arange(c.n)[:, None, None]
    ok = (u[..., 0] < 0.3) & (day < days) & c.present[acc_idx, in_range]
    ok &= p.role[sl][:, :, None] >= 0
    ok &= (p.c_start[sl][:, :, None] <= day) & (day < p.c_left[sl][:, :, None])
    acc, slot, wave = np.nonzero(ok)
    resp_day = day[acc, slot, wave]
    score = 7 + (u[acc, slot, wave, 2] < 0.5)

    pt = c.pats
    i = pt.of("detractor_nps")
    j = np.concatenate([pt.of("referral_candidate"), pt.of("case_study_candidate")])
    promoter_slot = pt.p1[j].astype(np.int64)
    pa_acc = np.concatenate([pt.acc[i], pt.acc[j]])
    pa_slot = np.concatenate([pt.subject[i], promoter_slot])
    pa_day = np.concatenate([pt.start[i], pt.start[j]])
    pa_score = np.concatenate([pt.mag[i], pt.mag[j]]).astype(np.int64)
    comments = np.array(_COMMENTS_BAD + _COMMENTS_GOOD, dtype=object)
    glob_i, glob_j = pt.acc[i] + c.lo, pt.acc[j] + c.lo
    pa_comment = np.concatenate([comments[glob_i % 3], comments[3 + glob_j % 2]])
    # A planted answer replaces a survey answer by the same contact on the same day.
    clash = np.isin(
        acc * SLOTS * days + slot * days + resp_day, pa_acc * SLOTS * days + pa_slot * days + pa_day
    )
    acc, slot, resp_day, score = acc[~clash], slot[~clash], resp_day[~clash], score[~clash]
    acc = np.concatenate([acc, pa_acc])
    slot = np.concatenate([slot, pa_slot])
    resp_day = np.concatenate([resp_day, pa_day])
    score = np.concatenate([score, pa_score])
    comment = np.concatenate([np.full(len(acc) - len(pa_acc), None, dtype=object), pa_comment])
    order = _sorted_events(acc, resp_day, slot)
    acc, slot, resp_day, score, comment = (x[order] for x in (acc, slot, resp_day, score, comment))
    return pa.table(
        {
            "customer_id": p.customer_ids.take(pa.array(acc + c.lo)),
            "contact_id": _ids("K", p.contact_no[sl][acc, slot], 7),
            "responded_on": _date_array(p.cal.epoch0 + resp_day),
            "score": score.astype(np.float64),
            "comment": pa.array(comment.tolist(), type=pa.string()),
        },
        schema=SCHEMAS["nps_responses"],
    )


def _health(p: _Plan, c: _Chunk, seed: int, usage_index: np.ndarray) -> pa.Table:
    """health_scores: a per-account level, smooth wander, a mild response to the usage trend
    (a 14-day moving level of the planted usage index) and the planted drops."""
    cal, days, sl = p.cal, p.cal.days, slice(c.lo, c.hi)
    t = np.arange(days)
    br = _BlockRandom(seed, _S_HEALTH, c.lo, c.hi)
    wander = _ar1(br.accounts(lambda g, k: g.normal(0, 0.8, (k, days))), 0.92)
    smooth = np.empty_like(usage_index)
    level = np.ones(c.n)
    for d in range(days):
        level = np.where(c.alive[:, d], level + (usage_index[:, d] - level) / 14, level)
        smooth[:, d] = level
    effect = np.clip(12 * np.log(np.maximum(smooth, 0.05)), -20, 8)
    score = p.health_base[sl][:, None] + wander + effect
    pt = c.pats
    i = pt.of("health_drop")
    since = t[None, :] - pt.start[i][:, None]
    drop = pt.mag[i][:, None] * np.clip((since + 1) / pt.p2[i][:, None], 0, 1)
    score[pt.acc[i]] -= drop
    score = np.round(np.clip(score, 0, 100), 1)
    keep = c.alive & ~(p.health_weekly[sl][:, None] & (cal.dow != 0)[None, :])
    acc, day = np.nonzero(keep)
    return pa.table(
        {
            "customer_id": p.customer_ids.take(pa.array(acc + c.lo)),
            "date": _date_array(cal.epoch0 + day),
            "score": score[acc, day],
        },
        schema=SCHEMAS["health_scores"],
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
_TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "users": pa.schema(
        [
            ("user_id", pa.string()),
            ("name", pa.string()),
            ("email", pa.string()),
            ("role", pa.string()),
            ("manager_id", pa.string()),
        ]
    ),
    "customers": pa.schema(
        [
            ("customer_id", pa.string()),
            ("name", pa.string()),
            ("industry", pa.string()),
            ("segment", pa.string()),
            ("region", pa.string()),
            ("csm_user_id", pa.string()),
            ("arr", pa.float64()),
            ("plan", pa.string()),
            ("contract_start", pa.date32()),
            ("renewal_date", pa.date32()),
            ("churned_on", pa.date32()),
        ]
    ),
    "usage_daily": pa.schema(
        [
            ("customer_id", pa.string()),
            ("date", pa.date32()),
            ("metric", pa.string()),
            ("value", pa.float64()),
        ]
    ),
    "entitlements": pa.schema(
        [("customer_id", pa.string()), ("metric", pa.string()), ("entitled_value", pa.float64())]
    ),
    "feature_usage_daily": pa.schema(
        [
            ("customer_id", pa.string()),
            ("date", pa.date32()),
            ("feature", pa.string()),
            ("active_users", pa.int64()),
        ]
    ),
    "contacts": pa.schema(
        [
            ("contact_id", pa.string()),
            ("customer_id", pa.string()),
            ("name", pa.string()),
            ("email", pa.string()),
            ("title", pa.string()),
            ("role", pa.string()),
            ("started_on", pa.date32()),
            ("left_on", pa.date32()),
        ]
    ),
    "meetings": pa.schema(
        [
            ("meeting_id", pa.string()),
            ("customer_id", pa.string()),
            ("start_at", _TS),
            ("meeting_type", pa.string()),
            ("sentiment", pa.float64()),
        ]
    ),
    "meeting_attendees": pa.schema([("meeting_id", pa.string()), ("contact_id", pa.string())]),
    "communications": pa.schema(
        [
            ("message_id", pa.string()),
            ("customer_id", pa.string()),
            ("contact_id", pa.string()),
            ("sent_at", _TS),
            ("direction", pa.string()),
            ("channel", pa.string()),
        ]
    ),
    "support_tickets": pa.schema(
        [
            ("ticket_id", pa.string()),
            ("customer_id", pa.string()),
            ("opened_at", _TS),
            ("closed_at", _TS),
            ("priority", pa.string()),
            ("csat", pa.float64()),
            ("topic", pa.string()),
        ]
    ),
    "nps_responses": pa.schema(
        [
            ("customer_id", pa.string()),
            ("contact_id", pa.string()),
            ("responded_on", pa.date32()),
            ("score", pa.float64()),
            ("comment", pa.string()),
        ]
    ),
    "health_scores": pa.schema(
        [("customer_id", pa.string()), ("date", pa.date32()), ("score", pa.float64())]
    ),
}
"""Arrow schema of every contract table as written (CSV files carry timestamps in seconds)."""


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [(f.name, pa.timestamp("s", tz="UTC") if f.type == _TS else f.type) for f in schema]
    )


class _Sink:
    """One streaming writer per table, so memory is bounded by one chunk whatever the size."""

    def __init__(self, out_dir: Path, fmt: str) -> None:
        self._fmt = fmt
        self._writers: dict[str, pq.ParquetWriter | pacsv.CSVWriter] = {}
        self.rows: dict[str, int] = dict.fromkeys(SCHEMAS, 0)
        for name, schema in SCHEMAS.items():
            stale = out_dir / f"{name}.{'csv' if fmt == 'parquet' else 'parquet'}"
            stale.unlink(missing_ok=True)  # a reader picks parquet first: never leave both
            path = out_dir / f"{name}.{fmt}"
            if fmt == "parquet":
                self._writers[name] = pq.ParquetWriter(path, schema, compression="zstd")
            else:
                self._writers[name] = pacsv.CSVWriter(path, _csv_schema(schema))

    def write(self, name: str, table: pa.Table) -> None:
        if self._fmt == "csv":
            table = table.cast(_csv_schema(table.schema))
        self._writers[name].write_table(table)
        self.rows[name] += table.num_rows

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def generate_sample(
    out_dir: Path,
    accounts: int = 200,
    days: int = 365,
    seed: int = 7,
    end_date: date | None = None,
    fmt: str = "parquet",
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, int]:
    """Writes one file per contract table (<table>.parquet or .csv) + ground_truth.csv; returns row
    counts per table (and for ground_truth).

    History covers [end_date - days + 1, end_date]; end_date defaults to yesterday. The same
    (accounts, days, seed, end_date) always gives the same data; ``chunk_size`` (a multiple of
    RNG_BLOCK) only trades memory for speed.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', not {fmt!r}")
    if accounts < 1 or days < 1:
        raise ValueError("accounts and days must be at least 1")
    if chunk_size < RNG_BLOCK or chunk_size % RNG_BLOCK:
        raise ValueError(f"chunk_size must be a positive multiple of {RNG_BLOCK}")
    end = end_date or date.today() - timedelta(days=1)
    cal = _Calendar.build(end - timedelta(days=days - 1), days)
    plan = _make_plan(accounts, cal, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sink = _Sink(out, fmt)
    try:
        sink.write("users", _users_table(plan))
        sink.write("customers", _customers_table(plan))
        sink.write("contacts", _contacts_table(plan))
        sink.write("entitlements", _entitlements_table(plan))
        for lo in range(0, accounts, chunk_size):
            c = _chunk(plan, lo, min(accounts, lo + chunk_size))
            usage, dau, index = _usage(plan, c, seed)
            sink.write("usage_daily", usage)
            sink.write("feature_usage_daily", _features(plan, c, seed, dau))
            meetings, attendees = _meetings(plan, c, seed, sink.rows["meetings"])
            sink.write("meetings", meetings)
            sink.write("meeting_attendees", attendees)
            comms = _communications(plan, c, seed, sink.rows["communications"])
            sink.write("communications", comms)
            sink.write("support_tickets", _tickets(plan, c, seed, sink.rows["support_tickets"]))
            sink.write("nps_responses", _nps(plan, c, seed))
            sink.write("health_scores", _health(plan, c, seed, index))
    finally:
        sink.close()
    truth = _ground_truth_table(plan)
    pacsv.write_csv(truth, out / "ground_truth.csv")
    return {**sink.rows, "ground_truth": truth.num_rows}
