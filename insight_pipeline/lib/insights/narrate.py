"""The Narrator seam: insight facts -> title, summary, so_what, action description.

`TemplateNarrator` renders one Jinja2 template per insight type (with `_default.j2` as the
fallback): offline, deterministic and always available. Other narrators (Claude) implement the
same `narrate` and fall back to it.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import math
import multiprocessing
import re
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import polars as pl
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, TemplateNotFound
from jinja2.runtime import Context

from insight_pipeline.lib.parallel import usable_cores

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "templates" / "narratives"
FIELDS = ("title", "summary", "so_what", "action")


class Narrator(Protocol):
    def narrate(self, items: list[dict[str, Any]]) -> list[dict[str, str]]:
        """One {title, summary, so_what, action} per item, in order. Items may share their
        facts and base_rate dicts (see `_ContextColumns`): read them, never change them."""
        ...


def fmt_number(value: Any, digits: int = 0) -> str:
    """1234.6 -> '1,235'; a small value that is not whole keeps two significant digits where
    `digits` would show less ('0.4' not '0', 0.04 -> '0.04', 0.0018 with 2 digits -> '0.0018',
    not '0.00': hours and gigabytes are often that small)."""
    if value is None:
        return "n/a"
    number = float(value)
    if abs(number) < 10 and number != int(number) and (digits == 0 or abs(number) < 10**-digits):
        digits = min(6, max(1, 1 - math.floor(math.log10(abs(number)))))
        text = f"{number:,.{digits}f}"
        return text.rstrip("0").rstrip(".")
    return f"{number:,.{digits}f}"


def fmt_count(value: Any, noun: str) -> str:
    """3, 'day' -> '3 days'; 1, 'day' -> '1 day' (the number as `fmt_number` writes it, and
    singular when it reads 1)."""
    number = fmt_number(value)
    return f"{number} {noun}{'' if number == '1' else 's'}"


def fmt_pct(value: Any, signed: bool = False) -> str:
    """52 -> '52%'; with signed=True, '+52%' / '-48%'."""
    if value is None:
        return "n/a"
    number = round(float(value))
    return f"{number:+d}%" if signed else f"{abs(number)}%"


def ordinal(value: Any) -> str:
    """1 -> '1st', 2 -> '2nd', 3 -> '3rd', 11 -> '11th', 22 -> '22nd'."""
    number = int(value)
    suffix = (
        "th" if number % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def fmt_money(value: Any) -> str:
    if value is None:
        return "n/a"
    number = float(value)
    if number >= 1_000_000:
        return f"${number / 1_000_000:.1f}M"
    if number >= 1_000:
        return f"${number / 1_000:.0f}k"
    return f"${number:,.0f}"


def upper_first(text: Any) -> str:
    """'api calls' -> 'Api calls' is wrong; 'API calls' stays: only the first letter changes."""
    value = str(text)
    return value[:1].upper() + value[1:]


def possessive(name: Any) -> str:
    """ "Acme's", but "Brightbridge Clinics'"."""
    value = str(name)
    return f"{value}'" if value.endswith("s") else f"{value}'s"


METRIC_NAMES = {"dau": "daily active users", "api_calls": "API calls", "seats_used": "seats used"}
#: Words of metric names written in capitals (metric names are read in lower case: `DAU`,
#: `AI Queries` -> `dau`, `ai_queries`), so that a text says "AI queries", not "Ai queries".
ACRONYMS = frozenset(
    {"ai", "api", "crm", "csv", "gb", "id", "kb", "llm", "mb", "ml", "nps", "pdf", "qbr"}
    | {"sdk", "sms", "sql", "sso", "tb", "ui", "url", "vm", "wau", "mau", "dau"}
)


def humanize_metric(metric: Any) -> str:
    """'dau' -> 'daily active users', 'feature_x' -> 'feature x', 'ai_queries' -> 'AI
    queries', 'storage_gb' -> 'storage GB'."""
    text = str(metric)
    if text in METRIC_NAMES:
        return METRIC_NAMES[text]
    return " ".join(word.upper() if word in ACRONYMS else word for word in text.split("_"))


