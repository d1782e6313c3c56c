"""Hourly scoring from the model registry: the CURRENT version's fitted models, updated with the
observations since training (no refit), for the series it covers.

Why: refitting every hour is what made Prophet/ARIMA unaffordable in the scheduled runs. The
hourly forecast calls `score_registry` first; it returns forecasts (contract columns) for every
series the registry can score and the rest go through the engine as before. It never raises for
registry trouble: when the registry is missing, stale (`PEERSCALE_REGISTRY_MAX_AGE_HOURS`, default
48, between the training data's end and the run's) or incompatible (schema, state format,
library major.minor, horizon/season/τ/regressors, or a series whose last trained season was
restated since), the affected series fall back to the engine's cheap models, a warning is logged,
an alert is recorded (lake/alerts/<token>.registry.json) and the manifest's `registry` block says
why. `PEERSCALE_REGISTRY=off` turns registry scoring off (no alert).
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval, parse_utc
from pipeline.common.schemas import FORECAST_LEVELS
from pipeline.forecast import bands, model_state, prep, registry
from pipeline.forecast.base import QUANTILE_COLUMNS, future_index, output_columns, worker_count

log = logging.getLogger(__name__)
DEFAULT_MAX_AGE_HOURS = 48.0
OPTION_KEYS = ("horizon", "season_length", "freq")
CV_OFFSETS = "registry_cv_offsets"  # the band of versions trained before the band choice was stored


@dataclass
class RegistryScore:
    """Registry forecasts for the covered series, and the manifest's `registry` block."""

    forecasts: pd.DataFrame | None = None  # unique_id, ds, model, mean, quantile and interval columns
    covered: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    variance: dict[str, float] = field(default_factory=dict)  # CV error variance (for reconciliation)
    selection: dict[str, dict] = field(default_factory=dict)  # the manifest's per-series entries

    @property
    def version(self) -> str | None:
        return self.info.get("version")


def max_age_hours() -> float:
    text = os.environ.get("PEERSCALE_REGISTRY_MAX_AGE_HOURS", "").strip()
    try:
        value = float(text) if text else DEFAULT_MAX_AGE_HOURS
    except ValueError:
        raise ValueError(f"PEERSCALE_REGISTRY_MAX_AGE_HOURS={text!r} is not a number of hours") from None
    if value <= 0:
        raise ValueError(f"PEERSCALE_REGISTRY_MAX_AGE_HOURS must be positive, got {value}")
    return value


def enabled() -> bool:
    return os.environ.get("PEERSCALE_REGISTRY", "on").strip().lower() not in ("off", "0", "false", "no")


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def incompatibility(manifest: dict, options: Any, exog: list[str]) -> str | None:
    """options: anything with the run's horizon, season_length, freq and tau (EngineOptions, Prepared)."""
    if manifest.get("state_format") != model_state.STATE_FORMAT:
        return f"state format {manifest.get('state_format')} (this code reads {model_state.STATE_FORMAT})"
    for key in OPTION_KEYS:
        if str(manifest.get(key)) != str(getattr(options, key)):
            return f"{key} {manifest.get(key)} (this run: {getattr(options, key)})"
    if abs(float(manifest.get("tau", -1)) - float(options.tau)) > 1e-9:
        return f"trained for τ={manifest.get('tau')} (this run: {options.tau})"
    libs = model_state.library_versions()
    for dist, version in manifest.get("libraries", {}).items():
        if dist in libs and _major_minor(libs[dist]) != _major_minor(version):
            return f"{dist} {version} (installed: {libs[dist]})"
    if sorted(manifest.get("exog", [])) != sorted(exog):
        return f"regressors {manifest.get('exog')} (this run: {exog})"
    return None


def _fallback(status: str, reason: str, version: str | None = None) -> RegistryScore:
    """No registry scoring for this run: log it and say so in the manifest (the forecast stage's
    caller records the alert from the manifest: pipeline.ops.registry_alert)."""
    log.warning("model registry %s (%s): the hourly forecast falls back to the cheap models", status, reason)
    return RegistryScore(info={"status": status, "reason": reason, "version": version, "fallback": True})


def _fill(frame: pd.DataFrame, by_prob: dict[float, np.ndarray]) -> None:
    """The quantile and interval columns from quantiles by probability (rounded to 6 places)."""
    for col in QUANTILE_COLUMNS:
        q = round(float(col[1:]) / 100, 6)
        if q in by_prob:
            frame[col] = by_prob[q]
    for lv in FORECAST_LEVELS:
        frame[f"lo_{lv}"] = by_prob[round(0.5 - lv / 200, 6)]
        frame[f"hi_{lv}"] = by_prob[round(0.5 + lv / 200, 6)]


