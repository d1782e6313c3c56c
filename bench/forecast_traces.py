"""Real telemetry: the engine's quantiles against the seasonal-naive empirical quantile, rolling origins.

    .venv/bin/python bench/forecast_traces.py [--data DIR] [--tau 0.9]

Reads ../shared/data/traces/traces_hourly.csv relative to the repo root (or $PEERSCALE_TRACES_DATA /
--data) and skips cleanly when it is absent. Protocol (the one issue 13 asks for): rolling origins
over each series' last 7 days, one per day with h = 24, plus one origin 48 h before the end with
h = 48. At every origin the engine forecasts from the history strictly before it, exactly as
`peerscale forecast --input … --horizon H --freq h --levels 80 95` does (`select_and_forecast`
on the validated long frame). The baseline, computed in the same run from the same history:
point = the last 24 h repeated; quantile p = point + the p-quantile of the series' own 24-hour
differences (y_t − y_{t−24}) over the history; its 80 % / 95 % intervals use the 0.1/0.9 and
0.025/0.975 quantiles of those differences.

Per series: pinball at 0.5 / 0.9 / 0.95 (mean over every scored hour of every origin), its ratio
to the baseline's, MASE (scaled by the history's seasonal-naive MAE), and 80 % / 95 % coverage.
An origin is scored when at least 3 days of history precede it. The last line printed is one JSON
object: share of series beating the baseline at 0.9, geometric mean and worst ratio, pooled
coverage, series forecast per second of engine time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

M = 24  # season (hours)
DAYS = 7  # daily origins over the last week
MIN_TRAIN = 3 * M  # an origin is scored when this much history precedes it
PROBS = (0.5, 0.9, 0.95)
TINY = 1e-12


def data_file(cli: str | None) -> Path:
    root = Path(cli or os.environ.get("PEERSCALE_TRACES_DATA") or REPO.parent / "shared" / "data" / "traces")
    return root / "traces_hourly.csv" if root.is_dir() or not root.suffix else root


def origins() -> list[tuple[int, int]]:
    """(steps before the end of the series at which the origin sits, horizon)."""
    return [(M * d, M) for d in range(DAYS, 0, -1)] + [(2 * M, 2 * M)]


def pinball(y: np.ndarray, q: np.ndarray, p: float) -> np.ndarray:
    d = y - q
    return np.maximum(p * d, (p - 1) * d)


def snaive(train: np.ndarray, h: int) -> dict[str, np.ndarray]:
    """The issue's baseline: last season repeated plus empirical quantiles of the 24-hour differences."""
    point = np.resize(train[-M:], h)
    diffs = train[M:] - train[:-M]
    out = {"mean": point}
    for p in (*PROBS, 0.1, 0.025, 0.975):
        out[f"p{p}"] = point + np.quantile(diffs, p)
    out["lo_80"], out["hi_80"] = out["p0.1"], out["p0.9"]
    out["lo_95"], out["hi_95"] = out["p0.025"], out["p0.975"]
    return out


def engine_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    from pipeline.forecast.quantiles import quantile_column

    out = {"mean": frame["mean"].to_numpy(float)}
    for p in PROBS:
        out[f"p{p}"] = frame[quantile_column(p)].to_numpy(float)
    for col in ("lo_80", "hi_80", "lo_95", "hi_95"):
        out[col] = frame[col].to_numpy(float)
    return out


