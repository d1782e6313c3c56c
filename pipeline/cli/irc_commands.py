"""`peerscale irc request | shadow | replay | serve | health`: the Inter-Region Coordinator from the shell.

The coordinator and rich tables are imported inside the commands: `peerscale irc request` must not
drag the batch stack (pandas, Airflow, solvers) into the request path.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pipeline.cli.options import (
    EXIT_FAILED,
    EXIT_USAGE,
    HOW_TO_PUBLISH,
    LakeOption,
    check_id,
    console,
    fail,
    note,
    print_json,
    safe,
    settings,
    styled,
)

if TYPE_CHECKING:
    from pipeline.irc.plan_source import LoadedPlan

RequestsOption = typer.Option(
    ..., "--requests", exists=True, dir_okay=False, readable=True,
    help="Request stream: a peering_requests file (.csv like data_samples/peering_requests, .jsonl or .parquet).",
)
INVALID_PREFIX = "Invalid request:"  # how the IRC words a request it can never serve (architecture.md)
AT_HELP = ("Request time, UTC ISO-8601 (naive times are UTC), or 'now'. Default: now while the published plan is valid; "
           "when now is outside the plan's validity (a historical plan, e.g. the one `make demo` publishes for 2026-01-29) "
           "the start of the plan's first window, so the request is served from the plan, and a note on stderr says so. "
           "Pass --at now to see how the IRC serves the current time (on demand when the plan has expired). "
           "A time more than 5 minutes ahead of this machine's clock is an invalid request.")


def _lake(lake: str | None) -> str:
    return settings(lake).lake_root


def request(
    source_region: str = typer.Option(..., "--from", help="Source region of the peering."),
    destination_region: str = typer.Option(..., "--to", help="Destination region (where the resources are held)."),
    vcpu: float = typer.Option(0.0, help="vCPUs."),
    memory_gib: float = typer.Option(0.0, "--memory-gib", help="Memory in GiB."),
    storage_gib: float = typer.Option(0.0, "--storage-gib", help="Storage in GiB."),
    bandwidth_gbps: float = typer.Option(0.0, "--bandwidth-gbps", help="Bandwidth in Gbit/s."),
    duration_s: float = typer.Option(3600.0, "--duration-s", help="How long the peering holds its resources."),
    priority: str = typer.Option("normal", help="low | normal | high | critical."),
    at: str | None = typer.Option(None, help=AT_HELP),
    request_id: str | None = typer.Option(None, help="Request id (default: a new UUID)."),
    lake: str | None = LakeOption,
) -> None:
    """Send one peering request through the IRC (the published plan, an in-memory ledger) and print its
    decision as JSON (exit 1 when it cannot be served, 2 when the request is invalid)."""
    from pipeline.irc import Coordinator, PeeringRequest

    asked_at = _parse_at(at)
    root = _lake(lake)
    with Coordinator(root) as irc:
        requested_at = asked_at or _default_request_time(irc.plan, irc.plan_error, root)
        response = irc.handle_peering_request(PeeringRequest(
            request_id=request_id or uuid.uuid4().hex,
            requested_at=requested_at,
            source_region=source_region,
            destination_region=destination_region,
            resource_requirements={"vcpu": vcpu, "memory_gib": memory_gib, "storage_gib": storage_gib, "bandwidth_gbps": bandwidth_gbps},
            duration_s=duration_s,
            priority=priority,
        ))
        zones = irc.plan.zone_note(response.serving_region) if irc.plan is not None else None
    print_json({**response.to_dict(), **({"zones": zones} if zones else {})})
    if not response.ok:
        raise typer.Exit(EXIT_USAGE if response.message.startswith(INVALID_PREFIX) else EXIT_FAILED)


def _parse_at(at: str | None) -> datetime | None:
    """--at as an aware UTC time; None when not given (the default depends on the plan)."""
    if at is None:
        return None
    if at.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--at {at!r} is not an ISO-8601 time; use e.g. 2026-01-29T00:30Z, or now")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _default_request_time(plan: LoadedPlan | None, plan_error: str | None, lake_root: str) -> datetime:
    """Now, unless now is outside the plan's validity: then the start of its first window (see AT_HELP)."""
    now = datetime.now(UTC)
    if plan is None:
        note(f"no plan to serve from in {lake_root} ({plan_error}): the request is served on demand only; {HOW_TO_PUBLISH}")
        return now
    if plan.valid_from <= now < plan.valid_to:
        return now
    note(f"--at not given and now ({now:%Y-%m-%dT%H:%MZ}) is outside plan {plan.plan_id}'s validity "
         f"[{plan.valid_from:%Y-%m-%dT%H:%MZ}, {plan.valid_to:%Y-%m-%dT%H:%MZ}): requesting at {plan.valid_from:%Y-%m-%dT%H:%MZ}, "
         "the start of its first window (pass --at now for the current time)")
    return plan.valid_from


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
            fail(f"--candidate-ceilings {text!r}: use priority=share pairs, e.g. low=0.8,normal=0.9")
    return out


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return "—" if value is None else str(value)


