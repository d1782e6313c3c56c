"""Model selection and forecasts (statsforecast runs for real) plus the quantile helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.forecast.engine import select_and_forecast
from pipeline.forecast.models import MODELS, OUTPUT_COLUMNS
from pipeline.forecast.quantiles import interpolate_quantile, pinball_loss
from pipeline.schemas import FORECAST, FORECAST_QUANTILES

SEASON = 24
HORIZON = 24
TAU = 0.9
N = 24 * 7
START = pd.Timestamp("2025-01-06 00:00", tz="UTC")
TREND = "region:eu-west-1:vcpu"
NOISY = "pair:eu-west-1→us-east-1:requests"
ZERO = "region:us-east-1:storage_gib"
SHORT = "region:ap-southeast-2:bandwidth_gbps"  # too short to score: falls back to the first model


def make_history() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    k = np.arange(N)
    ds = pd.date_range(START, periods=N, freq="h")
    trend = 50 + 0.5 * k + 20 * np.sin(2 * np.pi * k / SEASON)
    noisy = np.maximum(40 + 10 * np.sin(2 * np.pi * k / SEASON) + rng.normal(0, 3, N), 0)
    short_k = np.arange(30)
    frames = [
        pd.DataFrame({"unique_id": TREND, "ds": ds, "y": trend}),
        pd.DataFrame({"unique_id": NOISY, "ds": ds, "y": noisy}),
        pd.DataFrame({"unique_id": ZERO, "ds": ds, "y": 0.0}),
        pd.DataFrame({"unique_id": SHORT, "ds": ds[-30:], "y": 5 + (short_k % SEASON) / 10}),
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return make_history()


@pytest.fixture(scope="module")
def result(history: pd.DataFrame):
    return select_and_forecast(history, HORIZON, SEASON, "h", TAU)


def test_output_follows_the_forecast_contract(result, history: pd.DataFrame) -> None:
    fc = result.forecasts
    assert list(fc.columns[:3]) == ["series_id", "ds", "model"]
    assert set(FORECAST.names) <= set(fc.columns)
    pa.Table.from_pandas(fc[FORECAST.names], schema=FORECAST, preserve_index=False)  # casts cleanly
    assert str(fc["ds"].dt.tz) == "UTC"

    assert sorted(fc["series_id"].unique()) == sorted(history["unique_id"].unique())
    for sid, group in fc.groupby("series_id"):
        assert len(group) == HORIZON, sid
        last = history.loc[history["unique_id"] == sid, "ds"].max()
        expected = pd.date_range(last + pd.Timedelta(hours=1), periods=HORIZON, freq="h")
        assert list(group["ds"]) == list(expected), sid
        assert (group["model"] == result.selection[sid]["model"]).all()

    numeric = fc[[c for c in FORECAST.names if c not in ("series_id", "ds", "model")]].to_numpy()
    assert np.isfinite(numeric).all()
    assert (numeric >= 0).all()
    eps = 1e-9
    q = fc[["q50", "q80", "q90", "q95", "q99"]].to_numpy()
    assert (np.diff(q, axis=1) >= -eps).all()
    assert (fc["lo_95"] <= fc["lo_80"] + eps).all()
    assert (fc["lo_80"] <= fc["hi_80"] + eps).all()
    assert (fc["hi_80"] <= fc["hi_95"] + eps).all()


def test_quantile_columns_are_the_right_levels(result) -> None:
    """q_p is the upper end of the (2p-1) central interval: with Gaussian intervals the spreads
    above the mean scale like the normal quantiles (catches e.g. q80 taken from the 80 % band)."""
    fc = result.forecasts[result.forecasts["series_id"] == NOISY]
    assert (fc["lo_95"] > 0).all()  # nothing clipped, so the ratios are exact
    spread = {c: (fc[c] - fc["mean"]).to_numpy() for c in ("q80", "q90", "q95", "q99")}
    assert (spread["q80"] > 0).all()
    np.testing.assert_allclose(spread["q90"] / spread["q80"], 1.2815516 / 0.8416212, rtol=1e-3)
    np.testing.assert_allclose(spread["q99"] / spread["q80"], 2.3263479 / 0.8416212, rtol=1e-3)
    np.testing.assert_allclose(fc["hi_80"], fc["q90"], rtol=1e-9)
    np.testing.assert_allclose(fc["q50"], fc["mean"], rtol=1e-9)


def test_deterministic(result, history: pd.DataFrame) -> None:
    again = select_and_forecast(history, HORIZON, SEASON, "h", TAU)
    pd.testing.assert_frame_equal(result.forecasts, again.forecasts)
    assert result.selection == again.selection


def test_row_order_does_not_matter(result, history: pd.DataFrame) -> None:
    """The holdout is the last day by time, not the last rows as given."""
    shuffled = select_and_forecast(history.sample(frac=1.0, random_state=3), HORIZON, SEASON, "h", TAU)
    pd.testing.assert_frame_equal(result.forecasts, shuffled.forecasts)
    assert result.selection == shuffled.selection


def test_selection_is_consistent_with_scores(result) -> None:
    models = ["seasonal_naive", "auto_ets"]
    for sid, sel in result.selection.items():
        scores = sel["pinball_at_tau"]
        if sid == SHORT:
            assert scores == {} and sel["model"] == models[0]
            continue
        assert set(scores) == set(models), sid
        best = min(scores.values())
        assert scores[sel["model"]] == best, (sid, sel)
        if scores["seasonal_naive"] == scores["auto_ets"]:
            assert sel["model"] == "seasonal_naive"  # ties go to the earlier model
    # trend + season: seasonal naive lags the trend by a day; ETS follows it
    assert result.selection[TREND]["model"] == "auto_ets"
    assert result.selection[TREND]["pinball_at_tau"]["auto_ets"] < result.selection[TREND]["pinball_at_tau"]["seasonal_naive"]


def test_scores_are_out_of_sample_on_the_last_season(history: pd.DataFrame, result) -> None:
    """Recompute seasonal naive's recorded score: fit on all but the last day, score that day."""
    series = history[history["unique_id"] == TREND].copy()
    series["ds"] = series["ds"].dt.tz_localize(None)
    train, test = series.iloc[:-SEASON], series.iloc[-SEASON:]
    pred = MODELS["seasonal_naive"](SEASON, "h").fit(train).predict(SEASON)
    np.testing.assert_allclose(pred["mean"], train["y"].to_numpy()[-SEASON:])
    q_tau = interpolate_quantile({q: pred[f"q{int(round(q * 100))}"].to_numpy() for q in FORECAST_QUANTILES}, TAU)
    expected = pinball_loss(test["y"].to_numpy(), q_tau, TAU)
    # seasonal naive under-forecasts by 12 (= 24 h of trend) minus its interval width
    assert expected > 0
    assert result.selection[TREND]["pinball_at_tau"]["seasonal_naive"] == pytest.approx(expected, abs=1e-6)


