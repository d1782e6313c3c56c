"""The forecast stage fanned out over shards of series: split → (fit global models ‖ forecast shards) → reduce.

`run_forecast` does everything in one process. With thousands of series the per-series work
(cross-validating and fitting the local models) dominates, so the hourly DAG maps it over shards
of series, while the work that is not per-series runs once:

- `split_shards` reads the features; in an hourly run the model registry's CURRENT version scores
  the series it covers first (`pipeline.forecast.scoring`, as `run_forecast` does), and only the
  rest go to the engine: it prepares their inputs once (`engine.prepare`: regular grids, calendar
  uplifts, outlier cleaning and the run-wide parameters) and splits the sorted series ids into
  contiguous shards (one empty shard when the registry scored every series). The shard count follows
  the number of series: ceil(series / series_per_shard), at most `max_shards` and `max_map_length`.
- `fit_global` cross-validates and fits the *global* models (the GBM learns from every series at
  once) exactly once, on all series, as `select_and_forecast` does. Sharding it would train a
  different model per shard and change the forecast; fitting it once keeps the output identical
  and its cost bounded (it samples at most `max_rows` training rows however many series there are).
- `forecast_shard` cross-validates every local model on its series and forecasts them with every
  requested local model (the choice is not known yet; local models are cheap next to the GBM).
- `reduce_shards` checks that every part is there, then does what is cross-series — per-series
  choice against the run-wide best model, the ensemble, conformal calibration on the pooled
  errors, hierarchy reconciliation — with the engine's own `choose` and `assemble`, and publishes
  forecast.parquet + manifest.json, with the registry's forecasts, exactly as `run_forecast` does.

The result equals `run_forecast`'s for the same inputs (tests/test_fanout.py). Intermediates live
in the lake under `forecasts/run=<run_id>/_work/` (shared by every worker; pickles written and read
by the same code for the same run); each part is written atomically under a fixed name, so a
retried shard overwrites its own part and nothing else, and parts carry the split's token so a part
left by an earlier split of the run is rejected. After publishing, the reduce step deletes the
intermediates and keeps `_work/shards.json` (the split, and what was published: a retried reduce
returns it). Differences from the single-process run are on failure paths only: a local model
whose final fit fails falls back to seasonal naive for the series of its shard rather than of the
whole run, and the GBM's final fit runs even when no series ends up choosing it.
"""

from __future__ import annotations

import math
import pickle
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.env import env_int
from pipeline.common.intervals import DataInterval
from pipeline.forecast import engine
from pipeline.forecast.engine import DEFAULT_MODELS, MODELS_GLOBAL, ModelRun, Prepared

SERIES_PER_SHARD = 25  # a shard task costs ~3 s of start-up; local models ~0.05 s a series (auto models)
MAX_SHARDS = 16
MAX_MAP_LENGTH = 1024  # Airflow's [core] max_map_length default
GLOBAL_PART = "global"
SPLIT_FILE = "shards.json"  # under _work/: the run's split into shards, kept after publishing


class MissingShards(RuntimeError):
    """The reduce step found parts missing or from another split: the run's shards did not all finish."""


@dataclass
class Part:
    """What one shard (or the global fit) produced: per model, its cross-validation and final forecast."""

    token: str
    name: str
    series: list[str]
    cv: dict[str, ModelRun] = field(default_factory=dict)
    final: dict[str, pd.DataFrame] = field(default_factory=dict)
    final_errors: dict[str, str] = field(default_factory=dict)


def shard_count(n_series: int, series_per_shard: int | None = None, max_shards: int | None = None,
                max_map_length: int = MAX_MAP_LENGTH) -> int:
    """ceil(series / series_per_shard), at least 1, at most max_shards and Airflow's max_map_length."""
    per = series_per_shard if series_per_shard is not None else env_int("PEERSCALE_FORECAST_SERIES_PER_SHARD", SERIES_PER_SHARD)
    cap = max_shards if max_shards is not None else env_int("PEERSCALE_FORECAST_MAX_SHARDS", MAX_SHARDS)
    if per < 1 or cap < 1:
        raise ValueError(f"series per shard and max shards must be positive, got {per} and {cap}")
    return max(1, min(math.ceil(n_series / per), cap, max_map_length))


