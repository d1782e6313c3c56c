"""Can the chosen instances actually host the sessions? Vector bin packing, checks and baselines.

The allocation model covers a region's *aggregate* demand vector; sessions are indivisible, so a
plan can cover the total and still fail to place them (a 64-GiB session needs an instance with
64 GiB free). This module

- turns the τ-quantile demand into the sessions it stands for (`sessions_for_demand`: recent
  request sizes, duration-weighted, filling the demand vector), splitting a session larger than
  every instance type of the region into equal shards (a peering gateway scales out);
- derives the Hall-type groups the allocation model enforces up front (`session_groups`);
- packs sessions onto the chosen instances (`pack`): the dot-product heuristics of Panigrahy et
  al. (2011), then, if sessions are left and it is asked to, a CP-SAT assignment model hinted with
  the heuristics' packing; it reports the share of capacity left unusable (fragmentation);
- groups sessions by footprint for the packing stage's re-plan (`hosting_classes`) and turns its
  answer into a placement (`hosted_assignment`);
- repairs a plan that cannot host its sessions (`swap_repair`, `repair`), and provides the
  first-fit-decreasing baseline the benchmark compares against (`ffd_plan`) and a 1-D bin-packing
  solver (`solve_bin_packing`) for the classic triplet instances.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
from ortools.sat.python import cp_model

from pipeline.common.numeric import EPS, ROUNDING_SLACK, exceeds
from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.allocate import QTY_SCALE, HostingClass, Offer, OfferKey, SessionGroup

DIMS = RESOURCE_TYPES  # request samples and demand: all four resources
# What a session needs on the instance hosting it. Storage is not packed: EBS volumes (the
# catalog's bundled gp3 storage) are network-attached and sized per session, so storage is
# covered in aggregate against the region's pool, not per instance.
PACK_DIMS: tuple[str, ...] = ("vcpu", "memory_gib", "bandwidth_gbps")
PACK_INDEX = [DIMS.index(d) for d in PACK_DIMS]
MAX_SHARDS = 64
NONZERO = 1e-12  # floor of a capacity or total that sizes are normalised by (it may be 0)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def capacity_matrix(offers: list[Offer]) -> tuple[list[str], np.ndarray]:
    """Distinct instance types of `offers` and their capacity vectors (rows follow PACK_DIMS)."""
    types: dict[str, np.ndarray] = {}
    for o in offers:
        types.setdefault(o.instance_type, np.array([o.capacity.get(d, 0.0) for d in PACK_DIMS], float))
    names = sorted(types)
    return names, np.array([types[n] for n in names]).reshape(len(names), len(PACK_DIMS))


def shard(sizes: np.ndarray, type_caps: np.ndarray, max_vcpu: float | None = None) -> np.ndarray:
    """Split sessions into equal shards (workers): at most `max_vcpu` vCPU each, and small enough
    for some instance type to hold one. Memory and bandwidth split in proportion."""
    if len(sizes) == 0 or len(type_caps) == 0:
        return sizes.reshape(-1, len(PACK_DIMS))
    out = []
    for s in sizes:
        first = max(1, math.ceil(s[0] / max_vcpu - EPS)) if max_vcpu and s[0] > 0 else 1
        for k in range(first, MAX_SHARDS + 1):
            if (type_caps >= s / k - EPS).all(axis=1).any():
                out.extend([s / k] * k)
                break
        else:
            out.append(s)  # fits nowhere even split 64 ways: left for the packing check to name
    return np.array(out, float).reshape(-1, len(PACK_DIMS))


def sessions_for_demand(samples: np.ndarray, weights: np.ndarray, demand: dict[str, float], max_sessions: int,
                        *seed_parts: object) -> np.ndarray:
    """Sessions (rows over PACK_DIMS) drawn from `samples` (rows over DIMS, ∝ `weights`) whose total
    stays within `demand` in every resource.

    Deterministic for the same inputs and `seed_parts`. Draws stop after 64 draws in a row that
    would overshoot the demand in some resource, or at `max_sessions`.
    """
    target = np.array([max(demand.get(d, 0.0), 0.0) for d in DIMS])
    if len(samples) == 0 or target[0] <= 0:
        return np.zeros((0, len(PACK_DIMS)))
    p = np.asarray(weights, float)
    p = p / p.sum() if p.sum() > 0 else np.full(len(samples), 1.0 / len(samples))
    rng = np.random.default_rng(_seed(*seed_parts))
    draws = rng.choice(len(samples), size=max(64, 8 * max_sessions), p=p)
    samples = np.asarray(samples, float)
    limit = [t + EPS for t in target.tolist()]
    total = [0.0] * len(DIMS)
    chosen: list[list[float]] = []
    misses = 0
    for start in range(0, len(draws), 256):  # plain floats, a chunk at a time: the loop runs per draw
        for s in samples[draws[start:start + 256]].tolist():
            if all(a + b <= c for a, b, c in zip(total, s, limit)):
                chosen.append(s)
                total = [a + b for a, b in zip(total, s)]
                misses = 0
                if len(chosen) >= max_sessions:
                    break
            else:
                misses += 1
                if misses >= 64:
                    break
        else:
            continue
        break
    return np.array(chosen, float).reshape(-1, len(DIMS))[:, PACK_INDEX]


def usable_capacity(caps: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """What sessions shaped like `sessions` can use of each type (rows of `caps`): in dimension d at
    most cap_d, and at most cap_d' × the largest d/d' ratio of any session — a type with 32 GiB and
    2 vCPU hosts at most 2 × (GiB per vCPU of the most memory-hungry session). Valid for any packing."""
    usable = caps.copy()
    if len(sessions) == 0:
        return usable
    for d in range(caps.shape[1]):
        for e in range(caps.shape[1]):
            if d == e:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(sessions[:, e] > 0, sessions[:, d] / np.where(sessions[:, e] > 0, sessions[:, e], 1.0), np.inf)
            if np.isfinite(ratio).all():
                usable[:, d] = np.minimum(usable[:, d], caps[:, e] * ratio.max())
    return usable


def session_groups(sessions: np.ndarray, offers: list[Offer], max_groups: int = 8) -> list[SessionGroup]:
    """Hall-type groups: for each set of types that can host some session (and for all types), the
    sessions only those types can host, their summed size, and what each host type can use of its
    capacity for sessions of that shape (`usable_capacity`)."""
    names, caps = capacity_matrix(offers)
    if len(sessions) == 0 or not names:
        return []
    fits = np.all(caps[None, :, :] >= sessions[:, None, :] - EPS, axis=2)  # session × type
    hosted = fits.any(axis=1)
    host_sets = {tuple(row): None for row in np.unique(fits[hosted], axis=0).tolist()}
    host_sets[(True,) * len(names)] = None
    candidates = []
    for row in host_sets:
        allowed = np.array(row, bool)
        mask = hosted & ~(fits & ~allowed).any(axis=1)  # sessions whose every host is in the set
        if mask.any():
            hosts = frozenset(n for n, ok in zip(names, row) if ok)
            candidates.append((len(hosts), -float(sessions[mask, 0].sum()), ",".join(sorted(hosts)), hosts, mask))
    # Keep the most restrictive groups (fewest hosts, then most demand); the all-types group last.
    candidates.sort(key=lambda c: c[:3])
    if len(candidates) > max_groups:
        candidates = candidates[: max_groups - 1] + candidates[-1:]
    groups = []
    for _, _, label, hosts, mask in candidates:
        mine = sessions[mask]
        required, smallest = mine.sum(axis=0), mine.min(axis=0)
        usable = usable_capacity(caps, mine)
        groups.append(SessionGroup(hosts=hosts, required={d: float(required[j]) for j, d in enumerate(PACK_DIMS)},
                                   sessions=int(mask.sum()), label=label,
                                   smallest={d: float(smallest[j]) for j, d in enumerate(PACK_DIMS)},
                                   usable={n: {d: float(usable[t, j]) for j, d in enumerate(PACK_DIMS)}
                                           for t, n in enumerate(names) if n in hosts}))
    return groups


def hosting_classes(sessions: np.ndarray, offers: list[Offer], candidates: int = 6, grid: int = 64
                    ) -> tuple[list[HostingClass], list[np.ndarray]]:
    """Sessions grouped for the packing stage's model (`HostingClass`), and each class's row indices
    into `sessions`.

    A session's footprint on a type is its largest share of any resource of one instance, rounded up
    to 1/`grid`; sessions with the same footprints on every type form a class (few classes: sizes
    repeat, and bandwidth matters only where it binds). Each class may use the `candidates` types
    where one of its sessions is cheapest (footprint × the type's cheaper purchase option), larger
    types first on ties.
    """
    names, caps = capacity_matrix(offers)
    if len(sessions) == 0 or not names:
        return [], []
    price: dict[str, float] = {}
    for o in offers:
        price[o.instance_type] = min(price.get(o.instance_type, math.inf), o.hourly_price)
    cheapest = np.array([price[n] for n in names])
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(caps[None, :, :] > 0, sessions[:, None, :] / np.where(caps > 0, caps, 1.0)[None, :, :],
                         np.where(sessions[:, None, :] > 0, np.inf, 0.0)).max(axis=2)  # session × type
    units = np.where(share <= 1.0 + EPS, np.ceil(np.minimum(share, 1.0) * grid - ROUNDING_SLACK), grid + 1).astype(int)
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(map(tuple, units.tolist())):
        rows_of.setdefault(key, []).append(i)
    classes, members = [], []
    for key in sorted(rows_of, key=lambda k: (-sum(k), k)):
        rows = np.array(rows_of[key])
        foot = np.array(key, float) / grid
        allowed = [t for t in np.lexsort((-caps[:, 0], foot * cheapest)) if foot[t] <= 1.0][:candidates]
        if not allowed:
            continue  # fits no type: the packing check names these sessions
        classes.append(HostingClass(sessions=len(rows), vcpu=float(sessions[rows, 0].max()),
                                    footprint={names[t]: float(foot[t]) for t in allowed}))
        members.append(rows)
    return classes, members


def hosted_assignment(sessions: np.ndarray, counts: dict[OfferKey, int], offers: list[Offer], members: list[np.ndarray],
                      hosted: list[dict[str, int]]) -> np.ndarray:
    """Bin index per session (in `expand_bins` order, −1: unplaced) from the hosting model's answer
    (sessions of each class per type): each type's sessions first-fit decreasing onto its own instances."""
    keys, bins = expand_bins(counts, offers)
    assignment = np.full(len(sessions), -1, int)
    by_type: dict[str, list[int]] = {}
    for rows, per_type in zip(members, hosted):
        start = 0
        for itype, n in sorted(per_type.items()):
            by_type.setdefault(itype, []).extend(int(i) for i in rows[start:start + n])
            start += n
    for itype, type_rows in by_type.items():
        own = np.array([b for b, k in enumerate(keys) if k[0] == itype], int)
        if len(own) == 0:
            continue
        rows_a = np.array(type_rows, int)
        got = _first_fit_decreasing(sessions[rows_a], bins[own])
        assignment[rows_a[got >= 0]] = own[got[got >= 0]]
    return assignment


@dataclass
class PackingResult:
    sessions: int
    placed: int
    unplaced: np.ndarray  # sizes of sessions left over (rows over PACK_DIMS)
    method: str  # "dot_product" | "dot_product+cp_sat" | "none"
    fragmentation: dict[str, float]  # share of capacity stranded (bins that cannot host a median session)
    utilisation: dict[str, float]
    cp_sat_status: str | None = None
    assignment: list[int] = field(default_factory=list)  # bin index per session (-1: unplaced)

    @property
    def ok(self) -> bool:
        return len(self.unplaced) == 0

    def summary(self) -> dict:
        return {
            "sessions": self.sessions,
            "placed": self.placed,
            "unplaced": len(self.unplaced),
            "method": self.method,
            "cp_sat_status": self.cp_sat_status,
            "fragmentation": {k: round(v, 4) for k, v in self.fragmentation.items()},
            "utilisation": {k: round(v, 4) for k, v in self.utilisation.items()},
        }


def expand_bins(counts: dict[OfferKey, int], offers: list[Offer]) -> tuple[list[OfferKey], np.ndarray]:
    by_key = {o.key: o for o in offers}
    keys: list[OfferKey] = []
    for key in sorted(counts):
        keys.extend([key] * counts[key])
    caps = np.array([[by_key[k].capacity.get(d, 0.0) for d in PACK_DIMS] for k in keys], float).reshape(len(keys), len(PACK_DIMS))
    return keys, caps


def _bin_centric(sessions: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Bin-centric DotProduct (Panigrahy et al. 2011): fill bins largest first, each time with the
    fitting session whose size (normalised by the bin) best aligns with the bin's free space."""
    n = len(sessions)
    assignment = np.full(n, -1, int)
    order = np.lexsort((np.arange(len(bins)), -(bins / np.maximum(bins.max(axis=0), NONZERO)).sum(axis=1)))
    free_items = np.ones(n, bool)
    for b in order:
        cap = bins[b]
        scale = np.where(cap > 0, cap, 1.0)
        residual = cap.copy()
        while free_items.any():
            fits = free_items & (sessions <= residual + EPS).all(axis=1)
            if not fits.any():
                break
            score = np.where(fits, (sessions / scale) @ (residual / scale), -np.inf)
            i = int(np.argmax(score))  # ties: lowest index (deterministic)
            assignment[i] = b
            free_items[i] = False
            residual -= sessions[i]
    return assignment


def _item_centric(sessions: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Item-centric dot product: largest sessions first, each into the bin whose free space, after
    placing it, is smallest along the session's direction (best fit by normalised dot product)."""
    scale = np.maximum(bins.max(axis=0), NONZERO)
    order = np.lexsort((np.arange(len(sessions)), -(sessions / scale).sum(axis=1)))
    residual = bins.copy()
    assignment = np.full(len(sessions), -1, int)
    for i in order:
        s = sessions[i]
        fits = (residual >= s - EPS).all(axis=1)
        if not fits.any():
            continue
        after = (residual - s) / scale
        score = np.where(fits, after @ (s / scale) + 1e-3 * after.sum(axis=1), np.inf)
        b = int(np.argmin(score))
        assignment[i] = b
        residual[b] -= s
    return assignment


def _first_fit_decreasing(sessions: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Largest sessions first (normalised size), each into the first bin with room, bins in the
    order FFD opens them (largest first)."""
    scale = np.maximum(bins.max(axis=0), NONZERO)
    order = np.lexsort((np.arange(len(sessions)), -(sessions / scale).sum(axis=1)))
    bin_order = np.lexsort((np.arange(len(bins)), -(bins / scale).sum(axis=1)))
    residual = bins.copy()
    assignment = np.full(len(sessions), -1, int)
    for i in order:
        fits = (residual[bin_order] >= sessions[i] - EPS).all(axis=1)
        if fits.any():
            b = int(bin_order[int(np.argmax(fits))])
            assignment[i] = b
            residual[b] -= sessions[i]
    return assignment


def dot_product_pack(sessions: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Sessions → bin index (−1: unplaced): the item-centric and bin-centric dot-product heuristics,
    with first-fit decreasing as a third opinion; the first that places everything, else the best."""
    if len(sessions) == 0 or len(bins) == 0:
        return np.full(len(sessions), -1, int)
    tried = []
    for heuristic in (_item_centric, _bin_centric, _first_fit_decreasing):
        got = heuristic(sessions, bins)
        if (got >= 0).all():
            return got
        tried.append(got)
    return max(tried, key=lambda got: (got >= 0).sum())  # the first that places the most


def _cp_sat_pack(sessions: np.ndarray, bins: np.ndarray, hint: np.ndarray, deterministic_time: float) -> tuple[np.ndarray, str]:
    """Maximise the (normalised) size placed; hinted with the heuristic's assignment."""
    model = cp_model.CpModel()
    total = np.maximum(sessions.sum(axis=0), NONZERO)
    weight = np.rint((sessions / total).sum(axis=1) * 1e6).astype(int) + 1
    scaled_s = np.ceil(sessions * QTY_SCALE - ROUNDING_SLACK).astype(int)
    scaled_b = np.floor(bins * QTY_SCALE + ROUNDING_SLACK).astype(int)
    a: dict[tuple[int, int], cp_model.IntVar] = {}
    for i in range(len(sessions)):
        for b in range(len(bins)):
            if (scaled_s[i] <= scaled_b[b]).all():
                a[(i, b)] = model.new_bool_var(f"a_{i}_{b}")
    for i in range(len(sessions)):
        row = [v for (j, _), v in a.items() if j == i]
        if row:
            model.add_at_most_one(row)
    for b in range(len(bins)):
        col = [(i, v) for (i, c), v in a.items() if c == b]
        for d in range(len(PACK_DIMS)):
            if col:
                model.add(sum(int(scaled_s[i, d]) * v for i, v in col) <= int(scaled_b[b, d]))
    for (i, b), v in a.items():
        model.add_hint(v, int(hint[i] == b))
    model.maximize(sum(int(weight[i]) * v for (i, _), v in a.items()))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_deterministic_time = deterministic_time
    status = solver.solve(model)
    out = hint.copy()
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        out = np.full(len(sessions), -1, int)
        for (i, b), v in a.items():
            if solver.value(v):
                out[i] = b
    return out, solver.status_name(status)


def _fragmentation(sessions: np.ndarray, bins: np.ndarray, assignment: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    if len(bins) == 0:
        return dict.fromkeys(PACK_DIMS, 0.0), dict.fromkeys(PACK_DIMS, 0.0)
    used = np.zeros_like(bins)
    for i, b in enumerate(assignment):
        if b >= 0:
            used[b] += sessions[i]
    residual = bins - used
    typical = np.median(sessions, axis=0) if len(sessions) else np.zeros(len(PACK_DIMS))
    stranded = ~(residual >= typical - EPS).all(axis=1)  # bins that cannot take one more median session
    total = np.maximum(bins.sum(axis=0), NONZERO)
    frag = (residual * stranded[:, None]).sum(axis=0) / total
    util = used.sum(axis=0) / total
    return ({d: float(frag[j]) if bins[:, j].sum() > 0 else 0.0 for j, d in enumerate(PACK_DIMS)},
            {d: float(util[j]) if bins[:, j].sum() > 0 else 0.0 for j, d in enumerate(PACK_DIMS)})


def packing_result(sessions: np.ndarray, counts: dict[OfferKey, int], offers: list[Offer], assignment: np.ndarray,
                   method: str, status: str | None = None) -> PackingResult:
    _, bins = expand_bins(counts, offers)
    assignment = np.asarray(assignment, int)
    frag, util = _fragmentation(sessions, bins, assignment)
    return PackingResult(
        sessions=len(sessions), placed=int((assignment >= 0).sum()), unplaced=sessions[assignment < 0].reshape(-1, len(PACK_DIMS)),
        method=method, fragmentation=frag, utilisation=util, cp_sat_status=status, assignment=assignment.tolist(),
    )


def pack(sessions: np.ndarray, counts: dict[OfferKey, int], offers: list[Offer], deterministic_time: float = 1.0) -> PackingResult:
    """Place `sessions` on the instances `counts` buys: dot-product first, CP-SAT (hinted with the
    heuristic's packing, `deterministic_time` of work; 0 skips it) if sessions are left."""
    _, bins = expand_bins(counts, offers)
    if len(sessions) == 0:
        return packing_result(sessions, counts, offers, np.zeros(0, int), "none")
    assignment = dot_product_pack(sessions, bins)
    method, status = "dot_product", None
    if (assignment < 0).any() and len(bins) and deterministic_time > 0:
        improved, status = _cp_sat_pack(sessions, bins, assignment, deterministic_time)
        if (improved >= 0).sum() >= (assignment >= 0).sum():
            assignment = improved
        method = "dot_product+cp_sat"
    return packing_result(sessions, counts, offers, assignment, method, status)


def repair(unplaced: np.ndarray, counts: dict[OfferKey, int], offers: list[Offer], pool: dict[str, float],
           on_demand_vcpu_quota: float | None = None, instance_quota: dict[str, int] | None = None
           ) -> tuple[dict[OfferKey, int], np.ndarray]:
    """Open on-demand instances for sessions the plan cannot host: first fit into instances opened
    here, else the cheapest on-demand type that holds the session and still fits the pool and quotas.
    Returns (instances added, sessions still unplaced)."""
    by_key = {o.key: o for o in offers}
    held = {r: sum(by_key[k].capacity.get(r, 0.0) * n for k, n in counts.items()) for r in ("vcpu", "memory_gib")}
    od_vcpu = sum(by_key[k].capacity["vcpu"] * n for k, n in counts.items() if k[1] != "spot")
    per_type: dict[str, int] = {}
    for (itype, _), n in counts.items():
        per_type[itype] = per_type.get(itype, 0) + n
    candidates = sorted((o for o in offers if o.purchase_option == "on_demand"), key=lambda o: (o.hourly_price, o.instance_type))
    added: dict[OfferKey, int] = {}
    opened: list[tuple[OfferKey, np.ndarray]] = []
    left = []
    for s in sorted(unplaced.tolist(), key=lambda v: (-sum(v), v)):
        s = np.array(s)
        for i, (key, residual) in enumerate(opened):
            if (s <= residual + EPS).all():
                opened[i] = (key, residual - s)
                break
        else:
            for o in candidates:
                cap = np.array([o.capacity.get(d, 0.0) for d in PACK_DIMS])
                if not (s <= cap + EPS).all():
                    continue
                if any(r in pool and exceeds(held[r] + o.capacity.get(r, 0.0), pool[r]) for r in held):
                    continue
                if on_demand_vcpu_quota is not None and exceeds(od_vcpu + o.capacity["vcpu"], on_demand_vcpu_quota):
                    continue
                type_limit = instance_quota.get(o.instance_type) if instance_quota else None
                if type_limit is not None and per_type.get(o.instance_type, 0) + 1 > type_limit:
                    continue
                opened.append((o.key, cap - s))
                added[o.key] = added.get(o.key, 0) + 1
                for r in held:
                    held[r] += o.capacity.get(r, 0.0)
                od_vcpu += o.capacity["vcpu"]
                per_type[o.instance_type] = per_type.get(o.instance_type, 0) + 1
                break
            else:
                left.append(s)
    return added, np.array(left, float).reshape(-1, len(PACK_DIMS))


@dataclass
class Rules:
    """What every changed plan must still satisfy: counted capacity ≥ need, pools, spot share, quotas."""

    need: dict[str, float]
    pool: dict[str, float]
    max_spot_share: float
    on_demand_vcpu_quota: float | None = None
    spot_vcpu_quota: float | None = None
    instance_quota: dict[str, int] = field(default_factory=dict)

    def allow(self, counts: dict[OfferKey, int], by_key: dict[OfferKey, Offer]) -> bool:
        raw = dict.fromkeys(RESOURCE_TYPES, 0.0)
        eff = dict.fromkeys(RESOURCE_TYPES, 0.0)
        spot = od = 0.0
        per_type: dict[str, int] = {}
        for k, n in counts.items():
            o = by_key[k]
            for r in RESOURCE_TYPES:
                raw[r] += o.capacity.get(r, 0.0) * n
                eff[r] += o.capacity.get(r, 0.0) * o.counted * n
            if k[1] == "spot":
                spot += o.capacity["vcpu"] * n
            else:
                od += o.capacity["vcpu"] * n
            per_type[k[0]] = per_type.get(k[0], 0) + n
        if any(eff[r] < amount - ROUNDING_SLACK for r, amount in self.need.items()):
            return False
        if any(r in self.pool and raw[r] > self.pool[r] + ROUNDING_SLACK for r in ("vcpu", "memory_gib")):
            return False
        if spot > self.max_spot_share * raw["vcpu"] + ROUNDING_SLACK:
            return False
        if self.on_demand_vcpu_quota is not None and od > self.on_demand_vcpu_quota + ROUNDING_SLACK:
            return False
        if self.spot_vcpu_quota is not None and spot > self.spot_vcpu_quota + ROUNDING_SLACK:
            return False
        return all(per_type.get(t, 0) <= n for t, n in self.instance_quota.items())


def _packs(sessions: np.ndarray, counts: dict[OfferKey, int], offers: list[Offer]) -> bool:
    _, bins = expand_bins(counts, offers)
    return bool((dot_product_pack(sessions, bins) >= 0).all())


def swap_repair(sessions: np.ndarray, counts: dict[OfferKey, int], offers: list[Offer], rules: Rules,
                unplaced: np.ndarray | None = None, max_checks: int = 30) -> dict[OfferKey, int] | None:
    """The cheapest single move — add one instance, or replace one instance by another type (one that
    could hold an `unplaced` session) — after which the dot-product heuristic hosts every session and
    the rules still hold (None if none of the `max_checks` cheapest allowed moves works)."""
    by_key = {o.key: o for o in offers}
    moves: list[tuple[float, tuple, dict[OfferKey, int]]] = []
    for b in offers:
        if unplaced is not None and len(unplaced):
            cap = np.array([b.capacity.get(d, 0.0) for d in PACK_DIMS])
            if not (unplaced <= cap + EPS).all(axis=1).any():
                continue
        moves.append((b.hourly_price, ("+", b.key), {b.key: 1}))
        for a in sorted(counts):
            if counts[a] > 0 and a != b.key:
                moves.append((b.hourly_price - by_key[a].hourly_price, (a, b.key), {a: -1, b.key: 1}))
    moves.sort(key=lambda m: (m[0], repr(m[1])))
    checked = 0
    for _, _, change in moves:
        candidate = dict(counts)
        for k, d in change.items():
            candidate[k] = candidate.get(k, 0) + d
        candidate = {k: n for k, n in candidate.items() if n > 0}
        if not rules.allow(candidate, by_key):
            continue
        checked += 1
        if _packs(sessions, candidate, offers):
            return candidate
        if checked >= max_checks:
            break
    return None


# ------------------------------------------------------------------------------------------------
# Baseline: first-fit decreasing, as a simple provisioning tool would do it
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FfdTypes:
    """The on-demand types first-fit decreasing buys, by instance type: capacity over DIMS, the
    normalisation it ranks sizes by, and the raw vCPU/memory the pool allows."""

    on_demand: list[Offer]
    caps: dict[str, np.ndarray]
    scale: np.ndarray
    pool_cap: np.ndarray

    def fits_pool(self, raw: np.ndarray, itype: str) -> bool:
        return bool((raw + self.caps[itype] <= self.pool_cap + EPS).all())

    def held(self, counts: dict[str, int]) -> np.ndarray:
        return sum((self.caps[t] * n for t, n in counts.items()), np.zeros(len(DIMS)))


@dataclass
class _FfdBins:
    """Instances first-fit decreasing opened: (type, residual over PACK_DIMS) each, the bin of every
    session (−1: none), and the raw capacity bought so far (over DIMS, against the pool)."""

    bins: list[tuple[str, np.ndarray]]
    home: np.ndarray
    raw: np.ndarray

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for itype, _ in self.bins:
            counts[itype] = counts.get(itype, 0) + 1
        return counts


@overload
def ffd_plan(sessions: np.ndarray, offers: list[Offer], pool: dict[str, float], demand: dict[str, float],
             failover: dict[str, float] | None = None, max_spot_share: float = 0.3,
             with_assignment: Literal[False] = False) -> dict[OfferKey, int]: ...


@overload
def ffd_plan(sessions: np.ndarray, offers: list[Offer], pool: dict[str, float], demand: dict[str, float],
             failover: dict[str, float] | None = None, max_spot_share: float = 0.3, *,
             with_assignment: Literal[True]) -> tuple[dict[OfferKey, int], np.ndarray]: ...


def ffd_plan(sessions: np.ndarray, offers: list[Offer], pool: dict[str, float], demand: dict[str, float],
             failover: dict[str, float] | None = None, max_spot_share: float = 0.3, with_assignment: bool = False
             ) -> dict[OfferKey, int] | tuple[dict[OfferKey, int], np.ndarray]:
    """First-fit decreasing over sessions (largest normalised size first, into the first open instance
    with room, else a new instance of the on-demand type with the most normalised capacity per dollar
    that holds it), then the best-value type until demand + failover headroom are covered in every
    resource, then the biggest savings moved to spot within the spot share while coverage holds.
    With `with_assignment`, also the instance index (in `expand_bins` order) hosting each session."""
    on_demand = sorted((o for o in offers if o.purchase_option == "on_demand"), key=lambda o: o.instance_type)
    if not on_demand:
        return ({}, np.full(len(sessions), -1, int)) if with_assignment else {}
    caps = {o.instance_type: np.array([o.capacity.get(d, 0.0) for d in DIMS]) for o in on_demand}
    types = _FfdTypes(on_demand=on_demand, caps=caps, scale=np.maximum(np.max(list(caps.values()), axis=0), NONZERO),
                      pool_cap=np.array([pool.get(d, np.inf) if d in ("vcpu", "memory_gib") else np.inf for d in DIMS]))
    opened = _ffd_open(sessions, types)
    counts = opened.counts()
    need = _ffd_need(demand, failover or {}, pool)
    _ffd_top_up(counts, opened.raw, need=need, types=types)
    final = _ffd_to_spot(counts, need=need, types=types, offers=offers, max_spot_share=max_spot_share)
    if not with_assignment:
        return final
    return final, _ffd_assignment(final, offers, opened)


def _ffd_open(sessions: np.ndarray, types: _FfdTypes) -> _FfdBins:
    """Each session (largest normalised size first) into the first open instance with room, else into a
    new instance of the best-value type that holds it within the pool."""
    value = {o.instance_type: (types.caps[o.instance_type] / types.scale).sum() / o.hourly_price for o in types.on_demand}
    packed = {t: c[PACK_INDEX] for t, c in types.caps.items()}
    pscale = types.scale[PACK_INDEX]
    order = sorted(range(len(sessions)), key=lambda i: (-(sessions[i] / pscale).sum(), i))
    opened = _FfdBins(bins=[], home=np.full(len(sessions), -1, int), raw=np.zeros(len(DIMS)))
    # every open bin's residual in one array: the first bin with room is one vectorised test per session
    residual = np.empty((max(len(sessions), 1), len(PACK_INDEX)))
    itypes: list[str] = []
    for i in order:
        s = sessions[i]
        room = np.flatnonzero((s <= residual[:len(itypes)] + EPS).all(axis=1))
        if len(room):
            j = int(room[0])
            residual[j] -= s
            opened.home[i] = j
            continue
        fitting = [o for o in types.on_demand
                   if (s <= packed[o.instance_type] + EPS).all() and types.fits_pool(opened.raw, o.instance_type)]
        if fitting:
            best = max(fitting, key=lambda o: (value[o.instance_type], o.instance_type))
            residual[len(itypes)] = packed[best.instance_type] - s
            itypes.append(best.instance_type)
            opened.home[i] = len(itypes) - 1
            opened.raw += types.caps[best.instance_type]
    opened.bins.extend((itype, residual[j].copy()) for j, itype in enumerate(itypes))
    return opened


def _ffd_need(demand: dict[str, float], failover: dict[str, float], pool: dict[str, float]) -> np.ndarray:
    """Demand + failover headroom over DIMS; storage and bandwidth no more than their pool."""
    need = np.array([max(demand.get(d, 0.0), 0.0) + max(failover.get(d, 0.0), 0.0) for d in DIMS])
    cover_cap = np.array([pool.get(d, np.inf) for d in DIMS])
    return np.minimum(need, np.where(np.isin(DIMS, ("storage_gib", "bandwidth_gbps")), cover_cap, np.inf))


def _ffd_top_up(counts: dict[str, int], raw: np.ndarray, *, need: np.ndarray, types: _FfdTypes) -> None:
    """Add the type with the most normalised deficit covered per dollar until `need` is covered (or the pool is full)."""
    while (deficit := need - types.held(counts)).max() > EPS:
        options = [o for o in types.on_demand if types.fits_pool(raw, o.instance_type)]
        if not options:
            break
        gain = {o.instance_type: (np.minimum(types.caps[o.instance_type], np.maximum(deficit, 0)) / types.scale).sum() / o.hourly_price
                for o in options}
        best = max(options, key=lambda o: (gain[o.instance_type], o.instance_type))
        if gain[best.instance_type] <= 0:
            break
        counts[best.instance_type] = counts.get(best.instance_type, 0) + 1
        raw += types.caps[best.instance_type]


def _ffd_to_spot(counts: dict[str, int], *, need: np.ndarray, types: _FfdTypes, offers: list[Offer],
                 max_spot_share: float) -> dict[OfferKey, int]:
    """On-demand instances moved to spot, biggest saving first, while spot vCPU stays within the share
    and the risk-discounted capacity still covers `need`."""
    caps = types.caps
    result: dict[OfferKey, int] = {(t, "on_demand"): n for t, n in counts.items() if n}
    spot = {o.instance_type: o for o in offers if o.purchase_option == "spot"}
    od_price = {o.instance_type: o.hourly_price for o in types.on_demand}
    total_vcpu = sum(caps[t][0] * n for t, n in counts.items())
    spot_vcpu = 0.0
    eff = types.held(counts)
    for itype in sorted(counts, key=lambda t: (-(od_price[t] - spot[t].hourly_price) if t in spot else 0.0, t)):
        if itype not in spot or spot[itype].hourly_price >= od_price[itype]:
            continue
        loss = caps[itype] * (1.0 - spot[itype].counted)
        while result.get((itype, "on_demand"), 0) > 0:
            if spot_vcpu + caps[itype][0] > max_spot_share * total_vcpu + EPS:
                break
            if ((eff - loss) < need - EPS).any():
                break
            result[(itype, "on_demand")] -= 1
            result[(itype, "spot")] = result.get((itype, "spot"), 0) + 1
            spot_vcpu += caps[itype][0]
            eff = eff - loss
    return {k: n for k, n in result.items() if n > 0}


def _ffd_assignment(final: dict[OfferKey, int], offers: list[Offer], opened: _FfdBins) -> np.ndarray:
    """Instances of one type are interchangeable: the k-th FFD bin of a type is its k-th instance in `expand_bins` order."""
    slot: dict[str, list[int]] = {}
    for index, key in enumerate(expand_bins(final, offers)[0]):
        slot.setdefault(key[0], []).append(index)
    seen: dict[str, int] = {}
    ffd_to_slot = []
    for itype, _ in opened.bins:
        ffd_to_slot.append(slot[itype][seen.get(itype, 0)])
        seen[itype] = seen.get(itype, 0) + 1
    return np.array([ffd_to_slot[h] if h >= 0 else -1 for h in opened.home], int)


def plan_cost(counts: dict[OfferKey, int], offers: list[Offer]) -> float:
    price = {o.key: o.hourly_price for o in offers}
    return float(sum(price[k] * n for k, n in counts.items()))


# ------------------------------------------------------------------------------------------------
# Classic 1-D bin packing (the benchmark's triplet instances)
# ------------------------------------------------------------------------------------------------


def first_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        for b, load in enumerate(loads):
            if load + sizes[i] <= capacity:
                bins[b].append(i)
                loads[b] += sizes[i]
                break
        else:
            bins.append([i])
            loads.append(sizes[i])
    return bins


@dataclass
class BinPackingResult:
    bins: int
    lower_bound: int
    status: str
    ffd_bins: int

    @property
    def proven_optimal(self) -> bool:
        return self.bins == self.lower_bound


def _bin_model(s: list[int], capacity: int, nb: int, lower: int, exact: bool) -> tuple[cp_model.CpModel, list]:
    n = len(s)
    model = cp_model.CpModel()
    x = {(i, b): model.new_bool_var(f"x_{i}_{b}") for i in range(n) for b in range(min(i + 1, nb))}
    used = [model.new_bool_var(f"used_{b}") for b in range(nb)]
    for i in range(n):
        model.add_exactly_one(x[(i, b)] for b in range(min(i + 1, nb)))
    for b in range(nb):
        load = sum(s[i] * x[(i, b)] for i in range(b, n))
        if exact:
            model.add(load == capacity)
        else:
            model.add(load <= capacity * used[b])
        if b + 1 < nb:
            model.add(used[b] >= used[b + 1])
        if b < lower:
            model.add(used[b] == 1)
    model.minimize(sum(used))
    return model, used


def _full_patterns(s: list[int], capacity: int, limit: int = 200_000) -> dict[tuple[int, ...], None] | None:
    """Every multiset of item sizes that fills a bin exactly (as sorted size tuples), when bins hold
    at most four items; None when they could hold more or there are too many patterns."""
    counts: dict[int, int] = {}
    for v in s:
        counts[v] = counts.get(v, 0) + 1
    sizes = sorted(counts, reverse=True)
    smallest = sorted(s)
    max_items = 0
    while max_items < len(smallest) and sum(smallest[: max_items + 1]) <= capacity:
        max_items += 1
    if not sizes or max_items > 4:
        return None
    out: dict[tuple[int, ...], None] = {}

    def dfs(start: int, room: int, chosen: list[int]) -> bool:
        if room == 0:
            out[tuple(chosen)] = None
            return len(out) <= limit
        if len(chosen) == max_items or room < smallest[0]:
            return True
        for j in range(start, len(sizes)):
            v = sizes[j]
            if v > room or chosen.count(v) >= counts[v]:
                continue
            chosen.append(v)
            ok = dfs(j, room - v, chosen)
            chosen.pop()
            if not ok:
                return False
        return True

    return out if dfs(0, capacity, []) else None


def _partition_model(s: list[int], patterns: dict[tuple[int, ...], None]) -> cp_model.CpModel:
    """Perfect packing as set partitioning over size multisets (bin_packing_sat.py's item-copies
    idea): integer copies of each full-bin pattern, every size used exactly as often as it occurs."""
    counts: dict[int, int] = {}
    for v in s:
        counts[v] = counts.get(v, 0) + 1
    model = cp_model.CpModel()
    holding: dict[int, list] = {v: [] for v in counts}
    for k, pattern in enumerate(patterns):
        most = min(counts[v] // pattern.count(v) for v in set(pattern))
        y = model.new_int_var(0, most, f"p_{k}")
        for v in set(pattern):
            holding[v].append(pattern.count(v) * y)
    for v, terms in holding.items():
        if not terms:
            model.add_bool_or([])  # a size that is in no full bin: no perfect packing
        else:
            model.add(sum(terms) == counts[v])
    return model


def solve_bin_packing(sizes: list[int], capacity: int, time_limit_s: float = 2.0, workers: int = 1) -> BinPackingResult:
    """Minimum number of bins (CP-SAT), with the bin-count lower bound ⌈Σ sizes / capacity⌉.

    The model (OR-Tools' bin_packing_sat.py style) assigns items to fewer bins than FFD used; bins
    are used in order and item i may only go to bins ≤ i (items sorted by decreasing size), which
    removes the bin permutation symmetry. When Σ sizes fills the lower-bound number of bins exactly,
    the question "is there a perfect packing?" is asked first — as set partitioning over every
    exactly-full bin when bins hold at most three items (always the case for triplet instances),
    else with every load fixed to the capacity; a packing found there is optimal, and infeasibility
    raises the bound by one.
    """
    lower = max(1, math.ceil(sum(sizes) / capacity))
    ffd = first_fit_decreasing(sizes, capacity)
    if len(ffd) == lower:
        return BinPackingResult(len(ffd), lower, "OPTIMAL", len(ffd))
    s = sorted(sizes, reverse=True)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    solver.parameters.max_time_in_seconds = time_limit_s
    if sum(s) == lower * capacity:
        patterns = _full_patterns(s, capacity)
        model = _bin_model(s, capacity, lower, lower, exact=True)[0] if patterns is None else _partition_model(s, patterns)
        status = solver.solve(model)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return BinPackingResult(lower, lower, "OPTIMAL", len(ffd))
        if status != cp_model.INFEASIBLE:
            return BinPackingResult(len(ffd), lower, solver.status_name(status), len(ffd))
        lower += 1
        if len(ffd) == lower:
            return BinPackingResult(len(ffd), lower, "OPTIMAL", len(ffd))
    model, _ = _bin_model(s, capacity, len(ffd) - 1, lower, exact=False)
    status = solver.solve(model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        bound = max(lower, math.ceil(solver.best_objective_bound - EPS))
        return BinPackingResult(round(solver.objective_value), bound, solver.status_name(status), len(ffd))
    if status == cp_model.INFEASIBLE:  # nothing better than FFD exists
        return BinPackingResult(len(ffd), len(ffd), "OPTIMAL", len(ffd))
    return BinPackingResult(len(ffd), lower, solver.status_name(status), len(ffd))


__all__ = [
    "BinPackingResult",
    "PackingResult",
    "Rules",
    "dot_product_pack",
    "ffd_plan",
    "first_fit_decreasing",
    "hosted_assignment",
    "hosting_classes",
    "pack",
    "packing_result",
    "plan_cost",
    "repair",
    "session_groups",
    "sessions_for_demand",
    "shard",
    "solve_bin_packing",
    "swap_repair",
]
