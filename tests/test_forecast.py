"""The Predictive Demand Engine, run for real (statsforecast, scikit-learn, Prophet; no mocks).

Small synthetic panels keep it fast; every forecast is deterministic, so results are compared
exactly where they should be equal.
"""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.common.schemas import FORECAST
from pipeline.forecast.engine import ENSEMBLE, POOLED, EngineOptions, prepare, run_engine, select_and_forecast, to_daily
from pipeline.forecast.models import MODELS, OUTPUT_COLUMNS
from pipeline.forecast.prep import InputError, clean_outliers, validate_long_format
from pipeline.forecast.quantiles import interpolate_quantile, pinball_loss

SEASON = 24
HORIZON = 24
TAU = 0.9
N = 24 * 10
START = pd.Timestamp("2025-01-06 00:00", tz="UTC")
TREND = "region:eu-west-1:vcpu"
NOISY = "pair:eu-west-1→us-east-1:requests"
ZERO = "region:us-east-1:storage_gib"
SHORT = "pair:ap-southeast-1→eu-west-1:requests"  # a new pair: under two days of data


def _daily(k: np.ndarray, amp: float = 1.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * k / SEASON)


def make_history(n_noisy: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(42)
    k = np.arange(N)
    ds = pd.date_range(START, periods=N, freq="h")
    frames = [
        pd.DataFrame({"unique_id": TREND, "ds": ds, "y": 50 + 0.5 * k + 20 * _daily(k)}),
        pd.DataFrame({"unique_id": ZERO, "ds": ds, "y": 0.0}),
        pd.DataFrame({"unique_id": SHORT, "ds": ds[-30:], "y": 5 + 2 * _daily(k[-30:])}),
    ]
    for j in range(n_noisy):
        uid = NOISY if j == 0 else f"pair:r{j}→us-east-1:requests"
        y = np.maximum(40 + 5 * j + 10 * _daily(k) + rng.normal(0, 3, N), 0)
        frames.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)


FAST = ("seasonal_naive", "seasonal_mean", "global_gbm")
LOCAL = ("seasonal_naive", "seasonal_mean")
OPTIONS = EngineOptions(horizon=HORIZON, season_length=SEASON, freq="h", tau=TAU, models=FAST)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return make_history()


@pytest.fixture(scope="module")
def result(history: pd.DataFrame):
    return run_engine(history, OPTIONS)


def _check_contract(fc: pd.DataFrame, horizon: int) -> None:
    assert list(fc.columns[:3]) == ["series_id", "ds", "model"]
    assert set(FORECAST.names) <= set(fc.columns)
    pa.Table.from_pandas(fc[FORECAST.names], schema=FORECAST, preserve_index=False)  # casts cleanly
    assert str(fc["ds"].dt.tz) == "UTC"
    assert (fc.groupby("series_id").size() == horizon).all()
    numeric = fc[[c for c in FORECAST.names if c not in ("series_id", "ds", "model")]].to_numpy()
    assert np.isfinite(numeric).all() and (numeric >= 0).all()
    eps = 1e-9
    q = fc[["q50", "q80", "q90", "q95", "q99"]].to_numpy()
    assert (np.diff(q, axis=1) >= -eps).all()
    assert (fc["lo_95"] <= fc["lo_80"] + eps).all() and (fc["lo_80"] <= fc["hi_80"] + eps).all()
    assert (fc["hi_80"] <= fc["hi_95"] + eps).all()


def test_output_follows_the_forecast_contract(result, history: pd.DataFrame) -> None:
    fc = result.forecasts
    _check_contract(fc, HORIZON)
    assert sorted(fc["series_id"].unique()) == sorted(history["unique_id"].unique())
    for sid, group in fc.groupby("series_id"):
        last = history.loc[history["unique_id"] == sid, "ds"].max()
        assert list(group["ds"]) == list(pd.date_range(last + pd.Timedelta(hours=1), periods=HORIZON, freq="h")), sid
        assert (group["model"] == result.selection[sid]["model"]).all()


def test_deterministic_and_independent_of_row_order(result, history: pd.DataFrame) -> None:
    again = run_engine(history.sample(frac=1.0, random_state=3), OPTIONS)
    pd.testing.assert_frame_equal(result.forecasts, again.forecasts)
    assert result.selection == again.selection


