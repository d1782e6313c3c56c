"""What every command group shares: the `--lake/--source/--build/--json` options, the settings
they resolve to, one way to fail, one way to print data, one way to print JSON, and the
published-plan lookup whose errors tell a newcomer what to run.

Output never interprets data: both consoles run with Rich markup and emoji codes off, so a region
named `[/]` or `[link=…]` prints as those characters, and `safe` shows control characters
(escape sequences, newlines) as visible escapes. Styled text is built with `styled`, which styles
our own words and never parses the values between them.

Only typer and rich are imported here; anything heavier is imported inside the helper that
needs it, so `peerscale --help` stays fast.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from pipeline.common.config import Settings

if TYPE_CHECKING:
    import pandas as pd

# Markup and emoji off: data (region names, reasons, ids, paths) is printed as it is.
console = Console(markup=False, emoji=False)  # results
err = Console(stderr=True, markup=False, emoji=False)  # progress, notes and errors: stdout stays parseable under --json

# Exit codes, documented in `peerscale --help`.
EXIT_FAILED = 1  # the operation failed: storage outage, planner/solver failure, a bug
EXIT_USAGE = 2  # the input or the usage is wrong: the user can fix it and re-run
DEBUG_ENV = "PEERSCALE_DEBUG"
MAX_MESSAGE_CHARS = 2000  # an error quoting a 99 KB raw line stays one readable line

LakeOption = typer.Option(None, "--lake", envvar="PEERSCALE_LAKE",
                          help="Lake root: a directory or s3://bucket/prefix (default: lake/ in the checkout).")
SourceOption = typer.Option(None, "--source", envvar="PEERSCALE_SOURCE",
                            help="Source data root: a directory or s3:// URI (default: data_samples/ in the checkout).")
BuildOption = typer.Option(None, "--build", envvar="PEERSCALE_BUILD",
                           help="Where rendered IaC and reports go (default: build/ in the checkout).")
CUnderOption = typer.Option(None, "--c-under", metavar="COSTS",
                            help="What a missed unit costs, USD per unit-hour: 'vcpu=0.43,memory_gib=0.05' for every region, "
                                 "'eu-west-1:vcpu=0.6' for one; wins over PEERSCALE_C_UNDER and planner.json.")
COverOption = typer.Option(None, "--c-over", metavar="COSTS",
                           help="What an idle pre-allocated unit costs, USD per unit-hour, same form as --c-under "
                                "(default: from the catalog's on-demand prices).")
WarmOption = typer.Option(None, "--warm", metavar="SETTINGS",
                          help="Warm tier (pipeline.plan.warm): 'enabled=1,hold_fraction=0.1,start_penalty_multiple=1'; "
                               "wins over PEERSCALE_WARM and planner.json costs.warm.")
WindowMinutesOption = typer.Option(None, "--window-minutes", metavar="MINUTES",
                                   help="Plan window length: 60 (hours), 30 or 15 minutes, planned from a sub-hourly forecast of "
                                        "the plan's hours (PEERSCALE_PLAN_WINDOW_MINUTES; default 60).")
ZonesOption = typer.Option(None, "--zones", metavar="ZONES",
                           help="Availability zones per region, N+1 across them: '3' for every region (capped by inventory/zones.csv), "
                                "'eu-west-1=2' or 'us-east-1=us-east-1a+us-east-1c' for one; wins over PEERSCALE_ZONES and planner.json "
                                "(default: up to 3 where the zone catalog lists at least 2).")
JsonOption = typer.Option(False, "--json", help="Print the result as one JSON object on stdout (progress and errors go to stderr).")

# What a newcomer can run to get a published plan into the default lake.
HOW_TO_PUBLISH = ("run `make demo` in a checkout, or `peerscale ingest --from 2026-01-01T00:00 --to 2026-01-28T23:00` "
                  "then `peerscale run --interval-end 2026-01-29T00:00` (the samples), "
                  "or point --lake / PEERSCALE_LAKE at a lake that has one")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"[ \t]*(?:\r\n|[\r\n\v\f\x85\u2028\u2029])[ \t]*")


def settings(lake: str | None = None, source: str | None = None, build: str | None = None) -> Settings:
    """Settings from the environment, with the command line's `--lake/--source/--build` on top."""
    return Settings.from_env(lake_root=lake, source_root=source, build_root=build)


