"""A real AWS API on loopback for the S3 and IaC tests: moto in server mode, plus a flaky proxy.

Not in-process mocks: boto3 and pyarrow talk HTTP to a ``ThreadedMotoServer`` bound to
127.0.0.1 on a free port, exactly as they would talk to AWS. Import the fixtures into a test
module (``from tests.moto_server import aws_env, moto_server, s3_bucket  # noqa: F401``).

- ``moto_server`` (session): one server per test process, stopped at the end of the session.
- ``aws_env``: points the AWS SDKs at it for one test (endpoint, region, throw-away credentials
  whose secret is :data:`TEST_SECRET`, fast S3 backoff).
- ``s3_bucket``: a fresh bucket for one test.
- :class:`FlakyProxy`: a TCP proxy whose first N connections get ``503 SlowDown``, for retries.

The server validates instance types like AWS does (moto's
``MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION``), so a plan naming an instance type AWS does not
sell fails to apply here too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing, suppress

import pytest

# A secret that must never show up in rendered files, manifests or logs (see test_iac_safety).
TEST_SECRET = "peerscaleTESTsecret/" + uuid.uuid4().hex + "Zq"
TEST_ACCESS_KEY_ID = "AKIDPEERSCALETEST"
REGION = "us-east-1"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1; state lives in the process, so a restart keeps it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
        from moto import settings as moto_settings
        from moto.server import ThreadedMotoServer

        moto_settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION = True
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


_shared: MotoServer | None = None
_shared_users = 0
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """The process's loopback AWS server (shared by every module that imports this fixture)."""
    global _shared, _shared_users
    with _shared_lock:
        if _shared is None:
            _shared = MotoServer().start()
        _shared_users += 1
        server = _shared
    yield server
    with _shared_lock:
        _shared_users -= 1
        if _shared_users == 0 and _shared is not None:
            _shared.stop()
            _shared = None


def point_sdks_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Environment for boto3 and pyarrow.fs to use ``endpoint`` with throw-away credentials."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "PEERSCALE_S3_ENDPOINT",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("PEERSCALE_S3_BACKOFF_S", "0.05")


@pytest.fixture()
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    point_sdks_at(monkeypatch, moto_server.endpoint)
    return moto_server


@pytest.fixture()
def s3_bucket(aws_env: MotoServer) -> str:
    """A new, empty bucket on the loopback server."""
    import boto3

    name = f"peerscale-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=name)
    return name


_SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)
_SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>flaky</RequestId></Error>"
)


class FlakyProxy:
    """TCP proxy on loopback: the first ``failures`` connections get ``503 SlowDown`` and are
    closed; later connections are relayed byte for byte to ``upstream_port``."""

    def __init__(self, upstream_port: int, failures: int) -> None:
        self.upstream_port = upstream_port
        self.remaining_failures = failures
        self.failed = 0
        self.relayed = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._sock.close()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                fail = self.remaining_failures > 0
                if fail:
                    self.remaining_failures -= 1
                    self.failed += 1
                else:
                    self.relayed += 1
            target = self._fail if fail else self._relay
            threading.Thread(target=target, args=(client,), daemon=True).start()

    @staticmethod
    def _fail(client: socket.socket) -> None:
        with closing(client):
            client.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                client.sendall(_SLOW_DOWN % (len(_SLOW_DOWN_BODY), _SLOW_DOWN_BODY))
            except OSError:
                pass

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            client.close()
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    with suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(timeout=30)
        client.close()
        upstream.close()
