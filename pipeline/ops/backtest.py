"""Walk-forward replay of a request log: what each pre-allocation policy would have done.

For every hour t in [T0, T1) each policy decides a pre-allocation for the hour using only data
strictly before t, the real planner turns it into instances, and the real IRC serves that hour's
requests (in time order, each session released when its duration ends) from the plan:

- `reactive`: no pre-allocation: every request goes on demand;
- `static`: the peak concurrent demand of the previous 7 days × (1 + headroom);
- `predictive` (running-only): peerscale with one tier: the τ-quantile of the forecast, τ from cost
  and then moved per region by the hit-rate feedback controller (`pipeline.ops.feedback`) from the
  IRC's own logged decisions of the hours already replayed, exactly as the hourly run does;
- `predictive_tiered`: the same forecast, planned with the warm tier (`pipeline.plan.warm`): running
  capacity to τ_run and warm (stopped) instances on top to τ_warm. A request the pre-allocation
  misses is served by the IRC's warm path while the plan's warm capacity lasts (a warm start, not a
  cold start; the ledger holds it like the pre-allocation, released when the session ends). The feedback
  controller does not run for it (it steers the pre-allocated hit rate, not the cold-start-free rate);
- `oracle`: exactly the peak concurrent demand that will occur in the hour (the physical limit);
- `aws_predictive`: EC2 Auto Scaling predictive scaling as its documentation describes it: a load
  forecast from up to `aws_history_days` (14) of hourly history, hourly values for the next 48 h,
  refreshed every `aws_refresh_hours` (6) from the data before the refresh (no look-ahead);
  capacity = forecast load ÷ `aws_target_utilization`, in place at the start of the hour (the
  default 300 s scheduling buffer launches it before the hour; the buffer's few minutes of
  instance time are not charged). AWS does not publish its model: we use MSTL (daily + weekly
  seasonality when 14 days exist, AutoETS trend), the pattern-finding model its documentation
  describes, falling back to seasonal naive where MSTL cannot fit. Its point forecast is used, as
  AWS scales to a single forecast value, and the same planner turns it into instances.

Costs (USD) are made comparable across policies:

- pre-allocation: the hourly price of the instances the planner chose, every hour;
- on demand: a request served on demand pays the unit price of what it holds (`c_over`, the
  price of an idle unit) for its duration, plus a cold-start penalty of `c_under − c_over` per
  unit for the part of its session inside one planning window (at most an hour) — so a unit
  missed in a window costs `c_under` for that window, the same price the newsvendor τ uses. The
  wait is paid once, at the start: a ten-hour session that waited 60 s is not penalised ten
  times (the accounting before 2026-11 did that, and overstated the cost of every miss);
- failure: a request that is not served at all costs `c_under` per unit-hour as well (shortfall);
- warm hold: every hour, the plan's warm instances at `hold_fraction` × their on-demand price
  (the plan's `warm_hourly_cost`);
- warm start: a request served from warm capacity pays the unit price for its duration like an
  on-demand one, plus a warm-start penalty of `start_penalty_multiple` × `c_over` per unit for at
  most one window instead of the cold-start penalty. A warm start the IRC topped up from what the
  pre-allocation still held pays both only for the units it started warm: the rest run on the
  pre-allocation the plan already pays for (and count as used, not idle).

Modeled setup latency: pre-allocated ≈ 0 s; on demand drawn from a lognormal with median 30 s
and p95 90 s (a cold instance launch plus bootstrap), seeded so runs are repeatable; a warm start
the same draw × WARM_START_SHARE (a stopped instance resumes in an eighth of the time).
"""

from __future__ import annotations

import heapq
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import HOUR, DataInterval
from pipeline.common.numeric import SECONDS_PER_HOUR
from pipeline.common.parallel import cores_available, fork_map_telling
from pipeline.common.schemas import FORECAST, PEERING_REQUESTS, RESOURCE_TYPES, region_series_id
from pipeline.features.build import FeatureWindow, compute_features
from pipeline.plan.warm import WARM_START_SHARE, WarmCosts, resolve_warm

if TYPE_CHECKING:
    from pipeline.irc import Coordinator

POLICIES = ("predictive", "predictive_tiered", "reactive", "static", "oracle", "aws_predictive")
PREDICTIVE = ("predictive", "predictive_tiered")  # plan from the predictive forecast
COLD_START_MEDIAN_S = 30.0
COLD_START_P95_S = 90.0
STATIC_LOOKBACK = timedelta(days=7)
SESSION_CARRY_IN = timedelta(days=3)
WINDOW_HOURS = 1.0  # a planning window: the cold-start penalty covers at most one
_Z_95 = 1.6448536269514722  # the standard normal's 95th percentile
_SEASON_LENGTH = 24  # hourly demand: one season is a day
DEFAULT_REPLAY_DAYS = 7  # `peerscale backtest` with no dates replays the last week of the source


