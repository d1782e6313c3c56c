"""Every plan line's reason: which demand quantile, why this type, why spot or not, which redundancy rule.

`row_reason` writes the `reason` column (one per resource row of a line, so most of a line's
reason repeats across its resource rows and its windows). `explain_region` is what `peerscale
plan explain REGION` shows: it splits the stored reasons back into their clauses (`split_reason`)
and returns each clause once, with the windows, lines and resources it applies to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.common.numeric import EPS
from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.allocate import Offer, OfferKey
from pipeline.plan.core import CellPlan, PlanResult
from pipeline.plan.policy import PlannerConfig

BINDING_FACTOR = 1.05  # a resource binds when what is held is within 5 % of what must be covered
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
        if need > 0 and have[r] <= need * BINDING_FACTOR + EPS:
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
        return (f"{price}: spot interruption {plan.unsafe_spot[offer.instance_type]:.2%}/h exceeds the "
                f"{config.max_spot_interruption_rate:.2%}/h safety limit")
    spot = by_key.get((offer.instance_type, "spot"))
    if spot is None:
        return f"{price}: no spot offer cheaper than on-demand for this type"
    smallest_spot = min((o.capacity["vcpu"] for o in plan.offers if o.purchase_option == "spot"), default=0.0)
    if raw["vcpu"] > 0 and spot_vcpu + smallest_spot > cap * raw["vcpu"] + EPS:
        return f"{price}: the spot share cap is reached ({share:.0%} of vCPU is spot, ≤{cap:.0%} allowed)"
    quota = config.quotas.get(plan.region)
    if quota and quota.spot_vcpu is not None and spot_vcpu + spot.capacity["vcpu"] > quota.spot_vcpu + EPS:
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
    return (f"{before}→{count} vs {previous_plan_id} (the change beats the churn penalty, "
            f"{config.churn_penalty:.0%} of the price per instance changed)")


def row_reason(plan: CellPlan, offer: Offer, count: int, resource: str, quantity: float, tau: float, model: str,
               result: PlanResult, config: PlannerConfig, previous_plan_id: str | None) -> str:
    demand = plan.demand.get(resource, 0.0)
    cover = [f"q{tau:.2f} of {resource} demand = {demand:.2f} ({model} forecast)"]
    if plan.failover.get(resource, 0.0) > 0:
        cover.append(f"+ {plan.failover[resource]:.2f} failover headroom")
    moved = plan.result.relocated.get(resource, 0.0)
    if abs(moved) > EPS:
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


# -- reading reasons back: `peerscale plan explain` -------------------------------------------

# The clauses of a `row_reason` text, in the order it writes them. The topics are what
# `explain_region` groups by; a reason that does not parse (an older format) is kept whole.
TOPICS = ("demand", "failover", "zones", "instance type", "purchase option", "churn", "packing", "solver", "shortfall", "reason")
LINE_TOPICS = frozenset({"zones", "instance type", "purchase option", "churn", "reason"})  # facts about a line, not a window
_REASON = re.compile(
    r"^(?P<region>\S+) (?P<window>\S+): (?P<demand>.*?); this line holds [^;]*?; \d+ × (?P<itype>\S+) — (?P<middle>.*)"
    r"; churn: (?P<churn>.*?)(?:; packing: (?P<packing>[^;]*))?; (?P<solver>CP-SAT [^;]*?\))(?:; (?P<shortfall>.*))?$"
)
_MIDDLE = re.compile(
    r"^(?P<type>.*?); (?P<option>(?:spot|on-demand) at \$.*?); (?P<failover>(?:N\+1: |fails over to |no failover partner).*)$"
)


def split_reason(reason: str) -> list[tuple[str, str]]:
    """A `row_reason` text as (topic, clause) pairs, without the row's own numbers (region,
    window, quantity held): what is left repeats across the rows it applies to."""
    whole = _REASON.match(reason)
    middle = _MIDDLE.match(whole["middle"]) if whole else None
    if whole is None or middle is None:
        return [("reason", reason)]
    parts = [("demand", whole["demand"]), ("instance type", middle["type"]), ("purchase option", middle["option"])]
    parts += [("failover", clause) for clause in middle["failover"].split("; ")]
    parts += [("churn", whole["churn"])]
    if whole["packing"]:
        parts.append(("packing", whole["packing"]))
    parts.append(("solver", whole["solver"]))
    if whole["shortfall"]:
        parts += [("shortfall", clause) for clause in whole["shortfall"].split("; ")]
    return parts


@dataclass(frozen=True)
class ReasonGroup:
    """One clause of the region's reasons, once, with where it applies."""

    topic: str
    text: str
    windows: tuple[str, ...]  # window starts, ISO-8601 UTC
    lines: tuple[str, ...]  # "<instance type> <purchase option>"
    resources: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "text": self.text, "windows": list(self.windows), "lines": list(self.lines),
                "resources": list(self.resources)}


