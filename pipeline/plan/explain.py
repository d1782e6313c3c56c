"""Every plan line's reason: which demand quantile, why this type, why spot or not, which redundancy rule.

`row_reason` writes the `reason` column (one per resource row of a line); `explain_region` is what
`peerscale plan explain REGION` prints: the region's rules, then every line and its reasons.
"""

from __future__ import annotations

import pandas as pd

from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.allocate import Offer, OfferKey
from pipeline.plan.core import CellPlan, PlanResult
from pipeline.plan.policy import PlannerConfig

UNIT = {"vcpu": "vCPU", "memory_gib": "GiB", "storage_gib": "GiB storage", "bandwidth_gbps": "Gbit/s"}


def held(plan: CellPlan, effective: bool = True) -> dict[str, float]:
    by_key = {o.key: o for o in plan.offers}
    return {r: sum(by_key[k].capacity.get(r, 0.0) * (by_key[k].counted if effective else 1.0) * n for k, n in plan.counts.items())
            for r in RESOURCE_TYPES}


def binding_resources(plan: CellPlan) -> list[str]:
    """Resources whose counted capacity is within 5 % of what the region must cover."""
    have = held(plan)
    out = []
    for r in RESOURCE_TYPES:
        need = plan.demand.get(r, 0.0) + plan.failover.get(r, 0.0) + plan.result.relocated.get(r, 0.0)
        need = min(need, need - plan.result.pool_shortfall.get(r, 0.0)) if r in plan.result.pool_shortfall else need
        if need > 0 and have[r] <= need * 1.05 + 1e-9:
            out.append(r)
    return out


def _why_type(plan: CellPlan, offer: Offer, binding: list[str]) -> str:
    hosts = [g for g in plan.groups if offer.instance_type in g.hosts and len(g.hosts) < len({o.instance_type for o in plan.offers})]
    before = plan.result.counts.get(offer.key, 0)
    if plan.packing.get("repacked") and plan.counts.get(offer.key, 0) != before:
        return (f"set by the packing check ({before}→{plan.counts.get(offer.key, 0)}): the least-cost aggregate mix could not "
                f"host {plan.packing.get('before', {}).get('unplaced', '?')} of {plan.sessions} sessions")
    same = {o.instance_type: o for o in plan.offers if o.purchase_option == offer.purchase_option}
    ranks = {}
    for r in RESOURCE_TYPES:
        if offer.capacity.get(r, 0.0) <= 0:
            continue
        order = sorted((o for o in same.values() if o.capacity.get(r, 0.0) > 0),
                       key=lambda o: (o.hourly_price / (o.capacity[r] * o.counted), o.instance_type))
        ranks[r] = ([o.instance_type for o in order].index(offer.instance_type) + 1, len(order))
    if not ranks:
        text = f"part of the least-cost mix CP-SAT found for {', '.join(binding) or 'the demand vector'}"
    else:
        focus = min(ranks, key=lambda r: (ranks[r][0], r not in binding, RESOURCE_TYPES.index(r)))
        rank, of = ranks[focus]
        unit_price = offer.hourly_price / (offer.capacity[focus] * offer.counted)
        text = (f"${unit_price:.4f} per {UNIT[focus]}-h, {'the cheapest' if rank == 1 else f'#{rank} of {of}'} "
                f"{offer.purchase_option.replace('_', '-')} type for {focus}"
                + (f" (binding here: {', '.join(binding)})" if binding else "")
                + ("" if rank == 1 else "; in the least-cost mix for the whole demand vector"))
    if hosts:
        g = hosts[0]
        text += f"; one of {len(g.hosts)} types able to host the {g.sessions} largest session(s)"
    return text


def _why_option(plan: CellPlan, offer: Offer, config: PlannerConfig) -> str:
    by_key = {o.key: o for o in plan.offers}
    raw = held(plan, effective=False)
    spot_vcpu = sum(by_key[k].capacity["vcpu"] * n for k, n in plan.counts.items() if k[1] == "spot")
    share = spot_vcpu / raw["vcpu"] if raw["vcpu"] > 0 else 0.0
    cap = config.spot_share(plan.region)
    if offer.purchase_option == "spot":
        od = by_key.get((offer.instance_type, "on_demand"))
        discount = f", {1 - offer.hourly_price / od.hourly_price:.0%} below on-demand" if od else ""
        return (f"spot at ${offer.hourly_price:.4f}/h{discount}: interruption {offer.interruption_rate:.2%}/h ≤ "
                f"{config.max_spot_interruption_rate:.2%}/h limit, counted at {offer.counted:.1%} of capacity; "
                f"spot is {share:.0%} of the region's vCPU (≤{cap:.0%} allowed)")
    price = f"on-demand at ${offer.hourly_price:.4f}/h"
    if offer.instance_type in plan.unsafe_spot:
        return f"{price}: spot interruption {plan.unsafe_spot[offer.instance_type]:.2%}/h exceeds the {config.max_spot_interruption_rate:.2%}/h safety limit"
    spot = by_key.get((offer.instance_type, "spot"))
    if spot is None:
        return f"{price}: no spot offer cheaper than on-demand for this type"
    smallest_spot = min((o.capacity["vcpu"] for o in plan.offers if o.purchase_option == "spot"), default=0.0)
    if raw["vcpu"] > 0 and spot_vcpu + smallest_spot > cap * raw["vcpu"] + 1e-9:
        return f"{price}: the spot share cap is reached ({share:.0%} of vCPU is spot, ≤{cap:.0%} allowed)"
    quota = config.quotas.get(plan.region)
    if quota and quota.spot_vcpu is not None and spot_vcpu + spot.capacity["vcpu"] > quota.spot_vcpu + 1e-9:
        return f"{price}: the region's spot vCPU quota ({quota.spot_vcpu:g}) is reached"
    if plan.repair_added.get(offer.key):
        return f"{price}: the packing repair buys on demand"
    if plan.packing.get("repacked") and plan.counts.get(offer.key, 0) != plan.result.counts.get(offer.key, 0):
        return f"{price}: chosen by the packing check within the spot share"
    if plan.previous and plan.previous.get(offer.key, 0) > 0:
        return f"{price}: kept from the previous plan (switching to spot would not pay the churn penalty)"
    return f"{price}: more spot would not lower the cost within the share and coverage rules"