@dataclass(frozen=True)
class BacktestConfig:
    """What to replay and how."""

    start: datetime
    end: datetime
    policies: tuple[str, ...] = POLICIES
    static_headroom: float = 0.2
    history_days: int = 14
    horizon_hours: int = 6  # predictive forecasts this far ahead at each refit (≥ refit_every_hours)
    refit_every_hours: int = 6  # refit every N hours; between refits plan from the last forecast (older data only)
    feedback: bool = True  # predictive: step the τ controller after every hour (as the hourly run does)
    committed_demand: bool = True  # predictive: forecast only what new arrivals add to the committed level
    aws_target_utilization: float = 0.7  # aws_predictive: capacity = load ÷ this (AWS has no default: a user setting)
    aws_refresh_hours: int = 6  # aws_predictive: the documented forecast refresh
    aws_history_days: int = 14  # aws_predictive: at most this much history (at least 24 h)
    seed: int = 7
    workers: int = 0  # processes for the refits and the policies (0: one per core)


def default_window(source_root: str, start: str | None, end: str | None, days: int = DEFAULT_REPLAY_DAYS) -> tuple[datetime, datetime]:
    """[start, end) of the replay: what was given; a missing end is the end of the source's last
    day, a missing start is `days` days before the end."""
    from pipeline.common.intervals import parse_utc

    start_at = parse_utc(start) if start else None
    if end:
        end_at = parse_utc(end)
    elif start_at is not None:
        end_at = start_at + timedelta(days=days)
    else:
        from pipeline.ingest.loader import last_source_day

        last = last_source_day(source_root)
        end_at = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    return (start_at if start_at is not None else end_at - timedelta(days=days)), end_at


@dataclass
class PolicyResult:
    """Per-policy tallies, then the summary metrics."""

    policy: str
    requests: int = 0
    preallocated: int = 0
    on_demand: int = 0  # cold starts
    warm: int = 0  # served by starting warm capacity
    failures: int = 0
    invalid: int = 0
    latencies_s: list[float] = field(default_factory=list)
    preallocation_cost: float = 0.0
    on_demand_cost: float = 0.0
    penalty_cost: float = 0.0
    failure_cost: float = 0.0
    warm_hold_cost: float = 0.0
    warm_start_cost: float = 0.0
    warm_unit_hours: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RESOURCE_TYPES, 0.0))
    preallocated_unit_hours: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RESOURCE_TYPES, 0.0))
    used_unit_hours: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RESOURCE_TYPES, 0.0))
    hourly: list[dict] = field(default_factory=list)
    capacity: list[dict] = field(default_factory=list)  # hour, region, resource_type, quantity pre-allocated
    taus: list[dict] = field(default_factory=list)  # hour, region, resource_type, τ the feedback controller set

    @property
    def total_cost(self) -> float:
        return (self.preallocation_cost + self.on_demand_cost + self.penalty_cost + self.failure_cost
                + self.warm_hold_cost + self.warm_start_cost)

    def summary(self) -> dict:
        served = max(self.requests - self.invalid, 1)
        lat = np.asarray(self.latencies_s or [0.0])
        idle = {r: max(self.preallocated_unit_hours[r] - self.used_unit_hours[r], 0.0) for r in RESOURCE_TYPES}
        return {
            "requests": self.requests,
            "hit_rate": self.preallocated / served,
            "warm_share": self.warm / served,
            "cold_start_free_rate": (self.preallocated + self.warm) / served,
            "cold_start_share": self.on_demand / served,
            "on_demand_share": self.on_demand / served,
            "failures": self.failures,
            "failure_share": self.failures / served,
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "latency_p99_s": float(np.percentile(lat, 99)),
            "idle_unit_hours": {r: round(v, 3) for r, v in idle.items()},
            "idle_vcpu_hours": round(idle["vcpu"], 3),
            "warm_unit_hours": {r: round(v, 3) for r, v in self.warm_unit_hours.items()},
            "cost": {
                "preallocation": round(self.preallocation_cost, 4),
                "on_demand": round(self.on_demand_cost, 4),
                "cold_start_penalty": round(self.penalty_cost, 4),
                "shortfall_penalty": round(self.failure_cost, 4),
                "warm_hold": round(self.warm_hold_cost, 4),
                "warm_start_penalty": round(self.warm_start_cost, 4),
                "total": round(self.total_cost, 4),
            },
        }


