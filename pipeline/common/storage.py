"""Filesystem access for local paths and s3:// URIs, with atomic publishing and S3 retries.

pyarrow.fs gives one API over both. The S3 endpoint comes from ``PEERSCALE_S3_ENDPOINT`` or
``AWS_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:5000`` for a loopback server), the region from
``AWS_DEFAULT_REGION``/``AWS_REGION``, credentials from the usual AWS chain — never from here.

Errors on S3 fall in two kinds:

* **transient** — connection refused or reset, timeouts, HTTP 5xx, throttling (``SlowDown``):
  retried with exponential backoff and jitter (``PEERSCALE_S3_MAX_ATTEMPTS``, default 5;
  ``PEERSCALE_S3_BACKOFF_S``, default 0.2 s, doubling, capped at 5 s) on top of the AWS SDK's own
  short retries (``PEERSCALE_S3_SDK_ATTEMPTS``, default 3);
* **permanent** — missing bucket, access denied, bad credentials, any other 4xx: raised at once as
  :class:`StoragePermanentError`, whose message names the operation and the full ``s3://`` key.

A missing *object* is not an error of the store: it raises ``FileNotFoundError`` naming the key
(``exists`` returns False). Every operation here is idempotent, which is what makes a retry safe.

This module imports only the stdlib and pyarrow: the IRC uses it on its request path.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from pipeline.common.env import env_float, env_int

log = logging.getLogger(__name__)

T = TypeVar("T")

ENDPOINT_ENV_VARS = ("PEERSCALE_S3_ENDPOINT", "AWS_ENDPOINT_URL")
MAX_ATTEMPTS_ENV = "PEERSCALE_S3_MAX_ATTEMPTS"
BACKOFF_ENV = "PEERSCALE_S3_BACKOFF_S"
SDK_ATTEMPTS_ENV = "PEERSCALE_S3_SDK_ATTEMPTS"
MAX_BACKOFF_S = 5.0

# pyarrow/AWS SDK error texts that mean "try again": connection trouble, 5xx and throttling.
_TRANSIENT = re.compile(
    r"NETWORK_CONNECTION|SLOW_DOWN|SlowDown|THROTTL|Throttl|SERVICE_UNAVAILABLE|ServiceUnavailable|"
    r"INTERNAL_FAILURE|InternalError|REQUEST_TIMEOUT|RequestTimeout|REQUEST_EXPIRED|"
    r"HTTP status 5\d\d|HTTP response code 5\d\d|status code 5\d\d|"
    r"curlCode|Couldn't connect|Connection refused|Connection reset|connection was reset|"
    r"Broken pipe|timed out|Timeout was reached|Empty reply|Recv failure|Send failure",
    re.IGNORECASE,
)
# Texts that mean "this will never work as asked": fail at once with the key.
_PERMANENT = re.compile(
    r"ACCESS_DENIED|AccessDenied|NO_SUCH_BUCKET|NoSuchBucket|INVALID_ACCESS_KEY_ID|"
    r"InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH|SignatureDoesNotMatch|"
    r"INVALID_BUCKET_NAME|InvalidBucketName|HTTP status 4\d\d|Forbidden",
    re.IGNORECASE,
)


class StorageError(OSError):
    """An S3 operation failed; the message names the operation and the ``s3://`` key."""

    def __init__(self, message: str, uri: str, operation: str) -> None:
        super().__init__(message)
        self.uri = uri
        self.operation = operation


class StoragePermanentError(StorageError):
    """Retrying will not help (missing bucket, access denied, bad request): fix and re-run."""


class StorageTransientError(StorageError):
    """The store kept failing transiently (outage, throttling) for every attempt."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local path or URI root."""
    root = str(root).rstrip("/")
    return "/".join([root, *[p.strip("/") for p in parts if p]])


def s3_endpoint() -> str | None:
    """The configured S3 endpoint URL (``PEERSCALE_S3_ENDPOINT`` wins over ``AWS_ENDPOINT_URL``)."""
    for name in ENDPOINT_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


_FS_CACHE: dict[tuple[object, ...], pafs.S3FileSystem] = {}
_FS_LOCK = threading.Lock()


