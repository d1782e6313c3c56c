"""Bad-input corpus, the request files of `peerscale irc replay` and `irc shadow` (`pipeline.irc.shadow.load_requests`).

A line that is not a row is skipped and reported with its true line number and reason; every other
line is replayed. Each case builds a file of 40 good requests with one bad line at line 11 (or a
file-level flaw), checks what was kept and rejected, replays it through a coordinator on a SQLite
ledger and checks that the decisions are exactly those of the clean file and that the ledger
never holds more than the plan.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.irc import Coordinator, open_ledger
from pipeline.irc.ledger.protocol import over_capacity
from pipeline.irc.shadow import RequestFile, load_requests
from tests.test_irc import publish_plan

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 10, tzinfo=UTC)
EU, US = "eu-west-1", "us-east-1"
CAPACITY = {EU: {"vcpu": 8.0, "memory_gib": 64.0, "bandwidth_gbps": 4.0}}
HEADER = b"request_id,requested_at,source_region,destination_region,vcpu,memory_gib,storage_gib,bandwidth_gbps,duration_s,priority"
GOOD_ROWS = 40
BAD_LINE = 11  # the header is line 1, the good rows around the bad one


def good(i: int) -> bytes:
    at = (T0 + timedelta(seconds=30 * i)).isoformat().replace("+00:00", "Z")
    return f"req-{i:03d},{at},{US},{EU},1,2,0,0.1,3600,normal".encode()


def csv_file(bad: bytes | None = None, *, newline: bytes = b"\n", header: bytes = HEADER) -> bytes:
    lines = [header] + [good(i) for i in range(GOOD_ROWS)]
    if bad is not None:
        lines.insert(BAD_LINE - 1, bad)
    return newline.join(lines) + newline


BAD = "req-bad,2025-03-01T10:05:00Z,us-east-1,eu-west-1,1,2,0,0.1,3600,normal"
# (case id, the bad line, reason fragment). Every case is NEW: the old reader dropped the rest of the
# file (a stray quote), failed the whole file (a byte that is not UTF-8) or kept a misaligned row.
UNREADABLE_LINES: list[tuple[str, bytes, str]] = [
    ("stray_quote", ('"' + BAD).encode(), "not a CSV record: unexpected end of data (an unclosed quote)"),
    ("text_after_closing_quote", BAD.replace("2025-03-01T10:05:00Z", '"2025-03-01T10:05:00Z"x').encode(),
     "not a CSV record: ',' expected after '\"'"),
    ("byte_0xff", BAD.replace("eu-west-1", "eu-we\xffst-1").encode("latin-1"), "not UTF-8: byte 0xff at column"),
    ("latin1_e_acute", BAD.replace("normal", "norm\xe9l").encode("latin-1"), "not UTF-8: byte 0xe9"),
    ("nul_byte", BAD.replace("us-east-1", "us-east\x00-1").encode(), "NUL byte at column"),
    ("bare_carriage_return", BAD.replace(",normal", "\r,normal").encode(), "not a CSV record: new-line character"),
    ("too_many_fields", (BAD + ",extra").encode(), "11 fields where the header has 10"),
    ("too_few_fields", b"req-bad,2025-03-01T10:05:00Z,us-east-1", "3 fields where the header has 10"),
]
# (case id, a row that parses but whose values are wrong, the coordinator's reason). Kept, decided invalid.
INVALID_ROWS: list[tuple[str, str, str]] = [
    ("impossible_date", BAD.replace("2025-03-01", "2025-02-30"), "requested_at must be a datetime, got '2025-02-30"),
    ("naive_timestamp", BAD.replace("10:05:00Z", "10:05:00"), "naive datetime"),
    ("infinite_quantity", BAD.replace(",1,2,", ",inf,2,"), "non-finite quantity for vcpu"),
    ("dated_2099", BAD.replace("2025-03-01", "2099-03-01"), "ahead of this coordinator's clock"),  # NEW: was served
    ("duration_a_year", BAD.replace(",3600,", ",31536000,"), "longer than the longest session"),  # NEW: was granted
]


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    publish_plan(root, "plan-a", T0, hours=2, capacity=CAPACITY)
    return root


def replay(lake: Path, stream: RequestFile, ledger_url: str) -> Counter[str]:
    """Decisions by path (invalid ones by their message prefix) on a shared ledger; checks the plan holds."""
    store = open_ledger(ledger_url)
    irc = Coordinator(lake, store, reload_interval_s=None, outcomes=False)
    try:
        paths: Counter[str] = Counter()
        for request in stream:
            response = irc.handle_peering_request(request)
            paths["invalid" if response.message.startswith("Invalid request") else response.path] += 1
        assert irc.plan is not None
        for window in irc.plan.windows:
            for rt, used in store.usage(window.start_s, EU).items():
                assert not over_capacity(used, 0.0, CAPACITY[EU].get(rt, 0.0)), (window.key, rt, used)
        assert irc.metrics().get("internal_errors", 0) == 0
        return paths
    finally:
        irc.close()
        store.close()


def clean_decisions(lake: Path, tmp_path: Path) -> Counter[str]:
    (tmp_path / "clean.csv").write_bytes(csv_file())
    return replay(lake, load_requests(tmp_path / "clean.csv"), f"sqlite://{tmp_path / 'clean.db'}")


@pytest.mark.parametrize(("bad", "reason"), [c[1:] for c in UNREADABLE_LINES], ids=[c[0] for c in UNREADABLE_LINES])
def test_an_unreadable_line_is_reported_and_every_other_line_replayed(lake: Path, tmp_path: Path, bad: bytes,
                                                                      reason: str) -> None:
    path = tmp_path / "requests.csv"
    path.write_bytes(csv_file(bad))
    stream = load_requests(path)
    assert len(stream) == GOOD_ROWS
    assert [(r.line, reason in r.reason) for r in stream.rejected] == [(BAD_LINE, True)], stream.rejected
    assert stream.rejected[0].raw.startswith(('"req-bad', "req-bad"))
    assert BAD_LINE not in stream.lines and sorted(stream.lines) == [n for n in range(2, GOOD_ROWS + 3) if n != BAD_LINE]
    assert replay(lake, stream, f"sqlite://{tmp_path / 'ledger.db'}") == clean_decisions(lake, tmp_path)


@pytest.mark.parametrize(("row", "reason"), [c[1:] for c in INVALID_ROWS], ids=[c[0] for c in INVALID_ROWS])
def test_a_row_with_bad_values_is_replayed_and_decided_invalid(lake: Path, tmp_path: Path, row: str, reason: str) -> None:
    path = tmp_path / "requests.csv"
    path.write_bytes(csv_file(row.encode()))
    stream = load_requests(path)
    assert len(stream) == GOOD_ROWS + 1 and stream.rejected == ()
    bad = stream.lines.index(BAD_LINE)
    irc = Coordinator(lake, reload_interval_s=None, outcomes=False)
    decision = irc.handle_peering_request(stream[bad])
    assert decision.status == "failure" and reason in decision.message, decision.message
    expected = clean_decisions(lake, tmp_path)
    expected["invalid"] += 1
    assert replay(lake, stream, f"sqlite://{tmp_path / 'ledger.db'}") == expected


@pytest.mark.parametrize("flaw", ["utf8_bom", "crlf_line_endings", "blank_lines", "blank_priority", "nanosecond_timestamps"])
def test_harmless_file_shapes_keep_every_row(lake: Path, tmp_path: Path, flaw: str) -> None:
    """NEW for the BOM (it used to turn request_id into '\\ufeffrequest_id': every row invalid)."""
    data = {
        "utf8_bom": b"\xef\xbb\xbf" + csv_file(),
        "crlf_line_endings": csv_file(newline=b"\r\n"),
        "blank_lines": csv_file().replace(b"\nreq-010", b"\n\n  \nreq-010") + b"\n\n",
        "blank_priority": csv_file().replace(b",normal\n", b",\n"),
        "nanosecond_timestamps": csv_file().replace(b":00Z,", b":00.000000001Z,").replace(b":30Z,", b":30.000000001Z,"),
    }[flaw]
    path = tmp_path / "requests.csv"
    path.write_bytes(data)
    stream = load_requests(path)
    assert (len(stream), stream.rejected) == (GOOD_ROWS, ())
    assert {r.request_id for r in stream} == {f"req-{i:03d}" for i in range(GOOD_ROWS)}
    assert {r.priority for r in stream} == {"normal"}
    assert replay(lake, stream, f"sqlite://{tmp_path / 'ledger.db'}") == clean_decisions(lake, tmp_path)


@pytest.mark.parametrize(("data", "message"), [
    (csv_file(header=HEADER.replace(b",duration_s", b"")), "missing column(s) duration_s"),
    (csv_file(header=HEADER.replace(b"priority", b"vcpu")), "a column name repeats"),
    (b"", "the file is empty"),
    (b"\xff\xfe" + HEADER, "no readable header line (not UTF-8"),
])
def test_a_file_without_a_usable_header_is_an_error_naming_it(tmp_path: Path, data: bytes, message: str) -> None:
    """NEW: a missing column used to make every row invalid, an empty file an empty replay."""
    path = tmp_path / "requests.csv"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"line 1|header") as error:
        load_requests(path)
    assert message in str(error.value)


def json_row(i: int) -> bytes:
    at = (T0 + timedelta(seconds=30 * i)).isoformat()
    return json.dumps({"request_id": f"req-{i:03d}", "requested_at": at, "source_region": US, "destination_region": EU,
                       "vcpu": 1, "memory_gib": 2, "bandwidth_gbps": 0.1, "duration_s": 3600}).encode()


@pytest.mark.parametrize(("bad", "reason"), [
    (b'{"request_id": "req-bad", "vcpu": 1,', "not JSON: Expecting property name enclosed in double quotes at column"),
    (b'{"request_id": "req-bad", "vcpu": NaN}', "not JSON: NaN is not JSON"),
    (b'["req-bad", 1]', "not a JSON object but list"),
    (b'{"request_id": "\xff"}', "not UTF-8: byte 0xff"),
    (b"[" * 5000 + b"]" * 5000, "not JSON: nested too deep"),
], ids=["truncated_object", "nan_literal", "array_line", "byte_0xff", "nested_too_deep"])
def test_a_bad_json_line_is_reported_and_every_other_line_replayed(lake: Path, tmp_path: Path, bad: bytes,
                                                                   reason: str) -> None:
    """NEW: one bad line used to fail the whole file."""
    lines = [json_row(i) for i in range(GOOD_ROWS)]
    lines.insert(BAD_LINE - 1, bad)
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stream = load_requests(path)
    assert len(stream) == GOOD_ROWS
    assert [(r.line, reason in r.reason) for r in stream.rejected] == [(BAD_LINE, True)], stream.rejected
    assert replay(lake, stream, f"sqlite://{tmp_path / 'ledger.db'}") == clean_decisions(lake, tmp_path)


def test_a_json_array_item_that_is_not_an_object_is_reported(tmp_path: Path) -> None:
    """NEW: it used to raise AttributeError out of load_requests."""
    items = [json.loads(json_row(i)) for i in range(5)]
    path = tmp_path / "requests.json"
    path.write_text(json.dumps([*items[:2], "req-bad", *items[2:]]))
    stream = load_requests(path)
    assert len(stream) == 5 and [(r.line, r.reason) for r in stream.rejected] == [(3, "item 3 is not a JSON object")]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_irc_replay_skips_only_the_bad_line_and_says_where(lake: Path, tmp_path: Path) -> None:
    """NEW: issue #14 finding 1 - a stray quote made `irc replay` drop the rest of the file silently."""
    path = tmp_path / "requests.csv"
    path.write_bytes(csv_file(UNREADABLE_LINES[0][1]))
    ledger = tmp_path / "ledger.db"
    result = cli("irc", "replay", "--requests", str(path), "--lake", str(lake), "--ledger", f"sqlite://{ledger}")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    clean = clean_decisions(lake, tmp_path)
    replayed = {k: v for k, v in summary.items() if k == "requests" or k.startswith("path_")}
    assert replayed == {"requests": GOOD_ROWS, **{f"path_{k}": v for k, v in sorted(clean.items())}}
    assert f"line {BAD_LINE} skipped: not a CSV record: unexpected end of data (an unclosed quote)" in result.stderr


def test_irc_shadow_replays_every_readable_line(lake: Path, tmp_path: Path) -> None:
    """NEW: the same file through `irc shadow`: both sides see the 40 good rows, the bad one is reported."""
    path = tmp_path / "requests.csv"
    path.write_bytes(csv_file(UNREADABLE_LINES[2][1]))
    result = cli("irc", "shadow", "--requests", str(path), "--lake", str(lake), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["production"]["requests"] == report["candidate"]["requests"] == GOOD_ROWS
    assert report["production"]["invalid"] == 0
    assert f"line {BAD_LINE} skipped: not UTF-8: byte 0xff" in result.stderr
