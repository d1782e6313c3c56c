"""Every input a candidate (issue 15 item 5): all telemetry columns reach the models as candidate
regressors, cross-validation decides per model which it keeps, the manifests say which; and the
daily training's statsforecast CV fits once and moves the fit forward."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.common import lake, storage
from pipeline.common.intervals import DataInterval
from pipeline.forecast import engine, exog, registry, regressors, training

M, H = 24, 24


def _telemetry_names() -> list[str]:
    return [exog.telemetry_regressor_name(c) for cols in exog.telemetry_columns().values() for c in cols]


def test_every_telemetry_column_of_the_lake_is_a_candidate_regressor(seeded_copy: Path) -> None:
    from pipeline.run import stage_features
    from tests.conftest import settings_for

    names = _telemetry_names()
    assert {"cpu_util_lag168", "memory_util_lag168", "bandwidth_util_lag168", "active_users_lag168",
            "transactions_per_s_lag168"} <= set(names)
    settings = settings_for(seeded_copy)
    hour = DataInterval.ending_at("2026-01-28T06:00")
    stage_features(hour, settings)
    before = engine.forecast_run_id("hourly", DataInterval.ending_at("2026-01-28T05:00"))
    lake.write_json_atomic(storage.join(lake.forecast_dir(settings.lake_root, before), "manifest.json"),
                           {"engine": {"regressors": {"global_gbm": {"candidates": names, "used": []}}}})
    x = engine.load_inputs(hour, settings, "hourly", ("seasonal_naive",))
    assert x.options.regressors == {"global_gbm": {"candidates": names, "used": [], "run_id": before}}, "the day's decision"
    assert engine.load_inputs(hour, settings, "daily", ("seasonal_naive",)).options.regressors is None, "the daily run decides"
    assert set(names) <= set(x.engine_input.columns) and set(names) <= set(x.future.columns)
    region = x.engine_input[x.engine_input["unique_id"].str.startswith("region:")]
    assert (region[names].std() > 0).all(), "real telemetry, not a fill value"
    assert set(names) <= set(regressors.candidates(x.engine_input))
    # no peeking: the value at t is the region's telemetry one week before t
    assert x.future["ds"].min() > x.engine_input["ds"].max()


def _with_driver(n: int = 24 * 28, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Series whose level follows a known driver `load` (a random step process: not seasonal, not
    predictable from the series' own lags) plus a pure-noise column; history and future frames."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2026-01-01", periods=n + H, freq="h")
    hist, fut = [], []
    for k in range(4):
        steps = np.repeat(rng.uniform(0, 30, (n + H) // 12 + 1), 12)[:n + H]
        y = 50 + 10 * k + 8 * np.sin(2 * np.pi * np.arange(n + H) / M) + steps + rng.normal(0, 1, n + H)
        frame = pd.DataFrame({"unique_id": f"region:r{k}:vcpu", "ds": ds, "y": y, "load": steps,
                              "noise": rng.normal(0, 1, n + H)})
        hist.append(frame.iloc[:n])
        fut.append(frame.iloc[n:].drop(columns="y"))
    return pd.concat(hist, ignore_index=True), pd.concat(fut, ignore_index=True)


def test_cross_validation_decides_per_model_which_candidate_regressors_it_keeps() -> None:
    history, future = _with_driver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = engine.select_and_forecast(history, H, M, "h", 0.9, ("seasonal_naive", "global_gbm"), future=future,
                                            combine=False)
    decision = result.info["regressors"]["global_gbm"]
    assert decision["candidates"] == ["load", "noise"]
    assert decision["used"] == ["load", "noise"], decision  # the driver explains most of the variance
    pins = decision["cv_scaled_pinball"]
    assert pins["with"] < 0.8 * pins["without"], pins
    assert "seasonal_naive" not in result.info["regressors"], "models that read no exogenous column are not asked"


def test_training_decides_the_per_series_models_regressors_once_on_a_sample() -> None:
    history, future = _with_driver()
    p = engine.prepare(history, engine.EngineOptions(horizon=H, season_length=M, freq="h", tau=0.9,
                                                     models=("seasonal_naive", "prophet", "global_gbm"), n_windows=2),
                       future=future)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decisions = training.decide_regressors(p)
    assert set(decisions) == {"prophet"}, "the GBM decides in its own global step; seasonal naive reads no column"
    assert decisions["prophet"]["used"] == ["load", "noise"] and decisions["prophet"]["sample_series"] == 4
    assert not p.regressors, "the decision is returned for the shards, not left on the caller's preparation"
    assert training.regressor_sample([f"s{i:03d}" for i in range(200)], 5) == ["s000", "s050", "s100", "s149", "s199"]


def test_a_large_fleet_decides_on_an_even_sample_then_cross_validates_every_series_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above `REGRESSOR_DECISION_SERIES` series the GBM is cross-validated both ways on a sample and once more
    on every series with the columns kept; the decision is the one the sample shows and says so."""
    history, future = _with_driver(n=24 * 14)
    more = history.assign(unique_id=history["unique_id"].str.replace("region:", "region:x", regex=False))
    history = pd.concat([history, more], ignore_index=True)  # 8 series
    future = pd.concat([future, future.assign(unique_id=future["unique_id"].str.replace("region:", "region:x", regex=False))],
                       ignore_index=True)
    seen: list[int] = []
    real = engine._cross_validate_inputs

    def counting(p, name):  # type: ignore[no-untyped-def]
        if name == "global_gbm":
            seen.append(len(p.long_ids))
        return real(p, name)

    monkeypatch.setattr(engine, "_cross_validate_inputs", counting)
    monkeypatch.setattr(engine, "REGRESSOR_DECISION_SERIES", 4)
    options = engine.EngineOptions(horizon=H, season_length=M, freq="h", tau=0.9, models=("seasonal_naive", "global_gbm"),
                                   combine=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = engine.run_engine(history, options, future=future)
    assert seen == [4, 4, 8], "both ways on the sample, then once on every series"
    decision = result.info["regressors"]["global_gbm"]
    assert decision["used"] == ["load", "noise"] and decision["sample_series"] == 4 and decision["series"] == 4, decision
    gbm_cv = result.cv_by_model["global_gbm"]
    assert gbm_cv["unique_id"].nunique() == 8, "the selection scores every series on the kept columns"
    assert regressors.even_sample([f"s{i}" for i in range(3)], 5) == ["s0", "s1", "s2"]


def test_a_model_without_the_candidates_sees_none_of_them() -> None:
    history, future = _with_driver(n=24 * 10)
    p = engine.prepare(history, engine.EngineOptions(horizon=H, season_length=M, freq="h", tau=0.9, models=("global_gbm",)),
                       future=future)
    assert p.regressor_candidates == ["load", "noise"]
    assert {"load", "noise"} <= set(p.inputs_for("global_gbm", p.ids).columns), "no decision yet: every column"
    p.regressors["global_gbm"] = []
    assert not {"load", "noise"} & set(p.inputs_for("global_gbm", p.ids).columns)
    p.regressors["global_gbm"] = ["load"]
    cols = set(p.inputs_for("global_gbm", p.ids).columns)
    assert "load" in cols and "noise" not in cols


@pytest.mark.parametrize(("without", "with_", "used"), [(1.0, 0.5, ["a"]), (0.5, 1.0, []), (1.0, 1.0, []),
                                                         (None, 1.0, ["a"]), (1.0, None, [])])
def test_decide_keeps_the_candidates_only_when_they_score_better(without: float | None, with_: float | None,
                                                                   used: list[str]) -> None:
    ids = pd.Index(["s1", "s2"])

    def pins(v: float | None) -> pd.Series | None:
        return None if v is None else pd.Series([v, v], index=ids)

    decision = regressors.decide(pins(without), pins(with_), pd.Series([2.0, 0.0], index=ids), ["a"])
    assert decision["used"] == used and decision["candidates"] == ["a"]


def test_a_constant_column_is_no_candidate_and_the_calendar_is_always_kept() -> None:
    frame = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2026-01-01", periods=5, freq="h"), "y": np.arange(5.0),
                          "event_uplift": [0, 0, 0.3, 0, 0], "flat": 0.0, "tele": [1.0, 2, 3, 4, 5]})
    assert regressors.candidates(frame) == ["tele"]


