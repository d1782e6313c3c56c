"""Prophet's mean forecast (`yhat`) from its fitted parameters, in numpy: ~1 ms instead of ~50 ms.

Why: the hourly run scores hundreds of stored Prophet models. Rebuilding each `Prophet` object from
its JSON and calling its pandas-heavy `predict` costs ~50 ms a series; the mean forecast itself is a
piecewise-linear trend and one matrix product. `compact_params` reads, once at training, everything
`Prophet.predict` uses for `yhat` into plain JSON-able data; `predict_mean` recomputes `yhat` from it
with the same arithmetic as `Prophet.predict_trend` / `predict_seasonal_components` (prophet 1.x):

    yhat = trend * (1 + multiplicative_terms) + additive_terms,  trend = piecewise(t) * y_scale + floor

Supported: linear and flat growth; any seasonalities without a condition; a holidays frame with
windows and prior scales; extra regressors (additive or multiplicative, standardized or not).
Not supported (`compact_params` raises ValueError, the caller keeps Prophet's own `predict`): logistic
growth, conditional seasonalities, country holidays (they depend on the years predicted), regressors
forecast by their own Prophet model (`regressor_predictor`). Prophet is not imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

#: bump when the layout of the dict changes: `predict_mean` refuses any other
PARAMS_FORMAT = 1
GROWTHS = ("linear", "flat")
MODES = ("additive", "multiplicative")
NS_PER_DAY = 86_400 * 10**9


# ---------------------------------------------------------------------------------------------
# From a fitted Prophet object
# ---------------------------------------------------------------------------------------------

def compact_params(model: Any) -> dict:
    """The JSON-able parameters `predict_mean` needs, from a fitted `prophet.Prophet`.

    Raises ValueError for what `predict_mean` does not reproduce (see the module docstring), and for
    a model laid out otherwise than the Prophet release this was written against: the callers then
    keep Prophet's own `predict`."""
    try:
        return _compact_params(model)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(f"the Prophet model is not laid out as expected ({type(exc).__name__}: {str(exc)[:100]})") from exc


def _compact_params(model: Any) -> dict:
    _check_supported(model)
    k, m = float(np.nanmean(model.params["k"])), float(np.nanmean(model.params["m"]))
    deltas = np.nanmean(np.asarray(model.params["delta"], float), axis=0).reshape(-1)
    beta = np.nanmean(np.asarray(model.params["beta"], float), axis=0).reshape(-1)
    seasonalities = [{"name": str(name), "period": float(p["period"]), "fourier_order": int(p["fourier_order"]),
                      "mode": str(p["mode"])} for name, p in model.seasonalities.items()]
    holidays = _holiday_features(model)
    regressors = [{"name": str(name), "mu": float(p["mu"]), "std": float(p["std"]), "mode": str(p["mode"])}
                  for name, p in model.extra_regressors.items()]
    params = {
        "format": PARAMS_FORMAT,
        "growth": str(model.growth),
        "start": pd.Timestamp(model.start).isoformat(),
        "t_scale": pd.Timedelta(model.t_scale).total_seconds(),
        "y_scale": float(model.y_scale),
        "floor": 0.0 if model.scaling == "absmax" else float(model.y_min),
        "k": k,
        "m": m,
        "deltas": deltas.tolist(),
        "changepoints_t": np.asarray(model.changepoints_t, float).reshape(-1).tolist(),
        "seasonalities": seasonalities,
        "holidays": holidays,
        "regressors": regressors,
        "beta": beta.tolist(),
        "columns": _columns(model, _feature_names(seasonalities, holidays, regressors)),
    }
    numbers = [k, m, params["y_scale"], params["floor"], params["t_scale"], *deltas, *beta,
               *params["changepoints_t"], *(r[key] for r in regressors for key in ("mu", "std"))]
    if not np.all(np.isfinite(numbers)):
        raise ValueError("Prophet's fitted parameters are not all finite")
    return params


def _check_supported(model: Any) -> None:
    """ValueError for a model whose mean forecast `predict_mean` would not reproduce exactly."""
    if getattr(model, "history", None) is None or getattr(model, "params", None) is None:
        raise ValueError("the Prophet model is not fitted")
    if model.growth not in GROWTHS:
        raise ValueError(f"growth {model.growth!r} is not supported (only {', '.join(GROWTHS)})")
    if model.logistic_floor:
        raise ValueError("a floor column is not supported")
    if model.scaling not in ("absmax", "minmax"):
        raise ValueError(f"scaling {model.scaling!r} is not supported")
    if model.country_holidays is not None:
        raise ValueError("country holidays are not supported (they depend on the years predicted)")
    conditioned = [n for n, p in model.seasonalities.items() if p.get("condition_name") is not None]
    if conditioned:
        raise ValueError(f"conditional seasonalities are not supported: {conditioned}")
    predicted = [n for n, p in model.extra_regressors.items() if p.get("predictor_spec") is not None]
    if predicted:
        raise ValueError(f"regressors forecast by their own model are not supported: {predicted}")


