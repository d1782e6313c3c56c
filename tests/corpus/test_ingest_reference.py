"""Bad-input corpus, reference data: `calendar/events.csv`, `inventory/pools.csv`,
`inventory/catalog.csv`, and the known regions they define.

Each dataset's cases are planted between its real sample rows and ingested by one run (a
reference snapshot lands in the interval's last hour); each case checks its own line and that the
snapshot holds exactly the good rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipeline.common import lake
from pipeline.ingest.loader import known_regions
from tests.corpus.conftest import SAMPLES, Case, Corpus, Planted, check_planted_case, copy_samples, day_interval, plant

DAY = "2026-01-05"
HOUR = day_interval(DAY, hours=1, first_hour=5)  # the snapshot lands in 05:00


@dataclass(frozen=True)
class Run:
    planted: Planted
    snapshot: pd.DataFrame
    quarantine: pd.DataFrame
    cases: list[Case]


def _sample(path: str) -> tuple[bytes, list[bytes]]:
    lines = [r for r in (SAMPLES / path).read_bytes().split(b"\n") if r]
    return lines[0], lines[1:]


def _run(root: Path, dataset: str, path: str, cases: list[Case]) -> Run:
    corpus = Corpus(root)
    copy_samples(corpus.source)
    header, good = _sample(path)
    valid = frozenset(c.id for c in cases if c.kind is None)
    planted = plant(header, good, [(c.id, c.line) for c in cases], every=1, valid=valid)
    (corpus.source / path).write_bytes(planted.data)
    corpus.ingest(dataset, HOUR)
    snapshot = lake.read_reference(corpus.settings.lake_root, dataset, HOUR.end).to_pandas()
    return Run(planted, snapshot, corpus.quarantine(dataset), cases)


def _check(run: Run, case: Case) -> None:
    mine = check_planted_case(run.quarantine, run.snapshot, run.planted, case, run.cases)
    if case.kind is not None:
        assert set(mine["hour"]) == {"05"}


# ---------------------------------------------------------------------------------------------
# calendar/events.csv
# ---------------------------------------------------------------------------------------------


def event(event_id: str, *, name: str = "Test event", kind: str = "campaign", regions: str = "us-east-1",
          start: str = "2026-01-10", end: str = "2026-01-11", uplift: str = "0.2") -> bytes:
    return f"{event_id},{name},{kind},{regions},{start},{end},{uplift}".encode()


CALENDAR_CASES = [
    Case("uplift-minus-1", event("e-1", uplift="-1"), "expected_uplift: out of range"),
    Case("uplift-below-minus-1", event("e-2", uplift="-1.5"), "expected_uplift: out of range"),
    Case("uplift-inf", event("e-3", uplift="inf"), "expected_uplift: not finite"),
    Case("uplift-above-bound", event("e-4", uplift="11"), "expected_uplift: above MAX_UPLIFT"),
    Case("end-before-start", event("e-5", start="2026-01-12", end="2026-01-11"), "end_date before start_date"),
    Case("february-30", event("e-6", start="2026-02-30", end="2026-03-01"), "start_date: cannot parse"),
    Case("slashed-date", event("e-7", end="2026/01/11"), "end_date: cannot parse"),
    Case("year-1999", event("e-8", start="1999-12-31", end="2000-01-01"), "dates: out of range"),
    Case("400-day-event", event("e-9", start="2026-01-01", end="2027-02-05"), "dates: above MAX_EVENT_DAYS"),
    Case("unknown-region-in-list", event("e-10", regions="us-east-1;eu-north-1"), "regions: unknown region"),
    Case("trailing-semicolon", event("e-11", regions="us-east-1;"), "regions: unknown region"),
    Case("bad-kind", event("e-12", kind="sale"), "kind: not an allowed value"),
    Case("duplicate-of-sample-event", event("evt-001"), "duplicate event_id"),
    Case("invalid-first-occurrence", event("e-13", uplift="-1"), "expected_uplift: out of range"),
    Case("valid-after-invalid-same-id", event("e-13"), None),
    Case("quoted-name-with-comma", event("e-14", name='"Sale, winter edition"'), None),
    Case("every-region", event("e-15", regions="*", kind="season", start="2026-01-01", end="2026-12-31"), None),
]


@pytest.fixture(scope="module")
def calendar_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(tmp_path_factory.mktemp("calendar"), "calendar", "calendar/events.csv", CALENDAR_CASES)


@pytest.mark.parametrize("case", CALENDAR_CASES, ids=[c.id for c in CALENDAR_CASES])
def test_calendar_case(calendar_run: Run, case: Case) -> None:
    _check(calendar_run, case)


def test_a_quoted_name_cannot_span_lines(tmp_path: Path) -> None:
    """A line break inside quotes splits the record: both halves are quarantined, nothing else."""
    case = Case("multi-line-name", event("e-20", name='"Winter\nsale"'), "malformed row: unclosed quote")
    run = _run(tmp_path, "calendar", "calendar/events.csv", [case])
    first = run.planted.lines[case.id]
    assert run.quarantine[["line_number", "reason_kind"]].values.tolist() == [
        [first, "malformed row: unclosed quote"], [first + 1, "malformed row: wrong number of fields"],
    ]
    assert len(run.snapshot) == 10


# ---------------------------------------------------------------------------------------------
# inventory/pools.csv
# ---------------------------------------------------------------------------------------------


def pool(region: str, resource: str = "vcpu", available: str = "100", total: str = "200") -> bytes:
    return f"{region},{resource},{available},{total}".encode()


POOL_CASES = [
    Case("available-inf", pool("sa-east-1", available="inf", total="inf"), "available_quantity: not finite; total_quantity: not finite"),
    Case("total-1e300", pool("sa-east-1", "memory_gib", total="1e300"), "total_quantity: above MAX_QUANTITY"),
    Case("available-above-total", pool("sa-east-1", "storage_gib", available="300"), "available_quantity above total_quantity"),
    Case("negative-available", pool("sa-east-1", "bandwidth_gbps", available="-1"), "available_quantity: out of range"),
    Case("total-nan", pool("me-south-1", total="NaN"), "total_quantity: not finite"),
    Case("unknown-resource-type", pool("sa-east-1", "gpu"), "resource_type: not an allowed value"),
    Case("region-pattern", pool("Mars-1"), "region: does not match the pattern"),
    Case("duplicate-of-sample-row", _sample("inventory/pools.csv")[1][0], "duplicate region+resource_type"),
    Case("invalid-first-occurrence", pool("af-south-1", available="-5"), "available_quantity: out of range"),
    Case("valid-after-invalid-same-key", pool("af-south-1"), None),
]


@pytest.fixture(scope="module")
def pools_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(tmp_path_factory.mktemp("pools"), "resource_pools", "inventory/pools.csv", POOL_CASES)


@pytest.mark.parametrize("case", POOL_CASES, ids=[c.id for c in POOL_CASES])
def test_pools_case(pools_run: Run, case: Case) -> None:
    _check(pools_run, case)


# ---------------------------------------------------------------------------------------------
# inventory/catalog.csv
# ---------------------------------------------------------------------------------------------


def offer(instance_type: str, region: str = "us-east-1", **values: str) -> bytes:
    fields = {"vcpu": "4", "memory_gib": "16", "storage_gib": "64", "network_gbps": "12.5",
              "on_demand_hourly": "0.2", "spot_hourly": "0.08", "spot_interruption_rate": "0.01", **values}
    return ",".join([region, instance_type, *fields.values()]).encode()


CATALOG_CASES = [
    Case("spot-price-zero", offer("t1.large", spot_hourly="0"), "spot_hourly: out of range"),
    Case("zero-vcpu", offer("t2.large", vcpu="0"), "vcpu: out of range"),
    Case("zero-memory", offer("t3.large", memory_gib="0"), "memory_gib: out of range"),
    Case("zero-network", offer("t4.large", network_gbps="0"), "network_gbps: out of range"),
    Case("unknown-region", offer("t5.large", region="sa-east-1"), "region: unknown region"),
    Case("spot-above-on-demand", offer("t6.large", spot_hourly="0.3"), "spot_hourly above on_demand_hourly"),
    Case("price-above-bound", offer("t7.large", on_demand_hourly="100000"), "on_demand_hourly: above MAX_HOURLY_PRICE_USD"),
    Case("vcpu-inf", offer("t8.large", vcpu="inf"), "vcpu: not finite"),
    Case("vcpu-above-bound", offer("t9.large", vcpu="1000000"), "vcpu: above MAX_INSTANCE_SIZE"),
    Case("interruption-above-1", offer("t10.large", spot_interruption_rate="1.5"), "spot_interruption_rate: out of range"),
    Case("spot-nan", offer("t11.large", spot_hourly="NaN"), "spot_hourly: not finite"),
    Case("instance-type-pattern", offer("M6I LARGE"), "instance_type: does not match the pattern"),
    Case("duplicate-of-sample-row", _sample("inventory/catalog.csv")[1][0], "duplicate region+instance_type"),
    Case("invalid-first-occurrence", offer("t12.large", spot_hourly="0"), "spot_hourly: out of range"),
    Case("valid-after-invalid-same-key", offer("t12.large"), None),
    Case("zero-storage-is-valid", offer("t13.large", storage_gib="0"), None),
]


@pytest.fixture(scope="module")
def catalog_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(tmp_path_factory.mktemp("catalog"), "instance_catalog", "inventory/catalog.csv", CATALOG_CASES)


@pytest.mark.parametrize("case", CATALOG_CASES, ids=[c.id for c in CATALOG_CASES])
def test_catalog_case(catalog_run: Run, case: Case) -> None:
    _check(catalog_run, case)


# ---------------------------------------------------------------------------------------------
# known regions come from valid pool rows only
# ---------------------------------------------------------------------------------------------


def test_a_region_whose_pool_rows_are_all_invalid_is_unknown(tmp_path: Path) -> None:
    """`me-south-1` has pool rows, but every one is quarantined: requests and offers there are too."""
    corpus = Corpus(tmp_path)
    copy_samples(corpus.source, days=[DAY])
    pools = corpus.source / "inventory" / "pools.csv"
    pools.write_bytes(pools.read_bytes() + b"".join(pool("me-south-1", r, available="inf") + b"\n"
                                                    for r in ("vcpu", "memory_gib", "storage_gib", "bandwidth_gbps")))
    catalog = corpus.source / "inventory" / "catalog.csv"
    catalog.write_bytes(catalog.read_bytes() + offer("m6i.large", region="me-south-1") + b"\n")
    requests = corpus.source / "peering_requests" / f"{DAY}.csv"
    data = requests.read_bytes()
    requests.write_bytes(data + b"me-1,2026-01-05T12:00:00Z,us-east-1,me-south-1,4,16,0,1.0,600,normal\n")
    good_requests = data.count(b"\n") - 1

    assert "me-south-1" not in known_regions(str(corpus.source))
    for dataset in ("resource_pools", "instance_catalog"):
        corpus.ingest(dataset, HOUR)
    corpus.ingest_day("peering_requests", DAY)
    assert corpus.quarantine("resource_pools")["line_number"].tolist() == [26, 27, 28, 29]
    assert corpus.quarantine("instance_catalog")["reason_kind"].tolist() == ["region: unknown region"]
    assert corpus.quarantine("peering_requests")["reason_kind"].tolist() == ["destination_region: unknown region"]
    assert len(corpus.raw("peering_requests")) == good_requests
    assert len(lake.read_reference(corpus.settings.lake_root, "instance_catalog", HOUR.end)) == 39
