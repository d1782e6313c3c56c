"""The plan store's layout and integrity rules: attempts, content hashes and the LATEST pointer.

A plan is written once per *attempt* and never rewritten after it is published:

    lake/plans/plan_id=<id>/attempt=<n>/{plan.parquet, resource_pools.parquet, manifest.json}
    lake/plans/LATEST                      one line: plan_id=<id>/attempt=<n>

The data files are written first, then ``manifest.json`` — which carries the sha256 and size of
each data file — so an attempt without a manifest is incomplete and is never read. A re-run of
the same interval (an Airflow retry, a backfill, an operator) writes attempt n+1 beside the
published one; ``LATEST`` moves only to an attempt whose hashes verify, as the last write.

Readers (the IRC, ``iac render``, the CLI) verify the hashes when they load a plan and raise
:class:`PlanIntegrityError` (a ``ValueError``) naming the file and what to do.

Stdlib + ``pipeline.common.storage`` (stdlib + pyarrow) only: the IRC imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.common import storage

PLAN_FILE = "plan.parquet"
POOLS_FILE = "resource_pools.parquet"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
HASHED_FILES = (PLAN_FILE, POOLS_FILE)  # what the IRC and `iac render` read besides the manifest
ATTEMPT_PREFIX = "attempt="
PLAN_PREFIX = "plan_id="
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
POINTER_PATTERN = re.compile(rf"^{PLAN_PREFIX}({_ID})/{ATTEMPT_PREFIX}([1-9][0-9]{{0,8}})$")
REPAIR_HINT = ("re-run the hour that made it (peerscale run --interval-end <its interval end>): the run writes a new "
               "attempt and moves LATEST to it; the published attempts are never rewritten")


class PlanIntegrityError(ValueError):
    """A plan's files do not match the hashes in its manifest, or it carries none: never serve from it."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(data: bytes) -> dict[str, Any]:
    """What a manifest records of one data file: its sha256 and its size in bytes."""
    return {"sha256": sha256_hex(data), "bytes": len(data)}


def plan_root(lake_root: str, plan_id: str) -> str:
    return storage.join(str(lake_root), "plans", f"{PLAN_PREFIX}{plan_id}")


def attempt_dir(lake_root: str, plan_id: str, attempt: int) -> str:
    return storage.join(plan_root(lake_root, plan_id), f"{ATTEMPT_PREFIX}{attempt}")


def latest_pointer(lake_root: str) -> str:
    return storage.join(str(lake_root), "plans", LATEST_FILE)


def pointer_text(plan_id: str, attempt: int) -> str:
    """LATEST's content: the published attempt's directory relative to lake/plans/."""
    return f"{PLAN_PREFIX}{plan_id}/{ATTEMPT_PREFIX}{attempt}\n"


def parse_pointer(text: str) -> tuple[str, int]:
    """(plan_id, attempt) from LATEST's text; PlanIntegrityError when it names no attempt."""
    match = POINTER_PATTERN.match(text.strip())
    if match is None:
        raise PlanIntegrityError(
            f"plans/{LATEST_FILE} holds {text.strip()[:120]!r}, not 'plan_id=<id>/attempt=<n>': {REPAIR_HINT}")
    return match.group(1), int(match.group(2))


def attempts(lake_root: str, plan_id: str) -> list[int]:
    """The attempt numbers present for `plan_id`, ascending (complete or not)."""
    found = []
    for name in storage.list_names(plan_root(lake_root, plan_id)):
        number = name[len(ATTEMPT_PREFIX):]
        if name.startswith(ATTEMPT_PREFIX) and number.isdigit() and int(number) > 0:
            found.append(int(number))
    return sorted(found)


def plan_ids(lake_root: str) -> list[str]:
    """Plan ids with a directory under lake/plans/, ascending (plan-<interval token> sorts by time)."""
    names = storage.list_names(storage.join(str(lake_root), "plans"))
    return [name[len(PLAN_PREFIX):] for name in names if name.startswith(PLAN_PREFIX)]


def verify_files(manifest: Mapping[str, Any], read: Callable[[str], bytes], where: str,
                 names: tuple[str, ...] = HASHED_FILES) -> dict[str, bytes]:
    """Read every hashed file through `read(name)` and check it against the manifest; returns the bytes
    (so callers parse exactly what was verified). Raises PlanIntegrityError naming the first mismatch."""
    files = manifest.get("files")
    if not isinstance(files, Mapping):
        raise PlanIntegrityError(f"{where}: manifest.json carries no content hashes ('files'), so the plan cannot be "
                                 f"verified (written by an older peerscale, or by hand): {REPAIR_HINT}")
    out: dict[str, bytes] = {}
    for name in names:
        entry = files.get(name)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("sha256"), str):
            raise PlanIntegrityError(f"{where}: manifest.json has no sha256 for {name}: {REPAIR_HINT}")
        data = read(name)
        digest = sha256_hex(data)
        if digest != entry["sha256"] or (entry.get("bytes") is not None and entry.get("bytes") != len(data)):
            raise PlanIntegrityError(
                f"{where}: {name} does not match its manifest (sha256 {digest[:16]}…, {len(data)} bytes; manifest says "
                f"{str(entry['sha256'])[:16]}…, {entry.get('bytes')} bytes): the file was changed or torn after the plan "
                f"was written; {REPAIR_HINT}")
        out[name] = data
    return out


