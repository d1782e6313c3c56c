"""The model registry: fitted states roundtrip, atomic CURRENT, scoring without refit, fallback with alert, CLI."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.forecast import engine, model_state, registry, scoring, training
from pipeline.forecast.base import future_index

M, H = 24, 12
END = datetime(2026, 1, 21, tzinfo=UTC)


def _series(n: int = 20 * M, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for k, uid in enumerate(["region:a:vcpu", "region:b:vcpu", "region:c:vcpu"]):
        t = np.arange(n)
        y = 20 + 5 * k + 6 * np.sin(2 * np.pi * t / M + k) + rng.normal(0, 1, n)
        ds = pd.date_range(end=END.replace(tzinfo=None) - pd.Timedelta(hours=1), periods=n, freq="h")
        frames.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": y}))
    return pd.concat(frames, ignore_index=True)


def _options(tau: float = 0.9) -> engine.EngineOptions:
    return engine.EngineOptions(horizon=H, season_length=M, freq="h", tau=tau, models=("seasonal_naive", "auto_ets", "arima"))


def _write_version(root: str, history: pd.DataFrame, model: str = "auto_ets", data_end: datetime = END, tau: float = 0.9) -> str:
    """A version with `model` fitted on every series (what train_shard stores), promoted."""
    p = engine.prepare(history, _options(tau))
    version = registry.new_version_id()
    entries = {}
    for uid in p.ids:
        hist = p.history[p.history["unique_id"] == uid]
        entries[uid] = {"model": model, "state": model_state.fit_state(model, p.inputs_for(model, [uid]), M, "h"),
                        "cv_pinball": {model: 0.5, "seasonal_naive": 0.7}, "cv_rows": 24, "error_var": 1.0,
                        "bands": {"probs": training.band_probs(),
                                  "offsets": training.band_offsets(np.linspace(-2, 2, 48), np.arange(48) % H, H, training.band_probs())},
                        "fingerprint": registry.fingerprint(hist["ds"].to_numpy(), hist["y"].to_numpy(float), M)}
    part = registry.write_part(root, version, "shard-00000", entries)
    meta = {"kind": "hourly", "horizon": H, "season_length": M, "freq": "h", "tau": tau, "data_end": data_end.isoformat(),
            "exog": [], "state_format": model_state.STATE_FORMAT, "libraries": model_state.library_versions(), "code_version": "test",
            "chosen": {model: len(entries)}}
    registry.finalize(root, version, meta, [part], [], sorted(entries))
    registry.promote(root, version)
    return version


@pytest.mark.parametrize("name", ["auto_ets", "arima", "mstl", "seasonal_mean", "prophet"])
def test_a_stored_state_scores_like_the_fitted_model_at_the_training_end(name: str) -> None:
    """JSON roundtrip, then forward on the training series itself = the fitted model's own forecast."""
    if name == "prophet":
        pytest.importorskip("prophet")
    frame = _series().query("unique_id == 'region:a:vcpu'")
    state = json.loads(json.dumps(model_state.fit_state(name, frame, M, "h")))
    horizon = future_index(frame, H, "h")
    scored = model_state.score_state(name, state, frame, H, M, horizon)
    from pipeline.forecast.models import MODELS

    params = {"uncertainty_samples": 0} if name == "prophet" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = MODELS[name](M, "h", **params).fit(frame).predict(H)
    np.testing.assert_allclose(scored, fitted["mean"].to_numpy(), rtol=1e-6, atol=1e-6)
    # more observations move the forecast without refitting (parameters fixed, new origin)
    longer = pd.concat([frame, frame.tail(M).assign(ds=frame["ds"].iloc[-1] + pd.to_timedelta(np.arange(1, M + 1), unit="h"))])
    moved = model_state.score_state(name, state, longer, H, M, future_index(longer, H, "h"))
    assert not np.allclose(moved, scored)


