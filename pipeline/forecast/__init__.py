"""The Predictive Demand Engine: models, selection and the forecast stage.

Attributes are imported lazily so that `pipeline.cli.forecast` (and `peerscale --help`) do not pull
in pandas, DuckDB or statsforecast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EngineOptions", "ForecastResult", "read_forecast", "run_engine", "run_forecast", "select_and_forecast"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.forecast import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pipeline.forecast' has no attribute {name!r}")