def test_plain_arguments_give_the_same_forecast(result, history: pd.DataFrame) -> None:
    """`select_and_forecast` (plain arguments, for the CLI and the backtests) is `run_engine` with those options."""
    plain = select_and_forecast(history, HORIZON, SEASON, "h", TAU, FAST)
    pd.testing.assert_frame_equal(plain.forecasts, result.forecasts)
    assert plain.selection == result.selection
    with pytest.raises(FrozenInstanceError):
        OPTIONS.tau = 0.5  # type: ignore[misc]  # one run, one set of options


def test_selection_is_consistent_with_scores(result) -> None:
    default = result.info["default_choice"]
    for sid, sel in result.selection.items():
        if sid == SHORT:
            assert sel["model"] == POOLED and sel["score"] == {}
            continue
        scores = sel["score"]
        assert {"seasonal_naive", "seasonal_mean", "global_gbm"} <= set(scores), sid
        assert set(sel["pinball_at_tau"]) == set(sel["mase"]) == set(scores)
        best = min(scores.values())
        chosen = scores[sel["model"]]
        # either the best on this series, or the overall default within the switching margin
        assert chosen == best or (sel["model"] == default and best >= chosen * (1 - 0.15) - 1e-12), (sid, sel)
    # the trend + season series: seasonal naive lags the trend by a day, the global model follows it
    trend = result.selection[TREND]["mase"]
    assert trend["global_gbm"] < trend["seasonal_naive"]
    assert ENSEMBLE in result.info["overall_score"]


def test_cross_validation_is_out_of_sample(history: pd.DataFrame) -> None:
    """Seasonal naive's rolling-origin forecasts repeat the season before each origin."""
    series = history[history["unique_id"] == NOISY]
    cv = MODELS["seasonal_naive"](SEASON, "h").cross_validate(series, HORIZON, n_windows=2)
    y = series["y"].to_numpy()
    assert sorted(cv["window"].unique()) == [0, 1]
    for w, origin in ((0, N - 2 * HORIZON), (1, N - HORIZON)):
        got = cv[cv["window"] == w]["mean"].to_numpy()
        np.testing.assert_allclose(got, y[origin - SEASON:origin])
    gbm = MODELS["global_gbm"](SEASON, "h").cross_validate(history[history["unique_id"] != SHORT], HORIZON, n_windows=2)
    first = gbm[gbm["window"] == 0].groupby("unique_id")["cutoff"].first()
    last = history.groupby("unique_id")["ds"].max()
    for uid, cutoff in first.items():
        assert pd.Timestamp(cutoff) == last[uid].tz_localize(None) - pd.Timedelta(hours=2 * HORIZON)


def test_every_model_fits_and_predicts(history: pd.DataFrame) -> None:
    small = history[history["unique_id"].isin([TREND, NOISY])]
    for name in ("seasonal_naive", "seasonal_mean", "auto_ets", "arima", "mstl", "global_gbm"):
        out = MODELS[name](SEASON, "h").fit(small).predict(HORIZON)
        assert list(out.columns) == OUTPUT_COLUMNS, name
        assert len(out) == 2 * HORIZON and np.isfinite(out[OUTPUT_COLUMNS[2:]].to_numpy()).all(), name
        q = out[["q50", "q80", "q90", "q95", "q99"]].to_numpy()
        assert (np.diff(q, axis=1) >= -1e-9).all(), name


