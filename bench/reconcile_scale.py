"""Reconciliation at scale: the pair → destination hierarchy solved per block vs as one dense system.

    .venv/bin/python bench/reconcile_scale.py                 # 10, 30, 60 and 100 regions
    .venv/bin/python bench/reconcile_scale.py --sizes 30,60

`reconcile_wls` splits the hierarchy into independent blocks (aggregates that share no children: one
per destination here) and solves each on its own. The baseline is the same WLS projection as one
dense system over every series (S of (aggregates + pairs) × pairs, the way it was solved before),
run on the same frame in the same process; it is skipped above --dense-max regions, where its
pairs × pairs solve no longer fits the machine. Reports seconds for each, their ratio and the
largest difference between the two results. Figures are printed, never asserted; the last line is
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HORIZON = 48


def frame(n: int, seed: int = 7) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, float]]:
    """n regions: n·(n−1) pair series and n inbound totals, 48 hourly steps, noisy totals."""
    rng = np.random.default_rng(seed)
    regions = [f"r{i:03d}" for i in range(n)]
    ds = pd.date_range("2026-01-29", periods=HORIZON, freq="h", tz="UTC")
    hierarchy: dict[str, list[str]] = {}
    ids, means = [], []
    for dst in regions:
        kids = [f"pair:{src}→{dst}:requests" for src in regions if src != dst]
        hierarchy[f"inbound:{dst}:requests"] = kids
        values = rng.gamma(2.0, 1.0, (len(kids), HORIZON))
        ids += [*kids, f"inbound:{dst}:requests"]
        means += [*values, values.sum(axis=0) * rng.uniform(0.8, 1.2, HORIZON)]
    mean = np.concatenate(means)
    out = pd.DataFrame({"series_id": np.repeat(ids, HORIZON), "ds": np.tile(ds, len(ids)), "mean": mean})
    out["q90"] = out["mean"] * 1.4
    variance = {s: float(rng.uniform(0.5, 3.0)) for s in ids}
    return out, hierarchy, variance


def dense(forecast: pd.DataFrame, hierarchy: dict[str, list[str]], variance: dict[str, float]) -> pd.Series:
    """The baseline: the WLS projection as one dense system; reconciled means by (series_id, ds)."""
    from pipeline.forecast.reconcile import summing_matrix

    bottoms = sorted({c for kids in hierarchy.values() for c in kids})
    order, S = summing_matrix(hierarchy, bottoms)
    Y = forecast.pivot(index="ds", columns="series_id", values="mean")[order].to_numpy().T
    StWinv = S.T * (1.0 / np.array([variance[s] for s in order]))
    B = np.maximum(np.linalg.solve(StWinv @ S, StWinv @ Y), 0.0)
    wide = pd.DataFrame((S @ B).T, index=sorted(forecast["ds"].unique()), columns=order)
    return wide.stack().rename("mean").rename_axis(["ds", "series_id"]).swaplevel().sort_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,30,60,100")
    parser.add_argument("--dense-max", type=int, default=60, help="largest size the dense baseline runs at")
    args = parser.parse_args()
    from pipeline.forecast.reconcile import reconcile_wls

    print(f"{'regions':>8} {'series':>8} {'blocks s':>10} {'dense s':>10} {'ratio':>8} {'max diff':>10}")
    summary: dict = {}
    for n in (int(s) for s in args.sizes.split(",")):
        forecast, hierarchy, variance = frame(n)
        t0 = time.perf_counter()
        blocks = reconcile_wls(forecast, hierarchy, variance).set_index(["series_id", "ds"])["mean"].sort_index()
        t_blocks = time.perf_counter() - t0
        row = {"series": forecast["series_id"].nunique(), "blocks_s": round(t_blocks, 3)}
        if n <= args.dense_max:
            t0 = time.perf_counter()
            base = dense(forecast, hierarchy, variance)
            row["dense_s"] = round(time.perf_counter() - t0, 3)
            row["ratio"] = round(row["dense_s"] / t_blocks, 1)
            row["max_abs_diff"] = float(np.abs(blocks.to_numpy() - base.reindex(blocks.index).to_numpy()).max())
        print(f"{n:>8} {row['series']:>8} {row['blocks_s']:>10.3f} {row.get('dense_s', float('nan')):>10.3f} "
              f"{row.get('ratio', float('nan')):>8.1f} {row.get('max_abs_diff', float('nan')):>10.2e}", flush=True)
        summary[f"regions_{n}"] = row
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
