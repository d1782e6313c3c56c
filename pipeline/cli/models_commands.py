"""`peerscale train` and `peerscale models list | show | promote | diff`: the versioned model registry."""

from __future__ import annotations

from typing import Any

import typer

from pipeline.cli.options import JsonOption, LakeOption, SourceOption, console, fail, print_json, safe, settings, styled

TRAINING_HISTORY_DAYS = 28  # as the daily DAG: four weekly cycles of hourly history


def train(
    interval_end: str = typer.Option(..., help="End of the training data, UTC, e.g. 2026-01-29T00:00."),
    models: str | None = typer.Option(None, help="Comma-separated zoo (default: the per-series models, the GBM, Prophet where installed)."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Move CURRENT to the new version once it is complete."),
    history_days: int = typer.Option(TRAINING_HISTORY_DAYS, min=3, max=366, help="Days of hourly history to train on."),
    as_json: bool = JsonOption,
    lake: str | None = LakeOption,
    source: str | None = SourceOption,
) -> None:
    """Fit the model zoo per series, choose each series' model by pinball at τ, write a registry version."""
    from dataclasses import replace

    from pipeline.run import stage_train

    config = replace(settings(lake, source), history_days=history_days)
    zoo = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    try:
        out = stage_train(interval_end, config, zoo, promote=promote)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        print_json(out)
        return
    console.print(styled(("trained", "green"), " version ", (out["version"], "bold"), f" ({out['series']} series; "
                         f"{'promoted to CURRENT' if out['promoted'] else 'not promoted'})"))
    for name, n in out["chosen"].items():
        console.print(styled(f"  {safe(name):<16} {n:>5} series"))


def _registry_call(fn: Any, *args: Any) -> Any:
    from pipeline.forecast.registry import RegistryError

    try:
        return fn(*args)
    except RegistryError as exc:
        fail(str(exc), code=1)


def list_(as_json: bool = JsonOption, lake: str | None = LakeOption) -> None:
    """Every model version, newest first; CURRENT marked; unfinished versions shown as such."""
    from pipeline.forecast import registry

    rows = _registry_call(registry.list_versions, settings(lake).lake_root)
    if as_json:
        print_json({"versions": rows})
        return
    if not rows:
        console.print(styled("no model versions yet: run `peerscale train`"))
    for r in rows:
        mark = "*" if r["current"] else " "
        detail = f"{r.get('series', 0)} series, data to {r.get('data_end')}" if r["status"] == "complete" else r["status"]
        console.print(styled(f"{mark} {safe(r['version'])}  {safe(detail)}"))


def show(series: str = typer.Argument(..., help="Series id, e.g. region:us-east-1:vcpu."),
         version: str | None = typer.Option(None, help="Version (default: CURRENT)."),
         as_json: bool = JsonOption, lake: str | None = LakeOption) -> None:
    """One series' entry: chosen model, CV pinball of every model, fingerprint (not the fitted state)."""
    from pipeline.forecast import registry

    v = _registry_call(registry.load, settings(lake).lake_root, version)
    if series not in v.entries:
        fail(f"series {series!r} is not in model version {v.version} ({len(v.entries)} series)")
    entry = {"version": v.version, "series": series, **registry.summary(v.entries[series])}
    entry.pop("bands", None)
    if as_json:
        print_json(entry)
        return
    console.print(styled("version ", (v.version, "bold"), f"  series {safe(series)}  model ", (safe(entry["model"]), "green")))
    if entry.get("members"):
        console.print(styled(f"  the mean of {safe(' and '.join(entry['members']))}"))
    for name, pin in sorted(entry["cv_pinball"].items(), key=lambda kv: kv[1]):
        console.print(styled(f"  {safe(name):<16} CV pinball at τ {pin:.5f}"))
    console.print(styled(f"  trained on {entry['fingerprint']['start']} .. {entry['fingerprint']['end']}"))


def promote(version: str = typer.Argument(..., help="The version to make CURRENT."), lake: str | None = LakeOption) -> None:
    """Make a version CURRENT (after the completeness check): the next hourly runs score with it."""
    from pipeline.forecast import registry

    pointer = _registry_call(registry.promote, settings(lake).lake_root, version)
    console.print(styled(("promoted", "green"), f" {safe(pointer['version'])} to CURRENT"))


def diff(a: str = typer.Argument(..., help="Older version."), b: str = typer.Argument(..., help="Newer version."),
         as_json: bool = JsonOption, lake: str | None = LakeOption) -> None:
    """What changed between two versions: series added / removed, choices changed."""
    from pipeline.forecast import registry

    out = _registry_call(registry.diff, settings(lake).lake_root, a, b)
    if as_json:
        print_json(out)
        return
    console.print(styled(f"{safe(a)} → {safe(b)}: {len(out['added'])} added, {len(out['removed'])} removed, "
                         f"{len(out['changed'])} changed their model"))
    for uid, c in out["changed"].items():
        console.print(styled(f"  {safe(uid)}: {safe(c['from'])} → {safe(c['to'])}"))