def test_prophet_uses_holidays_and_regressors() -> None:
    k = np.arange(24 * 10)
    ds = pd.date_range("2026-01-01", periods=len(k), freq="h")
    promo = ((k // 24) % 4 == 1).astype(float)
    frame = pd.DataFrame({"unique_id": "s", "ds": ds, "y": 20 + 5 * _daily(k) + 15 * promo, "promo": promo})
    future = pd.DataFrame({"unique_id": "s", "ds": pd.date_range(ds[-1] + pd.Timedelta(hours=1), periods=24, freq="h"), "promo": 1.0})
    holidays = pd.DataFrame({"holiday": "launch", "ds": pd.to_datetime(["2026-01-03"]), "lower_window": 0, "upper_window": 0})
    model = MODELS["prophet"](SEASON, "h", holidays=holidays, uncertainty_samples=50)
    out = model.fit(frame).predict(24, future=future)
    assert len(out) == 24 and (out["q90"] >= out["q50"]).all()
    np.testing.assert_allclose(out["mean"].mean(), 35, atol=4)  # the regressor's +15 is carried into the horizon
    again = MODELS["prophet"](SEASON, "h", holidays=holidays, uncertainty_samples=50).fit(frame).predict(24, future=future)
    pd.testing.assert_frame_equal(out, again)


def test_prophet_cross_validation_reads_the_mean_without_predictive_sampling() -> None:
    """CV keeps the mean only: the same means as a fit with predictive sampling, at each origin."""
    k = np.arange(24 * 10)
    ds = pd.date_range("2026-01-01", periods=len(k), freq="h")
    frame = pd.DataFrame({"unique_id": "s", "ds": ds, "y": 20 + 5 * _daily(k) + 0.01 * k})
    cv = MODELS["prophet"](SEASON, "h", uncertainty_samples=200).cross_validate(frame, 24, 2, 24)
    assert list(cv.columns) == ["unique_id", "ds", "mean", "cutoff", "window"] and len(cv) == 48
    last = frame[frame["ds"] <= cv[cv["window"] == 1]["cutoff"].iloc[0]]
    sampled = MODELS["prophet"](SEASON, "h", uncertainty_samples=200).fit(last).predict(24)
    np.testing.assert_allclose(cv[cv["window"] == 1]["mean"], sampled["mean"], rtol=1e-6)


def test_global_model_beats_seasonal_naive_on_a_trending_panel() -> None:
    rng = np.random.default_rng(0)
    k = np.arange(24 * 14)
    frames = []
    for j in range(12):
        y = 100 + (0.3 + 0.05 * j) * k + 20 * _daily(k) + rng.normal(0, 2, len(k))
        frames.append(pd.DataFrame({"unique_id": f"s{j}", "ds": pd.date_range(START, periods=len(k), freq="h"), "y": y}))
    panel = pd.concat(frames, ignore_index=True)
    train = panel.groupby("unique_id").head(len(k) - 48)
    test = panel.groupby("unique_id").tail(48)
    errs = {}
    for name in ("seasonal_naive", "global_gbm"):
        pred = MODELS[name](SEASON, "h").fit(train).predict(48)
        merged = test.assign(ds=test["ds"].dt.tz_localize(None)).merge(pred, on=["unique_id", "ds"])
        errs[name] = float(np.mean(np.abs(merged["y"] - merged["mean"])))
    assert errs["global_gbm"] < 0.5 * errs["seasonal_naive"], errs


def test_conformal_intervals_are_calibrated() -> None:
    """80 % intervals cover 70–90 % of fresh data from the same process (many noisy series)."""
    rng = np.random.default_rng(1)
    k = np.arange(24 * 12)
    frames = []
    for j in range(30):
        y = 50 + 10 * _daily(k + j) + rng.normal(0, 4, len(k))
        frames.append(pd.DataFrame({"unique_id": f"s{j}", "ds": pd.date_range(START, periods=len(k), freq="h"), "y": y}))
    panel = pd.concat(frames, ignore_index=True)
    train, test = panel.groupby("unique_id").head(len(k) - 24), panel.groupby("unique_id").tail(24)
    out = run_engine(train, replace(OPTIONS, horizon=24, models=LOCAL)).forecasts
    merged = test.merge(out.rename(columns={"series_id": "unique_id"}), on=["unique_id", "ds"])
    cover80 = np.mean((merged["y"] >= merged["lo_80"]) & (merged["y"] <= merged["hi_80"]))
    cover95 = np.mean((merged["y"] >= merged["lo_95"]) & (merged["y"] <= merged["hi_95"]))
    assert 0.70 <= cover80 <= 0.90, cover80
    assert 0.88 <= cover95 <= 0.99, cover95
    assert 0.80 <= np.mean(merged["y"] <= merged["q90"]) <= 0.97


def test_short_series_get_the_pooled_profile(result, history: pd.DataFrame) -> None:
    fc = result.forecasts[result.forecasts["series_id"] == SHORT]
    assert (fc["model"] == POOLED).all() and result.selection[SHORT]["model"] == POOLED
    # the pool's daily shape (pairs peak where sin peaks) scaled to the short series' own level (~5)
    assert 3 < fc["mean"].mean() < 7
    hours = fc["ds"].dt.hour.to_numpy()
    assert fc["mean"].to_numpy()[hours == 6].mean() > fc["mean"].to_numpy()[hours == 18].mean()
    assert (fc["q95"] > fc["mean"]).all()


def test_all_zero_series_forecasts_zero(result) -> None:
    fc = result.forecasts[result.forecasts["series_id"] == ZERO]
    values = fc[[c for c in FORECAST.names if c not in ("series_id", "ds", "model")]].to_numpy()
    assert len(fc) == HORIZON and np.abs(values).max() < 1e-6


def test_intermittent_series_does_not_crash() -> None:
    ds = pd.date_range(START, periods=N, freq="h")
    y = np.zeros(N)
    y[[5, 60, 61, 130, 200]] = [1.0, 2.0, 1.0, 3.0, 1.0]
    out = run_engine(pd.DataFrame({"unique_id": ZERO, "ds": ds, "y": y}), OPTIONS)
    _check_contract(out.forecasts, HORIZON)
    assert out.forecasts["q50"].max() <= 3.0


def test_gaps_and_bursts_are_handled() -> None:
    k = np.arange(N)
    y = 30 + 10 * _daily(k)
    y[N - 60] = 500.0  # a one-off burst 2.5 days before the end
    frame = pd.DataFrame({"unique_id": "s", "ds": pd.date_range(START, periods=N, freq="h"), "y": y})
    cleaned, counts = clean_outliers(frame, SEASON)
    assert counts == {"s": 1} and cleaned["y"].max() < 45
    gappy = frame.drop(index=[100, 101, 102, 150])
    out = run_engine(gappy, replace(OPTIONS, models=LOCAL))
    assert out.info["gaps_filled"] == {"s": 4} and out.info["outliers_cleaned"] == {"s": 1}
    _check_contract(out.forecasts, HORIZON)
    assert out.forecasts["mean"].max() < 60  # the burst is not repeated


def test_each_model_reads_its_own_variant_of_the_input() -> None:
    """One prepared frame serves every model: cleaned of bursts unless the model is robust to them
    (the GBM), the calendar uplift divided out unless the model handles events (Prophet)."""
    k = np.arange(N)
    y = 30 + 10 * _daily(k)
    y[N - 60] = 500.0
    uplift = np.where((k >= N - 30) & (k < N - 20), 1.0, 0.0)  # a campaign doubling the last day's demand
    frame = pd.DataFrame({"unique_id": "s", "ds": pd.date_range(START, periods=N, freq="h"), "y": y * (1 + uplift),
                          "event_uplift": uplift, "cpu_util_lag168": np.linspace(0.2, 0.6, N)})
    p = prepare(frame, OPTIONS)
    cleaned, _ = clean_outliers(frame[["unique_id", "ds", "y"]], SEASON)
    expected = {
        "seasonal_naive": cleaned["y"].to_numpy() / (1 + uplift),
        "global_gbm": frame["y"].to_numpy() / (1 + uplift),
        "prophet": cleaned["y"].to_numpy(),
    }
    for name, want in expected.items():
        rows = p.inputs_for(name, ["s"])
        assert list(rows.columns) == ["unique_id", "ds", "y", "event_uplift", "cpu_util_lag168"], name
        np.testing.assert_allclose(rows["y"].to_numpy(), want, err_msg=name)
        np.testing.assert_array_equal(rows["cpu_util_lag168"].to_numpy(), frame["cpu_util_lag168"].to_numpy())
    assert p.inputs_for("seasonal_naive", ["other"]).empty


def test_without_cross_validation_the_models_own_bands_are_kept() -> None:
    """One model, no ensemble: nothing is cross-validated, so there is nothing to calibrate on."""
    rng = np.random.default_rng(5)
    k = np.arange(24 * 4)
    frame = pd.DataFrame({"unique_id": "s", "ds": pd.date_range(START, periods=len(k), freq="h"),
                          "y": 30 + 10 * _daily(k) + rng.normal(0, 1, len(k))})
    out = run_engine(frame, replace(OPTIONS, models=("seasonal_naive",), combine=False))
    assert out.info["calibration"]["n_errors"] == 0 and out.selection["s"]["model"] == "seasonal_naive"
    own = MODELS["seasonal_naive"](SEASON, "h").fit(frame).predict(HORIZON)
    for col in ("mean", "lo_80", "hi_80", "lo_95", "hi_95", "q90"):
        np.testing.assert_allclose(out.forecasts[col].to_numpy(), own[col].to_numpy(), rtol=1e-9, err_msg=col)
    _check_contract(out.forecasts, HORIZON)


def test_calendar_uplift_moves_the_forecast() -> None:
    k = np.arange(N)
    ds = pd.date_range(START, periods=N, freq="h")
    uplift = np.where((k // 24) == 4, 0.5, 0.0)  # a past campaign day: +50 %
    y = (30 + 10 * _daily(k)) * (1 + uplift)
    frame = pd.DataFrame({"unique_id": "s", "ds": ds, "y": y, "event_uplift": uplift})
    fut_ds = pd.date_range(ds[-1] + pd.Timedelta(hours=1), periods=48, freq="h")
    future = pd.DataFrame({"unique_id": "s", "ds": fut_ds, "event_uplift": np.where(np.arange(48) >= 24, 0.5, 0.0)})
    out = run_engine(frame, replace(OPTIONS, horizon=48, models=LOCAL), future=future).forecasts
    first, second = out["mean"].to_numpy()[:24], out["mean"].to_numpy()[24:]
    np.testing.assert_allclose(second, 1.5 * first, rtol=1e-6)
    np.testing.assert_allclose(first, 30 + 10 * _daily(np.arange(N, N + 24)), atol=1e-6)  # the past uplift was divided out


def test_hierarchy_is_reconciled(history: pd.DataFrame) -> None:
    pairs = history[history["unique_id"].str.startswith("pair:r")]
    total = pairs.groupby("ds", as_index=False)["y"].sum().assign(unique_id="inbound:us-east-1:requests")
    frame = pd.concat([pairs, total], ignore_index=True)
    hierarchy = {"inbound:us-east-1:requests": sorted(pairs["unique_id"].unique())}
    out = run_engine(frame, OPTIONS, hierarchy=hierarchy)
    fc = out.forecasts
    bottom = fc[fc["series_id"].str.startswith("pair:")].groupby("ds")["mean"].sum()
    top = fc[fc["series_id"] == "inbound:us-east-1:requests"].set_index("ds")["mean"]
    np.testing.assert_allclose(top.to_numpy(), bottom.reindex(top.index).to_numpy(), rtol=1e-9)
    assert out.info["reconciliation"]["aggregates"] == ["inbound:us-east-1:requests"]
    _check_contract(fc, HORIZON)


def test_reconciliation_by_block_equals_the_dense_projection() -> None:
    """Aggregates that share no children are solved apart; the result is the dense WLS projection's."""
    from pipeline.forecast.reconcile import hierarchy_blocks, reconcile_wls, summing_matrix

    rng = np.random.default_rng(3)
    ds = pd.date_range(START, periods=6, freq="h")
    hierarchy = {f"inbound:{d}:requests": [f"pair:{s}→{d}:requests" for s in "abcd" if s != d] for d in "abcd"}
    hierarchy["inbound:x:requests"] = ["pair:a→b:requests", "pair:c→b:requests"]  # shares children with b's: one block
    assert sorted(len(b) for b in hierarchy_blocks(hierarchy)) == [1, 1, 1, 2]
    series = sorted(set(hierarchy) | {c for kids in hierarchy.values() for c in kids})
    frame = pd.DataFrame([{"series_id": s, "ds": t, "mean": float(rng.gamma(4, 3))} for s in series for t in ds])
    frame["q90"] = frame["mean"] * 1.4
    variance = {s: float(rng.uniform(0.5, 4)) for s in series}
    out = reconcile_wls(frame, hierarchy, variance).set_index(["series_id", "ds"])["mean"]
    bottoms = sorted({c for kids in hierarchy.values() for c in kids})
    order, S = summing_matrix(hierarchy, bottoms)
    Y = frame.pivot(index="ds", columns="series_id", values="mean")[order].to_numpy().T
    Winv = np.diag([1 / variance[s] for s in order])
    dense = S @ np.maximum(np.linalg.solve(S.T @ Winv @ S, S.T @ Winv @ Y), 0.0)
    expected = pd.DataFrame(dense.T, index=ds, columns=order)
    for s in order:
        np.testing.assert_allclose(out.loc[s].reindex(ds).to_numpy(), expected[s].to_numpy(), rtol=1e-9)


def test_daily_horizon() -> None:
    k = np.arange(24 * 28)
    hourly = pd.DataFrame({"unique_id": "region:eu-west-1:vcpu", "ds": pd.date_range(START, periods=len(k), freq="h"),
                           "y": 100 + 30 * _daily(k) + 20 * ((k // 24) % 7 < 5)})
    daily = to_daily(hourly)
    assert len(daily) == 28 and daily["y"].max() <= 150 + 1e-9
    out = run_engine(daily, EngineOptions(horizon=14, season_length=7, freq="D", tau=TAU, models=("auto",)))
    _check_contract(out.forecasts, 14)
    weekday = out.forecasts["ds"].dt.dayofweek < 5
    assert out.forecasts.loc[weekday, "mean"].mean() > out.forecasts.loc[~weekday, "mean"].mean()


def test_daily_series_are_the_days_volume_for_requests_and_the_days_peak_for_demand() -> None:
    ds = pd.date_range("2026-01-01 06:00", periods=24 * 3, freq="h", tz="UTC")  # a partial first and last day
    requests = pd.DataFrame({"unique_id": "pair:eu-west-1→us-east-1:requests", "ds": ds, "y": 2.0})
    demand = pd.DataFrame({"unique_id": "region:us-east-1:vcpu", "ds": ds, "y": np.arange(len(ds), dtype=float)})
    daily = to_daily(pd.concat([requests, demand]))
    volume = daily[daily["unique_id"].str.startswith("pair:")]
    assert volume["ds"].tolist() == [pd.Timestamp("2026-01-02", tz="UTC"), pd.Timestamp("2026-01-03", tz="UTC")]
    assert volume["y"].tolist() == [48.0, 48.0]  # 24 hours × 2 requests, partial edge days dropped
    peak = daily[daily["unique_id"].str.startswith("region:")]
    assert len(peak) == 4 and peak["y"].tolist() == [17.0, 41.0, 65.0, 71.0]


def test_bad_input_is_rejected_clearly(history: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"unknown models.*prophet_xl"):
        run_engine(history, replace(OPTIONS, models=("seasonal_naive", "prophet_xl")))
    with pytest.raises(ValueError, match="empty"):
        run_engine(history.iloc[:0], OPTIONS)
    with pytest.raises(TypeError, match="n_window"):  # a misspelt option fails loudly
        select_and_forecast(history, HORIZON, SEASON, "h", TAU, n_window=1)
    model = MODELS["auto_ets"](SEASON, "h")
    with pytest.raises(ValueError, match="empty"):
        model.fit(history.iloc[:0])
    with pytest.raises(ValueError, match="lacks columns"):
        model.fit(history.rename(columns={"y": "value"}))
    with pytest.raises(RuntimeError, match="fit"):
        MODELS["seasonal_naive"](SEASON, "h").predict(3)
    good = history[history["unique_id"] == NOISY]
    with pytest.raises(InputError, match=r"lacks column.*'y'"):
        validate_long_format(good.drop(columns="y"), "h")
    with pytest.raises(InputError, match="numeric"):
        validate_long_format(good.astype({"y": object}).assign(y=lambda f: f["y"].where(f.index != f.index[3], "n/a")), "h")
    with pytest.raises(InputError, match="duplicate timestamps"):
        validate_long_format(pd.concat([good, good.iloc[:1]]), "h")
    with pytest.raises(InputError, match="irregular frequency"):
        validate_long_format(good.assign(ds=good["ds"] + pd.to_timedelta(np.arange(len(good)) % 2 * 7, unit="min")), "h")


def test_interpolate_quantile() -> None:
    cols = {0.99: np.array([99.0, 9.0]), 0.5: np.array([50.0, 5.0]), 0.9: np.array([30.0, 3.0]),
            0.8: np.array([20.0, 2.0]), 0.95: np.array([40.0, 4.0])}
    np.testing.assert_allclose(interpolate_quantile(cols, 0.85), [25.0, 2.5])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.8), [20.0, 2.0])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.6), [50 + (20 - 50) / 3, 5 + (2 - 5) / 3])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.97), [40 + 0.5 * 59, 4 + 0.5 * 5])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.2), [50.0, 5.0])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.999), [99.0, 9.0])
    mono = {0.5: np.array([1.0]), 0.8: np.array([2.0]), 0.9: np.array([4.0]), 0.95: np.array([5.0]), 0.99: np.array([9.0])}
    values = [float(interpolate_quantile(mono, t)[0]) for t in np.linspace(0.4, 1.0, 61)]
    assert values == sorted(values)


