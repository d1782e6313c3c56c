"""The registry keeps the engine's per-series band choice: training stores what the engine would
choose for the stored model (method, guardrail, one-window rule), hourly scoring applies it.

Real training (split, shards, finalize on a tmp lake) and real scoring; the engine's own forecast
of the same history is the reference.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.forecast import bands, engine, registry, scoring, training

M = H = 24
END = datetime(2026, 1, 21, tzinfo=UTC)
ZOO = ("seasonal_mean",)  # one model: training and the engine choose the same point for every series
COLUMNS = ["q50", "q80", "q90", "q95", "q99", "lo_80", "hi_80", "lo_95", "hi_95"]


def _history(seed: int = 0, n: int = 14 * M) -> pd.DataFrame:
    """A random walk around a daily cycle (seasonal mean lags it: seasonal naive wins), a calm and a
    skewed cycle, and a series holding one CV window only."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    cycle = np.sin(2 * np.pi * t / M)
    ys = {"region:walk:vcpu": 200 + np.cumsum(rng.normal(0, 3, n)) + 10 * cycle,
          "region:calm:vcpu": 50 + 8 * cycle + rng.normal(0, 1, n),
          "region:skew:vcpu": 50 + 8 * cycle + rng.exponential(3, n),
          "region:short:vcpu": (50 + 8 * cycle + rng.normal(0, 1, n))[-(2 * M + H + 8):]}
    frames = []
    for uid, y in ys.items():
        ds = pd.date_range(end=END.replace(tzinfo=None) - pd.Timedelta(hours=1), periods=len(y), freq="h")
        frames.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)


def _options(tau: float, models: tuple[str, ...] = ZOO, **kw: object) -> engine.EngineOptions:
    return engine.EngineOptions(horizon=H, season_length=M, freq="h", tau=tau, models=models, n_windows=training.TRAIN_WINDOWS, **kw)


def _train(settings: Settings, history: pd.DataFrame, tau: float, end: datetime = END, models: tuple[str, ...] = ZOO) -> registry.Version:
    """The daily training's steps (split from a preparation in hand, shards, finalize + promote)."""
    p = engine.prepare(history, _options(tau, models, refit_global=True, combine=False))
    shards = training.split_prepared(p, settings, {"data_start": str(history["ds"].min()), "data_end": end.isoformat(),
                                                   "hierarchy": {}})
    version = shards[0]["version"]
    training.train_global(version, settings)
    training.run_shards(version, shards, settings, workers=1)
    training.train_finalize(version, settings)
    return registry.load(settings.lake_root)


def _scored(settings: Settings, history: pd.DataFrame, tau: float) -> scoring.RegistryScore:
    reg = scoring.score_registry(DataInterval.ending_at(END), settings, engine.prepare(history, _options(tau)))
    assert reg.info["status"] == "ok", reg.info
    return reg


def _rows(frame: pd.DataFrame, uid: str, key: str = "unique_id") -> pd.DataFrame:
    return frame[frame[key] == uid].sort_values("ds").reset_index(drop=True)


@pytest.mark.parametrize(("tau", "expected"), [(0.9, {"region:walk:vcpu": bands.SNAIVE, "region:short:vcpu": bands.SNAIVE}),
                                               (0.5, {"region:calm:vcpu": bands.CONFORMAL, "region:short:vcpu": bands.SNAIVE})])