def test_winner_is_refit_on_the_full_history(history: pd.DataFrame, result) -> None:
    alone = select_and_forecast(history[history["unique_id"] == TREND], HORIZON, SEASON, "h", TAU, models=("auto_ets",))
    mine = result.forecasts[result.forecasts["series_id"] == TREND].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone.forecasts)
    # a clean trend+season series is extrapolated, not repeated: the next day is ~12 higher
    last_day = history.loc[history["unique_id"] == TREND, "y"].to_numpy()[-SEASON:]
    np.testing.assert_allclose(mine["mean"].to_numpy(), last_day + 0.5 * SEASON, atol=0.5)


def test_seasonal_naive_repeats_the_last_season(history: pd.DataFrame) -> None:
    out = select_and_forecast(history[history["unique_id"] == NOISY], HORIZON, SEASON, "h", TAU, models=("seasonal_naive",))
    last_day = history.loc[history["unique_id"] == NOISY, "y"].to_numpy()[-SEASON:]
    np.testing.assert_allclose(out.forecasts["mean"].to_numpy(), last_day)
    assert out.selection[NOISY] == {"model": "seasonal_naive", "pinball_at_tau": {}}


def test_all_zero_series_forecasts_zero(result) -> None:
    fc = result.forecasts[result.forecasts["series_id"] == ZERO]
    assert len(fc) == HORIZON
    values = fc[[c for c in OUTPUT_COLUMNS if c not in ("unique_id", "ds")]].to_numpy()
    assert np.abs(values).max() < 1e-6


