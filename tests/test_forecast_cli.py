"""`peerscale forecast` on user files: long-format CSV/Parquet in, the forecast contract out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common.schemas import FORECAST

runner = CliRunner()


def _panel(n_series: int = 3, days: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    k = np.arange(24 * days)
    frames = [pd.DataFrame({"unique_id": f"s{j}", "ds": pd.date_range("2026-01-01", periods=len(k), freq="h", tz="UTC"),
                            "y": np.round(20 + 8 * np.sin(2 * np.pi * k / 24) + rng.normal(0, 1, len(k)), 3)}) for j in range(n_series)]
    return pd.concat(frames, ignore_index=True)


def test_forecast_csv_to_parquet(tmp_path: Path) -> None:
    src, out, manifest = tmp_path / "in.csv", tmp_path / "out.parquet", tmp_path / "manifest.json"
    _panel().to_csv(src, index=False)
    result = runner.invoke(app, ["forecast", "--input", str(src), "--horizon", "12", "--freq", "h", "--output", str(out),
                                 "--levels", "80", "95", "90", "--models", "seasonal_naive,seasonal_mean", "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "3 series × 12 steps" in result.output
    fc = pd.read_parquet(out)
    pa.Table.from_pandas(fc[FORECAST.names], schema=FORECAST, preserve_index=False)
    assert {"lo_90", "hi_90"} <= set(fc.columns) and len(fc) == 36
    assert (fc["lo_95"] <= fc["lo_90"] + 1e-9).all() and (fc["lo_90"] <= fc["lo_80"] + 1e-9).all()
    info = json.loads(manifest.read_text())
    assert set(info["selection"]) == {"s0", "s1", "s2"} and info["engine"]["calibration"]["n_errors"] > 0


def test_forecast_parquet_to_csv_daily(tmp_path: Path) -> None:
    src, out = tmp_path / "in.parquet", tmp_path / "out.csv"
    daily = _panel(2, 28).assign(ds=lambda f: f["ds"].dt.floor("D")).groupby(["unique_id", "ds"], as_index=False)["y"].max()
    daily.to_parquet(src)
    result = runner.invoke(app, ["forecast", "-i", str(src), "--horizon", "7", "--freq", "D", "-o", str(out), "--models", "seasonal_naive"])
    assert result.exit_code == 0, result.output
    fc = pd.read_csv(out)
    assert len(fc) == 14 and fc["ds"].str.endswith("Z").all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.drop(columns="y"), "lacks column"),
        (lambda f: f.astype({"y": object}).assign(y=lambda g: g["y"].where(g.index != 5, "twelve")), "must be numeric"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), "duplicate timestamps"),
        (lambda f: f.assign(ds=f["ds"] + pd.to_timedelta((np.arange(len(f)) % 3 == 1) * 13, unit="min")), "irregular frequency"),
    ],
)
def test_bad_input_fails_with_a_clear_message(tmp_path: Path, mutate, message: str) -> None:
    src = tmp_path / "bad.csv"
    mutate(_panel(1, 3)).to_csv(src, index=False)
    result = runner.invoke(app, ["forecast", "--input", str(src), "--horizon", "6", "--output", str(tmp_path / "o.parquet")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "o.parquet").exists()


def test_missing_file_and_unknown_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["forecast", "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output
    src = tmp_path / "in.csv"
    _panel(1, 3).to_csv(src, index=False)
    result = runner.invoke(app, ["forecast", "--input", str(src), "--output", str(tmp_path / "o.csv"), "--models", "magic"])
    assert result.exit_code == 2 and "unknown models" in " ".join(result.output.split())


def test_outputs_respect_the_umask(tmp_path: Path) -> None:
    """The forecast and its manifest are written like any new file (0644 under umask 022), not 0600."""
    import os
    import stat

    src, out, manifest = tmp_path / "in.csv", tmp_path / "out" / "fc.csv", tmp_path / "out" / "manifest.json"
    _panel(1, 3).to_csv(src, index=False)
    previous = os.umask(0o022)
    try:
        result = runner.invoke(app, ["forecast", "-i", str(src), "-o", str(out), "--horizon", "6", "--models", "seasonal_naive",
                                     "--manifest", str(manifest)])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.parent.iterdir()} == {"fc.csv": "0o644", "manifest.json": "0o644"}