@dataclass(frozen=True)
class RegionExplanation:
    """What `peerscale plan explain REGION` shows: the region's rules, its instances per window,
    and each reason once. Iterating gives the text lines (what the CLI prints)."""

    plan_id: str
    region: str
    windows: tuple[str, ...]  # every window of the plan, ISO-8601 UTC
    rules: tuple[str, ...]  # region-wide facts from the manifest: failover partner, shortfalls, packing
    instances: dict[str, dict[str, int]]  # line → window → instance count
    reasons: tuple[ReasonGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "region": self.region, "windows": list(self.windows), "rules": list(self.rules),
                "instances": self.instances, "reasons": [g.to_dict() for g in self.reasons]}

    def text_lines(self) -> list[str]:
        """Plain text: header and rules, the instance table, then the reasons by topic."""
        label = _window_labeller(self.windows)
        out = [f"plan {self.plan_id} · region {self.region} · {len(self.windows)} window(s) from {self.windows[0]}"
               if self.windows else f"plan {self.plan_id} · region {self.region} · no windows"]
        out += list(self.rules)
        if self.instances:
            width = max(len(line) for line in self.instances)
            out += ["", f"instances per window ({' '.join(label(w) for w in self.windows)}):"]
            out += [f"  {line:<{width}}  {' '.join(f'{counts.get(w, 0):>{len(label(w))}}' for w in self.windows)}"
                    for line, counts in self.instances.items()]
        for topic in TOPICS:
            groups = [g for g in self.reasons if g.topic == topic]
            if groups:
                out += ["", f"{topic}:"]
                out += [f"  • {g.text}  [{self._scope(g, label)}]" for g in groups]
        return out

    def _scope(self, group: ReasonGroup, label: Callable[[str], str]) -> str:
        windows = "all windows" if group.windows == self.windows else _runs(self.windows, group.windows, label)
        if group.topic not in LINE_TOPICS:
            return windows
        lines = "all lines" if len(group.lines) == len(self.instances) else ", ".join(group.lines)
        return f"{lines} · {windows}"

    def __iter__(self) -> Iterator[str]:
        return iter(self.text_lines())


def explain_region(plan: pd.DataFrame, manifest: dict, region: str) -> RegionExplanation:
    """The region's rules from the manifest, then each reason clause of its plan rows once."""
    rows = plan[plan["region"] == region].sort_values(["valid_from", "line_id", "resource_type"])
    windows = tuple(_iso(w) for w in sorted(plan["valid_from"].unique()))
    instances: dict[str, dict[str, int]] = {}
    scopes: dict[tuple[str, str], tuple[set[str], set[str], set[str]]] = {}
    for row in rows.itertuples(index=False):
        line, window = f"{row.instance_type} {row.purchase_option}", _iso(row.valid_from)
        instances.setdefault(line, {})[window] = int(row.count)
        for topic, text in [*split_reason(str(row.reason)), *zone_clause(row)]:
            where = scopes.setdefault((topic, text), (set(), set(), set()))
            where[0].add(window)
            where[1].add(line)
            where[2].add(str(row.resource_type))
    groups = sorted((ReasonGroup(topic, text, tuple(sorted(w)), tuple(sorted(ln)), _in_resource_order(res))
                     for (topic, text), (w, ln, res) in scopes.items()), key=_reading_order)
    plan_id = str(manifest.get("plan_id") or (plan["plan_id"].iloc[0] if "plan_id" in plan and len(plan) else ""))
    return RegionExplanation(plan_id=plan_id, region=region, windows=windows, rules=tuple(_region_rules(manifest, region)),
                             instances=dict(sorted(instances.items())), reasons=tuple(groups))


