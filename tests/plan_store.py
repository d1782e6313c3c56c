"""Test helper: write a plan through the real attempt + publish code path (hashes, manifest, LATEST).

Every test that needs a published plan with hand-made rows goes through `write_plan`, so its plans
carry content hashes exactly as the planner's do; `attempt_path` finds a published file to damage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import plan_files, storage
from pipeline.common.schemas import RESOURCE_POOLS
from pipeline.publish.pointer import publish_attempt


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def write_plan(lake_root: str | Path, plan_id: str, plan: pa.Table | bytes, manifest: dict[str, Any], *,
               pools: pa.Table | bytes | None = None, latest: bool = True,
               pointer: Literal["forward", "always", "never"] = "always", publish: bool | None = None) -> int:
    """A new attempt of `plan_id` holding `plan` (and `pools`, default none) with `manifest`'s keys; published
    (`publish`, default: unless the manifest's status says otherwise) and LATEST moved per `pointer` (never when
    `latest` is False). An unpublished attempt with `latest` gets LATEST written directly (a hostile pointer).
    Returns the attempt."""
    root = str(lake_root)
    files = {
        plan_files.PLAN_FILE: plan if isinstance(plan, bytes) else parquet_bytes(plan),
        plan_files.POOLS_FILE: pools if isinstance(pools, bytes) else parquet_bytes(
            pools if pools is not None else RESOURCE_POOLS.empty_table()),
    }
    if publish is None:
        publish = manifest.get("status", "published") == "published"
    body = {k: v for k, v in manifest.items() if k not in ("status", "attempt", "files")}
    attempt = plan_files.write_attempt(root, plan_id, files, body)
    if publish:
        publish_attempt(root, plan_id, attempt, pointer=pointer if latest else "never")
    else:
        folder = plan_files.attempt_dir(root, plan_id, attempt)
        if "status" in manifest:
            written = plan_files.read_manifest(root, plan_id, attempt)
            plan_files.write_manifest(folder, {**written, "status": manifest["status"]})
        if latest:
            storage.write_text_atomic(plan_files.latest_pointer(root), plan_files.pointer_text(plan_id, attempt))
    return attempt


def attempt_path(lake_root: str | Path, plan_id: str, name: str = "", attempt: int | None = None) -> Path:
    """The local path of a file of `plan_id`'s newest published attempt (or of `attempt`)."""
    root = str(lake_root)
    number = plan_files.resolve_attempt(root, plan_id) if attempt is None else attempt
    folder = Path(plan_files.attempt_dir(root, plan_id, number))
    return folder / name if name else folder
