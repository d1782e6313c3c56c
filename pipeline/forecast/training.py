"""Daily training: fit the model zoo per series, choose by pinball at τ, write a registry version.

Why a separate path from the hourly engine: the hourly run should score, not refit. Training runs
once a day on the hourly series (the daily DAG's longer history), in four steps that the daily DAG
maps like the hourly forecast (pipeline.forecast.shards):

- `train_split`: the engine's inputs and preparation (`engine.load_inputs`, `engine.prepare`: the
  same regular grids, uplifts and cleaning the hourly run uses), split into shards of series;
- `train_global`: which candidate regressors (every telemetry column) each model keeps, decided
  once by cross-validation (pipeline.forecast.regressors; per-series models on a sample of series),
  then each global model (the GBM; the LSTM where PyTorch is installed) cross-validated and fitted
  once on every series (a per-shard one would be a different model on each), stored in the version;
- `train_shard` (mapped): every local model cross-validated on the shard's series (rolling origin,
  `engine.cross_validate_model`; the statsforecast models fitted once and moved forward,
  `TRAIN_CV_REFIT`), each series' model or combination (the mean of its two best models,
  `combination_cv`) chosen by pinball loss at τ of its conformal τ-quantile (ties go to the
  simpler model, in `ZOO` order, a single model before a combination), the choice fitted on the full series
  and its state stored with the CV scores, the band the engine would choose for it
  (`engine.band_decisions`: per-series method by CV pinball, the seasonal-naive guardrail, the
  one-window rule; seasonal naive is cross-validated for it even outside the zoo; the pooled
  calibration is fitted on the shard's CV errors, where the hourly engine pools the run's), the older band
  offsets (empirical quantiles of the choice's CV errors per horizon bucket: what versions before
  the band choice scored with, kept so older code can read new versions) and the fingerprint of
  its training data;
- `train_finalize`: the manifest (completeness-checked), then CURRENT moved when `promote`.

Series under two seasons are not trained (the hourly run gives them the pooled profile).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common import lake, storage
from pipeline.common.config import REPO_ROOT, Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import FORECAST_LEVELS, FORECAST_QUANTILES
from pipeline.forecast import bands, engine, model_state, registry, regressors
from pipeline.forecast.shards import contiguous_chunks, shard_count

GLOBAL = "global_gbm"
ENSEMBLE = engine.ENSEMBLE
#: a series' combination is the mean of its this many best models by CV pinball at τ
COMBINATION_SIZE = 2
COMBINATION_ENV = "PEERSCALE_TRAIN_COMBINATION"  # "off": every series gets a single model (no combination scored)
#: the zoo, simplest first (ties go to the earlier model); Prophet and the LSTM join where installed
BASE_ZOO: tuple[str, ...] = ("seasonal_naive", "seasonal_mean", "auto_ets", "arima", "mstl", GLOBAL)
N_BUCKETS = engine.N_BUCKETS
MIN_BUCKET_ERRORS = 8  # a horizon bucket with fewer CV errors uses the series' errors of every step
TRAIN_WINDOWS = engine.MAX_CV_WINDOWS  # rolling origins per series
#: the statsforecast models are fitted once per series at the first origin and moved forward through
#: the later windows (parameters fixed, state updated): their CV then scores them the way the hourly
#: runs use the registry, and ARIMA's order search runs once instead of once per origin (3.1 → ~1 s
#: a series at 28 days of history: bench/RESULTS.md, "Train daily, score hourly"). Prophet refits
#: at each origin (`models.ProphetModel._cross_validate` says why)
TRAIN_CV_REFIT = False
#: series the per-series models' regressor decision is cross-validated on (`decide_regressors`)
REGRESSOR_SAMPLE = 64


TRAIN_MODELS_ENV = "PEERSCALE_TRAIN_MODELS"  # comma-separated zoo of the daily training (unset: the whole zoo)


def default_zoo() -> tuple[str, ...]:
    """The zoo the daily DAG and `peerscale train` fit: PEERSCALE_TRAIN_MODELS when set (a smaller,
    faster zoo for a large fleet or a test cluster), else every model: Prophet where it is
    installed, the LSTM where PyTorch is (`pip install 'peerscale[deep]'`; trained once over every
    series in `train_global`, like the GBM)."""
    from pipeline.forecast.models import MODELS

    text = os.environ.get(TRAIN_MODELS_ENV, "").strip()
    if not text:
        optional = tuple(n for n, dist in (("prophet", "prophet"), ("lstm", "torch")) if importlib.util.find_spec(dist))
        return (*BASE_ZOO, *optional)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ValueError(f"{TRAIN_MODELS_ENV}={text[:200]!r}: unknown models {unknown}; known: {', '.join(sorted(MODELS))}")
    return names


def band_probs() -> list[float]:
    """Every probability the forecast contract carries (quantile columns and interval ends)."""
    return sorted({round(q, 6) for q in (*FORECAST_QUANTILES, *[0.5 + s * lv / 200 for lv in FORECAST_LEVELS for s in (-1, 1)])})


def code_version() -> str:
    """The git commit of a checkout (the installed version otherwise): recorded, shown, diffed."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from pipeline import __version__

    return str(__version__)


