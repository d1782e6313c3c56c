"""The optional LSTM (`pip install peerscale[deep]`): skipped cleanly without PyTorch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from pipeline.forecast.engine import EngineOptions, run_engine  # noqa: E402
from pipeline.forecast.models import MODELS, OUTPUT_COLUMNS  # noqa: E402


def _panel() -> pd.DataFrame:
    k = np.arange(24 * 8)
    return pd.concat([pd.DataFrame({"unique_id": f"s{j}", "ds": pd.date_range("2026-01-01", periods=len(k), freq="h"),
                                    "y": 30 + 3 * j + 10 * np.sin(2 * np.pi * k / 24) + 0.05 * k}) for j in range(4)], ignore_index=True)


def test_lstm_fits_small_data_deterministically() -> None:
    params = {"epochs": 3, "hidden": 8, "max_windows": 400}
    out = MODELS["lstm"](24, "h", **params).fit(_panel()).predict(24)
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == 4 * 24
    assert np.isfinite(out[OUTPUT_COLUMNS[2:]].to_numpy()).all()
    again = MODELS["lstm"](24, "h", **params).fit(_panel()).predict(24)
    pd.testing.assert_frame_equal(out, again)
    # it starts from seasonal naive: the forecast keeps the daily shape
    first = out[out["unique_id"] == "s0"]["mean"].to_numpy()
    assert first.max() - first.min() > 10


def test_lstm_in_the_engine() -> None:
    options = EngineOptions(horizon=24, season_length=24, freq="h", tau=0.9, models=("seasonal_naive", "lstm"),
                            model_params={"lstm": {"epochs": 2, "hidden": 8, "max_windows": 300}})
    res = run_engine(_panel(), options)
    assert "lstm" in res.info["overall_score"]
    assert len(res.forecasts) == 4 * 24


def test_a_trained_lstm_pickles_without_torch_objects_and_moves_its_origin_without_retraining() -> None:
    """What the registry stores: the network as numpy arrays; refit=False forecasts a longer
    history with the same network (no training: a changed seed would otherwise change it)."""
    import pickle

    panel = _panel()
    params = {"epochs": 2, "hidden": 8, "max_windows": 300}
    model = MODELS["lstm"](24, "h", **params)
    first = model.fit(panel.groupby("unique_id").head(24 * 7)).predict(24)
    model.params.update(refit=False, seed=99)
    blob = pickle.dumps(model)
    assert b"torch" not in blob
    again = pickle.loads(blob)
    np.testing.assert_allclose(again.fit(panel.groupby("unique_id").head(24 * 7)).predict(24)["mean"], first["mean"], rtol=1e-6)
    moved = again.fit(panel).predict(24)
    retrained = MODELS["lstm"](24, "h", **{**params, "seed": 99}).fit(panel).predict(24)
    assert moved["ds"].min() == panel["ds"].max() + pd.Timedelta(hours=1)
    assert not np.allclose(moved["mean"], retrained["mean"])


def test_lstm_cross_validation_trains_once_before_the_first_origin() -> None:
    panel = _panel()
    cv = MODELS["lstm"](24, "h", epochs=2, hidden=8, max_windows=300).cross_validate(panel, 24, 3, 24)
    assert sorted(cv["window"].unique()) == [0, 1, 2] and len(cv) == 4 * 3 * 24
    assert (cv["ds"] > cv["cutoff"]).all()
    last = cv[cv["window"] == 2].groupby("unique_id")["ds"].max()
    assert (last == panel["ds"].max()).all()


def test_daily_training_stores_the_lstm_once_and_hourly_scoring_moves_it_forward(tmp_path: object) -> None:
    """The LSTM in the registry: trained once over every series in train_global (not per shard),
    stored as a version's global model, scored with no retraining (the stored network's forecast)."""
    from pathlib import Path

    from pipeline.common.config import Settings
    from pipeline.common.intervals import DataInterval
    from pipeline.forecast import engine, registry, scoring, training
    from tests.test_registry_bands import END, _history

    settings = Settings(lake_root=str(Path(str(tmp_path)) / "lake"))
    history = _history()
    options = EngineOptions(horizon=24, season_length=24, freq="h", tau=0.9, models=("lstm",), n_windows=training.TRAIN_WINDOWS,
                            refit_global=True, combine=False, model_params={"lstm": {"epochs": 2, "hidden": 8, "max_windows": 400}})
    p = engine.prepare(history, options)
    shards = training.split_prepared(p, settings, {"data_start": str(history["ds"].min()), "data_end": END.isoformat(),
                                                   "hierarchy": {}}, series_per_shard=2)
    version = shards[0]["version"]
    assert training.train_global(version, settings)["global"] == ["lstm"]
    training.run_shards(version, shards, settings, workers=1)
    training.train_finalize(version, settings)
    v = registry.load(settings.lake_root)
    assert list(v.manifest["globals"]) == ["lstm"] and len(shards) > 1
    assert {e["model"] for e in v.entries.values()} == {"lstm"} and all(e["state"] is None for e in v.entries.values())
    reg = scoring.score_registry(DataInterval.ending_at(END), settings, p)
    assert reg.info["status"] == "ok" and reg.covered == sorted(v.entries)
    stored = v.global_model("lstm")
    assert stored.params["refit"] is False
    want = stored.fit(p.inputs_for("lstm", reg.covered)).predict(24)
    got = reg.forecasts.sort_values(["unique_id", "ds"])
    np.testing.assert_allclose(got["mean"].to_numpy(), np.clip(want.sort_values(["unique_id", "ds"])["mean"].to_numpy(), 0, None),
                               rtol=1e-6)
