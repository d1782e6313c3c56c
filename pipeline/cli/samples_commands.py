"""`peerscale samples generate`: sample source data in the documented formats."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import typer

from pipeline.cli.options import console, fail, styled

MAX_DAYS = 366
MAX_RATE = 10_000.0  # requests per hour, all pairs: 240 000 rows a day


def generate(
    out: Path = typer.Option(Path("data_samples"), help="Directory to write the source datasets into."),
    start: str = typer.Option("2026-01-01", help="First UTC day."),
    days: int = typer.Option(35, min=1, max=MAX_DAYS, help=f"Number of days (1 to {MAX_DAYS})."),
    seed: int = typer.Option(7, help="Random seed (same seed → byte-identical files)."),
    rate: float = typer.Option(55.0, min=0.1, max=MAX_RATE,
                               help=f"Average peering requests per hour, all pairs together (0.1 to {MAX_RATE:g})."),
    clean: bool = typer.Option(False, help="Do not inject the documented dirty rows."),
) -> None:
    """Generate realistic sample source data (seasonality, campaigns, bursts, heavy tails, gaps)."""
    from pipeline.samples.generate import generate_sample_data

    try:
        first = date.fromisoformat(start)
    except ValueError:
        fail(f"--start {start!r} is not a date: use YYYY-MM-DD, e.g. 2026-01-01")
    counts = generate_sample_data(out, start=first, days=days, seed=seed, requests_per_hour=rate, dirty_rows=not clean)
    for name, rows in counts.items():
        console.print(styled(f"{name:>20}: {rows} rows"))
    console.print(styled(f"written to {out}"))
