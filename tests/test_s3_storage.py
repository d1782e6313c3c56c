"""pipeline.common.storage against a real S3 API on loopback (moto server mode): round trips, the
lake's partitioned writes, permanent errors with the key in the message, transient errors retried."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from pipeline.common import lake, storage
from pipeline.common.intervals import DataInterval
from tests.moto_server import FlakyProxy, MotoServer, aws_env, moto_server, s3_bucket  # noqa: F401


def test_round_trip_and_missing_key(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/lake/plans/LATEST"
    assert not storage.exists(uri)
    storage.write_text_atomic(uri, "plan-1\n")
    assert storage.exists(uri)
    assert storage.read_text(uri) == "plan-1\n"
    storage.write_text_atomic(uri, "plan-2\n")  # overwrite: a reader sees the old or the new
    assert storage.read_text(uri) == "plan-2\n"

    missing = f"s3://{s3_bucket}/lake/plans/plan_id=nope/manifest.json"
    with pytest.raises(FileNotFoundError) as excinfo:
        storage.read_bytes(missing)
    assert "plan_id=nope/manifest.json" in str(excinfo.value)


def test_partitioned_lake_writes_replace_exactly_their_hours(s3_bucket: str) -> None:
    base = f"s3://{s3_bucket}/lake/raw/demo"
    schema = pa.schema([("ts", pa.timestamp("us", tz="UTC")), ("v", pa.int64())])
    first = DataInterval.between("2026-01-01T00:00", "2026-01-01T02:00")
    table = pa.table(
        {"ts": pa.array([first.start, first.start.replace(hour=1)], schema.field("ts").type), "v": [1, 2]}
    )
    assert lake.write_hour_partitions(table, base, "ts", first) == 2
    # Re-running hour 01 with different rows replaces only that partition.
    second = DataInterval.between("2026-01-01T01:00", "2026-01-01T02:00")
    redo = pa.table({"ts": pa.array([second.start], schema.field("ts").type), "v": [20]})
    lake.write_hour_partitions(redo, base, "ts", second)
    back = lake.read_partitioned(base).sort_by("ts")
    assert back.column("v").to_pylist() == [1, 20]
    assert back.column("hour").to_pylist() == ["00", "01"]


def test_missing_bucket_is_a_permanent_error_naming_the_key(aws_env: MotoServer) -> None:
    uri = "s3://peerscale-no-such-bucket/lake/plans/plan_id=p1/manifest.json"
    with pytest.raises(storage.StoragePermanentError) as excinfo:
        storage.write_text_atomic(uri, "{}")
    message = str(excinfo.value)
    assert uri in message
    assert "not retried" in message
    assert excinfo.value.uri == uri


def test_permanent_error_is_not_retried(aws_env: MotoServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.common.storage")
    with pytest.raises(storage.StoragePermanentError):
        lake.write_json_atomic("s3://peerscale-no-such-bucket/x.json", {"a": 1})
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_throttling_and_5xx_are_retried_with_backoff(
    s3_bucket: str, aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy in front of the server answers 503 SlowDown to the first connections."""
    uri = f"s3://{s3_bucket}/lake/plans/LATEST"
    storage.write_text_atomic(uri, "plan-7\n")
    caplog.set_level(logging.WARNING, logger="pipeline.common.storage")
    # One SDK attempt per call, so every 503 reaches peerscale's own retry loop.
    monkeypatch.setenv(storage.SDK_ATTEMPTS_ENV, "1")
    with FlakyProxy(aws_env.port, failures=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        assert storage.read_text(uri) == "plan-7\n"
        assert proxy.failed == 3
        assert proxy.relayed >= 1
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3
    assert all(uri in message for message in retries)


def test_a_store_that_stays_down_fails_with_the_key(
    s3_bucket: str, aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(storage.SDK_ATTEMPTS_ENV, "1")
    monkeypatch.setenv(storage.MAX_ATTEMPTS_ENV, "3")
    uri = f"s3://{s3_bucket}/lake/plans/LATEST"
    with FlakyProxy(aws_env.port, failures=100) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with pytest.raises(storage.StorageTransientError) as excinfo:
            storage.read_text(uri)
    assert proxy.failed == 3
    assert uri in str(excinfo.value) and "after 3 attempts" in str(excinfo.value)


def test_a_server_restart_is_ridden_out(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused while the server restarts: retried until it is back."""
    import threading

    own = MotoServer().start()  # moto keeps its state in the process: the bucket is there too
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", own.endpoint)
        monkeypatch.setenv(storage.SDK_ATTEMPTS_ENV, "1")
        monkeypatch.setenv(storage.MAX_ATTEMPTS_ENV, "8")
        uri = f"s3://{s3_bucket}/lake/raw/x/part-0.bin"
        storage.write_bytes_atomic(uri, b"payload")
        own.stop()
        caplog.set_level(logging.WARNING, logger="pipeline.common.storage")
        restart = threading.Timer(0.6, own.start)
        restart.start()
        try:
            assert storage.read_bytes(uri) == b"payload"
        finally:
            restart.join()
        assert [r for r in caplog.records if "retrying" in r.getMessage()]
    finally:
        own.stop()


@pytest.mark.parametrize(
    "text, transient",
    [
        ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7, Couldn't connect to server", True),
        ("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate.", True),
        ("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: No response body.", True),
        ("AWS Error UNKNOWN (HTTP status 500) during GetObject operation", True),
        ("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket does not exist", False),
        ("AWS Error ACCESS_DENIED during GetObject operation: Access Denied", False),
        ("AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body.", False),
    ],
)
def test_error_classification(text: str, transient: bool) -> None:
    assert storage.is_transient(OSError(text)) is transient


@pytest.fixture()
def umask():
    """Run a test under a chosen process umask, restoring the previous one after."""
    import os

    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_local_writes_respect_the_umask(tmp_path, umask, mask: int, mode: int) -> None:
    """Lake, plan, forecast and report files all go through write_bytes_atomic: they get the mode any
    tool would give a new file (mkstemp made them all 0600), and a rewrite keeps atomicity."""
    import stat

    umask(mask)
    targets = {
        "json": tmp_path / "lake" / "plans" / "plan_id=p" / "manifest.json",
        "parquet": tmp_path / "lake" / "plans" / "plan_id=p" / "plan.parquet",
        "text": tmp_path / "lake" / "plans" / "LATEST",
    }
    lake.write_json_atomic(str(targets["json"]), {"a": 1})
    lake.write_parquet_atomic(pa.table({"v": [1]}), str(targets["parquet"]))
    storage.write_text_atomic(str(targets["text"]), "p\n")
    storage.write_text_atomic(str(targets["text"]), "q\n")  # a rewrite: same mode, new content
    for path in targets.values():
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path.name, oct(path.stat().st_mode))
    assert targets["text"].read_text() == "q\n"
    assert sorted(p.name for p in targets["text"].parent.iterdir()) == ["LATEST", "plan_id=p"]  # no temporary file left


def test_a_failed_local_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    target = tmp_path / "LATEST"
    storage.write_text_atomic(str(target), "old\n")
    with pytest.raises(RuntimeError), storage.atomic_local_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["LATEST"]


def test_a_missing_bucket_is_named(aws_env: MotoServer, s3_bucket: str) -> None:
    storage.check_bucket(f"s3://{s3_bucket}/lake")  # exists: no error
    storage.check_bucket("/a/local/path")
    with pytest.raises(storage.StoragePermanentError, match="bucket s3://peerscale-no-such-bucket does not exist"):
        storage.check_bucket("s3://peerscale-no-such-bucket/lake")
