"""`peerscale forecast`: the engine on any long-format file; `peerscale forecast summary`: what a
pipeline forecast run chose.

`forecast` is a group that runs the engine when no subcommand is named, so
`peerscale forecast --input FILE --horizon … --levels 80 95 …` works as it always has. pandas and
the models are imported inside the commands so `peerscale --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from pipeline.cli.options import JsonOption, LakeOption, check_id, console, fail, print_json, safe, settings, styled

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.common.config import Settings

MODEL_NAMES = "seasonal_naive, seasonal_mean, auto_ets, arima, mstl, prophet, global_gbm, lstm"
# Bounds of `peerscale forecast` (documented in --help): a horizon of 10⁹ steps is a typo, not a
# request, and would die of MemoryError long after reading the input.
MAX_HORIZON_STEPS = 10_000  # more than a year of hours, 27 years of days
MAX_SEASON_LENGTH = 10_000
MAX_FORECAST_ROWS = 10_000_000  # series × horizon: one output row each (~1.3 GB of float columns in memory)
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".txt", ".gz")


class LevelsGroup(TyperGroup):
    """A group whose `--levels` takes one or more values (`--levels 80 95`): the extra values are
    rewritten as repeated options before parsing, so they are never mistaken for a subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: Typer's (vendored) click Context
        return super().parse_args(ctx, spread_levels(args))


def spread_levels(args: list[str]) -> list[str]:
    """`--levels 80 95 90` → `--levels 80 --levels 95 --levels 90`: digits after a `--levels`
    value are more levels (Click options take a fixed number of values)."""
    out: list[str] = []
    state = None  # "value": the next arg is --levels' own value; "more": digits that follow are levels too
    for arg in args:
        if state == "value":
            out.append(arg)
            state = "more"
        elif state == "more" and arg.isdigit():
            out += ["--levels", arg]
        else:
            out.append(arg)
            state = "value" if arg == "--levels" else "more" if arg.startswith("--levels=") else None
    return out


