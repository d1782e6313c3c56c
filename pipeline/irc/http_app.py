"""The IRC's HTTP API: a Starlette (ASGI) app around one Coordinator, served by uvicorn (`pipeline.irc.service`).

    POST   /v1/requests                         a peering request as JSON → the decision (200, also on failure)
    POST   /v1/release                          {"allocation_id": "..."} → {"released": true|false}
    GET    /v1/admin/unhealthy-regions          the regions marked unhealthy
    PUT    /v1/admin/unhealthy-regions/{region} {"note": "..."} (optional) → mark it; DELETE → serve it again
    GET    /v1/plan/zones                       the plan's availability zones per region, N+1 headroom, explanation
    GET    /metrics                             Prometheus text format (every worker's counts)
    GET    /healthz                             liveness: plan, plan error, ledger (never needs a token)
    GET    /readyz                              200 only with a verified plan, or in on-demand-only mode; else 503
    GET    /openapi.json                        the API description (OpenAPI 3.1, from the route table)

With tokens configured every route but /healthz, /readyz and the API description needs
`Authorization: Bearer <token>` (401 otherwise). Whatever a client sends, the answer is one JSON
object: the decision, or {"error": ...} with 400 (not a JSON object: bad syntax, NaN/Infinity,
nesting too deep, not UTF-8), 401, 404, 405, 408 (body slower than the read timeout), 411 (no
Content-Length, or chunked), 413 (body over the limit), 415 (not `application/json`, which also
keeps a web page from posting a form to a service on loopback) or 500. An answer given before the
body was read closes the connection, so its bytes are never taken for another request.

Decisions run on the event loop (in-memory and SQLite ledgers: microseconds to a fraction of a
millisecond, no thread hop) or on a small thread pool (`decision_threads`, for PostgreSQL, whose
round trips would otherwise stall the loop). On the loop, the requests that arrive together are
decided together (`DecisionBatcher`: one SQLite transaction, answers sent after its commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.irc import prometheus
from pipeline.irc.contract import RESOURCE_TYPES
from pipeline.irc.coordinator import Coordinator
from pipeline.irc.messages import PeeringRequest

log = logging.getLogger(__name__)
JSON_TYPE = "application/json"
API_VERSION = "v1"


class HttpError(Exception):
    """An answer other than 200: status code, the message of {"error": ...}, whether to close the connection."""

    def __init__(self, code: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.close = close
        self.headers = headers or {}


@dataclass(frozen=True)
class HttpLimits:
    """What one request may cost the service."""

    max_body: int = 64 * 1024
    read_timeout_s: float = 10.0  # a client that stops sending mid-body loses its connection


@dataclass
class ServiceState:
    """What the routes share: the coordinator, its metrics, tokens and the thread pool of blocking decisions."""

    coordinator: Coordinator
    metrics: prometheus.PrometheusMetrics
    tokens: frozenset[bytes] = frozenset()
    on_demand_only: bool = False
    limits: HttpLimits = HttpLimits()
    executor: ThreadPoolExecutor | None = None
    on_close: list[Callable[[], None]] = field(default_factory=list)
    group_commit: bool = True  # decisions on the event loop that arrive together share one ledger transaction
    fast_decision_route: bool = True  # POST /v1/requests in front of Starlette (`_DecisionRoute`)
    batcher: DecisionBatcher | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.group_commit and self.executor is None:
            self.batcher = DecisionBatcher(self.coordinator)

    def ready(self) -> tuple[bool, str | None]:
        """(ready, why not): a load balancer must not send requests to a worker without a verified plan,
        unless the operator chose to serve on demand only."""
        if self.coordinator.plan is not None:
            return True, None
        if self.on_demand_only:
            return True, None
        return False, f"no verified plan ({self.coordinator.plan_error}); start with --on-demand-only to serve without one"

    def refresh_gauges(self) -> None:
        """Publish this worker's scrape-time figures (also run every few seconds, so other workers' scrapes see them)."""
        rows = self.coordinator.gauges() + self.metrics.process_rows()
        rows.append(("peerscale_irc_ready", "gauge", "1 when the service is ready (a verified plan or on-demand-only mode).",
                     {}, 1.0 if self.ready()[0] else 0.0))
        self.metrics.set_gauges(rows)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (send null for a missing value)")


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or an HttpError(400) saying why not."""
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise HttpError(400, "bad request body: JSON nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, ints over 4300 digits
        raise HttpError(400, f"bad request body: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, f"the body must be a JSON object, got {type(value).__name__}")
    return value


async def read_json(request: Request, limits: HttpLimits) -> dict[str, Any]:
    """The body as a JSON object, checked before it is read (type, length), read within the timeout."""
    headers = request.headers
    if "transfer-encoding" in headers:
        raise HttpError(411, "send the body with a Content-Length (chunked bodies are not accepted)", close=True)
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_TYPE:
        raise HttpError(415, f"Content-Type must be {JSON_TYPE}, got {media_type or 'none'}", close=True)
    text = headers.get("content-length", "").strip()
    if not text.isdigit():
        raise HttpError(411 if not text else 400, f"a Content-Length of 1..{limits.max_body} bytes is required", close=True)
    length = int(text)
    if length > limits.max_body:
        raise HttpError(413, f"the body is {length} bytes; at most {limits.max_body} are accepted", close=True)
    if length == 0:
        raise HttpError(400, "a JSON body is required")
    try:
        async with asyncio.timeout(limits.read_timeout_s):
            body = await request.body()
    except TimeoutError:
        raise HttpError(408, f"the body did not arrive within {limits.read_timeout_s:g} s", close=True) from None
    return parse_body(body)


def json_response(payload: Any, code: int = 200, *, close: bool = False, headers: dict[str, str] | None = None) -> Response:
    extra = dict(headers or {})
    if close:
        extra["Connection"] = "close"  # uvicorn closes the connection after this answer
    body = json.dumps(payload, sort_keys=True, default=str, allow_nan=False).encode()
    return Response(body, status_code=code, media_type=JSON_TYPE, headers=extra)


def _check_token(state: ServiceState, request: Request) -> None:
    if not state.tokens:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    # Compared with every token in constant time: which token (or how much of one) matched never shows in the timing.
    matched = False
    for known in state.tokens:
        matched |= hmac.compare_digest(given, known)
    if scheme.lower() != "bearer" or not matched:
        raise HttpError(401, "a valid bearer token is required (Authorization: Bearer <token>)", close=True,
                        headers={"WWW-Authenticate": 'Bearer realm="peerscale-irc"'})


class DecisionBatcher:
    """Group commit on the event loop: the requests that reach their decision in one turn of the loop are
    decided together at the end of that turn by `Coordinator.handle_batch` - one ledger transaction, one
    commit (SQLite) - and each answer is sent only after that commit. Under load several requests arrive
    per turn; alone, a request waits for nothing but the end of the current turn."""

    def __init__(self, coordinator: Coordinator, max_batch: int = 64) -> None:
        self._coordinator = coordinator
        self._max_batch = max_batch
        self._pending: list[tuple[PeeringRequest, asyncio.Future[dict[str, Any]]]] = []
        self._scheduled = False
        self.batches = 0  # how many transactions, for the bench and tests
        self.decisions = 0

    async def decide(self, request: PeeringRequest) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((request, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._run)
        return await future

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            part = pending[start:start + self._max_batch]
            try:
                responses = self._coordinator.handle_batch([request for request, _ in part])
            except Exception as exc:  # handle_batch never raises; a waiting client must not hang if it did
                for _, future in part:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.decisions += len(part)
            for (_, future), response in zip(part, responses):
                if not future.done():
                    future.set_result(response.to_dict())


async def _decide(state: ServiceState, request: PeeringRequest) -> dict[str, Any]:
    handle = state.coordinator.handle_peering_request
    if state.executor is not None:
        return (await asyncio.get_running_loop().run_in_executor(state.executor, handle, request)).to_dict()
    if state.batcher is not None:
        return await state.batcher.decide(request)
    return handle(request).to_dict()


REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["source_region", "destination_region"],
    "properties": {
        "request_id": {"type": "string", "description": "default: a new UUID"},
        "requested_at": {"type": "string", "format": "date-time", "description": "UTC ISO-8601 with offset; default: now"},
        "source_region": {"type": "string", "example": "us-east-1"},
        "destination_region": {"type": "string", "example": "eu-west-1"},
        **{name: {"type": "number", "minimum": 0} for name in RESOURCE_TYPES},
        "resource_requirements": {"type": "object", "additionalProperties": {"type": "number"}},
        "duration_s": {"type": "number", "exclusiveMinimum": 0},
        "priority": {"type": "string", "enum": ["low", "normal", "high", "critical"], "default": "normal"},
    },
}
DECISION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {name: {} for name in ("request_id", "status", "path", "latency_class", "allocation_id", "message",
                                         "region", "plan_id", "miss_reason", "short_resources", "provisioning_s",
                                         "serving_region", "preallocated_part")},
}
ERROR_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"error": {"type": "string"}}}


