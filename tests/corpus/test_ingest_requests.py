"""Bad-input corpus, `peering_requests` (CSV): each bad line is quarantined alone, with the rule it
broke, its true line number and its raw bytes, and every good line of the day is kept.

All cases are planted in one day file between real sample lines and ingested by one run (the
cases cannot hurt each other: that is the point); each case then checks its own line, and that
the lake holds exactly the good rows of the day.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.corpus.conftest import SAMPLES, Case, Corpus, Planted, check_planted_case, copy_samples, day_interval, plant

DAY = "2026-01-05"
SAMPLE = (SAMPLES / "peering_requests" / f"{DAY}.csv").read_bytes().split(b"\n")
HEADER, SAMPLE_ROWS = SAMPLE[0], [row for row in SAMPLE[1:] if row]
GOOD_ROWS = SAMPLE_ROWS[:260]  # real rows of hours 00-06
COLUMNS = HEADER.decode().split(",")


def row(request_id: str, **values: str) -> bytes:
    """A request line, valid unless `values` overrides a field (at 12:34, after every sample row)."""
    fields = {"request_id": request_id, "requested_at": "2026-01-05T12:34:56Z", "source_region": "us-east-1",
              "destination_region": "eu-west-1", "vcpu": "4", "memory_gib": "16", "storage_gib": "0",
              "bandwidth_gbps": "1.0", "duration_s": "600", "priority": "normal", **values}
    return ",".join(fields[c] for c in COLUMNS).encode()


def raw_row(**values: bytes) -> bytes:
    """A request line with raw byte values (for bytes that are not UTF-8 or not CSV)."""
    return b",".join(values.get(c, row("x").split(b",")[i]) for i, c in enumerate(COLUMNS))


CASES: list[Case] = [
    # one line's syntax never costs another line
    Case("unclosed-quote-at-start", b'"' + row("q-1"), "malformed row: unclosed quote"),
    Case("unclosed-quote-mid-line", row("q-2", priority='"normal'), "malformed row: unclosed quote"),
    Case("text-after-closing-quote", row('"q-3"x'), "malformed row: not CSV"),
    Case("quote-swallowing-100kb", b'"' + b"x" * 100_000, "malformed row: unclosed quote"),
    Case("invalid-utf8-byte", raw_row(request_id=b"q-4", priority=b"norm\xffal"), "malformed row: not UTF-8"),
    Case("latin1-region", raw_row(request_id=b"q-5", source_region=b"us-\xe9ast-1"), "malformed row: not UTF-8"),
    Case("nul-byte", row("q-6\x00"), "malformed row: NUL byte"),
    Case("too-few-fields", b"q-7,2026-01-05T12:00:00Z,us-east-1,eu-west-1,4,16", "malformed row: wrong number of fields"),
    Case("too-many-fields", row("q-8") + b",retry", "malformed row: wrong number of fields"),
    Case("every-field-empty", b",,,,,,,,,", "malformed row: every field empty"),
    Case("repeated-header", HEADER, "malformed row: repeated header"),
    # timestamps: explicit UTC, at most microseconds, in the file's day
    Case("nanosecond-timestamp", row("t-1", requested_at="2026-01-05T12:00:00.123456789Z"), "requested_at: finer than microseconds"),
    Case("naive-timestamp", row("t-2", requested_at="2026-01-05T12:00:00"), "requested_at: no time zone"),
    Case("non-utc-offset", row("t-3", requested_at="2026-01-05T12:00:00+01:00"), "requested_at: not UTC"),
    Case("hour-25", row("t-4", requested_at="2026-01-05T25:00:00Z"), "requested_at: cannot parse"),
    Case("february-30", row("t-5", requested_at="2026-02-30T00:00:00Z"), "requested_at: cannot parse"),
    Case("year-9999", row("t-6", requested_at="9999-12-31T23:59:59Z"), "requested_at: outside the file's day"),
    Case("year-0", row("t-7", requested_at="0000-01-01T00:00:00Z"), "requested_at: cannot parse"),
    Case("non-ascii-digits", row("t-8", requested_at="٢٠٢٦-01-05T12:00:00Z"), "requested_at: cannot parse"),
    Case("words-for-time", row("t-9", requested_at="yesterday"), "requested_at: cannot parse"),
    Case("next-day", row("t-10", requested_at="2026-01-06T00:00:00Z"), "requested_at: outside the file's day"),
    # numbers: finite, plain decimals, in range, under the named bounds
    Case("vcpu-inf", row("n-1", vcpu="inf"), "vcpu: not finite"),
    Case("memory-Infinity", row("n-2", memory_gib="Infinity"), "memory_gib: not finite"),
    Case("bandwidth-NaN", row("n-3", bandwidth_gbps="NaN"), "bandwidth_gbps: not finite"),
    Case("storage-1e400", row("n-4", storage_gib="1e400"), "storage_gib: not finite"),
    Case("vcpu-1e300", row("n-5", vcpu="1e300"), "vcpu: above MAX_QUANTITY"),
    Case("vcpu-just-above-bound", row("n-6", vcpu="10000001"), "vcpu: above MAX_QUANTITY"),
    Case("duration-31-days", row("n-7", duration_s=str(31 * 86400)), "duration_s: above MAX_DURATION_S"),
    Case("duration-zero", row("n-8", duration_s="0"), "duration_s: out of range"),
    Case("negative-memory", row("n-9", memory_gib="-16"), "memory_gib: out of range"),
    Case("underscore-number", row("n-10", vcpu="1_000"), "vcpu: cannot parse"),
    Case("hex-number", row("n-11", vcpu="0x10"), "vcpu: cannot parse"),
    Case("unit-in-number", row("n-12", vcpu="16 vCPU"), "vcpu: cannot parse"),
    # text, regions, priority
    Case("request-id-1100-chars", row("r" * 1100), "request_id: too long"),
    Case("request-id-zero-width", row("s-1\u200b"), "request_id: control character"),
    Case("empty-request-id", row(""), "request_id: missing value"),
    Case("unknown-region", row("s-2", destination_region="us-east-9"), "destination_region: unknown region"),
    Case("region-pattern", row("s-3", source_region="mars-north-1"), "source_region: unknown region"),
    Case("same-region", row("s-4", destination_region="us-east-1"), "same source and destination region"),
    Case("bad-priority", row("s-5", priority="urgent"), "priority: not an allowed value"),
    # duplicates count valid rows only
    Case("duplicate-of-sample-row", GOOD_ROWS[0], "duplicate request_id"),
    Case("invalid-first-occurrence", row("d-1", vcpu="inf"), "vcpu: not finite"),
    Case("valid-after-invalid-same-id", row("d-1"), None),
    # acceptable variants land
    Case("utc-as-plus-zero", row("v-1", requested_at="2026-01-05T12:00:00+00:00"), None),
    Case("microseconds", row("v-2", requested_at="2026-01-05T12:00:00.123456Z"), None),
    Case("quoted-id-with-comma", b'"v-3,a"' + row("x")[1:], None),
    Case("crlf-line", row("v-4") + b"\r", None),
    Case("spaces-around-fields", b" " + row("v-5").replace(b",", b" , ") + b" ", None),
    Case("blank-line", b"", None),
    Case("whitespace-only-line", b"   \t", None),
]
VALID = frozenset(c.id for c in CASES if c.kind is None and c.line.strip())
BY_ID = {c.id: c for c in CASES}


@dataclass(frozen=True)
class Run:
    corpus: Corpus
    planted: Planted
    raw: pd.DataFrame
    quarantine: pd.DataFrame


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    corpus = Corpus(tmp_path_factory.mktemp("requests"))
    copy_samples(corpus.source)
    planted = plant(HEADER, GOOD_ROWS, [(c.id, c.line) for c in CASES], valid=VALID)
    (corpus.source / "peering_requests" / f"{DAY}.csv").write_bytes(planted.data)
    corpus.ingest_day("peering_requests", DAY)
    return Run(corpus, planted, corpus.raw("peering_requests"), corpus.quarantine("peering_requests"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_bad_line_is_quarantined_alone_and_the_day_keeps_every_good_row(run: Run, case: Case) -> None:
    # exactly the good rows of the day are in the lake, and nothing else is quarantined
    check_planted_case(run.quarantine, run.raw, run.planted, case, CASES)
    assert run.raw["request_id"].is_unique


def test_a_quote_cannot_swallow_the_lines_after_it(run: Run) -> None:
    """The line after each unclosed quote is a real sample row, and it is in the lake."""
    for case_id in ("unclosed-quote-at-start", "unclosed-quote-mid-line", "quote-swallowing-100kb"):
        after = GOOD_ROWS.index(_line_after(run.planted, case_id))
        assert GOOD_ROWS[after].split(b",")[0].decode() in set(run.raw["request_id"])


def test_a_long_line_keeps_4_kib_and_says_how_long_it_was(run: Run) -> None:
    raw = run.quarantine.loc[run.quarantine["line_number"] == run.planted.lines["quote-swallowing-100kb"], "raw"].item()
    assert raw.startswith('"xxx') and raw.endswith("[truncated: the line is 100001 bytes]")
    assert len(raw.encode()) < 4200


def test_bytes_that_are_not_utf8_are_kept_escaped(run: Run) -> None:
    raw = run.quarantine.loc[run.quarantine["line_number"] == run.planted.lines["invalid-utf8-byte"], "raw"].item()
    assert "norm\\xffal" in raw


def test_the_valid_row_after_an_invalid_one_with_its_id_is_kept(run: Run) -> None:
    kept = run.raw[run.raw["request_id"] == "d-1"]
    assert kept["vcpu"].tolist() == [4.0]


def test_acceptable_variants_land_as_typed_values(run: Run) -> None:
    by_id = run.raw.set_index("request_id")
    assert str(by_id.loc["v-1", "requested_at"]) == "2026-01-05 12:00:00+00:00"
    assert by_id.loc["v-2", "requested_at"].microsecond == 123456
    assert "v-3,a" in by_id.index and "v-4" in by_id.index and by_id.loc["v-5", "priority"] == "normal"


def test_an_hourly_run_keeps_exactly_its_hours_good_rows(run: Run, tmp_path: Path) -> None:
    """Hour 12 of the same file: its good rows only (sample rows end before 07:00)."""
    corpus = Corpus(tmp_path)
    copy_samples(corpus.source)
    (corpus.source / "peering_requests" / f"{DAY}.csv").write_bytes(run.planted.data)
    report = corpus.ingest("peering_requests", day_interval(DAY, hours=1, first_hour=12))
    hour_12 = run.raw[run.raw["requested_at"].dt.hour == 12]
    assert report.rows_valid == len(hour_12) == len(VALID)
    assert sorted(corpus.raw("peering_requests")["request_id"]) == sorted(hour_12["request_id"])
    # bad rows with a time in hour 12 are quarantined by this run; unplaceable ones by the 00:00 run
    in_hour = {c.id for c in CASES if c.kind and b"T12:" in c.line and not c.kind.startswith(("malformed", "requested_at"))}
    lines = set(corpus.quarantine("peering_requests")["line_number"])
    assert lines == {run.planted.lines[i] for i in in_hour}


def _line_after(planted: Planted, case_id: str) -> bytes:
    return planted.data.split(b"\n")[planted.lines[case_id]]  # 0-based index of the next line
