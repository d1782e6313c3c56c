"""The `peerscale` command line.

Heavy libraries (pandas, statsforecast, OR-Tools, Great Expectations) are imported inside the
commands that need them, so `peerscale --help` and `peerscale irc request` stay fast.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.common.config import Settings

app = typer.Typer(
    help="peerscale — forecast inter-region peering demand, pre-allocate capacity, serve requests fast.",
    no_args_is_help=True,
    add_completion=False,
)
plan_app = typer.Typer(help="Inspect published plans.", no_args_is_help=True)
irc_app = typer.Typer(help="The Inter-Region Coordinator: send peering requests through the latest plan.", no_args_is_help=True)
samples_app = typer.Typer(help="Sample source data in the documented formats.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(irc_app, name="irc")
app.add_typer(samples_app, name="samples")
from pipeline.cli.forecast import forecast_command  # noqa: E402  (typer only; heavy imports inside)

app.command("forecast")(forecast_command)
from pipeline.cli.iac import iac_app  # noqa: E402 - typer and rich only; heavy imports live inside the commands

app.add_typer(iac_app, name="iac")

console = Console()
err = Console(stderr=True)

LakeOption = typer.Option(None, "--lake", envvar="PEERSCALE_LAKE", help="Lake root: a directory or s3://bucket/prefix.")
SourceOption = typer.Option(None, "--source", envvar="PEERSCALE_SOURCE", help="Source data root: a directory or s3:// URI.")
BuildOption = typer.Option(None, "--build", envvar="PEERSCALE_BUILD", help="Where rendered IaC and reports go.")


def _settings(lake: str | None, source: str | None = None, build: str | None = None) -> Settings:
    return Settings.from_env(lake_root=lake, source_root=source, build_root=build)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    interval_end: str = typer.Option(..., help="End of the hour to run, UTC, e.g. 2026-01-29T00:00 (the run covers the hour before it)."),
    lake: str | None = LakeOption,
    source: str | None = SourceOption,
    build: str | None = BuildOption,
) -> None:
    """Run every stage for one hour in-process (no Airflow): ingest → features → forecast → plan → IaC → report → publish."""
    from pipeline.run import run_hourly

    settings = _settings(lake, source, build)
    try:
        with console.status("running") as status:
            summary = run_hourly(interval_end, settings, progress=lambda msg: status.update(f"[bold]{msg}"))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _print_ingest(summary.ingest)
    console.print(f"[green]published[/] plan [bold]{summary.plan['plan_id']}[/] "
                  f"({summary.plan['rows']} rows, ${summary.plan['hourly_cost_total']:.2f} over its windows)")
    console.print(f"  plan:      {Path(summary.plan['path']).parent}")
    console.print(f"  terraform: {summary.terraform_dir}")
    console.print(f"  report:    {summary.report}")
    console.print(f"  pointer:   {summary.pointer}")


@app.command()
def backfill(
    start: str = typer.Option(..., "--from", help="First hour to run, UTC, e.g. 2026-01-28T00:00."),
    end: str = typer.Option(..., "--to", help="End of the range, UTC (exclusive): the last run covers the hour before it."),
    force: bool = typer.Option(False, help="Re-run hours whose plan is already published."),
    lake: str | None = LakeOption,
    source: str | None = SourceOption,
    build: str | None = BuildOption,
) -> None:
    """Backfill historical hourly runs in-process, hour by hour; resumable (published hours are skipped)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.ops.backfill import backfill as run_backfill
    from pipeline.ops.backfill import hour_ends

    settings = _settings(lake, source, build)
    try:
        total = len(hour_ends(start, end))
    except ValueError as exc:
        _fail(str(exc))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("backfill", total=total)

        def advance(hour: datetime, outcome: str) -> None:
            progress.update(task, description=f"{hour:%Y-%m-%dT%H:%M} {outcome}")
            progress.advance(task)

        try:
            summary = run_backfill(start, end, settings, force=force, on_hour=advance)
        except (FileNotFoundError, ValueError) as exc:
            _fail(f"{exc} (completed hours are kept: run the same command again to resume)")
    console.print(f"backfill done: {len(summary.ran)} hours ran, {len(summary.skipped)} already published")