@dataclass(frozen=True)
class Endpoint:
    """One route: how it is served and how /openapi.json describes it."""

    method: str
    path: str
    handler: Callable[[ServiceState, Request], Awaitable[Response]]
    summary: str
    body: dict[str, Any] | None = None
    answer: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    errors: tuple[int, ...] = ()
    auth: bool = True


# Request ids given by this worker: a random prefix and a counter (unique across workers and restarts, without a
# urandom() syscall per request).
_ID_PREFIX = uuid.uuid4().hex[:20]
_ids = itertools.count(1)


async def _post_request(state: ServiceState, request: Request) -> Response:
    _check_token(state, request)
    row = await read_json(request, state.limits)
    if "request_id" not in row:
        row["request_id"] = f"{_ID_PREFIX}{next(_ids):012d}"
    if "requested_at" not in row:
        row["requested_at"] = datetime.now(UTC)
    return json_response(await _decide(state, PeeringRequest.from_row(row)))


async def _post_release(state: ServiceState, request: Request) -> Response:
    _check_token(state, request)
    allocation_id = (await read_json(request, state.limits)).get("allocation_id")
    return json_response({"allocation_id": allocation_id, "released": state.coordinator.release(allocation_id)})


async def _get_unhealthy(state: ServiceState, request: Request) -> Response:
    _check_token(state, request)
    return json_response({"unhealthy": state.coordinator.unhealthy_regions, "error": state.coordinator.health_error})