def contiguous_chunks(ids: Sequence[str], n: int) -> list[list[str]]:
    """Contiguous, near-equal chunks of the sorted ids (concatenated they are the sorted ids again)."""
    ordered = sorted(ids)
    size, extra = divmod(len(ordered), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        out.append(ordered[start:stop])
        start = stop
    return out


# ---- lake layout ---------------------------------------------------------------------------------

def work_dir(settings: Settings, run_id: str) -> str:
    return storage.join(lake.forecast_dir(settings.lake_root, run_id), "_work")


def _data(settings: Settings, run_id: str, name: str) -> str:
    """The bulky intermediates (prepared inputs, parts): deleted once the forecast is published."""
    return storage.join(work_dir(settings, run_id), "data", name)


def _part_path(settings: Settings, run_id: str, name: str) -> str:
    return _data(settings, run_id, f"part-{name}.pkl")


def _shard_name(index: int, total: int) -> str:
    return f"{index:05d}-of-{total:05d}"


def _dump(uri: str, obj: Any) -> None:
    storage.write_bytes_atomic(uri, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _load(uri: str) -> Any:
    # Written by this code version for this run, in the run's own lake directory.
    return pickle.loads(storage.read_bytes(uri))


def _split_path(settings: Settings, run_id: str) -> str:
    return storage.join(work_dir(settings, run_id), SPLIT_FILE)


def _read_split(settings: Settings, run_id: str) -> dict:
    path = _split_path(settings, run_id)
    if not storage.exists(path):
        raise MissingShards(f"no shard split at {path}: run split_shards for {run_id} first")
    return lake.read_json(path)


# ---- the steps -------------------------------------------------------------------------------------

def _registry_first(interval: DataInterval, settings: Settings, kind: str, x: engine.ForecastInputs) -> tuple[Any, Any]:
    """Hourly runs: the CURRENT registry version scores the series it covers (as `run_forecast`
    does); returns (its score, the inputs left for the engine: None when it covered them all)."""
    from pipeline.forecast import scoring

    if kind != "hourly":
        return scoring.RegistryScore(), x
    reg = scoring.score_registry(interval, settings, lambda: engine.prepare(x.engine_input, x.options, future=x.future,
                                                                             hierarchy=x.hierarchy))
    return reg, scoring.uncovered(x, reg)


def split_shards(interval: DataInterval, settings: Settings, kind: str = "hourly", models: Sequence[str] = DEFAULT_MODELS, *,
                 series_per_shard: int | None = None, max_shards: int | None = None,
                 max_map_length: int = MAX_MAP_LENGTH) -> list[dict]:
    """Prepare the run's inputs once, score what the model registry covers, split the rest's series;
    returns one small descriptor per shard (for `expand`; one empty shard when the registry covered all)."""
    x = engine.load_inputs(interval, settings, kind, models)
    reg, rest = _registry_first(interval, settings, kind, x)
    p = None if rest is None else engine.prepare(rest.engine_input, x.options, future=rest.future, hierarchy=rest.hierarchy)
    run_id = engine.forecast_run_id(kind, interval)
    shards = contiguous_chunks(p.ids, shard_count(len(p.ids), series_per_shard, max_shards, max_map_length)) if p else [[]]
    token = uuid.uuid4().hex  # identifies this split: parts of an earlier split of the same run are rejected
    storage.delete_dir(work_dir(settings, run_id))  # a run split again starts from nothing
    _dump(_data(settings, run_id, "prepared.pkl"), p)
    _dump(_data(settings, run_id, "registry.pkl"), (reg, x.hierarchy))
    for i, ids in enumerate(shards):
        _dump(_data(settings, run_id, f"input-{_shard_name(i, len(shards))}.pkl"), p.subset(ids) if p else None)
    split = {"run_id": run_id, "kind": kind, "token": token, "models": list(models),
             "data_interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()},
             "history": x.summary(), "horizon": x.options.horizon, "season_length": x.options.season_length,
             "tau": x.options.tau, "registry_covered": len(reg.covered), "shards": shards}
    lake.write_json_atomic(_split_path(settings, run_id), split)  # last: the split exists only when its inputs do
    return [{"run_id": run_id, "shard": i, "shards": len(shards), "series": len(ids)} for i, ids in enumerate(shards)]


def _global_names(p: Prepared) -> list[str]:
    return [n for n in p.scored_names if MODELS_GLOBAL.get(n, False)]


def _local_names(p: Prepared) -> list[str]:
    return [n for n in p.scored_names if not MODELS_GLOBAL.get(n, False)]


def _run_models(p: Prepared | None, names: list[str], token: str, part_name: str) -> Part:
    """One part's cross-validation and final forecasts (an empty part when the registry left no series)."""
    part = Part(token=token, name=part_name, series=list(p.ids) if p else [])
    if p is None:
        return part
    trained: dict[str, Any] = {}
    if p.run_cv:
        for name in names:
            run = engine.cross_validate_model(p, name)
            trained[name] = run.trained
            part.cv[name] = replace(run, trained=None)  # the model object stays in this process
    if p.long_ids:
        for name in names:
            if name not in p.names:  # seasonal naive only as the yardstick: never chosen
                continue
            part.final[name], error = engine.final_forecast(p, name, p.long_ids, trained.get(name))
            if error:
                part.final_errors[name] = error
    return part


def fit_global(run_id: str, settings: Settings) -> dict:
    """Cross-validate and fit every global model once on all series (as the single-process run does)."""
    split = _read_split(settings, run_id)
    p: Prepared | None = _load(_data(settings, run_id, "prepared.pkl"))
    names = _global_names(p) if p else []
    part = _run_models(p, names, split["token"], GLOBAL_PART)
    path = _part_path(settings, run_id, GLOBAL_PART)
    _dump(path, part)
    return {"run_id": run_id, "part": path, "models": names}


def forecast_shard(run_id: str, shard: int, settings: Settings) -> dict:
    """Cross-validate and forecast the local models on one shard's series; writes the shard's part atomically."""
    split = _read_split(settings, run_id)
    total = len(split["shards"])
    if not 0 <= shard < total:
        raise ValueError(f"shard {shard} out of range: the split of {run_id} has {total} shards")
    name = _shard_name(shard, total)
    p: Prepared | None = _load(_data(settings, run_id, f"input-{name}.pkl"))
    part = _run_models(p, _local_names(p) if p else [], split["token"], name)
    path = _part_path(settings, run_id, name)
    _dump(path, part)
    return {"run_id": run_id, "shard": shard, "part": path, "series": len(part.series)}


def _read_parts(settings: Settings, run_id: str, split: dict) -> list[Part]:
    names = [GLOBAL_PART, *(_shard_name(i, len(split["shards"])) for i in range(len(split["shards"])))]
    parts, missing = [], []
    for name in names:
        path = _part_path(settings, run_id, name)
        if not storage.exists(path):
            missing.append(name)
            continue
        part: Part = _load(path)
        if part.token != split["token"]:
            missing.append(f"{name} (from another split)")
            continue
        parts.append(part)
    if missing:
        raise MissingShards(f"forecast run {run_id}: parts missing: {', '.join(missing)}; rerun those tasks, then reduce")
    expected = [sid for ids in split["shards"] for sid in ids]
    covered = [sid for part in parts[1:] for sid in part.series]
    if covered != expected:
        raise MissingShards(f"forecast run {run_id}: the shard parts cover {len(covered)} series, the split {len(expected)}")
    return parts


def _merge_cv(name: str, runs: list[ModelRun]) -> tuple[pd.DataFrame | None, str | None]:
    """One model's cross-validation over all parts: dropped if any part failed, or if no part had series for it."""
    failed = [r for r in runs if r.cv is None and not r.no_series]
    if failed:
        return None, failed[0].error
    frames = [r.cv for r in runs if r.cv is not None]
    if not frames:
        return None, runs[0].error if runs else f"{name}: no series long enough to cross-validate"
    cv = pd.concat(frames, ignore_index=True)
    return cv.sort_values(["unique_id", "window", "ds"], kind="stable").reset_index(drop=True), None


def _merged_cv(p: Prepared, parts: list[Part], info: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Step 2 over all parts: each model's cross-validation, merged in the engine's model order."""
    cv_frames: dict[str, pd.DataFrame] = {}
    if not p.run_cv:
        return cv_frames
    for name in p.scored_names:
        runs = [part.cv[name] for part in parts if name in part.cv]
        decisions = [r.regressors for r in runs if r.regressors is not None]
        if decisions:
            info.setdefault("regressors", {})[name] = decisions[0] if len(decisions) == 1 else {"shards": decisions}
        cv, error = _merge_cv(name, runs)
        if cv is None:
            if name in p.names:
                info["dropped"][name] = error
            continue
        cv_frames[name] = cv
    return cv_frames


def _gathered_forecasts(run_id: str, sel: engine.Selection, parts: list[Part], info: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Step 4 from the parts: every model's final forecast of the series that need it."""
    point: dict[str, pd.DataFrame] = {}
    for name, need_ids in sel.needed().items():
        need = set(need_ids)
        holders = [part for part in parts if name in part.final and need & set(part.final[name]["unique_id"])]
        pred = pd.concat([part.final[name] for part in holders], ignore_index=True) if holders else pd.DataFrame(columns=["unique_id"])
        point[name] = pred[pred["unique_id"].isin(need)].reset_index(drop=True)
        lacking = need - set(point[name]["unique_id"])
        if lacking:
            raise MissingShards(f"forecast run {run_id}: no {name} forecast for {len(lacking)} series that chose it")
        errors = [part.final_errors[name] for part in holders if name in part.final_errors]
        if errors:
            info["dropped"][name] = errors[0]
    return point


def _engine_result(run_id: str, p: Prepared, parts: list[Part]) -> engine.ForecastResult:
    """Steps 2-5 over every part: choose run-wide, gather the chosen forecasts, calibrate and reconcile."""
    info = p.info
    info["timings_s"] = {}
    cv_frames = _merged_cv(p, parts, info)
    sel = engine.choose(p, cv_frames, info)  # step 3, run-wide
    point = _gathered_forecasts(run_id, sel, parts, info)
    return engine.assemble(p, sel, point, cv_frames, info)


def reduce_shards(interval: DataInterval, settings: Settings, kind: str = "hourly", models: Sequence[str] = DEFAULT_MODELS) -> dict:
    """Check every part is present, choose, calibrate and reconcile over all series, publish like `run_forecast`."""
    run_id = engine.forecast_run_id(kind, interval)
    split = _read_split(settings, run_id)
    if list(split["models"]) != list(models):
        raise ValueError(f"forecast run {run_id} was split for models {split['models']}, not {list(models)}")
    if "published" in split:  # a retry after this step had already published: nothing left to do
        return split["published"]
    p: Prepared | None = _load(_data(settings, run_id, "prepared.pkl"))
    parts = _read_parts(settings, run_id, split)
    if p is None:  # the registry scored every series
        result = engine.ForecastResult(forecasts=pd.DataFrame(), info={"models": list(models)})
    else:
        result = _engine_result(run_id, p, parts)
    if kind == "hourly":  # the registry's forecasts of the series it covered (pipeline.forecast.scoring)
        from pipeline.forecast import scoring

        reg, hierarchy = _load(_data(settings, run_id, "registry.pkl"))
        result.forecasts, result.selection, result.info = scoring.combine(result.forecasts, result.selection, result.info, reg, hierarchy)
    published = engine.write_forecast(interval, settings, result, kind=kind, models=models, history=split["history"],
                                      horizon=split["horizon"], season_length=split["season_length"], tau=split["tau"])
    out = {**published, "shards": len(split["shards"])}
    # Keep the (small) split as the record of the run; drop the bulky intermediates.
    lake.write_json_atomic(_split_path(settings, run_id), {**split, "published": out})
    storage.delete_dir(_data(settings, run_id, ""))
    return out


def run_sharded(interval: DataInterval, settings: Settings, kind: str = "hourly", models: Sequence[str] = DEFAULT_MODELS,
                **split_options: Any) -> dict:
    """All steps in this process, shard after shard (what the DAG runs as separate tasks)."""
    shards = split_shards(interval, settings, kind, models, **split_options)
    run_id = engine.forecast_run_id(kind, interval)
    fit_global(run_id, settings)
    for shard in shards:
        forecast_shard(run_id, shard["shard"], settings)
    return reduce_shards(interval, settings, kind, models)


__all__ = ["MissingShards", "contiguous_chunks", "fit_global", "forecast_shard", "reduce_shards", "run_sharded", "shard_count",
           "split_shards"]
