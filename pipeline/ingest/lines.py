"""Row-isolating readers for the CSV and JSONL source files.

One physical line is one record, so a fault stays on its line: an unclosed quote, a byte that is
not UTF-8, a NUL, a wrong field count or malformed JSON is quarantined with that line's true
number and raw bytes, and every other line is still read. (The stdlib `csv` module reading the
whole text would let one stray quote swallow the rest of the file as a single field.) The price:
a quoted field cannot span lines, which the documented formats never need. A UTF-8 byte-order
mark at the start of the file is accepted and stripped; blank lines hold no row and are skipped
without shifting the numbers of the lines after them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BOM = b"\xef\xbb\xbf"
MAX_RAW_BYTES = 4096  # raw bytes of a quarantined line kept in the lake; longer lines note their length


class SourceUnreadable(ValueError):
    """A source file exists but cannot be read at all (no usable header): nothing in it can be placed."""


@dataclass(frozen=True)
class Problem:
    """Why a row is rejected: `kind` names the rule (what reports group by), `message` says what was wrong."""

    kind: str
    message: str


@dataclass(frozen=True)
class SourceLine:
    """One non-blank physical line: its fields (column → cell) when it parsed, else the problem."""

    number: int  # 1-based, the header is line 1
    raw: str
    fields: dict[str, Any] | None
    problem: Problem | None = None


def raw_text(line: bytes) -> str:
    """The line for the quarantine: bytes that are not UTF-8 and NULs escaped as \\xNN, at most MAX_RAW_BYTES."""
    text = line[:MAX_RAW_BYTES].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    if len(line) > MAX_RAW_BYTES:
        text += f" …[truncated: the line is {len(line)} bytes]"
    return text


def _physical_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(number, bytes) of every line, without its `\\n` / `\\r\\n` ending; the BOM is stripped."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()  # the file's final newline ends the last line; it does not start another
    return [(number, part[:-1] if part.endswith(b"\r") else part) for number, part in enumerate(parts, start=1)]


def _decode(line: bytes) -> tuple[str | None, Problem | None]:
    """The line as text, or why it cannot be: not UTF-8, or a NUL byte (never part of text data)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Problem("malformed row: not UTF-8", f"byte 0x{line[exc.start]:02x} at byte {exc.start + 1} is not UTF-8")
    if "\x00" in text:
        return None, Problem("malformed row: NUL byte", f"NUL byte at character {text.index(chr(0)) + 1}")
    return text, None


def read_lines(data: bytes, *, uri: str, columns: Sequence[str], ext: str) -> list[SourceLine]:
    """Split a source file into lines, each parsed alone (CSV with a header, or JSON Lines)."""
    lines = _physical_lines(data)
    if ext == "jsonl":
        return [_json_line(number, line, columns) for number, line in lines if line.strip()]
    if not lines:
        raise SourceUnreadable(f"{uri} is empty: expected a header row {','.join(columns)}")
    header = _header(lines[0][1], uri=uri, columns=columns)
    return [_csv_line(number, line, header, columns) for number, line in lines[1:] if line.strip()]


def _header(line: bytes, *, uri: str, columns: Sequence[str]) -> list[str]:
    """The header's column names; a header that cannot be read makes the whole file unreadable."""
    text, problem = _decode(line)
    if problem is not None or text is None:
        raise SourceUnreadable(f"{uri}: the header line cannot be read ({problem.message if problem else 'empty'})")
    try:
        header = [name.strip() for name in next(csv.reader([text], strict=True))]
    except (csv.Error, StopIteration) as exc:
        raise SourceUnreadable(f"{uri}: the header line is not CSV ({exc}); expected {','.join(columns)}") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise SourceUnreadable(f"{uri}: header lacks columns {missing}; expected {','.join(columns)}")
    repeated = sorted({c for c in columns if header.count(c) > 1})
    if repeated:
        raise SourceUnreadable(f"{uri}: header names columns {repeated} more than once; expected {','.join(columns)}")
    return header


def _csv_line(number: int, line: bytes, header: list[str], columns: Sequence[str]) -> SourceLine:
    raw = raw_text(line)
    text, problem = _decode(line)
    if problem is not None or text is None:
        return SourceLine(number, raw, None, problem)
    try:
        row = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            problem = Problem("malformed row: unclosed quote", "a quoted field does not close on its line (fields cannot span lines)")
        else:
            problem = Problem("malformed row: not CSV", f"not a CSV line ({exc})")
        return SourceLine(number, raw, None, problem)
    cells = [cell.strip() for cell in row]
    if len(cells) != len(header):
        problem = Problem("malformed row: wrong number of fields", f"expected {len(header)} fields, got {len(cells)}")
    elif cells == header:
        problem = Problem("malformed row: repeated header", "the header line appears again (files concatenated?)")
    elif not any(cells):
        problem = Problem("malformed row: every field empty", "every field is empty")
    if problem is not None:
        return SourceLine(number, raw, None, problem)
    return SourceLine(number, raw, {c: cells[header.index(c)] for c in columns})


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice is ambiguous (json.loads would keep the last silently)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _json_line(number: int, line: bytes, columns: Sequence[str]) -> SourceLine:
    raw = raw_text(line)
    text, problem = _decode(line)
    if problem is not None or text is None:
        return SourceLine(number, raw, None, problem)
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        kind = "malformed row: duplicate JSON key" if "duplicate key" in str(exc) else "malformed row: not JSON"
        return SourceLine(number, raw, None, Problem(kind, f"malformed JSON line: {exc}"))
    if not isinstance(obj, dict):
        return SourceLine(number, raw, None, Problem("malformed row: not a JSON object", f"a JSON {type(obj).__name__}, not an object"))
    missing = [c for c in columns if c not in obj]
    if missing:
        return SourceLine(number, raw, None, Problem("malformed row: missing fields", f"missing fields {missing}"))
    return SourceLine(number, raw, {c: obj[c] for c in columns})