async def _put_unhealthy(state: ServiceState, request: Request) -> Response:
    _check_token(state, request)
    body = await read_json(request, state.limits) if request.headers.get("content-length", "0") != "0" else {}
    return await _set_health(state, request.path_params["region"], str(body.get("note") or ""))


async def _delete_unhealthy(state: ServiceState, request: Request) -> Response:
    _check_token(state, request)
    return await _set_health(state, request.path_params["region"], None)


async def _set_health(state: ServiceState, region: str, note: str | None) -> Response:
    coordinator = state.coordinator
    try:
        if note is None:
            await asyncio.to_thread(coordinator.mark_healthy, region)
        else:
            await asyncio.to_thread(coordinator.mark_unhealthy, region, note)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    return json_response({"region": region, "healthy": note is None, "unhealthy": coordinator.unhealthy_regions})


async def _get_metrics(state: ServiceState, request: Request) -> Response:
    _check_token(state, request)
    await asyncio.to_thread(state.refresh_gauges)  # the ledger's utilization may be a database query
    return Response(await asyncio.to_thread(prometheus.exposition, state.metrics), media_type=prometheus.CONTENT_TYPE)


async def _get_healthz(state: ServiceState, request: Request) -> Response:
    plan = state.coordinator.plan
    return json_response({
        "plan_id": plan.plan_id if plan is not None else None,
        "valid_from": plan.valid_from.isoformat() if plan is not None else None,
        "valid_to": plan.valid_to.isoformat() if plan is not None else None,
        "plan_error": state.coordinator.plan_error,
        "ledger": repr(state.coordinator.ledger),
        "unhealthy_regions": sorted(state.coordinator.unhealthy_regions),
    })