def test_registry_roundtrip_and_a_half_written_version_is_never_promoted(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    history = _series()
    v1 = _write_version(root, history)
    assert registry.current(root)["version"] == v1
    loaded = registry.load(root)
    assert loaded.version == v1 and set(loaded.entries) == set(history["unique_id"])

    # a training that crashed after its part: no manifest -> cannot be promoted, CURRENT untouched
    v2 = registry.new_version_id()
    registry.write_part(root, v2, "shard-00000", {"region:a:vcpu": loaded.entries["region:a:vcpu"]})
    with pytest.raises(registry.RegistryError, match="no manifest"):
        registry.promote(root, v2)
    # a manifest expecting a series no part holds -> incomplete
    part = registry.write_part(root, v2, "shard-00000", {"region:a:vcpu": loaded.entries["region:a:vcpu"]})
    with pytest.raises(registry.RegistryError, match="incomplete"):
        registry.finalize(root, v2, {"data_end": END.isoformat()}, [part], [], ["region:a:vcpu", "region:b:vcpu"])
    # a part replaced after the manifest -> checksum mismatch
    storage.write_bytes_atomic(storage.join(registry.version_dir(root, v1), part["file"]), b"garbage")
    with pytest.raises(registry.RegistryError, match="checksum"):
        registry.promote(root, v1)
    assert registry.current(root)["version"] == v1
    statuses = {r["version"]: r["status"] for r in registry.list_versions(root)}
    assert statuses[v2] == "unfinished"


def _prepared(history: pd.DataFrame, tau: float = 0.9) -> engine.Prepared:
    return engine.prepare(history, _options(tau))


def test_scoring_uses_the_current_version_without_refit(tmp_path: Path) -> None:
    settings = Settings(lake_root=str(tmp_path / "lake"))
    history = _series()
    train = history.groupby("unique_id").head(19 * M)  # trained one day earlier
    version = _write_version(settings.lake_root, train, data_end=END - pd.Timedelta(days=1))
    reg = scoring.score_registry(DataInterval.ending_at(END), settings, _prepared(history))
    assert reg.info["status"] == "ok" and not reg.info["fallback"]
    assert reg.covered == sorted(history["unique_id"].unique()) and reg.version == version
    entry = registry.load(settings.lake_root).entries["region:a:vcpu"]
    series = history[history["unique_id"] == "region:a:vcpu"]
    expected = model_state.score_state("auto_ets", entry["state"], series, H, M)
    got = reg.forecasts[reg.forecasts["unique_id"] == "region:a:vcpu"]
    np.testing.assert_allclose(got["mean"].to_numpy(), np.clip(expected, 0, None), rtol=1e-9)
    assert got["ds"].min() == pd.Timestamp(END.replace(tzinfo=None))
    assert (got["q99"] >= got["q50"]).all() and (got["hi_95"] >= got["hi_80"]).all()


@pytest.mark.parametrize("case", ["missing", "stale", "incompatible", "restated"])
def test_fallback_when_the_registry_cannot_score(tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.ops.registry_alert import alert_on_fallback

    monkeypatch.delenv("PEERSCALE_REGISTRY", raising=False)
    monkeypatch.setenv("PEERSCALE_REGISTRY_MAX_AGE_HOURS", "30")
    settings = Settings(lake_root=str(tmp_path / "lake"))
    history = _series()
    if case != "missing":
        data_end = END - pd.Timedelta(days=3) if case == "stale" else END
        _write_version(settings.lake_root, history, data_end=data_end, tau=0.8 if case == "incompatible" else 0.9)
    if case == "restated":
        history.loc[history.index[-1], "y"] += 50.0  # region:c:vcpu's last trained hour changed since
    reg = scoring.score_registry(DataInterval.ending_at(END), settings, _prepared(history))
    assert reg.info["fallback"]
    if case == "restated":
        assert reg.info["restated_series"] == ["region:c:vcpu"] and "region:c:vcpu" not in reg.covered and len(reg.covered) == 2
    else:
        assert reg.info["status"] == case and not reg.covered
    # the stage records the alert from the forecast manifest
    interval = DataInterval.ending_at(END)
    run_dir = lake.forecast_dir(settings.lake_root, "hourly-test")
    lake.write_json_atomic(storage.join(run_dir, "manifest.json"), {"engine": {"registry": reg.info}})
    out = alert_on_fallback(settings, interval, {"run_id": "hourly-test"})
    assert out is not None and out["alert"]["rule"] == "model_registry"
    assert json.loads(Path(out["path"]).read_text())["alerts"][0]["rule"] == "model_registry"


def test_models_cli_list_show_promote_diff(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    history = _series()
    v1 = _write_version(root, history, model="auto_ets")
    v2 = _write_version(root, history, model="seasonal_mean")
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["models", "list", "--json", "--lake", root]).stdout)
    assert [r["version"] for r in listed["versions"]] == sorted([v1, v2], reverse=True)
    assert [r["current"] for r in listed["versions"]] == [True, False] or [r["current"] for r in listed["versions"]] == [False, True]
    shown = json.loads(runner.invoke(app, ["models", "show", "region:b:vcpu", "--json", "--lake", root]).stdout)
    assert shown["model"] == "seasonal_mean" and shown["version"] == v2 and "state" not in shown
    result = runner.invoke(app, ["models", "promote", v1, "--lake", root])
    assert result.exit_code == 0 and registry.current(root)["version"] == v1
    d = json.loads(runner.invoke(app, ["models", "diff", v1, v2, "--json", "--lake", root]).stdout)
    assert set(d["changed"]) == set(history["unique_id"]) and d["changed"]["region:a:vcpu"] == {
        "from": "auto_ets", "to": "seasonal_mean", "cv_pinball_from": 0.5, "cv_pinball_to": 0.5}
    bad = runner.invoke(app, ["models", "promote", "nope", "--lake", root])
    assert bad.exit_code != 0 and registry.current(root)["version"] == v1


def test_hourly_forecast_scores_with_the_trained_registry_and_falls_back_without(seeded_copy: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`peerscale train` then the hourly forecast stage: covered series carry the registry version;
    before any training the same stage forecasts everything with the engine and records the alert."""
    from dataclasses import replace

    from pipeline.run import stage_features, stage_forecast, stage_train
    from tests.conftest import settings_for

    monkeypatch.delenv("PEERSCALE_REGISTRY", raising=False)
    monkeypatch.delenv("PEERSCALE_REGISTRY_MAX_AGE_HOURS", raising=False)
    settings = settings_for(seeded_copy)
    hour = DataInterval.ending_at("2026-01-28T06:00")
    stage_features(hour, settings)
    before = stage_forecast(hour, settings)
    manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, before["run_id"]), "manifest.json"))
    assert manifest["engine"]["registry"]["status"] == "missing"
    assert all(s["registry_version"] is None for s in manifest["selection"].values())
    assert list((seeded_copy / "lake" / "alerts").glob(f"{hour.token}.registry.json"))

    trained = stage_train("2026-01-28T00:00", replace(settings, history_days=14), ("seasonal_naive", "seasonal_mean"))
    assert trained["promoted"] and sum(trained["chosen"].values()) == trained["series"] > 0
    after = stage_forecast(hour, settings)
    manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, after["run_id"]), "manifest.json"))
    block = manifest["engine"]["registry"]
    assert block["status"] == "ok" and block["version"] == trained["version"] and block["covered"] == trained["series"]
    versions = {u: s["registry_version"] for u, s in manifest["selection"].items()}
    assert sum(v == trained["version"] for v in versions.values()) == trained["series"]
    assert after["series"] == before["series"], "every series is still forecast (the rest by the engine)"

    # the hourly DAG's sharded forecast scores the registry's series first and shards only the rest:
    # the same rows as the single-process stage, every series
    from pipeline.forecast.engine import read_forecast
    from pipeline.forecast.shards import run_sharded, work_dir

    single = read_forecast(settings, after["run_id"])
    run_sharded(hour, settings, series_per_shard=40)
    sharded = read_forecast(settings, after["run_id"])
    manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, after["run_id"]), "manifest.json"))
    assert manifest["engine"]["registry"]["version"] == trained["version"]
    covered = sorted(u for u, v in versions.items() if v)
    split = lake.read_json(storage.join(work_dir(settings, after["run_id"]), "shards.json"))
    sharded_ids = [u for ids in split["shards"] for u in ids]
    assert split["registry_covered"] == len(covered) and not set(sharded_ids) & set(covered), \
        "the engine's shards hold only the series the registry did not score"
    assert sorted([*sharded_ids, *covered]) == sorted(versions)
    if len(covered) == len(versions):  # (the samples: every series) one empty shard, so the mapped tasks still run
        assert split["shards"] == [[]]
    pick = ["series_id", "ds", "model", "mean", "q90", "hi_95"]
    pd.testing.assert_frame_equal(single[pick], sharded[pick])


def test_many_prophet_states_are_scored_on_a_process_pool_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prophet states without compact parameters (stored before them) cost ~25-50 ms each to score:
    from PARALLEL_SCORING_MIN on they go to a pool of processes (states with them, ~1 ms, stay in
    this process); every series gets exactly what scoring it in this process gives, failures included."""
    history = _series(n=10 * M)
    jobs = []
    for i, (uid, frame) in enumerate(history.groupby("unique_id")):
        state = model_state.fit_state("prophet", frame, M, "h")
        assert state.get("params")
        if i % 2:
            del state["params"]  # as a registry version written before them holds it
        fut = future_index(frame, H, "h")
        jobs.append((uid, "prophet", state, frame, fut, H, M))
        jobs.append((f"{uid}:ets", "auto_ets", model_state.fit_state("auto_ets", frame, M, "h"), frame, fut, H, M))
    jobs.append(("broken", "prophet", {"json": "{}"}, history.iloc[:M], jobs[0][4], H, M))
    here = {uid: (mean, why) for (uid, _), mean, why in scoring._score_states(jobs)}
    assert [j[0] for j in jobs if scoring._slow(j)] == [j[0] for j in jobs if j[1] == "prophet" and "params" not in j[2]]
    monkeypatch.setattr(scoring, "PARALLEL_SCORING_MIN", 2)
    pooled = {uid: (mean, why) for (uid, _), mean, why in scoring._run_jobs(jobs, 2)}
    assert set(pooled) == set(here) == {j[0] for j in jobs}
    assert pooled["broken"][0] is None and pooled["broken"][1] == here["broken"][1]
    for uid, (mean, _) in here.items():
        if mean is not None:
            np.testing.assert_array_equal(pooled[uid][0], mean)