def test_pinball_loss() -> None:
    y = np.array([1.0, 5.0, 7.5])
    assert pinball_loss(y, y, 0.9) == 0.0
    assert pinball_loss([10.0], [8.0], 0.9) == pytest.approx(1.8)
    assert pinball_loss([10.0], [12.0], 0.9) == pytest.approx(0.2)
    assert pinball_loss([10.0, 10.0], [8.0, 12.0], 0.9) == pytest.approx(1.0)
    sample = np.arange(1.0, 101.0)
    grid = np.arange(0.0, 101.0)
    best = grid[np.argmin([pinball_loss(sample, np.full_like(sample, g), 0.9) for g in grid])]
    assert 89 <= best <= 91


def test_pipeline_run_records_the_choice_in_its_manifest(published_root) -> None:
    manifest = json.loads((published_root / "lake" / "forecasts" / "run=hourly-20260129T0000Z" / "manifest.json").read_text())
    sel = manifest["selection"]
    regions = [s for s in sel if s.startswith("region:")]
    assert len(regions) == 24 and any(s.startswith("inbound:") for s in sel)
    for sid in regions:
        assert sel[sid]["model"] in {*manifest["models"], ENSEMBLE, POOLED}
        assert "seasonal_naive" in sel[sid]["pinball_at_tau"] and "seasonal_naive" in sel[sid]["mase"]
    engine = manifest["engine"]
    assert engine["calibration"]["n_errors"] > 0 and set(engine["cv_coverage"]) == {"80", "95"}
    assert engine["reconciliation"]["aggregates"]


