"""An hourly run checks only the lines it needs, and lands exactly what a check of every line would.

A day file's hourly runs used to re-check the whole day each hour. Now a run checks the lines it
places and every line sharing a duplicate key with one of them (`loader._lines_to_check`). The
cases here are the ones where a verdict depends on a line of another hour: a request id seen
valid at 02:00 and again at 15:00 (the second is the duplicate), one whose first occurrence is
invalid (the next valid one lands, the third is the duplicate), a telemetry key given twice in
one hour, and lines without a usable time (quarantined by the run that holds the day's first
hour). Ingesting the day hour by hour must give the lake of one whole-day ingest, row for row.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.common.schemas import SOURCES
from pipeline.ingest.lines import read_lines
from pipeline.ingest.loader import _lines_to_check
from tests.corpus.conftest import SAMPLES, Corpus, copy_samples, day_interval

DAY = "2026-01-05"
REQUESTS = (SAMPLES / "peering_requests" / f"{DAY}.csv").read_bytes().rstrip(b"\n").split(b"\n")
COLUMNS = REQUESTS[0].decode().split(",")


def request(request_id: str, at: str, **values: str) -> bytes:
    fields = {"request_id": request_id, "requested_at": f"{DAY}T{at}Z", "source_region": "us-east-1",
              "destination_region": "eu-west-1", "vcpu": "4", "memory_gib": "16", "storage_gib": "0",
              "bandwidth_gbps": "1.0", "duration_s": "600", "priority": "normal", **values}
    return ",".join(fields[c] for c in COLUMNS).encode()


REPEATED = REQUESTS[5].split(b",")[0].decode()
PLANTED = [
    request("dup-1", "02:10:00"), request("dup-1", "15:20:00"),  # the second one is the duplicate
    request("dup-2", "03:00:00", vcpu="inf"), request("dup-2", "16:00:00"), request("dup-2", "18:30:00"),
    request(REPEATED, "21:00:00"),  # repeats a real request id of hour 00 (a duplicate)
    b"not,a,request",  # malformed: no time, quarantined by the 00:00 run
    request("no-time", "99:99:99"),
    request("next-day", "23:59:59").replace(f"{DAY}T23:59:59Z".encode(), b"2026-01-06T00:00:01Z"),
]


def _write_day(source: Path) -> None:
    lines = REQUESTS[:1] + [line for pair in zip(REQUESTS[1:], PLANTED) for line in pair] + REQUESTS[1 + len(PLANTED):]
    (source / "peering_requests" / f"{DAY}.csv").write_bytes(b"\n".join(lines) + b"\n")
    telemetry = (SAMPLES / "region_telemetry" / f"{DAY}.csv").read_bytes().rstrip(b"\n").split(b"\n")
    twice = telemetry[40].replace(b",0.", b",0.9", 1)  # the same (ts, region) again, another value: a duplicate
    (source / "region_telemetry" / f"{DAY}.csv").write_bytes(b"\n".join([*telemetry, twice]) + b"\n")


def _lake(corpus: Corpus, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = corpus.raw(dataset).drop(columns=["date", "hour"], errors="ignore")
    raw = raw.sort_values(list(raw.columns)).reset_index(drop=True)
    quarantine = corpus.quarantine(dataset)[["line_number", "reason", "reason_kind", "raw"]].reset_index(drop=True)
    return raw, quarantine


def test_hour_by_hour_lands_what_the_whole_day_does(tmp_path: Path) -> None:
    hourly, daily = Corpus(tmp_path / "hourly"), Corpus(tmp_path / "daily")
    for corpus in (hourly, daily):
        copy_samples(corpus.source, [DAY])
        _write_day(corpus.source)
    for dataset in ("peering_requests", "region_telemetry"):
        read = {hourly.ingest(dataset, day_interval(DAY, 1, hour)).rows_read for hour in range(24)}
        assert read == {daily.ingest_day(dataset, DAY).rows_read}  # every run reads (not checks) every line
        got, want = _lake(hourly, dataset), _lake(daily, dataset)
        pd.testing.assert_frame_equal(got[0], want[0])
        pd.testing.assert_frame_equal(got[1], want[1])
    quarantined = _lake(daily, "peering_requests")[1]
    kinds = dict(zip(quarantined["raw"].str.split(",").str[0], quarantined["reason_kind"]))
    assert kinds["dup-1"] == "duplicate request_id" and kinds["dup-2"].startswith(("vcpu", "duplicate"))
    assert (quarantined["raw"].str.startswith("dup-2,") & (quarantined["reason_kind"] == "duplicate request_id")).sum() == 1
    assert {"not", "no-time", "next-day"} <= set(kinds)
    assert "duplicate ts+region" in set(_lake(daily, "region_telemetry")[1]["reason_kind"])
    assert kinds[REPEATED] == "duplicate request_id"


def test_an_hour_checks_its_lines_and_those_sharing_a_key(tmp_path: Path) -> None:
    source = copy_samples(tmp_path, [DAY])
    _write_day(source)
    spec = SOURCES["peering_requests"]
    lines = read_lines((source / "peering_requests" / f"{DAY}.csv").read_bytes(), uri="day", columns=spec["schema"].names,
                       ext=spec["ext"])
    ids = [line.raw.split(",")[0] for line in lines]
    at_15 = [ids[i] for i in _lines_to_check(lines, dataset="peering_requests", day=pd.Timestamp(DAY).date(),
                                             interval=day_interval(DAY, 1, 15))]
    assert ids.count("dup-1") == 2 and at_15.count("dup-1") == 2  # the 02:10 line decides the 15:20 one
    assert "dup-2" not in at_15 and "not" not in at_15 and "no-time" not in at_15
    in_hour = [line for line in lines if line.fields and line.fields["requested_at"].startswith(f"{DAY}T15:")]
    assert len(at_15) == len(in_hour) + 1 < len(lines) / 10
    at_00 = [ids[i] for i in _lines_to_check(lines, dataset="peering_requests", day=pd.Timestamp(DAY).date(),
                                             interval=day_interval(DAY, 1, 0))]
    assert {"not", "no-time", "next-day"} <= set(at_00)  # no usable time: the day's first hour holds them
    assert at_00.count(REPEATED) == 2  # a real id of hour 00, repeated at 21:00
