"""Warm pools after the packing check: a re-planned cell keeps the warm capacity its allocation chose.

The allocation model (pipeline.plan.allocate) places warm instances beside on-demand lines; the
packing check (pipeline.plan.core) may then re-plan a cell's instance mix to host its sessions, and
a warm pool cannot outlive its line's Auto Scaling group. This moves such pools instead of dropping them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.allocate import Offer, OfferKey


def rehome_warm(warm: dict[OfferKey, int], before: dict[OfferKey, int], after: dict[OfferKey, int],
                offers: Sequence[Offer]) -> dict[OfferKey, int]:
    """The warm pools after the packing check changed a cell's running counts (`before` → `after`).

    A warm pool belongs to its line's Auto Scaling group, so a line the re-plan empties loses its
    pool. What it held (counted capacity per resource) is re-homed instead of dropped: less what the
    re-plan's extra running capacity already covers (the allocation's constraint is Σ eff·(x + w) ≥
    the τ_warm quantile, running and warm alike), the rest on the one surviving on-demand line that
    holds it cheapest (⌈need / capacity⌉ instances on its binding resource). With no on-demand line
    left, the warm capacity is dropped, as the IaC could not render it.
    """
    by_key = {o.key: o for o in offers}
    kept = {k: n for k, n in warm.items() if n > 0 and after.get(k, 0) > 0}
    lost = {k: n for k, n in warm.items() if n > 0 and after.get(k, 0) <= 0}
    hosts = [o for o in offers if o.purchase_option == "on_demand" and after.get(o.key, 0) > 0]
    if not lost or not hosts:
        return kept

    def held(counts: dict[OfferKey, int], r: str) -> float:
        return sum(by_key[k].capacity.get(r, 0.0) * by_key[k].counted * n for k, n in counts.items() if k in by_key)

    gained = {r: max(held(after, r) - held(before, r), 0.0) for r in RESOURCE_TYPES}
    need = {r: held(lost, r) - gained[r] for r in RESOURCE_TYPES}
    need = {r: v for r, v in need.items() if v > 1e-9}
    if not need:
        return kept

    def instances(o: Offer) -> int | None:
        per = [(v, o.capacity.get(r, 0.0) * o.counted) for r, v in need.items()]
        if any(c <= 0 for _, c in per):
            return None  # this type holds none of a resource the lost pools held
        return max(math.ceil(v / c - 1e-9) for v, c in per)

    options = [(n * o.hourly_price, o.key, n) for o in hosts if (n := instances(o)) is not None]
    if not options:
        return kept
    _, key, n = min(options)
    return {**kept, key: kept.get(key, 0) + n}
