"""Airflow plugin: the peerscale analyst app inside Airflow 3's api-server and UI.

Wiring only (the app is pipeline.ui): the FastAPI app is mounted at /peerscale behind Airflow's own
authentication (the UI's session cookie or a bearer token), and an external view adds "peerscale
analyst" to the UI's Browse menu, shown in an iframe at /plugin/peerscale. The lake comes from
PEERSCALE_LAKE, as for every other peerscale process.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.api_fastapi.core_api.security import requires_authenticated
from airflow.plugins_manager import AirflowPlugin

from pipeline.ui.webapp import create_app

URL_PREFIX = "/peerscale"
NAME = "peerscale analyst"


class PeerscaleAnalystPlugin(AirflowPlugin):
    name = "peerscale_analyst"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(dependencies=[requires_authenticated()]), "url_prefix": URL_PREFIX, "name": NAME},
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": NAME, "href": "peerscale/", "url_route": "peerscale", "destination": "nav", "category": "browse"},
    ]