def read_manifest(lake_root: str, plan_id: str, attempt: int) -> dict[str, Any]:
    """One attempt's manifest (FileNotFoundError when the attempt is incomplete: no manifest yet)."""
    where = f"plan {plan_id} attempt {attempt}"
    raw = storage.read_bytes(storage.join(attempt_dir(lake_root, plan_id, attempt), MANIFEST_FILE))
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanIntegrityError(f"{where}: manifest.json is not valid JSON ({exc}): {REPAIR_HINT}") from exc
    if not isinstance(manifest, dict):
        raise PlanIntegrityError(f"{where}: manifest.json is not a JSON object: {REPAIR_HINT}")
    if manifest.get("plan_id") != plan_id or manifest.get("attempt") != attempt:
        raise PlanIntegrityError(f"{where}: manifest.json names plan {manifest.get('plan_id')!r} attempt "
                                 f"{manifest.get('attempt')!r}: {REPAIR_HINT}")
    return manifest


def read_attempt(lake_root: str, plan_id: str, attempt: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, verified file bytes) of one attempt."""
    folder = attempt_dir(lake_root, plan_id, attempt)
    manifest = read_manifest(lake_root, plan_id, attempt)
    return manifest, verify_files(manifest, lambda name: storage.read_bytes(storage.join(folder, name)),
                                  f"plan {plan_id} attempt {attempt}")


def resolve_attempt(lake_root: str, plan_id: str, *, published: bool = True) -> int:
    """The attempt a reader of `plan_id` means: the newest published one (`published`), else the newest
    complete one (what render and publish act on right after the plan stage). FileNotFoundError if none."""
    for attempt in reversed(attempts(lake_root, plan_id)):
        try:
            manifest = read_manifest(lake_root, plan_id, attempt)
        except (FileNotFoundError, PlanIntegrityError):
            continue
        if not published or manifest.get("status") == "published":
            return attempt
    state = "published" if published else "complete"
    raise FileNotFoundError(f"plan {plan_id!r} has no {state} attempt under {plan_root(lake_root, plan_id)}")


def default_attempt(lake_root: str, plan_id: str) -> int:
    """What a reader naming only `plan_id` gets: its newest published attempt, else (between the plan
    stage and publish) its newest complete one. FileNotFoundError naming the path when there is none."""
    found = attempts(lake_root, plan_id)
    if not found:
        raise FileNotFoundError(f"plan {plan_id!r} not found at {plan_root(lake_root, plan_id)}")
    try:
        return resolve_attempt(lake_root, plan_id)
    except FileNotFoundError:
        pass
    try:
        return resolve_attempt(lake_root, plan_id, published=False)
    except FileNotFoundError:
        read_manifest(lake_root, plan_id, found[-1])  # raises what is wrong with the newest attempt
        raise


def read_latest(lake_root: str) -> tuple[str, int]:
    """(plan_id, attempt) LATEST names (FileNotFoundError when absent, PlanIntegrityError when garbled)."""
    try:
        text = storage.read_text(latest_pointer(lake_root))
    except UnicodeDecodeError as exc:
        raise PlanIntegrityError(f"plans/{LATEST_FILE} is not text: {REPAIR_HINT}") from exc
    return parse_pointer(text)


def _claim_local(lake_root: str, plan_id: str, first: int) -> int:
    """Create the attempt directory exclusively, so two concurrent runs never share an attempt."""
    attempt = first
    while True:
        path = attempt_dir(lake_root, plan_id, attempt)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path)
            return attempt
        except FileExistsError:
            attempt += 1


def write_attempt(lake_root: str, plan_id: str, files: Mapping[str, bytes], manifest: Mapping[str, Any]) -> int:
    """Write a new attempt of `plan_id`: its data files, then its manifest (status `planned`, with the
    files' hashes) last. Returns the attempt number. Nothing already written is touched."""
    missing = [name for name in HASHED_FILES if name not in files]
    if missing:
        raise ValueError(f"a plan attempt needs {list(HASHED_FILES)}; {missing} missing")
    first = (attempts(lake_root, plan_id) or [0])[-1] + 1
    # S3 has no exclusive create: two writers racing for one attempt number mix files, which the hashes catch.
    attempt = first if storage.is_s3(lake_root) else _claim_local(str(lake_root), plan_id, first)
    folder = attempt_dir(lake_root, plan_id, attempt)
    for name, data in sorted(files.items()):
        storage.write_bytes_atomic(storage.join(folder, name), data)
    body = {**manifest, "plan_id": plan_id, "attempt": attempt, "status": "planned",
            "files": {name: file_entry(data) for name, data in sorted(files.items())}}
    write_manifest(folder, body)
    return attempt


def write_manifest(folder: str, manifest: Mapping[str, Any]) -> None:
    storage.write_text_atomic(storage.join(folder, MANIFEST_FILE),
                              json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