def score(train: np.ndarray, actual: np.ndarray, fc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-hour losses (summed later per series)."""
    scale = max(float(np.mean(np.abs(train[M:] - train[:-M]))), TINY)
    out = {f"pin{p}": pinball(actual, fc[f"p{p}"], p) for p in PROBS}
    out["ae_scaled"] = np.abs(actual - fc["mean"]) / scale
    out["in80"] = (actual >= fc["lo_80"]) & (actual <= fc["hi_80"])
    out["in95"] = (actual >= fc["lo_95"]) & (actual <= fc["hi_95"])
    return out


def run_origin(frame: pd.DataFrame, back: int, h: int, tau: float) -> tuple[list[dict], float, int]:
    """Forecast every series with enough history from `back` steps before its end; score both methods."""
    from pipeline.forecast.engine import select_and_forecast

    trains, tests = [], {}
    for uid, g in frame.groupby("unique_id", sort=True):
        if len(g) - back < MIN_TRAIN:
            continue
        trains.append(g.iloc[: len(g) - back])
        tests[uid] = g["y"].to_numpy(float)[len(g) - back: len(g) - back + h]
    if not trains:
        return [], 0.0, 0
    history = pd.concat(trains, ignore_index=True)
    t0 = time.perf_counter()
    result = select_and_forecast(history, h, M, "h", tau, "auto", levels=(80, 95))
    seconds = time.perf_counter() - t0
    fc = result.forecasts.sort_values(["series_id", "ds"])
    rows = []
    for uid, g in fc.groupby("series_id", sort=True):
        train = history.loc[history["unique_id"] == uid, "y"].to_numpy(float)
        actual = tests[uid]
        eng = {k: v[: len(actual)] for k, v in engine_columns(g).items()}
        base = {k: v[: len(actual)] for k, v in snaive(train, h).items()}
        rows.append({"uid": uid, "origin": f"-{back}h/h{h}", "engine": score(train, actual, eng),
                     "snaive": score(train, actual, base), "model": result.selection[uid]["model"],
                     "quantile_method": result.selection[uid].get("quantile_method", "")})
    return rows, seconds, len(trains)


def summarise(rows: list[dict]) -> pd.DataFrame:
    per: dict[str, dict] = {}
    for r in rows:
        acc = per.setdefault(r["uid"], {"engine": {}, "snaive": {}, "origins": 0, "model": r["model"], "qm": r["quantile_method"]})
        acc["origins"] += 1
        acc["model"], acc["qm"] = r["model"], r["quantile_method"]  # the last origin's choice
        for who in ("engine", "snaive"):
            for k, v in r[who].items():
                acc[who].setdefault(k, []).append(np.asarray(v, float))
    out = []
    for uid, acc in sorted(per.items()):
        e = {k: np.concatenate(v) for k, v in acc["engine"].items()}
        s = {k: np.concatenate(v) for k, v in acc["snaive"].items()}
        row = {"series": uid, "origins": acc["origins"], "model": acc["model"], "quantile_method": acc["qm"]}
        for p in PROBS:
            row[f"pin{p}"] = float(np.mean(e[f"pin{p}"]))
            row[f"snaive_pin{p}"] = float(np.mean(s[f"pin{p}"]))
            row[f"ratio{p}"] = (row[f"pin{p}"] + TINY) / (row[f"snaive_pin{p}"] + TINY)
        row["mase"], row["snaive_mase"] = float(np.mean(e["ae_scaled"])), float(np.mean(s["ae_scaled"]))
        row["cov80"], row["cov95"] = float(np.mean(e["in80"])), float(np.mean(e["in95"]))
        row["snaive_cov80"], row["snaive_cov95"] = float(np.mean(s["in80"])), float(np.mean(s["in95"]))
        row["n_hours"] = len(e["in80"])
        out.append(row)
    return pd.DataFrame(out)


def print_table(table: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="engine vs seasonal-naive empirical quantile (ratio < 1: engine better)")
    for col in ("series", "orig", "model", "quantiles", "pin50 ratio", "pin90 ratio", "pin95 ratio", "MASE", "sN MASE", "cov80", "cov95"):
        t.add_column(col, justify="left" if col in ("series", "model", "quantiles") else "right")
    for r in table.to_dict("records"):
        ratio = r["ratio0.9"]
        style = "green" if ratio < 1 else "red" if ratio > 1.25 else "yellow"
        t.add_row(str(r["series"])[-40:], str(r["origins"]), r["model"], r["quantile_method"], f"{r['ratio0.5']:.3f}",
                  f"[{style}]{ratio:.3f}[/]", f"{r['ratio0.95']:.3f}", f"{r['mase']:.3f}", f"{r['snaive_mase']:.3f}",
                  f"{r['cov80']:.2f}", f"{r['cov95']:.2f}")
    Console(width=200).print(t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="Directory holding traces_hourly.csv (or the file itself).")
    parser.add_argument("--tau", type=float, default=0.9, help="The τ the engine selects at (the CLI's default 0.9).")
    args = parser.parse_args()
    path = data_file(args.data)
    if not path.exists():
        print(f"skip: traces data not found at {path} (set PEERSCALE_TRACES_DATA or --data)")
        print(json.dumps({"skipped": True, "reason": f"no data at {path}"}))
        return 0
    warnings.simplefilter("ignore")
    from pipeline.forecast.prep import validate_long_format

    frame = validate_long_format(pd.read_csv(path), "h").sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)
    print(f"traces: {frame['unique_id'].nunique()} series, {len(frame)} points, data {path}")
    rows: list[dict] = []
    seconds, forecasts = 0.0, 0
    for back, h in origins():
        got, s, n = run_origin(frame, back, h, args.tau)
        rows += got
        seconds += s
        forecasts += n
        print(f"  origin {back:>3} h before the end, h = {h}: {n} series in {s:.1f} s", flush=True)
    table = summarise(rows)
    print_table(table)
    ratios = table["ratio0.9"].to_numpy()
    n_hours = table["n_hours"].to_numpy()
    headline = {
        "series": len(table),
        "share_beats_snaive_pinball90": round(float(np.mean(ratios < 1)), 4),
        "geomean_pinball90_ratio": round(float(np.exp(np.mean(np.log(ratios)))), 4),
        "worst_pinball90_ratio": round(float(np.max(ratios)), 4),
        "geomean_pinball50_ratio": round(float(np.exp(np.mean(np.log(table["ratio0.5"])))), 4),
        "geomean_pinball95_ratio": round(float(np.exp(np.mean(np.log(table["ratio0.95"])))), 4),
        "mase": round(float(table["mase"].mean()), 4), "snaive_mase": round(float(table["snaive_mase"].mean()), 4),
        "coverage_80": round(float(np.average(table["cov80"], weights=n_hours)), 4),
        "coverage_95": round(float(np.average(table["cov95"], weights=n_hours)), 4),
        "snaive_coverage_80": round(float(np.average(table["snaive_cov80"], weights=n_hours)), 4),
        "snaive_coverage_95": round(float(np.average(table["snaive_cov95"], weights=n_hours)), 4),
        "series_per_s": round(forecasts / seconds, 2) if seconds else None,
        "engine_seconds": round(seconds, 2),
    }
    print(json.dumps(headline, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
