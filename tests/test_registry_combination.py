"""Training scores each series' combination (the mean of its two best models) against its best
single model, stores the winner's member states, and hourly scoring averages the members.

Real training (split, shards, finalize on a tmp lake) and real scoring from the stored states.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.forecast import engine, model_state, registry, scoring, training
from tests import test_registry_bands as bands_tests
from tests.test_registry_bands import END, M, _history, _options  # the bands tests' series and run options

ZOO = ("seasonal_naive", "seasonal_mean", "auto_ets")


def _train(settings: Settings, history: pd.DataFrame) -> registry.Version:
    return bands_tests._train(settings, history, 0.9, models=ZOO)


def _cv(uid: str, means: list[float], windows: list[int]) -> pd.DataFrame:
    n = len(means)
    return pd.DataFrame({"unique_id": uid, "ds": pd.date_range("2026-01-01", periods=n, freq="h"), "window": windows,
                         "cutoff": pd.Timestamp("2025-12-31 23:00"), "step": np.arange(n), "y": 10.0, "mean": means})


def test_each_series_combines_its_own_two_best_models_on_the_windows_both_forecast() -> None:
    cv = {"a": pd.concat([_cv("s1", [9, 9, 9], [0, 0, 1]), _cv("s2", [5, 5, 5], [0, 0, 1])]),
          "b": pd.concat([_cv("s1", [11, 11, 11], [0, 0, 1]), _cv("s2", [12, 12, 12], [0, 0, 1])]),
          "c": pd.concat([_cv("s1", [20, 20], [0, 0]), _cv("s2", [10.5, 10.5, 10.5], [0, 0, 1])])}
    pins = {n: pd.Series({"s1": rank, "s2": rank}) for n, rank in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    pins["c"]["s2"] = 0.5  # s2's best two: c then a
    members, combined = training.combination_cv(cv, pins, ["s1", "s2", "s3"])
    assert members == {"s1": ["a", "b"], "s2": ["c", "a"]}  # s3 has no CV rows: no combination
    s1 = combined[combined["unique_id"] == "s1"].sort_values("ds")
    np.testing.assert_allclose(s1["mean"], [10.0, 10.0, 10.0])
    s2 = combined[combined["unique_id"] == "s2"]
    np.testing.assert_allclose(s2["mean"], [7.75, 7.75, 7.75])
    assert set(combined.columns) >= {"unique_id", "ds", "window", "cutoff", "step", "y", "mean"}
    # c forecast only window 0 of s1: a (c, x) pair would be scored on window 0 alone
    pins["c"]["s1"] = 0.1
    members, combined = training.combination_cv(cv, pins, ["s1"])
    assert members == {"s1": ["c", "a"]} and len(combined) == 2


def test_no_combination_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    cv = {"a": _cv("s1", [9, 9], [0, 0]), "b": _cv("s1", [11, 11], [0, 0])}
    pins = {n: engine.conformal_pinball(f, 0.9) for n, f in cv.items()}
    monkeypatch.setenv(training.COMBINATION_ENV, "off")
    assert training.combination_cv(cv, pins, ["s1"]) == ({}, None)
    monkeypatch.setenv(training.COMBINATION_ENV, "sometimes")
    with pytest.raises(ValueError, match="use on or off"):
        training.combination_cv(cv, pins, ["s1"])


def test_training_stores_a_combination_only_where_it_beats_every_single_model_and_scoring_averages_its_members(
        tmp_path: Path) -> None:
    settings = Settings(lake_root=str(tmp_path / "lake"))
    history = _history()
    version = _train(settings, history)
    combos = {u: e for u, e in version.entries.items() if e["model"] == training.ENSEMBLE}
    assert combos, "on these series some combination beats its members (the walk: seasonal mean + AutoETS)"
    for entry in version.entries.values():
        pins = entry["cv_pinball"]
        singles = {k: v for k, v in pins.items() if k != training.ENSEMBLE}
        if entry["model"] == training.ENSEMBLE:
            assert pins[training.ENSEMBLE] < min(singles.values())
            best_two = sorted(singles, key=lambda k: (singles[k], ZOO.index(k)))[:2]
            assert entry["members"] == best_two and set(entry["state"]) == set(best_two)
            assert entry["band"]["method"] and entry["cv_rows"] > 0
        else:
            assert "members" not in entry and pins[entry["model"]] == min(pins.values())
    assert version.manifest["chosen"][training.ENSEMBLE] == len(combos)
    assert sum(version.manifest["combinations"].values()) == len(combos)

    p = engine.prepare(history, _options(0.9))
    reg = scoring.score_registry(DataInterval.ending_at(END), settings, p)
    assert reg.info["status"] == "ok" and reg.covered == sorted(version.entries)
    for uid, entry in combos.items():
        want = np.mean([model_state.score_state(n, s, p.inputs_for(n, [uid]), M, M) for n, s in entry["state"].items()], axis=0)
        got = reg.forecasts[reg.forecasts["unique_id"] == uid].sort_values("ds")
        assert (got["model"] == training.ENSEMBLE).all() and reg.selection[uid]["members"] == entry["members"]
        np.testing.assert_allclose(got["mean"].to_numpy(), np.clip(want, 0, None), rtol=1e-9)


def test_a_combination_with_an_unreadable_member_falls_back_for_that_series_only(tmp_path: Path) -> None:
    settings = Settings(lake_root=str(tmp_path / "lake"))
    history = _history()
    version = _train(settings, history)
    uid = next(u for u, e in version.entries.items() if "auto_ets" in e.get("members", []))
    broken = {**version.entries[uid], "state": {**version.entries[uid]["state"], "auto_ets": {"bogus": 1}}}
    entries = {**version.entries, uid: broken}
    part = registry.write_part(settings.lake_root, version.version, "shard-00000", entries)
    manifest = {k: v for k, v in version.manifest.items() if k not in ("parts", "globals", "index", "expected_series", "schema",
                                                                       "version", "created_at")}
    registry.finalize(settings.lake_root, version.version, manifest, [part], [], sorted(entries))
    reg = scoring.score_registry(DataInterval.ending_at(END), settings, engine.prepare(history, _options(0.9)))
    assert reg.info["status"] == "partial" and list(reg.info["failed_series"]) == [uid]
    assert uid not in reg.covered and len(reg.covered) == len(entries) - 1


def test_each_member_gets_the_calendar_uplift_unless_it_forecasts_events_itself() -> None:
    """Prophet forecasts the calendar itself (holidays); AutoETS forecasts the de-uplifted series:
    a combination of both multiplies only AutoETS's forecast by the uplift, then averages."""
    entries = {"s1": {"model": training.ENSEMBLE, "members": ["prophet", "auto_ets"], "state": {"prophet": {}, "auto_ets": {}}},
               "s2": {"model": "auto_ets", "state": {}},
               "s3": {"model": training.ENSEMBLE, "members": ["auto_ets", "seasonal_mean"], "state": {"auto_ets": {}}}}
    version = registry.Version("unused", "v", {}, entries)
    factor = {u: np.array([1.0, 2.0]) for u in entries}
    member_means = {("s1", "prophet"): np.array([10.0, 20.0]), ("s1", "auto_ets"): np.array([10.0, 10.0]),
                    ("s2", "auto_ets"): np.array([5.0, 5.0, 99.0]), ("s3", "auto_ets"): np.array([1.0, 1.0])}
    failed: dict[str, str] = {}
    means = scoring._entry_means(version, list(entries), member_means, factor, failed)
    np.testing.assert_allclose(means["s1"], [10.0, 20.0])  # (10 + 10·1) / 2, (20 + 10·2) / 2
    np.testing.assert_allclose(means["s2"], [5.0, 10.0])  # trimmed to the horizon's rows
    assert "s3" not in means and "seasonal_mean" in failed["s3"]  # a member without a forecast: the series is not scored