# ---- choice and bands ----------------------------------------------------------------------------

def band_offsets(errors: np.ndarray, steps: np.ndarray, horizon: int, probs: list[float]) -> list[list[float]]:
    """Per probability, per horizon bucket: the conformal quantile of the CV errors (finite-sample adjusted)."""
    bucket = bands.horizon_bucket(steps, horizon, N_BUCKETS)
    out = []
    for p in probs:
        row = []
        for b in range(N_BUCKETS):
            e = errors[bucket == b]
            e = e if len(e) >= MIN_BUCKET_ERRORS else errors
            row.append(float(np.quantile(e, bands.conformal_level(p, len(e)))) if len(e) else 0.0)
        out.append(row)
    return out


# ---- the steps -----------------------------------------------------------------------------------

def _dump(uri: str, obj: Any) -> None:
    storage.write_bytes_atomic(uri, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _load(uri: str) -> Any:
    return pickle.loads(storage.read_bytes(uri))  # this training run's own intermediates, in its version dir


def _work(settings: Settings, version: str, name: str) -> str:
    return storage.join(registry.work_dir(settings.lake_root, version), name)


def train_split(interval: DataInterval, settings: Settings, models: tuple[str, ...] | None = None, *, version: str | None = None,
                series_per_shard: int | None = None, max_shards: int | None = None) -> list[dict]:
    """Prepare the training inputs once, split the series into shards; one descriptor per shard."""
    zoo = tuple(models or default_zoo())
    x = engine.load_inputs(interval, settings, "hourly", zoo)
    # combine=False: the engine's fleet-wide ensemble; training scores each series' own (`combination_cv`)
    options = replace(x.options, n_windows=TRAIN_WINDOWS, refit_global=True, combine=False, cv_refit=TRAIN_CV_REFIT)
    p = engine.prepare(x.engine_input, options, future=x.future, hierarchy=x.hierarchy)
    return split_prepared(p, settings, {"data_start": x.summary()["start"], "data_end": interval.end.isoformat(),
                                        "hierarchy": x.hierarchy}, version=version, series_per_shard=series_per_shard,
                          max_shards=max_shards)


def split_prepared(p: Any, settings: Settings, data: dict, *, version: str | None = None, series_per_shard: int | None = None,
                   max_shards: int | None = None) -> list[dict]:
    """`train_split` from a preparation in hand (`engine.prepare`); `data`: data_start, data_end, hierarchy."""
    version = version or registry.new_version_id()
    trainable = p.long_ids
    shards = contiguous_chunks(trainable, shard_count(len(trainable), series_per_shard, max_shards)) if trainable else []
    _dump(_work(settings, version, "prepared.pkl"), p)
    meta = {"kind": "hourly", "models": list(p.names), "horizon": p.horizon, "season_length": p.season_length, "freq": p.freq,
            "tau": p.tau, "n_windows": p.n_windows, "window": p.window, **data,
            "exog": [c for c in p.input_columns if c not in ("unique_id", "ds", "y")],
            "code_version": code_version(), "state_format": model_state.STATE_FORMAT, "libraries": model_state.library_versions(),
            "shards": shards, "trained_ids": trainable, "short_series": p.short}
    lake.write_json_atomic(_work(settings, version, "split.json"), meta)
    return [{"version": version, "shard": i, "shards": len(shards), "series": len(ids)} for i, ids in enumerate(shards)]


def global_names(names: Any) -> list[str]:
    """The global models of a zoo (one model over every series: the GBM, the LSTM)."""
    return [n for n in names if engine.MODELS_GLOBAL.get(n, False)]


#: the run-wide jobs of `train_global`, costliest first (the order they start in on the processes)
REGRESSOR_JOB = "regressors"
#: global models stored as cross-validation trained them (before the first origin) instead of
#: trained again on the full history: the LSTM (~80 s a training on one core, whatever the fleet
#: size; its CV then scores the very network the hourly runs use, on inputs up to the run's hour)
KEEP_CV_FIT = frozenset({"lstm"})
GLOBAL_JOB_ORDER = ("lstm", REGRESSOR_JOB, GLOBAL)


def train_global(version: str, settings: Settings, workers: int | None = None) -> dict:
    """The run-wide step before the shards: which candidate regressors each per-series model keeps
    (`decide_regressors`), and each global model (the GBM; the LSTM where PyTorch is installed)
    cross-validated and fitted once on every trainable series (the GBM's regressor decision
    included), stored with its CV frame. A global model trained per shard would be a different
    model on each. The jobs are independent: they run side by side on `workers` processes
    (default: one per core; the shards wait for this step, so it has the machine to itself)."""
    split = lake.read_json(_work(settings, version, "split.json"))
    names = global_names(split["models"]) if split["trained_ids"] else []
    jobs = sorted([REGRESSOR_JOB, *names], key=lambda j: GLOBAL_JOB_ORDER.index(j) if j in GLOBAL_JOB_ORDER else 0)
    n = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if n == 1:
        runs = [_global_job(version, settings, job, os.cpu_count() or 1) for job in jobs]
    else:
        from joblib import Parallel, delayed

        runs = Parallel(n_jobs=n, backend="loky")(delayed(_global_job)(version, settings, job, 1) for job in jobs)
    models = [r for r in runs if r["name"] != REGRESSOR_JOB]
    return {"version": version, "global": [r["name"] for r in models if "error" not in r],
            "errors": {r["name"]: r["error"] for r in models if "error" in r}}


def _global_job(version: str, settings: Settings, job: str, cores: int) -> dict:
    """One job of `train_global` (in its own process when they run side by side) on `cores` cores."""
    p = _load(_work(settings, version, "prepared.pkl"))
    if job == REGRESSOR_JOB:
        t0 = time.perf_counter()
        lake.write_json_atomic(_work(settings, version, "regressors.json"), decide_regressors(p))
        return {"name": job, "seconds": round(time.perf_counter() - t0, 3)}
    if job == "lstm":  # torch's threads: the cores this job has
        p.params[job] = {"n_threads": cores, **p.params.get(job, {})}
    return _train_global_model(replace(p, n_jobs=cores), job, version, settings)


def _train_global_model(p: Any, name: str, version: str, settings: Settings) -> dict:
    """One global model: CV on every long series, trained on them all, stored in the version."""
    t0 = time.perf_counter()
    run = engine.cross_validate_model(p, name)
    if run.cv is None:
        return {"name": name, "error": run.error or f"{name}: no cross-validation"}
    kept = name in KEEP_CV_FIT and run.cv_instance is not None
    model = run.cv_instance if kept else p.model(name)
    model.params["refit"] = not kept
    model.fit(p.inputs_for(name, p.long_ids)).predict(p.horizon, future=p.future, levels=p.levels)  # trains (unless kept)
    model.params["refit"] = False  # scoring moves the origin only
    model._history = None  # the training data is not part of the model
    ref = registry.write_global(settings.lake_root, version, name, model)
    _dump(_work(settings, version, f"global-cv-{name}.pkl"), run.cv[["unique_id", "ds", "cutoff", "window", "step", "y", "mean"]])
    lake.write_json_atomic(_work(settings, version, f"global-{name}.json"), {**ref, "seconds": round(time.perf_counter() - t0, 3),
                                                                           "regressors": run.regressors})
    return {"name": name, "seconds": run.seconds}


def regressor_sample(ids: list[str], size: int = REGRESSOR_SAMPLE) -> list[str]:
    """Up to `size` series spread evenly over the sorted ids (every kind of series, deterministic)."""
    return regressors.even_sample(ids, size)


def decide_regressors(p: Any) -> dict[str, dict]:
    """Per per-series model that reads exogenous columns (Prophet): its candidate regressors kept
    or not, by cross-validating both ways once on `regressor_sample` — one decision per version
    that every shard applies, instead of a second CV of every series on every shard."""
    decisions = {}
    names = [n for n in p.names if n not in global_names(p.names) and engine.MODELS_USE_EXOG.get(n, False)]
    if not names or not p.regressor_candidates or not p.long_ids:
        return {}
    sample = replace(p.subset(regressor_sample(p.long_ids)), regressors={}, n_jobs=1)
    for name in names:
        run = engine.cross_validate_model(sample, name)
        if run.regressors is not None:
            decisions[name] = {**run.regressors, "sample_series": len(sample.long_ids), "seconds": run.seconds}
    return decisions


def combination_cv(cv: dict[str, pd.DataFrame], pins: dict[str, pd.Series], ids: list[str]
                   ) -> tuple[dict[str, list[str]], pd.DataFrame | None]:
    """Per series of `ids`: its combination's members (its `COMBINATION_SIZE` best models by CV
    pinball at τ, best first; ties in zoo order) and the combination's CV rows, the mean of the
    members' forecasts on the windows every member forecast. Per series, not the engine's
    fleet-wide best models: training fits and stores each series' own models anyway, and a
    series' two best are the ones whose errors its own CV can show to cancel."""
    order = list(pins)
    members: dict[str, list[str]] = {}
    if not combination_enabled():
        return members, None
    for uid in ids:
        ranked = sorted((n for n in order if uid in pins[n].index and np.isfinite(pins[n][uid])),
                        key=lambda n: (round(float(pins[n][uid]), engine.SCORE_DECIMALS), order.index(n)))
        if len(ranked) >= COMBINATION_SIZE:
            members[uid] = ranked[:COMBINATION_SIZE]
    groups: dict[tuple[str, ...], list[str]] = {}
    for uid, names in members.items():
        groups.setdefault(tuple(names), []).append(uid)
    key = ["unique_id", "ds", "window"]
    frames = []
    for group, uids in groups.items():
        merged = None
        for name in group:
            f = cv[name]
            cols = key + (["cutoff", "step", "y", "mean"] if merged is None else ["mean"])
            part = f.loc[f["unique_id"].isin(uids), cols].rename(columns={"mean": name})
            merged = part if merged is None else merged.merge(part, on=key, how="inner")
        if merged is not None and len(merged):
            frames.append(merged.assign(mean=merged[list(group)].mean(axis=1)).drop(columns=list(group)))
    return members, (pd.concat(frames, ignore_index=True) if frames else None)


def combination_enabled() -> bool:
    text = os.environ.get(COMBINATION_ENV, "on").strip().lower()
    if text not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        raise ValueError(f"{COMBINATION_ENV}={text[:40]!r}: use on or off")
    return text in ("on", "1", "true", "yes")


def _fit_states(p: Any, uid: str, names: list[str]) -> dict[str, Any]:
    """Each of `names` fitted on the full series `uid` (a global model's state is None: the version stores it)."""
    return {name: None if engine.MODELS_GLOBAL.get(name, False)
            else model_state.fit_state(name, p.inputs_for(name, [uid]), p.season_length, p.freq, p.params.get(name)) for name in names}


def _series_entry(p: Any, uid: str, scores: dict[str, float], cv: dict[str, pd.DataFrame], probs: list[float],
                  members: list[str] | None = None) -> dict:
    """Fit the best-scoring model (or combination of `members`) of `uid` that fits, falling back
    down the ranking, and describe it."""
    order = [*p.names, ENSEMBLE]
    ranked = sorted(scores, key=lambda n: (round(scores[n], engine.SCORE_DECIMALS), order.index(n)))
    hist = p.history[p.history["unique_id"] == uid]
    for name in ranked:
        if name == ENSEMBLE and not members:
            continue
        try:
            states = _fit_states(p, uid, list(members or []) if name == ENSEMBLE else [name])
        except (ValueError, np.linalg.LinAlgError, RuntimeError):
            continue
        rows = cv[name][cv[name]["unique_id"] == uid]
        errors = rows["y"].to_numpy(float) - rows["mean"].to_numpy(float)
        entry = {"model": name, "state": states if name == ENSEMBLE else states[name],
                 "cv_pinball": {k: round(v, 6) for k, v in scores.items()},
                 "cv_rows": len(rows), "error_var": float(np.var(errors)) if len(errors) > 1 else None,
                 "bands": {"probs": probs, "offsets": band_offsets(errors, rows["step"].to_numpy(), p.horizon, probs)},
                 "fingerprint": registry.fingerprint(hist["ds"].to_numpy(), hist["y"].to_numpy(float), p.season_length)}
        if name == ENSEMBLE:
            entry["members"] = list(states)
        return entry
    raise RuntimeError(f"no model of {ranked} could be fitted on {uid}")


def train_shard(version: str, shard: int, settings: Settings) -> dict:
    """Cross-validate the zoo on one shard, choose per series, fit and store the choices (one part)."""
    split = lake.read_json(_work(settings, version, "split.json"))
    ids = split["shards"][shard]
    # one process per shard: the shards are what runs in parallel (the DAG's mapped tasks, or
    # `run_shards`' processes); a process pool inside each would only fight them for the cores
    p = replace(_load(_work(settings, version, "prepared.pkl")).subset(ids), n_jobs=1, regressors={})
    decided = _work(settings, version, "regressors.json")
    for name, decision in (lake.read_json(decided) if storage.exists(decided) else {}).items():
        p.regressors[name] = list(decision["used"])  # the version's decision (train_global); else the shard decides
    cv: dict[str, pd.DataFrame] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    decisions: dict[str, dict] = {}  # which candidate exogenous columns each model kept on this shard
    for name in p.scored_names:  # the zoo and seasonal naive (the band choice's yardstick)
        if engine.MODELS_GLOBAL.get(name, False):  # cross-validated once in train_global
            path = _work(settings, version, f"global-cv-{name}.pkl")
            if storage.exists(path):
                frame = _load(path)
                cv[name] = frame[frame["unique_id"].isin(ids)]
            continue
        run = engine.cross_validate_model(p, name)
        seconds[name] = run.seconds
        if run.regressors is not None:
            decisions[name] = run.regressors
        if run.cv is not None:
            cv[name] = run.cv
        elif run.error:
            errors[name] = run.error
    pins = {name: engine.conformal_pinball(f, p.tau) for name, f in cv.items() if not f.empty and name in p.names}
    members, combined = combination_cv(cv, pins, ids)
    if combined is not None:
        cv[ENSEMBLE] = combined
        pins[ENSEMBLE] = engine.conformal_pinball(combined, p.tau)
    probs = band_probs()
    entries = {}
    for uid in ids:
        scores = {n: float(s[uid]) for n, s in pins.items() if uid in s.index and np.isfinite(s[uid])}
        if scores:
            t0 = time.perf_counter()
            entries[uid] = _series_entry(p, uid, scores, cv, probs, members.get(uid))
            final = entries[uid]["model"]
            seconds[f"{final}:final_fit"] = seconds.get(f"{final}:final_fit", 0.0) + time.perf_counter() - t0
    for uid, band in engine.band_decisions(p, {u: e["model"] for u, e in entries.items()}, cv).items():
        entries[uid]["band"] = band  # the engine's band choice for the stored model (scoring applies it)
    ref = registry.write_part(settings.lake_root, version, f"shard-{shard:05d}", entries)
    chosen: dict[str, int] = {}
    bands_chosen: dict[str, int] = {}
    combinations: dict[str, int] = {}
    for entry in entries.values():
        chosen[entry["model"]] = chosen.get(entry["model"], 0) + 1
        bands_chosen[entry["band"]["method"]] = bands_chosen.get(entry["band"]["method"], 0) + 1
        if entry.get("members"):
            pair = "+".join(sorted(entry["members"]))
            combinations[pair] = combinations.get(pair, 0) + 1
    lake.write_json_atomic(_work(settings, version, f"part-{shard:05d}.json"), {**ref, "errors": errors, "chosen": chosen,
                                                                           "bands_chosen": bands_chosen,
                                                                           "combinations": combinations,
                                                                           "seconds": {k: round(v, 3) for k, v in seconds.items()},
                                                                           "regressors": decisions,
                                                                           "skipped": [u for u in ids if u not in entries]})
    return {"version": version, "shard": shard, "series": len(entries), "errors": errors}


def train_finalize(version: str, settings: Settings, promote: bool = True) -> dict:
    """Check every shard wrote its part, write the manifest, and (optionally) promote the version."""
    split = lake.read_json(_work(settings, version, "split.json"))
    parts = []
    for i in range(len(split["shards"])):
        path = _work(settings, version, f"part-{i:05d}.json")
        if not storage.exists(path):
            raise registry.RegistryError(f"model version {version}: shard {i} has not finished (no {path})")
        parts.append(lake.read_json(path))
    refs = [_work(settings, version, f"global-{name}.json") for name in global_names(split["models"])]
    globals_ = [lake.read_json(ref) for ref in refs if storage.exists(ref)]
    skipped = {u for part in parts for u in part.get("skipped", [])}  # no CV evidence: the hourly engine keeps them
    expected = sorted(set(split["trained_ids"]) - skipped)  # every other trainable series must have an entry
    chosen: dict[str, dict[str, int]] = {"chosen": {}, "bands_chosen": {}, "combinations": {}}
    for part in parts:
        for key, counts in chosen.items():
            for name, n in part.get(key, {}).items():
                counts[name] = counts.get(name, 0) + n
    meta = {k: v for k, v in split.items() if k not in ("shards", "trained_ids")}
    meta.update({key: dict(sorted(counts.items())) for key, counts in chosen.items()})
    decided = _work(settings, version, "regressors.json")
    decisions = lake.read_json(decided) if storage.exists(decided) else {}
    meta["seconds"] = model_seconds(parts, globals_, decisions)
    meta["regressors"] = regressor_summary([decisions,
                                            *[{g["name"]: g["regressors"]} for g in globals_ if g.get("regressors")],
                                            *[part.get("regressors", {}) for part in parts]])
    meta["trained_at"] = datetime.now(UTC).isoformat()
    meta["skipped_series"] = sorted(skipped)
    meta["shard_errors"] = {str(i): p["errors"] for i, p in enumerate(parts) if p.get("errors")}
    manifest = registry.finalize(settings.lake_root, version, meta, parts, globals_, expected)
    pointer = registry.promote(settings.lake_root, version) if promote else None
    return {"version": version, "series": len(manifest["index"]), "chosen": manifest["chosen"], "promoted": pointer is not None}


def regressor_summary(decisions: list[dict[str, dict]]) -> dict[str, dict]:
    """Per model: the candidate exogenous columns, on how many shards (1 for a global model) CV
    decided, and how many of those kept each column (pipeline.forecast.regressors)."""
    out: dict[str, dict] = {}
    for by_model in decisions:
        for name, d in by_model.items():
            entry = out.setdefault(name, {"candidates": [], "decisions": 0, "used": {}})
            entry["candidates"] = sorted({*entry["candidates"], *d.get("candidates", [])})
            entry["decisions"] += 1
            for col in d.get("used", []):
                entry["used"][col] = entry["used"].get(col, 0) + 1
            for key in ("cv_scaled_pinball", "sample_series"):  # a version-wide decision: its evidence
                if key in d and entry["decisions"] == 1:
                    entry[key] = d[key]
    return dict(sorted(out.items()))


def model_seconds(parts: list[dict], globals_: list[dict], decisions: dict[str, dict] | None = None) -> dict[str, float]:
    """Seconds spent per model over every shard (CV of the zoo; `NAME:final_fit`: fitting the
    series that chose it on their full history; `NAME:regressors`: its regressor decision on the
    sample) and the global model's CV and fit: where a version's training time went, summed over
    processes (not wall time)."""
    total: dict[str, float] = {f"{name}:regressors": float(d["seconds"]) for name, d in (decisions or {}).items() if "seconds" in d}
    for part in parts:
        for name, sec in part.get("seconds", {}).items():
            total[name] = total.get(name, 0.0) + float(sec)
    for ref in globals_:
        if "seconds" in ref:
            total[ref["name"]] = total.get(ref["name"], 0.0) + float(ref["seconds"])
    return {k: round(v, 2) for k, v in sorted(total.items())}


def run_shards(version: str, shards: list[dict], settings: Settings, workers: int | None = None) -> list[dict]:
    """Every shard of `version`, on `workers` processes (default: one per core; 1 = in this process),
    as the DAG's mapped `train_shard` tasks would on that many workers."""
    n = max(1, min(workers or os.cpu_count() or 1, len(shards)))
    if n == 1:
        return [train_shard(version, s["shard"], settings) for s in shards]
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=n, backend="loky")(delayed(train_shard)(version, s["shard"], settings) for s in shards))


def train(interval: DataInterval, settings: Settings, models: tuple[str, ...] | None = None, *, promote: bool = True,
          series_per_shard: int | None = None, workers: int | None = None) -> dict:
    """Every step in this process (shards on `workers` processes): what the daily DAG runs as mapped tasks."""
    shards = train_split(interval, settings, models, series_per_shard=series_per_shard)
    if not shards:
        raise ValueError(f"no series long enough to train on for the run ending {interval.end.isoformat()}: ingest more history")
    version = shards[0]["version"]
    train_global(version, settings)
    run_shards(version, shards, settings, workers)
    return train_finalize(version, settings, promote=promote)
