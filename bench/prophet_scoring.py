"""Prophet scoring from stored states: Prophet's own predict (JSON) vs the numpy mean (compact params).

    .venv/bin/python bench/prophet_scoring.py                      # 50 series, 21 days hourly, 48 h ahead
    .venv/bin/python bench/prophet_scoring.py --series 20 --repeats 5

Fits `--series` generated hourly series (trend with breaks, daily and weekly cycles; every other one
with an additive regressor and a per-series holidays frame with windows) through
`model_state.fit_state("prophet", ...)` as training does, round-trips each state through JSON as the
registry stores it, then scores every state `--repeats` times both ways through
`model_state.score_state`: the JSON path (`params` removed: `model_from_json` + `Prophet.predict`)
and the numpy path (`prophet_numpy.predict_mean`). Prints ms per series for each, their ratio and the
largest difference between the two forecasts. Figures are printed, never asserted; the last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.forecast import model_state
from pipeline.forecast.base import future_index

START = pd.Timestamp("2026-01-01")


def _series(i: int, days: int, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(history, future, holidays or None) of generated series number `i`."""
    rng = np.random.default_rng(i)
    n = days * 24
    t = np.arange(n + horizon)
    x = rng.normal(0, 1, n + horizon)
    y = (50 + 10 * (i % 7) + 0.03 * t - 0.05 * np.maximum(t - n // 2, 0) + 8 * np.sin(2 * np.pi * t / 24 + i)
         + 3 * np.cos(2 * np.pi * t / 168) + rng.normal(0, 1, n + horizon))
    frame = pd.DataFrame({"unique_id": f"series-{i}", "ds": pd.date_range(START, periods=n + horizon, freq="h"), "y": y})
    holidays = None
    if i % 2:
        frame["load"] = x
        frame["y"] += 2 * x
        days_in = pd.to_datetime([START + pd.Timedelta(days=d) for d in (3, days // 2, days + 1)])
        holidays = pd.DataFrame({"holiday": ["event", "event", "event"], "ds": days_in, "lower_window": -1,
                                 "upper_window": 1, "unique_id": [f"series-{i}", "*", "*"]})
    history = frame.iloc[:n].reset_index(drop=True)
    future = future_index(history, horizon, "h")
    if "load" in frame:
        future = future.merge(frame[["ds", "load"]], on="ds", how="left")
    return history, future, holidays


def _time(states: list[dict], data: list[tuple], horizon: int, repeats: int) -> tuple[float, list[np.ndarray]]:
    """Seconds per series (best of `repeats` passes) and the forecasts."""
    best, out = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = [model_state.score_state("prophet", s, h, horizon, 24, f) for s, (h, f, _) in zip(states, data, strict=True)]
        best = min(best, (time.perf_counter() - t0) / len(states))
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=50, help="fitted states to score")
    parser.add_argument("--days", type=int, default=21, help="hourly history per series")
    parser.add_argument("--horizon", type=int, default=48, help="hours forecast")
    parser.add_argument("--repeats", type=int, default=3, help="scoring passes over every state (the best is kept)")
    args = parser.parse_args()

    data = [_series(i, args.days, args.horizon) for i in range(args.series)]
    t0 = time.perf_counter()
    states = [json.loads(json.dumps(model_state.fit_state("prophet", h, 24, "h", {"holidays": hol} if hol is not None else {})))
              for h, _, hol in data]
    fit_s = time.perf_counter() - t0
    with_params = sum("params" in s for s in states)
    print(f"fitted {len(states)} states in {fit_s:.1f} s ({with_params} with compact params)", flush=True)
    json_states = [{k: v for k, v in s.items() if k != "params"} for s in states]
    json_s, slow = _time(json_states, data, args.horizon, args.repeats)
    numpy_s, fast = _time(states, data, args.horizon, args.repeats)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(fast, slow, strict=True))
    rel = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))) for a, b in zip(fast, slow, strict=True))
    ratio = json_s / numpy_s
    print(f"json path  {json_s * 1e3:8.2f} ms/series\nnumpy path {numpy_s * 1e3:8.2f} ms/series\n"
          f"ratio {ratio:.1f}x; largest difference {diff:.2e} (relative {rel:.2e})", flush=True)
    state_kb = float(np.mean([len(json.dumps(s.get("params", {}))) for s in states]) / 1024)
    print(json.dumps({"series": len(states), "days": args.days, "horizon": args.horizon, "repeats": args.repeats,
                      "with_params": with_params, "fit_s": round(fit_s, 1), "json_ms_per_series": round(json_s * 1e3, 3),
                      "numpy_ms_per_series": round(numpy_s * 1e3, 3), "ratio": round(ratio, 1),
                      "max_abs_diff": diff, "max_rel_diff": rel, "params_kb_per_state": round(state_kb, 2)}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
