"""Planning without I/O: demand quantiles + inventory + policy → instance counts per window and region.

`solve_plan` is what the plan stage and the benchmark both run:

1. failover headroom per region (N+1: the largest share of critical demand of the regions that
   name it as partner);
2. the sessions each region's τ-quantile demand stands for, and the `hall_groups` most restrictive
   Hall-type hosting groups (drawn region by region, in parallel);
3. allocation: one CP-SAT model per region and window (or per window over all regions when
   flexible demand may be relocated), covering demand + headroom at least cost within pools,
   quotas, the spot share and the churn penalty against the previous plan. A region's windows are
   solved in order, each hinted with the window before's plan, under a deterministic work limit
   and a relative-gap stop, so plans are reproducible and the same with any number of processes;
4. windows whose plan costs more than the budget cap are re-solved jointly under the cap,
   priority by priority (knapsack);
5. the packing check places the sessions on the chosen instances (dot-product heuristics) and
   reports fragmentation. A plan that cannot host them is re-planned with footprint hosting (the
   allocation model plus "each session takes its binding share of an instance of the type it is
   put on", `allocate.solve_hosting`), which almost always packs; first-fit decreasing caps the
   cost of a fixed cell, and the single best swap/add stands in where there is no re-plan. Every
   change keeps coverage, pools, quotas and the spot share.

The objective and bound reported are the allocation models' (CP-SAT's proven bound of a
relaxation: also a bound for packable plans); what the packing check changes is counted in the
objective, so the plan's gap includes it. Footprint hosting is a restriction, so it is never
used for the bound. A cell the packing check re-plans and that then hosts every session has its
bound raised to the LP bound of its allocation model with the typed packing relaxation
(`pipeline.plan.relax`: sessions assigned to instance types, per-type capacity), which sees the
fragmentation the aggregate model misses, and that model (narrowed to the types its LP uses) is
one more re-plan candidate (`typed_packing`; cells of joint models, with a previous plan or a warm
tier keep the allocation bound).
"""
from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.env import env_int
from pipeline.common.numeric import EPS, ROUNDING_SLACK, exceeds
from pipeline.common.parallel import cores_available, fork_map
from pipeline.common.schemas import PRIORITIES, RESOURCE_TYPES
from pipeline.plan.allocate import (
    COMPUTE_POOL_RESOURCES,
    Offer,
    OfferKey,
    RegionProblem,
    RegionResult,
    SessionGroup,
    WindowOptions,
    WindowSolution,
    solve_hosting,
    solve_typed,
    solve_window,
)
from pipeline.plan.packing import (
    DIMS,
    PACK_DIMS,
    Rules,
    capacity_matrix,
    dot_product_pack,
    expand_bins,
    ffd_plan,
    hosted_assignment,
    hosting_classes,
    pack,
    packing_result,
    repair,
    session_groups,
    sessions_for_demand,
    shard,
    swap_repair,
)
from pipeline.plan.policy import PlannerConfig
from pipeline.plan.relax import pack_classes
from pipeline.plan.warm_pools import rehome_warm

Cell = tuple[pd.Timestamp, str]  # (window start, region)


@dataclass
class RegionMix:
    """What recent requests to one destination region looked like (concurrency-weighted)."""

    class_share: dict[str, dict[str, float]]  # priority -> resource -> share of resource-seconds
    samples: np.ndarray = field(default_factory=lambda: np.zeros((0, len(DIMS))))  # request sizes (rows over DIMS)
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # duration_s of each sample
    requests: int = 0
    source: str = "default"  # "lake" | "lake, all regions" | "default"

    def share(self, priorities: tuple[str, ...]) -> dict[str, float]:
        return {r: sum(self.class_share.get(p, {}).get(r, 0.0) for p in priorities) for r in RESOURCE_TYPES}


def default_mix(critical_share: float) -> RegionMix:
    half = critical_share / 2
    return RegionMix(class_share={"critical": dict.fromkeys(RESOURCE_TYPES, half), "high": dict.fromkeys(RESOURCE_TYPES, half),
                                  "normal": dict.fromkeys(RESOURCE_TYPES, 1.0 - critical_share), "low": dict.fromkeys(RESOURCE_TYPES, 0.0)})


@dataclass
class PlanningProblem:
    windows: list[pd.Timestamp]
    regions: list[str]
    demand: dict[Cell, dict[str, float]]
    offers: dict[str, list[Offer]]  # the catalog's offers per region (spot rules are applied here)
    pools: dict[str, dict[str, float]]
    mix: dict[str, RegionMix] = field(default_factory=dict)
    c_under: dict[str, float] = field(default_factory=dict)
    c_over: dict[str, float] = field(default_factory=dict)
    # Per-region costs (pipeline.plan.costs) win over the per-resource ones above where given.
    c_under_by_region: dict[str, dict[str, float]] = field(default_factory=dict)
    c_over_by_region: dict[str, dict[str, float]] = field(default_factory=dict)
    previous: dict[Cell, dict[OfferKey, int]] | None = None
    previous_plan_id: str | None = None
    sessions: dict[Cell, np.ndarray] | None = None  # explicit sessions (benchmark); else drawn from `mix`
    warm_demand: dict[Cell, dict[str, float]] = field(default_factory=dict)  # τ_warm quantile (pipeline.plan.warm); empty: one tier
    warm_hold_fraction: float = 0.0  # a warm instance's hourly cost as a share of its on-demand price


