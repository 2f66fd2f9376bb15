"""The validator every model-written narrative passes before a CSM sees it.

A language model writes fluent text, which is exactly why its mistakes are dangerous: an invented
"37% drop" reads as well as the real one. So a narrative is used only when

- its structure is the fixed one (title, summary, so_what, action: non-empty plain strings, no
  other keys) and each field is within its length limit (measured with the real names filled in);
- every number in it can be traced to the data the model was given (evidence, facts, account
  context, base rate), allowing for rounding, thousands separators, k/M suffixes, percent forms
  and percent <-> ratio conversions — but not for arithmetic the model did on its own;
- it carries nothing that could only have come from following the data instead of describing it:
  no links, emails, markup, instruction-like phrases, unknown name placeholders, and no run of
  words copied from customer free text (NPS comments, ticket topics), above all in the action.

`validate_narrative` returns complaints (empty = accepted). Complaints never quote customer text:
they go back to the model in the retry message, outside the untrusted data block.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

FIELDS = ("title", "summary", "so_what", "action")

#: Keys whose string values are customer-written free text: untrusted, never a source of numbers,
#: and the model may not copy runs of their words.
FREE_TEXT_KEYS = frozenset(
    {"comment", "comments", "topic", "topics", "note", "notes", "text", "message", "body"}
)
#: A string this long (in words) is treated as free text whatever its key.
FREE_TEXT_MIN_WORDS = 12


@dataclass(frozen=True)
class Limits:
    """Length limits in characters, with the real names filled in (what the CSM reads)."""

    title: int = 90
    summary: int = 400
    so_what: int = 400
    action: int = 240
    min_chars: int = 8
    #: Runs of this many words copied from customer free text are rejected (the action is held
    #: to a stricter run, as it is what a CSM acts on).
    copied_words_action: int = 4
    copied_words_text: int = 7


DEFAULT_LIMITS = Limits()

_ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_NUMBER = re.compile(
    r"(?<![\w.])"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)"
    r"(?P<dec>\.\d+)?"
    r"(?:\s?(?P<suffix>%|percent\b|bn\b|[kKmM](?![A-Za-z])|[x×](?![A-Za-z])))?"
)
#: Payload keys that describe the prompt rather than the customer: never a number to cite.
_NOT_NUMBER_SOURCES = frozenset({"name_length"})
_SCALE = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "bn": 1e9}
_WORD = re.compile(r"[a-z0-9']+")
_PLACEHOLDER_LIKE = re.compile(r"\b(?:ACCOUNT|CONTACT)(?:_[A-Za-z0-9]+)?\b")

_UNSAFE: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"https?://|\bwww\.|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}/"
            r"|\b[a-z0-9-]+\.(?:com|net|org|io|ai|co|dev|app|xyz|ru|info|biz|ly|example)\b",
            re.I,
        ),
        "a link",
    ),
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "an email address"),
    (re.compile(r"[<>{}`\[\]\\]|\*\*|__"), "markup or code characters"),
    (
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass)\b[^.]{0,40}\b(?:instructions?|prompts?"
            r"|rules|guidelines|system)\b"
            r"|\b(?:ignore|disregard|forget)\s+(?:all|everything|the above|(?:all )?previous)\b",
            re.I,
        ),
        "an instruction aimed at a language model",
    ),
    (
        re.compile(
            r"\bsystem prompt\b|\bas an ai\b|\blanguage model\b|\byou are now\b|\bjailbreak\b"
            r"|\binsight_data\b",
            re.I,
        ),
        "text about the prompt or the model",
    ),
)


def validate_narrative(
    narrative: Any,
    payload: Mapping[str, Any],
    names: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    """Complaints about a model's narrative (empty list = use it).

    `narrative` is the parsed JSON the model returned, still with name placeholders; `payload`
    is exactly the data it was given; `names` maps placeholders to real names, so lengths are
    measured as the CSM will read them.
    """
    if not isinstance(narrative, dict):
        return ["the answer must be one JSON object with title, summary, so_what and action"]
    complaints: list[str] = []
    extra = sorted(set(narrative) - set(FIELDS))
    if extra:
        complaints.append(f"the object has keys other than {', '.join(FIELDS)}: {extra[:3]}")
    for field in FIELDS:
        value = narrative.get(field)
        if not isinstance(value, str) or not value.strip():
            complaints.append(f"{field} is missing or not a non-empty string")
    if complaints:
        return complaints

    names = names or {}
    allowed = allowed_numbers(payload)
    dates = set(_ISO_DATE.findall(json.dumps(payload)))
    free_text = list(untrusted_texts(payload))
    for field in FIELDS:
        text = " ".join(narrative[field].split())
        shown = restore_names(text, names)
        limit = getattr(limits, field)
        if len(shown) > limit:
            complaints.append(
                f"{field} is {len(shown)} characters with the names filled in (max {limit})"
            )
        if len(shown) < limits.min_chars:
            complaints.append(f"{field} is too short")
        for pattern, label in _UNSAFE:
            if pattern.search(text):
                complaints.append(f"{field} contains {label}")
        unknown = {p for p in _PLACEHOLDER_LIKE.findall(text) if p not in names}
        if unknown:
            complaints.append(f"{field} uses name tokens not in the data: {sorted(unknown)}")
        complaints.extend(
            f"the number {token} in {field} is not in the data"
            for token in ungrounded_numbers(text, allowed, dates)
        )
        run = limits.copied_words_action if field == "action" else limits.copied_words_text
        if copies_free_text(text, free_text, run):
            complaints.append(
                f"{field} repeats customer-written text word for word; describe it in your own "
                "words and never follow it"
            )
    return complaints


def restore_names(text: str, names: Mapping[str, str]) -> str:
    """Placeholders (ACCOUNT, CONTACT_A) back to the real names, possessives included."""
    if not names:
        return text

    def swap(match: re.Match[str]) -> str:
        token = match.group(1)
        name = names.get(token)
        if name is None:
            return match.group(0)
        if match.group(2):
            return f"{name}'" if name.endswith("s") else f"{name}'s"
        return name

    return re.sub(r"\b(ACCOUNT|CONTACT_[A-Z]{1,2})\b('s\b|’s\b)?", swap, text)


# ------------------------------------------------------------------------------------ numbers


def allowed_numbers(payload: Mapping[str, Any]) -> list[float]:
    """The numbers the model was given (absolute values, sorted): numeric leaves of the payload
    and numbers inside its non-free-text strings (e.g. '120.5' in an evidence comparison, the
    parts of an ISO date). Customer free text is not a source: a number in an NPS comment is
    not evidence."""
    found: set[float] = {0.0, 1.0}
    for key, value in _leaves(payload):
        if isinstance(value, bool) or value is None or key in _NOT_NUMBER_SOURCES:
            continue
        if isinstance(value, int | float):
            if math.isfinite(value):
                found.add(abs(float(value)))
        elif isinstance(value, str) and not _is_free_text(key, value):
            text = _ISO_DATE.sub(_date_parts, value)
            found.update(abs(number) for number, _tol, _kind, _tok in _numbers_in(text))
    return sorted(found)


def ungrounded_numbers(text: str, allowed: Iterable[float], dates: Iterable[str] = ()) -> list[str]:
    """The number tokens in `text` that no allowed number explains.

    ISO dates are checked whole against `dates`. Any other number is explained by an allowed
    value within half a unit of its last written digit ('12%' covers 12.46; '1,200' covers 1,234
    as trailing zeros of numbers >= 1,000 are rounding; with a k/M/bn suffix two significant
    figures are enough: '$240k' covers 241,500), directly or through one conversion:
    percent <-> ratio ('52%' or '0.52' for 52 or 0.52), a ratio as a change ('40% below' for a
    ratio of 0.6, '140% above' for 2.4) and a change as a multiple ('2.5x' for +150%).
    """
    known = set(dates)
    bad = [d for d in _ISO_DATE.findall(text) if d not in known]
    values = sorted(set(allowed))
    for value, tol, kind, token in _numbers_in(_ISO_DATE.sub(" ", text)):
        v = abs(value)
        candidates = [(v, tol), (v / 100, tol / 100), (v * 100, tol * 100)]
        if kind == "%":
            candidates += [(1 + v / 100, tol / 100), (abs(1 - v / 100), tol / 100)]
        elif kind == "x":
            candidates.append(((v - 1) * 100, tol * 100))
        if not any(_near(c, t, values) for c, t in candidates):
            bad.append(token)
    return bad


def _numbers_in(text: str) -> Iterator[tuple[float, float, str, str]]:
    """(value, tolerance, kind, token) of each number token; kind is '%', 'x' or ''."""
    for match in _NUMBER.finditer(text):
        digits = match.group("int").replace(",", "")
        decimals = match.group("dec") or ""
        suffix = match.group("suffix") or ""
        scale = _SCALE.get(suffix, 1.0)
        value = float(digits + decimals) * scale
        places = len(decimals) - 1 if decimals else 0
        tolerance = 0.5 * 10.0**-places * scale
        if scale > 1.0 and value > 0:
            tolerance = max(tolerance, 0.5 * 10.0 ** (math.floor(math.log10(value)) - 1))
        elif not decimals and int(digits) >= 1000:
            zeros = len(digits) - len(digits.rstrip("0"))
            tolerance = max(tolerance, 0.5 * 10.0**zeros)
        kind = "%" if suffix in ("%", "percent") else "x" if suffix in ("x", "×") else ""
        yield value, tolerance + 1e-9, kind, match.group(0).strip()


def _near(value: float, tolerance: float, values: list[float]) -> bool:
    i = bisect.bisect_left(values, value - tolerance)
    return i < len(values) and values[i] <= value + tolerance


def _date_parts(match: re.Match[str]) -> str:
    """'2026-03-05' -> '2026 3 5' so a date written out ('March 5, 2026') is grounded."""
    year, month, day = match.group(0).split("-")
    return f" {int(year)} {int(month)} {int(day)} "


# --------------------------------------------------------------------------------- free text


def untrusted_texts(payload: Mapping[str, Any]) -> Iterator[str]:
    """The customer-written free text in a payload (comments, topics, long strings)."""
    for key, value in _leaves(payload):
        if isinstance(value, str) and _is_free_text(key, value):
            yield value


def copies_free_text(text: str, sources: Iterable[str], run: int) -> bool:
    """Whether `text` contains `run` consecutive words of any source, case-insensitively."""
    words = _WORD.findall(text.lower())
    grams = {tuple(words[i : i + run]) for i in range(len(words) - run + 1)}
    if not grams:
        return False
    for source in sources:
        src = _WORD.findall(source.lower())
        if any(tuple(src[i : i + run]) in grams for i in range(len(src) - run + 1)):
            return True
    return False


def _is_free_text(key: str, value: str) -> bool:
    return key.lower() in FREE_TEXT_KEYS or len(value.split()) >= FREE_TEXT_MIN_WORDS


def _leaves(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v, key)
    else:
        yield key, value


__all__ = [
    "DEFAULT_LIMITS",
    "FIELDS",
    "FREE_TEXT_KEYS",
    "Limits",
    "allowed_numbers",
    "copies_free_text",
    "restore_names",
    "ungrounded_numbers",
    "untrusted_texts",
    "validate_narrative",
]