def _holiday_features(model: Any) -> list[dict]:
    """Prophet's holiday feature columns: name, the dates it is 1 on, mode; sorted by name, as
    `make_holiday_features` orders them. Same loop as Prophet's: one column per holiday and window
    offset (`{holiday}_delim_{+|-}{offset}`), 1 on every row whose calendar date is the occurrence."""
    if model.holidays is None or not len(model.holidays):
        return []
    frame = model.holidays
    if model.train_holiday_names is not None:
        frame = frame[frame["holiday"].isin(model.train_holiday_names)]
        if set(model.train_holiday_names) - set(frame["holiday"]):
            raise ValueError("holidays seen in training are missing from the holidays frame")
    dates: dict[str, set[str]] = {}
    for row in frame.itertuples():
        day = pd.Timestamp(row.ds).date()
        try:
            lw, uw = int(getattr(row, "lower_window", 0)), int(getattr(row, "upper_window", 0))
        except ValueError:  # NaN windows: Prophet uses 0, 0
            lw, uw = 0, 0
        for offset in range(lw, uw + 1):
            key = "{}_delim_{}{}".format(row.holiday, "+" if offset >= 0 else "-", abs(offset))
            dates.setdefault(key, set()).add((day + timedelta(days=offset)).isoformat())
    mode = str(model.holidays_mode)
    return [{"name": key, "dates": sorted(dates[key]), "mode": mode} for key in sorted(dates)]


def _columns(model: Any, names: list[str]) -> list[dict]:
    """For each feature column `names` lists (in `make_all_seasonality_features` order): its beta
    index and whether it adds to `additive_terms` or `multiplicative_terms` (None: neither, e.g.
    Prophet's `zeros`), read from `train_component_cols`. Each name must belong to the component
    Prophet's matrix puts at its position, so a layout `predict_mean` would misread raises
    ValueError (checked here, not by rebuilding Prophet's features: that costs as much as a predict)."""
    cols = model.train_component_cols
    if cols is None or len(cols) != len(names) or len(np.asarray(model.params["beta"]).reshape(-1)) != len(names):
        raise ValueError("Prophet's feature columns are not laid out as expected")
    add = cols["additive_terms"].to_numpy()
    mult = cols["multiplicative_terms"].to_numpy()
    out = []
    for i, name in enumerate(names):
        component = name.split("_delim_")[0]
        if name != "zeros" and (component not in cols.columns or not cols[component].iloc[i]):
            raise ValueError(f"Prophet's feature column {i} is not {name!r}")
        mode = "additive" if add[i] else "multiplicative" if mult[i] else None
        out.append({"name": name, "beta": i, "mode": mode})
    return out


def _feature_names(seasonalities: list[dict], holidays: list[dict], regressors: list[dict]) -> list[str]:
    """The feature columns `predict_mean` builds, in order (as `make_all_seasonality_features`)."""
    names = [f"{s['name']}_delim_{i + 1}" for s in seasonalities for i in range(2 * int(s["fourier_order"]))]
    names += [h["name"] for h in holidays] + [r["name"] for r in regressors]
    return names or ["zeros"]


# ---------------------------------------------------------------------------------------------
# The mean forecast
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Params:
    """`compact_params`'s dict, checked and as arrays."""

    growth: str
    start_ns: int
    t_scale_ns: float
    y_scale: float
    floor: float
    k: float
    m: float
    deltas: np.ndarray
    changepoints_t: np.ndarray
    seasonalities: list[tuple[float, int]]
    holiday_days: list[np.ndarray]
    regressors: list[tuple[str, float, float]]
    beta: np.ndarray
    additive: np.ndarray
    multiplicative: np.ndarray


def predict_mean(params: dict, future: pd.DataFrame) -> np.ndarray:
    """`model.predict(future)["yhat"]` of the model `params` was compacted from.

    `future` has `ds` and every regressor column. As Prophet, the rows come out sorted by `ds`.
    Raises ValueError when `params` is malformed or `future` is unusable."""
    p = _parse(params)
    if "ds" not in future.columns or not len(future):
        raise ValueError("the future frame needs rows and a ds column")
    ds = pd.to_datetime(future["ds"])
    if ds.dt.tz is not None:
        raise ValueError("ds has a timezone, which Prophet does not support")
    ns = ds.to_numpy(dtype="datetime64[ns]").view("i8")
    if np.any(ns == np.iinfo(np.int64).min):
        raise ValueError("ds has missing values")
    order = np.argsort(ns, kind="mergesort") if np.any(np.diff(ns) < 0) else None
    if order is not None:
        ns = ns[order]
    X = _features(p, ns, future, order)
    t = (ns - p.start_ns) / p.t_scale_ns
    if p.growth == "linear":
        cp = p.changepoints_t
        deltas_t = (cp[None, :] <= t[..., None]) * p.deltas  # Prophet.piecewise_linear
        k_t = deltas_t.sum(axis=1) + p.k
        m_t = (deltas_t * -cp).sum(axis=1) + p.m
        trend = k_t * t + m_t
    else:
        trend = p.m * np.ones_like(t)
    trend = trend * p.y_scale + p.floor
    additive = np.matmul(X, p.beta * p.additive) * p.y_scale
    multiplicative = np.matmul(X, p.beta * p.multiplicative)
    return trend * (1 + multiplicative) + additive


