"""`peerscale irc serve`: the HTTP API (`pipeline.irc.http_app`) under uvicorn, in one or more worker processes.

Imported only by `serve` (and tests): uvicorn, Starlette and prometheus_client never load with
`import pipeline.irc`. The parent process checks the configuration (tokens, TLS files, ledger URL),
binds and listens on the socket, prints one JSON line (where it listens), empties the
prometheus_client multi-process directory and sets PROMETHEUS_MULTIPROC_DIR, then runs uvicorn:
in-process with one worker, else a supervisor that restarts dead workers. Each worker builds its
app with `create_app()` from the configuration the parent put in PEERSCALE_IRC_SERVICE (JSON).

SIGTERM or Ctrl-C: uvicorn stops accepting, lets requests in flight finish (up to
`graceful_timeout_s`), then each worker's lifespan closes its coordinator - the outcome log is
flushed - and its ledger connection.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONFIG_ENV = "PEERSCALE_IRC_SERVICE"
TOKENS_ENV = "PEERSCALE_IRC_TOKENS"  # comma- or space-separated bearer tokens (or --token-file)
MIN_TOKEN_LENGTH = 16
APP_FACTORY = "pipeline.irc.service:create_app"


class ServiceError(Exception):
    """The service cannot start as configured (the message says what to change)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a worker needs to build its app; travels to the workers as JSON in PEERSCALE_IRC_SERVICE."""

    lake_root: str
    ledger_url: str = "memory"
    host: str = "127.0.0.1"
    port: int = 8787
    workers: int = 1
    reload_interval_s: float = 10.0
    log_outcomes: bool = True
    token_file: str | None = None
    allow_no_auth: bool = False
    on_demand_only: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body: int = 64 * 1024
    read_timeout_s: float = 10.0
    keep_alive_s: int = 5
    graceful_timeout_s: int = 30
    max_connections: int = 1024  # per worker; over it uvicorn answers 503 instead of queueing without bound
    decision_threads: int | None = None  # None: 0 (on the event loop) for memory/SQLite, 4 for PostgreSQL
    metrics_dir: str | None = None

    @property
    def threads(self) -> int:
        if self.decision_threads is not None:
            return self.decision_threads
        return 4 if self.ledger_url.startswith(("postgresql:", "postgres:")) else 0

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServiceConfig:
        text = os.environ.get(CONFIG_ENV)
        if not text:
            raise ServiceError(f"{CONFIG_ENV} is not set: workers are started by `peerscale irc serve`")
        return cls(**json.loads(text))


def load_tokens(token_file: str | None, environ: dict[str, str] | None = None) -> frozenset[bytes]:
    """Bearer tokens from PEERSCALE_IRC_TOKENS and the token file (one a line, # comments).
    ValueError names the file line of a bad token, never the token itself."""
    env = os.environ if environ is None else environ
    found: list[tuple[str, str]] = [(f"{TOKENS_ENV} entry {i}", t)
                                    for i, t in enumerate(env.get(TOKENS_ENV, "").replace(",", " ").split(), 1)]
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the token file {token_file}: {exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                found.append((f"{token_file} line {number}", line))
    for where, token in found:
        if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
            raise ValueError(f"{where}: a token must be at least {MIN_TOKEN_LENGTH} printable characters without spaces "
                             "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return frozenset(token.encode() for _, token in found)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(config: ServiceConfig) -> frozenset[bytes]:
    """ServiceError for a configuration that cannot or must not run; the tokens otherwise."""
    try:
        tokens = load_tokens(config.token_file)
    except ValueError as exc:
        raise ServiceError(str(exc)) from None
    if not tokens and not config.allow_no_auth and not _is_loopback(config.host):
        raise ServiceError(f"no bearer tokens while listening on {config.host}: set {TOKENS_ENV} or --token-file "
                           "(or pass --allow-no-auth to serve an open API on purpose)")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ServiceError("TLS needs both --tls-cert and --tls-key")
    for path in (config.tls_cert, config.tls_key, config.token_file):
        if path and not Path(path).is_file():
            raise ServiceError(f"{path} does not exist or is not a file")
    if config.tls_cert and config.tls_key:
        try:  # what each worker will do: a bad pair fails here, once, instead of in a restart loop of workers
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.tls_cert, config.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise ServiceError(f"cannot use --tls-cert {config.tls_cert} with --tls-key {config.tls_key}: {exc}") from None
    if config.workers < 1:
        raise ServiceError(f"--workers must be >= 1, got {config.workers}")
    if config.workers > 1 and config.ledger_url == "memory":
        raise ServiceError("--workers > 1 needs a shared ledger (sqlite:///path or postgresql://...): with in-memory "
                           "ledgers each worker would grant the whole plan")
    return tokens


def create_app() -> Any:
    """uvicorn's app factory, run in each worker: the coordinator on its ledger, metrics in prometheus_client."""
    from pipeline.irc import Coordinator, open_ledger
    from pipeline.irc.http_app import HttpLimits, ServiceState, build_app
    from pipeline.irc.prometheus import PrometheusMetrics, mark_exited

    config = ServiceConfig.from_env()
    tokens = check_config(config)
    _check_multiprocess_values()
    store = open_ledger(config.ledger_url)
    metrics = PrometheusMetrics()
    coordinator = Coordinator(config.lake_root, store, reload_interval_s=config.reload_interval_s,
                              outcomes=config.log_outcomes, metrics=metrics)  # the wall clock
    executor = ThreadPoolExecutor(config.threads, thread_name_prefix="irc-decide") if config.threads else None
    state = ServiceState(coordinator, metrics, tokens=tokens, on_demand_only=config.on_demand_only,
                         limits=HttpLimits(config.max_body, config.read_timeout_s), executor=executor)
    if executor is not None:
        state.on_close.append(lambda: executor.shutdown(wait=True))
    state.on_close += [coordinator.close, store.close, mark_exited]  # close() flushes the outcome log
    return build_app(state)


def _check_multiprocess_values() -> None:
    """prometheus_client picks where values live when it is first imported: in multi-process mode that must be
    the memory-mapped files, or this worker's counts would be invisible to every scrape."""
    from prometheus_client import values

    from pipeline.irc.prometheus import MULTIPROC_ENV

    if os.environ.get(MULTIPROC_ENV) and values.ValueClass.__name__ != "MmapedValue":
        raise ServiceError(f"prometheus_client was imported before {MULTIPROC_ENV} was set in this process")


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket (port 0: a free one), inheritable by the workers; connections queue from now on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def uvicorn_config(config: ServiceConfig) -> Any:
    import uvicorn

    return uvicorn.Config(
        APP_FACTORY, factory=True, host=config.host, port=config.port, workers=config.workers,
        loop="uvloop", http="httptools", lifespan="on", log_level="warning", access_log=False,
        server_header=False, proxy_headers=False, limit_concurrency=config.max_connections, timeout_keep_alive=config.keep_alive_s,
        timeout_graceful_shutdown=config.graceful_timeout_s, ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key,
    )


def banner(config: ServiceConfig, sock: socket.socket, tokens: frozenset[bytes], metrics_dir: str) -> dict[str, Any]:
    """The one JSON line `serve` prints once it listens (tests and scripts read the address from it)."""
    from pipeline.irc.plan_source import PlanUnavailable, read_latest_plan_id

    host, port = sock.getsockname()[:2]
    try:
        plan_id: str | None = read_latest_plan_id(config.lake_root)
    except (PlanUnavailable, OSError, ValueError):
        plan_id = None
    shown = f"[{host}]" if ":" in host else host
    return {"listening": f"{config.scheme}://{shown}:{port}", "workers": config.workers, "plan_id": plan_id,
            "auth": "bearer" if tokens else "none", "metrics_dir": metrics_dir, "pid": os.getpid()}


def run(config: ServiceConfig, echo: Any = print) -> None:
    """Serve until SIGTERM/SIGINT. ServiceError when the configuration or the address is not usable."""
    tokens = check_config(config)
    from pipeline.irc import open_ledger

    try:
        open_ledger(config.ledger_url).close()  # a bad URL or an unreachable database fails here, once
    except (OSError, ValueError, ImportError) as exc:
        raise ServiceError(f"ledger {config.ledger_url!r}: {exc}") from None
    own_dir = config.metrics_dir is None
    metrics_dir = config.metrics_dir or tempfile.mkdtemp(prefix="peerscale-irc-metrics-")
    try:
        sock = listen(config.host, config.port)
    except OSError as exc:
        raise ServiceError(f"cannot listen on {config.host}:{config.port}: {exc}; choose another --port "
                           "(0 picks a free one) or --host") from None
    try:
        from pipeline.irc.prometheus import MULTIPROC_ENV, clean_directory

        clean_directory(metrics_dir)
        os.environ[MULTIPROC_ENV] = metrics_dir  # before any worker imports prometheus_client
        os.environ[CONFIG_ENV] = config.to_env()
        echo(json.dumps(banner(config, sock, tokens, metrics_dir)))
        sys.stdout.flush()
        _serve(config, sock)
    finally:
        sock.close()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(config: ServiceConfig, sock: socket.socket) -> None:
    """Always under uvicorn's supervisor, even for one worker: a worker is a fresh interpreter that imports
    prometheus_client after PROMETHEUS_MULTIPROC_DIR is set, and a worker that dies is replaced."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    supervisor = Multiprocess(uvicorn_config(config), sockets=[sock])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise ServiceError("a worker could not start (its error is above: the TLS files, the lake or the ledger); "
                           "fix it and start again")


class ThreadedService:
    """The app on a loopback port, served from a thread of this process (tests, `pipeline.irc.fuzz`): uvicorn
    without its supervisor and signal handlers. `with ThreadedService(state) as svc: svc.url`."""

    def __init__(self, state: Any, host: str = "127.0.0.1", **uvicorn_options: Any) -> None:
        import uvicorn

        from pipeline.irc.http_app import build_app

        self.sock = listen(host, 0)
        host_, port = self.sock.getsockname()[:2]
        self.url = f"http://{host_}:{port}"
        self.port = int(port)
        options = {"lifespan": "on", "log_level": "warning", "access_log": False, "server_header": False,
                   "loop": "asyncio", "http": "httptools", **uvicorn_options}
        self.server = uvicorn.Server(uvicorn.Config(build_app(state), **options))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                        name="irc-http")

    def __enter__(self) -> ThreadedService:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServiceError("the in-thread IRC service did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=60)
        self.sock.close()