def test_training_cross_validation_fits_statsforecast_models_once_and_moves_them_forward() -> None:
    """refit=False: window 0 is the fit at the first origin; each later window is that fit's
    `forward` over the longer series (parameters fixed), exactly as hourly registry scoring uses it."""
    from statsforecast.models import AutoETS

    from pipeline.forecast.models import MODELS

    rng = np.random.default_rng(1)
    n, windows = 24 * 16, 3
    y = 30 + 10 * np.sin(2 * np.pi * np.arange(n) / M) + np.cumsum(rng.normal(0, 0.3, n))
    history = pd.DataFrame({"unique_id": "s", "ds": pd.date_range("2026-01-01", periods=n, freq="h"), "y": y})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        once = MODELS["auto_ets"](M, "h").cross_validate(history, H, windows, H, refit=False)
        every = MODELS["auto_ets"](M, "h").cross_validate(history, H, windows, H, refit=True)
        first_cut = n - windows * H
        fitted = AutoETS(season_length=M).fit(y[:first_cut])
        moved = fitted.forward(y=y[:first_cut + H], h=H)["mean"]
    by_window = {w: g["mean"].to_numpy() for w, g in once.groupby("window")}
    np.testing.assert_allclose(by_window[0], every[every["window"] == 0]["mean"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(by_window[1], moved, rtol=1e-6)
    assert training.TRAIN_CV_REFIT is False


def test_the_training_manifest_records_regressors_and_seconds_per_model(seeded_copy: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.run import stage_train
    from tests.conftest import settings_for

    monkeypatch.delenv("PEERSCALE_TRAIN_MODELS", raising=False)
    settings = replace(settings_for(seeded_copy), history_days=14)
    trained = stage_train("2026-01-28T00:00", settings, ("seasonal_naive", "global_gbm"))
    manifest = registry.read_manifest(settings.lake_root, trained["version"])
    gbm = manifest["regressors"]["global_gbm"]
    assert set(_telemetry_names()) <= set(gbm["candidates"]) and gbm["decisions"] == 1
    assert set(gbm["used"]) <= set(gbm["candidates"])
    assert {"seasonal_naive", "global_gbm"} <= set(manifest["seconds"]) and all(v >= 0 for v in manifest["seconds"].values())
    assert any(k.endswith(":final_fit") for k in manifest["seconds"])
    assert not storage.exists(registry.work_dir(settings.lake_root, trained["version"]))
    assert lake.read_json(registry.manifest_path(settings.lake_root, trained["version"]))["version"] == trained["version"]


def test_an_earlier_decision_on_the_same_candidates_is_kept_without_cross_validating_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The day's decision is kept (the GBM cross-validated once, its inputs restricted as decided, the
    info naming the run that decided); one made on other candidate columns, or that failed, is not."""
    history, future = _with_driver(n=24 * 14)
    calls: list[str] = []
    real = engine._cross_validate_inputs

    def counting(p, name):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(p, name)

    monkeypatch.setattr(engine, "_cross_validate_inputs", counting)
    options = engine.EngineOptions(horizon=H, season_length=M, freq="h", tau=0.9, models=("seasonal_naive", "global_gbm"),
                                   combine=False)
    earlier = {"global_gbm": {"candidates": ["noise", "load"], "used": ["load"], "series": 4, "run_id": "hourly-20260101T0100"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = engine.run_engine(history, replace(options, regressors=earlier), future=future)
    assert calls.count("global_gbm") == 1, calls
    assert kept.info["regressors"]["global_gbm"] == {"candidates": ["noise", "load"], "used": ["load"], "series": 4,
                                                     "reused_from": "hourly-20260101T0100"}
    p = engine.prepare(history, replace(options, regressors=earlier), future=future)
    assert p.regressors == {"global_gbm": ["load"]} and "noise" not in p.inputs_for("global_gbm", p.ids).columns

    for stale in ({"global_gbm": {**earlier["global_gbm"], "candidates": ["load"]}},  # the lake's columns changed
                  {"global_gbm": {**earlier["global_gbm"], "reason": "with telemetry: CV failed"}},
                  {"prophet": earlier["global_gbm"]}):  # a model this run does not have
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = engine.run_engine(history, replace(options, regressors=stale), future=future)
        assert calls.count("global_gbm") == 2, (stale, calls)
        assert "reused_from" not in fresh.info["regressors"]["global_gbm"]


def test_the_hourly_run_takes_the_latest_decision_of_its_day(tmp_path: Path) -> None:
    """`earlier_regressor_decisions` reads the latest earlier hourly run of the same UTC day (a kept
    decision names the run that made it); a run of the day before, an unreadable manifest or one
    without a decision is none."""
    from pipeline.common.config import Settings

    settings = Settings(source_root=str(tmp_path / "src"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))

    def manifest(end: str, regs: dict | str) -> None:
        run_id = engine.forecast_run_id("hourly", DataInterval.ending_at(end))
        path = storage.join(lake.forecast_dir(settings.lake_root, run_id), "manifest.json")
        if isinstance(regs, str):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(regs)
        else:
            lake.write_json_atomic(path, {"engine": {"regressors": regs}})

    decided = {"global_gbm": {"candidates": ["a"], "used": ["a"]}}
    manifest("2026-01-28T00:00", decided)  # the run of 27 January's last hour
    assert engine.earlier_regressor_decisions(settings, DataInterval.ending_at("2026-01-28T05:00")) == {}
    manifest("2026-01-28T02:00", decided)
    manifest("2026-01-28T03:00", {"global_gbm": {**decided["global_gbm"], "reused_from": engine.forecast_run_id(
        "hourly", DataInterval.ending_at("2026-01-28T02:00"))}})
    manifest("2026-01-28T04:00", "{not json")
    got = engine.earlier_regressor_decisions(settings, DataInterval.ending_at("2026-01-28T05:00"))
    assert got == {"global_gbm": {"candidates": ["a"], "used": ["a"], "reused_from": "hourly-" + DataInterval.ending_at(
        "2026-01-28T02:00").token, "run_id": "hourly-" + DataInterval.ending_at("2026-01-28T02:00").token}}
    assert engine.earlier_regressor_decisions(settings, DataInterval.ending_at("2026-01-28T01:00")) == {}  # the day's first run
    assert engine.earlier_regressor_decisions(settings, DataInterval.ending_at("2026-01-29T00:00"))["global_gbm"]["run_id"] \
        == "hourly-" + DataInterval.ending_at("2026-01-28T02:00").token
