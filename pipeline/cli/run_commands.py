"""`peerscale run | ingest | backfill | report`: the pipeline in-process, without Airflow.

The stage code (pandas, statsforecast, OR-Tools, Great Expectations) is imported inside each
command, so `peerscale --help` does not load it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.table import Table

from pipeline.cli.options import (
    BuildOption,
    COverOption,
    CUnderOption,
    LakeOption,
    SourceOption,
    WarmOption,
    WindowMinutesOption,
    ZonesOption,
    console,
    fail,
    load_plan,
    progress_columns,
    safe,
    settings,
    styled,
    with_costs,
    with_warm,
    with_window_minutes,
    with_zones,
)


def run(
    interval_end: str = typer.Option(..., help="End of the hour to run, UTC, e.g. 2026-01-29T00:00 (the run covers the hour before it)."),
    lake: str | None = LakeOption,
    source: str | None = SourceOption,
    build: str | None = BuildOption,
    c_under: str | None = CUnderOption,
    c_over: str | None = COverOption,
    warm: str | None = WarmOption,
    zones: str | None = ZonesOption,
    window_minutes: int | None = WindowMinutesOption,
    stage_processes: bool = typer.Option(
        True, "--stage-processes/--in-process",
        help="Run each stage in a process of its own, as Airflow's tasks are (the run's peak memory is its largest "
             "stage's), or every stage in this process (e.g. to profile it)."),
) -> None:
    """Run every stage for one hour without Airflow: ingest → features → forecast → plan → IaC → report → publish."""
    from pipeline.run import run_hourly

    config = with_window_minutes(with_zones(with_warm(with_costs(settings(lake, source, build), c_under, c_over), warm), zones),
                                 window_minutes)
    try:
        with console.status(styled("running")) as status:
            summary = run_hourly(interval_end, config, progress=lambda msg: status.update(styled((msg, "bold"))),
                                 stage_processes=stage_processes)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    print_ingest(summary.ingest)
    console.print(styled(("published", "green"), " plan ", (summary.plan["plan_id"], "bold"),
                         f" ({summary.plan['rows']} rows, ${summary.plan['hourly_cost_total']:.2f} over its windows)"))
    console.print(styled(f"  plan:      {Path(summary.plan['path']).parent}"))
    console.print(styled(f"  terraform: {summary.terraform_dir}"))
    console.print(styled(f"  report:    {summary.report}"))
    console.print(styled(f"  pointer:   {summary.pointer}"))


def backfill(
    start: str = typer.Option(..., "--from", help="First hour to run, UTC, e.g. 2026-01-28T00:00."),
    end: str = typer.Option(..., "--to", help="End of the range, UTC (exclusive): the last run covers the hour before it."),
    force: bool = typer.Option(False, help="Re-run hours whose plan is already published."),
    lake: str | None = LakeOption,
    source: str | None = SourceOption,
    build: str | None = BuildOption,
    c_under: str | None = CUnderOption,
    c_over: str | None = COverOption,
    warm: str | None = WarmOption,
    zones: str | None = ZonesOption,
    window_minutes: int | None = WindowMinutesOption,
) -> None:
    """Backfill historical hourly runs in-process, hour by hour; resumable (published hours are skipped)."""
    from rich.progress import Progress

    from pipeline.ops.backfill import backfill as run_backfill
    from pipeline.ops.backfill import hour_ends

    config = with_window_minutes(with_zones(with_warm(with_costs(settings(lake, source, build), c_under, c_over), warm), zones),
                                 window_minutes)
    try:
        total = len(hour_ends(start, end))
    except ValueError as exc:
        fail(str(exc))
    with Progress(*progress_columns(), console=console) as progress:
        task = progress.add_task("backfill", total=total)

        def advance(hour: datetime, outcome: str) -> None:
            progress.update(task, description=safe(f"{hour:%Y-%m-%dT%H:%M} {outcome}"))
            progress.advance(task)

        try:
            summary = run_backfill(start, end, config, force=force, on_hour=advance)
        except (FileNotFoundError, ValueError) as exc:
            fail(f"{exc} (completed hours are kept: run the same command again to resume)")
    console.print(styled(f"backfill done: {len(summary.ran)} hours ran, {len(summary.skipped)} already published"))


def ingest(
    start: str = typer.Option(..., "--from", help="Start of the range, UTC (inclusive), e.g. 2026-01-01T00:00."),
    end: str = typer.Option(..., "--to", help="End of the range, UTC (exclusive), e.g. 2026-01-29T00:00."),
    lake: str | None = LakeOption,
    source: str | None = SourceOption,
) -> None:
    """Ingest every source dataset over a range, day by day (seeds the lake's history)."""
    from rich.progress import Progress

    from pipeline.common.intervals import DataInterval
    from pipeline.run import backfill_ingest

    config = settings(lake, source)
    try:
        whole = DataInterval.between(start, end)
    except ValueError as exc:
        fail(str(exc))
    with Progress(*progress_columns(), console=console, transient=True) as progress:
        task = progress.add_task("ingest", total=len(whole.days()))

        def step(msg: str) -> None:
            progress.update(task, description=safe(msg))
            progress.advance(task)

        try:
            reports = backfill_ingest(whole.start, whole.end, config, progress=step)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
    print_ingest(reports)


def print_ingest(reports: list[dict]) -> None:
    """One row per dataset: rows read, valid, quarantined and why (summed over the days)."""
    totals: dict[str, dict] = {}
    for r in reports:
        t = totals.setdefault(r["dataset"], {"read": 0, "valid": 0, "quarantined": 0, "reasons": {}})
        t["read"] += r["rows_read"]
        t["valid"] += r["rows_valid"]
        t["quarantined"] += r["rows_quarantined"]
        for k, v in r["quarantine_reasons"].items():
            t["reasons"][k] = t["reasons"].get(k, 0) + v
    table = Table(title="ingest", title_justify="left")
    for col in ("dataset", "rows read", "valid", "quarantined", "reasons"):
        table.add_column(col, justify="right" if col in ("rows read", "valid", "quarantined") else "left")
    for name, t in totals.items():
        reasons = ", ".join(f"{k} ×{v}" for k, v in sorted(t["reasons"].items()))
        table.add_row(safe(name), str(t["read"]), str(t["valid"]), str(t["quarantined"]), safe(reasons))
    console.print(table)


def report(
    plan_id: str | None = typer.Option(None, help="Plan to report on (default: the published LATEST)."),
    lake: str | None = LakeOption,
    build: str | None = BuildOption,
) -> None:
    """Write the self-contained HTML report of a plan and print its path."""
    from pipeline.common.intervals import DataInterval
    from pipeline.report.html import write_plan_report

    config = settings(lake, build=build)
    pid, _, manifest = load_plan(config, plan_id)
    interval = DataInterval.between(manifest["data_interval"]["start"], manifest["data_interval"]["end"])
    try:
        typer.echo(write_plan_report(pid, interval, config))  # a bare path: never wrapped, easy to script
    except FileNotFoundError as exc:
        fail(str(exc))
