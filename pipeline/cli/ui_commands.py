"""`peerscale ui`: serve the analyst app (pipeline.ui) over a lake, read-only, on loopback by default."""

from __future__ import annotations

import typer

from pipeline.cli.options import LakeOption, note, settings


def ui(
    port: int = typer.Option(8765, min=1, max=65535, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)."),
    lake: str | None = LakeOption,
) -> None:
    """Serve the analyst app: plans, compare, forecasts and operations, read straight from the lake."""
    import uvicorn

    from pipeline.ui.webapp import create_app

    root = settings(lake).lake_root
    note(f"analyst app on http://{host}:{port}/ over {root} (read-only; Ctrl-C stops it)")
    uvicorn.run(create_app(root), host=host, port=port, log_level="warning")