def test_global_gbm_horizon_exog_takes_the_known_future_and_carries_the_last_value_elsewhere() -> None:
    """The GBM's horizon rows: NaN targets, the future's regressor where it gives one (per series and
    step), the series' last observed value where it does not (a step it skips, a series it lacks)."""
    ds = pd.date_range("2025-01-06", periods=3, freq="h")
    history = pd.DataFrame({"unique_id": ["b"] * 3 + ["a"] * 3, "ds": list(ds) * 2,
                            "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "ev": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    future = pd.DataFrame({"unique_id": ["a", "a"], "ds": [ds[-1] + pd.Timedelta(hours=2), ds[-1] + pd.Timedelta(hours=9)],
                           "ev": [9.0, 7.0]})
    model = MODELS["global_gbm"](SEASON, "h")
    model._exog = ["ev"]
    frames = model._frames(model._validated(history), 2, future)
    assert [f[0] for f in frames] == ["a", "b"]
    (_, y_a, ds_a, x_a), (_, y_b, _, x_b) = frames
    np.testing.assert_array_equal(y_b[-2:], [np.nan, np.nan])
    np.testing.assert_array_equal(y_a, [4.0, 5.0, 6.0, np.nan, np.nan])
    assert list(pd.DatetimeIndex(ds_a)) == [*ds, ds[-1] + pd.Timedelta(hours=1), ds[-1] + pd.Timedelta(hours=2)]
    np.testing.assert_allclose(x_a[:, 0], [0.4, 0.5, 0.6, 0.6, 9.0])
    np.testing.assert_allclose(x_b[:, 0], [0.1, 0.2, 0.3, 0.3, 0.3])