def _cv_offset_bands(frame: pd.DataFrame, entry: dict, steps: np.ndarray) -> None:
    """Versions trained before the band choice was stored: the entry's CV-error offsets per horizon bucket."""
    probs, offsets = entry["bands"]["probs"], np.asarray(entry["bands"]["offsets"], float)
    bucket = bands.horizon_bucket(steps, int(steps.max()) + 1, offsets.shape[1])
    mean = frame["mean"].to_numpy(float)
    by_prob = {round(p, 6): mean + offsets[i][bucket] for i, p in enumerate(probs)}
    _fill(frame, {0.5: mean, **by_prob})


def band_method(entry: dict) -> str:
    """The quantile method an entry scores with (the manifest's `quantile_method`)."""
    band = entry.get("band")
    return str(band["method"]) if band else CV_OFFSETS


def _bands(frame: pd.DataFrame, entry: dict, steps: np.ndarray, y: np.ndarray, m: int) -> None:
    """Fill the quantile and interval columns with the band the engine chose at training (entry
    `band`, see `engine.band_decisions`: the per-series method, the guardrail, the one-window
    rule), recomputed from `y` (the history now) where the method says so. Entries without a
    `band` (versions trained before it was stored) score with their CV-error offsets."""
    band = entry.get("band")
    if band is None:
        _cv_offset_bands(frame, entry, steps)
        return
    probs = [round(float(q), 6) for q in band["probs"]]
    mean = frame["mean"].to_numpy(float)

    def per_step(key: str) -> dict[float, np.ndarray] | None:
        if key not in band:
            return None
        table = np.asarray(band[key], float)  # prob × horizon bucket
        bucket = bands.horizon_bucket(steps, int(band["horizon"]), table.shape[1])
        return {q: table[i][bucket] for i, q in enumerate(probs)}

    pooled = {q: mean + v for q, v in (per_step("pooled") or {}).items()}
    values = bands.final_band(band["method"], y, mean, steps, m, probs, pooled, per_step("conformal"))
    if values is None and not pooled:
        raise model_state.StateError(f"band {band['method']!r} stores no pooled offsets to build it from")
    _fill(frame, values if values is not None else pooled)


