"""Prophet's mean forecast in numpy (`pipeline.forecast.prophet_numpy`) equals Prophet's own `predict`,
and registry states score through it, or through Prophet from the JSON when they have no parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("prophet")

from pipeline.forecast import model_state, prophet_numpy
from pipeline.forecast.base import future_index
from pipeline.forecast.models import _quiet_prophet

TOL = {"rtol": 1e-9, "atol": 1e-9}
START = pd.Timestamp("2024-03-01")
DAYS = 21


def _prophet(**kwargs: Any) -> Any:
    _quiet_prophet()
    from prophet import Prophet

    return Prophet(uncertainty_samples=0, **kwargs)


def _hourly(n: int = DAYS * 24, seed: int = 0, extra: int = 96) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, the same columns `extra` hours on): a trend with two breaks, daily and weekly cycles,
    an additive, a multiplicative and a binary regressor."""
    rng = np.random.default_rng(seed)
    t = np.arange(n + extra)
    ds = pd.date_range(START, periods=n + extra, freq="h")
    x_add, x_mult, x_bin = rng.normal(3, 2, n + extra), rng.uniform(0, 2, n + extra), (t % 24 >= 8) * 1.0
    y = (80 + 0.05 * t - 0.09 * np.maximum(t - 200, 0) + 0.07 * np.maximum(t - 380, 0)
         + 9 * np.sin(2 * np.pi * t / 24) + 4 * np.cos(2 * np.pi * t / 168) + 1.5 * x_add
         + 0.1 * x_mult * 10 + rng.normal(0, 1, n + extra))
    frame = pd.DataFrame({"ds": ds, "y": y, "x_add": x_add, "x_mult": x_mult, "x_bin": x_bin})
    return frame.iloc[:n].reset_index(drop=True), frame.iloc[n:].reset_index(drop=True)


def _holidays(per_series: bool = False) -> pd.DataFrame:
    """Holidays with windows, in the history and in the future (one only in the future), with a
    prior_scale column; `per_series` adds a `unique_id` column (as `exog.prophet_holidays`)."""
    frame = pd.DataFrame({
        "holiday": ["launch", "launch", "sale", "sale", "freeze", "later"],
        "ds": pd.to_datetime(["2024-03-06", "2024-03-23", "2024-03-13", "2024-03-24", "2024-03-16", "2024-03-23"]),
        "lower_window": [-1, -1, 0, 0, -2, 0],
        "upper_window": [1, 1, 2, 2, 0, 1],
        "prior_scale": [10.0, 10.0, 5.0, 5.0, 10.0, 10.0],
    })
    if per_series:
        frame["unique_id"] = ["*", "*", "region:a:vcpu", "region:a:vcpu", "region:b:vcpu", "region:a:vcpu"]
    return frame


def _future(history: pd.DataFrame, ahead: pd.DataFrame, back: int = 48) -> pd.DataFrame:
    """The last `back` rows of the history, then every row of `ahead`."""
    return pd.concat([history.tail(back), ahead], ignore_index=True).drop(columns="y")


def _assert_same(model: Any, future: pd.DataFrame) -> np.ndarray:
    """`predict_mean` of the JSON roundtrip of `compact_params` = Prophet's own yhat."""
    params = json.loads(json.dumps(prophet_numpy.compact_params(model), allow_nan=False))
    got = prophet_numpy.predict_mean(params, future)
    want = model.predict(future)["yhat"].to_numpy(float)
    np.testing.assert_allclose(got, want, **TOL)
    return got


def _fit(kwargs: dict, regressors: dict[str, str] | None = None,
         history: pd.DataFrame | None = None) -> Any:
    model = _prophet(**kwargs)
    for name, mode in (regressors or {}).items():
        model.add_regressor(name, mode=mode)
    frame = _hourly()[0] if history is None else history
    return model.fit(frame[["ds", "y", *(regressors or {})]])


