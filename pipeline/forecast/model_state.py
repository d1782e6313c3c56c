"""Fitted per-series models as data: fit once (daily), store safely, score later without refitting.

Why: the hourly run should not refit the daily-trained zoo. Each model name of
`pipeline.forecast.models.MODELS` maps to a way to (a) fit one series and return its state as plain
JSON-able data and (b) forecast from that state on the series *extended* by the observations since
training, with the fitted parameters fixed:

- `seasonal_naive`, `seasonal_mean`: no parameters; the forecast is re-applied to the extended series.
- `auto_ets`, `arima`, `mstl` (statsforecast): the fitted `model_` dict (for MSTL: its trend model's)
  is stored as tagged JSON (numpy arrays as lists, with dtype and shape) and restored onto a fresh
  model object; `forward(y=extended)` applies the fixed parameters to the extended series
  (statsforecast's documented way to "apply a fitted model to a new series").
- `prophet`: Prophet's own `model_to_json`, plus the compact parameters of its mean forecast
  (`pipeline.forecast.prophet_numpy`); scoring predicts the new horizon with the fitted parameters
  (Prophet has no state to filter forward: its trend is extrapolated from training), in numpy from the
  compact parameters when the state has them, else by Prophet from the JSON.
- `global_gbm` is global (one model for every series): see `pipeline.forecast.registry` (stored
  once per version, checksummed, loaded only from the registry).

No pickle here: every state is JSON.
"""

from __future__ import annotations

import base64
import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd

#: bump when a state's layout changes: the registry refuses to score states of another format
STATE_FORMAT = 1
STATSFORECAST_MODELS = ("auto_ets", "arima", "mstl")
#: in-sample arrays of statsforecast's `model_` that `forward` recomputes on the new series: not stored
#: (an ETS state would otherwise be ~150 kB a series)
IN_SAMPLE_KEYS = frozenset({"residuals", "fitted", "states", "actual_residuals"})
SIMPLE_MODELS = ("seasonal_naive", "seasonal_mean")
LOCAL_MODELS = (*SIMPLE_MODELS, *STATSFORECAST_MODELS, "prophet")


class StateError(ValueError):
    """A stored state cannot be read or applied (corrupt, another format, another library version)."""


# ---------------------------------------------------------------------------------------------
# Tagged JSON for numpy / pandas values (statsforecast's model_ dicts)
# ---------------------------------------------------------------------------------------------

def encode(value: Any) -> Any:
    """A JSON-able, lossless form of `value` (dicts, lists, tuples, numpy arrays and scalars, Series)."""
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple) and type(value).__name__ == "results" and hasattr(value, "_fields"):
        return {"__sf_results__": [encode(v) for v in value]}  # statsforecast.utils.results (the ETS optimiser's)
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, pd.Series):
        return {"__series__": encode(value.to_numpy()), "name": encode(value.name)}
    if isinstance(value, pd.DataFrame):
        return {"__frame__": {str(c): encode(value[c].to_numpy()) for c in value.columns}}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"__objarray__": [encode(v) for v in value.tolist()]}
        raw = np.ascontiguousarray(value)
        return {"__ndarray__": base64.b64encode(raw.tobytes()).decode("ascii"), "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(value, np.generic):
        return {"__scalar__": encode(value.item()), "dtype": value.dtype.str}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"__float__": repr(value)}  # nan / inf survive JSON
    raise StateError(f"cannot store a value of type {type(value).__name__}")


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dict__" in value:
        return {decode(k): decode(v) for k, v in value["__dict__"]}
    if "__sf_results__" in value:
        from statsforecast.utils import results

        return results(*[decode(v) for v in value["__sf_results__"]])
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__series__" in value:
        return pd.Series(decode(value["__series__"]), name=decode(value["name"]))
    if "__frame__" in value:
        return pd.DataFrame({k: decode(v) for k, v in value["__frame__"].items()})
    if "__objarray__" in value:
        return np.array([decode(v) for v in value["__objarray__"]], dtype=object)
    if "__ndarray__" in value:
        buf = base64.b64decode(value["__ndarray__"])
        return np.frombuffer(buf, dtype=np.dtype(value["dtype"])).reshape(tuple(value["shape"])).copy()
    if "__scalar__" in value:
        return np.dtype(value["dtype"]).type(decode(value["__scalar__"]))
    if "__float__" in value:
        return float(value["__float__"])
    raise StateError(f"unknown tagged value with keys {sorted(value)[:5]}")