async def _get_zones(state: ServiceState, request: Request) -> Response:
    """Where the plan holds capacity per region: its availability zones and their N+1 headroom (explanations, not decisions)."""
    _check_token(state, request)
    plan = state.coordinator.plan
    if plan is None:
        raise HttpError(404, "no plan is loaded")
    return json_response({"plan_id": plan.plan_id, "regions": {
        region: {"zones": list(entry["zones"]), "instances_first_window": dict(entry["instances"]),
                 "n_plus_one": entry["n_plus_one"], "zone_headroom_first_window": entry["spare"],
                 "explanation": plan.zone_note(region)}
        for region, entry in sorted(plan.zones.items())}})


async def _get_readyz(state: ServiceState, request: Request) -> Response:
    ready, reason = state.ready()
    plan = state.coordinator.plan
    payload = {"ready": ready, "plan_id": plan.plan_id if plan is not None else None,
               "mode": "on-demand-only" if state.on_demand_only else "plan", "reason": reason}
    return json_response(payload, 200 if ready else 503)


REGION_PATH = f"/{API_VERSION}/admin/unhealthy-regions/{{region}}"
NOTE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"note": {"type": "string"}}}
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", f"/{API_VERSION}/requests", _post_request, "Decide one peering request", REQUEST_SCHEMA,
             DECISION_SCHEMA, (400, 401, 408, 411, 413, 415)),
    Endpoint("POST", f"/{API_VERSION}/release", _post_release, "Give an allocation back",
             {"type": "object", "properties": {"allocation_id": {"type": "string"}}}, errors=(400, 401, 411, 413, 415)),
    Endpoint("GET", f"/{API_VERSION}/admin/unhealthy-regions", _get_unhealthy, "Regions marked unhealthy", errors=(401,)),
    Endpoint("PUT", REGION_PATH, _put_unhealthy, "Mark a region unhealthy (every replica reading the lake follows)",
             NOTE_SCHEMA, errors=(400, 401)),
    Endpoint("DELETE", REGION_PATH, _delete_unhealthy, "Serve from a region again", errors=(400, 401)),
    Endpoint("GET", f"/{API_VERSION}/plan/zones", _get_zones, "The plan's availability zones per region and their N+1 headroom",
             errors=(401, 404)),
    Endpoint("GET", "/metrics", _get_metrics, "Prometheus metrics (every worker)", answer={"type": "string"}, errors=(401,)),
    Endpoint("GET", "/healthz", _get_healthz, "Liveness, with the plan in use", auth=False),
    Endpoint("GET", "/readyz", _get_readyz, "Readiness: a verified plan, or on-demand-only mode", errors=(503,), auth=False),
)


