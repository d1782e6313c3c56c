"""The per-series models (statsforecast, seasonal mean, Prophet) and the registry of every model.

Every model follows `pipeline.forecast.base.Forecaster` and is registered in `MODELS` under a short
name; heavy libraries (statsforecast, Prophet, scikit-learn, PyTorch) are imported inside the model
that needs them. The global models live in `global_models` and `deep`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.schemas import FORECAST_LEVELS, FORECAST_QUANTILES
from pipeline.forecast.base import (
    KEY_COLUMNS,
    OUTPUT_COLUMNS,
    QUANTILE_COLUMNS,
    Forecaster,
    NotEnoughData,
    exog_columns,
    future_index,
    gaussian_bands,
    output_columns,
)
from pipeline.forecast.deep import LSTMModel
from pipeline.forecast.global_models import GlobalGBMModel
from pipeline.forecast.quantiles import INTERVAL_LEVELS, QUANTILE_LEVELS, quantile_column

__all__ = ["MODELS", "OUTPUT_COLUMNS", "QUANTILE_COLUMNS", "Forecaster", "NotEnoughData", "future_index", "output_columns"]


# ---------------------------------------------------------------------------------------------
# statsforecast models
# ---------------------------------------------------------------------------------------------

class StatsForecastModel(Forecaster):
    """A statsforecast model; a seasonal naive fallback keeps one failing series from failing all.

    Parallel over series (statsforecast's process pool, `n_jobs`) from 64 series on; results do not
    depend on the number of workers.
    """

    parallel = True  # worth a process pool (fitting costs more than starting workers)

    def __init__(self, season_length: int, freq: str, n_jobs: int = 1, **params: Any) -> None:
        super().__init__(season_length, freq, n_jobs=n_jobs, **params)

    def _model(self) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _sf(self) -> Any:
        from statsforecast import StatsForecast
        from statsforecast.models import SeasonalNaive

        model = self._model()
        # Process pools cost a second or two to start: only worth it for many series.
        n_series = 0 if self._history is None else self._history["unique_id"].nunique()
        n_jobs = self.n_jobs if n_series >= 64 and self.parallel else 1
        sf = StatsForecast(models=[model], freq=self.freq, n_jobs=n_jobs,
                           fallback_model=SeasonalNaive(season_length=self.season_length))
        return sf, str(model)

    def _predict(self, h: int, future: pd.DataFrame | None, levels: tuple[int, ...]) -> pd.DataFrame:
        sf, alias = self._sf()
        all_levels = sorted({*INTERVAL_LEVELS, *levels})
        raw = sf.forecast(h=h, df=self.fitted_history[list(KEY_COLUMNS)], level=all_levels)
        out = pd.DataFrame({"unique_id": raw["unique_id"].astype(str), "ds": raw["ds"], "mean": raw[alias]})
        out["q50"] = raw[alias]
        for q, level in QUANTILE_LEVELS.items():
            out[quantile_column(q)] = raw[f"{alias}-hi-{level}"]
        for level in sorted({*FORECAST_LEVELS, *levels}):
            out[f"lo_{level}"] = raw[f"{alias}-lo-{level}"]
            out[f"hi_{level}"] = raw[f"{alias}-hi-{level}"]
        return out.reset_index(drop=True)

    def _cross_validate(self, history: pd.DataFrame, h: int, n_windows: int, step: int, refit: bool = True) -> pd.DataFrame:
        """statsforecast's cross-validation; refit=False fits at the first origin and moves the fit
        forward (its `forward`: parameters fixed, state updated) through the later windows."""
        self._history = history
        sf, alias = self._sf()
        raw = sf.cross_validation(h=h, df=history[list(KEY_COLUMNS)], n_windows=n_windows, step_size=step, refit=refit)
        raw = raw.rename(columns={alias: "mean"})
        raw["window"] = raw.groupby("unique_id")["cutoff"].rank(method="dense").astype(int) - 1
        raw["unique_id"] = raw["unique_id"].astype(str)
        return raw[["unique_id", "ds", "cutoff", "window", "mean"]].reset_index(drop=True)


class SeasonalNaiveModel(StatsForecastModel):
    """Repeat the last season: the floor every other model must beat."""

    name = "seasonal_naive"
    parallel = False  # nothing to fit: a process pool only costs time

    def _model(self) -> Any:
        from statsforecast.models import SeasonalNaive

        return SeasonalNaive(season_length=self.season_length)


class AutoETSModel(StatsForecastModel):
    """Exponential smoothing with automatic error/trend/season selection (statsforecast AutoETS)."""

    name = "auto_ets"
    min_seasons = 2.0

    def _model(self) -> Any:
        from statsforecast.models import AutoETS

        return AutoETS(season_length=self.season_length)


class FastARIMAModel(StatsForecastModel):
    """Seasonal ARIMA with a restricted stepwise search (p, q ≤ 2; P, Q ≤ 1; d, D ≤ 1; ≤ 12 models).

    The full AutoARIMA search at season 24 takes ~18 s a series; the restricted, approximated
    search takes about a second and loses little accuracy on M4 Hourly.
    """

    name = "arima"
    min_seasons = 3.0

    def _model(self) -> Any:
        from statsforecast.models import AutoARIMA

        return AutoARIMA(season_length=self.season_length, max_p=2, max_q=2, max_P=1, max_Q=1, max_d=1, max_D=1,
                         stepwise=True, approximation=True, nmodels=12, alias="arima")


class MSTLModel(StatsForecastModel):
    """Multiple seasonal-trend decomposition (daily + weekly for hourly data) with an AutoETS trend."""

    name = "mstl"
    min_seasons = 2.0

    def _seasons(self) -> list[int]:
        n_min = 0 if self._history is None else int(self._history.groupby("unique_id").size().min())
        seasons = [self.season_length]
        if self.season_length == 24 and n_min >= 2 * 168:
            seasons.append(168)
        return seasons

    def _model(self) -> Any:
        from statsforecast.models import MSTL, AutoETS

        seasons = self._seasons()
        return MSTL(season_length=seasons if len(seasons) > 1 else seasons[0], trend_forecaster=AutoETS(model="ZZN"),
                    stl_kwargs=stl_jumps(min(seasons)), alias="mstl")


def stl_jumps(period: int, seasonal_window: int = 11) -> dict[str, int]:
    """R's `stl` default jumps (each smoother evaluated every ceil(window / 10) points, linear in
    between) for the shortest season, for every season's STL: statsmodels' default evaluates every
    point, 3.7x slower over the daily + weekly seasons of four weeks of hourly data for a trend that
    differs by < 0.001 (bench/RESULTS.md). `seasonal_window`: statsforecast mstl's first (7 + 4)."""

    def odd(n: float) -> int:
        k = int(np.ceil(n))
        return k if k % 2 else k + 1

    trend = odd(1.5 * period / (1 - 1.5 / seasonal_window))  # statsmodels' (and R's) default trend window
    low_pass = odd(period)
    return {"seasonal_jump": -(-seasonal_window // 10), "trend_jump": -(-trend // 10), "low_pass_jump": -(-low_pass // 10)}


# ---------------------------------------------------------------------------------------------
# Simple numpy models (robust for noisy and intermittent counts)
# ---------------------------------------------------------------------------------------------

class SeasonalMeanModel(Forecaster):
    """Mean of the same phase over the last `window` seasons: a smoothed seasonal profile.

    Much less noisy than seasonal naive on Poisson-like counts and intermittent pair series; its
    spread is the in-sample residual standard deviation.
    """

    name = "seasonal_mean"

    def _predict(self, h: int, future: pd.DataFrame | None, levels: tuple[int, ...]) -> pd.DataFrame:
        m, k = self.season_length, int(self.params.get("window", 4))
        history = self.fitted_history
        idx = future_index(history, h, self.freq)
        means, sigmas = [], []
        for _, group in history.groupby("unique_id", sort=True):
            y = group["y"].to_numpy(float)
            n_seasons = max(1, min(k, len(y) // m))
            if len(y) < m:
                profile = np.full(m, y.mean())
                resid = y - y.mean()
            else:
                tail = y[len(y) - n_seasons * m:].reshape(n_seasons, m)
                profile = tail.mean(axis=0)
                resid = (tail - profile).ravel() * np.sqrt(n_seasons / max(n_seasons - 1, 1))
            means.append(np.resize(profile, h))
            sigmas.append(np.full(h, float(np.std(resid)) if len(resid) > 1 else 0.0))
        out = idx.assign(mean=np.concatenate(means))
        return gaussian_bands(out, np.concatenate(sigmas), levels)


# ---------------------------------------------------------------------------------------------
# Prophet
# ---------------------------------------------------------------------------------------------

def _quiet_prophet() -> None:
    """Silence cmdstanpy: its lazy `get_logger()` adds an INFO handler unless one exists already."""
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())  # so cmdstanpy's get_logger() adds none
        logger.setLevel(logging.ERROR)
        for handler in logger.handlers:
            handler.setLevel(logging.ERROR)
        logger.propagate = False


def _prophet_mean(model: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """A fitted Prophet's mean forecast (`yhat`, rows by `ds`) as a function of the frame to predict:
    in numpy from its parameters where `prophet_numpy` reproduces the model (~1 ms, equal to Prophet's
    to 1e-9; Prophet's own pandas `predict` is ~20 ms and the CV calls it twice per origin), else
    Prophet's `predict`."""
    from pipeline.forecast.prophet_numpy import compact_params, predict_mean

    try:
        params = compact_params(model)
    except ValueError:
        return lambda frame: model.predict(frame)["yhat"].to_numpy(float)
    return lambda frame: predict_mean(params, frame)


def _fit_prophet_one(uid: str, frame: pd.DataFrame, future: pd.DataFrame, regressors: list[str], holidays: pd.DataFrame | None,
                     daily: bool, weekly: bool, levels: tuple[int, ...], samples: int) -> pd.DataFrame:
    _quiet_prophet()
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "Importing plotly failed" at import
    from prophet import Prophet

    model = Prophet(daily_seasonality=daily, weekly_seasonality=weekly, yearly_seasonality=False,
                    holidays=holidays, interval_width=0.8, uncertainty_samples=0)
    for reg in regressors:
        model.add_regressor(reg)
    model.fit(frame[["ds", "y", *regressors]])
    fut = future[["ds", *regressors]].reset_index(drop=True)
    yhat = _prophet_mean(model)
    draws = None
    if samples:
        np.random.seed(0)  # predictive sampling is random: fix it so a rerun gives the same bytes
        model.uncertainty_samples = samples
        draws = model.predictive_samples(fut)["yhat"]
    out = pd.DataFrame({"unique_id": uid, "ds": future["ds"].to_numpy(), "mean": yhat(fut)})
    if draws is not None:
        out["q50"] = np.quantile(draws, 0.5, axis=1)
        for q in FORECAST_QUANTILES[1:]:
            out[quantile_column(q)] = np.quantile(draws, q, axis=1)
        for level in sorted({*FORECAST_LEVELS, *levels}):
            out[f"lo_{level}"] = np.quantile(draws, 0.5 - level / 200, axis=1)
            out[f"hi_{level}"] = np.quantile(draws, 0.5 + level / 200, axis=1)
    else:
        resid = frame["y"].to_numpy() - yhat(frame[["ds", *regressors]].reset_index(drop=True))
        out = gaussian_bands(out, np.full(len(out), float(np.std(resid))), levels)
    return out


class ProphetModel(Forecaster):
    """Prophet per series: daily/weekly seasonality, the event calendar as holidays, and the
    exogenous columns of the history as extra regressors (`future` must carry them).

    params: `holidays` (Prophet's holiday frame: holiday, ds, lower_window, upper_window; an
    optional `unique_id` column restricts a row to one series), `uncertainty_samples` (default
    200; 0 uses Prophet's own yhat_lower/upper as a Gaussian band).
    """

    name = "prophet"
    handles_events = True
    uses_exog = True

    def _predict(self, h: int, future: pd.DataFrame | None, levels: tuple[int, ...]) -> pd.DataFrame:
        from joblib import Parallel, delayed

        hist = self.fitted_history
        regressors = exog_columns(hist)
        idx = future_index(hist, h, self.freq)
        if regressors:
            if future is None or not set(regressors) <= set(future.columns):
                regressors = []  # no future values: fit without them
            else:
                fut = self._validated(future.assign(y=0.0))
                idx = idx.merge(fut[["unique_id", "ds", *regressors]], on=["unique_id", "ds"], how="left")
                idx[regressors] = idx.groupby("unique_id")[regressors].ffill().fillna(0.0)
        holidays = self.params.get("holidays")
        samples = int(self.params.get("uncertainty_samples", 200))
        hourly = pd.Timedelta(pd.tseries.frequencies.to_offset(self.freq)) < pd.Timedelta(days=1)
        jobs = []
        for uid, frame in hist.groupby("unique_id", sort=True):
            hol = None
            if holidays is not None and len(holidays):
                hol = holidays
                if "unique_id" in hol.columns:
                    hol = hol[hol["unique_id"].isin([uid, "*"])].drop(columns="unique_id")
                hol = hol if len(hol) else None
            span_days = (frame["ds"].max() - frame["ds"].min()) / pd.Timedelta(days=1)
            jobs.append(delayed(_fit_prophet_one)(uid, frame, idx[idx["unique_id"] == uid], regressors, hol,
                                                   hourly, span_days >= 14, levels, samples))
        n_jobs = self.n_jobs if len(jobs) >= 8 else 1
        frames = Parallel(n_jobs=n_jobs, backend="loky")(jobs) if n_jobs != 1 else [j[0](*j[1], **j[2]) for j in jobs]
        return pd.concat(frames, ignore_index=True)

    def _cross_validate(self, history: pd.DataFrame, h: int, n_windows: int, step: int, refit: bool = True) -> pd.DataFrame:
        """Refit at every origin, whatever `refit`, reading the mean only (no predictive sampling:
        0.55 → 0.42 s a series). One fit before the first origin predicting every later window
        would be 4× cheaper, but it scored Prophet with fits up to 8 days old and changed the
        regressor decision: registry pinball on the samples 0.1382 → 0.1404 (bench/RESULTS.md)."""
        cv_model = type(self)(self.season_length, self.freq, n_jobs=self.n_jobs, **{**self.params, "uncertainty_samples": 0})
        return Forecaster._cross_validate(cv_model, history, h, n_windows, step, refit)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

MODELS: dict[str, Callable[..., Forecaster]] = {
    "seasonal_naive": SeasonalNaiveModel,
    "seasonal_mean": SeasonalMeanModel,
    "auto_ets": AutoETSModel,
    "arima": FastARIMAModel,
    "mstl": MSTLModel,
    "prophet": ProphetModel,
    "global_gbm": GlobalGBMModel,
    "lstm": LSTMModel,
}


@functools.cache
def _model_class(name: str) -> type:
    factory = MODELS[name]
    return factory if isinstance(factory, type) else type(factory(24, "h"))


class _Attr:
    """`MODELS_GLOBAL.get(name)`: a model class attribute, looked up lazily (no heavy imports)."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(_model_class(name), self.attr, default) if name in MODELS else default


MODELS_HANDLE_EVENTS = _Attr("handles_events")
MODELS_USE_EXOG = _Attr("uses_exog")
MODELS_GLOBAL = _Attr("is_global")
MODEL_MIN_SEASONS = _Attr("min_seasons")
MODELS_ROBUST = _Attr("robust")