# ---------------------------------------------------------------------------------------------
# statsforecast models
# ---------------------------------------------------------------------------------------------

def _sf_model(name: str, season_length: int, n_points: int) -> Any:
    """The unfitted statsforecast model the engine uses for `name` (same settings as pipeline.forecast.models)."""
    from pipeline.forecast.models import MODELS

    wrapper = MODELS[name](season_length, "h")
    wrapper._history = pd.DataFrame({"unique_id": ["x"] * n_points})  # MSTL picks its seasons by length
    return wrapper._model()  # type: ignore[attr-defined]  # every statsforecast wrapper defines it


def _fit_sf(name: str, y: np.ndarray, season_length: int) -> dict:
    model = _sf_model(name, season_length, len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(y=y.astype(float))
    target = model.trend_forecaster if name == "mstl" else model
    seasons = model.season_length if name == "mstl" else season_length
    kept = {k: v for k, v in target.model_.items() if k not in IN_SAMPLE_KEYS}
    return {"seasons": encode(seasons), "model_": encode(kept)}


def _forward_sf(name: str, state: dict, y: np.ndarray, h: int, season_length: int) -> np.ndarray:
    model = _sf_model(name, season_length, len(y))
    if name == "mstl":
        model.season_length = decode(state["seasons"])
        model.trend_forecaster.model_ = decode(state["model_"])
    else:
        model.model_ = decode(state["model_"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.forward(y=y.astype(float), h=h)
    return np.asarray(out["mean"], float)


# ---------------------------------------------------------------------------------------------
# Parameter-free models
# ---------------------------------------------------------------------------------------------

def _seasonal_naive(y: np.ndarray, h: int, m: int) -> np.ndarray:
    if len(y) < m:
        return np.full(h, y[-1] if len(y) else 0.0)
    return np.resize(y[len(y) - m:], h)


def _seasonal_mean(y: np.ndarray, h: int, m: int, window: int = 4) -> np.ndarray:
    """As pipeline.forecast.models.SeasonalMeanModel: the mean of the same phase over the last seasons."""
    if len(y) < m:
        return np.full(h, y.mean() if len(y) else 0.0)
    k = max(1, min(window, len(y) // m))
    return np.resize(y[len(y) - k * m:].reshape(k, m).mean(axis=0), h)


# ---------------------------------------------------------------------------------------------
# Prophet
# ---------------------------------------------------------------------------------------------

def _fit_prophet(frame: pd.DataFrame, freq: str, holidays: pd.DataFrame | None) -> dict:
    from contextlib import suppress

    from pipeline.forecast.base import exog_columns
    from pipeline.forecast.models import _quiet_prophet
    from pipeline.forecast.prophet_numpy import compact_params

    _quiet_prophet()
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    from prophet import Prophet
    from prophet.serialize import model_to_json

    regressors = exog_columns(frame)
    hourly = pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) < pd.Timedelta(days=1)
    span_days = (frame["ds"].max() - frame["ds"].min()) / pd.Timedelta(days=1)
    model = Prophet(daily_seasonality=hourly, weekly_seasonality=span_days >= 14, yearly_seasonality=False,
                    holidays=holidays if holidays is not None and len(holidays) else None, interval_width=0.8,
                    uncertainty_samples=0)
    for reg in regressors:
        model.add_regressor(reg)
    model.fit(frame[["ds", "y", *regressors]])
    state: dict[str, Any] = {"json": model_to_json(model), "regressors": regressors}
    with suppress(ValueError):  # a model the numpy path does not reproduce (e.g. logistic growth): JSON only
        state["params"] = compact_params(model)
    return state


def _predict_prophet(state: dict, future: pd.DataFrame) -> np.ndarray:
    """Prophet's mean forecast: from the compact parameters in numpy (~1 ms) when the state has them,
    else (states stored before them, models the numpy path does not reproduce) by Prophet itself."""
    regs = list(state.get("regressors", []))
    missing = [r for r in regs if r not in future.columns]
    if missing:
        raise StateError(f"prophet state needs regressors {missing} over the horizon")
    fut = future[["ds", *regs]].reset_index(drop=True)
    if regs and fut[regs].isna().to_numpy().any():  # the check alone is cheaper than the fill (~0.2 ms)
        fut[regs] = fut[regs].ffill().fillna(0.0)
    if state.get("params") is not None:
        return _predict_prophet_params(state["params"], fut)
    from pipeline.forecast.models import _quiet_prophet

    _quiet_prophet()
    from prophet.serialize import model_from_json

    try:
        model = model_from_json(state["json"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise StateError(f"prophet state is unreadable ({type(exc).__name__}: {str(exc)[:100]})") from exc
    return model.predict(fut)["yhat"].to_numpy(float)


def _predict_prophet_params(params: Any, fut: pd.DataFrame) -> np.ndarray:
    """`prophet_numpy.predict_mean`, any failure of malformed parameters as a StateError."""
    from pipeline.forecast.prophet_numpy import predict_mean

    try:
        return predict_mean(params, fut)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"prophet state's compact parameters do not apply ({type(exc).__name__}: {str(exc)[:160]})") from exc


# ---------------------------------------------------------------------------------------------
# The public entry points
# ---------------------------------------------------------------------------------------------

def fit_state(name: str, frame: pd.DataFrame, season_length: int, freq: str, params: dict | None = None) -> dict:
    """Fit `name` on one series (`ds, y` + exogenous columns) and return its JSON-able state."""
    params = params or {}
    y = frame["y"].to_numpy(float)
    if name in SIMPLE_MODELS:
        return {"window": int(params.get("window", 4))} if name == "seasonal_mean" else {}
    if name in STATSFORECAST_MODELS:
        return _fit_sf(name, y, season_length)
    if name == "prophet":
        holidays = params.get("holidays")
        if holidays is not None and "unique_id" in getattr(holidays, "columns", []):
            uid = str(frame["unique_id"].iloc[0]) if "unique_id" in frame.columns else "*"
            holidays = holidays[holidays["unique_id"].isin([uid, "*"])].drop(columns="unique_id")
        return _fit_prophet(frame, freq, holidays)
    raise StateError(f"model {name!r} has no per-series state (global models are stored by the registry)")


def score_state(name: str, state: dict, frame: pd.DataFrame, h: int, season_length: int,
                future: pd.DataFrame | None = None) -> np.ndarray:
    """The h-step mean forecast of `name` from its stored `state`, after the last row of `frame`
    (the training series extended by the observations since): fitted parameters, no refit."""
    y = frame["y"].to_numpy(float)
    if name == "seasonal_naive":
        return _seasonal_naive(y, h, season_length)
    if name == "seasonal_mean":
        return _seasonal_mean(y, h, season_length, int(state.get("window", 4)))
    if name in STATSFORECAST_MODELS:
        try:
            return _forward_sf(name, state, y, h, season_length)
        except (KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{name}: stored state does not apply ({exc})") from exc
    if name == "prophet":
        if future is None:
            raise StateError("prophet needs the horizon's timestamps")
        return _predict_prophet(state, future)
    raise StateError(f"model {name!r} cannot be scored from a per-series state")


def library_versions() -> dict[str, str]:
    """The libraries whose objects the states hold: a state is scored only by the same major.minor."""
    import importlib.metadata as md

    out = {}
    for dist in ("statsforecast", "prophet", "scikit-learn", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out
