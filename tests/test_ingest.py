"""Ingest: valid rows land in hour partitions; every bad row is quarantined with its reason."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipeline.common import lake
from pipeline.common.intervals import DataInterval, parse_utc
from pipeline.ingest.loader import SourceFileMissing, ingest
from tests.conftest import SAMPLES, settings_for

HEADER = "request_id,requested_at,source_region,destination_region,vcpu,memory_gib,storage_gib,bandwidth_gbps,duration_s,priority"
GOOD = [
    "r-1,2026-01-05T00:10:00Z,us-east-1,eu-west-1,4,16,0,1.0,600,normal",
    "r-2,2026-01-05T00:20:00Z,eu-west-1,us-east-1,8,32,100,0.5,1200,high",
    "r-3,2026-01-05T01:05:00Z,us-west-2,eu-west-1,2,8,0,0.2,60,low",
]
BAD = {
    "malformed row": "r-4,2026-01-05T00:30:00Z,us-east-1,eu-west-1,4",
    "unknown region": "r-5,2026-01-05T00:31:00Z,mars-north-1,eu-west-1,4,16,0,1.0,600,normal",
    "duplicate request_id": "r-1,2026-01-05T00:32:00Z,us-east-1,eu-west-1,4,16,0,1.0,600,normal",
    "negative": "r-6,2026-01-05T00:33:00Z,us-east-1,eu-west-1,-4,16,0,1.0,600,normal",
    "same region": "r-7,2026-01-05T00:34:00Z,us-east-1,us-east-1,4,16,0,1.0,600,normal",
    "not a number": "r-8,2026-01-05T00:35:00Z,us-east-1,eu-west-1,four,16,0,1.0,600,normal",
    "bad priority": "r-9,2026-01-05T00:36:00Z,us-east-1,eu-west-1,4,16,0,1.0,600,urgent",
    "zero duration": "r-10,2026-01-05T00:37:00Z,us-east-1,eu-west-1,4,16,0,1.0,0,normal",
    "clock skew": "r-11,2026-01-06T00:05:00Z,us-east-1,eu-west-1,4,16,0,1.0,600,normal",
    "bad timestamp": "r-12,yesterday,us-east-1,eu-west-1,4,16,0,1.0,600,normal",
}


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    """A source root with the sample inventory and one hand-written requests file."""
    root = tmp_path / "source"
    shutil.copytree(SAMPLES / "inventory", root / "inventory")
    shutil.copytree(SAMPLES / "calendar", root / "calendar")
    (root / "peering_requests").mkdir()
    (root / "peering_requests" / "2026-01-05.csv").write_text("\n".join([HEADER, *GOOD, *BAD.values()]) + "\n")
    return root


def test_bad_rows_are_quarantined_with_reasons_and_nothing_is_lost(source: Path, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, source)
    day = DataInterval.between("2026-01-05T00:00", "2026-01-06T00:00")
    report = ingest("peering_requests", day, settings)

    assert report.rows_read == len(GOOD) + len(BAD)
    assert report.rows_valid == len(GOOD)
    assert report.rows_quarantined == len(BAD)
    kinds = report.quarantine_reasons
    assert kinds["malformed row: wrong number of fields"] == 1
    assert kinds["source_region: unknown region"] == 1
    assert kinds["duplicate request_id"] == 1
    assert kinds["vcpu: cannot parse"] == 1

    quarantined = lake.read_partitioned(lake.quarantine_dir(settings.lake_root, "peering_requests")).to_pandas()
    by_id = {raw.split(",")[0]: f"{kind} | {reason}"
             for raw, reason, kind in zip(quarantined["raw"], quarantined["reason"], quarantined["reason_kind"])}
    assert "mars-north-1" in by_id["r-5"]
    assert "out of range" in by_id["r-6"]
    assert "source_region equals destination_region" in by_id["r-7"]
    assert "urgent" in by_id["r-9"]
    assert "duration_s" in by_id["r-10"]
    assert "outside the file's day" in by_id["r-11"]
    assert "requested_at: cannot parse" in by_id["r-12"]
    assert set(quarantined["line_number"]) == set(range(len(GOOD) + 2, len(GOOD) + len(BAD) + 2))

    raw = lake.read_partitioned(lake.raw_dir(settings.lake_root, "peering_requests")).to_pandas()
    assert sorted(raw["request_id"]) == ["r-1", "r-2", "r-3"]
    assert str(raw["requested_at"].dtype) == "datetime64[us, UTC]"
    assert sorted(set(zip(raw["date"], raw["hour"]))) == [("2026-01-05", "00"), ("2026-01-05", "01")]


def test_hourly_ingest_touches_only_its_hour_and_is_idempotent(source: Path, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, source)
    first_hour = DataInterval.ending_at("2026-01-05T01:00")
    second_hour = DataInterval.ending_at("2026-01-05T02:00")
    ingest("peering_requests", first_hour, settings)
    ingest("peering_requests", second_hour, settings)
    again = ingest("peering_requests", second_hour, settings)
    assert again.rows_valid == 1  # r-3 only

    raw = lake.read_partitioned(lake.raw_dir(settings.lake_root, "peering_requests"))
    assert sorted(raw.column("request_id").to_pylist()) == ["r-1", "r-2", "r-3"]
    quarantined = lake.read_partitioned(lake.quarantine_dir(settings.lake_root, "peering_requests"))
    # Unattributable rows (malformed, bad timestamp, clock skew) belong to the run holding 00:00.
    assert quarantined.num_rows == len(BAD)
    assert set(pc.unique(quarantined.column("hour")).to_pylist()) == {"00"}


def test_rerun_after_source_fix_replaces_the_partition(source: Path, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, source)
    hour = DataInterval.ending_at("2026-01-05T01:00")
    ingest("peering_requests", hour, settings)
    (source / "peering_requests" / "2026-01-05.csv").write_text("\n".join([HEADER, GOOD[0]]) + "\n")
    report = ingest("peering_requests", hour, settings)
    assert report.rows_valid == 1 and report.rows_quarantined == 0
    raw = lake.read_partitioned(lake.raw_dir(settings.lake_root, "peering_requests"))
    assert raw.column("request_id").to_pylist() == ["r-1"]
    assert lake.read_partitioned(lake.quarantine_dir(settings.lake_root, "peering_requests")).num_rows == 0


def test_missing_source_file_names_the_file(source: Path, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, source)
    with pytest.raises(SourceFileMissing) as excinfo:
        ingest("peering_requests", DataInterval.ending_at("2026-01-07T05:00"), settings)
    assert str(source / "peering_requests" / "2026-01-07.csv") in str(excinfo.value)


def test_header_without_required_columns_is_a_clear_error(source: Path, tmp_path: Path) -> None:
    (source / "peering_requests" / "2026-01-05.csv").write_text("request_id,when\nr-1,2026-01-05T00:10:00Z\n")
    with pytest.raises(ValueError, match="header lacks columns"):
        ingest("peering_requests", DataInterval.ending_at("2026-01-05T01:00"), settings_for(tmp_path, source))


# The 11 dirty lines data_samples/README.md documents, with the rule each breaks.
SAMPLE_DIRTY_ROWS = {
    ("2026-01-07", 39): "duplicate request_id",
    ("2026-01-07", 388): "destination_region: unknown region",
    ("2026-01-07", 433): "malformed row: wrong number of fields",
    ("2026-01-10", 95): "storage_gib: out of range",
    ("2026-01-10", 677): "source_region: unknown region",
    ("2026-01-10", 909): "malformed row: wrong number of fields",
    ("2026-01-22", 111): "vcpu: out of range",
    ("2026-01-22", 1067): "duplicate request_id",
    ("2026-01-22", 1491): "vcpu: cannot parse",
    ("2026-02-01", 259): "source_region: unknown region",
    ("2026-02-01", 565): "duplicate request_id",
}


def test_sample_data_dirty_rows_are_all_caught(tmp_path: Path) -> None:
    """The committed samples inject 11 dirty request lines; ingesting their days finds exactly those."""
    settings = settings_for(tmp_path)
    valid, days = 0, sorted({d for d, _ in SAMPLE_DIRTY_ROWS})
    for day in days:
        start = parse_utc(f"{day}T00:00")
        valid += ingest("peering_requests", DataInterval(start, start + timedelta(days=1)), settings).rows_valid
    quarantined = lake.read_partitioned(lake.quarantine_dir(settings.lake_root, "peering_requests")).to_pandas()
    found = {(Path(f).stem, n): kind
             for f, n, kind in zip(quarantined["source_file"], quarantined["line_number"], quarantined["reason_kind"])}
    assert found == SAMPLE_DIRTY_ROWS
    lines = sum((SAMPLES / "peering_requests" / f"{day}.csv").read_text().count("\n") - 1 for day in days)
    assert valid == lines - len(SAMPLE_DIRTY_ROWS)


def test_reference_data_and_telemetry_validate(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    hour = DataInterval.ending_at("2026-01-20T13:00")
    for dataset in ("resource_pools", "instance_catalog", "calendar", "region_telemetry", "app_telemetry"):
        report = ingest(dataset, hour, settings)
        assert report.rows_quarantined == 0, report
        assert report.rows_valid > 0
    pools = lake.read_reference(settings.lake_root, "resource_pools", hour.end)
    assert pools.num_rows == 24
