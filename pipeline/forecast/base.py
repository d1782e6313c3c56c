"""The contract every forecasting model follows: `Forecaster` (fit on long-format history,
predict mean + quantiles) and the helpers models share.

Like sktime's BaseForecaster, the public `fit`/`predict`/`cross_validate` validate and delegate to
each model's private `_fit`/`_predict`/`_cross_validate`. Input is Nixtla's long format
`unique_id, ds, y` (extra numeric columns are exogenous regressors; `future` carries them for the
horizon); output has `unique_id, ds, mean, q50, q80, q90, q95, q99, lo_80, hi_80, lo_95, hi_95`
(plus `lo_<l>/hi_<l>` for any other requested level).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.schemas import FORECAST_LEVELS, FORECAST_QUANTILES
from pipeline.forecast.quantiles import QUANTILE_LEVELS, quantile_column

OUTPUT_COLUMNS = [
    "unique_id", "ds", "mean",
    *[quantile_column(q) for q in (0.5, *QUANTILE_LEVELS)],
    *[f"{side}_{level}" for level in FORECAST_LEVELS for side in ("lo", "hi")],
]
QUANTILE_COLUMNS = [quantile_column(q) for q in FORECAST_QUANTILES]
KEY_COLUMNS = ("unique_id", "ds", "y")
#: Models that divide a window by its scale keep that scale at least this share of the window's
#: level and at least MIN_SCALE, so that flat (constant or all-zero) windows do not blow up.
RELATIVE_SCALE_FLOOR = 1e-3
MIN_SCALE = 1e-8


class NotEnoughData(ValueError):
    """A model cannot be fitted on this history (too short for its lookback); the engine drops it."""


def _z(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def output_columns(levels: Sequence[int] = FORECAST_LEVELS) -> list[str]:
    extra = [f"{side}_{lv}" for lv in sorted(set(levels) - set(FORECAST_LEVELS)) for side in ("lo", "hi")]
    return OUTPUT_COLUMNS + extra


def exog_columns(frame: pd.DataFrame) -> list[str]:
    """Exogenous regressors: every numeric column besides the key columns."""
    return [c for c in frame.columns if c not in KEY_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])]


def worker_count(n_jobs: int | None, tasks: int) -> int:
    """Processes for `tasks` parallel tasks: `n_jobs` (None or negative: one per core), never more
    than the tasks, at least one."""
    import os

    cores = os.cpu_count() or 1
    wanted = cores if n_jobs is None or n_jobs < 0 else max(1, n_jobs)
    return max(1, min(wanted, tasks))


def future_index(history: pd.DataFrame, h: int, freq: str) -> pd.DataFrame:
    """`unique_id, ds` for the h steps after each series' last timestamp."""
    last = history.groupby("unique_id", sort=True)["ds"].max()
    offset = pd.tseries.frequencies.to_offset(freq)
    ids = np.repeat(last.index.to_numpy(), h)
    steps = np.tile(np.arange(1, h + 1), len(last))
    ds = np.repeat(last.to_numpy(), h) + steps * pd.Timedelta(offset)
    return pd.DataFrame({"unique_id": ids, "ds": ds})


def gaussian_bands(frame: pd.DataFrame, sigma: np.ndarray, levels: Sequence[int]) -> pd.DataFrame:
    """Fill quantile and interval columns from a mean and a per-row standard deviation."""
    mean = frame["mean"].to_numpy(float)
    frame["q50"] = mean
    for q in FORECAST_QUANTILES[1:]:
        frame[quantile_column(q)] = mean + _z(q) * sigma
    for level in sorted({*FORECAST_LEVELS, *levels}):
        z = _z(0.5 + level / 200)
        frame[f"lo_{level}"] = mean - z * sigma
        frame[f"hi_{level}"] = mean + z * sigma
    return frame