def with_costs(config: Settings, c_under: str | None, c_over: str | None) -> Settings:
    """`config` with the command line's --c-under/--c-over as the last cost layer, checked now (not mid-run)."""
    from pipeline.plan.costs import layer_from_text

    layers = [*config.cost_texts, *([("--c-under/--c-over", c_under, c_over)] if c_under or c_over else [])]
    try:
        for source, under, over in layers:
            layer_from_text(under, over, source)
    except ValueError as exc:
        fail(str(exc))
    return replace(config, cost_texts=tuple(layers))


def with_window_minutes(config: Settings, minutes: int | None) -> Settings:
    """`config` with the command line's --window-minutes, checked now (not mid-run)."""
    if minutes is None:
        return config
    try:
        return replace(config, plan_window_minutes=minutes)
    except ValueError as exc:
        fail(f"--window-minutes: {exc}")


def with_warm(config: Settings, warm: str | None) -> Settings:
    """`config` with the command line's --warm as the last warm-tier layer, checked now (not mid-run)."""
    from pipeline.plan.warm import resolve_warm

    layers = (*config.warm_texts, *((("--warm", warm),) if warm else ()))
    try:
        resolve_warm(None, layers)
    except ValueError as exc:
        fail(str(exc))
    return replace(config, warm_texts=layers)
def with_zones(config: Settings, zones: str | None) -> Settings:
    """`config` with the command line's --zones as the last zone layer, checked now (not mid-run)."""
    from pipeline.plan.zones import layer_from_text

    layers = [*config.zone_texts, *([("--zones", zones)] if zones else [])]
    try:
        for source, text in layers:
            layer_from_text(text, source)
    except ValueError as exc:
        fail(str(exc))
    return replace(config, zone_texts=tuple(layers))


def safe(value: object) -> str:
    """`value` as text a terminal shows literally: control characters (ESC, BEL, NUL…) become
    visible `\\xNN` escapes, so data cannot move the cursor, clear the screen or forge a link."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(value))


def one_line(message: object) -> str:
    """`message` on one line: line breaks become ' ', the rest as `safe`, cut at MAX_MESSAGE_CHARS."""
    text = safe(_LINE_BREAKS.sub(" ", str(message)).strip())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + f"… ({len(text) - MAX_MESSAGE_CHARS} more characters)"


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain parts and (text, style) parts; no part is parsed as markup (see `safe`)."""
    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            out.append(safe(part[0]), style=part[1])
        else:
            out.append(safe(part))
    return out


