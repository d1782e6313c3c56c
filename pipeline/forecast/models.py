"""Forecasting models behind one interface: fit on long-format history, predict mean + quantiles.

Like sktime's BaseForecaster, the public `fit`/`predict` validate and delegate to each model's
private `_fit`/`_predict`. Input is Nixtla's long format `unique_id, ds, y`; output has
`unique_id, ds, mean, q50, q80, q90, q95, q99, lo_80, hi_80, lo_95, hi_95`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.forecast.quantiles import INTERVAL_LEVELS, QUANTILE_LEVELS, quantile_column
from pipeline.schemas import FORECAST_LEVELS

OUTPUT_COLUMNS = [
    "unique_id", "ds", "mean",
    *[quantile_column(q) for q in (0.5, *QUANTILE_LEVELS)],
    *[f"{side}_{level}" for level in FORECAST_LEVELS for side in ("lo", "hi")],
]


class Forecaster(ABC):
    """fit(history) then predict(h): the contract every peerscale model follows."""

    name: str = "forecaster"

    def __init__(self, season_length: int, freq: str) -> None:
        self.season_length = season_length
        self.freq = freq
        self._history: pd.DataFrame | None = None

    def fit(self, history: pd.DataFrame) -> "Forecaster":
        missing = {"unique_id", "ds", "y"} - set(history.columns)
        if missing:
            raise ValueError(f"history lacks columns {sorted(missing)}; expected long format unique_id, ds, y")
        if history.empty:
            raise ValueError("history is empty: nothing to fit")
        self._history = history.sort_values(["unique_id", "ds"]).reset_index(drop=True)
        self._fit(self._history)
        return self

    def predict(self, h: int) -> pd.DataFrame:
        if self._history is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        if h <= 0:
            raise ValueError(f"horizon must be positive, got {h}")
        out = self._predict(h)
        numeric = [c for c in OUTPUT_COLUMNS if c not in ("unique_id", "ds")]
        out[numeric] = out[numeric].clip(lower=0.0)  # demand is never negative
        # Quantiles must not cross: enforce monotonicity across the stored levels.
        qcols = [quantile_column(q) for q in (0.5, *QUANTILE_LEVELS)]
        out[qcols] = np.maximum.accumulate(out[qcols].to_numpy(), axis=1)
        return out[OUTPUT_COLUMNS]

    def _fit(self, history: pd.DataFrame) -> None:  # models fitting lazily in _predict may skip it
        return None

    @abstractmethod
    def _predict(self, h: int) -> pd.DataFrame: ...


class StatsForecastModel(Forecaster):
    """A statsforecast model; a seasonal naive fallback keeps one failing series from failing all."""

    def __init__(self, name: str, factory: Callable[[int], Any], season_length: int, freq: str, n_jobs: int = 1) -> None:
        super().__init__(season_length, freq)
        self.name = name
        self._factory = factory
        self.n_jobs = n_jobs

    def _predict(self, h: int) -> pd.DataFrame:
        from statsforecast import StatsForecast
        from statsforecast.models import SeasonalNaive

        model = self._factory(self.season_length)
        sf = StatsForecast(
            models=[model], freq=self.freq, n_jobs=self.n_jobs, fallback_model=SeasonalNaive(season_length=self.season_length)
        )
        raw = sf.forecast(h=h, df=self._history, level=list(INTERVAL_LEVELS))
        alias = str(model)
        out = pd.DataFrame({"unique_id": raw["unique_id"].astype(str), "ds": raw["ds"], "mean": raw[alias]})
        out["q50"] = raw[alias]
        for q, level in QUANTILE_LEVELS.items():
            out[quantile_column(q)] = raw[f"{alias}-hi-{level}"]
        for level in FORECAST_LEVELS:
            out[f"lo_{level}"] = raw[f"{alias}-lo-{level}"]
            out[f"hi_{level}"] = raw[f"{alias}-hi-{level}"]
        return out.reset_index(drop=True)


def seasonal_naive(season_length: int, freq: str) -> Forecaster:
    """Repeat the last season: the floor every other model must beat."""
    from statsforecast.models import SeasonalNaive

    return StatsForecastModel("seasonal_naive", lambda m: SeasonalNaive(season_length=m), season_length, freq)


def auto_ets(season_length: int, freq: str) -> Forecaster:
    """Exponential smoothing with automatic error/trend/season selection (statsforecast AutoETS)."""
    from statsforecast.models import AutoETS

    return StatsForecastModel("auto_ets", lambda m: AutoETS(season_length=m), season_length, freq)


MODELS: dict[str, Callable[[int, str], Forecaster]] = {
    "seasonal_naive": seasonal_naive,
    "auto_ets": auto_ets,
}
