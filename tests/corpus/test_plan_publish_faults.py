"""Corpus: faults in writing and publishing plans, and damaged plans in the lake.

The systematic test kills the run (by a hook on the write path, not by timing) at every write point
of the plan → IaC → report → publish → monitor part of an hourly run — the part that writes under
lake/plans/ — and asserts after each kill that LATEST names a complete plan whose hashes verify
(the previous one, or the new one once its pointer was written), that the published attempt was not
touched, and that re-running the hour yields the same rows (a new attempt, the same sha256).

The named cases damage one thing each (a plan file, a manifest, the pointer, a pools snapshot, an S3
object) and assert the error, the number of rows still served, and what LATEST names afterwards.
Before plans were immutable, a re-run rewrote the live plan in place and nothing checked content.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.common import plan_files, storage
from pipeline.common.intervals import DataInterval
from pipeline.irc.plan_source import PlanUnverified, load_latest_plan, load_plan
from pipeline.plan import read_plan
from pipeline.run import RunSummary, plan_and_publish
from tests.conftest import RUN_END, settings_for
from tests.moto_server import aws_env, moto_server, s3_bucket  # noqa: F401

PLAN_ID = "plan-20260129T0000Z"
FORECAST_RUN = "hourly-20260129T0000Z"


class Killed(BaseException):
    """The simulated kill -9: not an Exception, so no handler in the pipeline can swallow it."""


class WritePoints:
    """Counts the commit points under `root` (renames, directory creations, deletions: every call that
    changes the tree) and raises Killed *instead of* the `fail_at`-th one, as if the process died just
    before it."""

    def __init__(self, root: Path, fail_at: int | None = None) -> None:
        self.root, self.fail_at = str(root), fail_at
        self.seen: list[tuple[str, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_replace, real_mkdir, real_delete = os.replace, os.mkdir, storage.delete_dir

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self.point("replace", dst)
            real_replace(src, dst, *args, **kwargs)

        def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if not os.path.exists(path) and os.path.isdir(os.path.dirname(os.fspath(path))):
                self.point("mkdir", path)  # (makedirs' probes of existing or parentless paths change nothing)
            real_mkdir(path, *args, **kwargs)

        def delete_dir(uri: str) -> None:
            self.point("delete", uri)
            real_delete(uri)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(storage, "delete_dir", delete_dir)

    def point(self, op: str, path: Any) -> None:
        text = os.fspath(path)
        if not text.startswith(self.root):
            return
        self.seen.append((op, text[len(self.root):]))
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            raise Killed(f"killed before write point {self.fail_at}: {op} {text}")


def _copy(published_root: Path, dest: Path) -> Path:
    """A private copy of the published lake and build, hard-linked (every writer replaces files)."""
    for name in ("lake", "build"):
        if (published_root / name).exists():
            shutil.copytree(published_root / name, dest / name, copy_function=os.link)
    return dest


def _tail(root: Path) -> RunSummary:
    summary = RunSummary(interval="", forecast={"run_id": FORECAST_RUN})
    return plan_and_publish(DataInterval.ending_at(RUN_END), settings_for(root), summary)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_latest_verified(lake: Path) -> tuple[str, int]:
    """LATEST names a published attempt whose hashes verify and which the IRC loads; returns it."""
    plan_id, attempt = plan_files.read_latest(str(lake))
    manifest, _ = plan_files.read_attempt(str(lake), plan_id, attempt)
    assert manifest["status"] == "published"
    plan = load_latest_plan(str(lake))
    assert (plan.plan_id, plan.attempt) == (plan_id, attempt) and plan.windows
    return plan_id, attempt


@pytest.fixture(scope="module")
def reference(published_root: Path) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """The published plan's rows and the bytes of its attempt directory."""
    rows, _ = read_plan(settings_for(published_root), PLAN_ID)
    return rows, _files(published_root / "lake" / "plans" / f"plan_id={PLAN_ID}" / "attempt=1")