@functools.cache
def _dict_has_attribute(name: str) -> bool:
    """Whether `getattr(d, name)` finds something for a plain dict `d`: it depends on the type
    only (a plain dict has no instance attributes)."""
    return hasattr({}, name)


class _Environment(Environment):
    """Jinja's environment with `f.metric` on a plain dict looked up directly.

    Jinja tries `getattr(facts, "metric")` first and, on the AttributeError, `facts["metric"]`:
    the raised and caught exception was a fifth of the narration. For a plain dict the
    attribute lookup fails exactly when the name is none of dict's attributes (`items`, `get`
    ...), which is known per name, so such a name goes straight to the item: the same value
    (or the same undefined) as Jinja's lookup."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and not _dict_has_attribute(attribute):
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


class TemplateNarrator:
    """Jinja2 narratives; the safety net every other narrator falls back to."""

    def __init__(self, template_dir: Path = TEMPLATE_DIR) -> None:
        self.env = _Environment(
            loader=FileSystemLoader(str(template_dir)),
            undefined=StrictUndefined,
            autoescape=False,  # plain text; HTML escaping happens where HTML is made
            # package files, not edited during a run: no stat of "_base_rate.j2" per include
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            num=fmt_number,
            count=fmt_count,
            pct=fmt_pct,
            ordinal=ordinal,
            money=fmt_money,
            metric_name=humanize_metric,
            upper_first=upper_first,
            possessive=possessive,
            base_rate_text=self.base_rate_text,
        )
        self._reads_evidence: bool | None = None
        self._base_rate_texts: dict[tuple[int, str | None], tuple[Any, str]] = {}

    def _template(self, insight_type: str) -> Template:
        try:
            return self.env.get_template(f"{insight_type}.j2")
        except TemplateNotFound:
            return self.env.get_template("_default.j2")

    @property
    def reads_evidence(self) -> bool:
        """Whether any template may refer to `evidence`. Converting the evidence lists of a
        large frame to Python costs more than rendering, so `narrate_frame` leaves them out of
        the contexts when no template can see them. A template that never spells the word cannot
        read the variable: a plain text search, conservative (a comment counts) and cheap."""
        if self._reads_evidence is None:
            loader = self.env.loader
            assert loader is not None
            self._reads_evidence = any(
                re.search(r"\bevidence\b", loader.get_source(self.env, name)[0])
                for name in self.env.list_templates()
            )
        return self._reads_evidence

    def base_rate_text(self, base_rate: dict[str, Any] | None, fallback: str | None = None) -> str:
        """`_base_rate.j2` for one base rate (and the type's fallback so-what): the filter every
        so-what ends with, `{{ base_rate | base_rate_text("...") }}`. Rendered once per base
        rate and fallback in a `narrate` call - the insights of one type and month share one
        dict (`_ContextColumns`) - not once per insight, as an include would (each include
        builds a new context: a third of the narration time). The partial reads nothing else."""
        key = (id(base_rate), fallback)
        known = self._base_rate_texts.get(key)
        if known is not None and known[0] is base_rate:
            return known[1]
        variables: dict[str, Any] = {"base_rate": base_rate}
        if fallback is not None:  # otherwise the partial's own default applies
            variables["fallback_so_what"] = fallback
        text = self.env.get_template("_base_rate.j2").render(variables)
        # the dict is kept with its text, so its id cannot be reused by another while cached
        self._base_rate_texts[key] = (base_rate, text)
        return text

    def load(self, insight_types: set[str]) -> None:
        """Compiles the templates of these types (and the base-rate partial) now, ~5 ms each:
        `narrate_rows` loads them before it forks, so its workers inherit them compiled instead
        of each compiling its own."""
        for insight_type in insight_types:
            self._template(insight_type)
        self.env.get_template("_base_rate.j2")

    def narrate(self, items: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Each item through the template of its type, looked up once per type and call (a
        lookup checks the file on disk)."""
        contexts: dict[str, tuple[Template, Context]] = {}
        out = []
        self._base_rate_texts.clear()
        try:
            for item in items:
                insight_type = item["type"]
                known = contexts.get(insight_type)
                if known is None:
                    template = self._template(insight_type)
                    known = contexts[insight_type] = (template, _item_context(template))
                template, context = known
                # the item is the context's variables: what Jinja's context of the globals and
                # the item resolves, without building a merged dict and a context per item
                context.vars = item
                out.append({name: render_block(template, name, context) for name in FIELDS})
        finally:
            self._base_rate_texts.clear()  # holds the call's base-rate dicts
        return out


def _item_context(template: Template) -> Context:
    """A context for rendering the template's blocks for one item after another: its parent is
    the template's globals, its `vars` (looked up first) are set to each item in turn.

    Jinja's block functions only read their context (a `{% set %}` in a block is local to the
    block; only the template's top level writes `vars`, and `render_block` never runs it), so
    the same context serves every item and never changes an item."""
    return template.new_context(dict(template.globals), shared=True)


def render_block(template: Template, name: str, context: Context) -> str:
    """One block as one line: whitespace runs become one space (`split` also strips)."""
    return " ".join("".join(template.blocks[name](context)).split())


CONTEXT_COLUMNS = (
    "type",
    "category",
    "subject",
    "customer_name",
    "customer_id",
    "segment",
    "industry",
    "arr",
    "renewal_date",
    "days_to_renewal",
    "facts",
    "base_rate",
    "evidence",
)


def narrative_context(
    row: dict[str, Any], loads: Callable[[str], Any] = json.loads
) -> dict[str, Any]:
    """What a template (or a model) sees for one insight: the facts and the account context.

    `loads` parses the JSON columns (facts, base_rate); `_ContextColumns` passes a memoised
    one."""
    facts = loads(row["facts"]) if isinstance(row.get("facts"), str) else row.get("facts")
    renewal = row.get("renewal_date")
    return {
        "type": row["type"],
        "category": row["category"],
        "subject": row.get("subject") or "",
        "customer_name": row.get("customer_name") or row["customer_id"],
        "segment": (row.get("segment") or "").replace("_", "-"),
        "industry": row.get("industry") or "",
        "arr": row.get("arr"),
        "renewal_date": renewal.isoformat() if isinstance(renewal, date) else renewal,
        "days_to_renewal": row.get("days_to_renewal"),
        "facts": facts or {},
        "f": facts or {},
        "base_rate": loads(row["base_rate"]) if row.get("base_rate") else None,
        "evidence": row.get("evidence") or [],
    }


@dataclass(frozen=True)
class _ContextColumns:
    """The columns a context reads, as Python lists, and their names: `narrative_context` of
    many rows, built cheaply.

    Only the columns a context reads are converted to Python, column by column (`to_dicts` of
    the whole frame costs more than rendering), and `evidence=False` leaves out the evidence
    lists, the costliest column, for narrators that never read them. Equal JSON texts are parsed
    once per `contexts` call (a base rate is shared by every insight of its type and month; many
    facts repeat), so contexts may share those dicts: narrators treat their items as read-only.
    """

    names: list[str]
    values: list[list[Any]]

    @classmethod
    def of(cls, frame: pl.DataFrame, evidence: bool) -> _ContextColumns:
        names = [c for c in CONTEXT_COLUMNS if c in frame.columns and (evidence or c != "evidence")]
        return cls(names, [frame.get_column(c).to_list() for c in names])

    def contexts(self, start: int, stop: int) -> list[dict[str, Any]]:
        """The contexts of rows [start, stop)."""
        parsed: dict[str, Any] = {}

        def loads(text: str) -> Any:
            if text not in parsed:
                parsed[text] = json.loads(text)
            return parsed[text]

        rows = zip(*(column[start:stop] for column in self.values), strict=True)
        return [narrative_context(dict(zip(self.names, row, strict=True)), loads) for row in rows]


PARALLEL_MIN_ITEMS = 20_000
"""Below this many insights narration stays in this process (forking costs ~10-50 ms)."""

_inherited: tuple[TemplateNarrator, _ContextColumns] | None = None
"""In a forked worker of `narrate_rows`: the narrator and columns it inherited (not pickled)."""


def narrate_rows(
    frame: pl.DataFrame, narrator: Narrator, workers: int | None = None
) -> list[dict[str, str]]:
    """`narrator.narrate` of every row's context, in row order.

    Template rendering is pure Python, one core's work under the GIL; a year of 100k accounts
    raises ~870k insights, ~45 s of it. So a large frame is narrated by the templates in slices
    of rows (`workers`: default one per usable core), this process doing the first and forked
    worker processes the others: each builds its slice's contexts from the column lists (the
    workers inherit them) and renders them, and the texts come back in order: the same texts
    as in one process, each insight being rendered on its own. A worker that dies fails the
    call (`BrokenProcessPool`), never hangs it; a fork the OS refuses falls back to this
    process. Other narrators (Claude: network calls, a cache in the store), small frames and
    platforms without fork stay in this process. A narrator without `reads_evidence` (Claude,
    test doubles) gets the evidence."""
    paused = _collector_paused() if type(narrator) is TemplateNarrator else nullcontext()
    with paused:
        return _narrate_rows(frame, narrator, workers)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while the template narrator's contexts and texts are made:
    ~10 dicts and strings per insight, all kept until the end, so every collection walked them
    again (a third of building the contexts). Neither they nor the Jinja contexts hold cycles
    (`gc.collect()` after a year's narration finds nothing), so nothing is left uncollected;
    another narrator's network calls may make cyclic garbage, so it runs with the collector.
    A forked worker starts with the collector off, so it does not walk (and copy) the pages
    of the objects it inherited either."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _narrate_rows(
    frame: pl.DataFrame, narrator: Narrator, workers: int | None
) -> list[dict[str, str]]:
    """`narrate_rows` with the collector paused."""
    evidence = getattr(narrator, "reads_evidence", True)
    columns = _ContextColumns.of(frame, evidence)
    n = frame.height
    if workers is None:
        workers = usable_cores() if n >= PARALLEL_MIN_ITEMS else 1
    fork = "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux"
    if workers <= 1 or n < 2 or not fork or type(narrator) is not TemplateNarrator:
        return narrator.narrate(columns.contexts(0, n))
    narrator.load(set(frame.get_column("type").unique()))
    bounds = list(itertools.pairwise([n * i // workers for i in range(workers + 1)]))
    with ProcessPoolExecutor(
        workers - 1,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_inherit,
        initargs=(narrator, columns),
    ) as pool:
        try:
            others = [pool.submit(_narrate_slice, start, stop) for start, stop in bounds[1:]]
        except OSError:  # no process to fork (memory, limits): this process does them all
            bounds, others = [(0, n)], []
        # this process narrates the first slice while the workers do the others
        slices = [narrator.narrate(columns.contexts(*bounds[0])), *(f.result() for f in others)]
    return [texts for part in slices for texts in part]


def _inherit(narrator: TemplateNarrator, columns: _ContextColumns) -> None:
    """A forked worker's start: keep what it inherited, and let signals end it the default way
    (not through the handlers the parent had, such as Dagster's step-interrupt handler)."""
    global _inherited
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _inherited = (narrator, columns)


def _narrate_slice(start: int, stop: int) -> list[dict[str, str]]:
    """In a forked worker: the texts of rows [start, stop) of the inherited columns."""
    assert _inherited is not None, "a narrate_rows worker starts with _inherit"
    narrator, columns = _inherited
    return narrator.narrate(columns.contexts(start, stop))
