"""From forecast quantiles to the demand a plan must cover (the newsvendor quantile)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.common.config import CostModel
from pipeline.common.schemas import FORECAST_QUANTILES, RESOURCE_TYPES, parse_series_id
from pipeline.forecast.quantiles import interpolate_quantile


def tau_by_resource(cost: CostModel) -> dict[str, float]:
    """τ = c_under / (c_under + c_over) for every resource type."""
    return {r: round(cost.tau(r), 6) for r in RESOURCE_TYPES}


def shift_tau(cost_tau: float, override: float, reference: float) -> float:
    """The feedback controller's τ for a region whose costs give `cost_tau` instead of `reference`.

    The controller learns an offset in logit space from the reference τ (the per-resource cost τ it
    anchors on); the same offset is applied to the region's own cost τ, so a region configured to
    buy more (or less) keeps that difference while the controller moves it. With the region at the
    reference the override is used as it is.
    """
    if abs(cost_tau - reference) < 1e-12:
        return override
    eps = 1e-9

    def logit(p: float) -> float:
        p = min(max(p, eps), 1 - eps)
        return float(np.log(p / (1 - p)))

    shifted = 1.0 / (1.0 + np.exp(-(logit(cost_tau) + logit(override) - logit(reference))))
    return round(float(min(max(shifted, eps), 1 - eps)), 6)


def check_tau_overrides(overrides: dict[str, dict[str, float]] | None) -> dict[str, dict[str, float]]:
    """Validate per-region τ overrides ({region: {resource_type: τ}}, τ strictly between 0 and 1)."""
    clean: dict[str, dict[str, float]] = {}
    for region, per_resource in (overrides or {}).items():
        for resource, value in (per_resource or {}).items():
            if resource not in RESOURCE_TYPES:
                raise ValueError(f"τ override for {region}/{resource}: unknown resource type (known: {list(RESOURCE_TYPES)})")
            tau = float(value)
            if not 0.0 < tau < 1.0:
                raise ValueError(f"τ override for {region}/{resource} must be strictly between 0 and 1, got {value!r}")
            clean.setdefault(str(region), {})[resource] = tau
    return clean


def region_demand_quantiles(forecast: pd.DataFrame, taus: dict[str, float], windows: list[pd.Timestamp],
                            overrides: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """τ-quantile of each region's concurrent demand per window, from the region series themselves.

    Region totals come from `region:<r>:<resource>` series (not sums of pair quantiles, which
    would overstate the quantile of a sum). `overrides` ({region: {resource_type: τ}}, e.g. from
    the feedback controller) replace the cost-derived τ for the regions and resources they name.
    Returns columns window, region, resource_type, demand, tau, model.
    """
    overrides = check_tau_overrides(overrides)
    region_rows = forecast[forecast["series_id"].str.startswith("region:")].copy()
    parts = region_rows["series_id"].map(parse_series_id)
    region_rows["region"] = parts.map(lambda p: p["region"])
    region_rows["resource_type"] = parts.map(lambda p: p["measure"])
    region_rows = region_rows[region_rows["ds"].isin(windows)]
    if region_rows.empty:
        raise ValueError("the forecast has no region demand rows for the plan windows: forecast horizon too short?")
    missing = sorted(set(pd.to_datetime(windows, utc=True)) - set(pd.to_datetime(region_rows["ds"], utc=True)))
    if missing:
        raise ValueError(
            f"the forecast does not cover plan windows {[w.isoformat() for w in missing]}: "
            "make the forecast horizon at least as long as plan_windows"
        )
    quantiles = {q: region_rows[f"q{round(q * 100)}"].to_numpy(float) for q in FORECAST_QUANTILES}
    tau = np.array([overrides.get(region, {}).get(resource, taus[resource])
                    for region, resource in zip(region_rows["region"], region_rows["resource_type"])], float)
    demand = np.empty(len(region_rows))
    for value in np.unique(tau):
        mask = tau == value
        demand[mask] = interpolate_quantile({q: v[mask] for q, v in quantiles.items()}, float(value))
    return pd.DataFrame({
        "window": region_rows["ds"].to_numpy(),
        "region": region_rows["region"].to_numpy(),
        "resource_type": region_rows["resource_type"].to_numpy(),
        "demand": np.maximum(demand, 0.0),
        "tau": tau,
        "model": region_rows["model"].to_numpy(),
    })