@dataclass
class BacktestResult:
    config: BacktestConfig
    results: dict[str, PolicyResult]
    demand: pd.DataFrame  # hour, region, resources: actual peak concurrent demand
    forecasts: pd.DataFrame  # predictive: series_id, ds, q50, lo/hi, q_tau

    def summary(self) -> dict:
        out = {name: r.summary() for name, r in self.results.items()}
        oracle = out.get("oracle")
        if oracle:
            for s in out.values():
                base = oracle["cost"]["total"]
                s["cost_vs_oracle"] = round(s["cost"]["total"] / base, 4) if base > 0 else None
                s["hit_rate_vs_oracle"] = round(s["hit_rate"] / oracle["hit_rate"], 4) if oracle["hit_rate"] > 0 else None
        return {
            "from": self.config.start.isoformat(),
            "to": self.config.end.isoformat(),
            "hours": int((self.config.end - self.config.start) / HOUR),
            "policies": out,
        }


def lognormal_sigma() -> float:
    """σ of the cold-start lognormal with the documented median and p95."""
    return math.log(COLD_START_P95_S / COLD_START_MEDIAN_S) / _Z_95


def _load_requests(source_root: str, start: datetime, end: datetime, scratch: Path) -> tuple[pa.Table, list[str]]:
    """Requests in [start, end) through the real ingest (validated; bad rows quarantined)."""
    from pipeline.run import backfill_ingest

    settings = Settings(source_root=source_root, lake_root=str(scratch / "source-lake"), build_root=str(scratch / "build"))
    backfill_ingest(start, end, settings)
    requests = lake.read_time_range(settings.lake_root, "peering_requests", start, end, "requested_at")
    pools = lake.read_reference(settings.lake_root, "resource_pools", end)
    return requests.select(PEERING_REQUESTS.names), sorted(set(pools.column("region").to_pylist()))


def _policy_settings(scratch: Path, name: str, base: Settings) -> Settings:
    """Each policy plans into its own scratch lake (own plans, own churn history, own ledger), one hourly
    window per run: the replay forecasts hourly (sub-hourly plan windows are scored by bench/plan_windows.py)."""
    return replace(base, lake_root=str(scratch / name / "lake"), build_root=str(scratch / name / "build"), plan_windows=1,
                   plan_window_minutes=60)


def _seed_reference(source_lake: str, target: Settings, at: datetime) -> None:
    """Copy the inventory snapshot the planner needs into a policy's lake."""
    for dataset in ("resource_pools", "instance_catalog", "calendar"):
        try:
            table = lake.read_reference(source_lake, dataset, at + HOUR)
        except FileNotFoundError:
            continue
        lake.write_hour_partitions(table, lake.raw_dir(target.lake_root, dataset), None, DataInterval.ending_at(at))


def _write_target_forecast(settings: Settings, run_id: str, hour: datetime, targets: pd.DataFrame, model: str) -> None:
    """A forecast whose quantiles all equal `targets` (static, oracle): the planner covers exactly it."""
    rows = pd.DataFrame({
        "series_id": [region_series_id(r, k) for r, k in zip(targets["region"], targets["resource_type"])],
        "ds": pd.Timestamp(hour),
        "model": model,
    })
    for col in ("mean", "q50", "q80", "q90", "q95", "q99", "lo_80", "hi_80", "lo_95", "hi_95"):
        rows[col] = targets["value"].to_numpy(float)
    _write_forecast(settings, run_id, rows)


def _write_forecast(settings: Settings, run_id: str, rows: pd.DataFrame) -> None:
    out_dir = lake.forecast_dir(settings.lake_root, run_id)
    table = pa.Table.from_pandas(rows[FORECAST.names], schema=FORECAST, preserve_index=False)
    lake.write_parquet_atomic(table, storage.join(out_dir, "forecast.parquet"))
    selection = {sid: {"model": m} for sid, m in zip(rows["series_id"], rows["model"])}
    lake.write_json_atomic(storage.join(out_dir, "manifest.json"), {"run_id": run_id, "selection": selection})


