"""Bad-input corpus, whole files: a real sample day with one bad line (local and on S3), byte-order
marks, line endings, headers, ids repeated across day files, and hourly runs against a daily one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.common.config import Settings
from pipeline.ingest.lines import SourceUnreadable
from pipeline.ingest.loader import known_regions
from tests.corpus.conftest import SAMPLES, Corpus, copy_samples, day_interval
from tests.moto_server import REGION, aws_env, moto_server, s3_bucket  # noqa: F401

DAY, NEXT_DAY = "2026-01-05", "2026-01-06"
REQUESTS = SAMPLES / "peering_requests" / f"{DAY}.csv"
SAMPLE_LINES = REQUESTS.read_bytes().split(b"\n")[:-1]  # 1,359 lines: the header and 1,358 requests


def _with_line(number: int, line: bytes) -> bytes:
    """The sample day with line `number` (1-based) replaced."""
    lines = list(SAMPLE_LINES)
    lines[number - 1] = line
    return b"\n".join(lines) + b"\n"


def _requests_day(corpus: Corpus, data: bytes, day: str = DAY) -> None:
    copy_samples(corpus.source)
    (corpus.source / "peering_requests" / f"{day}.csv").write_bytes(data)


def test_one_stray_quote_costs_one_line_not_the_rest_of_the_file(corpus: Corpus) -> None:
    """The issue's case: an unclosed quote at the start of line 101 of 1,359."""
    _requests_day(corpus, _with_line(101, b'"' + SAMPLE_LINES[100]))
    report = corpus.ingest_day("peering_requests", DAY)
    quarantined = corpus.quarantine("peering_requests")
    assert quarantined[["line_number", "reason_kind"]].values.tolist() == [[101, "malformed row: unclosed quote"]]
    assert report.rows_valid == len(corpus.raw("peering_requests")) == 1357
    assert sorted(set(corpus.raw("peering_requests")["hour"])) == [f"{h:02d}" for h in range(24)]


def test_one_byte_that_is_not_utf8_costs_one_line(corpus: Corpus) -> None:
    _requests_day(corpus, _with_line(500, SAMPLE_LINES[499].replace(b"normal", b"norm\xe9")))
    report = corpus.ingest_day("peering_requests", DAY)
    assert corpus.quarantine("peering_requests")[["line_number", "reason_kind"]].values.tolist() == [[500, "malformed row: not UTF-8"]]
    assert report.rows_valid == 1357


def test_one_nanosecond_timestamp_costs_one_line(corpus: Corpus) -> None:
    line = SAMPLE_LINES[699]
    stamp = line.split(b",")[1]
    _requests_day(corpus, _with_line(700, line.replace(stamp, stamp[:-1] + b".123456789Z")))
    report = corpus.ingest_day("peering_requests", DAY)
    assert corpus.quarantine("peering_requests")[["line_number", "reason_kind"]].values.tolist() == [
        [700, "requested_at: finer than microseconds"]]
    assert report.rows_valid == 1357


def test_an_s3_source_isolates_bad_lines_the_same_way(s3_bucket: str, tmp_path: Path) -> None:
    """Sources on a real S3 API (moto server on loopback): BOM accepted, a quote and a bad byte cost their lines only."""
    import boto3

    data = b"\xef\xbb\xbf" + _with_line(101, b'"' + SAMPLE_LINES[100])
    data = data.replace(SAMPLE_LINES[899], SAMPLE_LINES[899] + b"\xff")
    s3 = boto3.client("s3", region_name=REGION)
    for path in ("inventory/pools.csv", "inventory/catalog.csv", "calendar/events.csv"):
        s3.put_object(Bucket=s3_bucket, Key=f"src/{path}", Body=(SAMPLES / path).read_bytes())
    s3.put_object(Bucket=s3_bucket, Key=f"src/peering_requests/{DAY}.csv", Body=data)
    corpus = Corpus(tmp_path)
    settings = Settings(source_root=f"s3://{s3_bucket}/src", lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))

    from pipeline.ingest.loader import ingest

    report = ingest("peering_requests", day_interval(DAY), settings)
    quarantined = corpus.quarantine("peering_requests")
    assert quarantined[["line_number", "reason_kind"]].values.tolist() == [
        [101, "malformed row: unclosed quote"], [900, "malformed row: not UTF-8"]]
    assert quarantined["source_file"].iloc[0] == f"s3://{s3_bucket}/src/peering_requests/{DAY}.csv"
    assert report.rows_valid == len(corpus.raw("peering_requests")) == 1356


