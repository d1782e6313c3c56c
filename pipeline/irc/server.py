"""A small HTTP front for one Coordinator (stdlib `http.server`, one thread per connection).

    POST /v1/requests          body: a peering request as JSON (flat `peering_requests` columns or
                               `resource_requirements`; `requested_at` defaults to now, request_id
                               to a new UUID)        → 200 + the decision JSON (also on failure)
    POST /v1/release           body: {"allocation_id": "..."} → {"released": true|false}
    GET  /metrics              Prometheus text format
    GET  /healthz              {"plan_id", "plan_error", ...}; 200 even without a plan (on-demand)
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.irc.coordinator import Coordinator
from pipeline.irc.messages import PeeringRequest

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


def make_server(coordinator: Coordinator, host: str = "127.0.0.1", port: int = 8787) -> ThreadingHTTPServer:
    """An HTTP server bound to host:port (port 0 picks a free one); call serve_forever()."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "peerscale-irc"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, payload: Any) -> None:
            self._send(code, json.dumps(payload, sort_keys=True, default=str).encode(), "application/json")

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                raise ValueError(f"a JSON body of 1..{MAX_BODY} bytes is required")
            return json.loads(self.rfile.read(length))

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, coordinator.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif self.path == "/healthz":
                plan = coordinator.plan
                self._json(200, {
                    "plan_id": plan.plan_id if plan is not None else None,
                    "valid_from": plan.valid_from.isoformat() if plan is not None else None,
                    "valid_to": plan.valid_to.isoformat() if plan is not None else None,
                    "plan_error": coordinator.plan_error,
                    "ledger": repr(coordinator.ledger),
                })
            else:
                self._json(404, {"error": f"no route GET {self.path}"})

        def do_POST(self) -> None:
            try:
                body = self._body()
            except (ValueError, UnicodeDecodeError) as exc:
                self._json(400, {"error": f"bad request body: {exc}"})
                return
            if self.path == "/v1/requests":
                if not isinstance(body, dict):
                    self._json(400, {"error": "the body must be a JSON object"})
                    return
                row = dict(body)
                row.setdefault("request_id", uuid.uuid4().hex)
                row.setdefault("requested_at", datetime.now(UTC).isoformat())
                response = coordinator.handle_peering_request(PeeringRequest.from_row(row))
                self._json(200, response.to_dict())
            elif self.path == "/v1/release":
                allocation_id = body.get("allocation_id") if isinstance(body, dict) else None
                self._json(200, {"allocation_id": allocation_id, "released": coordinator.release(allocation_id)})
            else:
                self._json(404, {"error": f"no route POST {self.path}"})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
