"""The costs behind τ, per region and resource: derived from the catalog, then configuration on top.

τ = c_under / (c_under + c_over) is the service level the plan buys, so the two costs are money and
must be the operator's, not constants. Layers, later wins:

1. **the catalog** (defaults): `c_over` is the on-demand price of one idle unit-hour in the region.
   An instance's hourly price is split over its resources in the proportions of the reference unit
   prices (`CostModel`'s built-in `c_over`), and the region's level is the median over its instance
   types — so a region whose instances cost 20 % more gets a 20 % higher `c_over`, while the
   ratios between vCPU, memory, storage and bandwidth stay those of the reference. `c_under` is
   what a missed unit costs: the on-demand unit price plus a cold-start penalty of
   `cold_start_penalty_multiple` times it; by default the multiple keeps the reference's ratio
   (c_under / c_over − 1 ≈ 8, τ ≈ 0.9), so only the price level varies by region.
2. **`inventory/planner.json`**, key `costs` (see `data_samples/inventory/README.md`);
3. **`PEERSCALE_C_UNDER` / `PEERSCALE_C_OVER`** and `peerscale run --c-under/--c-over`.

`costs.warm` (the warm tier: enabled, hold_fraction, start_penalty_multiple) is read by
`pipeline.plan.warm`, layered the same way (PEERSCALE_WARM, `--warm`).

Each layer is a `CostLayer`: per-resource values for every region, per-region values that win over
them, and optionally the penalty multiple. The manifest records the resolved values and the layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipeline.common.config import CostModel
from pipeline.common.schemas import REGION_PATTERN, RESOURCE_TYPES

CATALOG_COLUMNS = {"vcpu": "vcpu", "memory_gib": "memory_gib", "storage_gib": "storage_gib", "bandwidth_gbps": "network_gbps"}
COST_KINDS = ("c_under", "c_over")


@dataclass(frozen=True)
class CostLayer:
    """One source of cost settings: {kind: {resource: USD per unit-hour}} for all regions and per region."""

    source: str
    everywhere: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> resource -> value
    regions: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # region -> kind -> resource -> value
    cold_start_penalty_multiple: float | None = None

    def is_empty(self) -> bool:
        return not self.everywhere and not self.regions and self.cold_start_penalty_multiple is None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **self.everywhere, "regions": self.regions,
                "cold_start_penalty_multiple": self.cold_start_penalty_multiple}


def _cost_value(where: str, value: object) -> float:
    """A positive, finite USD per unit-hour; ValueError saying where otherwise."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number (USD per unit-hour)") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{where}: {value!r} must be a positive, finite USD per unit-hour")
    return number


def _resource_values(where: str, values: object) -> dict[str, float]:
    if not isinstance(values, dict):
        raise ValueError(f"{where} must map resource type -> USD per unit-hour, e.g. {{\"vcpu\": 0.43}}")
    unknown = sorted(set(values) - set(RESOURCE_TYPES))
    if unknown:
        raise ValueError(f"{where} names unknown resource types {unknown}; known: {list(RESOURCE_TYPES)}")
    return {str(r): _cost_value(f"{where}.{r}", v) for r, v in values.items()}


def layer_from_dict(payload: object, source: str) -> CostLayer:
    """A `costs` object ({"c_under": {...}, "c_over": {...}, "regions": {r: {...}}, "cold_start_penalty_multiple": 8})."""
    if payload is None:
        return CostLayer(source=source)
    if not isinstance(payload, dict):
        raise ValueError(f"{source}: costs must be a JSON object with c_under, c_over, regions, cold_start_penalty_multiple")
    unknown = sorted(set(payload) - {*COST_KINDS, "regions", "cold_start_penalty_multiple", "warm", "comment"})
    if unknown:
        raise ValueError(f"{source}: costs has unknown keys {unknown}; known: c_under, c_over, regions, cold_start_penalty_multiple, warm")
    everywhere = {k: _resource_values(f"{source}: costs.{k}", payload[k]) for k in COST_KINDS if k in payload}
    regions: dict[str, dict[str, dict[str, float]]] = {}
    raw_regions = payload.get("regions") or {}
    if not isinstance(raw_regions, dict):
        raise ValueError(f"{source}: costs.regions must map region -> {{c_under: {{...}}, c_over: {{...}}}}")
    for region, kinds in raw_regions.items():
        if not REGION_PATTERN.match(str(region)):
            raise ValueError(f"{source}: costs.regions names {region!r}, which is not a region code")
        if not isinstance(kinds, dict) or set(kinds) - set(COST_KINDS):
            raise ValueError(f"{source}: costs.regions[{region!r}] may hold only c_under and c_over")
        regions[str(region)] = {k: _resource_values(f"{source}: costs.regions.{region}.{k}", v) for k, v in kinds.items()}
    multiple = payload.get("cold_start_penalty_multiple")
    return CostLayer(source=source, everywhere=everywhere, regions=regions,
                     cold_start_penalty_multiple=None if multiple is None else _cost_value(
                         f"{source}: costs.cold_start_penalty_multiple", multiple))


