"""Bad-input corpus, telemetry: `region_telemetry` (CSV) and `app_telemetry` (JSON Lines).

As for requests, the cases of a dataset are planted between real sample lines of one day and
ingested by one run; each case checks its own line (rule, true line number, raw bytes) and that
the lake holds exactly the day's good rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pytest

from tests.corpus.conftest import SAMPLES, Case, Corpus, Planted, check_planted_case, copy_samples, plant

DAY = "2026-01-05"
AT = "2026-01-05T12:01:00Z"  # no sample row has this time, so a valid case never repeats a sample key


@dataclass(frozen=True)
class Run:
    planted: Planted
    raw: pd.DataFrame
    quarantine: pd.DataFrame
    cases: list[Case]


def _run(tmp: Corpus, dataset: str, header: bytes | None, good: list[bytes], cases: list[Case]) -> Run:
    copy_samples(tmp.source)
    valid = frozenset(c.id for c in cases if c.kind is None)
    planted = plant(header, good, [(c.id, c.line) for c in cases], valid=valid)
    ext = "jsonl" if header is None else "csv"
    (tmp.source / dataset / f"{DAY}.{ext}").write_bytes(planted.data)
    tmp.ingest_day(dataset, DAY)
    return Run(planted, tmp.raw(dataset), tmp.quarantine(dataset), cases)


def _check(run: Run, case: Case) -> None:
    check_planted_case(run.quarantine, run.raw, run.planted, case, run.cases)
    assert not run.raw.duplicated(["ts", "region"]).any()


# ---------------------------------------------------------------------------------------------
# region_telemetry.csv
# ---------------------------------------------------------------------------------------------

REGION_SAMPLE = (SAMPLES / "region_telemetry" / f"{DAY}.csv").read_bytes().split(b"\n")
REGION_HEADER, REGION_GOOD = REGION_SAMPLE[0], [r for r in REGION_SAMPLE[1:] if r][:120]


def util(ts: str = AT, region: str = "us-east-1", cpu: str = "0.5", memory: str = "0.5", bandwidth: str = "0.5") -> bytes:
    return f"{ts},{region},{cpu},{memory},{bandwidth}".encode()


REGION_CASES = [
    Case("percent-not-fraction", util(cpu="87"), "cpu_utilization: out of range"),
    Case("negative-utilization", util(memory="-0.1"), "memory_utilization: out of range"),
    Case("utilization-inf", util(bandwidth="inf"), "bandwidth_utilization: not finite"),
    Case("utilization-nan", util(cpu="nan"), "cpu_utilization: not finite"),
    Case("naive-ts", util(ts="2026-01-05T12:01:00"), "ts: no time zone"),
    Case("offset-ts", util(ts="2026-01-05T12:01:00+05:30"), "ts: not UTC"),
    Case("nanosecond-ts", util(ts="2026-01-05T12:01:00.000000001Z"), "ts: finer than microseconds"),
    Case("unknown-region", util(region="eu-north-1"), "region: unknown region"),
    Case("unclosed-quote", b'"' + util(), "malformed row: unclosed quote"),
    Case("invalid-utf8", util(region="us-east-1").replace(b"us-east-1", b"us-east-1\xc3"), "malformed row: not UTF-8"),
    Case("duplicate-of-sample-row", REGION_GOOD[0], "duplicate ts+region"),
    Case("invalid-first-occurrence", util(ts="2026-01-05T12:03:00Z", cpu="87"), "cpu_utilization: out of range"),
    Case("valid-after-invalid-same-key", util(ts="2026-01-05T12:03:00Z"), None),
    Case("other-cadence-accepted", util(ts="2026-01-05T12:04:30Z"), None),
]


@pytest.fixture(scope="module")
def region_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(Corpus(tmp_path_factory.mktemp("region")), "region_telemetry", REGION_HEADER, REGION_GOOD, REGION_CASES)


@pytest.mark.parametrize("case", REGION_CASES, ids=[c.id for c in REGION_CASES])
def test_region_telemetry_case(region_run: Run, case: Case) -> None:
    _check(region_run, case)


# ---------------------------------------------------------------------------------------------
# app_telemetry.jsonl
# ---------------------------------------------------------------------------------------------

APP_GOOD = [r for r in (SAMPLES / "app_telemetry" / f"{DAY}.jsonl").read_bytes().split(b"\n") if r][:100]


def app(**values: object) -> bytes:
    record = {"ts": AT, "region": "us-east-1", "active_users": 1000, "transactions_per_s": 10.5, **values}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


APP_CASES = [
    Case("NaN-literal", app(active_users=float("nan")), "active_users: not finite"),
    Case("Infinity-literal", app(transactions_per_s=float("inf")), "transactions_per_s: not finite"),
    Case("1e400", app(region="us-west-2").replace(b"10.5", b"1e400"), "transactions_per_s: not finite"),
    Case("400-digit-integer", app(active_users=10**400), "active_users: not finite"),
    Case("number-as-string", app(active_users="1000"), "active_users: not a JSON number"),
    Case("boolean-as-number", app(active_users=True), "active_users: not a JSON number"),
    Case("users-above-bound", app(active_users=1e12), "active_users: above MAX_ACTIVE_USERS"),
    Case("tps-above-bound", app(transactions_per_s=2e7), "transactions_per_s: above MAX_TRANSACTIONS_PER_S"),
    Case("negative-tps", app(transactions_per_s=-1), "transactions_per_s: out of range"),
    Case("epoch-ts", app(ts=1767614460), "ts: not a JSON string"),
    Case("naive-ts", app(ts="2026-01-05T12:01:00"), "ts: no time zone"),
    Case("nanosecond-ts", app(ts="2026-01-05T12:01:00.123456789Z"), "ts: finer than microseconds"),
    Case("null-region", app(region=None), "region: missing value"),
    Case("numeric-region", app(region=42), "region: not a JSON string"),
    Case("escaped-nul-in-region", app(region="us-east-1\u0000"), "region: control character"),
    Case("unknown-region", app(region="sa-east-1"), "region: unknown region"),
    Case("duplicate-json-key", b'{"ts": "%s", "region": "us-east-1", "region": "eu-west-1", "active_users": 1, "transactions_per_s": 1}'
         % AT.encode(), "malformed row: duplicate JSON key"),
    Case("array-not-object", b'["2026-01-05T12:01:00Z", "us-east-1", 1, 1]', "malformed row: not a JSON object"),
    Case("missing-key", app(transactions_per_s=...), "malformed row: missing fields"),
    Case("truncated-json", app()[:-5], "malformed row: not JSON"),
    Case("deep-nesting", b"[" * 100_000, "malformed row: not JSON"),
    Case("invalid-utf8", app(region="eu-west-1").replace(b"eu-west-1", b"eu-west-\xff"), "malformed row: not UTF-8"),
    Case("raw-nul", app() + b"\x00", "malformed row: NUL byte"),
    Case("duplicate-of-sample-row", APP_GOOD[0], "duplicate ts+region"),
    Case("invalid-first-occurrence", app(region="eu-central-1", active_users=-5), "active_users: out of range"),
    Case("valid-after-invalid-same-key", app(region="eu-central-1"), None),
    Case("extra-keys-tolerated", app(region="ap-southeast-1", build="v1.2"), None),
    Case("integer-and-float-numbers", app(region="ap-northeast-1", active_users=5, transactions_per_s=0), None),
]


@pytest.fixture(scope="module")
def app_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(Corpus(tmp_path_factory.mktemp("app")), "app_telemetry", None, APP_GOOD, APP_CASES)


@pytest.mark.parametrize("case", APP_CASES, ids=[c.id for c in APP_CASES])
def test_app_telemetry_case(app_run: Run, case: Case) -> None:
    _check(app_run, case)


def test_valid_json_variants_land_typed(app_run: Run) -> None:
    at = app_run.raw[app_run.raw["ts"] == pd.Timestamp(AT)].set_index("region")
    assert sorted(at.index) == ["ap-northeast-1", "ap-southeast-1", "eu-central-1"]
    assert at.loc["ap-northeast-1", "active_users"] == 5.0 and at.loc["eu-central-1", "active_users"] == 1000.0
