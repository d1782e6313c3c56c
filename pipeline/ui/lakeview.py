"""Where the analyst app finds things in the lake: plans and their manifests, pointers, forecast and
feature runs, alerts and backtests. Read-only; local directories or s3:// alike (pipeline.common.storage).

Published plan attempts are immutable (pipeline.common.plan_files), so the summary of a published
manifest is memoised in-process by (lake, plan, attempt): a derived copy of an immutable file, never a
store of the app's own — a restarted app rebuilds it from the lake.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.common import lake, plan_files, storage

TOKEN = re.compile(r"(\d{8}T\d{4}Z)")
PLAN_TOKEN = re.compile(r"^plan-(\d{8}T\d{4}Z)$")


def token_time(text: str) -> datetime | None:
    """The UTC time in an interval token (`20260129T0100Z`) found in `text`, else None."""
    match = TOKEN.search(text)
    return datetime.strptime(match.group(1), "%Y%m%dT%H%MZ").replace(tzinfo=UTC) if match else None


@dataclass(frozen=True)
class PlanRef:
    plan_id: str
    made_at: datetime | None  # the interval end the plan was made at (from its id), None for other ids


def plan_refs(root: str, start: datetime | None = None, end: datetime | None = None) -> list[PlanRef]:
    """Plans under lake/plans/ made in [start, end) (by the interval token of their id), oldest first."""
    refs = []
    for plan_id in plan_files.plan_ids(root):
        match = PLAN_TOKEN.match(plan_id)
        made = token_time(match.group(1)) if match else None
        if made is not None and ((start and made < start) or (end and made >= end)):
            continue
        refs.append(PlanRef(plan_id, made))
    return sorted(refs, key=lambda r: (r.made_at or datetime.min.replace(tzinfo=UTC), r.plan_id))


def pointer(root: str, name: str) -> str | None:
    """The plan id `plans/LATEST` or `plans/APPLIED` names (None when absent or unreadable)."""
    path = storage.join(root, "plans", name)
    try:
        text = storage.read_text(path).strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if name == plan_files.LATEST_FILE:
        try:
            return plan_files.parse_pointer(text)[0]
        except plan_files.PlanIntegrityError:
            return None
    return text or None


def reader_attempt(root: str, plan_id: str) -> tuple[int, dict[str, Any]]:
    """(attempt, manifest) a reader of `plan_id` gets: the newest published attempt, else the newest complete one."""
    attempt = plan_files.default_attempt(root, plan_id)
    return attempt, _manifest(root, plan_id, attempt)


def _manifest(root: str, plan_id: str, attempt: int) -> dict[str, Any]:
    manifest = plan_files.read_manifest(root, plan_id, attempt)
    records = storage.join(lake.plan_dir(root, plan_id), "apply.json")
    if storage.exists(records):
        manifest = {**manifest, **lake.read_json(records)}
    return manifest


def summarise(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the plans list shows of one manifest."""
    return {
        "plan_id": manifest.get("plan_id"), "attempt": manifest.get("attempt"), "status": manifest.get("status"),
        "created_at": manifest.get("created_at"), "valid_from": manifest.get("valid_from"), "valid_to": manifest.get("valid_to"),
        "hourly_cost_total": manifest.get("hourly_cost_total"), "gap": manifest.get("gap"),
        "objective": manifest.get("objective"), "lower_bound": manifest.get("lower_bound"),
        "shortfalls": len(manifest.get("shortfall") or []), "rows": manifest.get("rows"),
        "forecast_run_id": manifest.get("forecast_run_id"),
    }


_PUBLISHED: dict[tuple[str, str, int], tuple[tuple[int, int] | None, dict[str, Any]]] = {}  # published manifests only
_MEMO_LIMIT = 100_000


def _stamp(root: str, plan_id: str, attempt: int) -> tuple[int, int] | None:
    """(size, mtime) of a local manifest, so a memoised summary of a file changed since is re-read; on S3
    (one request per object) the contract that a published attempt is never rewritten is trusted."""
    if storage.is_s3(root):
        return None
    st = os.stat(storage.join(plan_files.attempt_dir(root, plan_id, attempt), plan_files.MANIFEST_FILE))
    return st.st_size, st.st_mtime_ns


def _attempt_summary(root: str, plan_id: str, attempt: int) -> dict[str, Any]:
    key = (root, plan_id, attempt)
    stamp = _stamp(root, plan_id, attempt)
    if key in _PUBLISHED and _PUBLISHED[key][0] == stamp:
        return _PUBLISHED[key][1]
    summary = summarise(plan_files.read_manifest(root, plan_id, attempt))
    if summary.get("status") == "published" and len(_PUBLISHED) < _MEMO_LIMIT:
        _PUBLISHED[key] = (stamp, summary)
    return summary


def plan_summary(root: str, plan_id: str) -> dict[str, Any]:
    """Summary of the attempt a reader gets; a plan without a readable attempt is listed with its error."""
    try:
        found = plan_files.attempts(root, plan_id)
        for attempt in reversed(found):
            try:
                summary = _attempt_summary(root, plan_id, attempt)
            except (FileNotFoundError, plan_files.PlanIntegrityError):
                continue
            if summary.get("status") == "published":
                return dict(summary)
        return dict(_attempt_summary(root, plan_id, plan_files.default_attempt(root, plan_id)))
    except (FileNotFoundError, ValueError) as exc:
        return {"plan_id": plan_id, "status": "unreadable", "error": str(exc)}


def alerts_by_token(root: str, start: datetime | None, end: datetime | None) -> dict[str, list[dict[str, Any]]]:
    """Alerts recorded in lake/alerts/ per interval token (the monitor's file and the callbacks'), in [start, end)."""
    folder = storage.join(root, "alerts")
    out: dict[str, list[dict[str, Any]]] = {}
    for name in storage.list_names(folder):
        when = token_time(name)
        if not name.endswith(".json") or when is None or (start and when < start) or (end and when >= end):
            continue
        try:
            doc = json.loads(storage.read_text(storage.join(folder, name)))
        except (ValueError, FileNotFoundError):
            continue
        token = f"{when:%Y%m%dT%H%MZ}"
        for alert in doc.get("alerts") or []:
            out.setdefault(token, []).append({**alert, "interval_end": doc.get("interval_end"), "file": name})
    return out


def runs(root: str, *parts: str) -> list[tuple[datetime, str]]:
    """(interval end, directory name) of every `run=…` directory under lake/<parts>, oldest first."""
    found = []
    for name in storage.list_names(storage.join(root, *parts)):
        when = token_time(name)
        if name.startswith("run=") and when is not None:
            found.append((when, name))
    return sorted(found)


def forecast_manifest(root: str, run_id: str) -> dict[str, Any]:
    path = storage.join(lake.forecast_dir(root, run_id), "manifest.json")
    return lake.read_json(path) if storage.exists(path) else {}


def backtests(root: str) -> list[dict[str, Any]]:
    """Backtest summaries recorded under lake/backtests/ (newest first)."""
    folder = storage.join(root, "backtests")
    out = []
    for name in sorted(storage.list_names(folder), reverse=True):
        if name.endswith(".json"):
            try:
                out.append({**lake.read_json(storage.join(folder, name)), "file": name})
            except ValueError:
                continue
    return out