@app.command()
def backtest(
    requests: str = typer.Option("data_samples", "--requests", help="Source root holding peering_requests/ and inventory/ (a directory or s3:// URI)."),
    start: str = typer.Option(..., "--from", help="First hour to replay, UTC, e.g. 2026-01-29T00:00."),
    end: str = typer.Option(..., "--to", help="End of the replay, UTC (exclusive)."),
    policy: str = typer.Option("predictive,reactive,static,oracle", help="Comma-separated policies to compare."),
    refit_every: int = typer.Option(6, min=1, help="Refit the predictive forecast every N hours (between refits it plans from older data only)."),
    headroom: float = typer.Option(0.2, help="Static policy headroom over last week's peak."),
    report_path: Path | None = typer.Option(None, "--report", help="Write the HTML report here (default: build/reports/backtest-<from>-<to>.html)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object on the last line."),
    build: str | None = BuildOption,
) -> None:
    """Replay a request log hour by hour under each policy and compare hit rate, latency and cost to the oracle."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.common.intervals import parse_utc
    from pipeline.common.storage import join
    from pipeline.ops.backtest import BacktestConfig, parse_policies, run_backtest
    from pipeline.report.html import write_backtest_report

    settings = _settings(None, requests, build)
    try:
        config = BacktestConfig(start=parse_utc(start), end=parse_utc(end), policies=parse_policies(policy),
                                static_headroom=headroom, refit_every_hours=refit_every,
                                horizon_hours=max(refit_every, 1))
    except ValueError as exc:
        _fail(str(exc))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=as_json) as progress:
        task = progress.add_task("replay", total=None)

        def step(message: str, done: int, total: int) -> None:
            progress.update(task, description=f"replay {message}", completed=done, total=total)

        try:
            result = run_backtest(requests, config, settings, progress=step)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
    summary = result.summary()
    path = str(report_path) if report_path else join(settings.build_root, "reports", f"backtest-{config.start:%Y%m%dT%H%M}-{config.end:%Y%m%dT%H%M}.html")
    write_backtest_report(result, path)
    summary["report"] = path
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    table = Table(title=f"backtest {summary['from'][:16]} → {summary['to'][:16]} ({summary['hours']} h)", title_justify="left")
    for col in ("policy", "hit rate", "on demand", "failures", "p95 latency", "idle vCPU-h", "total cost", "vs oracle"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, s in summary["policies"].items():
        ratio = s.get("cost_vs_oracle")
        table.add_row(name, f"{s['hit_rate']:.1%}", f"{s['on_demand_share']:.1%}", str(s["failures"]), f"{s['latency_p95_s']:.0f} s",
                      f"{s['idle_vcpu_hours']:.0f}", f"${s['cost']['total']:.2f}", f"{ratio:.3f}" if ratio is not None else "—")
    console.print(table)
    console.print(f"report: {path}")


@app.command()
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

    settings = _settings(lake, source)
    try:
        whole = DataInterval.between(start, end)
    except ValueError as exc:
        _fail(str(exc))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("ingest", total=len(whole.days()))
        def step(msg: str) -> None:
            progress.update(task, description=msg)
            progress.advance(task)
        try:
            reports = backfill_ingest(whole.start, whole.end, settings, progress=step)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
    _print_ingest(reports)


def _print_ingest(reports: list[dict]) -> None:
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
        table.add_row(name, str(t["read"]), str(t["valid"]), str(t["quarantined"]), reasons)
    console.print(table)


@plan_app.command("show")
def plan_show(
    plan_id: str | None = typer.Option(None, help="Plan to show (default: the published LATEST)."),
    window: int = typer.Option(0, help="Which hourly window of the plan (0 = first)."),
    lake: str | None = LakeOption,
) -> None:
    """The plan as a table: per region and resource, what is pre-allocated and on which instances."""
    from pipeline.plan import latest_plan_id, read_plan

    settings = _settings(lake)
    try:
        pid = plan_id or latest_plan_id(settings)
        plan, manifest = read_plan(settings, pid)
    except FileNotFoundError as exc:
        _fail(str(exc))
    starts = sorted(plan["valid_from"].unique())
    if not starts:
        console.print(f"plan {pid} pre-allocates nothing (status {manifest['status']})")
        return
    if not 0 <= window < len(starts):
        _fail(f"window {window} out of range: the plan has {len(starts)} windows (0..{len(starts) - 1})")
    rows = plan[plan["valid_from"] == starts[window]]
    title = f"plan {pid} [{manifest['status']}] · window {str(starts[window])[:16]} · τ(vcpu) {manifest['tau']['vcpu']:.3f}"
    table = Table(title=title, title_justify="left")
    for col in ("region", "resource", "demand q(τ)", "pre-allocated", "cover"):
        table.add_column(col, justify="left" if col in ("region", "resource") else "right")
    for (region, resource), group in rows.groupby(["region", "resource_type"], sort=True):
        need, held = group["demand_quantile"].iloc[0], group["quantity"].sum()
        cover = f"{held / need:.0%}" if need > 0 else "—"
        table.add_row(region, resource, f"{need:.1f}", f"{held:.1f}", cover)
    console.print(table)
    lines = Table(title="instances", title_justify="left")
    for col in ("region", "instance type", "option", "count", "USD/h"):
        lines.add_column(col, justify="right" if col in ("count", "USD/h") else "left")
    per_line = rows.groupby(["region", "instance_type", "purchase_option"], sort=True).agg(count=("count", "first"), cost=("hourly_cost", "sum"))
    for (region, itype, option), line in per_line.iterrows():
        lines.add_row(region, itype, option, str(int(line["count"])), f"{line['cost']:.4f}")
    console.print(lines)
    console.print(f"window cost ${per_line['cost'].sum():.2f}/h · objective {manifest['objective']:.2f} · "
                  f"bound {manifest['lower_bound']:.2f} · gap {100 * manifest['gap']:.2f} %")
    if manifest.get("shortfall"):
        console.print(f"[red]shortfall[/] in {len(manifest['shortfall'])} region/resource windows — see manifest.json")


@plan_app.command("explain")
def plan_explain(
    region: str = typer.Argument(..., help="Region to explain, e.g. us-east-1."),
    plan_id: str | None = typer.Option(None, help="Plan (default: the published LATEST)."),
    lake: str | None = LakeOption,
) -> None:
    """Why the plan holds what it holds in one region: every line's reason."""
    from pipeline.plan import latest_plan_id, read_plan

    settings = _settings(lake)
    try:
        pid = plan_id or latest_plan_id(settings)
        plan, manifest = read_plan(settings, pid)
    except FileNotFoundError as exc:
        _fail(str(exc))
    rows = plan[plan["region"] == region]
    if rows.empty:
        known = ", ".join(sorted(plan["region"].unique()))
        _fail(f"plan {pid} has no lines in region {region!r}; regions in the plan: {known}")
    from pipeline.plan.explain import explain_region

    for text in explain_region(plan, manifest, region):
        console.print(text, markup=False, soft_wrap=True)


