"""A throw-away Airflow 3 CeleryExecutor deployment built from native processes.

The same topology as ``docker/compose.yaml`` — api-server (core + execution API), scheduler,
dag-processor and N Celery workers, PostgreSQL metadata database and result backend, Redis
broker — started as plain processes on this machine, so the scale-out configuration can be
exercised where no container engine runs. Used by ``tests/test_distributed.py``; runnable by hand:

    .venv/bin/python -m tests.celery_cluster            # seed a lake, run one hourly DAG run, report, clean up

Isolation from anything else on the machine: a database of its own (``peerscale_dist_<hex>``,
dropped at the end), an empty Redis database number claimed with a marker key (flushed at the
end), a Celery queue of its own, free TCP ports picked at start, and every process in its own
session so ``stop()`` ends exactly the process groups it started.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = Path(sys.executable).with_name("airflow")
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_CLAIM_KEY = "peerscale:celery-cluster:claim"
API_USER = "peerscale"


class ClusterError(RuntimeError):
    """The cluster could not be brought up, or a wait timed out."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0, alive: Callable[[], None] | None = None) -> Any:
    """Poll `check` until it returns something truthy; `alive` raises if a process died meanwhile."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            result = check()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class CeleryCluster:
    """Start with ``start()``, always finish with ``stop()`` (also after a failed start)."""

    workdir: Path
    lake_root: str
    build_root: str
    source_root: str = str(REPO_ROOT / "data_samples")
    dags_folder: Path = REPO_ROOT / "dags"
    workers: int = 2
    worker_concurrency: int = 1
    processes: list[Process] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. PEERSCALE_APPLY for every process
    triggerer: bool = False  # deferred tasks (the human approval) need one

    def __post_init__(self) -> None:
        token = secrets.token_hex(4)
        self.db_name = f"peerscale_dist_{token}"
        self.queue = f"peerscale-{token}"
        self.worker_names = [f"peerscale-worker-{i + 1}" for i in range(self.workers)]
        self.redis_db: int | None = None
        self.api_port = free_port()
        self.api_password = secrets.token_urlsafe(16)
        self._token: str | None = None
        self._db_created = False
        # Secrets every process shares (generated per cluster; compose takes them from docker/.env).
        self._fernet_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        self._jwt_secret = secrets.token_urlsafe(64)  # ≥ 64 bytes: the HMAC-SHA512 key length
        self._api_secret = secrets.token_urlsafe(32)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)

    # ---- configuration: one environment, shared by every process (as in the compose file) ----
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PEERSCALE_"))}
        db_url = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.db_name}"
        base.update(
            {
                "AIRFLOW_HOME": str(self.workdir / "airflow-home"),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__FERNET_KEY": self._fernet_key,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipeline.common.worker_identity.hostname",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{API_USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.workdir / "passwords.json"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.db_name}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                "AIRFLOW__API__SECRET_KEY": self._api_secret,
                "AIRFLOW__API__BASE_URL": f"{self.api_url}/",
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "tasks"),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                # Only the run the test creates: no cron-scheduled runs for "now" (the samples are Jan 2026).
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "PEERSCALE_SOURCE": self.source_root,
                "PEERSCALE_LAKE": self.lake_root,
                "PEERSCALE_BUILD": self.build_root,
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(self.extra_env)
        base.update(extra)
        return base

    # ---- lifecycle ----
    def start(self, timeout: float = 240) -> None:
        self._preflight()
        (self.workdir / "airflow-home").mkdir(exist_ok=True)
        (self.workdir / "passwords.json").write_text(json.dumps({API_USER: self.api_password}))
        self._create_database()
        self._claim_redis_db()
        migrate = subprocess.run([str(AIRFLOW), "db", "migrate"], env=self.env(), capture_output=True, text=True, timeout=600)
        (self.logs / "db-migrate.log").write_text(migrate.stdout + migrate.stderr)
        if migrate.returncode != 0:
            raise ClusterError("airflow db migrate failed:\n" + (migrate.stdout + migrate.stderr)[-4000:])
        self.create_pools()

        self._spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"])
        self._spawn("dag-processor", ["dag-processor"])
        self._spawn("scheduler", ["scheduler"])
        if self.triggerer:
            self._spawn("triggerer", ["triggerer"], AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()))
        for name in self.worker_names:
            self._spawn(
                name,
                ["celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", str(self.worker_concurrency),
                 "--queues", self.queue, "--pid", str(self.workdir / f"{name}.pid")],
                PEERSCALE_WORKER_NAME=name,
                AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            )
        wait_until("the api-server to answer", lambda: self.api("GET", "/api/v2/version"), timeout, alive=self.check_alive)
        wait_until("scheduler and dag-processor heartbeats", self._components_healthy, timeout, alive=self.check_alive)
        for name in self.worker_names:
            wait_until(f"Celery worker {name} to be ready", lambda n=name: " ready." in self._proc(n).log_path.read_text(errors="replace"),
                       timeout, alive=self.check_alive)

    def pools(self) -> dict[str, tuple[int, str]]:
        """The pools the DAGs use (default names): model fitting one slot per worker process, one solver."""
        return {
            "peerscale_model_fit": (self.workers * self.worker_concurrency, "forecast shards and global model fits"),
            "peerscale_solver": (1, "CP-SAT plan solves"),
        }

    def create_pools(self) -> None:
        """`airflow pools set` for every pool (the scheduler never schedules a task whose pool is missing)."""
        runs = [subprocess.Popen([str(AIRFLOW), "pools", "set", name, str(slots), description], env=self.env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for name, (slots, description) in self.pools().items()]
        for proc in runs:
            out, _ = proc.communicate(timeout=300)
            (self.logs / "pools.log").open("a").write(out)
            if proc.returncode != 0:
                raise ClusterError("airflow pools set failed:\n" + out[-4000:])

    def stop(self, grace: float = 30) -> None:
        """End every process group this cluster started, then drop its database and Redis DB."""
        for proc in self.processes:
            if proc.popen is not None and proc.popen.poll() is None:
                _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes:
            if proc.popen is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            # The group may outlive its leader (Celery pool children, uvicorn workers): kill what is left.
            _signal_group(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)
        self._release_redis_db()
        self._drop_database()

    def check_alive(self) -> None:
        for proc in self.processes:
            if proc.popen is not None and proc.popen.poll() is not None:
                raise ClusterError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.tail(60)}")

    def log_tails(self, lines: int = 40) -> str:
        parts = [f"===== {p.name} ({p.log_path}) =====\n{p.tail(lines)}" for p in self.processes]
        return "\n".join(parts)

    # ---- REST API (core API of the api-server, authenticated like any client) ----
    def api(self, method: str, path: str, payload: dict | None = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self._get_token()}"} if not path.startswith("/auth") else {}
        response = httpx.request(method, self.api_url + path, json=payload, headers=headers, timeout=30)
        if response.status_code not in ok:
            raise ClusterError(f"{method} {path} → {response.status_code}: {response.text[:500]}")
        return response.json()

    def _get_token(self) -> str:
        if self._token is None:
            body = self.api("POST", "/auth/token", {"username": API_USER, "password": self.api_password})
            self._token = body["access_token"]
        return self._token

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        def parsed() -> dict | None:
            try:
                return self.api("GET", f"/api/v2/dags/{dag_id}")
            except ClusterError as exc:
                if "→ 404" in str(exc):
                    return None
                raise

        return wait_until(f"the dag-processor to parse {dag_id}", parsed, timeout, interval=2, alive=self.check_alive)

    def trigger(self, dag_id: str, run_id: str, interval_start: str, interval_end: str) -> dict:
        """Unpause the DAG and create one run with an explicit data interval, keyed like a scheduled run."""
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        return self.api(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            {
                "dag_run_id": run_id,
                "logical_date": interval_start,
                "data_interval_start": interval_start,
                "data_interval_end": interval_end,
                "run_after": interval_end,
                "conf": {},
            },
        )

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict:
        def finished() -> dict | None:
            run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        return wait_until(f"DAG run {run_id} to finish", finished, timeout, interval=3, alive=self.check_alive)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        body = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return body["task_instances"]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the metadata database directly (what the REST API does not expose)."""
        import psycopg2

        conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=self.db_name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    # ---- internals ----
    def _spawn(self, name: str, args: list[str], **extra_env: str) -> Process:
        proc = Process(name=name, argv=[str(AIRFLOW), *args], log_path=self.logs / f"{name}.log")
        with proc.log_path.open("wb") as log:
            proc.popen = subprocess.Popen(
                proc.argv, env=self.env(**extra_env), cwd=str(self.workdir), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,  # its own process group: stop() ends exactly it
                preexec_fn=_die_with_parent,
            )
        self.processes.append(proc)
        return proc

    def _preflight(self) -> None:
        for what, host, port in (("PostgreSQL", PG_HOST, PG_PORT), ("Redis", REDIS_HOST, REDIS_PORT)):
            try:
                socket.create_connection((host, port), timeout=5).close()
            except OSError as exc:
                raise ClusterError(f"{what} is not reachable on {host}:{port} ({exc}); the CeleryExecutor cluster needs it") from exc

    def _proc(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def _components_healthy(self) -> bool:
        health = self.api("GET", "/api/v2/monitor/health")
        return all(health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "dag_processor"))

    def _admin_connection(self):
        import psycopg2

        conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
        conn.autocommit = True
        return conn

    def _create_database(self) -> None:
        conn = self._admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.db_name}"')
            self._db_created = True
        finally:
            conn.close()

    def database_exists(self) -> bool:
        conn = self._admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.db_name,))
                return cur.fetchone() is not None
        finally:
            conn.close()

    def _drop_database(self) -> None:
        if not self._db_created:
            return
        conn = self._admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self._db_created = False
        finally:
            conn.close()

    def _claim_redis_db(self) -> None:
        """Take the first empty Redis database (1..15), marking it so a concurrent run skips it."""
        import redis

        for number in range(1, 16):
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
            try:
                if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, self.db_name, nx=True):
                    self.redis_db = number
                    return
            finally:
                client.close()
        raise ClusterError("no empty Redis database among 1..15 on 127.0.0.1:6379")

    def _release_redis_db(self) -> None:
        if self.redis_db is None:
            return
        import redis

        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db)
        try:
            if client.get(REDIS_CLAIM_KEY) == self.db_name.encode():
                client.flushdb()
            self.redis_db = None
        finally:
            client.close()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launching process dies without calling stop()."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def main(argv: list[str] | None = None) -> int:
    """Seed a temporary lake, run one hourly DAG run through the cluster, print where tasks ran."""
    import argparse
    import shutil
    import tempfile

    from pipeline.common.config import Settings
    from pipeline.run import backfill_ingest

    parser = argparse.ArgumentParser(prog="python -m tests.celery_cluster", description=main.__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1, help="Celery worker concurrency (per worker)")
    parser.add_argument("--keep", action="store_true", help="keep the lake and every process log (the database is dropped)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="peerscale-celery-"))
    settings = Settings(lake_root=str(root / "lake"), build_root=str(root / "build"))
    print(f"seeding {settings.lake_root} …", flush=True)
    backfill_ingest("2026-01-12T00:00", "2026-01-28T23:00", settings)
    cluster = CeleryCluster(workdir=root / "cluster", lake_root=settings.lake_root, build_root=settings.build_root,
                            workers=args.workers, worker_concurrency=args.concurrency)
    keep = args.keep
    try:
        cluster.start()
        print(f"api-server {cluster.api_url}, database {cluster.db_name}, redis db {cluster.redis_db}", flush=True)
        cluster.wait_for_dag("peerscale_hourly")
        run_id = "celery__2026-01-29T00:00"
        cluster.trigger("peerscale_hourly", run_id, "2026-01-28T23:00:00Z", "2026-01-29T00:00:00Z")
        run = cluster.wait_for_run("peerscale_hourly", run_id)
        for ti in cluster.task_instances("peerscale_hourly", run_id):
            keep = keep or ti["try_number"] != 1
            print(f"{ti['task_id']:<24} {ti['state']:<8} try={ti['try_number']} {ti['duration'] or 0:6.1f} s on {ti['hostname']}")
        print(f"run {run['state']}; LATEST = {(Path(settings.lake_root) / 'plans' / 'LATEST').read_text().strip()}")
        keep = keep or run["state"] != "success"
        return 0 if run["state"] == "success" else 1
    except BaseException:
        keep = True
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.stop()
        if keep:
            print(f"logs and lake kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
