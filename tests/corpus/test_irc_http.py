"""Bad-input corpus, IRC HTTP service (`pipeline.irc.http_app` under uvicorn, what `peerscale irc serve` runs).

Every case goes over a real loopback socket, byte for byte, to a uvicorn server in a thread of this process. Each
asserts the status and the {"error"} or decision JSON, that nothing but that one answer comes back
on the connection, that the service still answers afterwards, and that the ledger never holds
more than the plan (a live session is held during every case and must survive it).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.irc import Coordinator
from pipeline.irc.http_app import HttpLimits, ServiceState
from pipeline.irc.prometheus import PrometheusMetrics
from pipeline.irc.service import ThreadedService
from tests.corpus.test_irc_api import assert_within_plan
from tests.test_irc import EU, T0, US, request, write_plan

AT = (T0 + timedelta(minutes=5)).isoformat()
GOOD = {"requested_at": AT, "source_region": US, "destination_region": EU, "vcpu": 1, "memory_gib": 2, "duration_s": 600}


def body(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def post(payload: bytes, *, path: str = "/v1/requests", content_type: str | None = "application/json",
         extra_headers: str = "", length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: irc\r\nConnection: close\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    head += f"Content-Length: {len(payload) if length is None else length}\r\n" if length != -1 else ""
    return (head + extra_headers + "\r\n").encode() + payload


# (case id, raw request bytes, expected status, fragment of the answer). NEW: failed before issue #14.
CASES: list[tuple[str, bytes, int, str]] = [
    ("valid_request", post(body()), 200, '"path": "preallocated"'),
    ("malformed_json", post(b'{"vcpu": 1,'), 400, "bad request body: Expecting"),
    ("json_array_body", post(b"[1, 2]"), 400, "the body must be a JSON object"),
    ("json_string_body", post(b'"hello"'), 400, "the body must be a JSON object"),
    ("nan_literal", post(b'{"vcpu": NaN}'), 400, "NaN is not JSON"),  # NEW: was decided as a missing quantity
    ("infinity_literal", post(b'{"vcpu": -Infinity}'), 400, "-Infinity is not JSON"),  # NEW
    ("nan_string_quantity", post(body(vcpu="NaN")), 200, "Invalid request: missing quantity for vcpu"),
    ("inf_string_quantity", post(body(vcpu="inf")), 200, "Invalid request: non-finite quantity for vcpu: inf"),
    ("nan_string_time", post(body(requested_at="NaN")), 200, "Invalid request: requested_at must be a datetime, got 'NaN'"),
    ("naive_time", post(body(requested_at="2025-01-01T10:05:00")), 200, "naive datetime"),
    ("time_2099", post(body(requested_at="2099-01-01T00:00:00Z")), 200, "ahead of this coordinator's clock"),  # NEW
    ("time_as_number", post(body(requested_at=1735725900)), 200, "requested_at must be a datetime, got 1735725900"),
    ("quantity_as_list", post(body(vcpu=[1])), 200, "non-numeric quantity for vcpu: [1]"),
    ("quantity_400_digits", post(body().replace(b'"vcpu": 1', b'"vcpu": 1' + b"0" * 400)), 200,
     "non-finite quantity for vcpu"),  # NEW: the connection was dropped without an answer
    ("quantity_5000_digits", post(body().replace(b'"vcpu": 1', b'"vcpu": 1' + b"0" * 5000)), 400, "bad request body"),
    ("duration_as_object", post(body(duration_s={"s": 1})), 200, "duration_s must be a positive"),
    ("huge_duration", post(body(duration_s=1e12)), 200, "longer than the longest session"),  # NEW: was held for 31,000 years
    ("priority_as_number", post(body(priority=5)), 200, "unknown priority 5"),  # NEW: was served as normal
    ("unknown_region", post(body(destination_region="eu-north-9")), 200, "unknown region 'eu-north-9'"),
    ("nested_too_deep", post(b"[" * 30_000 + b"]" * 30_000), 400, "nested too deep"),  # NEW: connection dropped
    ("not_utf8", post(b'{"request_id": "\xff"}'), 400, "can't decode byte 0xff"),
    ("empty_body", post(b""), 400, "a JSON body"),
    ("huge_body", post(b" " * 70_000), 413, "at most 65536 are accepted"),  # NEW: was 400
    # Refused by uvicorn's HTTP parser before the app sees it (plain text, not JSON), then closed.
    ("content_length_not_a_number", post(body(), length=None, extra_headers="").replace(
        f"Content-Length: {len(body())}".encode(), b"Content-Length: lots"), 400, "Invalid HTTP request"),
    ("chunked_body", post(b"5\r\n{}   \r\n0\r\n\r\n", length=-1, extra_headers="Transfer-Encoding: chunked\r\n"),
     411, "chunked bodies are not accepted"),  # NEW: the chunks were parsed as another request
    ("content_type_text_plain", post(body(), content_type="text/plain"), 415, "must be application/json"),  # NEW
    ("content_type_form", post(body(), content_type="application/x-www-form-urlencoded"), 415,
     "got application/x-www-form-urlencoded"),  # NEW: a web page could post to a service on loopback
    ("content_type_missing", post(body(), content_type=None), 415, "got none"),  # NEW
    ("content_type_with_charset", post(body(), content_type="application/json; charset=utf-8"), 200, '"status": "success"'),
    ("unknown_post_path", post(body(), path="/v1/reserve"), 404, "no route POST /v1/reserve"),
    ("unknown_get_path", b"GET /admin HTTP/1.1\r\nHost: irc\r\nConnection: close\r\n\r\n", 404, "no route GET /admin"),
    ("method_put", b"PUT /v1/requests HTTP/1.1\r\nHost: irc\r\nContent-Length: 2\r\n\r\n{}", 405, "method PUT not allowed"),  # NEW
    ("no_token_needed_without_tokens", post(body(), extra_headers="Authorization: Bearer nonsense\r\n"), 200,
     '"status": "success"'),
    ("admin_bad_region", b"PUT /v1/admin/unhealthy-regions/EU%20WEST HTTP/1.1\r\nHost: irc\r\nConnection: close\r\n"
     b"Content-Length: 0\r\n\r\n", 400, "invalid region name"),
    ("release_not_a_string", post(b'{"allocation_id": {"a": 1}}', path="/v1/release"), 200, '"released": false'),
    ("release_unknown_id", post(b'{"allocation_id": "pre-never"}', path="/v1/release"), 200, '"released": false'),
]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Coordinator, int]]:
    write_plan(tmp_path)
    coordinator = Coordinator(tmp_path, reload_interval_s=None, outcomes=False, health_file=tmp_path / "health")
    held = coordinator.handle_peering_request(request(request_id="held", vcpu=5.0))
    assert held.path == "preallocated"
    state = ServiceState(coordinator, PrometheusMetrics(), limits=HttpLimits(read_timeout_s=1.0))  # the slow-client case
    with ThreadedService(state) as service:
        yield coordinator, service.port
    coordinator.close()


def exchange(port: int, data: bytes, *, pause_after: int | None = None) -> bytes:
    """Send raw bytes, read until the server closes the connection (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        if pause_after is None:
            conn.sendall(data)
        else:
            conn.sendall(data[:pause_after])  # a client that stops mid-body
        received = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    return received


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """(status, headers, body, whatever came after the first answer)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    return status, headers, rest[:length], rest[length:]


def assert_still_serving(coordinator: Coordinator, port: int) -> None:
    status, _, answer, _ = parse(exchange(port, b"GET /healthz HTTP/1.1\r\nHost: irc\r\nConnection: close\r\n\r\n"))
    assert status == 200 and json.loads(answer)["plan_id"]
    assert coordinator.ledger.usage(int(T0.timestamp()), EU)["vcpu"] >= 5.0  # the held session survived
    assert_within_plan(coordinator)
    assert coordinator.metrics().get("internal_errors", 0) == 0


@pytest.mark.parametrize(("data", "status", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_http_input_gets_one_json_answer(service: tuple[Coordinator, int], data: bytes, status: int,
                                            fragment: str) -> None:
    coordinator, port = service
    got, headers, answer, after = parse(exchange(port, data))
    assert got == status, answer
    assert fragment in answer.decode(), answer
    if fragment != "Invalid HTTP request":
        assert headers["content-type"] == "application/json"
        assert isinstance(json.loads(answer), dict)
    assert after == b""  # one request, one answer: leftover bytes are never parsed as another request
    assert_still_serving(coordinator, port)


def test_a_body_longer_than_allowed_cannot_smuggle_a_second_request(service: tuple[Coordinator, int]) -> None:
    """NEW: the unread body of a refused request used to be parsed as the next request."""
    coordinator, port = service
    smuggled = b"POST /v1/release HTTP/1.1\r\nHost: irc\r\nContent-Type: application/json\r\nContent-Length: 33\r\n\r\n" \
               b'{"allocation_id": "pre-whatever"}'
    data = post(smuggled + b" " * 100, length=70_000).replace(b"Connection: close\r\n", b"")
    status, headers, answer, after = parse(exchange(port, data))
    assert status == 413 and headers.get("connection") == "close"
    assert after == b"" and b"released" not in answer
    assert_still_serving(coordinator, port)


def test_a_client_that_stops_mid_body_is_cut_off(service: tuple[Coordinator, int]) -> None:
    """NEW: a client that declares a body and never sends it held a server thread forever."""
    coordinator, port = service
    status, _, answer, after = parse(exchange(port, post(body()), pause_after=len(post(body())) - 10))
    assert status == 408 and b"did not arrive within 1 s" in answer and after == b""
    assert_still_serving(coordinator, port)


def test_keep_alive_connections_serve_several_requests(service: tuple[Coordinator, int]) -> None:
    """Refusals that read the whole body keep the connection usable; the next request is answered."""
    coordinator, port = service
    first = post(b'{"vcpu": 1,').replace(b"Connection: close\r\n", b"")
    second = post(body(vcpu=0.5))
    raw = exchange(port, first + second)
    status, _, answer, after = parse(raw)
    assert status == 400 and b"bad request body" in answer
    status, _, answer, rest = parse(after)
    assert status == 200 and json.loads(answer)["path"] == "preallocated" and rest == b""
    assert_still_serving(coordinator, port)
