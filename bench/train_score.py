"""Train daily, score hourly: training time per model, hourly scoring time, and registry-scored
pinball against a full refit of the same zoo on the samples' walk-forward.

    .venv/bin/python bench/train_score.py --lake LAKE [--models seasonal_naive,...] [--origins 3]
    .venv/bin/python bench/train_score.py --lake NEW_DIR --regions 30 --train-only   # a generated fleet

LAKE must hold the samples (2026-01-01 .. 2026-02-05: `peerscale ingest` or bench/backtest_samples.py's
seeding); with --regions N the bench first generates N regions of the same 36 days (the samples'
generator, as bench/pipeline_scale.py) into NEW_DIR and ingests them. Trains one registry version on the
28 days before 2026-02-01T00:00 (shards on --workers processes: the DAG's mapped steps), then at each
origin (every 12 h from the training end) forecasts 48 h three ways: (a) registry scoring (CURRENT,
updated with the hours since training, no refit), (b) a full refit of the same zoo by the engine, (c)
today's hourly path (`auto`). Region series are scored by pinball at each resource's τ against the
actuals (as bench/backtest_samples.py). Figures are printed, never asserted; the last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pinball(settings, pred, actual):
    import numpy as np

    from pipeline.common.schemas import FORECAST_QUANTILES, parse_series_id
    from pipeline.forecast.quantiles import interpolate_quantile, quantile_column

    if pred is None or "series_id" not in pred.columns:
        return {}
    merged = actual.rename(columns={"unique_id": "series_id"}).merge(pred, on=["series_id", "ds"], how="inner")
    out = {}
    for sid, g in merged.groupby("series_id"):
        tau = settings.cost.tau(parse_series_id(sid)["measure"])
        q = interpolate_quantile({p: g[quantile_column(p)].to_numpy(float) for p in FORECAST_QUANTILES}, tau)
        d = g["y"].to_numpy(float) - q
        out[sid] = float(np.mean(np.maximum(tau * d, (tau - 1) * d))) / max(float(np.mean(np.abs(g["y"]))), 1e-9)
    return out


def _train(settings, zoo, end, workers):
    from pipeline.common.intervals import DataInterval
    from pipeline.forecast import training
    from pipeline.run import stage_features

    train_settings = replace(settings, history_days=28)
    interval = DataInterval.ending_at(end)
    stage_features(interval, train_settings)
    t0 = time.perf_counter()
    shards = training.train_split(interval, train_settings, zoo)
    version = shards[0]["version"]
    t_split = time.perf_counter() - t0
    t1 = time.perf_counter()
    training.train_global(version, train_settings)
    t_global = time.perf_counter() - t1
    t2 = time.perf_counter()
    training.run_shards(version, shards, train_settings, workers)
    t_shards = time.perf_counter() - t2
    out = training.train_finalize(version, train_settings, promote=True)
    train_s = time.perf_counter() - t0
    print(f"trained {out['series']} series in {train_s:.0f} s (split {t_split:.0f}, global {t_global:.0f}, shards {t_shards:.0f}); "
          f"chosen {out['chosen']}; version {version}", flush=True)
    from pipeline.forecast import registry

    manifest = registry.read_manifest(train_settings.lake_root, version)
    out["seconds"], out["regressors"] = manifest.get("seconds", {}), manifest.get("regressors", {})
    out["combinations"] = manifest.get("combinations", {})
    out["bands_chosen"] = manifest.get("bands_chosen", {})
    _print_model_seconds(out["seconds"], out["series"])
    for name, d in out["regressors"].items():
        print(f"regressors {name}: {d['decisions']} CV decision(s) over {len(d['candidates'])} candidates; kept {d['used'] or 'none'}")
    return out, train_s


def _print_model_seconds(seconds: dict, series: int) -> None:
    """Where training time went, per model (summed over processes): CV of every series, final fits."""
    print(f"{'model':<28}{'seconds':>10}{'series/s':>10}")
    for name, sec in sorted(seconds.items(), key=lambda kv: -kv[1]):
        rate = f"{series / sec:.2f}" if sec > 0 and ":" not in name else ""
        print(f"{name:<28}{sec:>10.1f}{rate:>10}")


def _generate(root: Path, regions: int) -> Path:
    """N generated regions over the samples' 36 days, ingested into root/lake; returns the source dir."""
    sys.path.insert(0, str(REPO / "bench"))
    from pipeline_scale import generate_fleet

    from pipeline.common.config import Settings
    from pipeline.run import backfill_ingest

    source = root / "source"
    t0 = time.perf_counter()
    generate_fleet(source, regions, 36, seed=7, start=datetime(2026, 1, 1).date())
    settings = Settings(source_root=str(source), lake_root=str(root / "lake"), build_root=str(root / "build"))
    backfill_ingest(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 5, 23, tzinfo=UTC), settings)
    print(f"generated and ingested {regions} regions in {time.perf_counter() - t0:.0f} s", flush=True)
    return source