@dataclass
class CellPlan:
    """The plan of one region in one window, with everything its explanation needs."""

    window: pd.Timestamp
    region: str
    demand: dict[str, float]
    failover: dict[str, float]
    failover_from: list[tuple[str, dict[str, float]]]
    offers: list[Offer]  # usable offers (spot only where safe), counted capacity applied
    unsafe_spot: dict[str, float]  # instance type -> interruption rate above the limit
    counts: dict[OfferKey, int]
    result: RegionResult
    previous: dict[OfferKey, int] | None
    sessions: int = 0
    groups: list[SessionGroup] = field(default_factory=list)
    packing: dict[str, Any] = field(default_factory=dict)
    repair_added: dict[OfferKey, int] = field(default_factory=dict)
    unhosted_sessions: int = 0
    model_status: str = ""
    model_gap: float = 0.0
    budget_binding: bool = False
    resolved_rounds: int = 0
    model_bound: float | None = None  # the proven bound of the cell's own allocation model (None: a joint model)
    packing_bound: float | None = None  # the typed packing relaxation's bound, where the packing check computed it
    packed_warm: dict[OfferKey, int] | None = None  # warm pools re-homed after the packing check changed the counts

    @property
    def cost(self) -> float:
        price = {o.key: o.hourly_price for o in self.offers}
        return float(sum(price[k] * n for k, n in self.counts.items()))

    @property
    def warm(self) -> dict[OfferKey, int]:
        """Warm instances per on-demand line that still runs instances (a warm pool belongs to its line's group;
        pools of lines the packing check emptied are re-homed: pipeline.plan.warm_pools.rehome_warm)."""
        warm = self.result.warm if self.packed_warm is None else self.packed_warm
        return {k: n for k, n in warm.items() if self.counts.get(k, 0) > 0}


@dataclass
class WindowInfo:
    objective: float
    lower_bound: float
    cost: float
    statuses: list[str]
    models: int
    mode: str  # "per-region" | "joint (relocation)" | "joint (budget)"
    budget_binding: bool = False
    unconstrained_cost: float | None = None


@dataclass
class PlanResult:
    cells: dict[Cell, CellPlan]
    windows: dict[pd.Timestamp, WindowInfo]
    partners: dict[str, tuple[str | None, str]]
    relocations: list[dict]
    shortfalls: list[dict]
    left_to_on_demand: list[dict]
    allocation: dict[str, float] = field(default_factory=dict)  # objective, lower_bound, cost before the packing check
    seconds: dict[str, float] = field(default_factory=dict)  # wall (and `<stage>_cpu`) seconds per stage; never in a manifest

    @property
    def allocation_gap(self) -> float:
        obj = self.allocation.get("objective", 0.0)
        return 0.0 if obj <= 0 else max(obj - self.allocation.get("lower_bound", 0.0), 0.0) / obj

    @property
    def objective(self) -> float:
        return sum(w.objective for w in self.windows.values())

    @property
    def lower_bound(self) -> float:
        return sum(w.lower_bound for w in self.windows.values())

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.cells.values())

    @property
    def gap(self) -> float:
        obj = self.objective
        return 0.0 if obj <= 0 else max(obj - self.lower_bound, 0.0) / obj


def usable_offers(offers: list[Offer], config: PlannerConfig) -> tuple[list[Offer], dict[str, float]]:
    """On-demand offers, and spot offers that are safe (interruption rate within the limit) and cheaper,
    with their counted capacity discounted by the interruption risk."""
    od_price = {o.instance_type: o.hourly_price for o in offers if o.purchase_option == "on_demand"}
    usable, unsafe = [], {}
    for o in offers:
        if o.purchase_option != "spot":
            usable.append(replace(o, counted=1.0))
        elif o.interruption_rate > config.max_spot_interruption_rate:
            unsafe[o.instance_type] = o.interruption_rate
        elif o.hourly_price < od_price.get(o.instance_type, float("inf")) or o.instance_type not in od_price:
            usable.append(replace(o, counted=1.0 - config.spot_risk(o.interruption_rate)))
    return usable, unsafe


def failover_needs(problem: PlanningProblem, config: PlannerConfig, partners: dict[str, tuple[str | None, str]]
                   ) -> tuple[dict[Cell, dict[str, float]], dict[Cell, list[tuple[str, dict[str, float]]]]]:
    """Headroom each region keeps for the regions that fail over to it (N+1: one failure at a time)."""
    need: dict[Cell, dict[str, float]] = {}
    sources: dict[Cell, list[tuple[str, dict[str, float]]]] = {}
    for w in problem.windows:
        for region in problem.regions:
            partner = partners.get(region, (None, ""))[0]
            if partner is None or config.failover_share <= 0:
                continue
            mix = problem.mix.get(region) or default_mix(config.critical_share_default)
            critical = mix.share(config.critical_priorities)
            demand = problem.demand.get((w, region), {})
            wanted = {r: config.failover_share * critical[r] * max(demand.get(r, 0.0), 0.0) for r in RESOURCE_TYPES}
            if not any(v > 0 for v in wanted.values()):
                continue
            cell = (w, partner)
            current = need.setdefault(cell, dict.fromkeys(RESOURCE_TYPES, 0.0))
            for r in RESOURCE_TYPES:
                current[r] = max(current[r], wanted[r])
            sources.setdefault(cell, []).append((region, wanted))
    return need, sources


