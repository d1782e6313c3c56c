"""Typing of source cells by the dataset schema, one cell at a time, each failure a named rule.

Parsing is strict on purpose: numbers are plain decimals and finite (`inf`, `NaN`, `1e400` and
`1_000` are rejected; pandas and `float()` would accept them), a JSON number must be a JSON
number (not a string or a boolean), timestamps carry an explicit UTC designator and at most
microseconds (`intervals.parse_explicit_utc`), dates are `YYYY-MM-DD`, and text has no control
or invisible format characters and at most `schemas.MAX_TEXT_LENGTH` characters. An empty cell
is typed as missing and left to the `not null` expectation, which names it.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Sequence
from datetime import date
from typing import Any, Literal

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
    for name, kind in _kinds(schema):
        value, problem = _type_cell(name, kind, fields[name], from_json=from_json)
        typed[name] = value
        if problem is not None:
            problems.append(problem)
    return typed, problems


def type_columns(fields: dict[str, Any], schema: pa.Schema, names: Sequence[str], *, from_json: bool) -> dict[str, Any]:
    """The typed values of the named columns alone (None where missing or invalid), by the same rules as
    `type_row`: what an ingest reads of every line to tell which lines its interval needs."""
    kinds = dict(_kinds(schema))
    return {name: _type_cell(name, kinds[name], fields[name], from_json=from_json)[0] for name in names}


_Kind = Literal["number", "timestamp", "date", "text"]


@functools.lru_cache(maxsize=64)
def _kinds(schema: pa.Schema) -> tuple[tuple[str, _Kind], ...]:
    """Each column's name and how its cells are typed: decided once per schema, not once per cell
    (an hourly ingest types hundreds of thousands of cells)."""
    out: list[tuple[str, _Kind]] = []
    for fld in schema:
        if pa.types.is_floating(fld.type) or pa.types.is_integer(fld.type):
            out.append((fld.name, "number"))
        elif pa.types.is_timestamp(fld.type):
            out.append((fld.name, "timestamp"))
        elif pa.types.is_date(fld.type):
            out.append((fld.name, "date"))
        else:
            out.append((fld.name, "text"))
    return tuple(out)


def _type_cell(name: str, kind: _Kind, value: Any, *, from_json: bool) -> tuple[Any, Problem | None]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if kind == "number":
        return _number(name, value, from_json=from_json)
    if not isinstance(value, str):  # only JSON gets here with a non-string
        return None, Problem(f"{name}: not a JSON string", f"{name}: {shown(value)} must be a JSON string")
    text = value.strip()
    if kind == "timestamp":
        try:
            return parse_explicit_utc(text), None
        except TimestampRejected as exc:
            return None, Problem(f"{name}: {exc.kind}", f"{name}: {exc}")
    if kind == "date":
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
    if text.isascii() and text.isprintable():  # the common case: no ASCII control character, and ASCII has no Cf
        return text, None
    bad = next((ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf")), None)
    if bad is not None:
        return None, Problem(
            f"{name}: control character", f"{name}: {shown(text)} holds the control or invisible character U+{ord(bad):04X}"
        )
    return text, None
