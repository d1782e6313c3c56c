"""`peerscale samples generate`: sample source data in the documented formats."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import typer

from pipeline.cli.options import console


def generate(
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