def _s3_filesystem() -> pafs.S3FileSystem:
    """One S3FileSystem per (endpoint, region, access key id, SDK attempts); built once, reused."""
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    sdk_attempts = env_int(SDK_ATTEMPTS_ENV, 3)
    # The access key id (not the secret) keys the cache so a changed identity gets a new client.
    key = (endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), sdk_attempts)
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            kwargs: dict[str, object] = {
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=sdk_attempts),
                "connect_timeout": 5.0,
                "request_timeout": 60.0,
            }
            if endpoint:
                scheme, _, host = endpoint.partition("://")
                kwargs.update(endpoint_override=(host or scheme).rstrip("/"), scheme=scheme if host else "https")
            if region:
                kwargs["region"] = region
            fs = pafs.S3FileSystem(**kwargs)
            _FS_CACHE[key] = fs
        return fs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path for a local path or s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(), uri[len("s3://"):]
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection trouble, timeouts, HTTP 5xx, throttling."""
    if isinstance(exc, FileNotFoundError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    if _PERMANENT.search(text):
        return False
    return bool(_TRANSIENT.search(text))


def with_retries(operation: str, uri: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (an idempotent operation on ``uri``), retrying transient S3 errors.

    Local paths run once, unchanged. On S3: a transient error is retried with exponential
    backoff and jitter; a permanent one, or the last transient one, is raised as a
    :class:`StorageError` naming ``operation`` and ``uri``. ``FileNotFoundError`` passes through
    with the key in its message.
    """
    if not is_s3(uri):
        return fn()
    attempts = env_int(MAX_ATTEMPTS_ENV, 5)
    base = env_float(BACKOFF_ENV, 0.2)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError as exc:
            if uri in str(exc):
                raise
            raise FileNotFoundError(f"{uri} does not exist ({operation}: {exc})") from exc
        except (OSError, ConnectionError, TimeoutError) as exc:
            detail = _one_line(exc)
            if not is_transient(exc):
                raise StoragePermanentError(
                    f"{operation} {uri} failed: {detail} — not retried (a permanent error: check the "
                    "bucket name, its region and the credentials' permissions)",
                    uri,
                    operation,
                ) from exc
            if attempt == attempts:
                raise StorageTransientError(
                    f"{operation} {uri} failed after {attempts} attempts: {detail}", uri, operation
                ) from exc
            delay = min(MAX_BACKOFF_S, base * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            log.warning(
                "transient S3 error on %s %s (attempt %d/%d), retrying in %.2fs: %s",
                operation, uri, attempt, attempts, delay, detail,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] or type(exc).__name__


def exists(uri: str) -> bool:
    def probe() -> bool:
        fs, path = filesystem(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    return with_retries("exists", uri, probe)


def check_bucket(uri: str) -> None:
    """Raise :class:`StoragePermanentError` when ``uri`` is on S3 and its bucket does not exist.

    A key in a missing bucket reads as "not found", like a key not written yet; callers about to
    say "X does not exist yet" call this first, so a mistyped bucket is named as such.
    """
    if not is_s3(uri):
        return
    bucket = uri[len("s3://"):].split("/", 1)[0]

    def probe() -> pafs.FileType:
        fs, _ = filesystem(uri)
        return fs.get_file_info(bucket).type

    if with_retries("check bucket", f"s3://{bucket}", probe) == pafs.FileType.NotFound:
        raise StoragePermanentError(
            f"bucket s3://{bucket} does not exist (or these credentials cannot see it): check the lake or source URI "
            "and the S3 endpoint (AWS_ENDPOINT_URL / PEERSCALE_S3_ENDPOINT)",
            f"s3://{bucket}",
            "check bucket",
        )


def read_bytes(uri: str) -> bytes:
    def read() -> bytes:
        fs, path = filesystem(uri)
        with fs.open_input_stream(path) as stream:
            return stream.read()

    return with_retries("read", uri, read)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


# New files get this mode minus the process umask (0644 under umask 022), like any file a tool writes.
NEW_FILE_MODE = 0o666


@contextmanager
def atomic_local_file(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; renamed onto ``target`` when the block ends
    without an error, removed when it raises.

    The temporary file is created empty with :data:`NEW_FILE_MODE` so the kernel applies the
    process umask (``tempfile.mkstemp`` would make every lake file 0600, unreadable to the other
    users of a shared volume); writers that open it by name keep that mode.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), NEW_FILE_MODE))
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write so that a reader sees the old or the new content, never a half-written file.

    Locally: a temporary file in the same directory (mode per the umask), fsync, then os.replace.
    On S3 an object becomes visible only when its upload completes, so one PUT is already atomic
    per object; publishers order their writes (data, then manifest, then pointer) to keep sets
    consistent.
    """
    if is_s3(uri):
        def put() -> None:
            fs, path = filesystem(uri)
            with fs.open_output_stream(path) as out:
                out.write(data)

        with_retries("write", uri, put)
        return
    with atomic_local_file(uri) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(uri: str, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def delete_dir(uri: str) -> None:
    """Remove a directory tree if it exists (used to overwrite one run's outputs)."""

    def delete() -> None:
        fs, path = filesystem(uri)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)

    with_retries("delete", uri, delete)


def list_names(uri: str) -> list[str]:
    """Names directly under a local or s3:// directory, sorted ([] when it does not exist)."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(info.base_name for info in infos)


def make_dirs(uri: str) -> None:
    def create() -> None:
        fs, path = filesystem(uri)
        fs.create_dir(path, recursive=True)

    with_retries("mkdir", uri, create)
