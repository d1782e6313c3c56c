"""Two plans side by side: plain functions over two plan tables (pandas), no I/O, so the CLI's
`plan diff` can share them.

Plans cover different windows (each starts at its own interval end), so they are compared window by
window position: window k of plan A against window k of plan B (k = 0 is what the IaC provisions).
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

LINE_KEY = ["region", "instance_type", "purchase_option"]
_PREFIX = re.compile(r"^\S+ \d{4}-\d{2}-\d{2}T\d{2}:\d{2}Z: ")


def window_rows(plan: pd.DataFrame, position: int) -> pd.DataFrame:
    """The rows of the plan's window at `position` (0 = first); empty when the plan has fewer windows."""
    starts = sorted(plan["valid_from"].unique()) if not plan.empty else []
    if position >= len(starts):
        return plan.iloc[0:0]
    return plan[plan["valid_from"] == starts[position]]


def _lines(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=[*LINE_KEY, "count", "hourly_cost"])
    return rows.groupby(LINE_KEY, as_index=False).agg(count=("count", "first"), hourly_cost=("hourly_cost", "sum"))


def line_deltas(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per region × instance type × purchase option: instances and cost in A and B, and B − A (changed lines only)."""
    merged = _lines(a).merge(_lines(b), on=LINE_KEY, how="outer", suffixes=("_a", "_b")).fillna(
        {"count_a": 0, "count_b": 0, "hourly_cost_a": 0.0, "hourly_cost_b": 0.0})
    merged["count_delta"] = merged["count_b"] - merged["count_a"]
    merged["cost_delta"] = merged["hourly_cost_b"] - merged["hourly_cost_a"]
    changed = merged[(merged["count_delta"] != 0) | (merged["cost_delta"].abs() > 1e-9)]
    return changed.sort_values(LINE_KEY).reset_index(drop=True)


def capacity_deltas(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per region × resource: demand quantile and pre-allocated quantity in A and B, and B − A."""
    def cells(rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty:
            return pd.DataFrame(columns=["region", "resource_type", "demand", "held", "cost"])
        return rows.groupby(["region", "resource_type"], as_index=False).agg(
            demand=("demand_quantile", "first"), held=("quantity", "sum"), cost=("hourly_cost", "sum"))

    merged = cells(a).merge(cells(b), on=["region", "resource_type"], how="outer", suffixes=("_a", "_b"))
    merged = merged.fillna(dict.fromkeys(("held_a", "held_b", "cost_a", "cost_b"), 0.0))
    merged["demand_delta"] = merged["demand_b"] - merged["demand_a"]
    merged["held_delta"] = merged["held_b"] - merged["held_a"]
    return merged.sort_values(["region", "resource_type"]).reset_index(drop=True)


def region_totals(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per region: instances and hourly cost in A and B."""
    def totals(rows: pd.DataFrame) -> pd.DataFrame:
        lines = _lines(rows)
        return lines.groupby("region", as_index=False).agg(instances=("count", "sum"), cost=("hourly_cost", "sum"))

    merged = totals(a).merge(totals(b), on="region", how="outer", suffixes=("_a", "_b")).fillna(0)
    merged["instances_delta"] = merged["instances_b"] - merged["instances_a"]
    merged["cost_delta"] = merged["cost_b"] - merged["cost_a"]
    return merged.sort_values("region").reset_index(drop=True)


def clauses(reason: str) -> list[str]:
    """A reason's clauses without the leading `<region> <window>:` stamp (which differs between any two plans)."""
    return [c.strip() for c in _PREFIX.sub("", reason or "").split("; ") if c.strip()]


def reason_changes(a: pd.DataFrame, b: pd.DataFrame) -> list[dict[str, Any]]:
    """Per line and resource present in either plan: the clauses of its reason only A has and only B has."""
    key = [*LINE_KEY, "resource_type"]

    def by_key(rows: pd.DataFrame) -> dict[tuple, str]:
        return {tuple(r[:-1]): r[-1] for r in rows[[*key, "reason"]].itertuples(index=False)} if not rows.empty else {}

    ra, rb = by_key(a), by_key(b)
    out = []
    for k in sorted(set(ra) | set(rb)):
        ca, cb = clauses(ra.get(k, "")), clauses(rb.get(k, ""))
        only_a = [c for c in ca if c not in cb]
        only_b = [c for c in cb if c not in ca]
        if only_a or only_b:
            out.append({**dict(zip(key, k)), "only_a": only_a, "only_b": only_b,
                        "status": "added" if k not in ra else "removed" if k not in rb else "changed"})
    return out


def compare(a: pd.DataFrame, b: pd.DataFrame, position: int = 0) -> dict[str, Any]:
    """Everything the compare page shows for window `position` of both plans."""
    wa, wb = window_rows(a, position), window_rows(b, position)
    regions = region_totals(wa, wb)
    return {
        "totals": {"instances_a": int(regions["instances_a"].sum()), "instances_b": int(regions["instances_b"].sum()),
                   "cost_a": float(regions["cost_a"].sum()), "cost_b": float(regions["cost_b"].sum())},
        "regions": regions, "lines": line_deltas(wa, wb), "capacity": capacity_deltas(wa, wb),
        "reasons": reason_changes(wa, wb),
    }