def _cpu_seconds() -> float:
    """CPU time of this process and of the worker processes it has waited for (each pool is closed
    when its stage ends): unlike wall time, comparable between a busy and an idle machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(frozen=True)
class _DrawJob:
    """The sessions of one region's windows are drawn together (in a worker process when there are many)."""

    region: str
    offers: list[Offer]
    windows: list[tuple[pd.Timestamp, dict[str, float]]]  # (window, demand)
    explicit: list[np.ndarray | None] | None  # given sessions per window (benchmark), else drawn from `mix`
    mix: RegionMix | None
    config: PlannerConfig


def _draw_region(job: _DrawJob) -> list[tuple[np.ndarray, list[SessionGroup]]]:
    """Per window of one region: the sessions its demand stands for (explicit ones, or drawn from the
    request mix), split into workers that fit some type, and the Hall groups the allocation enforces
    (the `hall_groups` most restrictive: sessions only a strict subset of the types can host)."""
    config = job.config
    _, caps = capacity_matrix(job.offers)
    out = []
    for k, (w, demand) in enumerate(job.windows):
        if job.explicit is not None:
            given = job.explicit[k]
            raw = given if given is not None else np.zeros((0, len(PACK_DIMS)))
        elif job.mix is not None:
            raw = sessions_for_demand(job.mix.samples, job.mix.weights, demand, config.max_sessions_per_window, job.region, w.isoformat())
        else:
            raw = np.zeros((0, len(PACK_DIMS)))
        cell_sessions = shard(np.asarray(raw, float).reshape(-1, len(PACK_DIMS)), caps, config.max_session_vcpu)
        groups = session_groups(cell_sessions, job.offers, max_groups=config.hall_groups + 1)  # the all-types group comes last
        groups = [g for g in groups if len(g.hosts) < len(caps)][: config.hall_groups]
        out.append((cell_sessions, groups))
    return out


def _task(args: tuple[list[RegionProblem], WindowOptions]) -> WindowSolution:
    return solve_window(*args)


def _region_task(args: tuple[list[RegionProblem], WindowOptions]) -> list[WindowSolution]:
    """One region's windows in order, one model each. Without a previous plan to start from, each model
    is hinted with the window before's plan (demand moves little from hour to hour, so CP-SAT starts
    near the optimum and its work limit goes to the bound); a model identical to one already solved
    (same inputs but the hint) is not solved again."""
    problems, options = args
    solved: dict[bytes, WindowSolution] = {}
    out: list[WindowSolution] = []
    hint: dict[OfferKey, int] | None = None
    for p in problems:
        key = pickle.dumps((replace(p, hint=None), options), protocol=pickle.HIGHEST_PROTOCOL)
        if key not in solved:
            solved[key] = solve_window([replace(p, hint=hint) if p.previous is None and hint is not None else p], options)
        out.append(solved[key])
        hint = out[-1].regions[p.region].counts
    return out


def parallel_map(fn: Callable, items: list, workers: int) -> list:
    """`map` over forked processes when it pays (pipeline.common.parallel.fork_map); every task is
    deterministic, so results are too."""
    return fork_map(fn, items, workers)


@dataclass
class _PackTask:
    sessions: np.ndarray
    counts: dict[OfferKey, int]
    offers: list[Offer]
    need: dict[str, float]  # counted capacity the plan must keep (what it covers now)
    pool: dict[str, float]
    max_spot_share: float
    on_demand_vcpu_quota: float | None
    spot_vcpu_quota: float | None
    instance_quota: dict[str, int]
    deterministic_time: float
    problem: RegionProblem | None = None  # the cell's allocation model, re-solved with footprint hosting
    options: WindowOptions | None = None
    hosting_candidates: int = 10
    typed_packing: bool = False  # a re-plan also solves the typed packing relaxation (bound and plan)
    model_bound: float | None = None  # the proven bound of the cell's own allocation model

    def rules(self) -> Rules:
        return Rules(need=self.need, pool=self.pool, max_spot_share=self.max_spot_share, on_demand_vcpu_quota=self.on_demand_vcpu_quota,
                     spot_vcpu_quota=self.spot_vcpu_quota, instance_quota=self.instance_quota)


def _hosting_plan(task: _PackTask, rules: Rules) -> tuple[dict[OfferKey, int], np.ndarray] | None:
    """The cell's allocation model re-solved with every session hosted by footprint (`HostingClass`,
    `solve_hosting`): (counts, assignment) when the plan keeps the rules and hosts them all."""
    if task.problem is None or task.options is None:
        return None
    classes, members = hosting_classes(task.sessions, task.offers, task.hosting_candidates)
    if not classes:
        return None
    got = solve_hosting(replace(task.problem, hosting=classes, session_groups=[], hint=None), task.options)
    if not got.counts or not rules.allow(got.counts, {o.key: o for o in task.offers}):
        return None
    home = hosted_assignment(task.sessions, got.counts, task.offers, members, got.hosted)
    if not (home >= 0).all():
        home = dot_product_pack(task.sessions, expand_bins(got.counts, task.offers)[1])
    return (got.counts, home) if (home >= 0).all() else None


