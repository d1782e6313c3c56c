"""The analyst app: a FastAPI app over one lake, served standalone (`peerscale ui`) or mounted in
Airflow's api-server by the plugin in plugins/peerscale_ui.py. Routes only wire HTTP to pipeline.ui.pages.

Every link is built from the request's root path, so the same pages work at `/` and under Airflow's
`/peerscale/` mount. It never writes to the lake and keeps nothing between requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from pipeline.common.config import Settings
from pipeline.common.plan_files import PlanIntegrityError
from pipeline.ui import pages, pages_ops

HERE = Path(__file__).parent
TITLE = "peerscale analyst"


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html", "html.j2"], default=True))
    # Numbers from the lake may be missing (None, or absent from an unreadable manifest): shown as blanks.
    env.filters["num"] = lambda v, d=2: f"{v:,.{d}f}" if isinstance(v, int | float) else ""
    env.filters["pct"] = lambda v, d=1: f"{v * 100:.{d}f} %" if isinstance(v, int | float) else ""
    env.filters["usd"] = lambda v: f"${v:,.2f}" if isinstance(v, int | float) else ""
    env.filters["anchor"] = lambda v: "".join(c if c.isalnum() else "-" for c in str(v))
    # A chart spec inside <script type="application/json">: escape "<" so data can never close the tag.
    env.filters["spec"] = lambda spec: Markup(json.dumps(spec, default=str).replace("<", "\\u003c"))
    return env


def create_app(lake_root: str | None = None, *, dependencies: Sequence[Any] = (), title: str = TITLE) -> FastAPI:
    """The app over `lake_root` (default: PEERSCALE_LAKE, else lake/ in the checkout); `dependencies`
    guard every route (the Airflow plugin passes Airflow's authentication)."""
    root = lake_root or Settings.from_env().lake_root
    env = _templates()
    app = FastAPI(title=title, dependencies=[Depends(d) if callable(d) else d for d in dependencies],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def render(request: Request, template: str, context: dict[str, Any], code: int = 200) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        html = env.get_template(template).render({**context, "base": base, "title": title, "lake": root, "page": template.split(".")[0]})
        return HTMLResponse(html, status_code=code)

    def guarded(request: Request, template: str, build: Callable[[], dict[str, Any]]) -> HTMLResponse:
        """Render `build()`; a bad parameter, a missing plan or a corrupt file becomes a page that says so."""
        try:
            return render(request, template, build())
        except pages.NotFound as exc:
            return render(request, "error.html.j2", {"message": str(exc)}, 404)
        except PlanIntegrityError as exc:
            return render(request, "error.html.j2", {"message": str(exc)}, 409)
        except ValueError as exc:
            return render(request, "error.html.j2", {"message": str(exc)}, 400)

    _routes(app, root, guarded)
    return app


def _routes(app: FastAPI, root: str, guarded: Callable[[Request, str, Callable[[], dict[str, Any]]], HTMLResponse]) -> None:
    t = pages.parse_time

    @app.get("/", response_class=HTMLResponse)
    def plans(request: Request, start: str = "", end: str = "", status: str = "", applied: bool = False) -> Response:
        return guarded(request, "plans.html.j2",
                       lambda: pages.plans_list(root, t(start, "start"), t(end, "end"), status=status, applied_only=applied))

    @app.get("/plans/{plan_id}", response_class=HTMLResponse)
    def plan(request: Request, plan_id: str, window: int = 0, region: str = "", q: str = "") -> Response:
        return guarded(request, "plan.html.j2", lambda: pages.plan_detail(root, plan_id, window=window, region=region, search=q))

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, a: str = "", b: str = "", window: int = 0) -> Response:
        return guarded(request, "compare.html.j2", lambda: pages.compare_page(root, a or None, b or None, window))

    @app.get("/forecasts", response_class=HTMLResponse)
    def forecasts(request: Request, run: str = "", q: str = "", kind: str = "") -> Response:
        return guarded(request, "forecasts.html.j2", lambda: pages_ops.forecast_search(root, run or None, q, kind))

    @app.get("/forecasts/series", response_class=HTMLResponse)
    def series(request: Request, id: str, run: str = "") -> Response:
        return guarded(request, "series.html.j2", lambda: pages_ops.forecast_series(root, run or None, id))

    @app.get("/operations", response_class=HTMLResponse)
    def operations(request: Request, start: str = "", end: str = "", q: str = "") -> Response:
        return guarded(request, "operations.html.j2", lambda: pages_ops.operations(root, t(start, "start"), t(end, "end"), q))

    @app.get("/requests", response_class=HTMLResponse)
    def requests(request: Request, region: str, start: str, end: str) -> Response:
        def build() -> dict[str, Any]:
            first, last = t(start, "start"), t(end, "end")
            if first is None or last is None:
                raise ValueError("start and end are required")
            return pages_ops.requests_page(root, region, first, last)

        return guarded(request, "requests.html.j2", build)
