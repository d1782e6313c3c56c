"""A packing relaxation the allocation can carry: typed assignment with dual-feasible functions.

The allocation model covers a cell's aggregate demand; its sessions must also be *packed* onto the
chosen instances, and an aggregate plan often cannot host them (small instances bought for cheap
storage, memory-heavy sessions stranding vCPU). This module turns a cell's sessions into
`PackClass`es: the allocation model then decides, besides instance counts x_t per type, how many
sessions y_ct of each class go to each type, under

    Σ_t y_ct + left_c = n_c                               every session on some type (or left, priced)
    Σ_c f(s_cd / C_td)·y_ct ≤ X_t   for every type t, packed resource d, and f ∈ DFF_LEVELS

where X_t is the number of instances of type t, C_td its capacity and s_cd the class's size.

Why this is a relaxation (so the model's proven bound is a lower bound for every plan that hosts
its sessions). Take any plan that packs every session onto its instances, and let y_ct count the
sessions of class c it puts on type t. Each instance of type t holds sessions whose sizes s_id sum
to at most C_td in every resource d (vector packing is packing in each resource). A dual-feasible
function f: [0, 1] → [0, 1] is one with Σ_i f(a_i) ≤ 1 whenever Σ_i a_i ≤ 1 (Fekete & Schepers
2001); applying it to the sessions of one instance gives Σ_i f(s_id / C_td) ≤ 1, and summing over
the X_t instances gives the constraint above. The class size s_cd is at most each member's size and
f is non-decreasing, so replacing members by their class can only lower the left-hand side; values
are rounded down to thousandths, which lowers it further. The identity is a DFF (the per-type
capacity constraint); so is Fekete–Schepers' u^(k)(x) = x if (k+1)·x is an integer, else
⌊(k+1)·x⌋ / k, for every integer k ≥ 1 — u^(1) says "sessions above half an instance each need
their own", u^(2) counts sessions in (1/3, 2/3) as half an instance. A session is allowed only on
types it fits, which every real placement respects. Hence every packable plan (with its y) is
feasible for the model and the bound holds. The converse is not true: a plan meeting the
constraints may still fail to pack (the relaxation is not exact), so the packing check stays.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.common.numeric import EPS
from pipeline.plan.allocate import FOOTPRINT_SCALE, Offer, PackClass
from pipeline.plan.packing import PACK_DIMS, capacity_matrix

# 0: the identity; k ≥ 1: Fekete–Schepers u^(k). The planner uses the identity alone: on the benchmark's
# sessions (at most 8 vCPU, a small share of most instances) u^(1) and u^(2) raised no cell's bound and
# cost 15 % more LP time; they stay available (`pack_classes(levels=...)`) for sessions of instance size.
DFF_LEVELS: tuple[int, ...] = (0,)
BANDWIDTH_BUCKET_OCTAVES = 2  # sessions whose bandwidth differs by less than 4× may share a class (at the smaller)
NOISE = 1e-9  # sizes are lowered by this before a DFF is applied (float noise never raises a value)


def dff(x: float, k: int) -> float:
    """The DFF of level `k` at x ∈ [0, 1], evaluated just below x (non-decreasing, so never above f(x))."""
    y = min(max(x - NOISE, 0.0), 1.0)
    if k == 0:
        return y
    return math.floor((k + 1) * y) / k


def dff_row(size: np.ndarray, cap: np.ndarray, levels: tuple[int, ...] = DFF_LEVELS) -> tuple[int, ...]:
    """One class's values on one type, in thousandths rounded down: per packed resource, per level."""
    return tuple(int(v) for v in dff_values(size[None, :], cap[None, :], levels)[0, 0])


def dff_values(sizes: np.ndarray, caps: np.ndarray, levels: tuple[int, ...] = DFF_LEVELS) -> np.ndarray:
    """`dff` for every class (rows of `sizes`) on every type (rows of `caps`), in thousandths rounded down:
    an integer array class × type × (resource, level), resources outer. A resource a type lacks counts 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(caps[None, :, :] > 0, sizes[:, None, :] / np.where(caps > 0, caps, 1.0)[None, :, :], 0.0)
    y = np.clip(x - NOISE, 0.0, 1.0)
    per_level = [y if k == 0 else np.floor((k + 1) * y) / k for k in levels]  # each: class × type × resource
    stacked = np.stack(per_level, axis=-1)  # class × type × resource × level
    return np.floor(FOOTPRINT_SCALE * stacked).astype(np.int64).reshape(len(sizes), len(caps), -1)


def _class_keys(sessions: np.ndarray) -> list[tuple[float, float, int]]:
    """(vCPU, memory, bandwidth bucket) per session: the first two exact, bandwidth by `BANDWIDTH_BUCKET_OCTAVES`."""
    bw = np.maximum(sessions[:, 2], 1e-6)
    buckets = np.floor(np.log2(bw) / BANDWIDTH_BUCKET_OCTAVES).astype(int)
    return [(round(float(v), 6), round(float(m), 6), int(b)) for v, m, b in zip(sessions[:, 0], sessions[:, 1], buckets)]


def pack_classes(sessions: np.ndarray, offers: list[Offer], levels: tuple[int, ...] = DFF_LEVELS
                 ) -> tuple[list[PackClass], list[np.ndarray]]:
    """The cell's sessions (rows over PACK_DIMS) as `PackClass`es, and each class's row indices.

    A class's size is the per-resource minimum of its members (a relaxation, see the module
    docstring); it may go on every type its size fits. Sessions that fit no type are left out
    (the packing check names them)."""
    names, caps = capacity_matrix(offers)
    if len(sessions) == 0 or not names:
        return [], []
    rows_of: dict[tuple[float, float, int], list[int]] = {}
    for i, key in enumerate(_class_keys(sessions)):
        rows_of.setdefault(key, []).append(i)
    keys = sorted(rows_of, key=lambda k: (-k[0], -k[1], -k[2]))
    groups = [np.array(rows_of[k]) for k in keys]
    sizes = np.array([sessions[rows].min(axis=0) for rows in groups])
    fits: np.ndarray = np.asarray((sizes[:, None, :] <= caps[None, :, :] + EPS).all(axis=2))  # class × type
    values = dff_values(sizes, caps, levels).tolist()
    classes, members = [], []
    for c, rows in enumerate(groups):
        if not fits[c].any():
            continue
        classes.append(PackClass(sessions=len(rows), vcpu=float(sessions[rows, 0].max()), size=tuple(sizes[c].tolist()),
                                 dff={names[t]: tuple(values[c][t]) for t in np.flatnonzero(fits[c]).tolist()}))
        members.append(rows)
    return classes, members


__all__ = ["DFF_LEVELS", "PACK_DIMS", "dff", "dff_row", "dff_values", "pack_classes"]
