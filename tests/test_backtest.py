"""Walk-forward replay: no look-ahead, real planner and IRC, metrics per policy, CLI and report."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.common.config import REPO_ROOT
from pipeline.common.intervals import parse_utc
from pipeline.ops.backtest import BacktestConfig, _predictive_forecasts, aws_style_capacity, parse_policies, run_backtest
from tests.browser import open_page

SAMPLES = str(REPO_ROOT / "data_samples")


REPLAY = BacktestConfig(start=parse_utc("2026-01-29T00:00"), end=parse_utc("2026-01-29T02:00"),
                        policies=("predictive", "predictive_tiered", "reactive", "static", "oracle", "aws_predictive"),
                        refit_every_hours=2, horizon_hours=2, workers=2)


@pytest.fixture(scope="module")
def replay() -> object:
    return run_backtest(SAMPLES, REPLAY)


def test_a_replay_spread_over_processes_equals_the_same_replay_in_one(replay) -> None:
    """Policies share nothing and every refit reads only data before its hour, so the refits and the
    policies may run on any core in any order: one process gives the same replay, policy by policy."""
    heard: list[tuple[str, int, int]] = []
    alone = run_backtest(SAMPLES, replace(REPLAY, policies=("predictive", "oracle"), workers=1),
                         progress=lambda message, done, total: heard.append((message, done, total)))
    spread, one = replay.summary()["policies"], alone.summary()["policies"]
    for name in ("predictive", "oracle"):
        assert spread[name] == one[name], name
        assert replay.results[name].hourly == alone.results[name].hourly
    assert replay.results["predictive"].taus == alone.results["predictive"].taus
    pd.testing.assert_frame_equal(replay.forecasts, alone.forecasts)
    total = 1 + 2 * 2  # one predictive refit, then two policies × two hours
    assert [(done, t) for _, done, t in heard] == [(i, total) for i in range(1, total + 1)] + [(total, total)]
    assert heard[0][0].startswith("predictive refit 2026-01-29T00:00") and heard[-1][0] == "done"


@pytest.mark.long
def test_forecast_at_a_planning_point_ignores_everything_after_it(replay) -> None:
    demand = replay.demand
    resources = ["vcpu", "memory_gib", "storage_gib", "bandwidth_gbps"]
    carried = demand[["hour", "region", *resources]].copy()
    carried[resources] = carried[resources] * 0.6  # stands in for the level carried into each hour
    hour = parse_utc("2026-01-29T01:00")
    config = BacktestConfig(start=hour, end=parse_utc("2026-01-29T02:00"), horizon_hours=1)
    honest = _predictive_forecasts(demand, carried, hour, config, 0.9)
    assert honest["series_id"].str.startswith("fresh:").any(), "the fresh part is forecast next to the peak"
    tampered, tampered_carried = demand.copy(), carried.copy()
    future = tampered["hour"] >= pd.Timestamp(hour)
    tampered.loc[future, resources] *= 50
    tampered_carried.loc[tampered_carried["hour"] >= pd.Timestamp(hour), resources] *= 50
    assert future.any()
    pd.testing.assert_frame_equal(honest, _predictive_forecasts(tampered, tampered_carried, hour, config, 0.9))
    past = tampered["hour"] == pd.Timestamp(hour) - pd.Timedelta(hours=1)
    tampered.loc[past, "vcpu"] *= 50
    changed = _predictive_forecasts(tampered, tampered_carried, hour, config, 0.9)
    assert not honest.equals(changed), "the control: data before the planning point does move the forecast"


def test_policies_behave_as_defined(replay) -> None:
    summary = replay.summary()["policies"]
    assert {p["requests"] for p in summary.values()} == {summary["oracle"]["requests"]} and summary["oracle"]["requests"] > 50
    reactive = summary["reactive"]
    assert reactive["hit_rate"] == 0.0 and reactive["cost"]["preallocation"] == 0.0
    assert 15 < reactive["latency_p50_s"] < 60 and reactive["latency_p95_s"] > reactive["latency_p50_s"]
    oracle = summary["oracle"]
    assert oracle["hit_rate"] >= 0.95 and oracle["cost_vs_oracle"] == 1.0
    assert summary["static"]["cost"]["preallocation"] > oracle["cost"]["preallocation"]
    for name in ("predictive", "predictive_tiered", "static", "aws_predictive"):
        assert 0.0 < summary[name]["hit_rate"] <= 1.0
        assert summary[name]["cost"]["total"] == pytest.approx(sum(v for k, v in summary[name]["cost"].items() if k != "total"), abs=0.01)
    assert replay.results["predictive"].taus, "the τ controller ran on the first hour's logged decisions"
    tiered = summary["predictive_tiered"]
    assert tiered["cost"]["warm_hold"] > 0 and tiered["cold_start_free_rate"] >= tiered["hit_rate"]
    assert tiered["cold_start_free_rate"] == pytest.approx(tiered["hit_rate"] + tiered["warm_share"])
    assert summary["predictive"]["warm_share"] == 0.0 and summary["predictive"]["cost"]["warm_hold"] == 0.0
    assert replay.forecasts["model"].str.startswith("committed+").all(), "the first window adds the known committed level"
    hourly = replay.results["predictive"].hourly
    assert [h["hour"][:16] for h in hourly] == ["2026-01-29T00:00", "2026-01-29T01:00"]


def test_backtest_report_renders_in_chromium(replay, tmp_path: Path) -> None:
    from pipeline.report.html import write_backtest_report

    path = write_backtest_report(replay, str(tmp_path / "backtest.html"))
    check = open_page(Path(path))
    assert check.console_errors == [] and check.page_errors == []
    images = {img["id"]: img for img in check.images}
    for figure in ("fig-cost", "fig-hitrate", "fig-capacity", "fig-forecast"):
        assert images[figure]["width"] > 300, figure
    assert check.tables["comparison"] == 1 + 6


def test_aws_style_capacity_is_the_load_forecast_over_the_target_without_look_ahead(replay) -> None:
    demand = replay.demand
    refresh = parse_utc("2026-01-29T00:00")
    config = BacktestConfig(start=refresh, end=parse_utc("2026-01-29T06:00"), aws_target_utilization=0.5)
    capacity = aws_style_capacity(demand, refresh, config)
    assert len(capacity) == 48 * demand["region"].nunique() * 4 and (capacity["value"] >= 0).all()
    assert capacity["hour"].min() == pd.Timestamp(refresh)
    looser = aws_style_capacity(demand, refresh, replace(config, aws_target_utilization=1.0))
    np.testing.assert_allclose(capacity["value"].to_numpy(), 2 * looser["value"].to_numpy())
    tampered = demand.copy()
    tampered.loc[tampered["hour"] >= pd.Timestamp(refresh), ["vcpu", "memory_gib"]] *= 50
    pd.testing.assert_frame_equal(capacity, aws_style_capacity(tampered, refresh, config))
    with pytest.raises(ValueError, match="24 h of history"):
        aws_style_capacity(demand[demand["hour"] >= pd.Timestamp(refresh) - pd.Timedelta(hours=10)], refresh, config)


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="--policy"):
        parse_policies("predictive,psychic")
    with pytest.raises(ValueError, match="empty replay"):
        run_backtest(SAMPLES, BacktestConfig(start=parse_utc("2026-01-29T02:00"), end=parse_utc("2026-01-29T01:00")))


@pytest.mark.long
def test_cli_prints_json_on_the_last_line(tmp_path: Path) -> None:
    from pipeline.cli.app import app

    result = CliRunner().invoke(app, [
        "backtest", "--from", "2026-01-29T00:00", "--to", "2026-01-29T01:00", "--policy", "reactive,oracle", "--workers", "1",
        "--json", "--report", str(tmp_path / "r.html"), "--build", str(tmp_path / "build"), "--lake", str(tmp_path / "lake"),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["policies"]) == {"reactive", "oracle"}
    assert (tmp_path / "r.html").exists()
    recorded = json.loads(Path(summary["recorded"]).read_text())  # what the analyst app shows
    assert Path(summary["recorded"]).parent == tmp_path / "lake" / "backtests"
    assert recorded["policies"]["oracle"]["requests"] == summary["policies"]["oracle"]["requests"]
    assert set(recorded["hourly"]) == {"reactive", "oracle"}


def _tiered_one_window(tmp_path: Path, hour: datetime) -> tuple[object, list[dict], object, object]:
    """A one-window tiered plan in us-east-1 (1 × m5.xlarge running: 4 vCPU, 16 GiB, 1 Gbps; 2 stopped beside
    it) published in `tmp_path`, and a tiered policy's run over it with the real IRC: (run, plan rows, pricing,
    coordinator)."""
    import pyarrow as pa

    from pipeline.common import schemas
    from pipeline.common.config import CostModel, Settings
    from pipeline.irc import REQUEST_TIME, Coordinator
    from pipeline.ops.backtest import PolicyResult, _PolicyRun, _Pricing
    from tests import plan_store

    plan_id = "plan-20260201T00"
    schema = schemas.PLAN.append(pa.field("warm_count", pa.int64())).append(pa.field("warm_hourly_cost", pa.float64()))
    rows = [{"plan_id": plan_id, "valid_from": hour, "valid_to": hour + timedelta(hours=1), "region": "us-east-1",
             "resource_type": rt, "quantity": q, "instance_type": "m5.xlarge", "purchase_option": "on_demand", "count": 1,
             "hourly_cost": 0.192 / 3, "demand_quantile": q, "line_id": "us-east-1/w/m5.xlarge/on_demand", "reason": "test",
             "warm_count": 2, "warm_hourly_cost": 0.192 * 0.1 * 2 / 3}
            for rt, q in (("vcpu", 4.0), ("memory_gib", 16.0), ("bandwidth_gbps", 1.0))]
    pools = [{"region": r, "resource_type": rt, "available_quantity": 1000.0, "total_quantity": 2000.0}
             for r in ("us-east-1", "eu-west-1") for rt in ("vcpu", "memory_gib", "storage_gib", "bandwidth_gbps")]
    plan_store.write_plan(tmp_path, plan_id, pa.Table.from_pylist(rows, schema=schema),
                          {"plan_id": plan_id, "created_at": hour.isoformat(), "valid_from": hour.isoformat(),
                           "valid_to": (hour + timedelta(hours=1)).isoformat()},
                          pools=pa.Table.from_pylist(pools, schema=schemas.RESOURCE_POOLS))
    cost = CostModel()
    pricing = _Pricing(on_demand=dict(cost.c_over), cold_start_penalty={r: cost.c_under[r] - cost.c_over[r] for r in cost.c_over},
                       shortfall=dict(cost.c_under), warm_start_penalty=dict(cost.c_over))  # start_penalty_multiple 1
    coordinator = Coordinator(str(tmp_path), reload_interval_s=None, outcomes=False, clock=REQUEST_TIME)
    run = _PolicyRun(name="predictive_tiered", settings=Settings(lake_root=str(tmp_path)), learns=False,
                     coordinator=coordinator, result=PolicyResult(policy="predictive_tiered"))
    return run, rows, pricing, coordinator


def _request(hour: datetime, rid: str, minute: int, vcpu: float, mem: float, bw: float, seconds: float,
             priority: str = "normal") -> dict:
    return {"request_id": rid, "requested_at": pd.Timestamp(hour) + pd.Timedelta(minutes=minute), "source_region": "eu-west-1",
            "destination_region": "us-east-1", "vcpu": vcpu, "memory_gib": mem, "storage_gib": 0.0, "bandwidth_gbps": bw,
            "duration_s": seconds, "priority": priority}


def _serve(run: object, batch: pd.DataFrame, pricing: object, coordinator: object, hour: datetime) -> object:
    from pipeline.ops.backtest import _ReplayInputs, _serve_hour

    inputs = _ReplayInputs(demand=pd.DataFrame(), demand_long=pd.DataFrame(), carried=None, tau=0.9, source_lake="",
                           requests=batch, cold_starts=np.full(len(batch), 40.0), pricing=pricing)  # type: ignore[arg-type]
    try:
        _serve_hour(batch, run, inputs=inputs, hour=hour, replay_end_s=hour.timestamp() + 3600)  # type: ignore[arg-type]
    finally:
        coordinator.close()  # type: ignore[attr-defined]
    return run.result  # type: ignore[attr-defined]


def test_warm_hold_and_warm_starts_are_charged_by_hand(tmp_path: Path) -> None:
    """A one-window tiered plan (1 × m5.xlarge running, 2 stopped beside it) served by the real IRC: a critical
    session fills the pre-allocation, then the first request starts warm capacity, the second finds too little
    left (a cold start) and the third starts what the first gave back. Every figure is computed by hand."""
    from pipeline.ops.backtest import _take_warm_plan

    hour = datetime(2026, 2, 1, tzinfo=UTC)
    run, rows, pricing, coordinator = _tiered_one_window(tmp_path, hour)
    _take_warm_plan(run, pd.DataFrame(rows))  # type: ignore[arg-type]

    batch = pd.DataFrame([_request(hour, "fill", 0, 4, 16, 1, 3600, "critical"), _request(hour, "a", 1, 6, 8, 0.5, 1800),
                          _request(hour, "b", 10, 4, 4, 0.0, 1200), _request(hour, "c", 40, 4, 4, 0.0, 7200)])
    result = _serve(run, batch, pricing, coordinator, hour)
    assert (result.preallocated, result.warm, result.on_demand) == (1, 2, 1)
    a = 6 * 0.048 + 8 * 0.006 + 0.5 * 0.02  # USD per hour of what each request holds, at c_over
    b = c = 4 * 0.048 + 4 * 0.006
    assert result.warm_hold_cost == pytest.approx(0.192 * 0.1 * 2)
    assert result.warm_unit_hours["vcpu"] == pytest.approx(8.0) and result.warm_unit_hours["memory_gib"] == pytest.approx(32.0)
    assert result.on_demand_cost == pytest.approx(a * 0.5 + b / 3 + c * 2)
    assert result.warm_start_cost == pytest.approx(a * 0.5 + c * 1.0), "the warm-start penalty covers at most one window"
    cold = 4 * (0.43 - 0.048) + 4 * (0.054 - 0.006)
    assert result.penalty_cost == pytest.approx(cold / 3), "only the request that found no warm capacity pays a cold start"
    summary = result.summary()
    assert summary["cold_start_free_rate"] == pytest.approx(3 / 4) and summary["cold_start_share"] == pytest.approx(1 / 4)
    assert sorted(result.latencies_s) == [0.0, 5.0, 5.0, 40.0]  # a warm start: the cold draw × WARM_START_SHARE


def test_a_topped_up_warm_start_pays_only_for_what_it_started(tmp_path: Path) -> None:
    """A request larger than what is left of either tier starts warm on top of the pre-allocation's remainder
    (normal priority: 95 % of it): only the units started warm pay the unit price and the warm-start penalty;
    the rest run on the pre-allocation and count as used. Figures by hand."""
    hour = datetime(2026, 2, 1, tzinfo=UTC)
    run, _, pricing, coordinator = _tiered_one_window(tmp_path, hour)
    batch = pd.DataFrame([_request(hour, "fill", 0, 2, 2, 0, 3600), _request(hour, "big", 5, 9, 8, 0, 1800)])
    result = _serve(run, batch, pricing, coordinator, hour)
    assert (result.preallocated, result.warm, result.on_demand) == (1, 1, 0)  # type: ignore[attr-defined]
    # left of the pre-allocation: 0.95 × 4 − 2 = 1.8 vCPU and 0.95 × 16 − 2 = 13.2 GiB; 9 vCPU > 1.8 and > 8 warm
    started = (9 - 1.8) * 0.048  # USD per hour of the 7.2 vCPU started warm; all 8 GiB came from the pre-allocation
    assert result.on_demand_cost == pytest.approx(started * 0.5)  # type: ignore[attr-defined]
    assert result.warm_start_cost == pytest.approx(started * 0.5)  # type: ignore[attr-defined]
    assert result.penalty_cost == 0.0  # type: ignore[attr-defined]
    used = result.used_unit_hours  # type: ignore[attr-defined]
    assert used["vcpu"] == pytest.approx(2 * 1.0 + 1.8 * 0.5) and used["memory_gib"] == pytest.approx(2 * 1.0 + 8 * 0.5)
    assert sorted(result.latencies_s) == [0.0, 5.0]  # type: ignore[attr-defined]