def openapi_document(endpoints: Iterable[Endpoint] = ENDPOINTS) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API, from the route table (what is served is what is described)."""
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        kind = "text/plain" if ep.path == "/metrics" else JSON_TYPE
        operation: dict[str, Any] = {
            "summary": ep.summary, "operationId": f"{ep.method.lower()}{ep.path.replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {"200": {"description": "OK", "content": {kind: {"schema": ep.answer}}},
                          **{str(c): {"description": "error", "content": {JSON_TYPE: {"schema": ERROR_SCHEMA}}} for c in ep.errors}},
            "security": [{"bearer": []}] if ep.auth else [],
        }
        if "{region}" in ep.path:
            operation["parameters"] = [{"name": "region", "in": "path", "required": True, "schema": {"type": "string"}}]
        if ep.body is not None:
            operation["requestBody"] = {"required": ep.method == "POST", "content": {JSON_TYPE: {"schema": ep.body}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "peerscale Inter-Region Coordinator", "version": API_VERSION,
                 "description": (__doc__ or "").split("\n\n", 1)[0]},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


class _HttpMetrics:
    """Pure ASGI middleware: answers by route and status code (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: prometheus.PrometheusMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        code = "500"

        async def send_and_note(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            child = self._children.get((route, code))
            if child is None:
                child = self._children[(route, code)] = self.metrics.http_requests.labels(route, code)
            child.inc()


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return json_response({"error": str(exc)}, exc.code, close=exc.close, headers=exc.headers)


async def _on_routing(request: Request, exc: Exception) -> Response:
    """404 and 405 from the router, worded like ours; the body (if any) is not read, so the connection closes."""
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if exc.status_code == 405:
        message = (f"method {request.method} not allowed on {path}: use GET /metrics, GET /healthz, GET /readyz, "
                   f"POST /{API_VERSION}/requests, POST /{API_VERSION}/release")
    elif exc.status_code == 404:
        message = f"no route {request.method} {path}"
    else:
        message = str(exc.detail)
    return json_response({"error": message}, exc.status_code, close=True, headers=dict(exc.headers or {}))


def _crash_response(state: ServiceState, method: str, path: str, exc: Exception) -> Response:
    """The 500 of an unexpected error: logged with its traceback, counted, never shown to the client."""
    log.error("IRC HTTP: %s %s failed", method, path, exc_info=exc)
    state.metrics.count("internal_errors")
    return json_response({"error": f"internal error: {type(exc).__name__}"}, 500, close=True)


DECISION_PATH = f"/{API_VERSION}/requests"


class _DecisionRoute:
    """`POST /v1/requests` straight to its handler, in front of the Starlette app: the same token check, body
    limits and read timeout, answers, errors and HTTP metrics, without the middleware stack, the router's
    matching and the exception-handler wrappers around every request (the service's hot route; every other
    request, and every other method on this path, goes through Starlette)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self._answers: dict[int, Any] = {}  # status code -> its http_requests child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != DECISION_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await _post_request(self.state, request)
        except HttpError as exc:
            response = await _on_http_error(request, exc)
        except Exception as exc:
            response = _crash_response(self.state, "POST", DECISION_PATH, exc)
        try:
            await response(scope, receive, send)
        finally:
            code = response.status_code
            child = self._answers.get(code)
            if child is None:
                child = self._answers[code] = self.state.metrics.http_requests.labels(DECISION_PATH, str(code))
            child.inc()


def build_app(state: ServiceState, *, refresh_interval_s: float = 5.0) -> ASGIApp:
    """The ASGI app over `state` (Starlette: a third of FastAPI's cost per request, measured in bench/RESULTS.md;
    `POST /v1/requests` in front of it, see `_DecisionRoute`);
    its lifespan refreshes the gauges and, at shutdown, runs `state.on_close` (after uvicorn drained the requests
    in flight): the thread pool, the coordinator (flushing the outcome log)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_refresh_forever(state, refresh_interval_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(_close_all, state.on_close)

    async def on_crash(request: Request, exc: Exception) -> Response:  # never a traceback to the client
        return _crash_response(state, request.method, request.url.path, exc)

    document = json.dumps(openapi_document()).encode()

    async def openapi(request: Request) -> Response:
        return Response(document, media_type=JSON_TYPE)

    routes = [Route(ep.path, functools.partial(ep.handler, state), methods=[ep.method]) for ep in ENDPOINTS]
    routes.append(Route("/openapi.json", openapi, methods=["GET"]))
    app = Starlette(
        routes=_merge_methods(routes), lifespan=lifespan, middleware=[Middleware(_HttpMetrics, metrics=state.metrics)],
        exception_handlers={HttpError: _on_http_error, StarletteHTTPException: _on_routing, Exception: on_crash},
    )
    return _DecisionRoute(app, state) if state.fast_decision_route else app


def _merge_methods(routes: list[Route]) -> list[Route]:
    """One Route per path with every method it serves, so another method is a 405 (not a 404 from the next path)."""
    merged: dict[str, list[Route]] = {}
    for route in routes:
        merged.setdefault(route.path, []).append(route)
    out = []
    for path, same in merged.items():
        if len(same) == 1:
            out.append(same[0])
            continue
        handlers = {m: r.endpoint for r in same for m in (r.methods or ()) if m != "HEAD"}

        async def dispatch(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            response: Response = await handlers[request.method](request)
            return response

        out.append(Route(path, dispatch, methods=list(handlers)))
    return out


async def _refresh_forever(state: ServiceState, interval_s: float) -> None:
    while True:
        try:
            await asyncio.to_thread(state.refresh_gauges)
        except Exception:
            log.exception("IRC: could not refresh the gauges")
        await asyncio.sleep(interval_s)


def _close_all(steps: Iterable[Callable[[], None]]) -> None:
    for step in steps:
        try:
            step()
        except Exception:
            log.exception("IRC: shutdown step %r failed", step)

