"""Filesystem access for local paths and s3:// URIs, with atomic publishing.

pyarrow.fs gives one API over both; the S3 endpoint comes from AWS_ENDPOINT_URL (or
PEERSCALE_S3_ENDPOINT) so the same code runs against AWS or a loopback server.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local path or URI root."""
    root = str(root).rstrip("/")
    return "/".join([root, *[p.strip("/") for p in parts if p]])


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path for a local path or s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        endpoint = os.environ.get("PEERSCALE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, object] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        fs = pafs.S3FileSystem(**kwargs)
        return fs, uri[len("s3://"):]
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write so that a reader sees the old or the new content, never a half-written file.

    Locally: a temporary file in the same directory, fsync, then os.replace. On S3 a single
    PUT is already atomic per object.
    """
    if is_s3(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{uuid.uuid4().hex[:6]}.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(uri: str, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def delete_dir(uri: str) -> None:
    """Remove a directory tree if it exists (used to overwrite one run's outputs)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def make_dirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