def test_intermittent_series_does_not_crash() -> None:
    ds = pd.date_range(START, periods=N, freq="h")
    y = np.zeros(N)
    y[[5, 60, 61, 130]] = [1.0, 2.0, 1.0, 3.0]
    out = select_and_forecast(pd.DataFrame({"unique_id": ZERO, "ds": ds, "y": y}), HORIZON, SEASON, "h", TAU)
    fc = out.forecasts
    assert len(fc) == HORIZON and (fc[["mean", "q99", "lo_95"]].to_numpy() >= 0).all()
    assert np.isfinite(fc[FORECAST.names[3:]].to_numpy()).all()
    assert fc["q50"].max() <= 3.0


def test_unknown_model_and_empty_history_raise(history: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown models.*prophet_xl"):
        select_and_forecast(history, HORIZON, SEASON, "h", TAU, models=("seasonal_naive", "prophet_xl"))
    with pytest.raises(ValueError, match="empty"):
        select_and_forecast(history.iloc[:0], HORIZON, SEASON, "h", TAU)
    model = MODELS["auto_ets"](SEASON, "h")
    with pytest.raises(ValueError, match="empty"):
        model.fit(history.iloc[:0])
    with pytest.raises(ValueError, match="lacks columns"):
        model.fit(history.rename(columns={"y": "value"}))
    with pytest.raises(RuntimeError, match="fit"):
        MODELS["seasonal_naive"](SEASON, "h").predict(3)


def test_interpolate_quantile() -> None:
    cols = {0.99: np.array([99.0, 9.0]), 0.5: np.array([50.0, 5.0]), 0.9: np.array([30.0, 3.0]),
            0.8: np.array([20.0, 2.0]), 0.95: np.array([40.0, 4.0])}
    np.testing.assert_allclose(interpolate_quantile(cols, 0.85), [25.0, 2.5])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.8), [20.0, 2.0])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.6), [50 + (20 - 50) / 3, 5 + (2 - 5) / 3])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.97), [40 + 0.5 * 59, 4 + 0.5 * 5])
    # clamped outside the stored range
    np.testing.assert_allclose(interpolate_quantile(cols, 0.2), [50.0, 5.0])
    np.testing.assert_allclose(interpolate_quantile(cols, 0.999), [99.0, 9.0])
    # monotone in τ for monotone columns
    mono = {0.5: np.array([1.0]), 0.8: np.array([2.0]), 0.9: np.array([4.0]), 0.95: np.array([5.0]), 0.99: np.array([9.0])}
    values = [float(interpolate_quantile(mono, t)[0]) for t in np.linspace(0.4, 1.0, 61)]
    assert values == sorted(values)


def test_pinball_loss() -> None:
    y = np.array([1.0, 5.0, 7.5])
    assert pinball_loss(y, y, 0.9) == 0.0
    assert pinball_loss([10.0], [8.0], 0.9) == pytest.approx(1.8)  # under-forecast costs τ
    assert pinball_loss([10.0], [12.0], 0.9) == pytest.approx(0.2)  # over-forecast costs 1 - τ
    assert pinball_loss([10.0, 10.0], [8.0, 12.0], 0.9) == pytest.approx(1.0)  # a mean
    assert pinball_loss([10.0], [8.0], 0.5) == pinball_loss([10.0], [12.0], 0.5) == pytest.approx(1.0)
    # at high τ the loss is minimised near the upper quantile of the sample
    sample = np.arange(1.0, 101.0)
    grid = np.arange(0.0, 101.0)
    best = grid[np.argmin([pinball_loss(sample, np.full_like(sample, g), 0.9) for g in grid])]
    assert 89 <= best <= 91