def _refit_chosen(settings, p, origin):
    """The same per-series choices refitted on the history up to `origin` (what scoring avoids)."""
    from pipeline.forecast import model_state, registry, regressors, scoring

    version = registry.load(settings.lake_root)
    ids = [u for u in p.long_ids if u in version.entries]
    entries = {}
    for uid in ids:
        e = version.entries[uid]
        states = {}
        for name, state in registry.member_states(e).items():  # one model, or a combination's members
            if scoring.is_global(name):
                states[name] = None
                continue
            frame = p.inputs_for(name, [uid])
            if "regressors" in (state or {}):  # the regressors training kept for this model (Prophet)
                frame = regressors.restrict(frame, p.regressor_candidates, state["regressors"])
            states[name] = model_state.fit_state(name, frame, p.season_length, p.freq, p.params.get(name))
        entries[uid] = {**e, "state": states if e.get("members") else states[e["model"]]}
    refit = registry.Version(version.lake_root, version.version, version.manifest, entries)
    trained = {}
    for name in {n for e in entries.values() for n in registry.member_states(e) if scoring.is_global(n)}:
        used = version.manifest.get("regressors", {}).get(name, {}).get("used")
        if used is not None:  # the GBM's columns as training chose them
            p.regressors[name] = sorted(used)
        trained[name] = p.model(name)
        trained[name].fit(p.inputs_for(name, p.long_ids)).predict(p.horizon, future=p.future)
        trained[name].params["refit"] = False
    refit.global_model = lambda name: trained[name]  # type: ignore[method-assign]
    rows, _ = scoring._score_series(refit, p, ids)
    return scoring._finish(rows, p.history) if len(rows) else rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--models", default=None, help="the zoo (default: training.default_zoo())")
    parser.add_argument("--origins", type=int, default=3)
    parser.add_argument("--version", help="score this registry version instead of training one")
    parser.add_argument("--workers", type=int, default=2, help="processes the shards are trained on (the DAG: workers)")
    parser.add_argument("--regions", type=int, help="generate this many regions into --lake first (default: the samples' 6)")
    parser.add_argument("--train-only", action="store_true", help="train and report; skip the scoring comparison")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import pandas as pd

    from pipeline.common.config import Settings
    from pipeline.common.intervals import DataInterval
    from pipeline.forecast import engine, scoring, training
    from pipeline.forecast.cross_validation import features_history
    from pipeline.run import stage_features

    source, lake_root = REPO / "data_samples", args.lake
    if args.regions:
        lake_root = str(Path(args.lake) / "lake")
        source = _generate(Path(args.lake), args.regions) if not Path(lake_root).exists() else Path(args.lake) / "source"
    settings = Settings(source_root=str(source), lake_root=lake_root, build_root="/tmp/peerscale-bench-build")
    zoo = tuple(args.models.split(",")) if args.models else training.default_zoo()
    end = datetime(2026, 2, 1, tzinfo=UTC)
    if args.version:  # score a version trained before (its training figures were printed then)
        from pipeline.forecast import registry

        registry.promote(settings.lake_root, args.version)
        m = registry.read_manifest(settings.lake_root, args.version)
        out, train_s = {"series": len(m["index"]), "chosen": m["chosen"]}, float("nan")
        zoo = tuple(m["models"])
    else:
        out, train_s = _train(settings, zoo, end, args.workers)
    if args.train_only:
        print(json.dumps({"regions": args.regions or 6, "workers": args.workers, "series_trained": out["series"], "models": list(zoo),
                          "train_wall_s": round(train_s, 1), "train_series_per_s": round(out["series"] / train_s, 4),
                          "chosen": out["chosen"], "combinations": out.get("combinations"),
                          "bands_chosen": out.get("bands_chosen"), "model_seconds": out.get("seconds"),
                          "regressors_used": {k: v["used"] for k, v in out.get("regressors", {}).items()}}, sort_keys=True))
        return 0
    origins = [end + timedelta(hours=12 * k) for k in range(args.origins)]
    actual_all = features_history(settings, end - timedelta(days=14), origins[-1] + timedelta(hours=48))
    actual_all["ds"] = pd.to_datetime(actual_all["ds"], utc=True)
    scores: dict[str, list[float]] = {"registry": [], "full_refit": [], "today": []}
    secs: dict[str, list[float]] = {k: [] for k in scores}
    for origin in origins:
        here = DataInterval.ending_at(origin)
        stage_features(here, settings)  # the hourly run's own features (what the registry scores on)
        x = engine.load_inputs(here, settings, "hourly", zoo)
        actual = actual_all[(actual_all["ds"] >= origin) & (actual_all["ds"] < origin + timedelta(hours=48))]
        actual = actual[actual["unique_id"].str.startswith("region:")]
        t = time.perf_counter()
        p = engine.prepare(x.engine_input, x.options, future=x.future, hierarchy=x.hierarchy)
        reg = scoring.score_registry(DataInterval.ending_at(origin), settings, p)
        secs["registry"].append(time.perf_counter() - t)
        pred, _, _ = scoring.combine(pd.DataFrame(), {}, {}, reg, x.hierarchy)
        scores["registry"] += list(_pinball(settings, pred, actual).values())
        t = time.perf_counter()
        refit_rows = _refit_chosen(settings, p, origin)
        secs["full_refit"].append(time.perf_counter() - t)
        full = scoring.RegistryScore(forecasts=refit_rows, covered=sorted(set(refit_rows["unique_id"])), info={})
        refit_pred, _, _ = scoring.combine(pd.DataFrame(), {}, {}, full, x.hierarchy)
        scores["full_refit"] += list(_pinball(settings, refit_pred, actual).values())
        xa = engine.load_inputs(here, settings, "hourly", ("auto",))
        t = time.perf_counter()
        today = engine.run_engine(xa.engine_input, xa.options, future=xa.future, hierarchy=xa.hierarchy)
        secs["today"].append(time.perf_counter() - t)
        scores["today"] += list(_pinball(settings, today.forecasts, actual).values())
        print(f"origin {origin:%Y-%m-%dT%H:%MZ}: registry {reg.info.get('status')} covered {len(reg.covered)} "
              f"(restated {len(reg.info.get('restated_series', []))}); "
              + ", ".join(f"{k} {sum(v) / max(len(v), 1):.4f} ({secs[k][-1]:.1f} s)" for k, v in scores.items()), flush=True)
    mean = {k: sum(v) / max(len(v), 1) for k, v in scores.items()}
    result = {
        "regions": args.regions or 6, "workers": args.workers, "series_trained": out["series"], "models": list(zoo),
        "train_wall_s": None if args.version else round(train_s, 1),
        "train_series_per_s": None if args.version else round(out["series"] / train_s, 4), "chosen": out["chosen"],
        "combinations": out.get("combinations"), "score_registry_s": round(sum(secs["registry"]) / len(origins), 2),
        "forecast_today_s": round(sum(secs["today"]) / len(origins), 2),
        "full_refit_s": round(sum(secs["full_refit"]) / len(origins), 2),
        "scaled_pinball": {k: round(v, 5) for k, v in mean.items()},
        "registry_vs_full_refit": round(mean["registry"] / mean["full_refit"], 4),
        "registry_vs_today": round(mean["registry"] / mean["today"], 4), "origins": len(origins),
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