class Forecaster(ABC):
    """fit(history) then predict(h): the contract every peerscale model follows."""

    name: str = "forecaster"
    #: one model across all series (fit once) rather than one per series
    is_global: bool = False
    #: models the calendar itself (holidays / event regressors): the engine does not adjust its input
    handles_events: bool = False
    #: shortest history (in seasons) the model needs per series
    min_seasons: float = 1.0
    #: robust to one-off bursts by itself: the engine feeds it the raw (uncleaned) history
    robust: bool = False
    #: reads the exogenous columns of its input (the engine cross-validates it with and without the
    #: candidate columns: pipeline.forecast.regressors)
    uses_exog: bool = False

    def __init__(self, season_length: int, freq: str, n_jobs: int = 1, **params: Any) -> None:
        self.season_length = int(season_length)
        self.freq = freq
        self.n_jobs = n_jobs
        self.params = params
        self._history: pd.DataFrame | None = None

    # -- public API ---------------------------------------------------------------------------
    @staticmethod
    def _validated(history: pd.DataFrame) -> pd.DataFrame:
        missing = {"unique_id", "ds", "y"} - set(history.columns)
        if missing:
            raise ValueError(f"history lacks columns {sorted(missing)}; expected long format unique_id, ds, y")
        if history.empty:
            raise ValueError("history is empty: nothing to fit")
        frame = history.copy()
        frame["unique_id"] = frame["unique_id"].astype(str)
        ds = pd.to_datetime(frame["ds"])
        if getattr(ds.dt, "tz", None) is not None:
            ds = ds.dt.tz_convert("UTC").dt.tz_localize(None)
        frame["ds"] = ds
        frame["y"] = frame["y"].astype(float)
        return frame.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)

    @property
    def fitted_history(self) -> pd.DataFrame:
        """The history `fit` stored, for `_predict` (which `predict` calls only after `fit`)."""
        if self._history is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        return self._history

    def fit(self, history: pd.DataFrame) -> Forecaster:
        self._history = self._validated(history)
        self._fit(self._history)
        return self

    def predict(self, h: int, future: pd.DataFrame | None = None, levels: Sequence[int] = FORECAST_LEVELS) -> pd.DataFrame:
        if self._history is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        if h <= 0:
            raise ValueError(f"horizon must be positive, got {h}")
        out = self._predict(h, future, tuple(levels))
        return self._finish(out, levels)

    def cross_validate(self, history: pd.DataFrame, h: int, n_windows: int, step: int | None = None,
                       refit: bool = True) -> pd.DataFrame:
        """Rolling-origin forecasts: `unique_id, ds, cutoff, window, mean` for the last n_windows
        origins of each series (window 0 is the earliest), each fit strictly before its origin.

        refit=False: fit once at the earliest origin, then update that fit with each later window's
        observations without re-estimating its parameters (how the daily registry's models are
        used by the hourly runs); models without such an update path refit at every origin."""
        frame = self._validated(history)
        return self._cross_validate(frame, h, n_windows, step or h, refit)

    # -- helpers for subclasses ----------------------------------------------------------------
    def _finish(self, out: pd.DataFrame, levels: Sequence[int]) -> pd.DataFrame:
        cols = output_columns(levels)
        numeric = [c for c in cols if c not in ("unique_id", "ds")]
        values = np.nan_to_num(out[numeric].to_numpy(float), nan=0.0, posinf=0.0, neginf=0.0)
        out[numeric] = np.clip(values, 0.0, None)  # demand is never negative
        out[QUANTILE_COLUMNS] = np.maximum.accumulate(out[QUANTILE_COLUMNS].to_numpy(), axis=1)
        for level in sorted({*FORECAST_LEVELS, *levels}):
            lo, hi = out[f"lo_{level}"].to_numpy(), out[f"hi_{level}"].to_numpy()
            out[f"hi_{level}"] = np.maximum(lo, hi)
        return out[cols].reset_index(drop=True)

    def _cross_validate(self, history: pd.DataFrame, h: int, n_windows: int, step: int, refit: bool = True) -> pd.DataFrame:
        """Default: refit on each truncated history, whatever `refit` (per-series models override
        with faster paths)."""
        frames = []
        rank = history.groupby("unique_id").cumcount(ascending=False)  # 0 = last point
        for window in range(n_windows):
            back = (n_windows - 1 - window) * step + h  # points held out after this origin
            train = history[rank >= back]
            actual_ids = train.groupby("unique_id").size()
            train = train[train["unique_id"].isin(actual_ids[actual_ids >= 1].index)]
            if train.empty:
                continue
            fitted = type(self)(self.season_length, self.freq, n_jobs=self.n_jobs, **self.params).fit(train)
            future = history[(rank < back) & (rank >= back - h)]
            pred = fitted.predict(h, future=future)
            cutoff = train.groupby("unique_id")["ds"].max().rename("cutoff")
            frames.append(pred[["unique_id", "ds", "mean"]].merge(cutoff, on="unique_id").assign(window=window))
        if not frames:
            return pd.DataFrame(columns=["unique_id", "ds", "cutoff", "window", "mean"])
        return pd.concat(frames, ignore_index=True)

    def _fit(self, history: pd.DataFrame) -> None:  # models fitting lazily in _predict may skip it
        return None

    @abstractmethod
    def _predict(self, h: int, future: pd.DataFrame | None, levels: tuple[int, ...]) -> pd.DataFrame: ...
