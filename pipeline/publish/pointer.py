"""Publish: mark a plan as the one the IRC serves from, atomically.

The plan's files are already in place; publishing rewrites its manifest with status
`published` and then replaces the `LATEST` pointer — last, so a reader that follows the
pointer always finds a complete plan.

The pointer only moves forward in time: publishing an older interval's plan (a backfill) makes
that plan complete and inspectable, but the live pointer keeps the newest plan.
"""

from __future__ import annotations

from pipeline.common import lake, storage
from pipeline.common.config import Settings

REQUIRED_FILES = ("plan.parquet", "resource_pools.parquet", "manifest.json")


def publish(plan_id: str, settings: Settings, artifacts: dict[str, str] | None = None) -> str:
    """Publish `plan_id`; returns the pointer's path. Refuses a plan with missing files."""
    out_dir = lake.plan_dir(settings.lake_root, plan_id)
    missing = [name for name in REQUIRED_FILES if not storage.exists(storage.join(out_dir, name))]
    if missing:
        raise FileNotFoundError(f"cannot publish {plan_id}: {out_dir} lacks {missing}; re-run the plan stage")
    manifest_path = storage.join(out_dir, "manifest.json")
    manifest = lake.read_json(manifest_path)
    manifest["status"] = "published"
    manifest["artifacts"] = dict(sorted((artifacts or {}).items()))
    lake.write_json_atomic(manifest_path, manifest)
    pointer = lake.latest_pointer(settings.lake_root)
    current = _current_valid_from(settings)
    if current is None or manifest["valid_from"] >= current:
        storage.write_text_atomic(pointer, plan_id + "\n")
    return pointer


def _current_valid_from(settings: Settings) -> str | None:
    """valid_from of the plan LATEST points at, or None when there is none (or it is unreadable)."""
    pointer = lake.latest_pointer(settings.lake_root)
    if not storage.exists(pointer):
        return None
    try:
        current_id = storage.read_text(pointer).strip()
        return lake.read_json(storage.join(lake.plan_dir(settings.lake_root, current_id), "manifest.json"))["valid_from"]
    except (OSError, ValueError, KeyError):
        return None  # a broken pointer is replaced by any complete plan
