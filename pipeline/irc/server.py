"""A small HTTP front for one Coordinator (stdlib `http.server`, one thread per connection).

    POST /v1/requests          body: a peering request as JSON (flat `peering_requests` columns or
                               `resource_requirements`; `requested_at` defaults to now, request_id
                               to a new UUID)        → 200 + the decision JSON (also on failure)
    POST /v1/release           body: {"allocation_id": "..."} → {"released": true|false}
    GET  /metrics              Prometheus text format
    GET  /healthz              {"plan_id", "plan_error", ...}; 200 even without a plan (on-demand)

Whatever a client sends, the answer is one JSON object: the decision (200), or {"error": ...} with
400 (not a JSON object: bad syntax, NaN/Infinity, nesting too deep, not UTF-8), 404 (no such
route), 405 (another method), 408 (body slower than `READ_TIMEOUT_S`), 411 (no Content-Length),
413 (body over `MAX_BODY` bytes), 415 (not `Content-Type: application/json` - which also keeps a
web page from posting a form to a service on loopback) or 500. A connection whose body was not
read to its end is closed after the answer, so its remaining bytes are never taken for a request.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from pipeline.irc.coordinator import Coordinator
from pipeline.irc.messages import PeeringRequest

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
READ_TIMEOUT_S = 10.0  # a client that stops sending mid-request loses its connection, not a thread forever
JSON_TYPE = "application/json"


class HttpError(Exception):
    """An answer other than 200: status code and the message of {"error": ...}."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


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


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; `coordinator` and `timeout` are set per server by `make_server`."""

    coordinator: Coordinator
    protocol_version = "HTTP/1.1"
    server_version = "peerscale-irc"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client left before its answer
            self.close_connection = True

    def _json(self, code: int, payload: Any) -> None:
        self._send(code, json.dumps(payload, sort_keys=True, default=str, allow_nan=False).encode(), JSON_TYPE)

    def _body(self) -> bytes:
        """The whole body, or an HttpError; the connection closes unless the body was read to its end."""
        keep_open = not self.close_connection  # what the client asked for (Connection: close or not)
        self.close_connection = True
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "send the body with a Content-Length (chunked bodies are not accepted)")
        media_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type != JSON_TYPE:
            raise HttpError(415, f"Content-Type must be {JSON_TYPE}, got {media_type or 'none'}")
        text = (self.headers.get("Content-Length") or "").strip()
        if not text.isdigit():
            raise HttpError(411 if not text else 400, f"a Content-Length of 1..{MAX_BODY} bytes is required")
        length = int(text)
        if length > MAX_BODY:
            raise HttpError(413, f"the body is {length} bytes; at most {MAX_BODY} are accepted")
        if length == 0:
            raise HttpError(400, "a JSON body is required")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise HttpError(408, f"the body did not arrive within {READ_TIMEOUT_S:g} s") from None
        if len(body) < length:
            raise HttpError(400, f"the body ended after {len(body)} of {length} bytes")
        self.close_connection = not keep_open
        return body

    def _answer(self, route: Any) -> None:
        try:
            route()
        except HttpError as exc:
            self._json(exc.code, {"error": str(exc)})
        except Exception as exc:  # never a traceback to the client, never a silently dropped connection
            log.exception("IRC HTTP: %s %s failed", self.command, self.path)
            self.close_connection = True
            self._json(500, {"error": f"internal error: {type(exc).__name__}"})

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body, if any, is not read
        self._json(405, {"error": f"method {self.command} not allowed: use GET /metrics, GET /healthz, "
                                  "POST /v1/requests, POST /v1/release"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _get(self) -> None:
        route = urlsplit(self.path).path
        if route == "/metrics":
            self._send(200, self.coordinator.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif route == "/healthz":
            plan = self.coordinator.plan
            self._json(200, {
                "plan_id": plan.plan_id if plan is not None else None,
                "valid_from": plan.valid_from.isoformat() if plan is not None else None,
                "valid_to": plan.valid_to.isoformat() if plan is not None else None,
                "plan_error": self.coordinator.plan_error,
                "ledger": repr(self.coordinator.ledger),
            })
        else:
            raise HttpError(404, f"no route GET {route}")

    def _post(self) -> None:
        route = urlsplit(self.path).path
        if route not in ("/v1/requests", "/v1/release"):
            self.close_connection = True  # the body is not read
            raise HttpError(404, f"no route POST {route}")
        body = parse_body(self._body())
        if route == "/v1/requests":
            row = dict(body)
            row.setdefault("request_id", uuid.uuid4().hex)
            row.setdefault("requested_at", datetime.now(UTC).isoformat())
            response = self.coordinator.handle_peering_request(PeeringRequest.from_row(row))
            self._json(200, response.to_dict())
        else:
            allocation_id = body.get("allocation_id")
            released = self.coordinator.release(allocation_id)
            self._json(200, {"allocation_id": allocation_id, "released": released})


def make_server(coordinator: Coordinator, host: str = "127.0.0.1", port: int = 8787) -> ThreadingHTTPServer:
    """An HTTP server bound to host:port (port 0 picks a free one); call serve_forever()."""
    handler = type("Handler", (_Handler,), {"coordinator": coordinator, "timeout": READ_TIMEOUT_S})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