def shadow(
    candidate: str | None = typer.Option(None, "--candidate", help="Candidate PLAN_ID "
                                         "(default: the production plan, to compare configurations)."),
    requests: Path = RequestsOption,
    production: str | None = typer.Option(None, "--production", help="Production plan (default: the published LATEST)."),
    candidate_ceilings: str | None = typer.Option(None, "--candidate-ceilings",
                                                  help="Candidate priority ceilings, e.g. low=0.8,normal=0.9."),
    as_json: bool = typer.Option(False, "--json", help="Print only the report, as one JSON object (without it: a table, then the JSON)."),
    lake: str | None = LakeOption,
) -> None:
    """Replay a request stream through production and a candidate side by side (separate in-memory
    ledgers; production state is never touched)."""
    from pipeline.irc import REQUEST_TIME
    from pipeline.irc.plan_source import PlanUnavailable, read_latest_plan_id
    from pipeline.irc.shadow import candidate_coordinator, load_requests, replay_shadow

    root = _lake(lake)
    for where, given in (("--candidate", candidate), ("--production", production)):
        if given:
            check_id(given, where)
    try:
        production_id = production or read_latest_plan_id(root)
    except PlanUnavailable as exc:
        fail(f"no production plan: {exc}; publish one (peerscale run) or pass --production")
    try:
        stream = load_requests(requests)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    prod = candidate_coordinator(root, production_id, name="production", clock=REQUEST_TIME)  # a replay of a file
    cand = candidate_coordinator(root, candidate or production_id, priority_ceilings=_ceilings(candidate_ceilings), clock=REQUEST_TIME)
    for side, coordinator, pid in (("production", prod, production_id), ("candidate", cand, candidate or production_id)):
        if coordinator.plan is None:
            fail(f"{side} plan {pid} is not usable: {coordinator.plan_error}")
    report = replay_shadow(stream, prod, cand)
    if not as_json:
        from rich.table import Table

        table = Table(title=safe(f"shadow: {len(stream)} requests from {requests.name}"), title_justify="left")
        table.add_column("metric")
        table.add_column(f"production\n{safe(production_id)}", justify="right")
        table.add_column(f"candidate\n{safe(candidate or production_id)}", justify="right")
        table.add_column("Δ", justify="right")
        for metric, p, c, delta in report.rows():
            table.add_row(safe(metric), safe(_fmt(p)), safe(_fmt(c)), safe(_fmt(delta)))
        console.print(table)
        console.print(styled(f"requests decided differently: {report.disagreements}"))
    print_json(report.to_dict())