@pytest.mark.parametrize("dataset,ext,good", [("peering_requests", "csv", 1358), ("region_telemetry", "csv", 1693),
                                              ("app_telemetry", "jsonl", 567)])
def test_a_utf8_byte_order_mark_is_accepted(corpus: Corpus, dataset: str, ext: str, good: int) -> None:
    copy_samples(corpus.source)
    path = corpus.source / dataset / f"{DAY}.{ext}"
    path.write_bytes(b"\xef\xbb\xbf" + (SAMPLES / dataset / f"{DAY}.{ext}").read_bytes())
    report = corpus.ingest_day(dataset, DAY)
    assert (report.rows_valid, report.rows_quarantined) == (good, 0)


def test_a_byte_order_mark_on_pools_keeps_the_known_regions(corpus: Corpus) -> None:
    pools = corpus.source / "inventory" / "pools.csv"
    pools.write_bytes(b"\xef\xbb\xbf" + pools.read_bytes())
    assert len(known_regions(str(corpus.source))) == 6
    report = corpus.ingest("resource_pools", day_interval(DAY, hours=1))
    assert (report.rows_valid, report.rows_quarantined) == (24, 0)


def test_crlf_line_endings_are_accepted(corpus: Corpus) -> None:
    _requests_day(corpus, REQUESTS.read_bytes().replace(b"\n", b"\r\n"))
    report = corpus.ingest_day("peering_requests", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (1358, 0)


def test_blank_lines_hold_no_row_and_keep_the_line_numbers_true(corpus: Corpus) -> None:
    lines = list(SAMPLE_LINES[:11])
    lines[5:5] = [b"", b"   "]  # lines 6 and 7 are blank
    lines[10] = lines[10].replace(b"normal", b"urgent").replace(b"high", b"urgent").replace(b"low", b"urgent")
    _requests_day(corpus, b"\n".join(lines) + b"\n\n")
    report = corpus.ingest_day("peering_requests", DAY)
    assert corpus.quarantine("peering_requests")[["line_number", "reason_kind"]].values.tolist() == [
        [11, "priority: not an allowed value"]]
    assert (report.rows_read, report.rows_valid) == (10, 9)


def test_a_header_naming_a_column_twice_is_a_clear_error(corpus: Corpus) -> None:
    header = SAMPLE_LINES[0] + b",vcpu"
    _requests_day(corpus, b"\n".join([header, *(line + b",1" for line in SAMPLE_LINES[1:])]) + b"\n")
    with pytest.raises(SourceUnreadable, match=r"header names columns \['vcpu'\] more than once"):
        corpus.ingest_day("peering_requests", DAY)


def test_a_header_that_is_not_utf8_is_a_clear_error(corpus: Corpus) -> None:
    _requests_day(corpus, _with_line(1, SAMPLE_LINES[0].replace(b"priority", b"priorit\xe9")))
    with pytest.raises(SourceUnreadable, match="the header line cannot be read"):
        corpus.ingest_day("peering_requests", DAY)


def test_an_empty_file_is_a_clear_error_and_a_header_only_file_is_an_empty_day(corpus: Corpus) -> None:
    _requests_day(corpus, b"")
    with pytest.raises(SourceUnreadable, match="is empty: expected a header row"):
        corpus.ingest_day("peering_requests", DAY)
    _requests_day(Corpus(corpus.root / "second"), SAMPLE_LINES[0] + b"\n")
    report = Corpus(corpus.root / "second").ingest_day("peering_requests", DAY)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (0, 0, 0)


def _two_days(corpus: Corpus, first: list[bytes], second: list[bytes]) -> None:
    copy_samples(corpus.source)
    for day, rows in ((DAY, first), (NEXT_DAY, second)):
        (corpus.source / "peering_requests" / f"{day}.csv").write_bytes(b"\n".join([SAMPLE_LINES[0], *rows]) + b"\n")


def _request(request_id: str, day: str, **values: str) -> bytes:
    fields = {"vcpu": "4", "memory_gib": "16", "priority": "normal", **values}
    return (f"{request_id},{day}T10:00:00Z,us-east-1,eu-west-1,{fields['vcpu']},{fields['memory_gib']},0,1.0,600,"
            f"{fields['priority']}").encode()


def test_a_request_id_from_an_earlier_day_file_is_a_duplicate(corpus: Corpus) -> None:
    _two_days(corpus, [_request("a-1", DAY), _request("a-2", DAY)], [_request("a-1", NEXT_DAY), _request("a-3", NEXT_DAY)])
    corpus.ingest_day("peering_requests", DAY)
    report = corpus.ingest_day("peering_requests", NEXT_DAY)
    quarantined = corpus.quarantine("peering_requests")
    assert quarantined[["line_number", "reason_kind"]].values.tolist() == [[2, "duplicate request_id"]]
    assert "ingested from the day file of 2026-01-05" in quarantined["reason"].item()
    assert report.rows_valid == 1 and sorted(corpus.raw("peering_requests")["request_id"]) == ["a-1", "a-2", "a-3"]
    # re-running the earlier day keeps its row: only earlier days count against a day
    again = corpus.ingest_day("peering_requests", DAY)
    assert (again.rows_valid, again.rows_quarantined) == (2, 0)


def test_an_interval_over_two_days_checks_ids_across_its_files(corpus: Corpus) -> None:
    _two_days(corpus, [_request("b-1", DAY)], [_request("b-1", NEXT_DAY), _request("b-2", NEXT_DAY)])
    report = corpus.ingest("peering_requests", day_interval(DAY, hours=48))
    assert (report.rows_valid, report.rows_quarantined, report.quarantine_reasons) == (2, 1, {"duplicate request_id": 1})


def test_an_invalid_row_on_an_earlier_day_does_not_make_a_later_valid_row_a_duplicate(corpus: Corpus) -> None:
    _two_days(corpus, [_request("c-1", DAY, vcpu="inf")], [_request("c-1", NEXT_DAY)])
    corpus.ingest_day("peering_requests", DAY)
    report = corpus.ingest_day("peering_requests", NEXT_DAY)
    assert (report.rows_valid, report.rows_quarantined) == (1, 0)
    assert corpus.raw("peering_requests")["requested_at"].dt.day.tolist() == [6]


def test_hourly_runs_land_what_one_daily_run_lands(tmp_path: Path) -> None:
    """Whichever hours a run covers, each line gets the same verdict (the whole file is checked every time)."""
    rows = list(SAMPLE_LINES[1:151])  # hours 00-04
    first_id = rows[3].split(b",")[0].decode()
    rows[10] = _request("h-1", DAY, priority="urgent").replace(b"T10:", b"T01:")
    rows[20] = _request(first_id, DAY).replace(b"T10:", b"T01:")  # repeats a valid row of hour 00
    rows[30] = _request("h-2", DAY).replace(b"T10:", b"T01:").replace(b",us-east-1,", b",xx-east-1,")
    rows[40] = _request("h-2", DAY).replace(b"T10:", b"T02:")  # valid: the row before with its id was invalid
    daily, hourly = Corpus(tmp_path / "daily"), Corpus(tmp_path / "hourly")
    for corpus in (daily, hourly):
        _requests_day(corpus, b"\n".join([SAMPLE_LINES[0], *rows]) + b"\n")
    daily.ingest_day("peering_requests", DAY)
    for hour in range(5):
        hourly.ingest("peering_requests", day_interval(DAY, hours=1, first_hour=hour))

    def same(one: pd.DataFrame, many: pd.DataFrame, key: str) -> None:
        pd.testing.assert_frame_equal(*(f.drop(columns=["source_file"], errors="ignore").sort_values(key).reset_index(drop=True)
                                        for f in (one, many)))

    same(daily.raw("peering_requests"), hourly.raw("peering_requests"), "request_id")
    same(daily.quarantine("peering_requests"), hourly.quarantine("peering_requests"), "line_number")
    assert daily.quarantine("peering_requests")[["line_number", "reason_kind"]].values.tolist() == [
        [12, "priority: not an allowed value"], [22, "duplicate request_id"], [32, "source_region: unknown region"]]
    assert len(daily.raw("peering_requests")) == 147
