"""The Narrator seam: insight facts -> title, summary, so_what, action description.

`TemplateNarrator` renders one Jinja2 template per insight type (with `_default.j2` as the
fallback): offline, deterministic and always available. Other narrators (Claude) implement the
same `narrate` and fall back to it.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "templates" / "narratives"
FIELDS = ("title", "summary", "so_what", "action")


class Narrator(Protocol):
    def narrate(self, items: list[dict[str, Any]]) -> list[dict[str, str]]:
        """One {title, summary, so_what, action} per item, in order."""
        ...


def fmt_number(value: Any, digits: int = 0) -> str:
    """1234.5 -> '1,235'; small values keep a decimal so that '0.4' does not read '0'."""
    if value is None:
        return "n/a"
    number = float(value)
    if digits == 0 and abs(number) < 10 and number != int(number):
        digits = 1
    return f"{number:,.{digits}f}"


def fmt_pct(value: Any, signed: bool = False) -> str:
    """52 -> '52%'; with signed=True, '+52%' / '-48%'."""
    if value is None:
        return "n/a"
    number = round(float(value))
    return f"{number:+d}%" if signed else f"{abs(number)}%"


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


def humanize_metric(metric: Any) -> str:
    names = {"dau": "daily active users", "api_calls": "API calls", "seats_used": "seats used"}
    text = str(metric)
    return names.get(text, text.replace("_", " "))


class TemplateNarrator:
    """Jinja2 narratives; the safety net every other narrator falls back to."""

    def __init__(self, template_dir: Path = TEMPLATE_DIR) -> None:
        self.env = Environment(
            loader=FileSystemLoader(str(template_dir)),
            undefined=StrictUndefined,
            autoescape=False,  # plain text; HTML escaping happens where HTML is made
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            num=fmt_number,
            pct=fmt_pct,
            money=fmt_money,
            metric_name=humanize_metric,
            upper_first=upper_first,
            possessive=possessive,
        )

    def _template(self, insight_type: str):
        try:
            return self.env.get_template(f"{insight_type}.j2")
        except TemplateNotFound:
            return self.env.get_template("_default.j2")

    def narrate(self, items: list[dict[str, Any]]) -> list[dict[str, str]]:
        out = []
        for item in items:
            template = self._template(item["type"])
            context = template.new_context(item)
            texts = {}
            for name in FIELDS:
                text = "".join(template.blocks[name](context)).strip()
                texts[name] = " ".join(text.split())
            out.append(texts)
        return out


def narrative_context(row: dict[str, Any]) -> dict[str, Any]:
    """What a template (or a model) sees for one insight: the facts and the account context."""
    facts = json.loads(row["facts"]) if isinstance(row.get("facts"), str) else row.get("facts")
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
        "base_rate": json.loads(row["base_rate"]) if row.get("base_rate") else None,
        "evidence": row.get("evidence") or [],
    }
