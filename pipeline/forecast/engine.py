"""The Predictive Demand Engine: cross-validate, select or combine, calibrate, reconcile.

`run_engine(history, EngineOptions(...))` (or `select_and_forecast` with the same options as plain
arguments) turns long-format history (`unique_id, ds, y` + optional exogenous columns) into
forecasts in the forecast contract:

1. **Prepare**: a regular grid per series (gaps interpolated), one-off bursts cleaned for the
   models (scores use raw actuals), known calendar uplifts divided out (and multiplied back into
   the forecast) for models that do not model events themselves.
2. **Rolling-origin cross-validation**: every model forecasts the last `n_windows` windows of
   `horizon` steps, each fit strictly before its origin (up to four windows; up to two weeks of
   them when no cross-validated global model is reused for the final forecast, the windows before
   a series' last level shift has settled left out).
3. **Selection and combination**: per series, every model and the `ensemble` (mean of the
   non-naive models) is scored by pinball loss at the plan's τ and by MASE, each relative to
   seasonal naive; the lowest mean of the two wins (ties go to the earlier model).
4. **Calibration**: quantiles and intervals are chosen per series (pipeline.forecast.bands):
   the pooled scale-location conformal calibration (the chosen forecast's out-of-sample errors,
   normalised per series and per horizon bucket), the series' own CV errors, the chosen point
   plus the series' own seasonal differences over its current regime, their average, and the
   seasonal-naive empirical quantile are each scored out of
   sample on the CV windows (pinball at τ and its neighbours); the best is kept, and a series
   where nothing beats seasonal naive (or that has no CV evidence) gets seasonal naive's.
5. **Short series** (under two seasons) get the pooled profile of their group (e.g. all pairs)
   scaled to their own level. **Hierarchies** (pairs → totals) are reconciled with WLS.

The choice, its scores and the calibration are returned for the run manifest.
"""

from __future__ import annotations

import functools
import itertools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import HOUR, DataInterval
from pipeline.common.parallel import fork_map
from pipeline.common.schemas import FORECAST, FORECAST_LEVELS, FORECAST_QUANTILES, RESOURCE_TYPES, pair_series_id, region_series_id
from pipeline.features.build import read_features
from pipeline.forecast import bands, prep, regressors
from pipeline.forecast.base import worker_count
from pipeline.forecast.committed import apply_committed, fresh_history
from pipeline.forecast.models import (
    MODEL_MIN_SEASONS,
    MODELS,
    MODELS_GLOBAL,
    MODELS_HANDLE_EVENTS,
    MODELS_ROBUST,
    MODELS_USE_EXOG,
    QUANTILE_COLUMNS,
    NotEnoughData,
    future_index,
    output_columns,
)
from pipeline.forecast.quantiles import quantile_column

#: "auto": the models that earned their place in the backtests (bench/): seasonal naive (the floor),
#: the seasonal mean (robust on noisy counts), the global GBM (best on M4 Hourly and on the
#: samples), and their combination. MSTL, AutoETS, ARIMA and Prophet scored worse than seasonal
#: naive on the sample data's cross-validation at 2–5× the cost; ask for them by name.
AUTO: tuple[str, ...] = ("seasonal_naive", "seasonal_mean", "global_gbm")
#: Prophet (calendar as holidays, lagged telemetry as regressors) is the best single model on the
#: samples' cross-validation but costs ~6 series/s: add it with `models=("auto", "prophet")`.
AUTO_POINT_BUDGET = 60_000  # series × points up to which global models are refit after cross-validation
DEFAULT_MODELS: tuple[str, ...] = ("auto",)
ENSEMBLE = "ensemble"
FACTOR_COLUMN = "_factor"  # 1 + the known calendar uplift, per history row
#: (outliers cleaned, uplift divided out) → the `Prepared.history` column holding that model input's `y`
INPUT_Y: dict[tuple[bool, bool], str] = {(False, False): "y", (True, False): "_y_cleaned",
                                         (False, True): "_y_adjusted_raw", (True, True): "_y_adjusted"}
DERIVED_COLUMNS = (FACTOR_COLUMN, *(c for c in INPUT_Y.values() if c != "y"))  # history columns no model reads
POOLED = "pooled_profile"
BASELINE = "seasonal_naive"
HOURS_PER_DAY, DAYS_PER_WEEK = 24, 7  # the seasons of the hourly and the daily run
N_BUCKETS = 4  # horizon buckets the calibration sizes its bands for (errors grow with the step)

#: a series leaves the run's best model only for one whose relative score is this much lower on it
#: (per-series choices on a few windows are noisy)
DEFAULT_SWITCH_MARGIN = 0.15
DEFAULT_ENSEMBLE_SIZE = 2  # the ensemble averages this many of the best non-naive models
#: series shorter than this many seasons cannot be cross-validated: they get the pooled profile
SHORT_SERIES_SEASONS = 2
#: k ≥ 2 cross-validation windows once the longest series holds k windows and this many seasons
TWO_WINDOW_SEASONS = 3
#: up to this many windows: the per-series band choice (pipeline.forecast.bands) needs the evidence
#: (two windows left it choosing on 48 errors; four cut M4's under-coverage and the traces' worst case);
#: a series holding fewer chooses only its point
MAX_CV_WINDOWS = 4
#: ... and up to this many seasons of windows when no cross-validated global model is reused for the
#: final forecast (it is refit on the full history, or there is none): more origins cost a few cheap
#: forecasts and give the choices weeks of errors instead of four windows. A reused global model
#: would be trained that much further back (M4 OWA 0.420 → 0.431 at 6 windows).
EVIDENCE_SEASONS = 14
#: a series' band leaves seasonal naive's point only on this many CV windows: on one (24 errors at
#: h = 24) the better of two points is a coin flip (bench/RESULTS.md: Alibaba disk_io at 91 h of
#: history took the seasonal mean's point on one window and lost 1.29× the baseline's pinball)
MIN_POINT_WINDOWS = 2
#: beyond the last MAX_CV_WINDOWS, a window counts only if its origin is this many seasons into the
#: series' current regime (after its last level shift): the seasonal mean averages four seasons, so
#: earlier windows score the transition, and their errors would widen every CV-error band for good
SETTLE_SEASONS = 4
#: a fleet with more long series than this decides a model's regressors (pipeline.forecast.regressors)
#: on this many spread over it, both ways, then cross-validates every series once with the columns
#: kept: at 100 regions (10,800 series) the GBM's second full CV was ~29 s of the hourly run, and
#: which columns help is a property of the fleet that a fifth of it shows (the registry's training
#: decides its per-series models' on a sample too: pipeline.forecast.training.regressor_sample)
REGRESSOR_DECISION_SERIES = 2_000
#: series a forked worker takes at least before the band choice spreads over the cores (each takes
#: ~2-4 ms; a worker costs ~20 ms to fork and feed)
PARALLEL_BAND_SERIES = 100
CALIBRATION_SHRINK = 48.0  # pseudo-errors pulling a series' own error size towards the pool's
MIN_ERROR_SIZE = 1e-12  # floor on a series' error size: a perfect series must not divide by zero
ZERO_LOSS = 1e-12  # a loss this small is a perfect forecast (relative scores divide by it)
WORSE_THAN_PERFECT = 2.0  # relative score of an imperfect model where seasonal naive is perfect
SCORE_DECIMALS = 12  # scores equal to this many decimals tie (the earlier model wins)
PPF_CLAMP = 1e-6  # the normal quantile is taken this far inside (0, 1): it is infinite at the ends


@dataclass(frozen=True)
class EngineOptions:
    """How the engine forecasts: horizon, season, τ, the candidate models and how one is chosen.

    One value for `prepare`, `run_engine` and the sharded forecast, so the settings are declared
    once and every step of one run sees the same ones.
    """

    horizon: int
    season_length: int
    freq: str
    tau: float  # the quantile the selection scores (pinball loss at τ)
    models: Sequence[str] | str = DEFAULT_MODELS  # names from MODELS, or "auto"
    holdout: int | None = None  # length of each cross-validation window (default: the horizon)
    n_windows: int | None = None  # cross-validation windows (default: up to MAX_CV_WINDOWS as history allows)
    levels: Sequence[int] = FORECAST_LEVELS  # interval levels wanted besides the contract's
    n_jobs: int = -1
    model_params: dict[str, dict] | None = None  # keyword arguments per model name
    clean: bool = True  # clean one-off bursts from the models' input (scores use the raw actuals)
    combine: bool = True  # also score the ensemble of the best models
    #: refit global models on the full history after cross-validation ("auto": only for small
    #: problems; otherwise the cross-validated model forecasts from the latest origin)
    refit_global: bool | str = "auto"
    switch_margin: float = DEFAULT_SWITCH_MARGIN
    ensemble_size: int = DEFAULT_ENSEMBLE_SIZE
    #: refit the per-series models at every CV origin (False: fit once at the first origin and move
    #: the fit forward, as daily training does: its models are used that way by the hourly runs)
    cv_refit: bool = True
    #: regressor decisions an earlier run made (model → its `regressors.decide` record and `run_id`):
    #: a model keeps one whose candidate columns are this run's instead of cross-validating twice
    #: (the pipeline passes the day's decisions: see `earlier_regressor_decisions`)
    regressors: dict[str, dict] | None = None


@dataclass
class ForecastResult:
    """Forecast rows (contract columns) plus the per-series model choice and its scores."""

    forecasts: pd.DataFrame
    selection: dict[str, dict] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    cv_by_model: dict[str, pd.DataFrame] = field(default_factory=dict)  # each model's cross-validation rows

    @functools.cached_property
    def cv(self) -> pd.DataFrame | None:
        """Every model's cross-validation rows in one frame (a `model` column), built when first
        asked: at 100 regions it is ~11M rows, which a run that only publishes forecasts never needs."""
        if not self.cv_by_model:
            return None
        return pd.concat([f.assign(model=k) for k, f in self.cv_by_model.items()], ignore_index=True)


