"""Tests for the seeded sample-data generator: determinism, contracts and the traffic model's shape."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pytest

from pipeline.common import schemas
from pipeline.samples.generate import DEFAULT_REGIONS, DIRTY_ROWS, UNKNOWN_REGIONS, generate_sample_data

START = date(2026, 1, 1)
OFFSETS = {
    "us-east-1": -5, "us-west-2": -8, "eu-west-1": 0, "eu-central-1": 1, "ap-southeast-1": 8, "ap-northeast-1": 9
}  # fmt: skip
NUMERIC = ("vcpu", "memory_gib", "storage_gib", "bandwidth_gbps", "duration_s")
PARTITIONED = {"peering_requests": "csv", "region_telemetry": "csv", "app_telemetry": "jsonl"}


# ------------------------------------------------------------------------------------- helpers


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _request_lines(root: Path) -> list[list[str]]:
    """Every data line of peering_requests (header dropped), as raw CSV fields."""
    rows: list[list[str]] = []
    for path in sorted((root / "peering_requests").glob("*.csv")):
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            assert next(reader) == schemas.PEERING_REQUESTS.names
            rows.extend(reader)
    return rows


def _is_clean(row: list[str], regions: set[str]) -> bool:
    if len(row) != len(schemas.PEERING_REQUESTS.names):
        return False
    rec = dict(zip(schemas.PEERING_REQUESTS.names, row, strict=True))
    try:
        values = [float(rec[c]) for c in NUMERIC]
    except ValueError:
        return False
    return (
        rec["source_region"] in regions
        and rec["destination_region"] in regions
        and min(values) >= 0
        and rec["priority"] in schemas.PRIORITIES
    )


def _clean_requests(root: Path) -> list[dict]:
    """Clean rows as dicts with parsed numbers and epoch seconds (first occurrence of each id)."""
    seen: set[str] = set()
    out = []
    for row in _request_lines(root):
        if not _is_clean(row, set(DEFAULT_REGIONS)) or row[0] in seen:
            continue
        seen.add(row[0])
        rec = dict(zip(schemas.PEERING_REQUESTS.names, row, strict=True))
        for c in NUMERIC:
            rec[c] = float(rec[c])
        rec["t"] = int(np.datetime64(rec["requested_at"].rstrip("Z"), "s").astype(np.int64))
        out.append(rec)
    return out


def _local(rec: dict) -> np.datetime64:
    return np.datetime64(rec["t"] + OFFSETS[rec["destination_region"]] * 3600, "s")


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("small")
    return out, generate_sample_data(out, days=3, requests_per_hour=20.0)


@pytest.fixture(scope="module")
def fortnight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fortnight")
    generate_sample_data(out, days=14, requests_per_hour=25.0, dirty_rows=False)
    return out


# --------------------------------------------------------------------------------------- tests


def test_same_arguments_give_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    generate_sample_data(tmp_path / "a", days=3, requests_per_hour=20.0)
    generate_sample_data(tmp_path / "b", days=3, requests_per_hour=20.0)
    generate_sample_data(tmp_path / "c", days=3, requests_per_hour=20.0, seed=8)
    a, b, c = (_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["peering_requests/2026-01-01.csv"] != c["peering_requests/2026-01-01.csv"]
    assert all(b"\r" not in data for data in a.values())


def test_layout_and_returned_counts(small: tuple[Path, dict[str, int]]) -> None:
    root, counts = small
    assert set(counts) == set(schemas.SOURCES)
    days = [(START + timedelta(days=i)).isoformat() for i in range(3)]
    for name, ext in PARTITIONED.items():
        files = sorted(p.name for p in (root / name).iterdir())
        assert files == [f"{d}.{ext}" for d in days]
        lines = sum(len(p.read_text().splitlines()) for p in (root / name).iterdir())
        assert counts[name] == lines - (3 if ext == "csv" else 0)
    for name in schemas.REFERENCE_SOURCES:
        path = root / schemas.SOURCES[name]["path"]
        assert counts[name] == len(path.read_text().splitlines()) - 1


def test_files_parse_with_the_schemas(fortnight: Path) -> None:
    """Clean output must load with the binding schemas, column order included."""
    for name in ("peering_requests", "region_telemetry"):
        schema = schemas.SOURCES[name]["schema"]
        for path in sorted((fortnight / name).glob("*.csv")):
            table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=schema))
            assert table.schema.equals(schema), path
    for path in sorted((fortnight / "app_telemetry").glob("*.jsonl")):
        first_record = json.loads(path.read_text().splitlines()[0])
        assert list(first_record) == schemas.APP_TELEMETRY.names
        table = pa_json.read_json(path, parse_options=pa_json.ParseOptions(explicit_schema=schemas.APP_TELEMETRY))
        assert table.schema.equals(schemas.APP_TELEMETRY)
    for name in schemas.REFERENCE_SOURCES:
        schema = schemas.SOURCES[name]["schema"]
        path = fortnight / schemas.SOURCES[name]["path"]
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=schema))
        assert table.schema.equals(schema), name
        assert table.num_rows > 0


def test_every_region_present_everywhere(small: tuple[Path, dict[str, int]]) -> None:
    root, _ = small
    regions = set(DEFAULT_REGIONS)
    reqs = _clean_requests(root)
    assert {r["source_region"] for r in reqs} == regions
    assert {r["destination_region"] for r in reqs} == regions
    for name in ("region_telemetry", "inventory/pools.csv", "inventory/catalog.csv"):
        paths = sorted((root / name).glob("*.csv")) if (root / name).is_dir() else [root / name]
        found = {row["region"] for p in paths for row in csv.DictReader(p.open())}
        assert found == regions, name
    app = {json.loads(line)["region"] for p in (root / "app_telemetry").glob("*.jsonl") for line in p.open()}
    assert app == regions
    pools = list(csv.DictReader((root / "inventory/pools.csv").open()))
    assert {(r["region"], r["resource_type"]) for r in pools} == {
        (g, t) for g in regions for t in schemas.RESOURCE_TYPES
    }
    assert all(float(r["total_quantity"]) >= float(r["available_quantity"]) > 0 for r in pools)


def test_clean_rows_are_well_formed(fortnight: Path) -> None:
    rows = _request_lines(fortnight)
    assert all(_is_clean(r, set(DEFAULT_REGIONS)) for r in rows)
    assert len({r[0] for r in rows}) == len(rows)
    assert all(r[2] != r[3] for r in rows)
    for r in rows:
        vcpu, mem = float(r[4]), float(r[5])
        assert vcpu in (1, 2, 4, 8, 16, 32, 64)
        assert mem / vcpu in (2, 4, 8)
        assert float(r[6]) % 10 == 0
        assert 0.1 <= float(r[7]) <= 25
    times = [r[1] for r in rows]
    assert times == sorted(times)


def test_dirty_rows_only_when_requested(small: tuple[Path, dict[str, int]], fortnight: Path) -> None:
    root, _ = small
    rows = _request_lines(root)
    regions = set(DEFAULT_REGIONS)
    wrong_width = [r for r in rows if len(r) != 10]
    non_numeric = [r for r in rows if len(r) == 10 and not r[4].lstrip("-").isdigit()]
    unknown = [r for r in rows if len(r) == 10 and (r[2] not in regions or r[3] not in regions)]
    negative = [r for r in rows if len(r) == 10 and r[4].lstrip("-").isdigit() and min(float(r[4]), float(r[6])) < 0]
    duplicates = [r for r, n in Counter(tuple(r) for r in rows).items() if n > 1]
    assert len(wrong_width) == DIRTY_ROWS["too_few_fields"] + DIRTY_ROWS["too_many_fields"]
    assert len(non_numeric) == DIRTY_ROWS["non_numeric_vcpu"]
    assert len(unknown) == DIRTY_ROWS["unknown_region"]
    assert {x for r in unknown for x in r[2:4]} - regions <= set(UNKNOWN_REGIONS)
    assert len(negative) == DIRTY_ROWS["negative_quantity"]
    assert len(duplicates) == DIRTY_ROWS["duplicate_request_id"]
    assert len({r[0] for r in rows}) == len(rows) - DIRTY_ROWS["duplicate_request_id"]
    # Injected lines are added, never replacing clean ones: the clean data equals a dirty-free run.
    clean_run = root.parent / "clean_small"
    generate_sample_data(clean_run, days=3, requests_per_hour=20.0, dirty_rows=False)
    clean = _request_lines(clean_run)
    assert all(_is_clean(r, regions) for r in clean) and len({r[0] for r in clean}) == len(clean)
    assert len(rows) - len(clean) == sum(DIRTY_ROWS.values())
    assert _tree(clean_run / "region_telemetry") == _tree(root / "region_telemetry")


def test_telemetry_has_gaps(small: tuple[Path, dict[str, int]]) -> None:
    root, _ = small
    tel = Counter(row["region"] for p in (root / "region_telemetry").glob("*.csv") for row in csv.DictReader(p.open()))
    app = Counter(json.loads(line)["region"] for p in (root / "app_telemetry").glob("*.jsonl") for line in p.open())
    assert all(0 < tel[r] < 3 * 288 for r in DEFAULT_REGIONS)
    assert all(0 < app[r] < 3 * 96 for r in DEFAULT_REGIONS)
    for p in (root / "region_telemetry").glob("*.csv"):
        for row in csv.DictReader(p.open()):
            assert all(0.0 <= float(row[c]) <= 1.0 for c in schemas.REGION_TELEMETRY.names[2:])


def test_catalog_is_valid(small: tuple[Path, dict[str, int]]) -> None:
    root, _ = small
    rows = list(csv.DictReader((root / "inventory/catalog.csv").open()))
    per_region = Counter(r["region"] for r in rows)
    assert all(6 <= per_region[g] <= 8 for g in DEFAULT_REGIONS)
    price: dict[tuple[str, str], float] = {}
    for r in rows:
        assert schemas.REGION_PATTERN.match(r["region"])
        assert schemas.INSTANCE_TYPE_PATTERN.match(r["instance_type"])
        od, spot = float(r["on_demand_hourly"]), float(r["spot_hourly"])
        assert 0.39 <= 1 - spot / od <= 0.71
        assert 0.001 <= float(r["spot_interruption_rate"]) <= 0.02
        assert min(float(r[c]) for c in ("vcpu", "memory_gib", "storage_gib", "network_gbps")) > 0
        price[(r["region"], r["instance_type"])] = od
    us, eu, ap = (price[(g, "m6i.large")] for g in ("us-east-1", "eu-west-1", "ap-northeast-1"))
    assert us < eu < ap


def test_calendar_events(fortnight: Path) -> None:
    rows = list(csv.DictReader((fortnight / "calendar/events.csv").open()))
    end = START + timedelta(days=13)
    assert {r["kind"] for r in rows} <= {"campaign", "holiday", "season"}
    for r in rows:
        assert r["regions"] == "*" or set(r["regions"].split(";")) <= set(DEFAULT_REGIONS)
        assert r["start_date"] <= r["end_date"]
    campaigns = [r for r in rows if r["kind"] == "campaign" and r["end_date"] <= end.isoformat()]
    assert len(campaigns) >= 2
    for r in campaigns:
        length = (date.fromisoformat(r["end_date"]) - date.fromisoformat(r["start_date"])).days + 1
        assert 2 <= length <= 4 and float(r["expected_uplift"]) > 0
    assert any(r["name"] == "New Year's Day" for r in rows)


def test_campaigns_lift_their_regions(fortnight: Path) -> None:
    """Realized uplift: destination-local weekday counts on campaign days beat ordinary weekdays."""
    kinds: dict[tuple[str, str], set[str]] = {}
    for e in csv.DictReader((fortnight / "calendar/events.csv").open()):
        regions = DEFAULT_REGIONS if e["regions"] == "*" else e["regions"].split(";")
        d = date.fromisoformat(e["start_date"])
        while d <= date.fromisoformat(e["end_date"]):
            for g in regions:
                kinds.setdefault((g, d.isoformat()), set()).add(e["kind"])
            d += timedelta(days=1)
    first, last = (START + timedelta(days=1)).isoformat(), (START + timedelta(days=12)).isoformat()
    daily = Counter(
        (r["destination_region"], str(_local(r).astype("datetime64[D]"))) for r in _clean_requests(fortnight)
    )
    weekdays = {k: n for k, n in daily.items() if first <= k[1] <= last and date.fromisoformat(k[1]).weekday() < 5}
    region_mean = {g: np.mean([n for (g2, _), n in weekdays.items() if g2 == g]) for g in DEFAULT_REGIONS}
    campaign, plain = [], []
    for (g, d), n in weekdays.items():
        k = kinds.get((g, d), set())
        if "holiday" not in k:
            (campaign if "campaign" in k else plain).append(n / region_mean[g])
    assert campaign and plain
    assert np.mean(campaign) > 1.1 * np.mean(plain)


def test_daily_seasonality_follows_destination_business_hours(fortnight: Path) -> None:
    reqs = _clean_requests(fortnight)
    hours = np.array([int(str(_local(r))[11:13]) for r in reqs])
    counts = np.bincount(hours, minlength=24)
    peak, trough = counts[10:17].mean(), counts[1:6].mean()
    assert peak > 2.5 * trough


def test_weekends_are_lower_than_weekdays(fortnight: Path) -> None:
    reqs = _clean_requests(fortnight)
    per_day = Counter(str(np.datetime64(r["t"], "s").astype("datetime64[D]")) for r in reqs)
    weekend = [n for d, n in per_day.items() if date.fromisoformat(d).weekday() >= 5]
    weekday = [n for d, n in per_day.items() if date.fromisoformat(d).weekday() < 5 and d != START.isoformat()]
    assert np.mean(weekend) < 0.8 * np.mean(weekday)


def test_durations_are_heavy_tailed(fortnight: Path) -> None:
    durations = np.array([r["duration_s"] for r in _clean_requests(fortnight)])
    p50, p99 = np.percentile(durations, [50, 99])
    assert 900 <= p50 <= 3600
    assert p99 / p50 > 10
    assert durations.max() <= 2 * 86400


def test_pools_leave_headroom_over_peak_concurrent_demand(fortnight: Path) -> None:
    reqs = _clean_requests(fortnight)
    pools = {(r["region"], r["resource_type"]): float(r["available_quantity"])
             for r in csv.DictReader((fortnight / "inventory/pools.csv").open())}  # fmt: skip
    ratios = {}
    for g in DEFAULT_REGIONS:
        sessions = [r for r in reqs if r["destination_region"] == g]
        starts = [(r["t"], 1, r["vcpu"]) for r in sessions]
        ends = [(r["t"] + r["duration_s"], 0, -r["vcpu"]) for r in sessions]  # 0: ends first at ties
        events = sorted(starts + ends)
        ratios[g] = max(np.cumsum([q for _, _, q in events])) / pools[(g, "vcpu")]
    tight = [g for g, x in ratios.items() if x > 0.5]
    assert len(tight) == 1 and 0.5 < ratios[tight[0]] < 0.7
    assert all(0.2 <= x <= 0.45 for g, x in ratios.items() if g not in tight)


def test_regenerating_replaces_owned_folders_but_keeps_readmes(tmp_path: Path) -> None:
    generate_sample_data(tmp_path, days=3, requests_per_hour=5.0)
    (tmp_path / "peering_requests" / "README.md").write_text("docs\n")
    (tmp_path / "NOTES.txt").write_text("not ours\n")
    generate_sample_data(tmp_path, start=date(2026, 3, 1), days=2, requests_per_hour=5.0)
    assert sorted(p.name for p in (tmp_path / "peering_requests").iterdir()) == [
        "2026-03-01.csv", "2026-03-02.csv", "README.md"
    ]  # fmt: skip
    assert (tmp_path / "NOTES.txt").exists()


@pytest.mark.parametrize(
    "kwargs",
    [{"regions": ("us-east-1",)}, {"regions": ("us-east-1", "Bad_Region")}, {"days": 0}, {"requests_per_hour": 0.0}],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_sample_data(tmp_path, **kwargs)


def test_other_regions_work(tmp_path: Path) -> None:
    regions = ("us-east-2", "sa-east-1", "me-south-1")  # two known, one only by prefix
    counts = generate_sample_data(tmp_path, days=2, regions=regions, requests_per_hour=10.0)
    assert counts["peering_requests"] > 0 and counts["resource_pools"] == 3 * len(schemas.RESOURCE_TYPES)
