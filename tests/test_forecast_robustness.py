"""Quantile bands on what real telemetry does (issue 13): level shifts, spikes, flat stretches,
heavy tails, scales apart by orders of magnitude, short history.

Every case is generated; each checks a behaviour the per-series band layer
(pipeline/forecast/bands.py) provides and the single pooled band did not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.forecast import bands
from pipeline.forecast.engine import EngineOptions, run_engine

M = 24
START = pd.Timestamp("2025-03-03 00:00", tz="UTC")
LOCAL = ("seasonal_naive", "seasonal_mean")


def _cycle(n: int, amp: float = 10.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * np.arange(n) / M)


def _frame(series: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"unique_id": uid, "ds": pd.date_range(START, periods=len(y), freq="h"), "y": y})
                      for uid, y in series.items()], ignore_index=True)


def _run(series: dict[str, np.ndarray], models: tuple[str, ...] = LOCAL, horizon: int = M):
    options = EngineOptions(horizon=horizon, season_length=M, freq="h", tau=0.9, models=models, combine=False)
    return run_engine(_frame(series), options)


def _width(result, uid: str, upper: str = "q90", lower: str = "q50") -> float:
    fc = result.forecasts[result.forecasts["series_id"] == uid]
    return float(np.mean(fc[upper] - fc[lower]))


def test_level_shift_does_not_widen_the_band() -> None:
    """A step of 50 noise deviations ten days ago: the differences straddling it are not today's noise."""
    rng = np.random.default_rng(1)
    n = 30 * M
    y = 100 + _cycle(n) + rng.normal(0, 1, n)
    y[-10 * M:] += 50
    assert bands.regime_start(y, M) == n - 10 * M
    q99 = bands.diff_offsets(y, M, M, [0.99])[0.99]
    assert np.all(q99 < 6), q99  # noise of a seasonal difference: sd √2, q99 ≈ 3.3; the shift would give ≈ 50
    result = _run({"shifted": y, "calm": 100 + _cycle(n) + rng.normal(0, 1, n)})
    assert _width(result, "shifted", "q99") < 8


def test_a_spike_is_not_a_level_shift_and_does_not_poison_the_band() -> None:
    """Isolated bursts (one hour at 40× the noise, twice a week) move neither the regime nor the
    quantiles of the seasonal differences up to 0.95, nor the point forecast."""
    rng = np.random.default_rng(2)
    n = 28 * M
    y = 50 + _cycle(n) + rng.normal(0, 1, n)
    y[np.arange(30, n, 84)] += 40
    assert bands.regime_start(y, M) == 0
    q95 = bands.diff_offsets(y, M, M, [0.95])[0.95]
    assert np.all(q95 < 4), q95
    result = _run({"spiky": y, "calm": 50 + _cycle(n) + rng.normal(0, 1, n)})
    fc = result.forecasts[result.forecasts["series_id"] == "spiky"]
    truth = 50 + _cycle(n + M)[-M:]
    assert np.max(np.abs(fc["q50"].to_numpy() - truth)) < 8  # the median is not dragged to a spike
    assert _width(result, "spiky") < 5


def test_long_flat_stretch_does_not_shrink_the_band_of_an_active_series() -> None:
    """A metric stuck at one value for 16 days (a stalled exporter) between two active weeks: its
    zero differences are not the series' noise, so the band is the active weeks'."""
    rng = np.random.default_rng(3)
    before, after = (40 + _cycle(6 * M) + rng.normal(0, 3, 6 * M) for _ in range(2))
    y = np.concatenate([before, np.full(16 * M, 40.0), after])
    want = np.quantile(np.concatenate([before[M:] - before[:-M], after[M:] - after[:-M]]), 0.9)
    got = bands.diff_offsets(y, M, M, [0.9])[0.9][0]
    assert got == pytest.approx(want, rel=0.25)  # counting the stuck stretch gives ≈ 40 % less
    zeros_then_load = np.concatenate([np.zeros(20 * M), after])  # a host started a week ago: a level shift
    assert bands.diff_offsets(zeros_then_load, M, M, [0.9])[0.9][0] == pytest.approx(
        np.quantile(after[M:] - after[:-M], 0.9), rel=0.25)
    flat_now = np.concatenate([before, np.zeros(10 * M)])
    assert bands.diff_offsets(flat_now, M, M, [0.9])[0.9][0] == 0.0  # flat today: a flat band


