"""What changes between two plans, as plain data (CLI, report, the apply gate's approval text).

Only the windows an apply provisions are compared (`pipeline.iac.model.PROVISIONED_SPAN`: the first
window of an hourly plan, the first hour of a plan of shorter windows). Per line
(``region/instance_type/purchase_option``): instance counts, hourly cost and capacity per resource
type before and after, their deltas, and the planner's reasons. Per region: the same summed, and
whether the region is new or gone. Totals: the hourly spend change, instances added and removed
(churn) and the regions removed, which the apply gate (:mod:`pipeline.iac.gate`) decides on.

``old`` may be ``None`` (nothing applied yet): everything is then an addition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["diff_plans", "format_diff", "provisioned_lines"]

_EPS = 1e-9


def provisioned_lines(rows: pd.DataFrame | None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per line key over the windows an apply provisions: the most instances and capacity any of them
    holds, the hourly cost averaged over them (what the span costs per hour), the planner's reasons."""
    from pipeline.iac.model import PROVISIONED_SPAN

    if rows is None or len(rows) == 0:
        return {}
    start = rows["valid_from"].min()
    span = rows[rows["valid_from"] < start + PROVISIONED_SPAN]
    windows = span["valid_from"].nunique()
    lines: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (region, itype, option), group in span.groupby(["region", "instance_type", "purchase_option"], sort=True):
        reasons = sorted({str(r) for r in group["reason"].dropna() if str(r)}) if "reason" in group else []
        held = group.groupby(["valid_from", "resource_type"])["quantity"].sum().groupby(level="resource_type").max()
        lines[(str(region), str(itype), str(option))] = {
            "count": int(group.groupby("valid_from")["count"].first().max()),
            "hourly_cost": float(group["hourly_cost"].sum()) / windows,
            "capacity": {str(k): float(v) for k, v in held.items()},
            "reasons": reasons,
            "window": str(group["valid_from"].min()),
        }
    return lines


def _line_change(key: tuple[str, str, str], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[str, Any]:
    before = old or {"count": 0, "hourly_cost": 0.0, "capacity": {}, "reasons": []}
    after = new or {"count": 0, "hourly_cost": 0.0, "capacity": {}, "reasons": []}
    resources = sorted(set(before["capacity"]) | set(after["capacity"]))
    change = "added" if old is None else "removed" if new is None else (
        "changed" if before["count"] != after["count"] or abs(before["hourly_cost"] - after["hourly_cost"]) > _EPS else "same")
    return {
        "region": key[0], "instance_type": key[1], "purchase_option": key[2], "change": change,
        "count_old": before["count"], "count_new": after["count"], "count_delta": after["count"] - before["count"],
        "cost_old": round(before["hourly_cost"], 6), "cost_new": round(after["hourly_cost"], 6),
        "cost_delta": round(after["hourly_cost"] - before["hourly_cost"], 6),
        "capacity": {r: {"old": before["capacity"].get(r, 0.0), "new": after["capacity"].get(r, 0.0),
                         "delta": round(after["capacity"].get(r, 0.0) - before["capacity"].get(r, 0.0), 6)} for r in resources},
        "reasons_old": list(before["reasons"]), "reasons_new": list(after["reasons"]),
    }


def _regions(lines: list[dict[str, Any]], old_regions: set[str], new_regions: set[str]) -> list[dict[str, Any]]:
    out = []
    for region in sorted(old_regions | new_regions):
        mine = [line for line in lines if line["region"] == region]
        capacity: dict[str, dict[str, float]] = {}
        for line in mine:
            for resource, values in line["capacity"].items():
                slot = capacity.setdefault(resource, {"old": 0.0, "new": 0.0, "delta": 0.0})
                for k in slot:
                    slot[k] = round(slot[k] + values[k], 6)
        status = "added" if region not in old_regions else "removed" if region not in new_regions else (
            "changed" if any(line["change"] != "same" for line in mine) else "same")
        out.append({
            "region": region, "change": status,
            "count_old": sum(line["count_old"] for line in mine), "count_new": sum(line["count_new"] for line in mine),
            "cost_old": round(sum(line["cost_old"] for line in mine), 6),
            "cost_new": round(sum(line["cost_new"] for line in mine), 6),
            "cost_delta": round(sum(line["cost_delta"] for line in mine), 6),
            "capacity": capacity,
        })
    return out


def diff_plans(
    old_rows: pd.DataFrame | None, new_rows: pd.DataFrame, old_id: str | None = None, new_id: str | None = None
) -> dict[str, Any]:
    """The difference over the provisioned windows from ``old_rows`` to ``new_rows`` (PLAN schema frames)."""
    old, new = provisioned_lines(old_rows), provisioned_lines(new_rows)
    lines = [_line_change(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))]
    old_regions, new_regions = {k[0] for k in old}, {k[0] for k in new}
    regions = _regions(lines, old_regions, new_regions)
    cost_old, cost_new = sum(line["cost_old"] for line in lines), sum(line["cost_new"] for line in lines)
    added = sum(max(line["count_delta"], 0) for line in lines)
    removed = sum(max(-line["count_delta"], 0) for line in lines)
    return {
        "old_plan_id": old_id, "new_plan_id": new_id,
        "old_window": next(iter(old.values()))["window"] if old else None,
        "new_window": next(iter(new.values()))["window"] if new else None,
        "totals": {
            "cost_old": round(cost_old, 6), "cost_new": round(cost_new, 6), "cost_delta": round(cost_new - cost_old, 6),
            "instances_old": sum(line["count_old"] for line in lines), "instances_new": sum(line["count_new"] for line in lines),
            "instances_added": added, "instances_removed": removed, "churn": added + removed,
            "lines_changed": sum(line["change"] != "same" for line in lines),
            "regions_added": sorted(new_regions - old_regions), "regions_removed": sorted(old_regions - new_regions),
        },
        "regions": regions,
        "lines": lines,
    }


def format_diff(diff: Mapping[str, Any], max_lines: int = 40) -> str:
    """A short plain-text (Markdown-friendly) account of a diff: for approval requests and logs."""
    t = diff["totals"]
    head = (f"Plan {diff.get('old_plan_id') or '(nothing applied)'} → {diff.get('new_plan_id')}: "
            f"spend ${t['cost_old']:.2f}/h → ${t['cost_new']:.2f}/h ({t['cost_delta']:+.2f}), "
            f"instances {t['instances_old']} → {t['instances_new']} (+{t['instances_added']} / -{t['instances_removed']})")
    out = [head]
    if t["regions_added"]:
        out.append("regions added: " + ", ".join(t["regions_added"]))
    if t["regions_removed"]:
        out.append("regions removed: " + ", ".join(t["regions_removed"]))
    changed = [line for line in diff["lines"] if line["change"] != "same"]
    for line in changed[:max_lines]:
        why = "; ".join(line["reasons_new"] or line["reasons_old"])
        out.append(f"- {line['region']} {line['instance_type']} {line['purchase_option']}: {line['change']} "
                   f"{line['count_old']} → {line['count_new']} ({line['cost_delta']:+.4f} $/h)" + (f" — {why}" if why else ""))
    if len(changed) > max_lines:
        out.append(f"... and {len(changed) - max_lines} more changed lines")
    if not changed:
        out.append("no line changes")
    return "\n".join(out)