def test_mstl_smooths_with_r_default_stl_jumps_and_forecasts_like_the_exact_decomposition() -> None:
    """R's stl evaluates each smoother every ceil(window / 10) points; the exact statsmodels default
    (every point) costs 3.7x more over daily + weekly seasons for the same forecast."""
    from statsforecast.models import MSTL, AutoETS

    from pipeline.forecast.models import stl_jumps

    assert stl_jumps(24) == {"seasonal_jump": 2, "trend_jump": 5, "low_pass_jump": 3}
    model = MODELS["mstl"](SEASON, "h")
    n = 24 * 21
    rng = np.random.default_rng(5)
    t = np.arange(n)
    y = 40 + 8 * np.sin(2 * np.pi * t / 24) + 4 * np.sin(2 * np.pi * t / 168) + 0.01 * t + rng.normal(0, 1, n)
    frame = pd.DataFrame({"unique_id": "s", "ds": pd.date_range("2026-01-01", periods=n, freq="h"), "y": y})
    got = model.fit(frame).predict(HORIZON)["mean"].to_numpy()
    exact = MSTL(season_length=[24, 168], trend_forecaster=AutoETS(model="ZZN")).fit(y).predict(HORIZON)["mean"]
    assert model._model().stl_kwargs == stl_jumps(24)
    np.testing.assert_allclose(got, exact, rtol=0.01)