Repacked = tuple[dict[OfferKey, int], np.ndarray | None, str]  # counts, assignment (None: pack again), method


def _repack_candidates(task: _PackTask, rules: Rules, unplaced: np.ndarray, typed: Repacked | None,
                       bound: float | None) -> list[Repacked]:
    """Plans that host every session and keep the rules: 0. the cell re-planned with the typed packing
    relaxation (`_typed_plan`), 1. the cell re-planned with footprint hosting — skipped when plan 0 is
    already proven within the solver's relative gap of the cell's bound —, else 2. the cheapest single
    swap/add (only without a re-plan: each try packs the sessions again), and 3. first-fit decreasing
    over the sessions (packable by construction, so a fixed cell never costs more than the baseline)."""
    candidates: list[Repacked] = [typed] if typed is not None else []
    by_key = {o.key: o for o in task.offers}
    floor = max(bound or 0.0, task.model_bound or 0.0)
    close = typed is not None and floor > 0 and _hourly_cost(typed[0], by_key) <= floor * (1.0 + _relative_gap(task))
    hosted = None if close else _hosting_plan(task, rules)
    if hosted is not None:
        candidates.append((*hosted, "hosting_model"))
    elif not close:
        fixed = swap_repair(task.sessions, dict(task.counts), task.offers, rules, unplaced, max_checks=8)
        if fixed is not None:
            candidates.append((fixed, None, "dot_product"))
    baseline, home = ffd_plan(task.sessions, task.offers, task.pool, task.need, {}, task.max_spot_share, with_assignment=True)
    if baseline and (home >= 0).all() and rules.allow(baseline, {o.key: o for o in task.offers}):
        candidates.append((baseline, home, "first_fit_decreasing"))
    return candidates


def _hourly_cost(counts: dict[OfferKey, int], by_key: dict[OfferKey, Offer]) -> float:
    return sum(by_key[k].hourly_price * n for k, n in counts.items())


def _relative_gap(task: _PackTask) -> float:
    return task.options.relative_gap if task.options is not None else 0.0


def _pack_cell(task: _PackTask) -> dict:
    """The packing check of one cell: place the sessions (dot-product heuristics). If some do not fit,
    take the cheapest of the plans that host them all within the rules (`_repack_candidates`); only if
    none does, open instances greedily (`repair`) and name what is left."""
    result = pack(task.sessions, task.counts, task.offers, 0.0)
    if result.ok:
        return {"counts": dict(task.counts), "summary": result.summary(), "unplaced": result.unplaced, "rounds": 0, "added": {}}
    first = result.summary()
    counts = dict(task.counts)
    added: dict[OfferKey, int] = {}
    by_key = {o.key: o for o in task.offers}
    typed, bound = _typed_plan(task, task.rules())
    candidates = _repack_candidates(task, task.rules(), result.unplaced, typed, bound)
    if candidates:  # the cheapest; ties by method name, then by the counts themselves
        counts, home, method = min(candidates, key=lambda c: (_hourly_cost(c[0], by_key), c[2], sorted(c[0].items())))
        result = (packing_result(task.sessions, counts, task.offers, home, method) if home is not None
                  else pack(task.sessions, counts, task.offers, 0.0))
    else:  # nothing hosts everything within the rules: keep what the greedy repair manages
        result = pack(task.sessions, counts, task.offers, task.deterministic_time)
        added, _ = repair(result.unplaced, counts, task.offers, task.pool, task.on_demand_vcpu_quota, task.instance_quota)
        for k, n in added.items():
            counts[k] = counts.get(k, 0) + n
        result = pack(task.sessions, counts, task.offers, task.deterministic_time)
    summary = {**result.summary(), "repacked": True, "repaired": {f"{k[0]}/{k[1]}": n for k, n in sorted(added.items())},
               "before": first}
    return {"counts": counts, "summary": summary, "unplaced": result.unplaced, "rounds": 1, "added": added, "bound": bound}


def _typed_plan(task: _PackTask, rules: Rules) -> tuple[Repacked | None, float | None]:
    """The cell re-planned with the typed packing relaxation (`solve_typed`): (the plan when it keeps the
    rules and the dot-product heuristics host every session on it, a lower bound on the cell's
    allocation objective over plans that host every session). The bound is kept only where the
    reported objective bounds that model's objective at the packed plan: no previous plan (the packing
    stage's changes are counted at their price, not their churn) and no warm tier (a dropped line
    would take its warm pool); `_take_packing` adds: a cell model of its own, every session hosted."""
    p = task.problem
    if not task.typed_packing or p is None or task.options is None:
        return None, None
    classes, members = pack_classes(task.sessions, task.offers)
    if not classes:
        return None, None
    plans, bound = solve_typed(replace(p, packing=classes, hint=None), task.options)
    if p.previous is not None or p.warm_target:
        bound = None
    by_key = {o.key: o for o in task.offers}
    for got in plans:  # the cheapest that keeps the rules and hosts every session
        if not got.counts or not rules.allow(got.counts, by_key):
            continue
        home = hosted_assignment(task.sessions, got.counts, task.offers, members, got.typed)  # each type's sessions on its own
        if not (home >= 0).all():
            home = dot_product_pack(task.sessions, expand_bins(got.counts, task.offers)[1])
        if (home >= 0).all():
            return (got.counts, home, "typed_model"), bound
    return None, bound


