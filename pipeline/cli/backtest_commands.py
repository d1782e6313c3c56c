"""`peerscale backtest`: replay a request log under each allocation policy and compare them.

With no `--from/--to` it replays the last 7 days of the source (`pipeline.ops.backtest.default_window`), so a newcomer
can run it right after `make demo`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from pipeline.cli.options import (
    BuildOption,
    JsonOption,
    LakeOption,
    console,
    err,
    fail,
    note,
    print_json,
    progress_columns,
    safe,
    settings,
    styled,
)

if TYPE_CHECKING:
    from pipeline.common.config import Settings
    from pipeline.ops.backtest import BacktestConfig, BacktestResult

# Bounds of the replay knobs (documented in --help): the refit interval is also the forecast horizon.
MAX_REFIT_EVERY_HOURS = 168
MAX_HEADROOM = 10.0
MAX_WORKERS = 64


def backtest(
    requests: str | None = typer.Option(
        None, "--requests", "--source", envvar="PEERSCALE_SOURCE",
        help="Source root holding peering_requests/ and inventory/, a directory or s3:// URI "
             "(default: the configured source, PEERSCALE_SOURCE, else data_samples/ in the checkout).",
    ),
    start: str | None = typer.Option(None, "--from", help="First hour to replay, UTC, e.g. 2026-01-29T00:00 "
                                     "(default: 7 days before --to)."),
    end: str | None = typer.Option(None, "--to", help="End of the replay, UTC, exclusive "
                                   "(default: the end of the last day in <source>/peering_requests/)."),
    policy: str = typer.Option("predictive,predictive_tiered,reactive,static,oracle,aws_predictive",
                               help="Comma-separated policies to compare (aws_predictive: EC2 predictive scaling as "
                                    "documented; predictive_tiered: with warm capacity)."),
    refit_every: int = typer.Option(6, min=1, max=MAX_REFIT_EVERY_HOURS, help="Refit the predictive forecast every N hours, "
                                    f"1 to {MAX_REFIT_EVERY_HOURS} (between refits it plans from older data only)."),
    headroom: float = typer.Option(0.2, min=0.0, max=MAX_HEADROOM, help="Static policy headroom over last week's peak "
                                   f"(0.2 = 20 %; 0 to {MAX_HEADROOM:g})."),
    aws_target: float = typer.Option(0.7, min=0.05, max=1.0, help="aws_predictive's target utilization: capacity = "
                                     "forecast load ÷ this (AWS has no default; 0.7 = 70 %)."),
    workers: int = typer.Option(0, min=0, max=MAX_WORKERS, help="Processes for the refits and the policies, which run side "
                                f"by side (0 = one per core; 1 = all in this process; at most {MAX_WORKERS})."),
    report_path: Path | None = typer.Option(None, "--report", help="Write the HTML report here "
                                            "(default: <build>/reports/backtest-<from>-<to>.html)."),
    as_json: bool = JsonOption,
    build: str | None = BuildOption,
    lake: str | None = LakeOption,
) -> None:
    """Replay a request log hour by hour under each policy and compare hit rate, latency and cost to the oracle."""
    from pipeline.common.storage import join
    from pipeline.ops.backtest import record_backtest
    from pipeline.report.html import write_backtest_report

    config = settings(lake, requests, build)  # the lake only receives the summary (lake/backtests/), for `peerscale ui`
    backtest_config = replace(_config(config.source_root, start, end, policy=policy, refit_every=refit_every, headroom=headroom),
                              aws_target_utilization=aws_target, workers=workers)
    if not (start and end):
        note(f"replaying [{backtest_config.start:%Y-%m-%dT%H:%M}, {backtest_config.end:%Y-%m-%dT%H:%M}) of {config.source_root} "
             "(pass --from/--to to choose)")
    result = _replay(backtest_config, config, transient=as_json)
    summary = result.summary()
    window = f"{backtest_config.start:%Y%m%dT%H%M}-{backtest_config.end:%Y%m%dT%H%M}"
    path = str(report_path) if report_path else join(config.build_root, "reports", f"backtest-{window}.html")
    write_backtest_report(result, path)
    summary["report"] = path
    summary["recorded"] = record_backtest(config.lake_root, result)  # for the analyst app (peerscale ui)
    if as_json:
        print_json(summary)
        return
    _print_summary(summary)
    console.print(styled(f"report: {path}"))


def _config(source_root: str, start: str | None, end: str | None, *, policy: str, refit_every: int, headroom: float) -> BacktestConfig:
    from pipeline.ops.backtest import BacktestConfig, parse_policies

    try:
        from pipeline.ops.backtest import default_window

        first, last = default_window(source_root, start, end)
        return BacktestConfig(start=first, end=last, policies=parse_policies(policy), static_headroom=headroom,
                              refit_every_hours=refit_every, horizon_hours=max(refit_every, 1))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def _replay(backtest_config: BacktestConfig, config: Settings, *, transient: bool) -> BacktestResult:
    """run_backtest over the configured source, with a progress bar on stderr."""
    from rich.progress import Progress

    from pipeline.ops.backtest import run_backtest

    with Progress(*progress_columns(), console=err, transient=transient) as progress:
        task = progress.add_task("replay", total=None)

        def step(message: str, done: int, total: int) -> None:
            progress.update(task, description=safe(f"replay {message}"), completed=done, total=total)

        try:
            return run_backtest(config.source_root, backtest_config, config, progress=step)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))


def _print_summary(summary: dict) -> None:
    table = Table(title=safe(f"backtest {summary['from'][:16]} → {summary['to'][:16]} ({summary['hours']} h)"), title_justify="left")
    for col in ("policy", "no cold start", "hit rate", "warm", "cold start", "failures", "p95 latency", "idle vCPU-h", "total cost",
                "vs oracle"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, s in summary["policies"].items():
        ratio = s.get("cost_vs_oracle")
        table.add_row(safe(name), f"{s['cold_start_free_rate']:.1%}", f"{s['hit_rate']:.1%}", f"{s['warm_share']:.1%}",
                      f"{s['cold_start_share']:.1%}", str(s["failures"]), f"{s['latency_p95_s']:.0f} s",
                      f"{s['idle_vcpu_hours']:.0f}", f"${s['cost']['total']:.2f}", f"{ratio:.3f}" if ratio is not None else "—")
    console.print(table)
