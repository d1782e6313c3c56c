"""`peerscale forecast`: the engine on any long-format file (CSV or Parquet).

Registered in `pipeline.cli.app` as `app.command("forecast")(forecast_command)`; pandas and the
models are imported inside the command so `peerscale --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def read_input(path: Path):
    """A CSV or Parquet file in long format (`unique_id, ds, y` + optional exogenous columns)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".txt", ".gz"):
        return pd.read_csv(path)
    raise ValueError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")


def write_output(frame, path: Path) -> None:
    """Parquet (the forecast contract's types) or CSV by suffix; written atomically."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def forecast_command(
    input: Path = typer.Option(..., "--input", "-i", exists=False, help="CSV or Parquet in long format: unique_id, ds, y (+ numeric exogenous columns)."),
    horizon: int = typer.Option(48, "--horizon", min=1, help="Steps to forecast."),
    freq: str = typer.Option("h", "--freq", help="h (hourly) or D (daily)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the forecast (.parquet or .csv)."),
    levels: list[int] = typer.Option([80, 95], "--levels", help="Interval levels in %, repeatable: --levels 80 --levels 95."),
    models: str = typer.Option("auto", "--models", help="auto, or a comma-separated list of: seasonal_naive, seasonal_mean, auto_ets, arima, mstl, prophet, global_gbm, lstm."),
    tau: float = typer.Option(0.9, "--tau", min=0.5, max=0.99, help="Quantile the selection scores pinball loss at."),
    future: Path | None = typer.Option(None, "--future", help="Exogenous columns over the horizon (unique_id, ds, ...)."),
    season_length: int | None = typer.Option(None, "--season-length", help="Season in steps (default: 24 hourly, 7 daily)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Also write the selection, scores and calibration as JSON."),
    more_levels: list[int] | None = typer.Argument(None, hidden=True, help="Levels after the first: `--levels 80 95`."),
) -> None:
    """Forecast every series of a long-format file with the Predictive Demand Engine."""
    from rich.console import Console

    from pipeline.forecast.engine import select_and_forecast
    from pipeline.forecast.prep import InputError, parse_freq, season_for, validate_long_format

    err = Console(stderr=True)

    def fail(message: str) -> None:
        err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
        raise typer.Exit(2)

    if not input.exists():
        fail(f"input file {input} does not exist")
    levels = sorted({*levels, *(more_levels or [])})
    bad_levels = [lv for lv in levels if not 0 < lv < 100]
    if bad_levels:
        fail(f"--levels must be between 0 and 100 (exclusive), got {bad_levels}")
    try:
        freq = parse_freq(freq)
        frame = validate_long_format(read_input(input), freq)
        fut = validate_long_format(read_input(future).assign(y=0.0), freq) if future else None
        result = select_and_forecast(frame, horizon, season_length or season_for(freq), freq, tau, models,
                                     future=fut, levels=tuple(levels))
    except (InputError, ValueError) as exc:
        fail(str(exc))
    write_output(result.forecasts, output)
    if manifest:
        info = {k: v for k, v in result.info.items() if k != "timings_s"}
        manifest.write_text(json.dumps({"engine": info, "selection": result.selection}, indent=2, sort_keys=True, default=str) + "\n")
    chosen: dict[str, int] = {}
    for sel in result.selection.values():
        chosen[sel["model"]] = chosen.get(sel["model"], 0) + 1
    summary = ", ".join(f"{k} ×{v}" for k, v in sorted(chosen.items()))
    Console().print(f"forecast {len(result.selection)} series × {horizon} steps → {output} ({summary})")
