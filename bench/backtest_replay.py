"""Walk-forward replay of the last 7 days of data_samples: every policy against the oracle.

    .venv/bin/python bench/backtest_replay.py                 # 7 days, all policies + static sweep (~25 min on 2 cores)
    .venv/bin/python bench/backtest_replay.py --hours 24      # a shorter replay

1. `peerscale backtest` over [2026-01-29, 2026-02-05) with predictive, reactive, static (+20 %
   headroom) and oracle: hit rate, latency, idle resource-hours and total cost, each vs the oracle.
2. Static at equal hit rate: the static policy replayed with smaller headrooms (down to −40 %:
   pre-allocate 60 % of last week's peak) — the cheapest one whose hit rate reaches the predictive
   policy's, and its cost against the predictive policy's.
3. AWS-style predictive scaling at equal hit rate: `aws_predictive` (see pipeline/ops/backtest.py)
   replayed at target utilizations from 100 % down to 50 % — the first (cheapest) whose hit rate
   reaches the predictive policy's, and the predictive policy's cost against it.

Figures are printed, never asserted; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SWEEP = (-0.4, -0.3, -0.2, -0.1, 0.0)
AWS_TARGETS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=int, default=168, help="Replay length ending at the end of the samples (default 7 days).")
    parser.add_argument("--refit-every", type=int, default=6)
    parser.add_argument("--no-sweep", action="store_true", help="Skip the static headroom and AWS target sweeps.")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from pipeline.common.intervals import parse_utc
    from pipeline.ops.backtest import BacktestConfig, run_backtest

    samples = str(REPO / "data_samples")
    end = parse_utc("2026-02-05T00:00")
    start = end - timedelta(hours=args.hours)
    config = BacktestConfig(start=start, end=end, refit_every_hours=args.refit_every, horizon_hours=args.refit_every)
    t0 = time.perf_counter()
    result = run_backtest(samples, config)
    seconds = time.perf_counter() - t0
    summary = result.summary()["policies"]
    print(f"replay {start:%Y-%m-%dT%H:%M} → {end:%Y-%m-%dT%H:%M} ({args.hours} h), {seconds:.0f} s")
    print(f"{'policy':<12}{'hit rate':>10}{'on demand':>11}{'p95 s':>8}{'idle vCPU-h':>13}{'total $':>11}{'vs oracle':>11}")
    for name, s in summary.items():
        print(f"{name:<12}{s['hit_rate']:>10.1%}{s['on_demand_share']:>11.1%}{s['latency_p95_s']:>8.0f}"
              f"{s['idle_vcpu_hours']:>13.0f}{s['cost']['total']:>11.2f}{s['cost_vs_oracle']:>11.3f}")
    predictive = summary["predictive"]
    out = {
        "hours": args.hours,
        "replay_seconds": round(seconds, 1),
        "predictive_hit_rate": round(predictive["hit_rate"], 4),
        "predictive_cost_vs_oracle": predictive["cost_vs_oracle"],
        "static_hit_rate": round(summary["static"]["hit_rate"], 4),
        "static_cost_vs_oracle": summary["static"]["cost_vs_oracle"],
        "reactive_cost_vs_oracle": summary["reactive"]["cost_vs_oracle"],
        "oracle_hit_rate": round(summary["oracle"]["hit_rate"], 4),
    }
    if not args.no_sweep:
        print("static headroom sweep (equal hit rate):")
        best = None
        for headroom in SWEEP:
            run = run_backtest(samples, BacktestConfig(start=start, end=end, policies=("static",), static_headroom=headroom))
            s = run.summary()["policies"]["static"]
            ratio = s["cost"]["total"] / summary["oracle"]["cost"]["total"]
            print(f"  headroom {headroom:+.0%}: hit rate {s['hit_rate']:.1%}, total ${s['cost']['total']:.2f}, {ratio:.3f}× oracle")
            if best is None and s["hit_rate"] >= predictive["hit_rate"]:
                best = (headroom, s, ratio)
        if best is not None:
            headroom, s, ratio = best
            out.update({"static_equal_hit_headroom": headroom, "static_equal_hit_rate": round(s["hit_rate"], 4),
                        "static_equal_hit_cost_vs_oracle": round(ratio, 4),
                        "static_equal_hit_cost_vs_predictive": round(s["cost"]["total"] / predictive["cost"]["total"], 4)})
    if not args.no_sweep:
        out.update(aws_sweep(samples, start, end, summary))
    print(json.dumps(out, sort_keys=True))
    return 0


def aws_sweep(samples: str, start, end, summary: dict) -> dict:
    """AWS-style predictive scaling at target utilizations from loose to tight, until its hit rate
    reaches the predictive policy's: that target's cost against the oracle and the predictive policy."""
    from pipeline.ops.backtest import BacktestConfig, run_backtest

    predictive, oracle_cost = summary["predictive"], summary["oracle"]["cost"]["total"]
    print("AWS-style predictive scaling, target utilization sweep (equal hit rate):")
    out: dict = {}
    for target in AWS_TARGETS:
        run = run_backtest(samples, BacktestConfig(start=start, end=end, policies=("aws_predictive",),
                                                   aws_target_utilization=target))
        s = run.summary()["policies"]["aws_predictive"]
        ratio = s["cost"]["total"] / oracle_cost
        print(f"  target {target:.0%}: hit rate {s['hit_rate']:.1%}, total ${s['cost']['total']:.2f}, {ratio:.3f}× oracle")
        out.setdefault("aws_sweep", []).append({"target": target, "hit_rate": round(s["hit_rate"], 4), "cost_vs_oracle": round(ratio, 4)})
        if s["hit_rate"] >= predictive["hit_rate"]:
            out.update({"aws_equal_hit_target": target, "aws_equal_hit_rate": round(s["hit_rate"], 4),
                        "aws_equal_hit_cost_vs_oracle": round(ratio, 4),
                        "predictive_cost_vs_aws_equal_hit": round(predictive["cost"]["total"] / s["cost"]["total"], 4)})
            print(f"  predictive costs {out['predictive_cost_vs_aws_equal_hit']:.3f}× AWS-style at an equal or better hit rate")
            return out
    best = max(out["aws_sweep"], key=lambda r: r["hit_rate"])
    out.update({"aws_best_hit_target": best["target"], "aws_best_hit_rate": best["hit_rate"],
                "predictive_cost_vs_aws_best_hit": round(predictive["cost_vs_oracle"] / best["cost_vs_oracle"], 4)})
    print(f"  no target reached the predictive hit rate {predictive['hit_rate']:.1%}; at its best ({best['target']:.0%}: "
          f"{best['hit_rate']:.1%}) AWS-style costs {best['cost_vs_oracle']:.3f}× oracle and predictive "
          f"{out['predictive_cost_vs_aws_best_hit']:.3f}× it, at a higher hit rate")
    return out


if __name__ == "__main__":
    sys.exit(main())