def replay(
    requests: Path = RequestsOption,
    ledger: str = typer.Option("memory", "--ledger", envvar="PEERSCALE_IRC_LEDGER", help="memory | sqlite:///path | postgresql://…[?schema=…]"),
    plan_id: str | None = typer.Option(None, "--plan-id", help="Plan to serve from (default: the published LATEST)."),
    log_outcomes: bool = typer.Option(False, "--log-outcomes/--no-log-outcomes",
                                      help="Write the decisions to lake/raw/irc_outcomes (feeds the τ controller)."),
    metrics: bool = typer.Option(False, "--metrics", help="Print the Prometheus metrics after the replay."),
    lake: str | None = LakeOption,
) -> None:
    """Send a request stream through the IRC in request-time order and print a summary (or metrics)."""
    from collections import Counter

    from pipeline.irc import REQUEST_TIME, Coordinator, open_ledger
    from pipeline.irc.shadow import load_requests

    root = _lake(lake)
    if plan_id:
        check_id(plan_id, "--plan-id")
    try:
        stream = load_requests(requests)
        store = open_ledger(ledger)
    except (OSError, ValueError, ImportError) as exc:
        fail(str(exc))
    # A replay: the file's own request times drive expiry (its clock), not this machine's.
    with Coordinator(root, store, plan_id=plan_id, reload_interval_s=None, outcomes=log_outcomes, clock=REQUEST_TIME) as irc:
        paths = Counter(irc.handle_peering_request(r).path for r in stream)
        text = irc.metrics_text()
    store.close()
    if metrics:
        typer.echo(text, nl=False)
    else:
        summary = {"requests": len(stream), "rejected_lines": len(stream.rejected), **{f"path_{k}": v for k, v in sorted(paths.items())}}
        typer.echo(json.dumps(summary, sort_keys=True))


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8787, min=0, max=65535, help="Port (0 picks a free one; the bound address is printed)."),
    ledger: str = typer.Option("memory", "--ledger", envvar="PEERSCALE_IRC_LEDGER", help="memory | sqlite:///path | postgresql://…[?schema=…]"),
    workers: int = typer.Option(1, "--workers", min=1, max=64, envvar="PEERSCALE_IRC_WORKERS",
                                help="Worker processes (more than 1 needs a shared ledger: sqlite or postgresql)."),
    reload_interval: float = typer.Option(10.0, "--reload-interval", min=0.1, max=86400.0,
                                          help="Seconds between polls of plans/LATEST (0.1 to 86400)."),
    log_outcomes: bool = typer.Option(True, "--log-outcomes/--no-log-outcomes", help="Write every decision to lake/raw/irc_outcomes."),
    token_file: Path | None = typer.Option(None, "--token-file", envvar="PEERSCALE_IRC_TOKEN_FILE", dir_okay=False,
                                           help="Bearer tokens, one a line (also: PEERSCALE_IRC_TOKENS, comma-separated)."),
    allow_no_auth: bool = typer.Option(False, "--allow-no-auth",
                                       help="Serve without tokens on a non-loopback address (loopback never needs it)."),
    on_demand_only: bool = typer.Option(False, "--on-demand-only", envvar="PEERSCALE_IRC_ON_DEMAND_ONLY",
                                        help="Ready without a verified plan (serve on demand until one is published)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", envvar="PEERSCALE_IRC_TLS_CERT", dir_okay=False,
                                         help="PEM certificate (HTTPS)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", envvar="PEERSCALE_IRC_TLS_KEY", dir_okay=False, help="PEM private key."),
    max_body: int = typer.Option(64 * 1024, "--max-body", min=256, max=16 * 1024 * 1024, help="Largest request body, bytes."),
    read_timeout: float = typer.Option(10.0, "--read-timeout", min=0.1, max=300.0, help="Seconds a client has to send its body."),
    graceful_timeout: int = typer.Option(30, "--graceful-timeout", min=1, max=3600,
                                         help="Seconds requests in flight get to finish on SIGTERM."),
    max_connections: int = typer.Option(1024, "--max-connections", min=1, help="Concurrent connections per worker (then 503)."),
    metrics_dir: Path | None = typer.Option(None, "--metrics-dir", envvar="PEERSCALE_IRC_METRICS_DIR", file_okay=False,
                                            help="prometheus_client multi-process directory (emptied at start; default: a temporary one)."),
    lake: str | None = LakeOption,
) -> None:
    """Run the IRC as an HTTP service (uvicorn): POST /v1/requests, POST /v1/release, admin routes under /v1/admin,
    GET /metrics, /healthz, /readyz, /openapi.json. Prints one JSON line with the address, then serves until SIGTERM."""
    from pipeline.irc.service import ServiceConfig, ServiceError, run

    config = ServiceConfig(
        lake_root=_lake(lake), ledger_url=ledger, host=host, port=port, workers=workers, reload_interval_s=reload_interval,
        log_outcomes=log_outcomes, token_file=str(token_file) if token_file else None, allow_no_auth=allow_no_auth,
        on_demand_only=on_demand_only, tls_cert=str(tls_cert) if tls_cert else None, tls_key=str(tls_key) if tls_key else None,
        max_body=max_body, read_timeout_s=read_timeout, graceful_timeout_s=graceful_timeout, max_connections=max_connections,
        metrics_dir=str(metrics_dir) if metrics_dir else None,
    )
    try:
        run(config, echo=typer.echo)
    except ServiceError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def health(
    unhealthy: list[str] = typer.Option([], "--unhealthy", help="Mark a region unhealthy (repeatable)."),
    healthy: list[str] = typer.Option([], "--healthy", help="Mark a region healthy again (repeatable)."),
    note: str = typer.Option("", "--note", help="Why (kept in the file and quoted in the IRC's messages)."),
    lake: str | None = LakeOption,
) -> None:
    """Show or change the regions the IRC must not serve from (<lake>/irc/unhealthy_regions). Every
    replica re-reads the marks at its next plan poll; requests to a marked region go to its failover
    partner, then to the regions the plan relocated its demand to. Prints the marks as JSON."""
    from pipeline.irc import health as marks_file

    path = marks_file.default_path(_lake(lake))
    try:
        marks = marks_file.read_marks(path)
        for region in unhealthy:
            marks = marks_file.set_mark(path, region, note)
        for region in healthy:
            marks = marks_file.set_mark(path, region, None)
    except ValueError as exc:
        fail(f"{exc}; fix the region name (or the line in {path})")
    except OSError as exc:
        fail(f"cannot read or write {path}: {exc}", EXIT_FAILED)
    print_json({"file": path, "unhealthy": marks})

