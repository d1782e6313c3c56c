"""Corpus: the CLI against a lake on S3 (moto's server on loopback) when the store misbehaves — a
missing bucket, no credentials, a transient outage (retried), a store that stays down, corrupt
objects. Each case asserts the exit code, the one-line error, and that no object was written or lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common import storage
from pipeline.common.config import REPO_ROOT
from tests.conftest import SAMPLES
from tests.corpus.test_cli_lake_faults import one_line_error, publish_plan, snapshot
from tests.moto_server import REGION, FlakyProxy, MotoServer, aws_env, free_port, moto_server, s3_bucket  # noqa: F401

runner = CliRunner()
MISSING = "peerscale-corpus-no-such-bucket"


def objects(bucket: str) -> dict[str, bytes]:
    """Every object of `bucket` and its bytes."""
    s3 = boto3.client("s3", region_name=REGION)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in sorted(keys)}


@pytest.fixture()
def s3_lake(s3_bucket: str, clean_env: None) -> tuple[str, str]:
    root = f"s3://{s3_bucket}/lake"
    publish_plan(root, "plan-a")
    return s3_bucket, root


def _put(bucket: str, key: str, data: bytes) -> None:
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key=key, Body=data)


def test_lake_in_a_missing_bucket(aws_env: MotoServer, clean_env: None) -> None:
    """A key in a missing bucket reads as "not written yet": the error must name the bucket instead."""
    for args in (["plan", "show"], ["plan", "show", "--plan-id", "plan-a"], ["forecast", "summary"], ["report"]):
        line = one_line_error(runner.invoke(app, [*args, "--lake", f"s3://{MISSING}/lake"]), 2)
        assert f"bucket s3://{MISSING} does not exist (or these credentials cannot see it): check the lake or source URI" in line, line


def test_no_credentials(s3_lake: tuple[str, str], tmp_path: Path) -> None:
    """A fresh process (the AWS SDK keeps credentials it has seen for the life of a process). LATEST is
    written through boto3: moto lets anonymous requests read objects that carry no ACL (pyarrow's)."""
    bucket, root = s3_lake
    _put(bucket, "lake/plans/LATEST", b"plan_id=plan-a/attempt=1\n")
    before = objects(bucket)
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"), HOME=str(tmp_path),
               PYTHONPATH=str(REPO_ROOT), COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", "show", "--lake", root], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert "ACCESS_DENIED" in lines[0] and "check the bucket name, its region and the credentials' permissions" in lines[0]
    assert done.stdout == "" and objects(bucket) == before


def test_a_transient_outage_is_retried_and_the_command_succeeds(s3_lake: tuple[str, str], aws_env: MotoServer) -> None:
    _, root = s3_lake
    with FlakyProxy(aws_env.port, failures=2) as proxy:
        result = runner.invoke(app, ["plan", "show", "--lake", root], env={
            "AWS_ENDPOINT_URL": proxy.endpoint, storage.SDK_ATTEMPTS_ENV: "1", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "plan plan-a [published]" in result.stdout and proxy.failed == 2


def test_a_store_that_stays_down(s3_lake: tuple[str, str], aws_env: MotoServer) -> None:
    bucket, root = s3_lake
    before = objects(bucket)
    with FlakyProxy(aws_env.port, failures=1000) as proxy:
        result = runner.invoke(app, ["plan", "show", "--lake", root], env={
            "AWS_ENDPOINT_URL": proxy.endpoint, storage.SDK_ATTEMPTS_ENV: "1", storage.MAX_ATTEMPTS_ENV: "2"})
    line = one_line_error(result, 1)
    assert f"exists {root}/plans/LATEST failed after 2 attempts" in line, line
    assert line.endswith("the store is unreachable or throttling: run the same command again when it is back "
                         "(writes are atomic, so a re-run replaces whatever this one left)")
    assert objects(bucket) == before


def test_an_endpoint_nobody_listens_on(aws_env: MotoServer, clean_env: None) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["plan", "show", "--lake", "s3://any-bucket/lake"], env={
        "AWS_ENDPOINT_URL": endpoint, storage.SDK_ATTEMPTS_ENV: "1", storage.MAX_ATTEMPTS_ENV: "1"})
    line = one_line_error(result, 1)
    assert "failed after 1 attempts" in line and "run the same command again when it is back" in line, line


@pytest.mark.parametrize("key, data, expected", [
    ("lake/plans/LATEST", b"\x89PNG\r\n\x1a\n", "/plans/LATEST is corrupt (not text)"),
    ("lake/plans/LATEST", b"plan-a; rm -rf /\n", "it holds 'plan-a; rm -rf /', not plan_id=<id>/attempt=<n>"),
    ("lake/plans/plan_id=plan-a/attempt=1/plan.parquet", b"PAR1\x00\x00PAR1", "plan.parquet does not match its manifest"),
    ("lake/plans/plan_id=plan-a/attempt=1/manifest.json", b'{"status": "pub', "manifest.json is not valid JSON (Unterminated string"),
])
def test_corrupt_objects(key: str, data: bytes, expected: str, s3_lake: tuple[str, str]) -> None:
    bucket, root = s3_lake
    _put(bucket, key, data)
    before = objects(bucket)
    line = one_line_error(runner.invoke(app, ["plan", "show", "--lake", root]), 1)
    assert expected in line, line
    assert objects(bucket) == before


def test_unknown_plan_id_on_s3(s3_lake: tuple[str, str], tmp_path: Path) -> None:
    bucket, root = s3_lake
    before = objects(bucket)
    for args in (["plan", "show", "--plan-id", "plan-nope"], ["iac", "render", "plan-nope", "--build", str(tmp_path / "build")]):
        line = one_line_error(runner.invoke(app, [*args, "--lake", root]), 2)
        assert f"plan 'plan-nope' not found at {root}/plans/plan_id=plan-nope" in line, line
    assert objects(bucket) == before and not (tmp_path / "build" / "iac" / "plan-nope").exists()


def test_ingest_into_a_missing_bucket_fails_cleanly_and_leaves_the_source(aws_env: MotoServer, clean_env: None, tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "source"
    shutil.copytree(SAMPLES, source)
    before = snapshot(source)
    result = runner.invoke(app, ["ingest", "--from", "2026-01-05T00:00", "--to", "2026-01-05T01:00", "--source", str(source),
                                 "--lake", f"s3://{MISSING}/lake"])
    line = one_line_error(result, 2)
    assert f"s3://{MISSING}/lake/" in line and "not retried" in line, line
    assert snapshot(source) == before