@pytest.mark.long
def test_a_kill_at_every_write_point_of_the_run_leaves_latest_verified(
        published_root: Path, reference: tuple[pd.DataFrame, dict[str, bytes]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows, published_files = reference
    counting = WritePoints(_copy(published_root, tmp_path / "count"))
    with monkeypatch.context() as patch:
        counting.install(patch)
        _tail(tmp_path / "count")
    points = counting.seen
    plan_writes = [i for i, (_, path) in enumerate(points, 1) if "/lake/plans/" in path]
    latest_write = max(i for i, (_, path) in enumerate(points, 1) if path.endswith("/lake/plans/LATEST"))
    assert latest_write == plan_writes[-1]  # the pointer is the last write under lake/plans/
    assert len(points) >= 10, points

    for k in range(1, len(points) + 1):
        root = _copy(published_root, tmp_path / f"kill-{k}")
        lake = root / "lake"
        killer = WritePoints(root, fail_at=k)
        with monkeypatch.context() as patch:
            killer.install(patch)
            with pytest.raises(Killed):
                _tail(root)
        plan_id, attempt = assert_latest_verified(lake)
        assert (plan_id, attempt) == ((PLAN_ID, 2) if k > latest_write else (PLAN_ID, 1)), (k, points[k - 1])
        assert _files(lake / "plans" / f"plan_id={PLAN_ID}" / "attempt=1") == published_files  # never touched

        summary = _tail(root)  # the re-run: a new attempt with the same rows
        assert summary.plan["attempt"] > 1
        assert assert_latest_verified(lake) == (PLAN_ID, summary.plan["attempt"])
        again, _ = read_plan(settings_for(root), PLAN_ID)
        pd.testing.assert_frame_equal(again, rows)
        assert summary.plan["plan_sha256"] == plan_files.sha256_hex(published_files["plan.parquet"])
        shutil.rmtree(root)


@pytest.fixture()
def lake_copy(published_root: Path, tmp_path: Path) -> Iterator[Path]:
    yield _copy(published_root, tmp_path) / "lake"


def _attempt(lake: Path, attempt: int = 1) -> Path:
    return lake / "plans" / f"plan_id={PLAN_ID}" / f"attempt={attempt}"


def test_a_rerun_never_touches_the_published_attempt_and_moves_latest_last(
        published_root: Path, reference: tuple[pd.DataFrame, dict[str, bytes]], lake_copy: Path) -> None:
    before = _files(_attempt(lake_copy))
    summary = _tail(lake_copy.parent)
    assert summary.plan["attempt"] == 2 and _files(_attempt(lake_copy)) == before
    assert plan_files.read_latest(str(lake_copy)) == (PLAN_ID, 2)
    assert _files(_attempt(lake_copy, 2))["plan.parquet"] == before["plan.parquet"]  # same inputs, same bytes


def test_a_changed_inventory_mid_rerun_never_mixes_rows_and_pools(lake_copy: Path) -> None:
    """The issue's case: the pools change, the re-run dies while writing plan.parquet. LATEST keeps the
    old plan with its own pools snapshot, both verified; the finished re-run serves new rows with new pools."""
    old = load_latest_plan(str(lake_copy))
    pools = sorted((lake_copy / "raw" / "resource_pools").rglob("*.parquet"))[-1]
    frame = pd.read_parquet(pools)
    frame["available_quantity"] = frame["available_quantity"] / 2
    pools.unlink()
    frame.to_parquet(pools, index=False)
    real_write = storage.write_bytes_atomic

    def dies_writing_the_plan(uri: str, data: bytes) -> None:
        if uri.endswith("/attempt=2/plan.parquet"):
            raise Killed(f"killed while writing {uri}")
        real_write(uri, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "write_bytes_atomic", dies_writing_the_plan)
        with pytest.raises(Killed):
            _tail(lake_copy.parent)
    served = load_latest_plan(str(lake_copy))
    assert (served.attempt, dict(served.pools)) == (1, dict(old.pools))
    _tail(lake_copy.parent)
    new = load_latest_plan(str(lake_copy))
    assert new.attempt == 3 and new.pools != old.pools  # attempt 2 stays an incomplete directory, never read


def _tamper(path: Path, data: bytes | None = None) -> None:
    body = path.read_bytes()
    path.unlink()
    path.write_bytes(data if data is not None else body[:-8] + bytes(8))


@pytest.mark.parametrize("name", ["plan.parquet", "resource_pools.parquet"])
def test_publish_refuses_an_attempt_whose_files_do_not_verify(name: str, lake_copy: Path) -> None:
    from pipeline.publish.pointer import publish

    summary_plan = _tail_plan_only(lake_copy)
    _tamper(_attempt(lake_copy, summary_plan) / name)
    with pytest.raises(plan_files.PlanIntegrityError, match=f"{name} does not match its manifest.*re-run the hour"):
        publish(PLAN_ID, settings_for(lake_copy.parent), attempt=summary_plan)
    assert plan_files.read_latest(str(lake_copy)) == (PLAN_ID, 1)
    assert assert_latest_verified(lake_copy) == (PLAN_ID, 1)


def _tail_plan_only(lake: Path) -> int:
    from pipeline.plan import build_plan

    return int(build_plan(DataInterval.ending_at(RUN_END), settings_for(lake.parent), FORECAST_RUN)["attempt"])


def test_publish_refuses_an_attempt_without_a_manifest(lake_copy: Path) -> None:
    from pipeline.publish.pointer import publish

    attempt = _tail_plan_only(lake_copy)
    (_attempt(lake_copy, attempt) / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError):
        publish(PLAN_ID, settings_for(lake_copy.parent), attempt=attempt)
    assert plan_files.read_latest(str(lake_copy)) == (PLAN_ID, 1)


@pytest.mark.parametrize("damage", ["plan-bytes", "pools-bytes", "status-planned", "hashes-removed", "manifest-gone"])
def test_the_irc_falls_back_to_the_newest_verified_plan(damage: str, lake_copy: Path) -> None:
    from pipeline.irc import Coordinator

    _tail(lake_copy.parent)  # attempt 2, LATEST on it; attempt 1 stays verified
    folder = _attempt(lake_copy, 2)
    manifest = folder / "manifest.json"
    if damage == "plan-bytes":
        _tamper(folder / "plan.parquet")
    elif damage == "pools-bytes":
        _tamper(folder / "resource_pools.parquet")
    elif damage == "status-planned":
        _tamper(manifest, manifest.read_bytes().replace(b'"status": "published"', b'"status": "planned"'))
    elif damage == "hashes-removed":
        _tamper(manifest, manifest.read_bytes().replace(b'"files"', b'"files_"'))
    else:
        manifest.unlink()
    with Coordinator(str(lake_copy), reload_interval_s=None, outcomes=False) as irc:
        assert irc.plan is not None and (irc.plan.plan_id, irc.plan.attempt) == (PLAN_ID, 1)
        assert "LATEST unusable" in (irc.plan_error or "")
        assert "peerscale_irc_plan_fallbacks_total 1" in irc.metrics_text()
        assert irc.plan.pools  # the pool check still has its snapshot
    if damage in ("plan-bytes", "pools-bytes", "hashes-removed"):
        with pytest.raises(PlanUnverified):
            load_plan(str(lake_copy), PLAN_ID, 2)


def test_every_plan_damaged_leaves_the_irc_on_demand_without_raising(lake_copy: Path) -> None:
    from pipeline.irc import Coordinator

    _tamper(_attempt(lake_copy) / "plan.parquet")
    _tamper(_attempt(lake_copy) / "resource_pools.parquet")
    with Coordinator(str(lake_copy), reload_interval_s=None, outcomes=False) as irc:
        assert irc.plan is None and "does not match its manifest" in (irc.plan_error or "")


def test_a_legacy_plan_without_hashes_is_refused_with_the_fix(lake_copy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    _tamper(_attempt(lake_copy) / "manifest.json",
            (_attempt(lake_copy) / "manifest.json").read_bytes().replace(b'"files"', b'"files_"'))
    before = _files(_attempt(lake_copy))
    result = CliRunner().invoke(app, ["iac", "render", PLAN_ID, "--lake", str(lake_copy), "--build", str(tmp_path / "b")])
    assert result.exit_code != 0
    assert "carries no content hashes" in result.output and "re-run the hour" in result.output
    assert not (tmp_path / "b" / "iac" / PLAN_ID).exists() and _files(_attempt(lake_copy)) == before


def test_cli_plan_show_refuses_a_tampered_plan(lake_copy: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    _tamper(_attempt(lake_copy) / "plan.parquet")
    result = CliRunner().invoke(app, ["plan", "show", "--lake", str(lake_copy)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "plan.parquet does not match its manifest" in result.stderr


def test_backfill_reruns_an_hour_whose_plan_no_longer_verifies(lake_copy: Path) -> None:
    from pipeline.common.intervals import parse_utc
    from pipeline.ops.backfill import is_done

    settings = settings_for(lake_copy.parent)
    assert is_done(parse_utc(RUN_END), settings)
    _tamper(_attempt(lake_copy) / "plan.parquet")
    assert not is_done(parse_utc(RUN_END), settings)


def test_an_older_plan_published_late_never_moves_latest_back(lake_copy: Path) -> None:
    from tests import plan_store

    rows, manifest = read_plan(settings_for(lake_copy.parent), PLAN_ID)
    older = {**manifest, "plan_id": "plan-20260128T0000Z",
             "valid_from": (pd.Timestamp(manifest["valid_from"]) - timedelta(days=1)).isoformat()}
    table = pa.Table.from_pandas(rows.assign(plan_id="plan-20260128T0000Z"), preserve_index=False)
    plan_store.write_plan(lake_copy, "plan-20260128T0000Z", table, older, pointer="forward")
    assert plan_files.read_latest(str(lake_copy)) == (PLAN_ID, 1)
    assert plan_files.resolve_attempt(str(lake_copy), "plan-20260128T0000Z") == 1  # published, inspectable


# -- S3 (moto's server on loopback): objects first, then the manifest, the pointer last ---------------

def _small_plan(plan_id: str, vcpu: float) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    from pipeline.common.schemas import PLAN, RESOURCE_POOLS
    from tests.test_iac import W0, W1, W2, _line_rows

    rows = _line_rows(W0, W1, "us-east-1", "m5.large", "on_demand", int(vcpu), plan_id=plan_id)
    rows += _line_rows(W1, W2, "us-east-1", "m5.large", "on_demand", int(vcpu), plan_id=plan_id)
    pools = pa.Table.from_pylist([{"region": "us-east-1", "resource_type": "vcpu", "available_quantity": vcpu * 10,
                                   "total_quantity": vcpu * 20}], schema=RESOURCE_POOLS)
    manifest = {"plan_id": plan_id, "created_at": W0.isoformat(), "valid_from": W0.isoformat(), "valid_to": W2.isoformat()}
    return pa.Table.from_pandas(pd.DataFrame(rows), schema=PLAN, preserve_index=False), pools, manifest


def _write_and_publish(root: str, plan_id: str, vcpu: float) -> int:
    from pipeline.publish.pointer import publish_attempt
    from tests.plan_store import parquet_bytes

    plan, pools, manifest = _small_plan(plan_id, vcpu)
    attempt = plan_files.write_attempt(root, plan_id, {plan_files.PLAN_FILE: parquet_bytes(plan),
                                                       plan_files.POOLS_FILE: parquet_bytes(pools)}, manifest)
    publish_attempt(root, plan_id, attempt)
    return attempt


@pytest.fixture()
def s3_root(s3_bucket: str, clean_env: None) -> str:
    root = f"s3://{s3_bucket}/lake"
    _write_and_publish(root, "plan-a", 2)
    return root


def test_s3_a_kill_at_every_object_write_leaves_latest_verified(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = storage.write_bytes_atomic
    seen: list[str] = []

    def counting(uri: str, data: bytes) -> None:
        seen.append(uri)
        real_write(uri, data)

    with monkeypatch.context() as patch:
        patch.setattr(storage, "write_bytes_atomic", counting)
        _write_and_publish(s3_root, "plan-b", 3)
    assert [u.rsplit("/", 1)[1] for u in seen] == ["plan.parquet", "resource_pools.parquet", "manifest.json",
                                                   "manifest.json", "LATEST"]
    expected_rows = load_latest_plan(s3_root).windows
    for k in range(1, len(seen) + 1):
        calls = 0

        def killing(uri: str, data: bytes, k: int = k) -> None:
            nonlocal calls
            calls += 1
            if calls == k:
                raise Killed(f"killed before object write {k}: {uri}")
            real_write(uri, data)

        with monkeypatch.context() as patch:
            patch.setattr(storage, "write_bytes_atomic", killing)
            with pytest.raises(Killed):
                _write_and_publish(s3_root, "plan-b", 3)
        plan = load_latest_plan(s3_root)  # verified; the last published attempt of plan-b (or plan-a)
        assert plan.plan_id == "plan-b" and plan.windows == expected_rows
        attempt = _write_and_publish(s3_root, "plan-b", 3)  # the re-run
        assert plan_files.read_latest(s3_root) == ("plan-b", attempt)
        assert load_latest_plan(s3_root).windows == expected_rows


def test_s3_a_tampered_object_is_refused_and_the_irc_falls_back(s3_root: str) -> None:
    import boto3

    from pipeline.irc import Coordinator
    from tests.moto_server import REGION

    attempt = _write_and_publish(s3_root, "plan-b", 3)
    bucket = s3_root[len("s3://"):].split("/", 1)[0]
    key = f"lake/plans/plan_id=plan-b/attempt={attempt}/plan.parquet"
    s3 = boto3.client("s3", region_name=REGION)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body[:-8] + bytes(8))
    with pytest.raises(PlanUnverified, match=r"plan\.parquet does not match its manifest"):
        load_latest_plan(s3_root)
    with Coordinator(s3_root, reload_interval_s=None, outcomes=False) as irc:
        assert irc.plan is not None and irc.plan.plan_id == "plan-a" and irc.plan.pools["us-east-1"]["vcpu"] == 20.0
