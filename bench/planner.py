"""Planner benchmark: classic bin packing, scaling of the allocation, and a first-fit-decreasing baseline.

    .venv/bin/python bench/planner.py            # everything (a few minutes on 2 cores)
    .venv/bin/python bench/planner.py --quick    # skip the 50-region scenarios
    .venv/bin/python bench/planner.py --only 20x20 --triplets 0   # the floor scenario alone (re-measure under load)

1. Falkenauer-style triplet instances (bins of capacity 1000 filled exactly by three items, so the
   optimum is n/3 bins by construction): share solved to proven optimality within 2 s each.
2. Scaling: R regions × T instance types × 48 hourly windows through the planner's own
   `solve_plan`: the allocation stage (one CP-SAT model per region and window with failover
   headroom, spot rules and hosting constraints) — wall time and the gap between its objective and
   CP-SAT's proven bound — and the whole plan including the packing check, whose fixes for
   sessions the aggregate plan cannot host add cost against the same bound (end-to-end gap).
3. The same scenarios planned by first-fit decreasing over the sessions (+ greedy headroom, + spot
   within the share): cost ratio planner / FFD.

Figures are printed, never asserted; the last line is one JSON object. Besides wall seconds it
reports CPU seconds (all processes) and the load average: on a machine shared with other jobs the
wall time of the 2 solver processes says more about the neighbours than about the planner.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.allocate import Offer
from pipeline.plan.core import PlanningProblem, RegionMix, failover_needs, solve_plan, usable_offers
from pipeline.plan.packing import capacity_matrix, ffd_plan, plan_cost, sessions_for_demand, shard, solve_bin_packing
from pipeline.plan.policy import PlannerConfig

CAPACITY = 1000
WINDOWS = 48
# family: (GiB per vCPU, USD per vCPU-hour, storage GiB per vCPU, network Gbit/s per vCPU)
FAMILIES = {
    "c7": (2, 0.0425, 16, 0.78), "m7": (4, 0.0480, 16, 0.78), "r7": (8, 0.0630, 16, 0.78), "i4": (8, 0.0858, 234, 0.75),
    "cn7": (2, 0.0630, 16, 3.1), "x2": (16, 0.1040, 16, 0.78), "z1": (8, 0.0930, 38, 1.56), "m7a": (4, 0.0578, 16, 0.78),
}
SIZES = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32}
VCPU = np.array([1, 2, 4, 8, 16, 32, 64])
VCPU_P = np.array([0.20, 0.27, 0.23, 0.15, 0.09, 0.045, 0.015])


def triplet_instance(n: int, seed: int) -> list[int]:
    """Falkenauer's triplets: item 1 in [380, 490], item 2 in [250, (1000 − item 1)/2], item 3 the rest."""
    rng = np.random.default_rng(seed)
    items: list[int] = []
    for _ in range(n // 3):
        a = int(rng.integers(380, 491))
        b = int(rng.integers(250, (CAPACITY - a) // 2 + 1))
        items += [a, b, CAPACITY - a - b]
    rng.shuffle(items)
    return items


def bench_triplets(instances: int) -> dict:
    out = {}
    for n in (120, 249):
        solved, times, ffd = 0, [], []
        for k in range(instances):
            items = triplet_instance(n, 10_000 * n + k)
            t0 = time.perf_counter()
            result = solve_bin_packing(items, CAPACITY, time_limit_s=2.0, workers=2)
            elapsed = time.perf_counter() - t0
            times.append(elapsed)
            ffd.append(result.ffd_bins)
            solved += result.proven_optimal and result.bins == n // 3 and elapsed <= 2.0
        out[n] = {"instances": instances, "optimal_within_2s": solved, "share": solved / instances,
                  "median_s": float(np.median(times)), "max_s": float(max(times)), "ffd_bins_mean": float(np.mean(ffd)),
                  "optimum": n // 3}
        print(f"triplets t{n}: {solved}/{instances} proven optimal within 2 s (median {np.median(times):.2f} s, "
              f"max {max(times):.2f} s); FFD uses {np.mean(ffd):.1f} bins vs optimum {n // 3}", flush=True)
    return out


def catalog(rng: np.random.Generator, types: int, multiplier: float) -> list[Offer]:
    names = [(f, s) for f in FAMILIES for s in SIZES]
    chosen = sorted(rng.choice(len(names), size=types, replace=False))
    offers = []
    for i in chosen:
        family, size = names[i]
        gib, usd, storage, net = FAMILIES[family]
        v = SIZES[size]
        capacity = {"vcpu": float(v), "memory_gib": float(v * gib), "storage_gib": float(v * storage),
                    "bandwidth_gbps": float(min(50.0, max(v * net, 0.75 * v)) if family != "cn7" else v * net)}
        od = round(usd * v * multiplier * float(rng.uniform(0.97, 1.03)), 4)
        rate = round(float(rng.uniform(0.001, 0.03)), 4)
        itype = f"{family}.{size}"
        offers.append(Offer(itype, "on_demand", od, capacity))
        offers.append(Offer(itype, "spot", round(od * float(rng.uniform(0.30, 0.65)), 4), capacity, rate))
    return offers


def sessions(rng: np.random.Generator, count: int) -> np.ndarray:
    v = rng.choice(VCPU, size=count, p=VCPU_P).astype(float)
    mem = v * rng.choice([2.0, 4.0, 8.0], size=count, p=[0.3, 0.45, 0.25])
    storage = np.round(np.where(rng.random(count) < 0.3, 0.0, rng.lognormal(3.5, 1.1, count)), -1)
    bandwidth = np.clip(rng.lognormal(-0.6, 0.8, count), 0.1, 25.0)
    return np.column_stack([v, mem, storage, bandwidth])


def scenario(regions: int, types: int, seed: int) -> tuple[PlanningProblem, PlannerConfig]:
    """Per region: a catalog, a request-size mix, and per window a demand vector (the sum of a
    Poisson number of requests of that mix, diurnal). As in production, the planner draws the
    sessions it packs from the mix so that they fill the demand vector."""
    rng = np.random.default_rng(seed)
    names = [f"xx-bench{r:02d}-1" for r in range(regions)]
    windows = [pd.Timestamp("2026-03-02T00:00Z") + pd.Timedelta(hours=h) for h in range(WINDOWS)]
    demand, offers, pools, mix = {}, {}, {}, {}
    for r, region in enumerate(names):
        offers[region] = catalog(rng, types, float(rng.uniform(0.9, 1.35)))
        base = float(rng.uniform(15, 60))
        phase = float(rng.uniform(0, 24))
        peak = np.zeros(4)
        for h, w in enumerate(windows):
            lam = base * (1.0 + 0.6 * np.sin(2 * np.pi * (h + phase) / 24))
            total = sessions(rng, max(1, int(rng.poisson(lam)))).sum(axis=0)
            demand[(w, region)] = dict(zip(RESOURCE_TYPES, map(float, total)))
            peak = np.maximum(peak, total)
        headroom = 1.6 if r % 7 == 3 else float(rng.uniform(2.5, 4.0))  # every 7th region is tight
        pools[region] = {k: float(peak[j] * headroom) for j, k in enumerate(RESOURCE_TYPES)}
        crit = float(rng.uniform(0.12, 0.22))
        class_share = {"critical": dict.fromkeys(RESOURCE_TYPES, crit / 4),
                       "high": dict.fromkeys(RESOURCE_TYPES, 3 * crit / 4),
                       "normal": dict.fromkeys(RESOURCE_TYPES, 0.85 - crit),
                       "low": dict.fromkeys(RESOURCE_TYPES, 0.15)}
        mix[region] = RegionMix(class_share=class_share, samples=sessions(rng, 2000), weights=rng.lognormal(7.6, 1.0, 2000), source="bench")
    partners = {names[i]: names[i ^ 1] if (i ^ 1) < regions else names[0] for i in range(regions)}
    config = PlannerConfig(partners=partners)
    problem = PlanningProblem(windows=windows, regions=names, demand=demand, offers=offers, pools=pools, mix=mix,
                              c_under={"vcpu": 0.43, "memory_gib": 0.054, "storage_gib": 0.0009, "bandwidth_gbps": 0.18},
                              c_over={"vcpu": 0.048, "memory_gib": 0.006, "storage_gib": 0.0001, "bandwidth_gbps": 0.02})
    return problem, config


def ffd_baseline(problem: PlanningProblem, config: PlannerConfig) -> dict:
    """FFD over the very sessions the planner packs (same draw), with the same headroom and spot rules."""
    partners = config.partners_for(problem.regions)
    fail, _ = failover_needs(problem, config, partners)
    costs = {}
    for cell, demand in problem.demand.items():
        offers, _ = usable_offers(problem.offers[cell[1]], config)
        _, caps = capacity_matrix(offers)
        m = problem.mix[cell[1]]
        drawn = sessions_for_demand(m.samples, m.weights, demand, config.max_sessions_per_window, cell[1], cell[0].isoformat())
        s = shard(drawn, caps, config.max_session_vcpu)
        counts = ffd_plan(s, offers, problem.pools[cell[1]], demand, fail.get(cell, {}), config.spot_share(cell[1]))
        costs[cell] = plan_cost(counts, offers)
    return costs


def bench_scaling(shapes: list[tuple[int, int]], workers: int) -> dict:
    out = {}
    for regions, types in shapes:
        problem, config = scenario(regions, types, seed=100 * regions + types)
        t0 = time.perf_counter()
        result = solve_plan(problem, config, workers=workers)
        seconds = time.perf_counter() - t0
        ffd = ffd_baseline(problem, config)
        ours = {c: cell.cost for c, cell in result.cells.items()}
        ratio = sum(ours.values()) / sum(ffd.values())
        worst = max(ours[c] / ffd[c] for c in ours if ffd[c] > 0)
        cheaper = sum(ours[c] <= ffd[c] + 1e-9 for c in ours) / len(ours)
        short = sum(1 for s in result.shortfalls)
        repaired = sum(1 for c in result.cells.values() if c.resolved_rounds)
        key = f"{regions}x{types}x{WINDOWS}"
        out[key] = {"regions": regions, "types": types, "windows": WINDOWS, "cells": len(result.cells),
                    "seconds": result.seconds["allocation"], "seconds_total": seconds, "seconds_packing": result.seconds["packing"],
                    "stages": dict(result.seconds),
                    "gap": result.allocation_gap, "gap_end_to_end": result.gap,
                    "objective": result.objective, "lower_bound": result.lower_bound, "cost": result.cost,
                    "allocation_cost": result.allocation["cost"], "packing_premium": result.cost / result.allocation["cost"] - 1,
                    "ffd_cost": sum(ffd.values()), "cost_ratio_vs_ffd": ratio, "worst_cell_ratio": worst,
                    "cells_at_most_ffd": cheaper, "shortfalls": short, "packing_fixes": repaired,
                    "statuses": sorted({s for w in result.windows.values() for s in w.statuses})}
        print(f"{key:>10}: allocation {result.seconds['allocation']:6.2f} s, gap {100 * result.allocation_gap:5.3f} % | "
              f"with packing check {seconds:6.2f} s, gap {100 * result.gap:5.2f} % (premium {100 * out[key]['packing_premium']:.2f} %, "
              f"{repaired}/{len(result.cells)} cells fixed) | cost ${result.cost:9.2f} vs FFD ${sum(ffd.values()):9.2f}: "
              f"ratio {ratio:.3f}, worst cell {worst:.3f}, {100 * cheaper:.0f} % of cells ≤ FFD | shortfalls {short}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 50-region scenarios")
    parser.add_argument("--only", default="", help="comma-separated RxT scenarios to run alone, e.g. 20x20 (re-measure one under load)")
    parser.add_argument("--triplets", type=int, default=20, help="instances per triplet size (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the per-cell models (2 cores)")
    args = parser.parse_args()
    print(f"planner benchmark · {os.cpu_count()} CPUs visible · {args.workers} solver processes · load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    triplets = bench_triplets(args.triplets) if args.triplets > 0 else {}
    shapes = [(20, 20), (5, 10), (5, 40), (20, 10), (20, 40)] + ([] if args.quick else [(50, 10), (50, 40)])
    if args.only:
        shapes = [tuple(int(v) for v in shape.lower().split("x")[:2]) for shape in args.only.split(",")]
    scaling = bench_scaling(shapes, args.workers)
    floor = scaling.get(f"20x20x{WINDOWS}")
    summary: dict = {"load_average": [round(x, 2) for x in os.getloadavg()]}
    if triplets:
        summary.update({
            "triplet_optimal_share": round((triplets[120]["optimal_within_2s"] + triplets[249]["optimal_within_2s"])
                                           / (triplets[120]["instances"] + triplets[249]["instances"]), 4),
            "triplet_optimal_share_120": round(triplets[120]["share"], 4),
            "triplet_optimal_share_249": round(triplets[249]["share"], 4),
        })
    if floor:
        summary.update({
            "gap_20x20x48": round(floor["gap"], 6),
            "seconds_20x20x48": round(floor["seconds"], 3),
            "gap_end_to_end_20x20x48": round(floor["gap_end_to_end"], 6),
            "seconds_total_20x20x48": round(floor["seconds_total"], 3),
            "seconds_stages_20x20x48": {k: round(v, 3) for k, v in floor["stages"].items()},
            "cpu_seconds_allocation_20x20x48": round(floor["stages"]["allocation_cpu"], 3),
            "cpu_seconds_total_20x20x48": round(sum(v for k, v in floor["stages"].items() if k.endswith("_cpu")), 3),
        })
    summary.update({
        "cost_ratio_vs_ffd_max": round(max(s["cost_ratio_vs_ffd"] for s in scaling.values()), 4),
        "worst_cell_ratio_vs_ffd": round(max(s["worst_cell_ratio"] for s in scaling.values()), 4),
        "scaling": {k: {m: (round(v, 6) if isinstance(v, float) else v) for m, v in s.items()
                        if m in ("seconds", "seconds_total", "gap", "gap_end_to_end", "packing_premium", "cost_ratio_vs_ffd",
                                 "worst_cell_ratio", "packing_fixes", "shortfalls")}
                    for k, s in scaling.items()},
    })
    floors = {"plan cost ≤ FFD on every scenario": summary["cost_ratio_vs_ffd_max"] <= 1.0}
    if floor:
        floors["allocation gap ≤ 1 % on 20×20×48"] = floor["gap"] <= 0.01
        floors["20×20×48 allocation within 10 s"] = floor["seconds"] <= 10.0
    if triplets:
        floors["t120 optimal ≥ 90 %"] = triplets[120]["share"] >= 0.9
    for name, ok in floors.items():
        print(f"floor {'ok    ' if ok else 'MISSED'} {name}")
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