def layer_from_text(c_under: str | None, c_over: str | None, source: str) -> CostLayer:
    """Costs from `vcpu=0.43,memory_gib=0.05,eu-west-1:vcpu=0.6` texts (env variables and CLI options)."""
    payload: dict[str, Any] = {}
    for kind, text in (("c_under", c_under), ("c_over", c_over)):
        for item in (text or "").split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{source}: {item.strip()!r} is not RESOURCE=USD or REGION:RESOURCE=USD (e.g. vcpu=0.43)")
            region, _, resource = key.strip().rpartition(":")
            target = payload.setdefault("regions", {}).setdefault(region, {}) if region else payload
            target.setdefault(kind, {})[resource] = value.strip()
    return layer_from_dict(payload, source)


def catalog_unit_prices(catalog: pd.DataFrame, reference: dict[str, float]) -> dict[str, dict[str, float]]:
    """{region: {resource: on-demand USD per unit-hour}}: each instance's price split over its resources
    in the reference's proportions; the region's level is the median over its instance types."""
    if catalog.empty:
        return {}
    weighted = sum(catalog[CATALOG_COLUMNS[r]].astype(float).clip(lower=0) * reference[r] for r in RESOURCE_TYPES)
    usable = catalog.assign(index=catalog["on_demand_hourly"].astype(float) / weighted)
    usable = usable[(weighted > 0) & usable["index"].gt(0) & usable["index"].map(math.isfinite)]
    levels = usable.groupby("region")["index"].median()
    return {str(region): {r: float(level) * reference[r] for r in RESOURCE_TYPES} for region, level in levels.items()}


@dataclass(frozen=True)
class ResolvedCosts:
    """c_under and c_over per region and resource, the per-resource reference, and where they came from."""

    by_region: dict[str, dict[str, dict[str, float]]]  # region -> kind -> resource -> value
    reference: CostModel
    layers: list[dict[str, Any]]

    def value(self, kind: str, region: str, resource: str) -> float:
        per_region = self.by_region.get(region, {}).get(kind, {})
        return per_region.get(resource, getattr(self.reference, kind)[resource])

    def tau(self, region: str, resource: str) -> float:
        under, over = self.value("c_under", region, resource), self.value("c_over", region, resource)
        return under / (under + over)

    def taus_by_region(self, regions: list[str]) -> dict[str, dict[str, float]]:
        return {region: {r: round(self.tau(region, r), 6) for r in RESOURCE_TYPES} for region in regions}

    def kind_by_region(self, kind: str, regions: list[str]) -> dict[str, dict[str, float]]:
        return {region: {r: self.value(kind, region, r) for r in RESOURCE_TYPES} for region in regions}

    def to_manifest(self, regions: list[str]) -> dict[str, Any]:
        return {"c_over": dict(self.reference.c_over), "c_under": dict(self.reference.c_under),
                "by_region": {region: {k: {r: round(v, 6) for r, v in self.kind_by_region(k, [region])[region].items()}
                                       for k in COST_KINDS} for region in regions},
                "layers": self.layers,
                "tau_rule": "tau = c_under / (c_under + c_over) per region and resource"}


def resolve_costs(catalog: pd.DataFrame, regions: list[str], layers: list[CostLayer],
                  reference: CostModel | None = None) -> ResolvedCosts:
    """The catalog's defaults for `regions`, then each layer in order (later wins; per-region beats everywhere)."""
    reference = reference or CostModel()
    configured = [layer.cold_start_penalty_multiple for layer in layers if layer.cold_start_penalty_multiple is not None]
    multiple = (dict.fromkeys(RESOURCE_TYPES, configured[-1]) if configured
                else {r: reference.c_under[r] / reference.c_over[r] - 1.0 for r in RESOURCE_TYPES})
    prices = catalog_unit_prices(catalog, reference.c_over)
    by_region: dict[str, dict[str, dict[str, float]]] = {}
    for region in regions:
        if region in prices:
            over = dict(prices[region])
            by_region[region] = {"c_over": over, "c_under": {r: v * (1.0 + multiple[r]) for r, v in over.items()}}
        else:
            by_region[region] = {"c_over": dict(reference.c_over), "c_under": dict(reference.c_under)}
        for layer in layers:
            for kind in COST_KINDS:
                by_region[region][kind].update(layer.everywhere.get(kind, {}))
                by_region[region][kind].update(layer.regions.get(region, {}).get(kind, {}))
    described = [{"source": "catalog" if prices else "built-in reference",
                  "cold_start_penalty_multiple": {r: round(m, 6) for r, m in multiple.items()}}]
    for layer in layers:
        if not layer.is_empty():
            unused = sorted(set(layer.regions) - set(regions))
            entry = layer.to_dict()
            if unused:
                entry["regions_not_in_plan"] = unused
            described.append(entry)
    return ResolvedCosts(by_region=by_region, reference=reference, layers=described)


__all__ = ["CostLayer", "ResolvedCosts", "catalog_unit_prices", "layer_from_dict", "layer_from_text", "resolve_costs"]
