"""M4 Hourly benchmark: the default engine and every model, side by side with Prophet.

    .venv/bin/python bench/forecast_m4.py [--data DIR] [--quick]

Reads ../shared/data/m4 relative to the repo root (or $PEERSCALE_M4_DATA / --data) and skips
cleanly when it is absent. It first recomputes Naive2 and sNaive from the organisers' benchmark
forecasts (must give 18.383 / 2.395 and 13.912 / 1.193), then forecasts all 414 series at h = 48
with the default engine and with each model. A model whose estimated time on all series exceeds
5 minutes (timed on a pilot of 8 series) runs on a fixed random subset of 60 series; its OWA is
then relative to Naive2 on that subset. Prophet runs in the same process for the speed ratio.
The last line printed is one JSON object with the headline figures.

Timestamps are synthetic (M4 gives none), so the global model's calendar features are off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H, M = 48, 24
OFFICIAL = {"Naive2": (18.383, 2.395), "sNaive": (13.912, 1.193)}
BUDGET_S = 300.0
SUBSET = 60
SEED = 2026


def data_dir(cli: str | None) -> Path:
    return Path(cli or os.environ.get("PEERSCALE_M4_DATA") or REPO.parent / "shared" / "data" / "m4")


def load(path: Path) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    train = pd.read_csv(path / "Hourly-train.csv")
    test = pd.read_csv(path / "Hourly-test.csv")
    ids = train.iloc[:, 0].astype(str).tolist()
    series = [row[~np.isnan(row)] for row in train.iloc[:, 1:].to_numpy(float)]
    actual = test.set_index(test.columns[0]).loc[ids].to_numpy(float)
    return ids, series, actual


def smape(y: np.ndarray, f: np.ndarray) -> float:
    return float(np.mean(200 * np.abs(y - f) / (np.abs(y) + np.abs(f))))


def mase(insample: np.ndarray, y: np.ndarray, f: np.ndarray, m: int = M) -> float:
    return float(np.mean(np.abs(y - f)) / np.mean(np.abs(insample[m:] - insample[:-m])))


def scores(train: list[np.ndarray], test: np.ndarray, fc: np.ndarray) -> tuple[float, float]:
    return (float(np.mean([smape(test[i], fc[i]) for i in range(len(train))])),
            float(np.mean([mase(train[i], test[i], fc[i]) for i in range(len(train))])))


def owa(s: float, m: float, naive2: tuple[float, float]) -> float:
    return 0.5 * (s / naive2[0] + m / naive2[1])


def long_frame(ids: list[str], train: list[np.ndarray], subset: np.ndarray) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"unique_id": ids[i], "ds": pd.date_range("2000-01-01", periods=len(train[i]), freq="h"),
                                    "y": train[i]}) for i in subset], ignore_index=True)


def wide(frame: pd.DataFrame, ids: list[str], subset: np.ndarray, column: str, id_col: str = "unique_id") -> np.ndarray:
    frame = frame.sort_values([id_col, "ds"])
    groups = {k: g[column].to_numpy(float) for k, g in frame.groupby(id_col, sort=False)}
    return np.array([groups[ids[i]] for i in subset])


def coverage(test: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    return float(np.mean((test >= lo) & (test <= hi)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="Directory with Hourly-train.csv, Hourly-test.csv and official_point_forecasts_hourly/.")
    parser.add_argument("--quick", action="store_true", help="Engine and Prophet only (no per-model table).")
    parser.add_argument("--models", default="seasonal_naive,seasonal_mean,auto_ets,arima,mstl,global_gbm,lstm",
                        help="Per-model table (Prophet always runs).")
    args = parser.parse_args()
    path = data_dir(args.data)
    if not (path / "Hourly-train.csv").exists():
        print(f"skip: M4 Hourly data not found at {path} (set PEERSCALE_M4_DATA or --data)")
        print(json.dumps({"skipped": True, "reason": f"no data at {path}"}))
        return 0
    warnings.simplefilter("ignore")
    logging.getLogger("cmdstanpy").setLevel(logging.ERROR)

    from pipeline.common.config import Settings
    from pipeline.forecast.engine import EngineOptions, planning_tau, run_engine
    from pipeline.forecast.models import MODELS

    ids, train, test = load(path)
    everything = np.arange(len(ids))
    print(f"M4 Hourly: {len(ids)} series, h={H}, m={M}, data {path}")

    # 1. the evaluator reproduces the official benchmark scores
    official_scores = {}
    for name in OFFICIAL:
        fc = pd.read_csv(path / "official_point_forecasts_hourly" / f"submission-{name}-Hourly.csv")
        fc = fc.set_index(fc.columns[0]).loc[ids].to_numpy(float)
        s, m = scores(train, test, fc)
        official_scores[name] = (s, m)
        ok = abs(s - OFFICIAL[name][0]) < 5e-4 and abs(m - OFFICIAL[name][1]) < 5e-4
        print(f"{name:>8}: sMAPE {s:.3f}  MASE {m:.3f}  (official {OFFICIAL[name][0]} / {OFFICIAL[name][1]}) {'ok' if ok else 'MISMATCH'}")
        if not ok:
            print(json.dumps({"error": f"evaluator does not reproduce {name}"}))
            return 1
    naive2_fc = pd.read_csv(path / "official_point_forecasts_hourly" / "submission-Naive2-Hourly.csv")
    naive2_fc = naive2_fc.set_index(naive2_fc.columns[0]).loc[ids].to_numpy(float)
    naive2_all = official_scores["Naive2"]
    rng = np.random.default_rng(SEED)
    subset = np.sort(rng.choice(len(ids), size=SUBSET, replace=False))

    def naive2_on(sub: np.ndarray) -> tuple[float, float]:
        return scores([train[i] for i in sub], test[sub], naive2_fc[sub])

    tau = planning_tau(Settings())
    rows: list[dict] = []

    def report(name: str, sub: np.ndarray, fc: np.ndarray, lo80: np.ndarray | None, hi80: np.ndarray | None,
               lo95: np.ndarray | None, hi95: np.ndarray | None, seconds: float) -> dict:
        s, m = scores([train[i] for i in sub], test[sub], fc)
        ref = naive2_all if len(sub) == len(ids) else naive2_on(sub)
        row = {"model": name, "series": len(sub), "smape": round(s, 3), "mase": round(m, 3), "owa": round(owa(s, m, ref), 4),
               "coverage_80": round(coverage(test[sub], lo80, hi80), 4) if lo80 is not None else None,
               "coverage_95": round(coverage(test[sub], lo95, hi95), 4) if lo95 is not None else None,
               "seconds": round(seconds, 2), "series_per_s": round(len(sub) / seconds, 2)}
        rows.append(row)
        cov = f"cov80 {row['coverage_80']:.3f}  cov95 {row['coverage_95']:.3f}" if lo80 is not None else ""
        print(f"{name:>16} [{len(sub):>3} series]: sMAPE {s:7.3f}  MASE {m:6.3f}  OWA {row['owa']:.4f}  {cov}  "
              f"{seconds:7.1f} s  {row['series_per_s']:7.2f} series/s", flush=True)
        return row

    # 2. the default engine on all series
    frame = long_frame(ids, train, everything)
    t0 = time.perf_counter()
    options = EngineOptions(horizon=H, season_length=M, freq="h", tau=tau, models=("auto",),
                            model_params={"global_gbm": {"calendar": False}})
    result = run_engine(frame, options)
    engine_s = time.perf_counter() - t0
    fc = result.forecasts
    get = lambda col: wide(fc, ids, everything, col, "series_id")  # noqa: E731
    engine = report("engine (auto)", everything, get("mean"), get("lo_80"), get("hi_80"), get("lo_95"), get("hi_95"), engine_s)
    chosen: dict[str, int] = {}
    for sel in result.selection.values():
        chosen[sel["model"]] = chosen.get(sel["model"], 0) + 1
    print(f"   engine models {result.info['models']}; chosen per series {dict(sorted(chosen.items()))}; "
          f"cross-validation coverage {result.info.get('cv_coverage')}")

    # 3. Prophet, same process, all series
    t0 = time.perf_counter()
    prophet = MODELS["prophet"](M, "h", n_jobs=-1).fit(frame).predict(H)
    prophet_s = time.perf_counter() - t0
    g = lambda col: wide(prophet, ids, everything, col)  # noqa: E731
    prophet_row = report("prophet", everything, g("mean"), g("lo_80"), g("hi_80"), g("lo_95"), g("hi_95"), prophet_s)

    # 4. every model on its own
    if not args.quick:
        from pipeline.forecast.deep import torch_available

        for name in [n.strip() for n in args.models.split(",") if n.strip()]:
            if name == "lstm" and not torch_available():
                print(f"{name:>16}: skipped (PyTorch not installed: pip install 'peerscale[deep]')")
                continue
            params = {"calendar": False} if name == "global_gbm" else {}
            factory = MODELS[name]
            is_global = name in ("global_gbm", "lstm")
            sub = everything
            if name == "lstm":
                sub = subset  # trains a network: kept to the fixed subset
            elif not is_global:
                pilot = subset[:8]
                t0 = time.perf_counter()
                factory(M, "h", n_jobs=-1, **params).fit(long_frame(ids, train, pilot)).predict(H)
                estimate = (time.perf_counter() - t0) / len(pilot) * len(ids)
                if estimate > BUDGET_S:
                    print(f"{name:>16}: estimated {estimate:.0f} s on all series > {BUDGET_S:.0f} s: fixed subset of {SUBSET}")
                    sub = subset
            data = long_frame(ids, train, sub)
            t0 = time.perf_counter()
            out = factory(M, "h", n_jobs=-1, **params).fit(data).predict(H)
            seconds = time.perf_counter() - t0
            cols = {col: wide(out, ids, sub, col) for col in ("mean", "lo_80", "hi_80", "lo_95", "hi_95")}
            report(name, sub, cols["mean"], cols["lo_80"], cols["hi_80"], cols["lo_95"], cols["hi_95"], seconds)

    snaive = official_scores["sNaive"]
    print(f"{'reference':>16}: sNaive OWA {owa(*snaive, naive2_all):.4f}; best M4 entry 0.410; Prophet (issue) 0.833")
    headline = {
        "owa": engine["owa"], "smape": engine["smape"], "mase": engine["mase"],
        "coverage_80": engine["coverage_80"], "coverage_95": engine["coverage_95"],
        "series_per_s": engine["series_per_s"], "seconds": engine["seconds"],
        "prophet_owa": prophet_row["owa"], "prophet_series_per_s": prophet_row["series_per_s"],
        "speedup_vs_prophet": round(engine["series_per_s"] / prophet_row["series_per_s"], 3),
        "models": {r["model"]: {k: r[k] for k in ("series", "owa", "smape", "mase", "coverage_80", "coverage_95", "series_per_s")}
                   for r in rows},
    }
    print(json.dumps(headline, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