def aws_style_capacity(demand: pd.DataFrame, refresh: datetime, config: BacktestConfig, horizon: int = 48) -> pd.DataFrame:
    """The `aws_predictive` policy's capacity for the `horizon` hours from `refresh`: MSTL's point
    forecast of each region's load from at most `aws_history_days` before `refresh`, ÷ the target
    utilization. Columns hour, region, resource_type, value. Needs 24 h of history (as AWS does)."""
    from pipeline.forecast.models import MODELS

    start = pd.Timestamp(refresh - timedelta(days=config.aws_history_days))
    past = _long(demand[(demand["hour"] >= start) & (demand["hour"] < pd.Timestamp(refresh))])
    history = past.rename(columns={"hour": "ds", "value": "y"})
    history["unique_id"] = history["region"] + "|" + history["resource_type"]
    history = history[["unique_id", "ds", "y"]]
    if history.groupby("unique_id").size().min() < 24:
        raise ValueError(f"aws_predictive needs at least 24 h of history before {refresh:%Y-%m-%dT%H:%M}")
    try:
        forecast = MODELS["mstl"](_SEASON_LENGTH, "h").fit(history).predict(horizon)
    except Exception:  # any fitting failure falls back to seasonal naive, as a forecaster must
        forecast = MODELS["seasonal_naive"](_SEASON_LENGTH, "h").fit(history).predict(horizon)
    parts = forecast["unique_id"].str.split("|", expand=True)
    hours = pd.DatetimeIndex(pd.to_datetime(forecast["ds"]))
    hours = hours.tz_localize("UTC") if hours.tz is None else hours.tz_convert("UTC")  # the models drop the zone
    return pd.DataFrame({"hour": hours, "region": parts[0].to_numpy(), "resource_type": parts[1].to_numpy(),
                         "value": np.maximum(forecast["mean"].to_numpy(float), 0.0) / config.aws_target_utilization})


def _long(demand: pd.DataFrame) -> pd.DataFrame:
    return demand.melt(id_vars=["hour", "region"], value_vars=list(RESOURCE_TYPES), var_name="resource_type", value_name="value")


def _predictive_forecasts(demand: pd.DataFrame, carried: pd.DataFrame | None, hour: datetime, config: BacktestConfig,
                          tau: float, lake_root: str | None = None) -> pd.DataFrame:
    """Forecast every region series (and, with `carried`, its fresh part) from data strictly before `hour`.

    With `lake_root` the engine gets what the hourly run gives it: the event calendar's uplift
    (a schedule, known ahead) and week-lagged telemetry regressors, both as of `hour`.
    """
    from pipeline.forecast.committed import fresh_history
    from pipeline.forecast.engine import select_and_forecast
    from pipeline.forecast.exog import calendar_uplift, telemetry_regressors

    start = pd.Timestamp(hour - timedelta(days=config.history_days))
    past = demand[(demand["hour"] >= start) & (demand["hour"] < pd.Timestamp(hour))]
    history = _long(past).rename(columns={"hour": "ds", "value": "y"})
    history["unique_id"] = [region_series_id(r, k) for r, k in zip(history["region"], history["resource_type"])]
    history = history[["unique_id", "ds", "y"]]
    if carried is not None:
        history = pd.concat([history, fresh_history(past, carried)], ignore_index=True)
    future = None
    if lake_root is not None:
        history, future = calendar_uplift(lake_root, hour, history, config.horizon_hours, "h")
        history, telemetry = telemetry_regressors(lake_root, start.to_pydatetime(), hour, history, config.horizon_hours)
        future = telemetry if future is None else future.merge(telemetry, on=["unique_id", "ds"], how="outer")
    result = select_and_forecast(history, config.horizon_hours, _SEASON_LENGTH, "h", tau, future=future)
    return result.forecasts


@dataclass(frozen=True)
class _Pricing:
    """USD per unit-hour of a request not served from pre-allocation (see the module docstring)."""

    on_demand: dict[str, float]  # c_over: the unit price of what an on-demand request holds
    cold_start_penalty: dict[str, float]  # c_under − c_over, for at most one planning window
    shortfall: dict[str, float]  # c_under: a request not served at all
    warm_start_penalty: dict[str, float] = field(default_factory=dict)  # start_penalty_multiple × c_over, at most one window


@dataclass(frozen=True)
class _ReplayInputs:
    """What every policy replays against, prepared once."""

    demand: pd.DataFrame  # hour, region, resources: actual peak concurrent demand
    demand_long: pd.DataFrame  # the same, one row per (hour, region, resource_type)
    carried: pd.DataFrame | None  # committed levels of running sessions (predictive, committed_demand)
    tau: float
    source_lake: str
    requests: pd.DataFrame  # the requests of [start, end), in time order
    cold_starts: np.ndarray  # modeled on-demand setup latency, one per row of `requests`
    pricing: _Pricing