def test_registry_scoring_gives_the_engines_band_for_every_series(tmp_path: Path, tau: float, expected: dict[str, str]) -> None:
    """Trained and scored on the same history, every series' quantiles are the engine's own: the
    guardrail (the walk: every band around seasonal mean's point loses to seasonal naive's at
    τ = 0.9), the one-window rule (short), own-error conformal (calm at τ = 0.5), the blends."""
    settings = Settings(lake_root=str(tmp_path / "lake"))
    history = _history()
    version = _train(settings, history, tau)
    methods = {u: e["band"]["method"] for u, e in version.entries.items()}
    assert {u: methods[u] for u in expected} == expected
    assert version.manifest["bands_chosen"] == {k: list(methods.values()).count(k) for k in sorted(set(methods.values()))}
    assert all(("conformal" in e["band"]) == (e["band"]["method"] == bands.CONFORMAL) for e in version.entries.values())
    reg = _scored(settings, history, tau)
    assert reg.covered == sorted(methods)
    assert {u: s["quantile_method"] for u, s in reg.selection.items()} == methods
    ours = engine.run_engine(history, _options(tau))
    for uid in methods:
        assert ours.selection[uid]["quantile_method"] == methods[uid]
        got, want = _rows(reg.forecasts, uid), _rows(ours.forecasts, uid, "series_id")
        np.testing.assert_allclose(got[["mean", *COLUMNS]].to_numpy(), want[["mean", *COLUMNS]].to_numpy(), rtol=1e-9, atol=1e-9)


def test_the_guardrail_band_follows_the_history_since_training(tmp_path: Path) -> None:
    """Trained 6 h before the run: the walk's seasonal-naive band is rebuilt from the history at
    scoring time (its last season and seasonal differences), not frozen at training."""
    settings = Settings(lake_root=str(tmp_path / "lake"))
    history = _history()
    earlier = history[history["ds"] < pd.Timestamp(END.replace(tzinfo=None)) - pd.Timedelta(hours=6)]
    version = _train(settings, earlier, 0.9, END - pd.Timedelta(hours=6))
    uid = "region:walk:vcpu"
    assert version.entries[uid]["band"]["method"] == bands.SNAIVE
    got = _rows(_scored(settings, history, 0.9).forecasts, uid)
    y = history[history["unique_id"] == uid]["y"].to_numpy(float)
    offs = bands.diff_offsets(y, M, H, [0.9])
    np.testing.assert_allclose(got["q90"].to_numpy(), bands.snaive_point(y, M, H) + offs[0.9], rtol=1e-12)
    assert not np.allclose(got["q90"].to_numpy(), got["mean"].to_numpy() + offs[0.9])  # seasonal naive's point, not the model's


def test_a_version_without_the_band_choice_scores_with_its_cv_offsets(tmp_path: Path) -> None:
    """Versions trained before the band was stored still score (the old CV-error offsets), say so
    per series and in the registry block, and give other bands than the engine's guardrail."""
    settings = Settings(lake_root=str(tmp_path / "lake"))
    history = _history()
    new = _train(settings, history, 0.9)
    old_entries = {u: {k: v for k, v in e.items() if k != "band"} for u, e in new.entries.items()}
    version = registry.new_version_id()
    part = registry.write_part(settings.lake_root, version, "shard-00000", old_entries)
    meta = {k: v for k, v in new.manifest.items() if k not in ("schema", "version", "created_at", "expected_series", "parts",
                                                                   "globals", "index")}
    registry.finalize(settings.lake_root, version, meta, [part], [], sorted(old_entries))
    registry.promote(settings.lake_root, version)
    reg = _scored(settings, history, 0.9)
    assert reg.version == version and reg.info["quantile_methods"] == {scoring.CV_OFFSETS: len(old_entries)}
    assert {s["quantile_method"] for s in reg.selection.values()} == {scoring.CV_OFFSETS}
    uid = "region:walk:vcpu"
    got = _rows(reg.forecasts, uid)
    offsets = old_entries[uid]["bands"]
    q90 = np.asarray(offsets["offsets"], float)[[round(p, 6) for p in offsets["probs"]].index(0.9)]
    np.testing.assert_allclose(got["q90"].to_numpy(), got["mean"].to_numpy() + q90[np.arange(H) * 4 // H], rtol=1e-12)
    y = history[history["unique_id"] == uid]["y"].to_numpy(float)
    guardrail = bands.snaive_point(y, M, H) + bands.diff_offsets(y, M, H, [0.9])[0.9]
    assert not np.allclose(got["q90"].to_numpy(), guardrail)