def read_input(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file in long format (`unique_id, ds, y` + optional exogenous columns);
    an unreadable file is an InputError naming it (empty, corrupt, not UTF-8, a directory)."""
    import pandas as pd

    from pipeline.forecast.prep import InputError

    suffix = path.suffix.lower()
    if suffix not in PARQUET_SUFFIXES + CSV_SUFFIXES:
        raise InputError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")
    kind = "Parquet" if suffix in PARQUET_SUFFIXES else "CSV"
    try:
        return pd.read_parquet(path) if kind == "Parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path} is empty: expected a header unique_id,ds,y and one row per observation") from exc
    except (ValueError, OSError) as exc:  # corrupt Parquet, bad CSV quoting, not UTF-8, a directory
        raise InputError(f"{path} cannot be read as {kind}: {exc}") from exc


def write_output(frame: pd.DataFrame, path: Path) -> None:
    """Parquet (the forecast contract's types) or CSV by suffix; written atomically, mode per the umask."""
    from pipeline.common.storage import atomic_local_file

    with atomic_local_file(path) as tmp:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")


def forecast(
    ctx: typer.Context,
    input: Path | None = typer.Option(None, "--input", "-i", help="CSV or Parquet in long format: unique_id, ds, y "
                                      "(+ numeric exogenous columns)."),
    horizon: int = typer.Option(48, "--horizon", min=1, max=MAX_HORIZON_STEPS, help=f"Steps to forecast (1 to {MAX_HORIZON_STEPS}; "
                                f"series × horizon at most {MAX_FORECAST_ROWS:,})."),
    freq: str = typer.Option("h", "--freq", help="h (hourly) or D (daily)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write the forecast (.parquet or .csv)."),
    levels: list[int] = typer.Option([80, 95], "--levels", help="Interval levels in %: --levels 80 95 "
                                     "(or repeated: --levels 80 --levels 95)."),
    models: str = typer.Option("auto", "--models", help=f"auto, or a comma-separated list of: {MODEL_NAMES}."),
    tau: float = typer.Option(0.9, "--tau", min=0.5, max=0.99, help="Quantile the selection scores pinball loss at."),
    future: Path | None = typer.Option(None, "--future", help="Exogenous columns over the horizon (unique_id, ds, ...)."),
    season_length: int | None = typer.Option(None, "--season-length", min=1, max=MAX_SEASON_LENGTH,
                                             help="Season in steps (default: 24 hourly, 7 daily)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Also write the selection, scores and calibration as JSON."),
) -> None:
    """Forecast every series of a long-format file with the Predictive Demand Engine (needs --input and --output);
    `peerscale forecast summary` shows what a pipeline forecast run chose."""
    if ctx.invoked_subcommand is not None:
        return
    if input is None or output is None:
        ctx.fail(f"Missing option '{'--input' if input is None else '--output'}'.")
    _forecast_file(input, output, horizon=horizon, freq=freq, levels=levels, models=models, tau=tau, future=future,
                   season_length=season_length, manifest=manifest)


def _forecast_file(input: Path, output: Path, *, horizon: int, freq: str, levels: list[int], models: str, tau: float,
                   future: Path | None, season_length: int | None, manifest: Path | None) -> None:
    from pipeline.common.storage import write_text_atomic
    from pipeline.forecast.engine import select_and_forecast
    from pipeline.forecast.prep import InputError, parse_freq, season_for

    if not input.exists():
        fail(f"input file {input} does not exist")
    if output.suffix.lower() not in PARQUET_SUFFIXES + CSV_SUFFIXES:
        fail(f"--output {output}: unknown file type {output.suffix!r}; use .csv or .parquet")
    levels = sorted(set(levels))
    bad_levels = [lv for lv in levels if not 0 < lv < 100]
    if bad_levels:
        fail(f"--levels must be between 0 and 100 (exclusive), got {bad_levels}")
    try:
        freq = parse_freq(freq)
        frame = _read_long(input, freq)
        fut = _read_long(future, freq, future=True) if future else None
        series = frame["unique_id"].nunique()
        if series * horizon > MAX_FORECAST_ROWS:
            fail(f"{series} series × --horizon {horizon} = {series * horizon:,} forecast rows, more than {MAX_FORECAST_ROWS:,}: "
                 "forecast fewer series per call or a shorter horizon")
        result = select_and_forecast(frame, horizon, season_length or season_for(freq), freq, tau, models,
                                     future=fut, levels=tuple(levels))
    except (InputError, ValueError) as exc:
        fail(str(exc))
    write_output(result.forecasts, output)
    if manifest:
        info = {k: v for k, v in result.info.items() if k != "timings_s"}
        text = json.dumps({"engine": info, "selection": result.selection}, indent=2, sort_keys=True, default=str)
        write_text_atomic(str(manifest), text + "\n")
    chosen: dict[str, int] = {}
    for sel in result.selection.values():
        chosen[sel["model"]] = chosen.get(sel["model"], 0) + 1
    summary = ", ".join(f"{k} ×{v}" for k, v in sorted(chosen.items()))
    console.print(styled(f"forecast {len(result.selection)} series × {horizon} steps → {output} ({summary})"))


def _read_long(path: Path, freq: str, *, future: bool = False) -> pd.DataFrame:
    """`path` read and checked as long format (`future`: exogenous values over the horizon, no y)."""
    from pipeline.forecast.prep import validate_long_format

    raw = read_input(path)
    if future:
        return validate_long_format(raw.assign(y=0.0), freq)
    return validate_long_format(raw, freq)


def summary(
    run_id: str | None = typer.Option(None, "--run-id", help="Forecast run, e.g. hourly-20260129T0000Z "
                                      "(default: the newest run of --kind)."),
    kind: str = typer.Option("hourly", "--kind", help="hourly (what plans are built from) or daily."),
    per_series: bool = typer.Option(False, "--series", help="Also list every series: its model and CV score."),
    as_json: bool = JsonOption,
    lake: str | None = LakeOption,
) -> None:
    """What a forecast run chose: the model per series, cross-validation scores and interval coverage."""
    from pipeline.common import lake as lake_paths
    from pipeline.common import storage

    if kind not in ("hourly", "daily"):
        fail(f"--kind {kind!r}: use hourly or daily")
    config = settings(lake)
    rid = check_id(run_id, "--run-id", kind="forecast run id", example="hourly-20260129T0000Z") if run_id else newest_run_id(config, kind)
    path = storage.join(lake_paths.forecast_dir(config.lake_root, rid), "manifest.json")
    if not storage.exists(path):
        storage.check_bucket(config.lake_root)
        known = ", ".join(forecast_run_ids(config)) or "none"
        fail(f"forecast run {rid!r} has no manifest at {path}; runs in {config.lake_root}: {known}")
    try:
        result = summarise(lake_paths.read_json(path))
    except (ValueError, AttributeError, KeyError, TypeError) as exc:  # not JSON, or JSON of another shape
        fail(f"{path} is corrupt ({type(exc).__name__}: {exc}): re-run the forecast stage for that interval", code=1)
    if as_json:
        print_json(result)
        return
    _print_summary(result, per_series=per_series)


def forecast_run_ids(config: Settings) -> list[str]:
    """Forecast runs in the lake (`forecasts/run=<id>`), sorted by name."""
    from pipeline.common import storage

    prefix = "run="
    return [name[len(prefix):] for name in storage.list_names(storage.join(config.lake_root, "forecasts")) if name.startswith(prefix)]


def newest_run_id(config: Settings, kind: str) -> str:
    """The newest `<kind>-<interval token>` run (tokens sort by time); fails with what to run."""
    from pipeline.cli.options import HOW_TO_PUBLISH
    from pipeline.common import storage

    runs = [r for r in forecast_run_ids(config) if r.startswith(f"{kind}-")]
    if not runs:
        storage.check_bucket(config.lake_root)
        fail(f"no {kind} forecast run in {config.lake_root}/forecasts: {HOW_TO_PUBLISH}")
    return runs[-1]


def summarise(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of a forecast run's manifest an operator reads: per-model counts and scores,
    each series' choice, the calibration and the coverage it reached in cross-validation."""
    engine = manifest.get("engine", {})
    selection = manifest.get("selection", {})
    chosen: dict[str, int] = {}
    for choice in selection.values():
        chosen[choice["model"]] = chosen.get(choice["model"], 0) + 1
    series = {sid: {"model": c["model"], "score": c.get("score", {}).get(c["model"]), "members": c.get("members"),
                    "quantile_method": c.get("quantile_method"), "quantile_cv_vs_snaive": c.get("quantile_cv_vs_snaive")}
              for sid, c in sorted(selection.items())}
    calibration = engine.get("calibration", {})
    return {
        "run_id": manifest.get("run_id"), "kind": manifest.get("kind"), "data_interval": manifest.get("data_interval"),
        "history": manifest.get("history"), "horizon": manifest.get("horizon"), "tau": manifest.get("tau"),
        "models": manifest.get("models"), "series": len(selection), "chosen": dict(sorted(chosen.items())),
        "overall_score": engine.get("overall_score", {}), "default_choice": engine.get("default_choice"),
        "cv_coverage": engine.get("cv_coverage", {}), "cv_windows": engine.get("n_windows"),
        "calibration": {k: calibration.get(k) for k in ("method", "n_errors")}, "dropped": engine.get("dropped", {}),
        "short_series": engine.get("short_series", []), "quantile_methods": engine.get("quantile_methods", {}),
        "per_series": series,
    }


def _print_quantile_methods(methods: dict[str, Any]) -> None:
    """One line: how many series use each quantile method, and the share whose CV 80 % interval covered 70–90 %."""
    chosen = methods.get("chosen") or {}
    if not chosen:
        return
    counts = ", ".join(f"{name} {count}" for name, count in sorted(chosen.items()))
    share = methods.get("share_cv80_within_70_90")
    within = f"; CV 80 % interval covered 70–90 % on {share:.0%} of series" if isinstance(share, (int, float)) else ""
    console.print(styled(f"quantile methods: {counts}{within}"))


def _print_summary(result: dict[str, Any], *, per_series: bool) -> None:
    interval = result.get("data_interval") or {}
    console.print(styled("forecast run ", (str(result["run_id"]), "bold"), f" · {result['series']} series × {result['horizon']} steps · "
                         f"τ {result['tau']} · data up to {str(interval.get('end', '?'))[:16]}"))
    table = Table(title="models", title_justify="left", caption_justify="left",
                  caption="score: mean of CV pinball loss and MASE relative to seasonal_naive (lower is better)")
    for col in ("model", "series chosen", "overall score"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for model in sorted(set(result["overall_score"]) | set(result["chosen"])):
        score = result["overall_score"].get(model)
        table.add_row(safe(model), str(result["chosen"].get(model, 0)), f"{score:.3f}" if score is not None else "—")
    console.print(table)
    coverage = ", ".join(f"{level}%: {share:.1%}" for level, share in sorted(result["cv_coverage"].items(), key=lambda kv: float(kv[0])))
    console.print(styled(f"interval coverage in cross-validation ({result['cv_windows']} windows): {coverage or '—'}"))
    _print_quantile_methods(result.get("quantile_methods") or {})
    if result["dropped"]:
        console.print(styled(("dropped models:", "yellow"), " ", ", ".join(f"{k} ({v})" for k, v in result["dropped"].items())))
    if per_series:
        rows = Table(title="series", title_justify="left")
        for col in ("series", "model", "score", "quantile method", "CV pinball vs snaive"):
            rows.add_column(col, justify="right" if col in ("score", "CV pinball vs snaive") else "left")
        for sid, s in result["per_series"].items():
            vs = s.get("quantile_cv_vs_snaive")
            rows.add_row(safe(sid), safe(s["model"]), f"{s['score']:.3f}" if s["score"] is not None else "—",
                         safe(s.get("quantile_method") or "—"), f"{vs:.3f}" if vs is not None else "—")
        console.print(rows)