def test_the_ensemble_applies_the_calendar_uplift_to_each_member_that_does_not_forecast_events() -> None:
    """Prophet's forecast already holds the calendar (holidays); AutoETS's is of the de-uplifted
    series: the ensemble's mean is (prophet + ets · uplift) / 2, and the uplift is not applied again."""
    from types import SimpleNamespace

    from pipeline.forecast import engine as eng

    ds = pd.date_range("2026-01-01", periods=2, freq="h")
    idx = pd.DataFrame({"unique_id": ["s1", "s1"], "ds": ds})
    point = {"prophet": pd.DataFrame({"unique_id": "s1", "ds": ds, "mean": [10.0, 20.0]}),
             "auto_ets": pd.DataFrame({"unique_id": "s1", "ds": ds, "mean": [10.0, 10.0]})}
    sel = eng.Selection(choice={"s1": eng.ENSEMBLE}, members=["prophet", "auto_ets"], scores={})
    factor = pd.Series([1.0, 2.0], index=pd.MultiIndex.from_frame(idx))
    frames = eng._chosen_means(SimpleNamespace(ids=["s1"]), sel, point, idx, factor)  # type: ignore[arg-type]
    np.testing.assert_allclose(frames[0]["mean"], [10.0, 20.0])


def test_global_gbm_chunked_threaded_predict_equals_one_pass(history: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GBM predicts its rows in chunks of series on one thread per core: the same numbers as one
    pass over every row, in the same order, and the process's BLAS thread limit left as it was."""
    from threadpoolctl import threadpool_info

    from pipeline.forecast import global_models

    blas_before = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    model = MODELS["global_gbm"](SEASON, "h", n_jobs=2)
    one_pass = model.fit(history).predict(HORIZON)
    cv_one = model.cross_validate(history[history["unique_id"] != SHORT], HORIZON, n_windows=2)
    monkeypatch.setattr(global_models, "PREDICT_CHUNK_ROWS", 50)  # 3 series a chunk
    monkeypatch.setattr(global_models, "PARALLEL_PREDICT_ROWS", 1)
    threads: set[str] = set()
    original = global_models.GlobalGBMModel._forecast_series

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        import threading

        threads.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(global_models.GlobalGBMModel, "_forecast_series", spy)
    chunked = MODELS["global_gbm"](SEASON, "h", n_jobs=2)
    pd.testing.assert_frame_equal(chunked.fit(history).predict(HORIZON), one_pass)
    pd.testing.assert_frame_equal(chunked.cross_validate(history[history["unique_id"] != SHORT], HORIZON, n_windows=2), cv_one)
    assert any(t.startswith("gbm-predict") for t in threads), threads
    assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == blas_before  # none left capped


def test_global_gbm_bags_trained_on_threads_equal_one_after_another(history: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bags train side by side on threads (each capping only its own OpenMP threads): the same
    boosters, hence the same forecasts, as one after another; the process's BLAS limit untouched."""
    from threadpoolctl import threadpool_info

    from pipeline.forecast import global_models

    monkeypatch.setattr(global_models, "MIN_BAG_ROWS", 100)  # two bags on the fixture's rows
    blas_before = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    one_after_another = MODELS["global_gbm"](SEASON, "h", n_jobs=1).fit(history).predict(HORIZON)
    monkeypatch.setattr(global_models, "PARALLEL_FIT_ROWS", 1)
    threads: list[str] = []
    original = global_models._fit_booster

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        import threading

        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(global_models, "_fit_booster", spy)
    model = MODELS["global_gbm"](SEASON, "h", n_jobs=2)
    side_by_side = model.fit(history).predict(HORIZON)
    assert len(model._model.models) == 2
    pd.testing.assert_frame_equal(side_by_side, one_after_another)
    assert len(threads) == 2 and all(t.startswith("gbm-fit") for t in threads), threads
    assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == blas_before


class _ChooseBandWithPid:
    """engine._choose_band, and the process that ran it (module level: pickled to forked workers)."""

    def __call__(self, task):  # type: ignore[no-untyped-def]
        import os

        from pipeline.forecast import engine

        return engine._choose_band(task), os.getpid()


def test_band_choices_spread_over_forked_workers_give_the_in_process_result(history: pd.DataFrame,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each series' band is chosen on its own evidence: spread over two forked workers, the forecast
    and every per-series band decision are those of the in-process choice."""
    import os

    from pipeline.common import parallel
    from pipeline.forecast import engine

    options = replace(OPTIONS, models=LOCAL, n_jobs=2)
    monkeypatch.setattr(engine, "PARALLEL_BAND_SERIES", 10**6)
    serial = run_engine(history, options)
    pids: list[int] = []

    def spy(fn, items, workers, min_items_per_worker=4):  # type: ignore[no-untyped-def]
        assert fn is engine._choose_band
        out = parallel.fork_map(_ChooseBandWithPid(), items, workers, min_items_per_worker)
        pids.extend(pid for _, pid in out)
        return [result for result, _ in out]

    monkeypatch.setattr(engine, "PARALLEL_BAND_SERIES", 2)
    monkeypatch.setattr(engine, "fork_map", spy)
    spread = run_engine(history, options)
    assert pids and os.getpid() not in pids  # forked workers chose every band
    pd.testing.assert_frame_equal(spread.forecasts, serial.forecasts)
    assert spread.selection == serial.selection
    assert spread.info["quantile_methods"] == serial.info["quantile_methods"]