@app.command()
def report(
    plan_id: str | None = typer.Option(None, help="Plan to report on (default: the published LATEST)."),
    lake: str | None = LakeOption,
    build: str | None = BuildOption,
) -> None:
    """Write the self-contained HTML report of a plan and print its path."""
    from pipeline.common.intervals import DataInterval
    from pipeline.plan import latest_plan_id, read_plan
    from pipeline.report.html import write_plan_report

    settings = _settings(lake, build=build)
    try:
        pid = plan_id or latest_plan_id(settings)
        _, manifest = read_plan(settings, pid)
        interval = DataInterval.between(manifest["data_interval"]["start"], manifest["data_interval"]["end"])
        console.print(write_plan_report(pid, interval, settings))
    except FileNotFoundError as exc:
        _fail(str(exc))


@irc_app.command("request")
def irc_request(
    source_region: str = typer.Option(..., "--from", help="Source region of the peering."),
    destination_region: str = typer.Option(..., "--to", help="Destination region (where the resources are held)."),
    vcpu: float = typer.Option(0.0, help="vCPUs."),
    memory_gib: float = typer.Option(0.0, "--memory-gib", help="Memory in GiB."),
    storage_gib: float = typer.Option(0.0, "--storage-gib", help="Storage in GiB."),
    bandwidth_gbps: float = typer.Option(0.0, "--bandwidth-gbps", help="Bandwidth in Gbit/s."),
    duration_s: float = typer.Option(3600.0, "--duration-s", help="How long the peering holds its resources."),
    priority: str = typer.Option("normal", help="low | normal | high | critical."),
    at: str | None = typer.Option(None, help="Request time, UTC ISO-8601 (default: now). Naive times are read as UTC."),
    request_id: str | None = typer.Option(None, help="Request id (default: a new UUID)."),
    lake: str | None = LakeOption,
) -> None:
    """Send one peering request through the IRC and print its decision as JSON (exit 1 on failure)."""
    from pipeline.irc import Coordinator, PeeringRequest

    settings = _settings(lake)
    try:
        requested_at = datetime.fromisoformat(at.replace("Z", "+00:00")) if at else datetime.now(UTC)
    except ValueError:
        _fail(f"--at {at!r} is not an ISO-8601 time; use e.g. 2026-01-29T00:30Z")
    if requested_at.tzinfo is None:
        requested_at = requested_at.replace(tzinfo=UTC)
    request = PeeringRequest(
        request_id=request_id or uuid.uuid4().hex,
        requested_at=requested_at,
        source_region=source_region,
        destination_region=destination_region,
        resource_requirements={"vcpu": vcpu, "memory_gib": memory_gib, "storage_gib": storage_gib, "bandwidth_gbps": bandwidth_gbps},
        duration_s=duration_s,
        priority=priority,
    )
    response = Coordinator(settings.lake_root).handle_peering_request(request)
    typer.echo(json.dumps(response.to_dict(), sort_keys=True))
    raise typer.Exit(0 if response.ok else 1)


@samples_app.command("generate")
def samples_generate(
    out: Path = typer.Option(Path("data_samples"), help="Directory to write the source datasets into."),
    start: str = typer.Option("2026-01-01", help="First UTC day."),
    days: int = typer.Option(35, min=1, help="Number of days."),
    seed: int = typer.Option(7, help="Random seed (same seed → byte-identical files)."),
    rate: float = typer.Option(55.0, help="Average peering requests per hour, all pairs together."),
    clean: bool = typer.Option(False, help="Do not inject the documented dirty rows."),
) -> None:
    """Generate realistic sample source data (seasonality, campaigns, bursts, heavy tails, gaps)."""
    from pipeline.samples.generate import generate_sample_data

    counts = generate_sample_data(out, start=date.fromisoformat(start), days=days, seed=seed, requests_per_hour=rate, dirty_rows=not clean)
    for name, rows in counts.items():
        console.print(f"{name:>20}: {rows} rows")
    console.print(f"written to {out}")


from pipeline.cli.irc import register as _register_irc_commands  # noqa: E402 - irc shadow/replay/serve

_register_irc_commands(irc_app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