@dataclass
class _PolicyRun:
    """One policy's own lake, IRC and open sessions."""

    name: str
    settings: Settings
    learns: bool  # steps the τ feedback controller after every hour
    coordinator: Coordinator
    result: PolicyResult
    sessions: list[tuple[float, str]] = field(default_factory=list)  # heap of (ends at, allocation id)


@dataclass(frozen=True)
class _Refits:
    """Every forecast the replay plans from, made before it: each reads only data before its hour."""

    predictive: dict[int, pd.DataFrame] = field(default_factory=dict)  # refit's replay hour index → forecast
    aws: dict[int, pd.DataFrame] = field(default_factory=dict)  # refresh's replay hour index → aws_predictive's capacity


@dataclass(frozen=True)
class _Replay:
    """What each policy's task replays against (pickled to its worker process: a few MB)."""

    config: BacktestConfig
    base: Settings
    scratch: Path
    inputs: _ReplayInputs
    hours: list[datetime]
    refits: _Refits = field(default_factory=_Refits)


def run_backtest(
    source_root: str,
    config: BacktestConfig,
    settings: Settings | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    scratch_dir: str | None = None,
) -> BacktestResult:
    """Replay [config.start, config.end) under each policy (see the module docstring)."""
    unknown = [p for p in config.policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if config.end <= config.start:
        raise ValueError(f"empty replay: --from {config.start.isoformat()} is not before --to {config.end.isoformat()}")
    base = settings or Settings.from_env()
    scratch = Path(scratch_dir or tempfile.mkdtemp(prefix="peerscale-backtest-"))
    say = progress or (lambda _m, _i, _n: None)
    try:
        inputs = _prepare_replay(source_root, config, base, scratch)
        replay = _Replay(config=config, base=base, scratch=scratch, inputs=inputs, hours=DataInterval(config.start, config.end).hours())
        tasks = _refit_tasks(config, len(replay.hours))
        total, done = len(tasks) + len(config.policies) * len(replay.hours), 0

        def report(message: str) -> None:
            nonlocal done
            done += 1
            say(message, done, total)

        workers = config.workers or cores_available()
        fitted = dict(zip(tasks, fork_map_telling(partial(_refit, replay=replay), tasks, workers, report)))
        replay = replace(replay, refits=_Refits(predictive={i: f for (kind, i), f in fitted.items() if kind == "predictive"},
                                                aws={i: f for (kind, i), f in fitted.items() if kind == "aws_predictive"}))
        outcomes = fork_map_telling(partial(_replay_policy, replay=replay), list(config.policies), workers, report)
        say("done", total, total)
        planned = [frame for _, frames in outcomes for frame in frames]
        forecasts = pd.concat(planned, ignore_index=True) if planned else pd.DataFrame()
        results = {name: result for name, (result, _) in zip(config.policies, outcomes)}
        return BacktestResult(config=config, results=results, demand=inputs.demand, forecasts=forecasts)
    finally:
        if scratch_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _refit_tasks(config: BacktestConfig, n_hours: int) -> list[tuple[str, int]]:
    """The refits the replay's policies plan from: (kind, replay hour index), the costliest first."""
    tasks = []
    if any(p in config.policies for p in PREDICTIVE):  # both predictive policies plan from the same refits
        tasks += [("predictive", i) for i in range(0, n_hours, config.refit_every_hours)]
    if "aws_predictive" in config.policies:
        tasks += [("aws_predictive", i) for i in range(0, n_hours, config.aws_refresh_hours)]
    return tasks


def _refit(task: tuple[str, int], tell: Callable[[str], None], *, replay: _Replay) -> pd.DataFrame:
    """One refit, from the data strictly before its hour (so it can run before the replay, on any core)."""
    kind, index = task
    hour, inputs, config = replay.hours[index], replay.inputs, replay.config
    if kind == "aws_predictive":
        fitted = aws_style_capacity(inputs.demand, hour, config)
    else:
        fitted = _predictive_forecasts(inputs.demand, inputs.carried, hour, config, inputs.tau, inputs.source_lake)
    tell(f"{kind} refit {hour:%Y-%m-%dT%H:%M}")
    return fitted


def _replay_policy(name: str, tell: Callable[[str], None], *, replay: _Replay) -> tuple[PolicyResult, list[pd.DataFrame]]:
    """One policy over every hour, in its own lake with its own IRC: plan the hour, serve its requests,
    learn from them. Policies share nothing, so each is a task of its own. Also returns the forecast
    rows it planned from when the report shows them (the predictive policy's)."""
    run = _open_policy(name, replay.config, replay.base, replay.scratch)
    planned: list[pd.DataFrame] = []
    try:
        for index, hour in enumerate(replay.hours):
            _replay_hour(hour, index=index, run=run, replay=replay, planned=planned)
            tell(f"{name} {hour:%Y-%m-%dT%H:%M}")
    finally:
        run.coordinator.close()
    return run.result, planned


def _prepare_replay(source_root: str, config: BacktestConfig, base: Settings, scratch: Path) -> _ReplayInputs:
    """Ingest the requests, derive hourly demand and put the replay window in time order."""
    from pipeline.features.committed_levels import carried_levels
    from pipeline.forecast.engine import planning_tau

    history_start = config.start - timedelta(days=config.history_days) - SESSION_CARRY_IN
    requests, regions = _load_requests(source_root, history_start, config.end, scratch)
    window = FeatureWindow(config.start - max(timedelta(days=config.history_days), STATIC_LOOKBACK), config.end)  # static looks back a week
    demand = compute_features(requests, regions, window)["region_demand_hourly"].to_pandas()
    tau = planning_tau(base)
    carried = None
    if config.committed_demand and any(p in config.policies for p in PREDICTIVE):
        carried = carried_levels(requests, regions, DataInterval(window.start, config.end).hours())

    replay = requests.to_pandas()
    replay = replay[(replay["requested_at"] >= pd.Timestamp(config.start)) & (replay["requested_at"] < pd.Timestamp(config.end))]
    replay = replay.sort_values(["requested_at", "request_id"], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(config.seed)
    cold_starts = rng.lognormal(math.log(COLD_START_MEDIAN_S), lognormal_sigma(), size=len(replay))
    warm = _warm_settings(source_root, base)
    pricing = _Pricing(
        on_demand=dict(base.cost.c_over),
        cold_start_penalty={r: base.cost.c_under[r] - base.cost.c_over[r] for r in RESOURCE_TYPES},
        shortfall=dict(base.cost.c_under),
        warm_start_penalty={r: warm.start_penalty_multiple * base.cost.c_over[r] for r in RESOURCE_TYPES},
    )
    return _ReplayInputs(
        demand=demand,
        demand_long=_long(demand),
        carried=carried,
        tau=tau,
        source_lake=str(scratch / "source-lake"),
        requests=replay,
        cold_starts=cold_starts,
        pricing=pricing,
    )


def _warm_settings(source_root: str, base: Settings) -> WarmCosts:
    """The warm tier's costs as the planner resolves them (planner.json, then the environment)."""
    from pipeline.plan.policy import load_planner_config

    config, _ = load_planner_config(source_root)
    return resolve_warm(config.costs, base.warm_texts)


def _open_policy(name: str, config: BacktestConfig, base: Settings, scratch: Path) -> _PolicyRun:
    """The policy's lake (seeded with the inventory) and its own IRC."""
    from pipeline.irc import REQUEST_TIME, Coordinator

    settings = replace(_policy_settings(scratch, name, base),  # only the tiered policy plans warm capacity
                       warm_texts=(*base.warm_texts, ("backtest policy", f"enabled={int(name == 'predictive_tiered')}")))
    _seed_reference(str(scratch / "source-lake"), settings, config.start)
    learns = config.feedback and name == "predictive"  # not tiered: see the module docstring
    coordinator = Coordinator(settings.lake_root, reload_interval_s=None, outcomes=learns, name=name,
                              clock=REQUEST_TIME)  # a replay: the log's own times drive expiry
    return _PolicyRun(name=name, settings=settings, learns=learns, coordinator=coordinator, result=PolicyResult(policy=name))


def _replay_hour(hour: datetime, *, index: int, run: _PolicyRun, replay: _Replay, planned: list[pd.DataFrame]) -> None:
    """Plan the hour under the policy, then serve its requests (and learn from them)."""
    from pipeline.ops.feedback import run_feedback

    if run.name != "reactive":
        _plan_hour(run, hour=hour, index=index, replay=replay, planned=planned)
    requests = replay.inputs.requests
    batch = requests[(requests["requested_at"] >= pd.Timestamp(hour)) & (requests["requested_at"] < pd.Timestamp(hour + HOUR))]
    _serve_hour(batch, run, inputs=replay.inputs, hour=hour, replay_end_s=replay.config.end.timestamp())
    if run.learns:  # the hourly run's feedback stage, on this hour's logged decisions
        outcomes = run.coordinator.outcome_log
        assert outcomes is not None, "a learning policy's IRC logs its decisions (outcomes=True)"
        outcomes.flush()
        run_feedback(DataInterval(hour, hour + HOUR), run.settings)


def _plan_hour(run: _PolicyRun, *, hour: datetime, index: int, replay: _Replay, planned: list[pd.DataFrame]) -> None:
    """Write the policy's forecast for the hour, plan and publish it, and load it into the policy's IRC."""
    from pipeline.ops.feedback import load_tau_overrides
    from pipeline.plan import build_plan, read_plan
    from pipeline.plan.planner import plan_id_for
    from pipeline.publish.pointer import publish

    interval = DataInterval.ending_at(hour)
    run_id = f"{run.name}-{interval.token}"
    _write_policy_forecast(run, run_id=run_id, hour=hour, index=index, replay=replay, planned=planned)
    overrides = load_tau_overrides(run.settings.lake_root, hour) if run.learns else None
    built = build_plan(interval, run.settings, run_id, tau_overrides=overrides)
    if overrides:
        run.result.taus.extend(
            {"hour": hour, "region": region, "resource_type": rt, "tau": t}
            for region, by_rt in overrides.items() for rt, t in by_rt.items())
    publish(plan_id_for(interval), run.settings)
    run.coordinator.reload(force=True)
    plan, _ = read_plan(run.settings, built["plan_id"])
    result = run.result
    result.preallocation_cost += float(plan["hourly_cost"].sum())
    if run.name == "predictive_tiered":
        _take_warm_plan(run, plan)
    held = plan.groupby("resource_type")["quantity"].sum()
    for r in RESOURCE_TYPES:
        result.preallocated_unit_hours[r] += float(held.get(r, 0.0))
    for (region, resource), qty in plan.groupby(["region", "resource_type"])["quantity"].sum().items():
        result.capacity.append({"hour": hour, "region": region, "resource_type": resource, "quantity": qty})


def _take_warm_plan(run: _PolicyRun, plan: pd.DataFrame) -> None:
    """The hour's warm hold cost (the plan's warm_hourly_cost) and warm unit-hours (each line's quantity ×
    warm_count / count); the IRC serves from the warm capacity itself (its ledger's `<region>/warm` rows)."""
    if "warm_count" not in plan.columns or not len(plan):
        return
    result = run.result
    result.warm_hold_cost += float(plan["warm_hourly_cost"].fillna(0.0).sum())
    warm = plan["warm_count"].fillna(0).astype(float)
    share = (warm / plan["count"].where(plan["count"] > 0)).fillna(0.0)
    held = (plan["quantity"] * share).groupby(plan["resource_type"]).sum()
    for r in RESOURCE_TYPES:
        result.warm_unit_hours[r] += float(held.get(r, 0.0))


def _write_policy_forecast(run: _PolicyRun, *, run_id: str, hour: datetime, index: int, replay: _Replay,
                           planned: list[pd.DataFrame]) -> None:
    """The forecast the policy plans the hour from, written as the forecast run `run_id`: the
    predictive policies' and aws_predictive's from their last refit at or before `index`."""
    from pipeline.forecast.committed import apply_committed

    inputs, config, refits = replay.inputs, replay.config, replay.refits
    demand_long = inputs.demand_long
    if run.name in PREDICTIVE:  # both predictive policies plan from the same refits
        fitted = refits.predictive[index - index % config.refit_every_hours]
        now = fitted[fitted["ds"] == pd.Timestamp(hour)]
        if inputs.carried is not None:  # what running sessions hold now is known at `hour`
            now = apply_committed(now, inputs.carried[inputs.carried["hour"] == pd.Timestamp(hour)], hour)
        if run.name == "predictive" or "predictive" not in config.policies:
            planned.append(now)
        _write_forecast(run.settings, run_id, now)
    elif run.name == "aws_predictive":
        capacity = refits.aws[index - index % config.aws_refresh_hours]
        targets = capacity[capacity["hour"] == pd.Timestamp(hour)].drop(columns="hour")
        _write_target_forecast(run.settings, run_id, hour, targets, "aws_predictive")
    elif run.name == "oracle":
        actual = demand_long[demand_long["hour"] == pd.Timestamp(hour)]
        _write_target_forecast(run.settings, run_id, hour, actual, "oracle")
    else:  # static
        past = demand_long[(demand_long["hour"] >= pd.Timestamp(hour - STATIC_LOOKBACK))
                           & (demand_long["hour"] < pd.Timestamp(hour))]
        peak = past.groupby(["region", "resource_type"], as_index=False)["value"].max()
        peak["value"] = peak["value"] * (1 + config.static_headroom)
        _write_target_forecast(run.settings, run_id, hour, peak, "static")


def _serve_hour(batch: pd.DataFrame, run: _PolicyRun, *, inputs: _ReplayInputs, hour: datetime, replay_end_s: float) -> None:
    """Serve one hour of requests in time order; release sessions as their durations end."""
    from pipeline.irc import PeeringRequest

    result, sessions, coordinator, pricing = run.result, run.sessions, run.coordinator, inputs.pricing
    served_pre = 0
    for index, row in zip(batch.index, batch.itertuples(index=False)):
        at = row.requested_at.timestamp()
        while sessions and sessions[0][0] <= at:
            _, allocation_id = heapq.heappop(sessions)
            coordinator.release(allocation_id)
        need = {r: float(getattr(row, r)) for r in RESOURCE_TYPES}
        request = PeeringRequest(
            request_id=row.request_id, requested_at=row.requested_at.to_pydatetime(), source_region=row.source_region,
            destination_region=row.destination_region, resource_requirements=need, duration_s=float(row.duration_s),
            priority=row.priority,
        )
        response = coordinator.handle_peering_request(request)
        result.requests += 1
        hours_held = float(row.duration_s) / SECONDS_PER_HOUR
        held_in_replay = max(min(at + float(row.duration_s), replay_end_s) - at, 0.0) / SECONDS_PER_HOUR
        if response.status == "success" and response.path == "preallocated":
            result.preallocated += 1
            served_pre += 1
            result.latencies_s.append(0.0)
            if response.allocation_id:  # always set on a pre-allocated success
                heapq.heappush(sessions, (at + float(row.duration_s), response.allocation_id))
            for r in RESOURCE_TYPES:
                result.used_unit_hours[r] += need[r] * held_in_replay
        elif response.status == "success" and response.path == "warm":
            result.warm += 1
            result.latencies_s.append(float(inputs.cold_starts[index]) * WARM_START_SHARE)
            if response.allocation_id:
                heapq.heappush(sessions, (at + float(row.duration_s), response.allocation_id))
            part = response.preallocated_part or {}  # a top-up: these units run on the (paid) pre-allocation
            started = {r: need[r] - part.get(r, 0.0) for r in RESOURCE_TYPES}
            for r in RESOURCE_TYPES:
                result.used_unit_hours[r] += part.get(r, 0.0) * held_in_replay
            result.on_demand_cost += sum(started[r] * pricing.on_demand[r] for r in RESOURCE_TYPES) * hours_held
            result.warm_start_cost += (sum(started[r] * pricing.warm_start_penalty[r] for r in RESOURCE_TYPES)
                                       * min(hours_held, WINDOW_HOURS))
        elif response.status == "success":
            result.on_demand += 1
            result.latencies_s.append(float(inputs.cold_starts[index]))
            if response.allocation_id:
                heapq.heappush(sessions, (at + float(row.duration_s), response.allocation_id))
            result.on_demand_cost += sum(need[r] * pricing.on_demand[r] for r in RESOURCE_TYPES) * hours_held
            result.penalty_cost += sum(need[r] * pricing.cold_start_penalty[r] for r in RESOURCE_TYPES) * min(hours_held, WINDOW_HOURS)
        elif response.message.startswith("Invalid request"):
            result.invalid += 1
        else:
            result.failures += 1
            result.failure_cost += sum(need[r] * pricing.shortfall[r] for r in RESOURCE_TYPES) * hours_held
    total = len(batch)
    result.hourly.append({"hour": hour.isoformat(), "requests": total, "hit_rate": served_pre / total if total else None})


def parse_policies(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise ValueError(f"--policy takes a comma-separated subset of {','.join(POLICIES)}; got {text!r}")
    return names


def record_backtest(lake_root: str, result: BacktestResult) -> str:
    """Keep a backtest's summary and hourly hit rate per policy in lake/backtests/ (one JSON per replayed
    window, rewritten by a re-run of the same window), where the analyst app reads them."""
    window = f"{result.config.start:%Y%m%dT%H%MZ}-{result.config.end:%Y%m%dT%H%MZ}"
    payload = {**result.summary(), "hourly": {name: r.hourly for name, r in result.results.items()}}
    path = storage.join(lake_root, "backtests", f"backtest-{window}.json")
    lake.write_json_atomic(path, payload)
    return path


__all__ = ["POLICIES", "BacktestConfig", "BacktestResult", "parse_policies", "record_backtest", "run_backtest"]