def _redundancy(plan: CellPlan, resource: str, partners: dict[str, tuple[str | None, str]], config: PlannerConfig) -> str:
    parts = []
    if plan.failover.get(resource, 0.0) > 0:
        src = max(plan.failover_from, key=lambda s: s[1].get(resource, 0.0))[0] if plan.failover_from else "?"
        parts.append(f"N+1: keeps {plan.failover[resource]:.2f} {resource} headroom for {src} "
                     f"({config.failover_share:.0%} of its {'/'.join(config.critical_priorities)} demand)")
        if resource in plan.result.failover_shortfall:
            parts.append(f"HEADROOM SHORT {plan.result.failover_shortfall[resource]:.2f}")
    partner, how = partners.get(plan.region, (None, ""))
    parts.append(f"fails over to {partner} ({how})" if partner else f"no failover partner ({how})")
    return "; ".join(parts)


def _churn(plan: CellPlan, key: OfferKey, count: int, previous_plan_id: str | None, config: PlannerConfig) -> str:
    if plan.previous is None:
        return "no previous plan"
    before = plan.previous.get(key, 0)
    if before == count:
        return f"unchanged from {previous_plan_id}"
    if before == 0:
        return f"new vs {previous_plan_id} (worth more than its churn penalty, {config.churn_penalty:.0%} of its price)"
    return f"{before}→{count} vs {previous_plan_id} (the change beats the churn penalty, {config.churn_penalty:.0%} of the price per instance changed)"


def row_reason(plan: CellPlan, offer: Offer, count: int, resource: str, quantity: float, tau: float, model: str,
               result: PlanResult, config: PlannerConfig, previous_plan_id: str | None) -> str:
    demand = plan.demand.get(resource, 0.0)
    cover = [f"q{tau:.2f} of {resource} demand = {demand:.2f} ({model} forecast)"]
    if plan.failover.get(resource, 0.0) > 0:
        cover.append(f"+ {plan.failover[resource]:.2f} failover headroom")
    moved = plan.result.relocated.get(resource, 0.0)
    if abs(moved) > 1e-9:
        cover.append(f"{'+' if moved > 0 else '−'} {abs(moved):.2f} relocated flexible demand")
    short = []
    if resource in plan.result.shortfall and not plan.budget_binding:
        short.append(f"SHORTFALL {plan.result.shortfall[resource]:.2f} {resource} beyond the pool")
    if plan.budget_binding:
        short.append("budget cap binds in this window: lower-priority demand left to on-demand (see manifest)")
    packing = ""
    if plan.packing:
        p = plan.packing
        packing = (f"; packing: {p['placed']}/{p['sessions']} sessions placed ({p['method']}), "
                   f"{p['fragmentation'].get('vcpu', 0.0):.0%} of vCPU stranded")
    return (
        f"{plan.region} {plan.window:%Y-%m-%dT%H:%MZ}: {' '.join(cover)}; this line holds {quantity:.2f} "
        f"({quantity * offer.counted:.2f} counted); {count} × {offer.instance_type} — "
        f"{_why_type(plan, offer, binding_resources(plan))}; {_why_option(plan, offer, config)}; "
        f"{_redundancy(plan, resource, result.partners, config)}; churn: {_churn(plan, offer.key, count, previous_plan_id, config)}"
        f"{packing}; CP-SAT {plan.model_status.lower()} (model gap {plan.model_gap:.2%}, region cost ${plan.cost:.4f}/h)"
        + (f"; {'; '.join(short)}" if short else "")
    )


def explain_region(plan: pd.DataFrame, manifest: dict, region: str) -> list[str]:
    """What `peerscale plan explain REGION` prints: the region's rules, then every row's reason."""
    lines: list[str] = []
    redundancy = manifest.get("redundancy", {}).get(region)
    if redundancy:
        partner = redundancy.get("partner")
        lines.append(f"region {region}: fails over to {partner or 'nobody'} ({redundancy.get('partner_rule', '')}); "
                     f"critical share {redundancy.get('critical_share', {}).get('vcpu', 0):.0%} of vCPU demand; "
                     f"absorbs {', '.join(redundancy.get('absorbs', [])) or 'no region'}")
    for s in manifest.get("shortfall", []):
        if s.get("region") == region:
            lines.append(f"SHORTFALL {s['window'][:16]} {s['resource_type']}: {s['shortfall']} ({s.get('kind', '')}: {s['why']})")
    for s in manifest.get("left_to_on_demand", []):
        if s.get("region") == region:
            lines.append(f"left to on-demand {s['window'][:16]} {s['priority']} {s['resource_type']}: {s['quantity']} ({s['why']})")
    for p in manifest.get("packing", []):
        if p.get("region") == region and p.get("unplaced"):
            lines.append(f"packing {p['window'][:16]}: {p['unplaced']} session(s) could not be hosted")
    rows = plan[plan["region"] == region].sort_values(["valid_from", "line_id", "resource_type"])
    lines.extend(f"• {reason}" for reason in rows["reason"])
    return lines


__all__ = ["explain_region", "row_reason"]