def test_heavy_tailed_series_get_their_own_tail() -> None:
    """One pooled z-shape gives every series the same q99/q80 width ratio; the per-series
    candidates let a heavy-tailed series (Student t, 2 degrees of freedom) keep its longer tail,
    and the choice is scored at τ's neighbours, so it still has a calibrated band at τ."""
    rng = np.random.default_rng(4)
    n = 40 * M
    normal = 100 + _cycle(n) + rng.normal(0, 2, n)
    heavy = 100 + _cycle(n) + rng.standard_t(2, n)

    def tail(y: np.ndarray) -> float:
        q = bands.diff_offsets(y, M, M, [0.5, 0.8, 0.99])
        return float((q[0.99][0] - q[0.5][0]) / (q[0.8][0] - q[0.5][0]))

    assert tail(heavy) > 1.5 * tail(normal)
    result = _run({"normal": normal, "heavy": heavy, "other": 100 + _cycle(n) + rng.normal(0, 2, n)})
    assert result.selection["heavy"]["quantile_cv_vs_snaive"] <= 1.0


def test_scales_apart_by_orders_of_magnitude() -> None:
    """A series in thousandths and one in millions, forecast together: each band is its own size."""
    rng = np.random.default_rng(5)
    n = 21 * M
    base = 10 + _cycle(n, 2) + rng.normal(0, 0.5, n)
    result = _run({"tiny": base * 1e-3, "huge": (10 + _cycle(n, 2) + rng.normal(0, 0.5, n)) * 1e6})
    assert 0.2e-3 < _width(result, "tiny") < 3e-3
    assert 0.2e6 < _width(result, "huge") < 3e6


def test_short_history_uses_its_own_differences_not_the_pool() -> None:
    """A calm new series (under the cross-validation length) among wild ones keeps a calm band."""
    rng = np.random.default_rng(6)
    n = 20 * M
    series = {f"wild{i}": 100 + _cycle(n) + rng.normal(0, 15, n) for i in range(4)}
    series["new_calm"] = 100 + _cycle(3 * M) + rng.normal(0, 0.5, 3 * M)
    result = _run(series)
    # one CV window: it chooses only the point, the band is its own differences either way
    assert result.selection["new_calm"]["quantile_method"] in (bands.SNAIVE, bands.EMPIRICAL)
    assert _width(result, "new_calm") < 3
    assert _width(result, "wild0") > 10


def test_quantiles_never_cross_and_stay_non_negative() -> None:
    """Non-negative series never get negative quantiles; a series that goes negative may."""
    rng = np.random.default_rng(7)
    n = 14 * M
    counts = np.maximum(rng.poisson(0.3, n).astype(float), 0)
    centred = _cycle(n) + rng.normal(0, 1, n)  # a series around zero, e.g. a net flow
    result = _run({"counts": counts, "centred": centred})
    fc = result.forecasts
    q = fc[["q50", "q80", "q90", "q95", "q99"]].to_numpy()
    assert np.all(np.diff(q, axis=1) >= 0)
    assert np.all(fc["lo_95"] <= fc["lo_80"]) and np.all(fc["hi_95"] >= fc["hi_80"])
    assert fc.loc[fc["series_id"] == "counts", ["mean", "q50", "lo_95"]].to_numpy().min() >= 0
    assert fc.loc[fc["series_id"] == "centred", "lo_95"].min() < 0


def test_choice_is_reported_per_series_with_its_cv_score() -> None:
    rng = np.random.default_rng(8)
    n = 14 * M
    result = _run({f"s{i}": 20 + _cycle(n) + rng.normal(0, 1 + i, n) for i in range(3)})
    for uid in ("s0", "s1", "s2"):
        sel = result.selection[uid]
        assert sel["quantile_method"] in bands.METHODS
        assert bands.SNAIVE in sel["quantile_cv_pinball"] and sel["quantile_cv_vs_snaive"] <= 1.0
    summary = result.info["quantile_methods"]
    assert sum(summary["chosen"].values()) == 3 and 0 <= summary["share_cv80_within_70_90"] <= 1


def test_short_series_are_cross_validated_on_the_windows_they_hold() -> None:
    """A series too short for the run's windows still gets CV evidence (its latest windows), so its
    point and band are chosen on it rather than defaulted."""
    rng = np.random.default_rng(9)
    n, short_n = 20 * M, 4 * M  # the run takes 14 windows of 24 (two weeks); the short series holds 2
    series = {f"long{i}": 50 + _cycle(n) + rng.normal(0, 2, n) for i in range(3)}
    series["short"] = 50 + _cycle(short_n) + rng.normal(0, 2, short_n)
    result = _run(series)
    k = result.info["n_windows"]
    assert k == 14
    cv = result.cv[(result.cv["unique_id"] == "short") & (result.cv["model"] == "seasonal_naive")]
    assert sorted(cv["window"].unique()) == [k - 2, k - 1]  # numbered like the run's last two: the latest origins line up
    assert pd.Timestamp(cv["cutoff"].max()) == (START + pd.Timedelta(hours=short_n - M - 1)).tz_localize(None)  # its last day held out
    sel = result.selection["short"]
    assert set(sel["pinball_at_tau"]) >= set(LOCAL)  # the point was chosen on its own CV scores
    assert sel["quantile_cv_rows"] == 2 * M and bands.SNAIVE in sel["quantile_cv_pinball"]


