"""What every command group shares: the `--lake/--source/--build/--json` options, the settings
they resolve to, one way to fail, one way to print JSON, and the published-plan lookup whose
errors tell a newcomer what to run.

Only typer and rich are imported here; anything heavier is imported inside the helper that
needs it, so `peerscale --help` stays fast.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

from pipeline.common.config import Settings

if TYPE_CHECKING:
    import pandas as pd

console = Console()  # results
err = Console(stderr=True)  # progress, notes and errors: stdout stays parseable under --json

LakeOption = typer.Option(None, "--lake", envvar="PEERSCALE_LAKE",
                          help="Lake root: a directory or s3://bucket/prefix (default: lake/ in the checkout).")
SourceOption = typer.Option(None, "--source", envvar="PEERSCALE_SOURCE",
                            help="Source data root: a directory or s3:// URI (default: data_samples/ in the checkout).")
BuildOption = typer.Option(None, "--build", envvar="PEERSCALE_BUILD",
                           help="Where rendered IaC and reports go (default: build/ in the checkout).")
JsonOption = typer.Option(False, "--json", help="Print the result as one JSON object on stdout (progress and errors go to stderr).")

# What a newcomer can run to get a published plan into the default lake.
HOW_TO_PUBLISH = ("run `make demo` in a checkout, or `peerscale ingest --from 2026-01-01T00:00 --to 2026-01-28T23:00` "
                  "then `peerscale run --interval-end 2026-01-29T00:00` (the samples), "
                  "or point --lake / PEERSCALE_LAKE at a lake that has one")


def settings(lake: str | None = None, source: str | None = None, build: str | None = None) -> Settings:
    """Settings from the environment, with the command line's `--lake/--source/--build` on top."""
    return Settings.from_env(lake_root=lake, source_root=source, build_root=build)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` on stderr and exit (2: the user can fix it; 1: the operation failed)."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


def note(message: str) -> None:
    """A remark on stderr that does not change the result (e.g. which default was picked)."""
    err.print(f"[yellow]note:[/] {message}", soft_wrap=True, markup=True, highlight=False)


def print_json(payload: Any, *, indent: int | None = None) -> None:
    """One JSON object on stdout, keys sorted; non-JSON values (timestamps) as strings."""
    typer.echo(json.dumps(payload, sort_keys=True, indent=indent, default=str))


def published_plan_ids(config: Settings) -> list[str]:
    """Ids of the plans in the lake's plans/ directory, oldest first (plan ids sort by time)."""
    from pipeline.common import lake, storage

    prefix = "plan_id="
    return [name[len(prefix):] for name in storage.list_names(lake.plans_root(config.lake_root)) if name.startswith(prefix)]


def resolve_plan_id(config: Settings, plan_id: str | None) -> str:
    """`plan_id`, or the one plans/LATEST points at; fails with what to run when there is none."""
    from pipeline.common import lake, storage

    if plan_id:
        return plan_id
    pointer = lake.latest_pointer(config.lake_root)
    if not storage.exists(pointer):
        fail(f"no published plan in {config.lake_root} ({pointer} does not exist yet): {HOW_TO_PUBLISH}")
    return storage.read_text(pointer).strip()


def load_plan(config: Settings, plan_id: str | None) -> tuple[str, pd.DataFrame, dict]:
    """(plan id, rows, manifest) of `plan_id` or of the published LATEST, failing helpfully."""
    from pipeline.plan import read_plan

    pid = resolve_plan_id(config, plan_id)
    try:
        rows, manifest = read_plan(config, pid)
    except FileNotFoundError as exc:
        known = published_plan_ids(config)
        fail(f"{exc}; plans in {config.lake_root}: {', '.join(known) if known else 'none'}")
    return pid, rows, manifest