def resolve_models(models: Sequence[str] | str, n_series: int) -> tuple[str, ...]:
    """Expand "auto" (its members depend on the number of series) and check names."""
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    out: list[str] = []
    for name in models:
        if name == "auto":
            out.extend(AUTO)
        else:
            out.append(name)
    unknown = [m for m in out if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; available: {sorted(MODELS)} or 'auto'")
    return tuple(dict.fromkeys(out))


def series_from_features(pair_volume: pd.DataFrame, region_demand: pd.DataFrame) -> pd.DataFrame:
    """Long format `unique_id, ds, y` for every pair-volume and region-demand series."""
    pairs = pair_volume.assign(
        unique_id=_series_ids(pair_series_id, pair_volume["source_region"], pair_volume["destination_region"])
    )[["unique_id", "hour", "requests"]].rename(columns={"hour": "ds", "requests": "y"})
    regions = region_demand.melt(id_vars=["hour", "region"], value_vars=list(RESOURCE_TYPES), var_name="resource", value_name="y")
    regions["unique_id"] = _series_ids(region_series_id, regions["region"], regions["resource"])
    regions = regions[["unique_id", "hour", "y"]].rename(columns={"hour": "ds"})
    out = pd.concat([regions, pairs], ignore_index=True)
    out["y"] = out["y"].astype(float)
    return out.sort_values(["unique_id", "ds"]).reset_index(drop=True)


def _series_ids(make: Any, first: pd.Series, second: pd.Series) -> np.ndarray:
    """`make(a, b)` once per distinct (a, b), repeated over its rows: formatting every row's id (3.5M
    rows at 100 regions) took seconds and a string object per row instead of one per series."""
    if not len(first):
        return np.array([], dtype=object)
    codes, uniques = pd.MultiIndex.from_arrays([first.to_numpy(), second.to_numpy()]).factorize()
    return np.array([make(a, b) for a, b in uniques], dtype=object)[codes]


def _naive_ds(frame: pd.DataFrame) -> pd.DataFrame:
    """Models want tz-naive timestamps; everything here is UTC, so drop the zone."""
    frame = frame.copy()
    frame["unique_id"] = frame["unique_id"].astype(str)
    frame["ds"] = pd.to_datetime(frame["ds"], utc=True).dt.tz_localize(None)
    return frame


def _quantile_columns(frame: pd.DataFrame) -> dict[float, np.ndarray]:
    return {q: frame[quantile_column(q)].to_numpy(float) for q in FORECAST_QUANTILES}


# ---------------------------------------------------------------------------------------------
# Conformal calibration
# ---------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Scale-location conformal quantiles fitted on out-of-sample errors.

    error(series i, step k) ≈ scale_i · σ_i · g(bucket(k)) · z, z from the pooled distribution.
    """

    horizon: int
    sigma: dict[str, float]
    pooled_sigma: float
    g: np.ndarray
    z: dict[float, float]
    n_errors: int

    @classmethod
    def fit(cls, errors: pd.DataFrame, scale: pd.Series, horizon: int, shrink: float = CALIBRATION_SHRINK) -> Calibration:
        """errors: unique_id, step (0-based), error (actual - forecast)."""
        probs = _calibration_probs()
        if errors.empty:
            return cls(horizon, {}, 1.0, np.ones(N_BUCKETS), {p: _normal_ppf(p) for p in probs}, 0)
        u = errors["error"].to_numpy(float) / scale.reindex(errors["unique_id"]).to_numpy(float)
        u = np.nan_to_num(u)
        bucket = bands.horizon_bucket(errors["step"].to_numpy(), horizon, N_BUCKETS)
        abs_u = np.abs(u)
        pooled = float(np.mean(abs_u)) if len(abs_u) else 1.0
        g = np.array([np.mean(abs_u[bucket == b]) / pooled if np.any(bucket == b) and pooled > 0 else 1.0 for b in range(N_BUCKETS)])
        g = np.where(np.isfinite(g) & (g > 0), g, 1.0)
        frame = pd.DataFrame({"uid": errors["unique_id"].to_numpy(), "abs": abs_u / g[bucket]})
        stats = frame.groupby("uid")["abs"].agg(["mean", "size"])
        sigma = (stats["mean"] * stats["size"] + pooled * shrink) / (stats["size"] + shrink)
        sigma = sigma.clip(lower=MIN_ERROR_SIZE)
        denom = sigma.reindex(errors["unique_id"]).to_numpy() * g[bucket]
        z = u / np.where(denom > 0, denom, 1.0)
        n = len(z)
        zq = {}
        for p in probs:
            # finite-sample conformal correction: move the level outwards by 1/(n+1)
            adj = min(max(p + (p - 0.5) * 2 / (n + 1), 0.0), 1.0)
            zq[p] = float(np.quantile(z, adj))
        return cls(horizon, {k: float(v) for k, v in sigma.items()}, pooled, g, zq, n)

    def apply(self, frame: pd.DataFrame, scale: pd.Series, levels: Sequence[int]) -> pd.DataFrame:
        """Fill quantile / interval columns of `frame` (unique_id, ds, mean, step)."""
        uid = frame["unique_id"].to_numpy()
        sig = np.array([self.sigma.get(u, self.pooled_sigma) for u in uid])
        bucket = bands.horizon_bucket(frame["step"].to_numpy(), self.horizon, N_BUCKETS)
        spread = scale.reindex(uid).fillna(0.0).to_numpy() * sig * self.g[bucket]
        mean = frame["mean"].to_numpy(float)
        out = frame.copy()
        for q in FORECAST_QUANTILES:
            out[quantile_column(q)] = mean + spread * self.z[q]
        for level in sorted({*FORECAST_LEVELS, *levels}):
            lo, hi = 0.5 - level / 200, 0.5 + level / 200
            out[f"lo_{level}"] = mean + spread * self.z.get(lo, _normal_ppf(lo) * _z_ratio(self.z))
            out[f"hi_{level}"] = mean + spread * self.z.get(hi, _normal_ppf(hi) * _z_ratio(self.z))
        return out

    def to_dict(self) -> dict:
        return {"method": "scale-location conformal on rolling-origin errors", "n_errors": self.n_errors,
                "horizon_profile": [round(float(v), 4) for v in self.g],
                "z": {str(k): round(v, 4) for k, v in sorted(self.z.items())}}


def _calibration_probs(levels: Sequence[int] = ()) -> list[float]:
    lv = sorted({*FORECAST_LEVELS, 50, 60, 70, 90, 98, 99, *levels})
    return sorted({*FORECAST_QUANTILES, *[0.5 - x / 200 for x in lv], *[0.5 + x / 200 for x in lv]})


def _normal_ppf(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(min(max(p, PPF_CLAMP), 1 - PPF_CLAMP))


def _z_ratio(z: dict[float, float]) -> float:
    """How wide the pooled distribution is relative to a normal, judged at its 90 % quantile."""
    return z.get(0.9, _normal_ppf(0.9)) / _normal_ppf(0.9)


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

def _cv_with_actuals(cv: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    merged = cv.merge(raw[["unique_id", "ds", "y", "_factor"]], on=["unique_id", "ds"], how="inner")
    merged = merged.sort_values(["unique_id", "window", "ds"], kind="stable").reset_index(drop=True)
    merged["step"] = merged.groupby(["unique_id", "window"]).cumcount()
    return merged


@dataclass
class Prepared:
    """Everything cross-validation, selection and the final fits need, computed once over all series.

    The sharded forecast (pipeline.forecast.shards) computes it once per run and hands each shard
    `subset(ids)`: the per-series inputs are then exactly the ones an unsharded run uses, and the
    run-wide parameters (number of windows, refit of global models, the model list) do not
    depend on how the series were split.
    """

    #: regular grid: raw actuals `y`, the exogenous columns, `_factor` (calendar uplift) and the
    #: model-input variants of `y` (`INPUT_Y`): one frame, not one per variant (at 100 regions each
    #: copy of the keys and exogenous columns is ~260 MB)
    history: pd.DataFrame
    scale: pd.Series  # MASE scale per series
    lengths: pd.Series  # points per series
    ids: list[str]
    short: list[str]
    long_ids: list[str]
    cv_ok: list[str]
    names: tuple[str, ...]
    horizon: int
    season_length: int
    freq: str
    tau: float
    window: int
    n_windows: int
    levels: tuple[int, ...]
    refit_global: bool
    run_cv: bool
    future: pd.DataFrame | None = None
    hierarchy: dict[str, list[str]] | None = None
    params: dict[str, dict] = field(default_factory=dict)
    n_jobs: int = -1
    combine: bool = True
    switch_margin: float = DEFAULT_SWITCH_MARGIN
    ensemble_size: int = DEFAULT_ENSEMBLE_SIZE
    info: dict[str, Any] = field(default_factory=dict)
    cv_refit: bool = True
    #: exogenous columns cross-validation may drop (pipeline.forecast.regressors), and per model the
    #: ones it kept (a model missing here sees every column)
    regressor_candidates: list[str] = field(default_factory=list)
    regressors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def scored_names(self) -> list[str]:
        """The models cross-validated: the requested ones and the seasonal-naive yardstick."""
        return list(dict.fromkeys([*self.names, BASELINE]))

    def model(self, name: str) -> Any:
        return MODELS[name](self.season_length, self.freq, n_jobs=self.n_jobs, **self.params.get(name, {}))

    @property
    def input_columns(self) -> list[str]:
        """A model input's columns, in order: `unique_id, ds, y` and the exogenous columns."""
        return [c for c in self.history.columns if c not in DERIVED_COLUMNS]

    def inputs_for(self, name: str, frame_ids: Sequence[str]) -> pd.DataFrame:
        """The rows of `frame_ids` as model `name` reads them: `y` cleaned of outliers unless the model
        is robust to them, the calendar uplift divided out unless it handles events itself."""
        y_column = INPUT_Y[(not MODELS_ROBUST.get(name, False), not MODELS_HANDLE_EVENTS.get(name, False))]
        columns = self.input_columns
        rows = self.history.loc[self.history["unique_id"].isin(frame_ids).to_numpy(),
                                [y_column if c == "y" else c for c in columns]]
        rows.columns = columns  # a fresh frame: relabelled in place
        if name in self.regressors:
            return regressors.restrict(rows, self.regressor_candidates, self.regressors[name])
        return rows

    def eligible(self, name: str) -> list[str]:
        """Series long enough to cross-validate `name` on."""
        seasons = max(SHORT_SERIES_SEASONS * self.season_length, int(MODEL_MIN_SEASONS.get(name, 1) * self.season_length))
        need = self.n_windows * self.window + seasons
        return [u for u in self.cv_ok if self.lengths[u] >= need]

    def fewer_windows(self, name: str) -> dict[int, list[str]]:
        """Series that cannot hold the run's `n_windows` but hold k ≥ 1 (k → their ids): each is
        cross-validated on the windows it has, so short series get evidence too (one window count
        for the whole run left them none, and their bands unchosen)."""
        if self.n_windows <= 1:
            return {}
        base = SHORT_SERIES_SEASONS * self.season_length  # k depends on the series only: every model scores the same windows
        seasons = max(base, int(MODEL_MIN_SEASONS.get(name, 1) * self.season_length))
        ok = set(self.cv_ok)
        out: dict[int, list[str]] = {}
        for u in self.long_ids:
            n = int(self.lengths[u])
            k = min(self.n_windows - 1, (n - base) // self.window)
            if u not in ok and k >= 1 and n >= k * self.window + seasons:
                out.setdefault(k, []).append(u)
        return out

    def subset(self, ids: Sequence[str]) -> Prepared:
        """The same preparation restricted to `ids` (a shard): per-series rows only, run-wide parameters kept."""
        keep = set(ids)

        def rows(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[frame["unique_id"].isin(keep)]

        return replace(
            self,
            history=rows(self.history),
            scale=self.scale[self.scale.index.isin(keep)], lengths=self.lengths[self.lengths.index.isin(keep)],
            ids=[u for u in self.ids if u in keep], short=[u for u in self.short if u in keep],
            long_ids=[u for u in self.long_ids if u in keep], cv_ok=[u for u in self.cv_ok if u in keep],
            future=None if self.future is None else rows(self.future),
            info={**self.info, "dropped": {}, "timings_s": {}},
        )


@dataclass
class ModelRun:
    """One model's cross-validation over some series, or why it could not run."""

    name: str
    cv: pd.DataFrame | None = None  # with actuals, horizon step and the calendar uplift applied
    error: str | None = None
    no_series: bool = False  # nothing to cross-validate among the series given (not a model failure)
    trained: Any = None  # a global model trained in cross-validation, reused for the final forecast
    cv_instance: Any = None  # a global model as cross-validation trained it (before the first origin), whatever the options
    seconds: float = 0.0
    regressors: dict | None = None  # which candidate exogenous columns CV kept (pipeline.forecast.regressors.decide)


@dataclass
class Selection:
    """The per-series choice and what it was based on."""

    choice: dict[str, str]
    members: list[str]
    scores: dict[str, dict[str, dict]]

    def needed(self) -> dict[str, list[str]]:
        """Every model some series needs a final forecast of (ensembles need all their members)."""
        out: dict[str, list[str]] = {}
        for uid, c in self.choice.items():
            for name in (self.members if c == ENSEMBLE else [c] if c != POOLED else []):
                out.setdefault(name, []).append(uid)
        return out


def prepare(history: pd.DataFrame, options: EngineOptions, *, future: pd.DataFrame | None = None,
            hierarchy: dict[str, list[str]] | None = None) -> Prepared:
    """Step 1 of `run_engine`: regular grids, uplifts, cleaning, run-wide parameters."""
    if history.empty:
        raise ValueError("history is empty: nothing to forecast (no feature rows for this run?)")
    horizon, season_length, tau = options.horizon, options.season_length, options.tau
    freq = prep.parse_freq(options.freq)
    levels = tuple(sorted({*FORECAST_LEVELS, *options.levels}))
    names = resolve_models(options.models, history["unique_id"].nunique())
    params = options.model_params or {}
    history = _naive_ds(history).sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)
    history, gaps = prep.regularize(history, freq)
    if future is not None and len(future):
        future = _naive_ds(future)
    m = season_length
    window = int(options.holdout or horizon)
    lengths = history.groupby("unique_id", sort=True).size()
    ids = list(lengths.index)

    candidates = regressors.candidates(history)
    history, cleaned = _with_input_variants(history, m, options.clean)
    scale = prep.mase_scale(history, m)

    min_points = SHORT_SERIES_SEASONS * m
    short = [u for u in ids if lengths[u] < min_points]
    long_ids = [u for u in ids if lengths[u] >= min_points]
    refit_global = options.refit_global
    if refit_global == "auto":
        refit_global = len(history) <= AUTO_POINT_BUDGET
    n_windows = options.n_windows
    if n_windows is None:
        reused = not refit_global and any(MODELS_GLOBAL.get(n, False) for n in names)
        n_windows = default_windows(int(lengths.max()), window, m, reused)
    cv_ok = [u for u in long_ids if lengths[u] >= n_windows * window + min_points]
    info: dict[str, Any] = {"models": list(names), "n_windows": n_windows, "window": window, "dropped": {},
                            "short_series": short, "gaps_filled": gaps, "outliers_cleaned": cleaned, "timings_s": {}}
    return Prepared(
        history=history, scale=scale, lengths=lengths, ids=ids, short=short, long_ids=long_ids, cv_ok=cv_ok, names=names,
        horizon=horizon, season_length=season_length, freq=freq, tau=tau, window=window, n_windows=n_windows,
        levels=levels, refit_global=bool(refit_global), run_cv=bool(cv_ok) and (len(names) > 1 or options.combine),
        future=future, hierarchy=hierarchy, params=params, n_jobs=options.n_jobs, combine=options.combine,
        switch_margin=options.switch_margin, ensemble_size=options.ensemble_size, info=info, cv_refit=options.cv_refit,
        regressor_candidates=candidates, regressors=_kept_decisions(options.regressors, candidates, names, info),
    )


def _with_input_variants(history: pd.DataFrame, m: int, clean: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """`history` with `_factor` and the model-input variants of `y` (`INPUT_Y`) added, and the
    outliers cleaned per series. Known calendar uplifts come out of the model input and go back into
    the forecast. The frame comes back consolidated, one block per dtype, as are the model inputs cut
    from it (the models ran ~13 % slower on fragmented frames)."""
    out = history.copy(deep=False)
    factor = prep.event_factor(out)
    y = out["y"].to_numpy(float)
    cleaned_y, cleaned = prep.cleaned_values(out, m) if clean else (y, {})
    out[FACTOR_COLUMN] = factor
    out[INPUT_Y[(True, False)]] = cleaned_y
    out[INPUT_Y[(False, True)]] = y / factor
    out[INPUT_Y[(True, True)]] = cleaned_y / factor
    return out.copy(), cleaned


def _kept_decisions(earlier: dict[str, dict] | None, candidates: list[str], names: Sequence[str],
                    info: dict[str, Any]) -> dict[str, list[str]]:
    """The earlier regressor decisions this run keeps (model → the columns it uses): those of its
    models that were made on the same candidate columns and did not fail; each is recorded in
    `info["regressors"]` with the run that made it (`reused_from`)."""
    kept: dict[str, list[str]] = {}
    for name, decision in (earlier or {}).items():
        used = decision.get("used")
        if (name not in names or not MODELS_USE_EXOG.get(name, False) or "reason" in decision or used is None
                or sorted(decision.get("candidates", [])) != sorted(candidates) or not set(used) <= set(candidates)):
            continue
        kept[name] = list(used)
        record = {k: v for k, v in decision.items() if k not in ("run_id", "reused_from")}
        info.setdefault("regressors", {})[name] = {**record, "reused_from": decision.get("reused_from") or decision.get("run_id")}
    return kept


def default_windows(longest: int, window: int, m: int, reused_global: bool) -> int:
    """Cross-validation windows: as many as the longest series holds (with `TWO_WINDOW_SEASONS`
    of history before them), up to `MAX_CV_WINDOWS`, or `EVIDENCE_SEASONS` seasons of windows
    when no cross-validated global model is reused for the final forecast."""
    cap = MAX_CV_WINDOWS if reused_global else max(MAX_CV_WINDOWS, EVIDENCE_SEASONS * m // max(window, 1))
    fits = [k for k in range(2, cap + 1) if longest >= k * window + TWO_WINDOW_SEASONS * m]
    return max(fits, default=1)


def current_regime_windows(cv: pd.DataFrame, p: Prepared) -> pd.DataFrame:
    """`cv` without the windows (beyond the run's last `MAX_CV_WINDOWS`) whose origin is less than
    `SETTLE_SEASONS` into the series' current regime (pipeline.forecast.bands.regime_start)."""
    if p.n_windows <= MAX_CV_WINDOWS or cv.empty:
        return cv
    settle = SETTLE_SEASONS * p.season_length
    first_ok: dict[str, np.datetime64] = {}
    for uid, g in p.history.groupby("unique_id", sort=False):
        start = bands.regime_start(g["y"].to_numpy(float), p.season_length)
        if start > 0:
            first_ok[uid] = g["ds"].to_numpy()[min(start + settle, len(g)) - 1]  # the origin's last history point
    if not first_ok:
        return cv
    threshold = cv["unique_id"].map(first_ok).to_numpy(dtype="datetime64[ns]")
    recent = cv["window"].to_numpy() >= p.n_windows - MAX_CV_WINDOWS
    keep = recent | np.isnat(threshold) | (pd.to_datetime(cv["cutoff"]).to_numpy() >= threshold)
    return cv[keep].reset_index(drop=True)


def cross_validate_model(p: Prepared, name: str) -> ModelRun:
    """Step 2 for one model: rolling-origin forecasts on every eligible series of `p` (the run's
    `n_windows` where a series holds them, as many as it holds otherwise: see `fewer_windows`).

    A model reading exogenous columns is cross-validated with and without the candidate columns
    and keeps the better set (pipeline.forecast.regressors): `p.regressors[name]` then restricts
    its inputs for the final forecast too."""
    if not p.regressor_candidates or not MODELS_USE_EXOG.get(name, False) or name in p.regressors:
        return _cross_validate_inputs(p, name)
    if len(p.long_ids) > REGRESSOR_DECISION_SERIES:
        return _cross_validate_decided_on_sample(p, name)
    runs = {}
    for variant in ([], list(p.regressor_candidates)):
        p.regressors[name] = variant
        runs[bool(variant)] = _cross_validate_inputs(p, name)
    pins = {k: None if r.cv is None else conformal_pinball(r.cv, p.tau) for k, r in runs.items()}
    decision = regressors.decide(pins[False], pins[True], p.scale, list(p.regressor_candidates))
    p.regressors[name] = decision["used"]
    chosen = runs[bool(decision["used"])]
    return replace(chosen, seconds=round(runs[False].seconds + runs[True].seconds, 3), regressors=decision)


def _cross_validate_decided_on_sample(p: Prepared, name: str) -> ModelRun:
    """A large fleet: decide `name`'s regressors on `REGRESSOR_DECISION_SERIES` series spread evenly
    over the sorted ids (both ways), then cross-validate every series once with the columns kept."""
    sample = replace(p.subset(regressors.even_sample(p.long_ids, REGRESSOR_DECISION_SERIES)), regressors={})
    decided = cross_validate_model(sample, name)
    decision = {**(decided.regressors or {}), "sample_series": len(sample.long_ids)}
    p.regressors[name] = list(decision.get("used", []))
    run = _cross_validate_inputs(p, name)
    return replace(run, seconds=round(run.seconds + decided.seconds, 3), regressors=decision)


def _cross_validate_inputs(p: Prepared, name: str) -> ModelRun:
    """`cross_validate_model` on the inputs `p.inputs_for(name, ...)` gives now."""
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eligible, fewer = p.eligible(name), p.fewer_windows(name)
            if not eligible and not fewer:
                run = ModelRun(name, error=f"{name}: no series long enough to cross-validate", no_series=True)
                return run
            instance = p.model(name)
            parts = [instance.cross_validate(p.inputs_for(name, eligible), p.window, p.n_windows, p.window,
                                              p.cv_refit)] if eligible else []
    except (NotEnoughData, ValueError, np.linalg.LinAlgError) as exc:
        return ModelRun(name, error=str(exc)[:300])
    parts += _fewer_window_cv(p, name, fewer)
    if not parts:
        return ModelRun(name, error=f"{name}: cross-validation failed on every series", no_series=True)
    cv_instance = instance if eligible and MODELS_GLOBAL.get(name, False) and p.window == p.horizon else None
    trained = None if p.refit_global else cv_instance
    cv = current_regime_windows(_cv_with_actuals(pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0], p.history), p)
    if not MODELS_HANDLE_EVENTS.get(name, False):
        own = [c for c in QUANTILE_COLUMNS if c in cv.columns]
        cv[["mean", *own]] = cv[["mean", *own]].to_numpy(float) * cv["_factor"].to_numpy(float)[:, None]
    return ModelRun(name, cv=cv, trained=trained, cv_instance=cv_instance, seconds=round(time.perf_counter() - t0, 3))


def _fewer_window_cv(p: Prepared, name: str, fewer: dict[int, list[str]]) -> list[pd.DataFrame]:
    """Cross-validation of the series too short for the run's windows, on the k < n_windows they
    hold. Their windows are numbered like the run's last k (the latest origins line up); a group
    the model cannot fit is left without this model's evidence, as a too-short series was before."""
    parts = []
    for k, ids in sorted(fewer.items()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cv = p.model(name).cross_validate(p.inputs_for(name, ids), p.window, k, p.window, p.cv_refit)
        except (NotEnoughData, ValueError, np.linalg.LinAlgError):
            continue
        if not cv.empty:
            parts.append(cv.assign(window=cv["window"].to_numpy() + (p.n_windows - k)))
    return parts


def choose(p: Prepared, cv_frames: dict[str, pd.DataFrame], info: dict[str, Any]) -> Selection:
    """Step 3: score, combine, and pick a model per series (adds the ensemble to `cv_frames`)."""
    names = p.names
    candidates = [n for n in names if n in cv_frames]
    scores = _scores(cv_frames, candidates, p.scale, p.tau)
    overall = _overall(scores, candidates)
    # The combination: the mean of the (up to) `ensemble_size` best non-naive models overall.
    ranked = sorted((n for n in candidates if n != BASELINE), key=lambda n: (overall.get(n, np.inf), candidates.index(n)))
    members = ranked[:p.ensemble_size]
    if p.combine and len(members) >= 2:
        ens = _ensemble(cv_frames, members)
        if not ens.empty:
            cv_frames[ENSEMBLE] = ens
            candidates.append(ENSEMBLE)
            scores = _scores(cv_frames, candidates, p.scale, p.tau)
            overall = _overall(scores, candidates)

    # the best model overall, unless another is clearly better on this series
    fallback = next((n for n in names if n not in info["dropped"]), names[0])
    default = min(overall, key=lambda n: (round(overall[n], SCORE_DECIMALS), candidates.index(n))) if overall else fallback
    info["overall_score"] = {k: round(v, 6) for k, v in overall.items()}
    info["default_choice"] = default
    choice: dict[str, str] = {}
    for uid in p.ids:
        if uid in p.short:
            choice[uid] = POOLED
            continue
        s = scores.get(uid, {})
        usable = {k: v for k, v in s.items() if k in candidates and np.isfinite(v["score"])}
        if not usable:
            choice[uid] = default if default in cv_frames or not cv_frames else fallback
            continue
        best = min(usable, key=lambda k: (round(usable[k]["score"], SCORE_DECIMALS), candidates.index(k)))
        if default in usable and usable[best]["score"] >= usable[default]["score"] * (1 - p.switch_margin):
            best = default
        choice[uid] = best
    return Selection(choice=choice, members=list(members), scores=scores)


def final_forecast(p: Prepared, name: str, need_ids: Sequence[str], trained: Any = None) -> tuple[pd.DataFrame, str | None]:
    """Step 4 for one model: fit on the full history and forecast `need_ids` (global models fit on
    every long series). A failing fit falls back to seasonal naive; the error is returned."""
    fit_ids = p.long_ids if MODELS_GLOBAL.get(name, False) else need_ids
    fit_ids = sorted(set(fit_ids) | set(need_ids))
    error = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instance = trained
            if instance is not None:  # global model trained in cross-validation: move its origin only
                instance.params["refit"] = False
            else:
                instance = p.model(name)
            pred = instance.fit(p.inputs_for(name, fit_ids)).predict(p.horizon, future=p.future, levels=p.levels)
    except (NotEnoughData, ValueError, np.linalg.LinAlgError) as exc:
        error = f"final fit failed: {str(exc)[:300]}"
        pred = p.model(BASELINE).fit(p.inputs_for(BASELINE, fit_ids)).predict(p.horizon, levels=p.levels)
    return pred[pred["unique_id"].isin(need_ids)].reset_index(drop=True), error


def _chosen_means(p: Prepared, sel: Selection, point: dict[str, pd.DataFrame], idx: pd.DataFrame,
                  fut_factor: pd.Series) -> list[pd.DataFrame]:
    """Each long series' chosen point forecast (rows of `idx`); the ensemble's members each with the
    calendar uplift unless the member forecasts events itself (Prophet), so the ensemble's rows
    carry the uplift already."""
    by_model = {n: {u: g["mean"].to_numpy() for u, g in pr.groupby("unique_id", sort=False)} for n, pr in point.items()}
    rows_by_id = dict(iter(idx.groupby("unique_id", sort=False)))  # iter(): dict() would take a GroupBy for a mapping
    factor_by_id = {u: fut_factor.to_numpy()[pos] for u, pos in idx.groupby("unique_id", sort=False).indices.items()}
    frames = []
    for uid in p.ids:
        c = sel.choice[uid]
        if c == POOLED:
            continue
        if c == ENSEMBLE:
            means = np.mean([by_model[n][uid] * (1.0 if MODELS_HANDLE_EVENTS.get(n, False) else factor_by_id[uid])
                             for n in sel.members], axis=0)
        else:
            means = by_model[c][uid]
        frames.append(rows_by_id[uid].assign(mean=means, model=c))
    return frames


def assemble(p: Prepared, sel: Selection, point: dict[str, pd.DataFrame], cv_frames: dict[str, pd.DataFrame],
             info: dict[str, Any]) -> ForecastResult:
    """Steps 4–6: the chosen means, calendar uplift, conformal bands, reconciliation, contract columns."""
    ids, choice, levels = p.ids, sel.choice, p.levels
    own = point
    idx = future_index(p.history, p.horizon, p.freq)
    idx["step"] = idx.groupby("unique_id").cumcount()
    fut_factor = _future_factor(idx, p.history, p.future)
    frames = _chosen_means(p, sel, point, idx, fut_factor)
    if p.short:
        frames.append(_pooled_forecasts(p.history, p.short, p.long_ids, idx, p.season_length, p.freq))
    out = pd.concat(frames, ignore_index=True) if frames else idx.assign(mean=0.0, model=POOLED)
    factor = fut_factor.reindex(pd.MultiIndex.from_frame(out[["unique_id", "ds"]])).fillna(1.0).to_numpy()
    handles = out["model"].map(lambda c: c == ENSEMBLE or MODELS_HANDLE_EVENTS.get(c, False)).to_numpy(bool)
    out["mean"] = np.where(handles, out["mean"], out["mean"] * factor)

    # 5. conformal calibration on the chosen forecasts' out-of-sample errors
    errors = _chosen_errors(cv_frames, choice)
    calibration = Calibration.fit(errors, p.scale, p.window)
    out = calibration.apply(out, p.scale, levels)
    out, band_info = _series_bands(p, sel, cv_frames, calibration, out)
    with_errors = set(errors["unique_id"])
    uncalibrated = [uid for uid in ids if uid not in with_errors and choice[uid] in own]
    if uncalibrated and errors.empty:
        # nothing to calibrate on (e.g. a single model on short history): keep the model's own bands
        for name, pred in own.items():
            rows = out["unique_id"].isin(pred["unique_id"]) & (out["model"] == name)
            if rows.any():
                own_rows = pred.set_index(["unique_id", "ds"]).reindex(pd.MultiIndex.from_frame(out.loc[rows, ["unique_id", "ds"]]))
                for col in output_columns(levels)[3:]:
                    out.loc[rows, col] = own_rows[col].to_numpy() * factor[rows.to_numpy()]
    if p.hierarchy:
        from pipeline.forecast.reconcile import reconcile_wls

        variance = errors.groupby("unique_id")["error"].var().to_dict() if not errors.empty else {}
        reconciled = reconcile_wls(out.rename(columns={"unique_id": "series_id"}), p.hierarchy, variance)
        out = reconciled.rename(columns={"series_id": "unique_id"})
        info["reconciliation"] = {"method": "wls (MinT diagonal, out-of-sample error variances)", "aggregates": sorted(p.hierarchy)}

    cols = output_columns(levels)
    numeric = [c for c in cols if c not in ("unique_id", "ds")]
    values = np.nan_to_num(out[numeric].to_numpy(float))
    non_negative = out["unique_id"].map(p.history.groupby("unique_id")["y"].min() >= 0).fillna(True).to_numpy(bool)
    out[numeric] = np.where(non_negative[:, None], np.clip(values, 0.0, None), values)  # never below 0 if the series never was
    out[QUANTILE_COLUMNS] = np.maximum.accumulate(out[QUANTILE_COLUMNS].to_numpy(), axis=1)
    for level in levels:
        out[f"hi_{level}"] = np.maximum(out[f"hi_{level}"], out[f"lo_{level}"])
    for a, b in itertools.pairwise(levels):  # nested intervals: wider levels contain narrower ones
        out[f"lo_{b}"] = np.minimum(out[f"lo_{b}"], out[f"lo_{a}"])
        out[f"hi_{b}"] = np.maximum(out[f"hi_{b}"], out[f"hi_{a}"])
    forecasts = out.rename(columns={"unique_id": "series_id"})
    forecasts["ds"] = pd.to_datetime(forecasts["ds"]).dt.tz_localize("UTC")
    forecasts = forecasts.sort_values(["series_id", "ds"]).reset_index(drop=True)
    forecasts = forecasts[["series_id", "ds", "model", *numeric]]

    selection = {}
    for uid in sorted(ids):
        s = sel.scores.get(uid, {})
        selection[uid] = {
            "model": choice[uid],
            "pinball_at_tau": {k: round(v["pinball"], 6) for k, v in s.items()},
            "mase": {k: round(v["mase"], 6) for k, v in s.items()},
            "score": {k: round(v["score"], 6) for k, v in s.items()},
        }
        if choice[uid] == ENSEMBLE:
            selection[uid]["members"] = list(sel.members)
        selection[uid].update(band_info["series"].get(uid, {"quantile_method": bands.POOLED if choice[uid] == POOLED else bands.SNAIVE}))
    info["calibration"] = calibration.to_dict()
    info["cv_coverage"] = band_info["cv_coverage"] or _cv_coverage(errors, p.scale, calibration)
    info["quantile_methods"] = band_info["summary"]
    return ForecastResult(forecasts=forecasts, selection=selection, info=info, cv_by_model=dict(cv_frames))


def run_engine(history: pd.DataFrame, options: EngineOptions, *, future: pd.DataFrame | None = None,
               hierarchy: dict[str, list[str]] | None = None) -> ForecastResult:
    """Cross-validate the models per series, pick or combine, calibrate, forecast `options.horizon` steps.

    history: long format `unique_id, ds, y` (+ numeric exogenous columns; `event_uplift` is the
    known multiplicative calendar uplift). future: the exogenous columns over the horizon.
    hierarchy: aggregate series id → the ids it sums (reconciled after forecasting).

    The steps are public (`prepare`, `cross_validate_model`, `choose`, `final_forecast`,
    `assemble`) so that pipeline.forecast.shards can run the per-series ones on shards of series
    and get exactly this function's result.
    """
    t_start = time.perf_counter()
    p = prepare(history, options, future=future, hierarchy=hierarchy)
    info = p.info
    cv_frames, cv_models = _cross_validate_all(p, info)
    sel = choose(p, cv_frames, info)
    point = _final_forecasts(p, sel, cv_models, info)
    result = assemble(p, sel, point, cv_frames, info)
    info["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
    return result


def select_and_forecast(history: pd.DataFrame, horizon: int, season_length: int, freq: str, tau: float,
                        models: Sequence[str] | str = DEFAULT_MODELS, *, future: pd.DataFrame | None = None,
                        hierarchy: dict[str, list[str]] | None = None, **options: Any) -> ForecastResult:
    """`run_engine` for callers holding plain values (CLI, backtests): any other `EngineOptions`
    field by keyword, e.g. `select_and_forecast(history, 48, 24, "h", 0.9, combine=False)`."""
    engine_options = EngineOptions(horizon=horizon, season_length=season_length, freq=freq, tau=tau, models=models, **options)
    return run_engine(history, engine_options, future=future, hierarchy=hierarchy)


def _cross_validate_all(p: Prepared, info: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Step 2, every scored model: its cross-validation frames, and the global models it trained."""
    cv_frames: dict[str, pd.DataFrame] = {}
    cv_models: dict[str, Any] = {}
    if not p.run_cv:
        return cv_frames, cv_models
    for name in p.scored_names:
        run = cross_validate_model(p, name)
        if run.cv is None:
            if name in p.names:
                info["dropped"][name] = run.error
            continue
        if run.trained is not None:
            cv_models[name] = run.trained
        cv_frames[name] = run.cv
        info["timings_s"][f"cv:{name}"] = run.seconds
        if run.regressors is not None:
            info.setdefault("regressors", {})[name] = run.regressors
    return cv_frames, cv_models


def _final_forecasts(p: Prepared, sel: Selection, cv_models: dict[str, Any], info: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Step 4, every model some series needs: fitted on the full history (or moved on from cross-validation)."""
    point: dict[str, pd.DataFrame] = {}
    for name, need_ids in sel.needed().items():
        t0 = time.perf_counter()
        point[name], error = final_forecast(p, name, need_ids, cv_models.get(name))
        if error:
            info["dropped"][name] = error
        info["timings_s"][f"fit:{name}"] = round(time.perf_counter() - t0, 3)
    return point


def _ensemble(cv_frames: dict[str, pd.DataFrame], members: list[str]) -> pd.DataFrame:
    key = ["unique_id", "ds", "window"]
    base = cv_frames[members[0]][[*key, "cutoff", "y", "_factor", "step", "mean"]]
    merged = base.rename(columns={"mean": members[0]})
    for name in members[1:]:
        merged = merged.merge(cv_frames[name][[*key, "mean"]].rename(columns={"mean": name}), on=key, how="inner")
    merged["mean"] = merged[members].mean(axis=1)
    return merged.drop(columns=members)


def conformal_pinball(cv: pd.DataFrame, tau: float) -> pd.Series:
    """Per series (`unique_id`): the mean pinball at τ of the forecast's conformal τ-quantile (its mean
    shifted by the τ-quantile of the series' own CV errors): how models are compared at τ."""
    e = cv["y"].to_numpy(float) - cv["mean"].to_numpy(float)
    frame = pd.DataFrame({"uid": cv["unique_id"].to_numpy(), "e": e})
    d = e - frame["uid"].map(frame.groupby("uid")["e"].quantile(tau)).to_numpy()
    frame["pin"] = np.maximum(tau * d, (tau - 1) * d)
    return frame.groupby("uid")["pin"].mean()


def _scores(cv_frames: dict[str, pd.DataFrame], candidates: list[str], scale: pd.Series, tau: float) -> dict[str, dict[str, dict]]:
    """Per series and model: pinball at τ (of the model's conformal τ-quantile) and MASE, and the
    mean of both relative to seasonal naive (an OWA-like score; lower is better)."""
    per_model: dict[str, pd.DataFrame] = {}
    for name in dict.fromkeys([*candidates, BASELINE]):
        if name not in cv_frames:
            continue
        f = cv_frames[name]
        mae = pd.Series(np.abs(f["y"].to_numpy() - f["mean"].to_numpy())).groupby(f["unique_id"].to_numpy()).mean()
        agg = pd.DataFrame({"pinball": conformal_pinball(f, tau), "mae": mae})
        agg["mase"] = agg["mae"] / scale.reindex(agg.index).to_numpy()
        per_model[name] = agg
    out: dict[str, dict[str, dict]] = {}
    base = per_model.get(BASELINE)
    for name in candidates:
        if name not in per_model:
            continue
        agg = per_model[name]
        # the baseline's losses aligned on this model's series once (NaN where it has none), not looked up row by row
        ref = base.reindex(agg.index) if base is not None else pd.DataFrame(index=agg.index, columns=["pinball", "mase"], dtype=float)
        for uid, pin, mase, ref_p, ref_m in zip(agg.index, agg["pinball"].to_numpy(float), agg["mase"].to_numpy(float),
                                                ref["pinball"].to_numpy(float), ref["mase"].to_numpy(float)):
            rel_p = _relative(pin, ref_p)
            rel_m = _relative(mase, ref_m)
            out.setdefault(uid, {})[name] = {"pinball": float(pin), "mase": float(mase), "score": float(0.5 * (rel_p + rel_m))}
    return out


def _relative(loss: float, reference: float) -> float:
    """`loss` relative to seasonal naive's; where that is perfect (or missing): 1 if this is too, else worse."""
    if np.isfinite(reference) and reference > ZERO_LOSS:
        return loss / reference
    return 1.0 if loss <= ZERO_LOSS else WORSE_THAN_PERFECT


def _overall(scores: dict[str, dict[str, dict]], candidates: list[str]) -> dict[str, float]:
    """Mean relative score of each candidate over the series every candidate was scored on."""
    rows = [v for v in scores.values() if all(c in v for c in candidates)]
    if not rows:
        rows = list(scores.values())
    out = {}
    for c in candidates:
        vals = [r[c]["score"] for r in rows if c in r and np.isfinite(r[c]["score"])]
        if vals:
            out[c] = float(np.mean(vals))
    return out


def _chosen_errors(cv_frames: dict[str, pd.DataFrame], choice: dict[str, str]) -> pd.DataFrame:
    parts = []
    for name, f in cv_frames.items():
        ids = [u for u, c in choice.items() if c == name]
        if ids:
            sub = f[f["unique_id"].isin(ids)]
            parts.append(pd.DataFrame({"unique_id": sub["unique_id"].to_numpy(), "step": sub["step"].to_numpy(),
                                       "error": sub["y"].to_numpy() - sub["mean"].to_numpy()}))
    if not parts:
        return pd.DataFrame(columns=["unique_id", "step", "error"])
    return pd.concat(parts, ignore_index=True)


def _cv_coverage(errors: pd.DataFrame, scale: pd.Series, cal: Calibration) -> dict[str, float]:
    """In-sample check of the pooled calibration (used only where no band was chosen on CV): the
    share of cross-validation errors inside its intervals."""
    if errors.empty:
        return {}
    frame = errors.rename(columns={"error": "e"}).assign(mean=0.0)
    bands = cal.apply(frame.assign(unique_id=errors["unique_id"]), scale, FORECAST_LEVELS)
    return {f"{lv}": round(float(np.mean((errors["error"] >= bands[f"lo_{lv}"]) & (errors["error"] <= bands[f"hi_{lv}"]))), 4)
            for lv in FORECAST_LEVELS}


def _future_factor(idx: pd.DataFrame, history: pd.DataFrame, future: pd.DataFrame | None) -> pd.Series:
    key = pd.MultiIndex.from_frame(idx[["unique_id", "ds"]])
    if future is None or prep.EVENT_COLUMN not in future.columns:
        return pd.Series(1.0, index=key)
    f = future[["unique_id", "ds", prep.EVENT_COLUMN]].drop_duplicates(["unique_id", "ds"])
    f = f.assign(factor=prep.event_factor(f)).set_index(["unique_id", "ds"])["factor"]
    return f.reindex(key).fillna(1.0)


def _pooled_forecasts(history: pd.DataFrame, short: list[str], long_ids: list[str], idx: pd.DataFrame, m: int, freq: str) -> pd.DataFrame:
    pool = prep.PooledProfile(m, freq).fit(history[history["unique_id"].isin(long_ids)])
    frames = []
    for uid in short:
        rows = idx[idx["unique_id"] == uid]
        recent = history[history["unique_id"] == uid]
        raw = recent["y"].to_numpy() / recent["_factor"].to_numpy()
        mean = pool.predict(uid, raw, recent["ds"], pd.DatetimeIndex(rows["ds"]))
        frames.append(rows.assign(mean=mean, model=POOLED))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Per-series quantile bands (pipeline.forecast.bands): candidates scored on the CV windows
# ---------------------------------------------------------------------------------------------

def _band_probs(levels: Sequence[int]) -> list[float]:
    return sorted({round(q, 6) for q in (*FORECAST_QUANTILES, *[0.5 - lv / 200 for lv in levels], *[0.5 + lv / 200 for lv in levels])})


def _prob_columns(prob: float, levels: Sequence[int]) -> list[str]:
    """The output columns holding the `prob` quantile (a quantile column and/or an interval end)."""
    cols = [quantile_column(q) for q in FORECAST_QUANTILES if round(q, 6) == prob]
    cols += [f"lo_{lv}" for lv in levels if round(0.5 - lv / 200, 6) == prob]
    cols += [f"hi_{lv}" for lv in levels if round(0.5 + lv / 200, 6) == prob]
    return cols


def _chosen_cv(cv_frames: dict[str, pd.DataFrame], choice: dict[str, str]) -> pd.DataFrame:
    """The chosen forecast's cross-validation rows, with seasonal naive's forecast alongside."""
    key = ["unique_id", "ds", "window"]
    parts = []
    for name, f in cv_frames.items():
        ids = [u for u, c in choice.items() if c == name]
        if ids:
            sub = f[f["unique_id"].isin(ids)]
            parts.append(sub[[*key, "cutoff", "step", "y", "mean"]])
    if not parts or BASELINE not in cv_frames:
        return pd.DataFrame()
    chosen = pd.concat(parts, ignore_index=True)
    base = cv_frames[BASELINE][[*key, "mean"]].rename(columns={"mean": "snaive"})
    merged = chosen.merge(base, on=key, how="inner").sort_values(["unique_id", "window", "step"], kind="stable")
    return merged.reset_index(drop=True)


def _pooled_cv(p: Prepared, chosen: pd.DataFrame, probs: Sequence[float]) -> dict[float, np.ndarray]:
    """The pooled calibration's quantiles on every CV row, refitted without the row's window."""
    out = {q: np.full(len(chosen), np.nan) for q in probs}
    errs = chosen.assign(error=chosen["y"] - chosen["mean"])[["unique_id", "step", "error", "window"]]
    for w in chosen["window"].unique():
        rows = chosen["window"] == w
        rest = errs[~rows.to_numpy()]
        if rest.empty:
            continue
        cal = Calibration.fit(rest, p.scale, p.window)
        applied = cal.apply(chosen.loc[rows, ["unique_id", "ds", "step", "mean"]], p.scale, p.levels)
        for q in probs:
            cols = _prob_columns(q, p.levels)
            if cols:
                out[q][rows.to_numpy()] = applied[cols[0]].to_numpy(float)
    return out


def _series_cv(cols: dict[str, np.ndarray], pos: np.ndarray, pooled: dict[float, np.ndarray], history_ds: np.ndarray) -> bands.SeriesCV:
    """One series' CV evidence from the chosen-forecast columns (`cols`, all series) at rows `pos`."""
    window = cols["window"][pos]
    first = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
    cut = {int(window[i]): int(np.searchsorted(history_ds, np.datetime64(pd.Timestamp(cols["cutoff"][pos][i])), side="right"))
           for i in first}
    return bands.SeriesCV(window=window, step=cols["step"][pos], y=cols["y"][pos].astype(float), mean=cols["mean"][pos].astype(float),
                          snaive=cols["snaive"][pos].astype(float), cut=cut,
                          pooled={q: v[pos] for q, v in pooled.items()})


def _conformal_by_bucket(cv: bands.SeriesCV, cal: Calibration, probs: Sequence[float]) -> dict[float, np.ndarray]:
    """The conformal band's offsets per horizon bucket, from all of a series' CV errors."""
    bucket = bands.horizon_bucket(cv.step, cal.horizon, N_BUCKETS)
    return bands.conformal_offsets(cv.y - cv.mean, bucket, cal.g, np.arange(N_BUCKETS), probs)


def _final_band(method: str, cv: bands.SeriesCV | None, y: np.ndarray, mean: np.ndarray, steps: np.ndarray, m: int,
                cal: Calibration, probs: Sequence[float], pooled: dict[float, np.ndarray]) -> dict[float, np.ndarray] | None:
    """The chosen method's quantiles over the horizon, fitted on all the evidence (None: keep pooled)."""
    conformal = None
    if method == bands.CONFORMAL and cv is not None:
        fut_bucket = bands.horizon_bucket(steps, cal.horizon, N_BUCKETS)
        conformal = {q: v[fut_bucket] for q, v in _conformal_by_bucket(cv, cal, probs).items()}
    return bands.final_band(method, y, mean, steps, m, probs, pooled, conformal)


_Covered = dict[str, dict[int, np.ndarray]]  # series → interval level → which CV actuals its band covered


@dataclass(frozen=True)
class _BandTask:
    """What choosing one series' band needs: its CV evidence and history, and the run's shape."""

    cv: bands.SeriesCV
    history: np.ndarray
    season_length: int
    g: np.ndarray  # the pooled horizon profile of the errors (Calibration.g)
    horizon: int
    full_windows: int  # windows a series needs to choose among every band (min(n_windows, MAX_CV_WINDOWS))
    cv_probs: tuple[float, ...]
    score_probs: tuple[float, ...]


def _choose_band(task: _BandTask) -> tuple[str, dict, dict[int, np.ndarray]]:
    """One series: the band method chosen on its CV windows, its scores, and per interval level
    which of its CV actuals the chosen band covered (empty when it chose no CV candidate)."""
    cv, score_probs = task.cv, list(task.score_probs)
    cands = bands.cv_candidates(cv, task.history, task.season_length, task.g, N_BUCKETS, task.horizon,
                                list(task.cv_probs), max(score_probs))
    if len(cv.cut) < MIN_POINT_WINDOWS:  # one window is no evidence against seasonal naive's point
        cands = {k: v for k, v in cands.items() if k == bands.SNAIVE}
    elif len(cv.cut) < task.full_windows:  # too few windows to choose a band on: choose the point only
        cands = {k: v for k, v in cands.items() if k in (bands.EMPIRICAL, bands.SNAIVE)}
    method, scores = bands.choose_method({k: {q: v[q] for q in score_probs} for k, v in cands.items()}, cv.y, score_probs)
    covered: dict[int, np.ndarray] = {}
    for lv in FORECAST_LEVELS if method in cands else ():
        lo, hi = cands[method][round(0.5 - lv / 200, 6)], cands[method][round(0.5 + lv / 200, 6)]
        covered[lv] = (cv.y >= lo) & (cv.y <= hi)
    return method, scores, covered


def _band_choices(p: Prepared, sel: Selection, cv_frames: dict[str, pd.DataFrame], cal: Calibration, ids: Sequence[str],
                  hist: dict[str, tuple[np.ndarray, np.ndarray]], cv_probs: Sequence[float],
                  score_probs: Sequence[float]) -> tuple[dict[str, tuple[str, dict, bands.SeriesCV | None]], _Covered]:
    """Per series: the band method chosen on its CV windows, its scores, its CV evidence; and, per
    interval level, which of its CV actuals the chosen band covered (per series). Series
    without CV evidence get the seasonal-naive band from their own differences (the pool's shape
    only under two seasons): giving them the method the pool chose most often was tried and lost
    badly on short real series (bench/RESULTS.md). Each series' choice is its own, so the series
    are spread over the cores (forked workers) from `PARALLEL_BAND_SERIES` a worker on."""
    chosen = _chosen_cv(cv_frames, sel.choice)
    pooled = _pooled_cv(p, chosen, cv_probs) if not chosen.empty else {}
    cv_rows = chosen.groupby("unique_id", sort=False).indices if not chosen.empty else {}
    cols = {c: chosen[c].to_numpy() for c in chosen.columns}
    with_cv = [uid for uid in ids if uid in cv_rows]
    tasks = [_BandTask(cv=_series_cv(cols, cv_rows[uid], pooled, hist[uid][0]), history=hist[uid][1],
                       season_length=p.season_length, g=cal.g, horizon=p.window, full_windows=min(p.n_windows, MAX_CV_WINDOWS),
                       cv_probs=tuple(cv_probs), score_probs=tuple(score_probs)) for uid in with_cv]
    results = fork_map(_choose_band, tasks, worker_count(p.n_jobs, len(tasks)), min_items_per_worker=PARALLEL_BAND_SERIES)
    out: dict[str, tuple[str, dict, bands.SeriesCV | None]] = {}
    covered: _Covered = {}
    for uid, task, (method, scores, cov) in zip(with_cv, tasks, results):
        out[uid] = (method, scores, task.cv)
        if cov:
            covered[uid] = cov
    for uid in ids:
        if uid not in out:  # no evidence: the baseline (its point too: an unchecked model's point can be far off)
            own_too_short = len(hist[uid][1]) < 2 * p.season_length
            out[uid] = (bands.POOLED if own_too_short else bands.SNAIVE, {}, None)
    return out, covered


def _band_prob_sets(p: Prepared) -> tuple[list[float], list[float], list[float]]:
    """The probabilities bands are built at, scored at (τ and its neighbours), and computed at on CV."""
    score_probs = [round(q, 6) for q in bands.scoring_probs(p.tau)]
    cv_probs = sorted({*score_probs, *[round(0.5 + s * lv / 200, 6) for lv in FORECAST_LEVELS for s in (-1, 1)]})
    return _band_probs(p.levels), score_probs, cv_probs


def _histories(p: Prepared) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {u: (g["ds"].to_numpy(), g["y"].to_numpy(float)) for u, g in p.history.groupby("unique_id", sort=False)}


def _pooled_by_bucket(cal: Calibration, p: Prepared, uid: str, probs: Sequence[float]) -> dict[float, np.ndarray]:
    """The pooled band's offsets from the point, per horizon bucket, for one series (at its scale in `p`)."""
    steps = np.array([-(-b * cal.horizon // N_BUCKETS) for b in range(N_BUCKETS)])  # the first step of each bucket
    applied = cal.apply(pd.DataFrame({"unique_id": uid, "step": steps, "mean": 0.0}), p.scale, p.levels)
    return {q: applied[_prob_columns(q, p.levels)[0]].to_numpy(float) for q in probs}


def _json_table(by_prob: dict[float, np.ndarray]) -> list[list[float | None]]:
    """prob × bucket as plain JSON (null where not finite: read back as NaN, as the engine would have it)."""
    return [[float(x) if np.isfinite(x) else None for x in v] for v in by_prob.values()]


def band_decisions(p: Prepared, choice: dict[str, str], cv_frames: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Per series of `choice` (series → its chosen model, every one with CV rows in `cv_frames`,
    seasonal naive's among them): the band the engine would choose for that model (`_band_choices`:
    the candidates, the guardrail, the one-window rule), as JSON for the model registry. Stored:
    the method, its CV pinball, and what it fixes when chosen: `conformal` (own CV errors) and
    `pooled` (the pooled calibration, for `pooled` and `empirical+pooled`) as offsets from the
    point per horizon bucket (`horizon` sizes the buckets). Seasonal naive's and the empirical
    bands store nothing more: `bands.final_band` recomputes them from the history at scoring time,
    as the engine does at forecast time (hours since training included)."""
    sel = Selection(choice=dict(choice), members=[], scores={})
    cal = Calibration.fit(_chosen_errors(cv_frames, sel.choice), p.scale, p.window)
    probs, score_probs, cv_probs = _band_prob_sets(p)
    known = set(p.ids)
    ids = [u for u in choice if u in known]
    choices, _ = _band_choices(p, sel, cv_frames, cal, ids, _histories(p), cv_probs, score_probs)
    out: dict[str, dict] = {}
    for uid, (method, scores, cv) in choices.items():
        state: dict[str, Any] = {"method": method, "horizon": cal.horizon, "probs": probs,
                                 "cv_pinball": {k: round(v, 6) for k, v in scores.items()}}
        if method == bands.CONFORMAL and cv is not None:
            state["conformal"] = _json_table(_conformal_by_bucket(cv, cal, probs))
        if method in (bands.POOLED, bands.BLEND) or (method == bands.CONFORMAL and cv is None):
            state["pooled"] = _json_table(_pooled_by_bucket(cal, p, uid, probs))
        out[uid] = state
    return out


def _series_bands(p: Prepared, sel: Selection, cv_frames: dict[str, pd.DataFrame], cal: Calibration,
                  out: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Step 5b: per series, score every band candidate on the CV windows and apply the best."""
    probs, score_probs, cv_probs = _band_prob_sets(p)
    hist = _histories(p)
    out = out.reset_index(drop=True)
    positions = out.groupby("unique_id", sort=False).indices
    ids = [u for u in positions if sel.choice.get(u) != POOLED and u in hist]
    choices, covered = _band_choices(p, sel, cv_frames, cal, ids, hist, cv_probs, score_probs)
    columns = {q: _prob_columns(q, p.levels) for q in probs}
    arrays = {c: out[c].to_numpy(float).copy() for cs in columns.values() for c in cs}
    all_steps, all_means = out["step"].to_numpy(), out["mean"].to_numpy(float)
    per_series: dict[str, dict] = {}
    for uid in ids:
        method, scores, cv = choices[uid]
        pos = positions[uid]
        pooled_now = {q: arrays[columns[q][0]][pos] for q in probs}
        values = _final_band(method, cv, hist[uid][1], all_means[pos], all_steps[pos], p.season_length, cal, probs, pooled_now)
        if values is None:  # the pooled band stays (chosen, or the chosen one cannot be built now)
            if method != bands.POOLED:
                covered.pop(uid, None)  # its CV coverage was the other method's
            method = bands.POOLED
        else:
            for q, v in values.items():
                for col in columns[q]:
                    arrays[col][pos] = v
        per_series[uid] = {"quantile_method": method, "quantile_cv_pinball": {k: round(v, 6) for k, v in scores.items()}}
        if uid in covered:
            per_series[uid]["quantile_cv_coverage"] = {f"{lv}": round(float(np.mean(c)), 4) for lv, c in covered[uid].items()}
            per_series[uid]["quantile_cv_rows"] = len(cv.y) if cv is not None else 0
        if scores.get(bands.SNAIVE):
            per_series[uid]["quantile_cv_vs_snaive"] = round(scores[method] / scores[bands.SNAIVE], 4) if method in scores else None
    for col, arr in arrays.items():
        out[col] = arr
    counts: dict[str, int] = {}
    for info in per_series.values():
        counts[info["quantile_method"]] = counts.get(info["quantile_method"], 0) + 1
    cov = np.array([float(np.mean(c[80])) for c in covered.values()])
    summary = {"chosen": dict(sorted(counts.items())), "scored_at": score_probs,
               "share_cv80_within_70_90": round(float(np.mean((cov >= 0.7) & (cov <= 0.9))), 4) if len(cov) else None}
    # the CV coverage of the bands actually used, pooled over every CV actual of the series that chose on CV
    cv_coverage = {f"{lv}": round(float(np.mean(np.concatenate([c[lv] for c in covered.values()]))), 4)
                   for lv in FORECAST_LEVELS if covered}
    return out, {"series": per_series, "summary": summary, "cv_coverage": cv_coverage}


# ---------------------------------------------------------------------------------------------
# The pipeline stage
# ---------------------------------------------------------------------------------------------

def to_daily(history: pd.DataFrame) -> pd.DataFrame:
    """One row per series and day: request counts (`…:requests`) add up to the day's volume, concurrent
    demand keeps the day's peak (capacity is bought for the busiest hour). A volume's first or last day
    with fewer than 24 hours is dropped: a partial day would read as a quiet one."""
    daily = history.assign(ds=pd.to_datetime(history["ds"], utc=True).dt.floor("D"))
    exog = {c: (c, "max") for c in daily.columns if c not in ("unique_id", "ds", "y")}
    volume = daily["unique_id"].str.endswith(":requests")
    peaks = daily[~volume].groupby(["unique_id", "ds"], as_index=False).agg(y=("y", "max"), **exog)
    sums = daily[volume].groupby(["unique_id", "ds"], as_index=False).agg(y=("y", "sum"), hours_=("y", "size"), **exog)
    by_series = sums.groupby("unique_id")["ds"]
    edges = by_series.transform("min").eq(sums["ds"]) | by_series.transform("max").eq(sums["ds"])
    sums = sums[~(edges & (sums["hours_"] < HOURS_PER_DAY))].drop(columns="hours_")
    return pd.concat([peaks, sums], ignore_index=True).sort_values(["unique_id", "ds"], ignore_index=True)


def forecast_run_id(kind: str, interval: DataInterval) -> str:
    return f"{kind}-{interval.token}"


def planning_tau(settings: Settings) -> float:
    """The τ the holdout scores at: the strictest of the plan's per-resource τ."""
    return max(settings.cost.tau(r) for r in RESOURCE_TYPES)


@dataclass
class ForecastInputs:
    """What the forecast stage feeds the engine for one run (shared by `run_forecast` and the sharded forecast)."""

    #: the hourly feature series (pairs, regions, inbound totals) as read, summarised for the manifest
    #: (`history_summary`; the frame itself is not kept: the engine holds its own grid of it)
    feature_summary: dict[str, Any]
    #: what the engine forecasts from: the series at the run's frequency (daily peaks for the daily
    #: run) with the calendar-uplift and lagged-telemetry columns
    engine_input: pd.DataFrame
    options: EngineOptions
    future: pd.DataFrame | None  # the exogenous columns over the horizon
    hierarchy: dict[str, list[str]]  # inbound totals → the pair series they sum

    def summary(self) -> dict[str, Any]:
        return self.feature_summary


def pipeline_inputs(settings: Settings, as_of: Any, history: pd.DataFrame, kind: str, models: Sequence[str],
                    regressor_decisions: dict[str, dict] | None = None) -> ForecastInputs:
    """What the pipeline feeds the engine: the inbound hierarchy (pairs → destination totals),
    the calendar uplift (history and horizon), lagged telemetry regressors (hourly), and Prophet's
    holidays, with the engine options of a `kind` ("hourly" or "daily") run (`regressor_decisions`:
    `EngineOptions.regressors`)."""
    from pipeline.forecast.exog import exogenous_candidates, inbound_hierarchy, prophet_holidays

    history, hierarchy = inbound_hierarchy(history)
    if kind == "hourly":
        horizon, season, freq = settings.horizon_hours, HOURS_PER_DAY, "h"
        hist = history
    elif kind == "daily":
        horizon, season, freq = settings.daily_horizon_days, DAYS_PER_WEEK, "D"
        hist = to_daily(history)
    else:
        raise ValueError(f"kind must be 'hourly' or 'daily', got {kind!r}")
    hist, future = exogenous_candidates(settings.lake_root, as_of, hist, horizon, freq, telemetry=kind == "hourly")
    params: dict[str, dict] = {}
    if "prophet" in resolve_models(models, hist["unique_id"].nunique()):
        params["prophet"] = {"holidays": prophet_holidays(settings.lake_root, as_of, sorted(hist["unique_id"].unique()))}
    options = EngineOptions(horizon=horizon, season_length=season, freq=freq, tau=planning_tau(settings), models=models,
                            model_params=params, regressors=regressor_decisions)
    return ForecastInputs(feature_summary=history_summary(history), engine_input=hist, options=options, future=future, hierarchy=hierarchy)


def load_inputs(interval: DataInterval, settings: Settings, kind: str = "hourly", models: Sequence[str] = DEFAULT_MODELS) -> ForecastInputs:
    """The forecast stage's inputs for the run ending at `interval.end`: the feature series and the
    engine's input and options (shared by `run_forecast` and the sharded forecast)."""
    pair_volume = read_features(settings, "pair_volume_hourly", interval).to_pandas()
    region_demand = read_features(settings, "region_demand_hourly", interval).to_pandas()
    history = series_from_features(pair_volume, region_demand)
    if history.empty:
        raise ValueError(f"no feature rows for run {interval.token}: ingest history before forecasting")
    if kind == "hourly":  # forecast what arrivals add; write_forecast adds the committed level back
        carried = read_features(settings, "region_carried_hourly", interval).to_pandas()
        history = pd.concat([history, fresh_history(region_demand, carried)], ignore_index=True)
    decisions = earlier_regressor_decisions(settings, interval) if kind == "hourly" else None
    return pipeline_inputs(settings, interval.end, history, kind, models, decisions)


def earlier_regressor_decisions(settings: Settings, interval: DataInterval,
                                run_id_of: Callable[[DataInterval], str] | None = None) -> dict[str, dict]:
    """The regressor decisions (model → `regressors.decide` record with the `run_id` that made it) of
    the latest earlier hourly run of the same UTC day, if any.

    Why once a day: cross-validating a model with and without the telemetry columns doubles its CV
    (at 100 regions the GBM's second CV is ~28 s of a ~300 s hourly run), and the answer is a property
    of the fleet that an hour's data does not change — deciding it every hour would only let the
    forecasts flip between the two column sets from hour to hour. The day's first run decides (and
    any run whose candidate columns differ from it: `EngineOptions.regressors`); the daily run and
    the registry's training always decide. `run_id_of` names the runs to look in (default: the hourly runs)."""
    day = (interval.end - HOUR).date()
    end = interval.end - HOUR
    while (end - HOUR).date() == day:
        earlier = DataInterval(end - HOUR, end)
        run_id = run_id_of(earlier) if run_id_of else forecast_run_id("hourly", earlier)
        path = storage.join(lake.forecast_dir(settings.lake_root, run_id), "manifest.json")
        if storage.exists(path):
            try:
                decided = lake.read_json(path).get("engine", {}).get("regressors") or {}
            except (OSError, ValueError):
                decided = {}  # an unreadable manifest is no evidence: look further back
            found = {name: {**d, "run_id": d.get("reused_from") or run_id} for name, d in decided.items()
                     if isinstance(d, dict) and "used" in d}
            if found:
                return found
        end -= HOUR
    return {}


def history_summary(history: pd.DataFrame) -> dict[str, Any]:
    return {"start": str(history["ds"].min()), "end": str(history["ds"].max()), "series": int(history["unique_id"].nunique())}


def write_forecast(interval: DataInterval, settings: Settings, result: ForecastResult, *, kind: str, models: Sequence[str],
                   history: dict[str, Any], horizon: int, season_length: int, tau: float) -> dict:
    """Publish `result` as lake/forecasts/run=<run_id>/{forecast.parquet, manifest.json} (data first, manifest last).

    history: `history_summary` of the feature series; the other keywords are recorded in the manifest.
    """
    run_id = forecast_run_id(kind, interval)
    out_dir = lake.forecast_dir(settings.lake_root, run_id)
    forecasts = result.forecasts
    if kind == "hourly":
        committed = read_features(settings, "committed_profile", interval).to_pandas()
        forecasts = apply_committed(forecasts, committed, interval.end)
    table = pa.Table.from_pandas(forecasts[FORECAST.names], schema=FORECAST, preserve_index=False)
    lake.write_parquet_atomic(table, storage.join(out_dir, "forecast.parquet"))
    info = {k: v for k, v in result.info.items() if k != "timings_s"}  # timings differ run to run
    manifest = {
        "run_id": run_id,
        "kind": kind,
        "data_interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()},
        "history": history,
        "horizon": horizon,
        "season_length": season_length,
        "tau": tau,
        "models": list(result.info.get("models", models)),
        "engine": info,
        "selection": result.selection,
    }
    lake.write_json_atomic(storage.join(out_dir, "manifest.json"), manifest)
    return {"run_id": run_id, "path": storage.join(out_dir, "forecast.parquet"), "series": len(result.selection)}


def run_forecast(interval: DataInterval, settings: Settings, kind: str = "hourly", models: Sequence[str] = DEFAULT_MODELS) -> dict:
    """Forecast every series for the run ending at `interval.end`; writes forecast + manifest."""
    x = load_inputs(interval, settings, kind, models)
    # -- model registry (pipeline.forecast.scoring): the CURRENT version scores the series it covers,
    #    the engine forecasts the rest (everything when the registry is off, missing, stale or incompatible)
    from pipeline.forecast import scoring

    reg = scoring.RegistryScore()
    if kind == "hourly":
        reg = scoring.score_registry(interval, settings, lambda: prepare(x.engine_input, x.options, future=x.future, hierarchy=x.hierarchy))
    rest = scoring.uncovered(x, reg)
    result = ForecastResult(forecasts=pd.DataFrame(), info={"models": list(x.options.models)}) if rest is None else \
        run_engine(rest.engine_input, x.options, future=rest.future, hierarchy=rest.hierarchy)
    if kind == "hourly":
        result.forecasts, result.selection, result.info = scoring.combine(result.forecasts, result.selection, result.info, reg, x.hierarchy)
    # -- end model registry
    return write_forecast(interval, settings, result, kind=kind, models=models, history=x.summary(),
                          horizon=x.options.horizon, season_length=x.options.season_length, tau=x.options.tau)


def read_forecast(settings: Settings, run_id: str) -> pd.DataFrame:
    path = storage.join(lake.forecast_dir(settings.lake_root, run_id), "forecast.parquet")
    if not storage.exists(path):
        raise FileNotFoundError(f"forecast run {run_id!r} not found at {path}: run the forecast stage first")
    fs, p = storage.filesystem(path)
    return pq.read_table(p, filesystem=fs).to_pandas()


# The steps of run_engine and run_forecast (Prepared … write_forecast) are public for the sharded
# forecast (pipeline.forecast.shards).
__all__ = [
    "EngineOptions",
    "ForecastInputs",
    "ForecastResult",
    "ModelRun",
    "Prepared",
    "Selection",
    "assemble",
    "choose",
    "cross_validate_model",
    "final_forecast",
    "history_summary",
    "load_inputs",
    "prepare",
    "read_forecast",
    "resolve_models",
    "run_engine",
    "run_forecast",
    "select_and_forecast",
    "series_from_features",
    "write_forecast",
]
