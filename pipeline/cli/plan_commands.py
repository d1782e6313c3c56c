"""`peerscale plan show | explain`: read a published plan (the LATEST one unless told otherwise)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from pipeline.cli.options import JsonOption, LakeOption, console, fail, load_plan, print_json, safe, settings, styled

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.plan.explain import RegionExplanation


def show(
    plan_id: str | None = typer.Option(None, help="Plan to show (default: the published LATEST)."),
    window: int = typer.Option(0, min=0, help="Which window of the plan (0 = first; windows are an hour long, or "
                                              "the plan's window_minutes)."),
    as_json: bool = JsonOption,
    lake: str | None = LakeOption,
) -> None:
    """The plan as a table: per region and resource, what is pre-allocated and on which instances."""
    pid, plan, manifest = load_plan(settings(lake), plan_id)
    starts = sorted(plan["valid_from"].unique())
    if starts and not 0 <= window < len(starts):
        fail(f"window {window} out of range: the plan has {len(starts)} windows (0..{len(starts) - 1})")
    rows = plan[plan["valid_from"] == starts[window]] if starts else plan
    cover = _cover(rows)
    instances = _instances(rows)
    from pipeline.forecast.outlook import plan_outlook

    outlook = plan_outlook(settings(lake), manifest)
    if as_json:
        print_json({**_show_json(pid, manifest, [str(s) for s in starts], window, cover, instances), "outlook": outlook})
        return
    if not starts:
        console.print(styled(f"plan {pid} pre-allocates nothing (status {manifest.get('status')})"))
        return
    _print_show(pid, manifest, str(starts[window]), cover, instances)
    _print_outlook(outlook, cover)


def _print_outlook(outlook: dict[str, Any] | None, cover: list[dict]) -> None:
    if outlook is None:
        console.print(styled("no daily forecast yet: the 14-day outlook appears after a `peerscale_daily` run"))
        return
    now = {(c["region"], c["resource_type"]): c["preallocated"] for c in cover}
    table = Table(title=safe(f"{outlook['regions'][0]['days'] if outlook['regions'] else 0}-day outlook · daily peak · "
                             f"{outlook['daily_run']}"), title_justify="left")
    for col in ("region", "resource", "busiest day", "q50", f"q({outlook['tau']:.2f})", "q95", "pre-allocated now"):
        table.add_column(col, justify="left" if col in ("region", "resource", "busiest day") else "right")
    for r in outlook["regions"]:
        pre = now.get((r["name"], r["measure"]))
        table.add_row(safe(r["name"]), safe(r["measure"]), r["busiest_day"], f"{r['q50']:.1f}", f"{r['q_tau']:.1f}",
                      f"{r['q95']:.1f}", "—" if pre is None else f"{pre:.1f}")
    console.print(table)


def _cover(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per region and resource: the demand quantile to cover and the quantity pre-allocated."""
    out = []
    for (region, resource), group in rows.groupby(["region", "resource_type"], sort=True):
        need, held = float(group["demand_quantile"].iloc[0]), float(group["quantity"].sum())
        out.append({"region": region, "resource_type": resource, "demand_quantile": need, "preallocated": held,
                    "cover": held / need if need > 0 else None})
    return out