class _StageClock:
    """Wall and CPU seconds per stage (`<stage>`, `<stage>_cpu`): reported by the benchmark, never in a manifest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        clock, cpu = time.perf_counter(), _cpu_seconds()
        yield
        self.seconds[name], self.seconds[f"{name}_cpu"] = time.perf_counter() - clock, _cpu_seconds() - cpu


@dataclass
class _Cells:
    """What the stages share: per cell with offers, its plan, its allocation model and its sessions;
    and the shortfalls named so far."""

    plans: dict[Cell, CellPlan] = field(default_factory=dict)
    problems: dict[Cell, RegionProblem] = field(default_factory=dict)
    sessions: dict[Cell, np.ndarray] = field(default_factory=dict)
    shortfalls: list[dict] = field(default_factory=list)


Solved = tuple[list[Cell], WindowSolution]  # the cells of one model, and its answer


@dataclass
class _Windows:
    """Stage 2's outcome: per window the models' totals, and what the plan moves or leaves to on-demand."""

    info: dict[pd.Timestamp, WindowInfo] = field(default_factory=dict)
    relocations: list[dict] = field(default_factory=list)
    left_to_on_demand: list[dict] = field(default_factory=list)

    def totals(self) -> dict[str, float]:
        return {"objective": sum(w.objective for w in self.info.values()), "lower_bound": sum(w.lower_bound for w in self.info.values()),
                "cost": sum(w.cost for w in self.info.values())}


def default_plan_workers() -> int:
    """The cores this process may use (the plan is the same for any number of workers; at 30
    regions two halve the plan's seconds: bench/RESULTS.md)."""
    return cores_available()


def solve_plan(problem: PlanningProblem, config: PlannerConfig, workers: int | None = None) -> PlanResult:
    """Plan every window and region of `problem` (see the module docstring)."""
    workers = workers if workers is not None else env_int("PEERSCALE_PLAN_WORKERS", default_plan_workers())
    clock = _StageClock()
    with clock.stage("prepare"):
        partners = config.partners_for(problem.regions)
        cells = _prepare_cells(problem, config, partners=partners, workers=workers)
    with clock.stage("allocation"):  # stage 1: one CP-SAT model per cell (per window when relocation couples regions)
        options = _window_options(problem, config)
        moves = relocation_pairs(problem.regions, config) if config.relocation_enabled else []
        answers = _allocate(cells, problem=problem, options=options, moves=moves, workers=workers)
    with clock.stage("budget"):  # stage 2: windows above the budget cap are re-planned jointly under it
        windows = _settle_windows(answers, cells, problem=problem, config=config, options=options, moves=moves)
        allocation = windows.totals()
    with clock.stage("packing"):  # stage 3: can the chosen instances host the sessions? Fix what cannot be hosted
        _packing_check(cells, windows, problem=problem, config=config, options=options, moves=moves, workers=workers)
    _name_shortfalls(cells)
    return PlanResult(cells=cells.plans, windows=windows.info, partners=partners, relocations=windows.relocations,
                      shortfalls=cells.shortfalls, left_to_on_demand=windows.left_to_on_demand, allocation=allocation,
                      seconds=clock.seconds)


def _quota_fields(config: PlannerConfig, region: str) -> dict[str, Any]:
    """The region's quotas as the keyword arguments `RegionProblem` and `_PackTask` take."""
    quota = config.quotas.get(region)
    return {"on_demand_vcpu_quota": quota.on_demand_vcpu if quota else None,
            "spot_vcpu_quota": quota.spot_vcpu if quota else None,
            "instance_quota": dict(quota.instances) if quota else {}}


def _prepare_cells(problem: PlanningProblem, config: PlannerConfig, *, partners: dict[str, tuple[str | None, str]],
                   workers: int) -> _Cells:
    """Failover headroom, usable offers and sessions per cell, and each cell's allocation model; a cell
    without offers is a shortfall right away."""
    fail, fail_from = failover_needs(problem, config, partners)
    usable = {r: usable_offers(problem.offers.get(r, []), config) for r in problem.regions}
    demands = {(w, region): {r: max(problem.demand.get((w, region), {}).get(r, 0.0), 0.0) for r in RESOURCE_TYPES}
               for w in problem.windows for region in problem.regions}
    drawn = _draw_sessions(problem, config, usable=usable, demands=demands, workers=workers) if config.packing_check else {}
    cells = _Cells()
    for w in problem.windows:
        for region in problem.regions:
            cell = (w, region)
            demand = demands[cell]
            offers, unsafe = usable[region]
            if not offers:
                cells.shortfalls.extend(_short(w, region, r, amount, "no_offers", "no instance types in the catalog for this region")
                                        for r, amount in demand.items() if amount > 0)
                continue
            cells.sessions[cell], groups = drawn.get(cell, (np.zeros((0, len(PACK_DIMS))), []))
            previous = problem.previous.get(cell) if problem.previous is not None else None
            cells.problems[cell] = _region_problem(problem, config, cell=cell, demand=demand, offers=offers,
                                                   failover=fail.get(cell, {}), groups=groups)
            cells.plans[cell] = CellPlan(
                window=w, region=region, demand=demand, failover=fail.get(cell, {}), failover_from=fail_from.get(cell, []),
                offers=offers, unsafe_spot=unsafe, counts={}, result=RegionResult(counts={}, cost=0.0), previous=previous,
                groups=groups,
            )
    return cells


def _draw_sessions(problem: PlanningProblem, config: PlannerConfig, *, usable: dict[str, tuple[list[Offer], dict[str, float]]],
                   demands: dict[Cell, dict[str, float]], workers: int) -> dict[Cell, tuple[np.ndarray, list[SessionGroup]]]:
    """The sessions each cell's demand stands for and its Hall groups, drawn region by region in parallel."""
    jobs = [_DrawJob(region=region, offers=usable[region][0], windows=[(w, demands[(w, region)]) for w in problem.windows],
                     explicit=[problem.sessions.get((w, region)) for w in problem.windows] if problem.sessions is not None else None,
                     mix=problem.mix.get(region), config=config)
            for region in problem.regions if usable[region][0]]
    drawn: dict[Cell, tuple[np.ndarray, list[SessionGroup]]] = {}
    for job, got in zip(jobs, parallel_map(_draw_region, jobs, workers)):
        drawn.update({(w, job.region): g for w, g in zip(problem.windows, got)})
    return drawn


def _region_problem(problem: PlanningProblem, config: PlannerConfig, *, cell: Cell, demand: dict[str, float], offers: list[Offer],
                    failover: dict[str, float], groups: list[SessionGroup]) -> RegionProblem:
    """One cell's allocation model: demand and headroom, offers, pool, spot share, quotas, the previous
    plan (an empty one when there is a previous plan without this cell), Hall groups, flexible demand."""
    region = cell[1]
    previous = problem.previous.get(cell) if problem.previous is not None else None
    mix = problem.mix.get(region) or default_mix(config.critical_share_default)
    flexible = mix.share(config.flexible_priorities)
    return RegionProblem(
        region=region, demand=demand, offers=offers, pool=dict(problem.pools.get(region, {})),
        failover=failover, max_spot_share=config.spot_share(region), **_quota_fields(config, region),
        previous=(dict(previous) if previous is not None else ({} if problem.previous is not None else None)),
        session_groups=groups,
        flexible={r: demand[r] * flexible[r] for r in RESOURCE_TYPES} if config.relocation_enabled else {},
        warm_target=dict(problem.warm_demand.get(cell, {})), warm_hold_fraction=problem.warm_hold_fraction,
    )


def _window_options(problem: PlanningProblem, config: PlannerConfig) -> WindowOptions:
    """What every allocation model shares: churn (only against a previous plan), budget values, relocation cost, work limits."""
    return WindowOptions(
        churn_penalty=config.churn_penalty if problem.previous is not None else 0.0,
        priority_weights=dict(config.priority_weights),
        unit_value=dict(problem.c_under),
        unit_value_by_region={region: dict(v) for region, v in problem.c_under_by_region.items()},
        relocation_cost={r: config.relocation_cost_fraction * problem.c_over.get(r, 0.0) for r in RESOURCE_TYPES},
        relocation_cost_by_region={region: {r: config.relocation_cost_fraction * v for r, v in per.items()}
                                   for region, per in problem.c_over_by_region.items()},
        deterministic_time=config.solver_deterministic_time,
        relative_gap=config.solver_relative_gap,
    )


def _allocate(cells: _Cells, *, problem: PlanningProblem, options: WindowOptions, moves: list[tuple[str, str]],
              workers: int) -> list[Solved]:
    """Stage 1. Relocation couples the regions of a window: one joint model per window. Otherwise one
    model per cell, a region's windows in order (each hinted by the window before)."""
    if moves:
        per_window = [[(w, r) for r in problem.regions if (w, r) in cells.problems] for w in problem.windows]
        jobs = [([cells.problems[c] for c in in_window], replace(options, relocation=moves)) for in_window in per_window]
        return list(zip(per_window, parallel_map(_task, jobs, workers)))
    by_region = [[(w, r) for w in problem.windows if (w, r) in cells.problems] for r in problem.regions]
    by_region = [cl for cl in by_region if cl]
    solved = parallel_map(_region_task, [([cells.problems[c] for c in cl], options) for cl in by_region], workers)
    return [([c], solution) for cl, region in zip(by_region, solved) for c, solution in zip(cl, region)]


def _settle_windows(answers: list[Solved], cells: _Cells, *, problem: PlanningProblem, config: PlannerConfig,
                    options: WindowOptions, moves: list[tuple[str, str]]) -> _Windows:
    """Stage 2: a window whose plan costs more than the budget cap is re-planned jointly under it; every
    cell takes its model's answer, every window its models' totals."""
    out = _Windows()
    per_window: dict[pd.Timestamp, list[Solved]] = {}
    for cell_list, solution in answers:
        per_window.setdefault(cell_list[0][0], []).append((cell_list, solution))
    for w in problem.windows:
        entries = per_window.get(w, [])
        mode = "joint (relocation)" if moves else "per-region"
        unconstrained = sum(s.cost for _, s in entries)
        if config.budget_usd_per_hour is not None and exceeds(unconstrained, config.budget_usd_per_hour):
            entries = _budget_window(w, entries, cells=cells, problem=problem, config=config, options=options, moves=moves,
                                     left=out.left_to_on_demand)
            mode = "joint (budget)"
        for cell_list, solution in entries:
            _take_answer(cells, cell_list, solution)
            out.relocations.extend({"window": w.isoformat(), **move} for move in solution.relocations)
        out.info[w] = WindowInfo(objective=sum(s.objective for _, s in entries), lower_bound=sum(s.lower_bound for _, s in entries),
                                 cost=sum(s.cost for _, s in entries), statuses=sorted({s.status for _, s in entries}),
                                 models=len(entries), mode=mode, budget_binding=mode == "joint (budget)",
                                 unconstrained_cost=unconstrained)
    return out


def _take_answer(cells: _Cells, cell_list: list[Cell], solution: WindowSolution) -> None:
    for c in cell_list:
        plan = cells.plans[c]
        plan.result = solution.regions[c[1]]
        plan.counts = dict(plan.result.counts)
        plan.model_status = solution.status
        plan.model_gap = 0.0 if solution.objective <= 0 else max(solution.objective - solution.lower_bound, 0) / solution.objective
        plan.model_bound = solution.lower_bound if len(cell_list) == 1 else None


def _budget_window(w: pd.Timestamp, entries: list[Solved], *, cells: _Cells, problem: PlanningProblem, config: PlannerConfig,
                   options: WindowOptions, moves: list[tuple[str, str]], left: list[dict]) -> list[Solved]:
    """Re-plan window `w` jointly under the budget cap; record what is left to on-demand by priority."""
    in_window = [c for cl, _ in entries for c in cl]
    budget_problems = []
    for c in in_window:
        mix = problem.mix.get(c[1]) or default_mix(config.critical_share_default)
        demand = cells.problems[c].demand
        budget_problems.append(replace(cells.problems[c], demand_by_class={
            p: {r: demand[r] * mix.class_share.get(p, {}).get(r, 0.0) for r in RESOURCE_TYPES} for p in PRIORITIES}))
    joint = solve_window(budget_problems, replace(options, budget=config.budget_usd_per_hour, relocation=moves))
    for c in in_window:
        base = next(s for cl, s in entries if c in cl).regions[c[1]]
        got = joint.regions[c[1]]
        cells.plans[c].budget_binding = True
        got.pool_shortfall = dict(base.shortfall)  # what even an unlimited budget leaves
        left.extend(_left_to_on_demand(w, c[1], base=base, got=got, budget=config.budget_usd_per_hour))
    return [(in_window, joint)]


def _left_to_on_demand(w: pd.Timestamp, region: str, *, base: RegionResult, got: RegionResult, budget: float | None) -> list[dict]:
    """What the budget leaves uncovered beyond what the pool already did, split by priority class."""
    out = []
    for r in RESOURCE_TYPES:
        extra = got.shortfall.get(r, 0.0) - base.shortfall.get(r, 0.0)
        by_class = {p: v.get(r, 0.0) for p, v in got.uncovered_by_class.items() if v.get(r, 0.0) > 0}
        total = sum(by_class.values())
        if extra <= ROUNDING_SLACK or total <= 0:
            continue
        for p in PRIORITIES:
            if p in by_class:
                out.append({"window": w.isoformat(), "region": region, "priority": p, "resource_type": r,
                            "quantity": round(extra * by_class[p] / total, 4),
                            "why": f"budget cap ${budget:.2f}/h: pre-allocated by priority value first"})
    return out


def _packing_check(cells: _Cells, windows: _Windows, *, problem: PlanningProblem, config: PlannerConfig, options: WindowOptions,
                   moves: list[tuple[str, str]], workers: int) -> None:
    """Stage 3: pack each cell's sessions on its instances, in parallel; what a fix costs is counted in
    its window's objective, and sessions that still fit nowhere are named as shortfalls."""
    order = [c for c in sorted(cells.plans) if len(cells.sessions.get(c, ())) and cells.plans[c].counts]
    tasks = [_pack_task(c, cells, problem=problem, config=config, options=options, joint=bool(moves)) for c in order]
    for c, task, outcome in zip(order, tasks, parallel_map(_pack_cell, tasks, workers)):
        _take_packing(c, task, outcome, cells=cells, window=windows.info[c[0]], config=config)


def _pack_task(c: Cell, cells: _Cells, *, problem: PlanningProblem, config: PlannerConfig, options: WindowOptions,
               joint: bool) -> _PackTask:
    """A cell's packing check: its sessions and plan, the rules a fix must keep, and its own allocation
    model for the footprint-hosting re-plan (not a joint one: relocation or budget)."""
    plan = cells.plans[c]
    by_key = {o.key: o for o in plan.offers}
    covered = {r: sum(by_key[k].capacity.get(r, 0.0) * by_key[k].counted * n for k, n in plan.counts.items()) for r in RESOURCE_TYPES}
    wanted = {r: plan.demand.get(r, 0.0) + plan.failover.get(r, 0.0) + plan.result.relocated.get(r, 0.0) for r in RESOURCE_TYPES}
    return _PackTask(sessions=cells.sessions[c], counts=plan.counts, offers=plan.offers,
                     need={r: min(wanted[r], covered[r]) for r in RESOURCE_TYPES},
                     pool=problem.pools.get(c[1], {}), max_spot_share=config.spot_share(c[1]), **_quota_fields(config, c[1]),
                     deterministic_time=config.packing_deterministic_time,
                     problem=None if joint or plan.budget_binding else cells.problems[c],
                     options=replace(options, deterministic_time=config.hosting_deterministic_time),
                     hosting_candidates=config.hosting_candidates,
                     typed_packing=config.typed_packing, model_bound=plan.model_bound)


def _take_packing(c: Cell, task: _PackTask, outcome: dict, *, cells: _Cells, window: WindowInfo, config: PlannerConfig) -> None:
    """A cell takes its packing outcome unless, under a binding budget, the fix would break the cap:
    then it keeps its plan and names the sessions it cannot host."""
    plan = cells.plans[c]
    plan.sessions = len(cells.sessions[c])
    price = {o.key: o.hourly_price for o in plan.offers}
    before = plan.cost
    after = float(sum(price[k] * n for k, n in outcome["counts"].items()))
    if plan.budget_binding and exceeds(window.cost + (after - before), config.budget_usd_per_hour or 0.0):
        outcome = {**outcome, "counts": plan.counts, "added": {}}  # the budget cannot pay for hosting them: name them
        outcome["unplaced"] = pack(task.sessions, plan.counts, plan.offers, config.packing_deterministic_time).unplaced
        after = before
    if plan.result.warm and outcome["counts"] != plan.counts:
        plan.packed_warm = rehome_warm(plan.result.warm, plan.counts, outcome["counts"], plan.offers)
    plan.counts = outcome["counts"]
    plan.packing = outcome["summary"]
    plan.repair_added = outcome["added"]
    plan.resolved_rounds = outcome["rounds"]
    window.objective += after - before
    window.cost += after - before
    still = outcome["unplaced"]
    plan.unhosted_sessions = len(still)
    bound = outcome.get("bound")
    if bound is not None and not len(still) and plan.model_bound is not None and not plan.budget_binding:
        plan.packing_bound = bound  # valid for plans that host every session, as this one now does
        window.lower_bound += max(bound - plan.model_bound, 0.0)
    if len(still):
        size = still.sum(axis=0)
        cells.shortfalls.extend(_short(c[0], c[1], r, float(size[j]), "packing",
                                       f"{len(still)} session(s) fit no instance the pool, quotas or budget allow")
                                for j, r in enumerate(PACK_DIMS) if size[j] > EPS and r in COMPUTE_POOL_RESOURCES)


def _name_shortfalls(cells: _Cells) -> None:
    """Demand and failover headroom the plan does not cover, with the reason (a binding budget's share
    is named in left_to_on_demand instead)."""
    for c, plan in sorted(cells.plans.items()):
        res = plan.result
        for r, amount in sorted(res.shortfall.items()):
            if plan.budget_binding:
                pool_part = res.pool_shortfall.get(r, 0.0)
                if pool_part > EPS:
                    cells.shortfalls.append(_short(c[0], c[1], r, pool_part, "pool", "demand quantile exceeds what the pool can provide"))
                continue
            cells.shortfalls.append(_short(c[0], c[1], r, amount, *_shortfall_cause(plan, r)))
        for r, amount in sorted(res.failover_shortfall.items()):
            src = ", ".join(s for s, _ in plan.failover_from)
            cells.shortfalls.append(_short(c[0], c[1], r, amount, "failover", f"cannot keep N+1 headroom for {src} within the pool/quotas"))


def relocation_pairs(regions: list[str], config: PlannerConfig) -> list[tuple[str, str]]:
    pairs = []
    for a in sorted(regions):
        for b in sorted(regions):
            if a != b:
                ms = config.latency(a, b)
                if ms is not None and ms <= config.relocation_max_latency_ms:
                    pairs.append((a, b))
    return pairs


def _short(window: pd.Timestamp, region: str, resource: str, amount: float, kind: str, why: str) -> dict:
    return {"window": window.isoformat(), "region": region, "resource_type": resource, "shortfall": round(float(amount), 4),
            "kind": kind, "why": why}


def _shortfall_cause(plan: CellPlan, resource: str) -> tuple[str, str]:
    if resource in plan.result.pool_shortfall:
        return "pool", "demand quantile exceeds what the region's pool can provide"
    if resource in COMPUTE_POOL_RESOURCES:
        return "pool", "demand quantile exceeds what the region's compute pool (or its quotas) can provide"
    if not any(o.capacity.get(resource, 0.0) > 0 for o in plan.offers):
        return "no_offers", f"no instance type in the region provides {resource}"
    return "pool", "the instances the pool allows cannot provide this much"


__all__ = ["CellPlan", "PlanResult", "PlanningProblem", "RegionMix", "WindowInfo", "default_mix", "failover_needs",
           "parallel_map", "relocation_pairs", "solve_plan", "usable_offers"]