def _features(p: _Params, ns: np.ndarray, future: pd.DataFrame, order: np.ndarray | None) -> np.ndarray:
    """Prophet's feature matrix: Fourier terms, holiday indicators, standardized regressors."""
    n = len(ns)
    blocks: list[np.ndarray] = []
    if p.seasonalities:
        x_T = np.pi * 2 * (ns / 10**9 / (24 * 60 * 60))  # Prophet.fourier_series: days since the epoch
        for period, fourier_order in p.seasonalities:
            c = x_T[:, None] * (np.arange(1, fourier_order + 1) / period)
            block = np.empty((n, 2 * fourier_order))
            block[:, 0::2] = np.sin(c)
            block[:, 1::2] = np.cos(c)
            blocks.append(block)
    if p.holiday_days:
        days = ns // NS_PER_DAY  # the calendar date of each row, as Prophet's `dates.dt.date`
        blocks.append(np.column_stack([np.isin(days, d) for d in p.holiday_days]).astype(float))
    for name, mu, std in p.regressors:
        if name not in future.columns:
            raise ValueError(f"regressor {name!r} missing from the future frame")
        values = pd.to_numeric(future[name]).to_numpy(float)
        if order is not None:
            values = values[order]
        if np.isnan(values).any():
            raise ValueError(f"found NaN in regressor {name!r}")
        blocks.append(((values - mu) / std)[:, None])
    X = np.hstack(blocks) if blocks else np.zeros((n, 1))
    if X.shape[1] != len(p.beta):
        raise ValueError(f"prophet params: {X.shape[1]} feature columns for {len(p.beta)} coefficients")
    return X


def _parse(params: dict) -> _Params:
    """Check `params` and turn it into arrays; ValueError with what is wrong."""
    if not isinstance(params, dict):
        raise ValueError(f"prophet params must be a dict, not {type(params).__name__}")
    if params.get("format") != PARAMS_FORMAT:
        raise ValueError(f"prophet params of format {params.get('format')!r}, expected {PARAMS_FORMAT}")
    try:
        return _parse_fields(params)
    except (KeyError, IndexError, TypeError, AttributeError, OverflowError) as exc:
        raise ValueError(f"prophet params are malformed ({type(exc).__name__}: {str(exc)[:100]})") from exc


def _parse_fields(params: dict) -> _Params:
    growth = params["growth"]
    if growth not in GROWTHS:
        raise ValueError(f"prophet params: growth {growth!r} is not supported")
    seasonalities = [(float(s["period"]), int(s["fourier_order"])) for s in params["seasonalities"]]
    if any(order < 1 or not period > 0 for period, order in seasonalities):
        raise ValueError("prophet params: a seasonality has no positive period or order")
    holidays, regressors, columns = params["holidays"], params["regressors"], params["columns"]
    holiday_days = [np.array(h["dates"], dtype="datetime64[D]").view("i8") for h in holidays]
    beta = np.asarray(params["beta"], float).reshape(-1)
    modes = [c["mode"] for c in columns]
    names = _feature_names(params["seasonalities"], holidays, regressors)
    if [c["name"] for c in columns] != names or len(beta) != len(names):
        raise ValueError(f"prophet params: {len(columns)} columns and {len(beta)} coefficients "
                         f"do not match the {len(names)} features")
    if any(mode is not None and mode not in MODES for mode in modes):
        raise ValueError("prophet params: a column has an unknown mode")
    deltas = np.asarray(params["deltas"], float).reshape(-1)
    changepoints_t = np.asarray(params["changepoints_t"], float).reshape(-1)
    if len(deltas) != len(changepoints_t):
        raise ValueError("prophet params: deltas and changepoints differ in length")
    t_scale = float(params["t_scale"])
    if not t_scale > 0:
        raise ValueError("prophet params: t_scale must be positive")
    index = np.array([int(c["beta"]) for c in columns], dtype=int)
    if len(index) and (index.min() < 0 or index.max() >= len(beta)):
        raise ValueError("prophet params: a column's beta index is out of range")
    return _Params(
        growth=growth, start_ns=int(np.datetime64(params["start"], "ns").view("i8")),
        t_scale_ns=t_scale * 1e9, y_scale=float(params["y_scale"]), floor=float(params["floor"]),
        k=float(params["k"]), m=float(params["m"]), deltas=deltas, changepoints_t=changepoints_t,
        seasonalities=seasonalities, holiday_days=holiday_days,
        regressors=[(str(r["name"]), float(r["mu"]), float(r["std"])) for r in regressors],
        beta=beta[index], additive=np.array([mode == "additive" for mode in modes], float),
        multiplicative=np.array([mode == "multiplicative" for mode in modes], float),
    )


__all__ = ["PARAMS_FORMAT", "compact_params", "predict_mean"]