def test_cv_coverage_describes_the_bands_used() -> None:
    """`info["cv_coverage"]` pools the CV coverage of each series' chosen band (not the pooled
    calibration's in-sample coverage): it is the row-weighted mean of the per-series figures."""
    rng = np.random.default_rng(10)
    n = 16 * M
    series = {f"s{i}": 100 + _cycle(n) + rng.standard_t(3, n) * (1 + 3 * i) for i in range(4)}
    result = _run(series)
    rows = np.array([result.selection[u]["quantile_cv_rows"] for u in series])
    for level in ("80", "95"):
        per_series = np.array([result.selection[u]["quantile_cv_coverage"][level] for u in series])
        assert result.info["cv_coverage"][level] == pytest.approx(np.average(per_series, weights=rows), abs=2e-4)
    assert 0.6 < result.info["cv_coverage"]["80"] < result.info["cv_coverage"]["95"] <= 1.0


def test_weeks_of_origins_unless_a_trained_global_model_is_reused() -> None:
    """Local models (and a global model refit for the final forecast) are cross-validated on two
    weeks of daily origins; a global model reused from cross-validation keeps four windows, so it
    is not trained further back than its forecast can afford."""
    from pipeline.forecast.engine import MAX_CV_WINDOWS, default_windows

    assert default_windows(60 * M, M, M, reused_global=False) == 14
    assert default_windows(60 * M, 2 * M, M, reused_global=False) == 7  # h = 48: still two weeks of origins
    assert default_windows(60 * M, M, M, reused_global=True) == MAX_CV_WINDOWS
    assert default_windows(8 * M, M, M, reused_global=False) == 5  # as many as the longest series holds
    rng = np.random.default_rng(12)
    result = _run({f"s{i}": 30 + _cycle(30 * M) + rng.normal(0, 1, 30 * M) for i in range(3)})
    assert result.info["n_windows"] == 14 and result.selection["s0"]["quantile_cv_rows"] == 14 * M


def test_windows_before_a_level_shift_settled_are_not_evidence() -> None:
    """Two weeks of windows reach back past a level shift ten days ago: the windows whose origin
    is under four seasons into the new level (the seasonal mean still averaging the old one) are
    dropped, the others kept, so the transition's errors do not widen today's band."""
    rng = np.random.default_rng(13)
    n = 30 * M
    y = 100 + _cycle(n) + rng.normal(0, 1, n)
    y[-10 * M:] += 50
    result = _run({"shifted": y, "calm": 100 + _cycle(n) + rng.normal(0, 1, n)})
    cv = result.cv[result.cv["model"] == "seasonal_mean"]
    assert cv.loc[cv["unique_id"] == "calm", "window"].nunique() == 14
    kept = sorted(cv.loc[cv["unique_id"] == "shifted", "window"].unique())
    assert kept == list(range(8, 14)), kept  # origins 4..9 days into the new level
    assert _width(result, "shifted", "q99") < 8


def test_one_window_is_no_evidence_against_seasonal_naives_point() -> None:
    """A series holding a single CV window keeps seasonal naive's band even when another point won
    that window: 24 errors do not tell two points apart (the traces' Alibaba disk_io at 91 h)."""
    rng = np.random.default_rng(12)
    n = 20 * M
    series = {f"long{i}": 50 + _cycle(n) + rng.normal(0, 2, n) for i in range(3)}
    series["new"] = 50 + _cycle(3 * M) + rng.normal(0, 6, 3 * M)  # iid noise: the seasonal mean wins its one window
    result = _run(series)
    sel = result.selection["new"]
    assert sel["quantile_cv_rows"] == M
    assert sel["pinball_at_tau"]["seasonal_mean"] < sel["pinball_at_tau"]["seasonal_naive"]  # the other point did win it
    assert sel["quantile_method"] == bands.SNAIVE
    y = series["new"]
    fc = result.forecasts[result.forecasts["series_id"] == "new"]
    offsets = bands.diff_offsets(y, M, M, [0.5])[0.5]
    assert np.allclose(fc["q50"].to_numpy(), y[-M:] + offsets)  # seasonal naive's point, its own differences