CASES: dict[str, Callable[[], tuple[dict, dict[str, str]]]] = {
    "hourly_trend_daily_weekly": lambda: ({"daily_seasonality": True, "weekly_seasonality": True,
                                           "yearly_seasonality": False, "n_changepoints": 15}, {}),
    "holidays_with_windows": lambda: ({"daily_seasonality": True, "weekly_seasonality": True,
                                       "yearly_seasonality": False, "holidays": _holidays()}, {}),
    "additive_and_multiplicative_regressors": lambda: (
        {"daily_seasonality": True, "weekly_seasonality": False, "yearly_seasonality": False},
        {"x_add": "additive", "x_mult": "multiplicative", "x_bin": "additive"}),
    "multiplicative_seasonality_and_holidays": lambda: (
        {"daily_seasonality": True, "weekly_seasonality": True, "yearly_seasonality": False,
         "seasonality_mode": "multiplicative", "holidays": _holidays()}, {"x_add": "additive"}),
    "flat_growth": lambda: ({"growth": "flat", "daily_seasonality": True, "weekly_seasonality": True,
                             "yearly_seasonality": False}, {"x_mult": "multiplicative"}),
    "minmax_scaling_custom_seasonality": lambda: ({"scaling": "minmax", "daily_seasonality": False,
                                                   "weekly_seasonality": False, "yearly_seasonality": False}, {}),
    "no_changepoints_no_seasonality": lambda: ({"n_changepoints": 0, "daily_seasonality": False,
                                                "weekly_seasonality": False, "yearly_seasonality": False}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hourly_models_predict_as_prophet(case: str) -> None:
    kwargs, regressors = CASES[case]()
    model = _prophet(**kwargs)
    if case.startswith("minmax"):
        model.add_seasonality("half_day", period=0.5, fourier_order=3)
    for name, mode in regressors.items():
        model.add_regressor(name, mode=mode)
    history, ahead = _hourly()
    model.fit(history[["ds", "y", *regressors]])
    future = _future(history, ahead)[["ds", *regressors]]
    got = _assert_same(model, future)
    assert len(got) == 48 + 96
    # a future after a gap, and one starting at the history's start
    _assert_same(model, future.iloc[60:].reset_index(drop=True))
    _assert_same(model, history[["ds", *regressors]].head(50))
    if "holidays" in kwargs:  # the future holds holiday dates: their features are on there
        features = prophet_numpy.compact_params(model)["holidays"]
        future_days = set(future["ds"].dt.date.astype(str))
        assert any(future_days & set(f["dates"]) for f in features)


def test_daily_series_with_yearly_seasonality_and_holidays() -> None:
    rng = np.random.default_rng(3)
    n = 720  # to 2023-12-21: the future holds 2024-01-01 and its window
    t = np.arange(n + 60)
    ds = pd.date_range("2022-01-01", periods=n + 60, freq="D")
    y = 200 + 0.2 * t + 30 * np.sin(2 * np.pi * t / 365.25) + 10 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 3, n + 60)
    frame = pd.DataFrame({"ds": ds, "y": y})
    holidays = pd.DataFrame({"holiday": "new_year", "ds": pd.to_datetime(["2022-01-01", "2023-01-01", "2024-01-01"]),
                             "lower_window": -2, "upper_window": 1})
    model = _prophet(yearly_seasonality=True, weekly_seasonality=True, daily_seasonality=False, holidays=holidays,
                     seasonality_mode="multiplicative")
    model.fit(frame.iloc[:n])
    future = frame.iloc[n - 30:].drop(columns="y").reset_index(drop=True)
    assert (future["ds"] == "2024-01-01").any()
    _assert_same(model, future)


def test_an_unsorted_future_comes_out_sorted_as_prophet_s() -> None:
    model = _fit({"daily_seasonality": True, "weekly_seasonality": True, "holidays": _holidays()}, {"x_add": "additive"})
    history, ahead = _hourly()
    future = _future(history, ahead)[["ds", "x_add"]].sample(frac=1.0, random_state=1).reset_index(drop=True)
    _assert_same(model, future)


def test_a_constant_series_predicts_as_prophet() -> None:
    """Prophet skips Stan for a constant series: its parameters are the initial ones."""
    history, ahead = _hourly()
    history = history.assign(y=5.0)
    model = _fit({"daily_seasonality": True}, history=history)
    _assert_same(model, _future(history, ahead)[["ds"]])


def test_unsupported_models_raise_value_error() -> None:
    history, _ = _hourly()
    logistic = _prophet(growth="logistic").fit(history.assign(cap=300.0)[["ds", "y", "cap"]])
    with pytest.raises(ValueError, match="logistic"):
        prophet_numpy.compact_params(logistic)
    conditional = _prophet(daily_seasonality=False)
    conditional.add_seasonality("day_on", period=1, fourier_order=3, condition_name="on")
    conditional.fit(history.assign(on=history["ds"].dt.hour >= 8)[["ds", "y", "on"]])
    with pytest.raises(ValueError, match="conditional"):
        prophet_numpy.compact_params(conditional)
    with pytest.raises(ValueError, match="not fitted"):
        prophet_numpy.compact_params(_prophet())


# ---------------------------------------------------------------------------------------------
# Through model_state: the registry's states
# ---------------------------------------------------------------------------------------------

def _series_frame(uid: str = "region:a:vcpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    history, ahead = _hourly(seed=7)
    frame = history[["ds", "y", "x_add"]].assign(unique_id=uid)[["unique_id", "ds", "y", "x_add"]]
    future = future_index(frame, 72, "h").merge(ahead[["ds", "x_add"]], on="ds", how="left")
    return frame, future


def test_a_fitted_state_scores_the_same_by_numpy_and_by_the_json_fallback() -> None:
    frame, future = _series_frame()
    state = json.loads(json.dumps(model_state.fit_state("prophet", frame, 24, "h", {"holidays": _holidays(per_series=True)})))
    assert "params" in state and state["regressors"] == ["x_add"]
    assert {h["name"].split("_delim_")[0] for h in state["params"]["holidays"]} == {"launch", "sale", "later"}
    fast = model_state.score_state("prophet", state, frame, 72, 24, future)
    slow = model_state.score_state("prophet", {k: v for k, v in state.items() if k != "params"}, frame, 72, 24, future)
    assert fast.shape == (72,)
    np.testing.assert_allclose(fast, slow, **TOL)
    # the regressor's missing hours are filled the same way on both paths
    gappy = future.assign(x_add=future["x_add"].where(future.index % 5 != 0))
    np.testing.assert_allclose(model_state.score_state("prophet", state, frame, 72, 24, gappy),
                               model_state.score_state("prophet", {"json": state["json"], "regressors": ["x_add"]},
                                                       frame, 72, 24, gappy), **TOL)
    with pytest.raises(model_state.StateError, match="regressors"):
        model_state.score_state("prophet", state, frame, 72, 24, future.drop(columns="x_add"))


def _corruptions() -> dict[str, Callable[[dict], Any]]:
    def drop(key: str) -> Callable[[dict], dict]:
        return lambda p: {k: v for k, v in p.items() if k != key}

    return {
        "not_a_dict": lambda p: ["params"],
        "no_beta": drop("beta"),
        "no_columns": drop("columns"),
        "short_beta": lambda p: {**p, "beta": p["beta"][:-1]},
        "beta_index_out_of_range": lambda p: {**p, "columns": [{**c, "beta": 10_000} for c in p["columns"]]},
        "deltas_not_numbers": lambda p: {**p, "deltas": ["a"] * len(p["deltas"])},
        "deltas_wrong_length": lambda p: {**p, "deltas": p["deltas"][:-1]},
        "bad_start": lambda p: {**p, "start": "yesterday"},
        "seasonality_without_order": lambda p: {**p, "seasonalities": [{"name": "daily", "period": 1.0}]},
        "holiday_dates_garbage": lambda p: {**p, "holidays": [{**h, "dates": [1.5, None]} for h in p["holidays"]]},
        "column_mode_unknown": lambda p: {**p, "columns": [{**c, "mode": "both"} for c in p["columns"]]},
        "logistic": lambda p: {**p, "growth": "logistic"},
        "other_format": lambda p: {**p, "format": 99},
        "zero_t_scale": lambda p: {**p, "t_scale": 0},
        "regressor_without_mu": lambda p: {**p, "regressors": [{"name": "x_add", "std": 1.0, "mode": "additive"}]},
    }


@pytest.mark.parametrize("corruption", sorted(_corruptions()))
def test_corrupt_params_raise_state_error(corruption: str, fitted_state: tuple[dict, pd.DataFrame, pd.DataFrame]) -> None:
    state, frame, future = fitted_state
    broken = {**state, "params": _corruptions()[corruption](json.loads(json.dumps(state["params"])))}
    with pytest.raises(model_state.StateError, match="compact parameters"):
        model_state.score_state("prophet", broken, frame, 72, 24, future)


@pytest.fixture(scope="module")
def fitted_state() -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    frame, future = _series_frame()
    return model_state.fit_state("prophet", frame, 24, "h", {"holidays": _holidays(per_series=True)}), frame, future


def test_a_model_without_compact_params_stores_json_only_and_still_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `_fit_prophet` does for a model the numpy path does not reproduce (e.g. logistic growth):
    `compact_params` raises ValueError, the state holds the JSON only and scores through Prophet."""
    frame, future = _series_frame()

    def unsupported(model: Any) -> dict:
        raise ValueError("growth 'logistic' is not supported")

    monkeypatch.setattr(prophet_numpy, "compact_params", unsupported)
    state = model_state.fit_state("prophet", frame, 24, "h")
    assert "params" not in state and "json" in state
    from prophet.serialize import model_from_json

    scored = model_state.score_state("prophet", state, frame, 72, 24, future)
    want = model_from_json(state["json"]).predict(future[["ds", "x_add"]])["yhat"].to_numpy(float)
    np.testing.assert_allclose(scored, want, **TOL)


def test_the_engine_s_prophet_cv_and_forecast_match_prophet_s_own_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ProphetModel` reads its means (CV and forecast, the in-sample residuals of its bands
    included) through `prophet_numpy`: the same numbers as Prophet's own `predict` gives."""
    from pipeline.forecast.models import ProphetModel

    frame, future = _series_frame()
    two = pd.concat([frame, frame.assign(unique_id="region:b:vcpu", y=frame["y"] * 3)], ignore_index=True)
    fut = pd.concat([future, future.assign(unique_id="region:b:vcpu")], ignore_index=True)

    def run() -> tuple[pd.DataFrame, pd.DataFrame]:
        model = ProphetModel(24, "h", holidays=_holidays(per_series=True), uncertainty_samples=0)
        forecast = model.fit(two).predict(48, future=fut)
        cv = ProphetModel(24, "h", holidays=_holidays()).cross_validate(two, 24, 2, 24)
        return forecast, cv

    fast = run()
    monkeypatch.setattr(prophet_numpy, "compact_params", lambda model: (_ for _ in ()).throw(ValueError("off")))
    slow = run()
    for a, b in zip(fast, slow):
        assert len(a) and list(a.columns) == list(b.columns)
        pd.testing.assert_frame_equal(a, b, rtol=1e-9, atol=1e-9)


def test_a_model_laid_out_otherwise_raises_value_error_so_callers_keep_prophet_s_predict() -> None:
    """A Prophet release that stores its fit differently must not crash a CV: ValueError, which
    `models._prophet_mean` and `model_state._fit_prophet` answer with Prophet's own path."""
    from pipeline.forecast.models import _prophet_mean

    history, ahead = _hourly(n=14 * 24, extra=24)
    model = _prophet(daily_seasonality=True, weekly_seasonality=True)
    model.fit(history[["ds", "y"]])
    expected = model.predict(ahead[["ds"]])["yhat"].to_numpy()
    del model.params["beta"]
    with pytest.raises(ValueError, match="not laid out as expected"):
        prophet_numpy.compact_params(model)
    model.params["beta"] = "not numbers"
    with pytest.raises(ValueError):
        prophet_numpy.compact_params(model)
    model2 = _prophet(daily_seasonality=True, weekly_seasonality=True).fit(history[["ds", "y"]])
    model2.train_component_cols = model2.train_component_cols.drop(columns="daily")
    np.testing.assert_allclose(_prophet_mean(model2)(ahead[["ds"]]), expected, **TOL)