def _instances(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per region, instance type and purchase option: how many instances and what they cost per hour."""
    per_line = rows.groupby(["region", "instance_type", "purchase_option"], sort=True).agg(
        count=("count", "first"), cost=("hourly_cost", "sum"))
    return [{"region": region, "instance_type": itype, "purchase_option": option, "count": int(line["count"]),
             "hourly_cost": float(line["cost"])} for (region, itype, option), line in per_line.iterrows()]


def _show_json(pid: str, manifest: dict, starts: list[str], window: int, cover: list[dict], instances: list[dict]) -> dict[str, Any]:
    keys = ("status", "valid_from", "valid_to", "tau", "objective", "lower_bound", "gap", "hourly_cost_total", "shortfall")
    return {"plan_id": pid, "windows": starts, "window": window, "window_start": starts[window] if starts else None,
            **{k: manifest.get(k) for k in keys}, "cover": cover, "instances": instances,
            "window_cost": sum(i["hourly_cost"] for i in instances)}


def _print_show(pid: str, manifest: dict, start: str, cover: list[dict], instances: list[dict]) -> None:
    title = (f"plan {pid} [{manifest['status']}] · window {start[:16]} ({manifest.get('window_minutes', 60)} min of "
             f"{manifest.get('windows', '?')}) · τ(vcpu) {manifest['tau']['vcpu']:.3f}")
    table = Table(title=safe(title), title_justify="left")
    for col in ("region", "resource", "demand q(τ)", "pre-allocated", "cover"):
        table.add_column(col, justify="left" if col in ("region", "resource") else "right")
    for c in cover:
        ratio = f"{c['cover']:.0%}" if c["cover"] is not None else "—"
        table.add_row(safe(c["region"]), safe(c["resource_type"]), f"{c['demand_quantile']:.1f}", f"{c['preallocated']:.1f}", ratio)
    console.print(table)
    lines = Table(title="instances", title_justify="left")
    for col in ("region", "instance type", "option", "count", "USD/h"):
        lines.add_column(col, justify="right" if col in ("count", "USD/h") else "left")
    for i in instances:
        lines.add_row(safe(i["region"]), safe(i["instance_type"]), safe(i["purchase_option"]), str(i["count"]), f"{i['hourly_cost']:.4f}")
    console.print(lines)
    console.print(styled(f"window cost ${sum(i['hourly_cost'] for i in instances):.2f}/h · objective {manifest['objective']:.2f} · "
                         f"bound {manifest['lower_bound']:.2f} · gap {100 * manifest['gap']:.2f} %"))
    if manifest.get("shortfall"):
        console.print(styled(("shortfall", "red"), f" in {len(manifest['shortfall'])} region/resource windows — see manifest.json"))


def explain(
    region: str | None = typer.Argument(None, help="Region to explain, e.g. us-east-1 (without it: the plan's regions are listed)."),
    plan_id: str | None = typer.Option(None, help="Plan (default: the published LATEST)."),
    as_json: bool = JsonOption,
    lake: str | None = LakeOption,
) -> None:
    """Why the plan holds what it holds in one region: each reason once, with the windows and lines it applies to."""
    from pipeline.plan.explain import explain_region

    pid, plan, manifest = load_plan(settings(lake), plan_id)
    known = ", ".join(sorted(plan["region"].unique())) or "none"
    if region is None:
        fail(f"name a region to explain: peerscale plan explain REGION; regions in plan {pid}: {known}")
    if not (plan["region"] == region).any():
        fail(f"plan {pid} has no lines in region {region!r}; regions in the plan: {known}")
    explanation = explain_region(plan, manifest, region)
    if as_json:
        print_json(explanation.to_dict())
        return
    _print_explanation(explanation)


def _print_explanation(explanation: RegionExplanation) -> None:
    for text in explanation.text_lines():
        console.print(safe(text), highlight=False, soft_wrap=True)


def diff(
    old: str | None = typer.Argument(None, help="Plan to compare from (default: the APPLIED plan; none applied: empty)."),
    new: str | None = typer.Argument(None, help="Plan to compare to (default: the published LATEST)."),
    as_json: bool = JsonOption,
    lake: str | None = LakeOption,
) -> None:
    """What changes from plan A to plan B in the first window: per region and instance type, counts, cost, capacity, reasons."""
    from pipeline.iac.apply import applied_plan_id
    from pipeline.publish.diff import diff_plans

    config = settings(lake)
    new_id, new_rows, _ = load_plan(config, new)
    if old is None:
        try:
            old = applied_plan_id(config)
        except ValueError as exc:
            fail(f"plans/APPLIED is corrupt ({exc}): name the plan to compare from")
    old_rows = load_plan(config, old)[1] if old else None
    result = diff_plans(old_rows, new_rows, old, new_id)
    if as_json:
        print_json(result)
        return
    _print_diff(result)


def _print_diff(result: dict[str, Any]) -> None:
    t = result["totals"]
    title = (f"plan diff {result['old_plan_id'] or '(nothing applied)'} → {result['new_plan_id']} · windows provisioned from "
             f"{(result['new_window'] or '')[:16]}")
    table = Table(title=safe(title), title_justify="left")
    for col in ("region", "instance type", "option", "change", "count", "Δ", "USD/h Δ", "capacity Δ", "reason"):
        table.add_column(col, justify="right" if col in ("count", "Δ", "USD/h Δ") else "left")
    for line in result["lines"]:
        if line["change"] == "same":
            continue
        capacity = ", ".join(f"{r} {v['delta']:+g}" for r, v in line["capacity"].items() if v["delta"])
        table.add_row(safe(line["region"]), safe(line["instance_type"]), safe(line["purchase_option"]), line["change"],
                      f"{line['count_old']} → {line['count_new']}", f"{line['count_delta']:+d}", f"{line['cost_delta']:+.4f}",
                      safe(capacity), safe("; ".join(line["reasons_new"] or line["reasons_old"])[:80]))
    console.print(table)
    regions = Table(title="per region", title_justify="left")
    for col in ("region", "change", "instances", "USD/h", "USD/h Δ"):
        regions.add_column(col, justify="left" if col in ("region", "change") else "right")
    for r in result["regions"]:
        regions.add_row(safe(r["region"]), r["change"], f"{r['count_old']} → {r['count_new']}",
                        f"{r['cost_old']:.2f} → {r['cost_new']:.2f}", f"{r['cost_delta']:+.4f}")
    console.print(regions)
    console.print(styled(f"spend {t['cost_delta']:+.4f} $/h · instances +{t['instances_added']} / -{t['instances_removed']} · "
                         f"{t['lines_changed']} line(s) changed" + (f" · regions removed: {', '.join(t['regions_removed'])}"
                                                                      if t["regions_removed"] else "")))
