"""`peerscale irc …` commands beyond `request`: shadow, replay, serve.

Registered onto the main CLI's `irc_app` by `register()`; Typer is imported here (the CLI
already has it) but nothing heavy: the coordinator and rich are imported inside the commands.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import typer

LakeOption = typer.Option(None, "--lake", envvar="PEERSCALE_LAKE", help="Lake root: a directory or s3://bucket/prefix.")
RequestsOption = typer.Option(
    ..., "--requests", exists=True, dir_okay=False, readable=True,
    help="Request stream: a peering_requests file (.csv like data_samples/peering_requests, .jsonl or .parquet).",
)


def _lake(lake: str | None) -> str:
    from pipeline.common.config import Settings

    return Settings.from_env(lake_root=lake).lake_root


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _ceilings(text: str | None) -> dict[str, float] | None:
    """'low=0.8,normal=0.9' → {'low': 0.8, 'normal': 0.9}."""
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            _fail(f"--candidate-ceilings {text!r}: use priority=share pairs, e.g. low=0.8,normal=0.9")
    return out


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return "—" if value is None else str(value)


def shadow(
    candidate: str | None = typer.Option(None, "--candidate", help="Candidate PLAN_ID (default: the production plan, to compare configurations)."),
    requests: Path = RequestsOption,
    production: str | None = typer.Option(None, "--production", help="Production plan (default: the published LATEST)."),
    candidate_ceilings: str | None = typer.Option(None, "--candidate-ceilings", help="Candidate priority ceilings, e.g. low=0.8,normal=0.9."),
    as_json: bool = typer.Option(False, "--json", help="Print only the report as JSON."),
    lake: str | None = LakeOption,
) -> None:
    """Replay a request stream through production and a candidate side by side (separate in-memory ledgers; production state is never touched)."""
    from pipeline.irc.plan_source import PlanUnavailable, read_latest_plan_id
    from pipeline.irc.shadow import candidate_coordinator, load_requests, replay_shadow

    root = _lake(lake)
    try:
        production_id = production or read_latest_plan_id(root)
    except PlanUnavailable as exc:
        _fail(f"no production plan: {exc}; publish one (peerscale run) or pass --production")
    try:
        stream = load_requests(requests)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    prod = candidate_coordinator(root, production_id, name="production")
    cand = candidate_coordinator(root, candidate or production_id, priority_ceilings=_ceilings(candidate_ceilings))
    for side, coordinator, pid in (("production", prod, production_id), ("candidate", cand, candidate or production_id)):
        if coordinator.plan is None:
            _fail(f"{side} plan {pid} is not usable: {coordinator.plan_error}")
    report = replay_shadow(stream, prod, cand)
    if not as_json:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"shadow: {len(stream)} requests from {requests.name}", title_justify="left")
        table.add_column("metric")
        table.add_column(f"production\n{production_id}", justify="right")
        table.add_column(f"candidate\n{candidate or production_id}", justify="right")
        table.add_column("Δ", justify="right")
        for metric, p, c, delta in report.rows():
            table.add_row(metric, _fmt(p), _fmt(c), _fmt(delta))
        console = Console()
        console.print(table)
        console.print(f"requests decided differently: {report.disagreements}")
    typer.echo(json.dumps(report.to_dict(), sort_keys=True, default=str))


def replay(
    requests: Path = RequestsOption,
    ledger: str = typer.Option("memory", "--ledger", envvar="PEERSCALE_IRC_LEDGER", help="memory | sqlite:///path | postgresql://…[?schema=…]"),
    plan_id: str | None = typer.Option(None, "--plan-id", help="Plan to serve from (default: the published LATEST)."),
    log_outcomes: bool = typer.Option(False, "--log-outcomes/--no-log-outcomes", help="Write the decisions to lake/raw/irc_outcomes (feeds the τ controller)."),
    metrics: bool = typer.Option(False, "--metrics", help="Print the Prometheus metrics after the replay."),
    lake: str | None = LakeOption,
) -> None:
    """Send a request stream through the IRC in request-time order and print a summary (or metrics)."""
    from collections import Counter

    from pipeline.irc import Coordinator, open_ledger
    from pipeline.irc.shadow import load_requests

    root = _lake(lake)
    try:
        stream = load_requests(requests)
        store = open_ledger(ledger)
    except (OSError, ValueError, ImportError) as exc:
        _fail(str(exc))
    with Coordinator(root, store, plan_id=plan_id, reload_interval_s=None, outcomes=log_outcomes) as irc:
        paths = Counter(irc.handle_peering_request(r).path for r in stream)
        text = irc.metrics_text()
    store.close()
    if metrics:
        typer.echo(text, nl=False)
    else:
        typer.echo(json.dumps({"requests": len(stream), **{f"path_{k}": v for k, v in sorted(paths.items())}}, sort_keys=True))


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8787, help="Port (0 picks a free one; the bound address is printed)."),
    ledger: str = typer.Option("memory", "--ledger", envvar="PEERSCALE_IRC_LEDGER", help="memory | sqlite:///path | postgresql://…[?schema=…]"),
    reload_interval: float = typer.Option(10.0, "--reload-interval", help="Seconds between polls of plans/LATEST."),
    log_outcomes: bool = typer.Option(True, "--log-outcomes/--no-log-outcomes", help="Write every decision to lake/raw/irc_outcomes."),
    lake: str | None = LakeOption,
) -> None:
    """Run the IRC as an HTTP service: POST /v1/requests, POST /v1/release, GET /metrics, GET /healthz."""
    from pipeline.irc import Coordinator, open_ledger
    from pipeline.irc.server import make_server

    root = _lake(lake)
    try:
        store = open_ledger(ledger)
    except (OSError, ValueError, ImportError) as exc:
        _fail(str(exc))
    irc = Coordinator(root, store, reload_interval_s=reload_interval, outcomes=log_outcomes, clock=time.time)
    server = make_server(irc, host, port)
    bound_host, bound_port = server.server_address[:2]
    signal.signal(signal.SIGTERM, _interrupt)
    typer.echo(json.dumps({"listening": f"http://{bound_host}:{bound_port}", "plan_id": irc.plan.plan_id if irc.plan else None,
                           "ledger": repr(store)}), err=False)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        irc.close()
        store.close()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops serve_forever like Ctrl-C: flush outcomes, close the ledger


def register(irc_app: typer.Typer) -> None:
    """Add these commands to the main CLI's `peerscale irc` group."""
    irc_app.command("shadow")(shadow)
    irc_app.command("replay")(replay)
    irc_app.command("serve")(serve)