def _finish(out: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Non-negative where the series never was negative, monotone quantiles, nested intervals."""
    numeric = [c for c in output_columns(FORECAST_LEVELS) if c not in ("unique_id", "ds")]
    values = np.nan_to_num(out[numeric].to_numpy(float))
    non_negative = out["unique_id"].map(history.groupby("unique_id")["y"].min() >= 0).fillna(True).to_numpy(bool)
    out[numeric] = np.where(non_negative[:, None], np.clip(values, 0.0, None), values)
    out[QUANTILE_COLUMNS] = np.maximum.accumulate(out[QUANTILE_COLUMNS].to_numpy(), axis=1)
    levels = sorted(FORECAST_LEVELS)
    for lv in levels:
        out[f"hi_{lv}"] = np.maximum(out[f"hi_{lv}"], out[f"lo_{lv}"])
    for a, b in itertools.pairwise(levels):
        out[f"lo_{b}"] = np.minimum(out[f"lo_{b}"], out[f"lo_{a}"])
        out[f"hi_{b}"] = np.maximum(out[f"hi_{b}"], out[f"hi_{a}"])
    return out


def _by_series(frame: pd.DataFrame | None, ids: Sequence[str]) -> dict[str, pd.DataFrame]:
    """`frame`'s rows of each of `ids`, grouped in one pass (a filter per series is quadratic in the fleet)."""
    if frame is None or frame.empty:
        return {}
    return dict(iter(frame[frame["unique_id"].isin(ids)].groupby("unique_id", sort=False)))


def _tail_matches(hist: pd.DataFrame | None, fp: dict) -> bool:
    """The series' last trained season, as this run sees it (`hist`: its history rows), hashes as it did at training."""
    if hist is None:
        return False
    ds = hist["ds"].to_numpy()
    start, end = np.datetime64(pd.Timestamp(fp["tail_start"])), np.datetime64(pd.Timestamp(fp["end"]))
    keep = (ds >= start) & (ds <= end)
    if not keep.any():
        return False
    sub_ds, sub_y = ds[keep], hist["y"].to_numpy(float)[keep]
    return registry.fingerprint(sub_ds, sub_y, len(sub_y))["tail_sha256"] == fp["tail_sha256"]


def is_global(name: str) -> bool:
    """A model stored once per version (`globals`), not per series: the GBM, the LSTM."""
    from pipeline.forecast.models import MODELS_GLOBAL

    return bool(MODELS_GLOBAL.get(name, False))


def _global_means(version: registry.Version, p: Any, ids: list[str], name: str) -> dict[tuple[str, str], np.ndarray]:
    """The stored global model `name` (no retraining: refit=False) forecasting `ids` from their extended series."""
    model = version.global_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = model.fit(p.inputs_for(name, ids)).predict(p.horizon, future=p.future)
    return {(u, name): g["mean"].to_numpy(float) for u, g in pred.groupby("unique_id", sort=False)}


def _future_factor(idx: pd.DataFrame, future: pd.DataFrame | None) -> np.ndarray:
    """The calendar uplift over the horizon (1 where none), as the engine multiplies it back in (one
    lookup for every row of `idx`: all series at once)."""
    if future is None or prep.EVENT_COLUMN not in future.columns:
        return np.ones(len(idx))
    f = future[["unique_id", "ds", prep.EVENT_COLUMN]].drop_duplicates(["unique_id", "ds"])
    f = f.assign(factor=prep.event_factor(f)).set_index(["unique_id", "ds"])["factor"]
    return f.reindex(pd.MultiIndex.from_frame(idx[["unique_id", "ds"]])).fillna(1.0).to_numpy()


#: per-series states costing tens of milliseconds to score (a Prophet state without compact
#: parameters: its JSON read back and a pandas-heavy predict, ~25-50 ms a series) are scored on a
#: process pool from this many series on; with them (`prophet_numpy`, ~1 ms) a pool costs more than it saves
PARALLEL_SCORING_MIN = 48
SLOW_STATES = frozenset({"prophet"})


Job = tuple[str, str, dict, pd.DataFrame, pd.DataFrame, int, int]  # uid, model, state, inputs, future, horizon, season
Scored = tuple[tuple[str, str], np.ndarray | None, str | None]  # (uid, model), means or None, why not


def _slow(job: Job) -> bool:
    """A job worth a process pool (`SLOW_STATES` without compact parameters)."""
    return job[1] in SLOW_STATES and not (isinstance(job[2], dict) and job[2].get("params"))


def _score_states(jobs: list[Job]) -> list[Scored]:
    """Score `(uid, model, state, frame, future, horizon, season)` jobs."""
    out: list[Scored] = []
    for uid, name, state, frame, fut, horizon, season in jobs:
        try:
            out.append(((uid, name), model_state.score_state(name, state, frame, horizon, season, fut), None))
        except (model_state.StateError, ValueError, np.linalg.LinAlgError) as exc:
            out.append(((uid, name), None, str(exc)[:200]))
    return out


def _run_jobs(jobs: list[Job], n_jobs: int) -> list[Scored]:
    """`_score_states` in this process, or in chunks on a process pool when the slow states are many."""
    slow = [j for j in jobs if _slow(j)]
    workers = worker_count(n_jobs, len(slow))
    if len(slow) < PARALLEL_SCORING_MIN or workers < 2:
        return _score_states(jobs)
    from joblib import Parallel, delayed

    chunks = [slow[i::workers] for i in range(workers)]
    results = Parallel(n_jobs=workers, backend="loky")(delayed(_score_states)(chunk) for chunk in chunks)
    return [*_score_states([j for j in jobs if not _slow(j)]), *itertools.chain.from_iterable(results)]


def _local_means(version: registry.Version, p: Any, ids: list[str], rows: dict[str, pd.DataFrame]
                 ) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, str]]:
    """Every per-series model of `ids` (a combination's members each) forward from its stored state,
    keyed (series, model): inputs and horizon regressors grouped once, the slow states on a process
    pool when they are many."""
    means: dict[tuple[str, str], np.ndarray] = {}
    failed: dict[str, str] = {}
    states = {u: registry.member_states(version.entries[u]) for u in ids}
    local = [u for u in ids if any(not is_global(n) for n in states[u])]
    futures = _by_series(p.future, local)
    inputs: dict[str, dict[str, pd.DataFrame]] = {}
    for name in dict.fromkeys(n for u in local for n in states[u] if not is_global(n)):
        inputs[name] = _by_series(p.inputs_for(name, [u for u in local if name in states[u]]), local)
    jobs: list[Job] = []
    for uid in local:
        fut = rows[uid] if p.future is None else rows[uid].merge(futures.get(uid, p.future.iloc[:0]), on=["unique_id", "ds"], how="left")
        for name, state in states[uid].items():
            if is_global(name):
                continue
            frame = inputs[name].get(uid)
            if frame is None:
                failed[uid] = f"no {name} inputs for {uid}"
                continue
            jobs.append((uid, name, state, frame, fut, p.horizon, p.season_length))
    for key, mean, why in _run_jobs(jobs, p.n_jobs):
        if mean is None:
            failed[key[0]] = f"{key[1]}: {why}"
        else:
            means[key] = mean
    return means, failed


