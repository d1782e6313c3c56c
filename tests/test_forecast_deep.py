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