def zone_clause(row: Any) -> list[tuple[str, str]]:
    """The line's zones as a ("zones", text) clause, from the plan's `zone_counts` (pipeline.plan.zones)."""
    text = getattr(row, "zone_counts", None)
    if not isinstance(text, str) or not text:
        return []
    zones = json.loads(text)
    spare = int(getattr(row, "zone_spare_count", 0) or 0)
    where = " · ".join(f"{zone} {n}" for zone, n in sorted(zones.items()))
    if spare <= 0 or len(zones) < 2:
        return [("zones", f"{int(row.count)} instance(s) in {where}")]
    return [("zones", f"{where}: {int(row.count)} planned + {spare} zone headroom, so losing any one zone leaves {int(row.count)}")]


def _zone_rule(manifest: dict, region: str) -> list[str]:
    """The region's zones, why, and what their N+1 headroom costs (manifest `zones`)."""
    entry = (manifest.get("zones") or {}).get("by_region", {}).get(region)
    if not entry:
        return []
    zones = ", ".join(entry.get("zones") or []) or f"{region}a (unnamed)"
    headroom = (f"; N+1 across zones: +{entry.get('spare_instances_first_window', 0)} instance(s) in the first window, "
                f"${entry.get('hourly_cost_zone_headroom', 0.0):.2f} over the plan's windows" if entry.get("n_plus_one") else "")
    over = [b for b in (manifest.get("zones") or {}).get("beyond_pool", []) if b.get("region") == region]
    beyond = (f"; WITH ITS ZONE HEADROOM the region exceeds its {over[0]['resource_type']} pool in {len(over)} window-resource(s) "
              f"(e.g. {over[0]['window'][:16]}: {over[0]['planned']} + {over[0]['zone_headroom']} > {over[0]['pool']})" if over else "")
    return [f"zones {zones} — {entry.get('reason', '')}{headroom}{beyond}"]


def _reading_order(group: ReasonGroup) -> tuple:
    """By topic; a line's reasons together (line topics), else window by window in resource order."""
    topic = TOPICS.index(group.topic)
    if group.topic in LINE_TOPICS:
        return (topic, group.lines, group.windows, group.text)
    first = RESOURCE_TYPES.index(group.resources[0]) if len(group.resources) == 1 and group.resources[0] in RESOURCE_TYPES else -1
    return (topic, group.windows, first, group.text)


def _region_rules(manifest: dict, region: str) -> list[str]:
    """Region-wide facts the manifest records: failover partner, shortfalls, demand left to on-demand, unhosted sessions."""
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
    return lines + _zone_rule(manifest, region)


def _iso(value: Any) -> str:
    """A window start as `2026-01-29T00:00Z` (plan times are UTC)."""
    ts = pd.Timestamp(value)
    return (ts.tz_convert("UTC") if ts.tzinfo else ts).strftime("%Y-%m-%dT%H:%MZ")


def _in_resource_order(resources: set[str]) -> tuple[str, ...]:
    return tuple(r for r in RESOURCE_TYPES if r in resources) + tuple(sorted(resources - set(RESOURCE_TYPES)))


def _window_labeller(windows: tuple[str, ...]) -> Callable[[str], str]:
    """Short window labels for text: `HH:MMZ` when every window is on one day, else the full start."""
    one_day = len({w[:10] for w in windows}) <= 1
    return (lambda w: w[11:]) if one_day else (lambda w: w)


def _runs(every: tuple[str, ...], chosen: tuple[str, ...], label: Callable[[str], str]) -> str:
    """`00:00Z–02:00Z, 04:00Z`: the chosen windows as runs of consecutive plan windows."""
    index = {w: i for i, w in enumerate(every)}
    positions = sorted(index[w] for w in chosen if w in index)
    runs: list[list[int]] = []
    for i in positions:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(label(every[r[0]]) if len(r) == 1 else f"{label(every[r[0]])}–{label(every[r[-1]])}" for r in runs)


__all__ = ["ReasonGroup", "RegionExplanation", "explain_region", "row_reason", "split_reason"]