def _entry_means(version: registry.Version, ids: list[str], member_means: dict[tuple[str, str], np.ndarray],
                 factor: dict[str, np.ndarray], failed: dict[str, str]) -> dict[str, np.ndarray]:
    """Each series' point forecast: its model's, or the mean of its combination's members', each
    with the calendar uplift where the model does not forecast events itself."""
    from pipeline.forecast.models import MODELS_HANDLE_EVENTS

    out: dict[str, np.ndarray] = {}
    for uid in ids:
        if uid in failed:
            continue
        parts = []
        for name in registry.member_states(version.entries[uid]):
            mean = member_means.get((uid, name))
            if mean is None:
                failed[uid] = f"{name}: no forecast"
                break
            mean = mean[: len(factor[uid])]
            parts.append(mean if MODELS_HANDLE_EVENTS.get(name, False) else mean * factor[uid])
        else:
            out[uid] = np.mean(parts, axis=0)
    return out


def _score_series(version: registry.Version, p: Any, ids: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Forecast every id from its entry; returns the rows and, per series that could not be scored, why."""
    idx = future_index(p.history[p.history["unique_id"].isin(ids)], p.horizon, p.freq)
    rows = dict(iter(idx.groupby("unique_id", sort=False)))
    member_means, failed = _local_means(version, p, ids, rows)
    members = {u: list(registry.member_states(version.entries[u])) for u in ids}
    for name in dict.fromkeys(n for u in ids for n in members[u] if is_global(n)):
        global_ids = [u for u in ids if name in members[u]]
        try:
            member_means.update(_global_means(version, p, global_ids, name))
        except (registry.RegistryError, ValueError, KeyError, RuntimeError) as exc:
            failed.update({u: f"global model {name}: {str(exc)[:200]}" for u in global_ids})
    factor = {u: g.to_numpy() for u, g in idx.assign(f=_future_factor(idx, p.future)).groupby("unique_id", sort=False)["f"]}
    means = _entry_means(version, ids, member_means, factor, failed)
    history = {u: g["y"].to_numpy(float) for u, g in _by_series(p.history, list(means)).items()}
    frames = []
    for uid in ids:
        if uid not in means:
            continue
        entry = version.entries[uid]
        frame = rows[uid].assign(mean=means[uid], model=entry["model"])
        try:
            _bands(frame, entry, np.arange(len(frame)), history[uid], p.season_length)
        except (model_state.StateError, KeyError, ValueError) as exc:
            failed[uid] = f"band: {str(exc)[:200]}"
            continue
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["unique_id", "ds", "model"])
    return out, failed


def score_registry(interval: DataInterval, settings: Settings, prepared: Any) -> RegistryScore:
    """Registry forecasts for the series the CURRENT version covers (prepared: the run's engine
    preparation, `engine.prepare`, or a function returning it: called only when a version is
    there to score). Missing / stale / incompatible → empty, with an alert."""
    if not enabled():
        return RegistryScore(info={"status": "off"})
    try:
        pointer = registry.current(settings.lake_root)
        if pointer is None:
            return _fallback("missing", "no promoted model version (the lake has no models/CURRENT): run `peerscale train`")
        version = registry.load(settings.lake_root, str(pointer["version"]))
    except registry.RegistryError as exc:
        return _fallback("missing", str(exc))
    p = prepared() if callable(prepared) else prepared
    m = version.manifest
    age_h = (interval.end - parse_utc(m["data_end"])).total_seconds() / 3600
    if age_h > max_age_hours():
        return _fallback("stale", f"trained on data up to {m['data_end']}, {age_h:.0f} h before this run "
                         f"(PEERSCALE_REGISTRY_MAX_AGE_HOURS={max_age_hours():g})", version.version)
    exog = [c for c in p.input_columns if c not in ("unique_id", "ds", "y")]
    why = incompatibility(m, p, exog)
    if why:
        return _fallback("incompatible", why, version.version)
    candidates = [u for u in p.long_ids if u in version.entries]
    hist = _by_series(p.history, candidates)
    restated = [u for u in candidates if not _tail_matches(hist.get(u), version.entries[u]["fingerprint"])]
    ids = [u for u in candidates if u not in set(restated)]
    out, failed = _score_series(version, p, ids)
    covered = sorted(set(out["unique_id"])) if len(out) else []
    if len(out):
        out = _finish(out, p.history)
    info = {"status": "partial" if restated or failed else "ok", "version": version.version, "data_end": m["data_end"],
            "code_version": m.get("code_version"),
            "age_hours": round(age_h, 2), "covered": len(covered), "fallback": bool(restated or failed),
            "restated_series": restated, "failed_series": failed,
            "not_in_registry": sorted(set(p.ids) - set(version.entries))}
    if restated or failed:
        log.warning("model registry %s: %d series restated since training, %d failed to score: the cheap models forecast them",
                    version.version, len(restated), len(failed))
    methods = {u: band_method(version.entries[u]) for u in covered}
    info["quantile_methods"] = {k: sum(v == k for v in methods.values()) for k in sorted(set(methods.values()))}
    if CV_OFFSETS in info["quantile_methods"]:
        log.warning("model registry %s predates the stored band choice: %d series score with CV-error offsets "
                    "(no guardrail) until the next training", version.version, info["quantile_methods"][CV_OFFSETS])
    variance = {u: float(version.entries[u]["error_var"]) for u in covered if version.entries[u].get("error_var") is not None}
    selection = {u: {"model": version.entries[u]["model"], "registry_version": version.version,
                     "pinball_at_tau": version.entries[u]["cv_pinball"], "quantile_method": methods[u],
                     **({"members": version.entries[u]["members"]} if version.entries[u].get("members") else {})} for u in covered}
    return RegistryScore(forecasts=out, covered=covered, info=info, variance=variance, selection=selection)


def uncovered(x: Any, reg: RegistryScore) -> Any:
    """The run's ForecastInputs without the series the registry scored (None when it scored them all);
    only hierarchies wholly outside the registry's series are left for the engine to reconcile."""
    if not reg.covered:
        return x
    done = set(reg.covered)
    rest = x.engine_input[~x.engine_input["unique_id"].isin(done)]
    if rest.empty:
        return None
    future = None if x.future is None else x.future[~x.future["unique_id"].isin(done)]
    hierarchy = {a: m for a, m in (x.hierarchy or {}).items() if a not in done and not done & set(m)}
    return replace(x, engine_input=rest, future=future, hierarchy=hierarchy)


def _contract(frame: pd.DataFrame) -> pd.DataFrame:
    numeric = [c for c in output_columns(FORECAST_LEVELS) if c not in ("unique_id", "ds")]
    out = frame.rename(columns={"unique_id": "series_id"})
    out["ds"] = pd.to_datetime(out["ds"]).dt.tz_localize("UTC")
    return out[["series_id", "ds", "model", *numeric]]


def combine(forecasts: pd.DataFrame | None, selection: dict[str, dict], info: dict[str, Any], reg: RegistryScore,
            hierarchy: dict[str, list[str]] | None) -> tuple[pd.DataFrame, dict[str, dict], dict[str, Any]]:
    """The engine's result (of the uncovered series) plus the registry's forecasts (hierarchies wholly
    scored from the registry reconciled with its CV error variances); the manifest says which version."""
    info = {**info, "registry": reg.info}
    if not reg.covered:
        return forecasts, {u: {**s, "registry_version": None} for u, s in selection.items()}, info
    reg_rows = reg.forecasts if reg.forecasts is not None else pd.DataFrame()
    own = {a: m for a, m in (hierarchy or {}).items() if a in reg.covered and set(m) <= set(reg.covered)}
    if own:
        from pipeline.forecast.reconcile import reconcile_wls

        reg_rows = reconcile_wls(reg_rows.rename(columns={"unique_id": "series_id"}), own, reg.variance).rename(
            columns={"series_id": "unique_id"})
        info["registry"] = {**reg.info, "reconciled": sorted(own)}
    parts = [_contract(reg_rows)] + ([forecasts] if forecasts is not None and len(forecasts) else [])
    merged = pd.concat(parts, ignore_index=True).sort_values(["series_id", "ds"]).reset_index(drop=True)
    sel = {u: {**s, "registry_version": None} for u, s in selection.items()}
    sel.update(reg.selection)
    return merged, dict(sorted(sel.items())), info
