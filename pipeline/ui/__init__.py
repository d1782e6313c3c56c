"""The analyst app: plans, compare, forecasts and operations, read straight from the lake (read-only).

`create_app(lake_root)` builds the FastAPI app; `peerscale ui` serves it standalone and
plugins/peerscale_ui.py mounts it in Airflow's api-server.
"""

from pipeline.ui.webapp import create_app

__all__ = ["create_app"]