def debug_enabled() -> bool:
    """`peerscale --debug …` or PEERSCALE_DEBUG=1: show tracebacks as well as the one-line error."""
    from typer._click.globals import get_current_context  # Typer runs on its own copy of click

    ctx = get_current_context(silent=True)
    if ctx is not None and "debug" in ctx.find_root().params:
        return bool(ctx.find_root().params["debug"])
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _redact(message: str) -> str:
    """Secret environment values never reach the terminal (messages may quote AWS errors)."""
    from pipeline.iac.safety import redact

    return redact(message)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print `error: message` as one line on stderr and exit (2: the user can fix it; 1: the operation
    failed). Under --debug, the exception being handled (if any) is printed first, as a traceback."""
    if debug_enabled() and sys.exc_info()[1] is not None:
        from rich.traceback import Traceback

        err.print(Traceback(show_locals=False))
    err.print(styled(("error:", "bold red"), " ", one_line(_redact(str(message)))), soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def note(message: str) -> None:
    """A remark on stderr that does not change the result (e.g. which default was picked)."""
    err.print(styled(("note:", "yellow"), " ", one_line(message)), soft_wrap=True, highlight=False)


def print_json(payload: Any, *, indent: int | None = None) -> None:
    """One JSON object on stdout, keys sorted; non-JSON values (timestamps) as strings."""
    typer.echo(json.dumps(payload, sort_keys=True, indent=indent, default=str))


def check_id(value: str, where: str, *, kind: str = "plan id", example: str = "plan-20260129T0000Z") -> str:
    """`value` if it is an id (PLAN_ID_PATTERN: no '/', no leading '.', nothing a path could escape with);
    otherwise fail naming `where` it came from."""
    from pipeline.common.schemas import PLAN_ID_PATTERN

    if not PLAN_ID_PATTERN.fullmatch(value):
        fail(f"{where} {value[:200]!r} is not a {kind}: use letters, digits and _.- only, e.g. {example}")
    return value


def published_plan_ids(config: Settings) -> list[str]:
    """Ids of the plans in the lake's plans/ directory, oldest first (plan ids sort by time)."""
    from pipeline.common import lake, storage

    prefix = "plan_id="
    return [name[len(prefix):] for name in storage.list_names(lake.plans_root(config.lake_root)) if name.startswith(prefix)]


def _known_plans(config: Settings) -> str:
    known = published_plan_ids(config)
    return f"plans in {config.lake_root}: {', '.join(known) if known else 'none'}"


def resolve_plan_id(config: Settings, plan_id: str | None) -> str:
    """`plan_id`, or the one plans/LATEST points at; fails with what to run when there is none."""
    from pipeline.common import lake, storage

    if plan_id:
        return check_id(plan_id, "--plan-id")
    pointer = lake.latest_pointer(config.lake_root)
    if not storage.exists(pointer):
        storage.check_bucket(config.lake_root)
        fail(f"no published plan in {config.lake_root} ({pointer} does not exist yet): {HOW_TO_PUBLISH}")
    from pipeline.common import plan_files

    try:
        return plan_files.read_latest(config.lake_root)[0]
    except plan_files.PlanIntegrityError:
        try:
            latest = storage.read_text(pointer).strip()
        except UnicodeDecodeError:
            fail(f"{pointer} is corrupt (not text): re-publish a plan (peerscale run) or pass --plan-id; {_known_plans(config)}",
                 EXIT_FAILED)
        fail(f"{pointer} is corrupt: it holds {latest[:200]!r}, not plan_id=<id>/attempt=<n>; re-publish a plan "
             f"(peerscale run) or pass --plan-id; {_known_plans(config)}", EXIT_FAILED)


def load_plan(config: Settings, plan_id: str | None) -> tuple[str, pd.DataFrame, dict]:
    """(plan id, rows, manifest) of `plan_id` or of the published LATEST, failing helpfully."""
    from pipeline.plan import read_plan

    pid = resolve_plan_id(config, plan_id)
    try:
        rows, manifest = read_plan(config, pid)
    except FileNotFoundError as exc:
        from pipeline.common import storage

        storage.check_bucket(config.lake_root)
        fail(f"{exc}; {_known_plans(config)}")
    except ValueError as exc:  # a corrupt plan.parquet or manifest.json (not Parquet, not JSON, not UTF-8)
        fail(f"plan {pid} in {config.lake_root} is corrupt ({exc}): re-run the hour that wrote it, or pick another with --plan-id; "
             f"{_known_plans(config)}", EXIT_FAILED)
    if not isinstance(manifest, dict):
        fail(f"plan {pid} in {config.lake_root} is corrupt (its manifest.json is not a JSON object): re-run the hour that wrote it",
             EXIT_FAILED)
    return pid, rows, manifest


def progress_columns() -> tuple[Any, ...]:
    """Columns of a progress bar whose description is shown literally (never parsed as markup)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
