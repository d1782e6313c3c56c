"""Typing of source cells by the dataset schema, one cell at a time, each failure a named rule.

Parsing is strict on purpose: numbers are plain decimals and finite (`inf`, `NaN`, `1e400` and
`1_000` are rejected; pandas and `float()` would accept them), a JSON number must be a JSON
number (not a string or a boolean), timestamps carry an explicit UTC designator and at most
microseconds (`intervals.parse_explicit_utc`), dates are `YYYY-MM-DD`, and text has no control
or invisible format characters and at most `schemas.MAX_TEXT_LENGTH` characters. An empty cell
is typed as missing and left to the `not null` expectation, which names it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date
from typing import Any

import pyarrow as pa

from pipeline.common.intervals import TimestampRejected, parse_explicit_utc
from pipeline.common.schemas import MAX_TEXT_LENGTH
from pipeline.ingest.lines import Problem

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$", re.ASCII)
_NON_FINITE = frozenset({"inf", "infinity", "nan"})  # what float() and pandas would read as non-finite
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_SHOWN_CHARS = 64  # how much of a rejected value a reason repeats (the raw line keeps it all)


def shown(value: Any) -> str:
    """A bounded repr for reasons: a 100 KB cell must not become a 100 KB reason."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def type_row(fields: dict[str, Any], schema: pa.Schema, *, from_json: bool) -> tuple[dict[str, Any], list[Problem]]:
    """Typed values of one row (None where missing or invalid) and what is wrong with its cells."""
    typed: dict[str, Any] = {}
    problems: list[Problem] = []
    for fld in schema:
        value, problem = _type_cell(fld, fields[fld.name], from_json=from_json)
        typed[fld.name] = value
        if problem is not None:
            problems.append(problem)
    return typed, problems


def _type_cell(fld: pa.Field, value: Any, *, from_json: bool) -> tuple[Any, Problem | None]:
    name = fld.name
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if pa.types.is_floating(fld.type) or pa.types.is_integer(fld.type):
        return _number(name, value, from_json=from_json)
    if not isinstance(value, str):  # only JSON gets here with a non-string
        return None, Problem(f"{name}: not a JSON string", f"{name}: {shown(value)} must be a JSON string")
    text = value.strip()
    if pa.types.is_timestamp(fld.type):
        try:
            return parse_explicit_utc(text), None
        except TimestampRejected as exc:
            return None, Problem(f"{name}: {exc.kind}", f"{name}: {exc}")
    if pa.types.is_date(fld.type):
        return _date(name, text)
    return _text(name, text)


def _number(name: str, value: Any, *, from_json: bool) -> tuple[float | None, Problem | None]:
    if from_json and (isinstance(value, bool) or not isinstance(value, int | float)):
        return None, Problem(f"{name}: not a JSON number", f"{name}: {shown(value)} must be a JSON number")
    if not from_json and value.lstrip("+-").lower() in _NON_FINITE:
        return None, Problem(f"{name}: not finite", f"{name}: {shown(value)} is not a finite number")
    if not from_json and not _NUMBER.match(value):
        return None, Problem(f"{name}: cannot parse", f"{name}: cannot parse {shown(value)} as a number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        return None, Problem(f"{name}: not finite", f"{name}: {shown(value)} is not a finite number")
    return number, None


def _date(name: str, text: str) -> tuple[date | None, Problem | None]:
    try:
        if _DATE.match(text):
            return date.fromisoformat(text), None
    except ValueError:
        pass
    return None, Problem(f"{name}: cannot parse", f"{name}: cannot parse {shown(text)} as a date YYYY-MM-DD")


def _text(name: str, text: str) -> tuple[str | None, Problem | None]:
    if len(text) > MAX_TEXT_LENGTH:
        return None, Problem(f"{name}: too long", f"{name}: {len(text)} characters, more than MAX_TEXT_LENGTH = {MAX_TEXT_LENGTH}")
    bad = next((ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf")), None)
    if bad is not None:
        return None, Problem(
            f"{name}: control character", f"{name}: {shown(text)} holds the control or invisible character U+{ord(bad):04X}"
        )
    return text, None
