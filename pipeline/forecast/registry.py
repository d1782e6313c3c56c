"""The versioned model registry in the lake: what daily training wrote, what hourly scoring reads.

Layout (local paths or s3://, through pipeline.common.storage):

    models/CURRENT                            {"version": ..., "promoted_at": ...}: the version hourly runs score with
    models/version=<id>/parts/<name>.jsongz  per series (gzip'd JSON; not .gz, which pyarrow inflates on read): chosen model, its state (see
                                              pipeline.forecast.model_state; a combination, model `ensemble`,
                                              lists its `members` and stores a state per member), CV scores, band (the engine's
                                              per-series band choice: method, CV pinball, the offsets it
                                              fixes, see engine.band_decisions; absent in versions before
                                              it was stored: they score with `bands`), band offsets, fingerprint
    models/version=<id>/global/<model>.pkl    a global model (the GBM: scikit-learn has no non-pickle format);
                                              its sha256 is in the manifest and checked before it is unpickled,
                                              and it is only ever loaded from this directory
    models/version=<id>/manifest.json         written last: options, code version, libraries, the series
                                              expected, each part's and global's sha256, the series → part index

Why this order: training writes parts while it runs (a crashed run leaves a version without a
manifest, or with parts missing), `finalize` writes the manifest, and `promote` moves CURRENT only
after `verify` has re-read every part and checked every expected series has an entry. CURRENT is
one small object replaced atomically (os.replace locally, one PUT on S3): an hourly run reads the
old version or the new one, never a mix, and training never writes anything hourly runs read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common import lake, storage

SCHEMA_VERSION = 1  # of manifest.json and the part entries
CURRENT = "CURRENT"


class RegistryError(RuntimeError):
    """The registry or a version of it is missing, incomplete or corrupt; the message says which."""


# ---- layout -------------------------------------------------------------------------------------

def models_root(lake_root: str) -> str:
    return storage.join(lake_root, "models")


def version_dir(lake_root: str, version: str) -> str:
    return storage.join(models_root(lake_root), f"version={version}")


def current_path(lake_root: str) -> str:
    return storage.join(models_root(lake_root), CURRENT)


def manifest_path(lake_root: str, version: str) -> str:
    return storage.join(version_dir(lake_root, version), "manifest.json")


def work_dir(lake_root: str, version: str) -> str:
    """Training's intermediates (same code, same run); deleted by `finalize`."""
    return storage.join(version_dir(lake_root, version), "_work")


def new_version_id(now: datetime | None = None) -> str:
    """Sortable by creation time, unique across concurrent trainings."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(ds: np.ndarray, y: np.ndarray, season_length: int) -> dict:
    """Hashes of a series' training data (whole range and last season): scoring checks the last
    season is unchanged, i.e. the data the model was trained on was not restated since."""
    def digest(d: np.ndarray, v: np.ndarray) -> str:
        stamps = pd.to_datetime(d).astype("int64").to_numpy()
        return hashlib.sha256(stamps.tobytes() + np.round(v.astype(float), 6).tobytes()).hexdigest()[:32]

    tail = slice(max(len(y) - season_length, 0), len(y))
    return {"start": str(pd.Timestamp(ds[0])), "end": str(pd.Timestamp(ds[-1])), "n": len(y), "sha256": digest(ds, y),
            "tail_start": str(pd.Timestamp(ds[tail][0])), "tail_sha256": digest(ds[tail], y[tail])}


# ---- writing ------------------------------------------------------------------------------------

def write_part(lake_root: str, version: str, name: str, entries: dict[str, dict]) -> dict:
    """One shard's series entries as gzip'd JSON (atomic; a retried shard overwrites its own part)."""
    data = gzip.compress(json.dumps({"schema": SCHEMA_VERSION, "series": entries}, sort_keys=True).encode("utf-8"), mtime=0)
    path = storage.join(version_dir(lake_root, version), "parts", f"{name}.jsongz")
    storage.write_bytes_atomic(path, data)
    return {"name": name, "file": f"parts/{name}.jsongz", "sha256": _sha256(data), "series": sorted(entries)}


def write_global(lake_root: str, version: str, name: str, model: Any) -> dict:
    """A global model (pickle: written by this code, read back only after its sha256 is checked)."""
    data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    storage.write_bytes_atomic(storage.join(version_dir(lake_root, version), "global", f"{name}.pkl"), data)
    return {"name": name, "file": f"global/{name}.pkl", "sha256": _sha256(data)}


def finalize(lake_root: str, version: str, meta: dict, parts: list[dict], globals_: list[dict], expected: list[str]) -> dict:
    """Write the manifest (last) and check the version is complete; returns the manifest."""
    index = {uid: p["name"] for p in parts for uid in p["series"]}
    manifest = {"schema": SCHEMA_VERSION, "version": version, "created_at": datetime.now(UTC).isoformat(),
                **meta, "expected_series": sorted(expected), "parts": {p["name"]: {k: p[k] for k in ("file", "sha256")} for p in parts},
                "globals": {g["name"]: {k: g[k] for k in ("file", "sha256")} for g in globals_}, "index": dict(sorted(index.items()))}
    check(lake_root, version, manifest)  # before the manifest exists: an incomplete version never gets one
    lake.write_json_atomic(manifest_path(lake_root, version), manifest)
    storage.delete_dir(work_dir(lake_root, version))
    return manifest


# ---- reading ------------------------------------------------------------------------------------

def read_manifest(lake_root: str, version: str) -> dict:
    path = manifest_path(lake_root, version)
    if not storage.exists(path):
        raise RegistryError(f"model version {version!r} has no manifest at {path}: it is unfinished or does not exist")
    try:
        manifest = lake.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"model version {version!r}: unreadable manifest ({exc})") from exc
    if manifest.get("schema") != SCHEMA_VERSION:
        raise RegistryError(f"model version {version!r} has schema {manifest.get('schema')}, this code reads {SCHEMA_VERSION}")
    return manifest


def _checked_bytes(lake_root: str, version: str, ref: dict) -> bytes:
    path = storage.join(version_dir(lake_root, version), ref["file"])
    if not storage.exists(path):
        raise RegistryError(f"model version {version!r}: {ref['file']} is missing")
    data = storage.read_bytes(path)
    if _sha256(data) != ref["sha256"]:
        raise RegistryError(f"model version {version!r}: {ref['file']} does not match its checksum (corrupt or replaced)")
    return data


def read_part(lake_root: str, version: str, manifest: dict, name: str) -> dict[str, dict]:
    try:
        payload = json.loads(gzip.decompress(_checked_bytes(lake_root, version, manifest["parts"][name])))
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise RegistryError(f"model version {version!r}: part {name!r} unreadable ({exc})") from exc
    return payload["series"]


def read_global(lake_root: str, version: str, manifest: dict, name: str) -> Any:
    """Unpickle a global model of this version, only once its bytes match the manifest's sha256."""
    if name not in manifest.get("globals", {}):
        raise RegistryError(f"model version {version!r} has no global model {name!r}")
    return pickle.loads(_checked_bytes(lake_root, version, manifest["globals"][name]))  # checksummed registry file


def verify(lake_root: str, version: str) -> dict:
    """The completeness check before promotion: manifest readable, every part and global readable
    and matching its checksum, and every expected series with an entry. Returns the manifest."""
    return check(lake_root, version, read_manifest(lake_root, version))


def check(lake_root: str, version: str, manifest: dict) -> dict:
    """`verify` against a manifest in hand (finalize checks before writing it)."""
    seen: set[str] = set()
    for name in manifest["parts"]:
        seen |= set(read_part(lake_root, version, manifest, name))
    for ref in manifest.get("globals", {}).values():
        _checked_bytes(lake_root, version, ref)
    missing = sorted(set(manifest["expected_series"]) - seen)
    if missing:
        raise RegistryError(f"model version {version!r} is incomplete: {len(missing)} series without an entry "
                            f"(e.g. {missing[:3]})")
    return manifest


def promote(lake_root: str, version: str) -> dict:
    """Point CURRENT at `version` (atomically) once it passes `verify`."""
    manifest = verify(lake_root, version)
    pointer = {"version": version, "promoted_at": datetime.now(UTC).isoformat(), "data_end": manifest.get("data_end")}
    lake.write_json_atomic(current_path(lake_root), pointer)
    return pointer


def current(lake_root: str) -> dict | None:
    """CURRENT's content, or None when nothing was ever promoted."""
    path = current_path(lake_root)
    if not storage.exists(path):
        return None
    try:
        return lake.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"unreadable {path}: {exc}") from exc


def list_versions(lake_root: str) -> list[dict]:
    """Every version directory, newest first: finished (has a manifest) or not, and which is CURRENT."""
    live = (current(lake_root) or {}).get("version")
    out = []
    for name in storage.list_names(models_root(lake_root)):
        if not name.startswith("version="):
            continue
        vid = name.split("=", 1)[1]
        row: dict[str, Any] = {"version": vid, "current": vid == live}
        try:
            m = read_manifest(lake_root, vid)
            row.update(status="complete", created_at=m["created_at"], data_end=m.get("data_end"), series=len(m["index"]),
                       chosen=m.get("chosen", {}))
        except RegistryError as exc:
            row.update(status="unfinished", error=str(exc))
        out.append(row)
    return sorted(out, key=lambda r: r["version"], reverse=True)


@dataclass
class Version:
    """One version read whole: its manifest and every series' entry."""

    lake_root: str
    version: str
    manifest: dict
    entries: dict[str, dict] = field(default_factory=dict)

    def global_model(self, name: str) -> Any:
        return read_global(self.lake_root, self.version, self.manifest, name)


def load(lake_root: str, version: str | None = None) -> Version:
    """A version (CURRENT by default) with every part read and checked."""
    if version is None:
        pointer = current(lake_root)
        if pointer is None:
            raise RegistryError("no model version promoted yet (the lake has no models/CURRENT): run `peerscale train`")
        version = str(pointer["version"])
    manifest = read_manifest(lake_root, version)
    entries: dict[str, dict] = {}
    for name in manifest["parts"]:
        entries.update(read_part(lake_root, version, manifest, name))
    return Version(lake_root, version, manifest, entries)


def member_states(entry: dict) -> dict[str, Any]:
    """The models an entry forecasts with and each one's stored state: its one model, or a
    combination's members (entry `members`; the forecast is the mean of theirs). A global member's
    state is None: it lives in the version's `globals`."""
    if entry.get("members"):
        states = entry.get("state") or {}
        return {name: states.get(name) for name in entry["members"]}
    return {entry["model"]: entry.get("state")}


def summary(entry: dict) -> dict:
    """An entry without its bulky fitted state (for `models show` and `diff`)."""
    return {k: v for k, v in entry.items() if k != "state"}


def diff(lake_root: str, a: str, b: str) -> dict:
    """What changed from version a to b: series added/removed, choices changed, CV pinball of the choice."""
    va, vb = load(lake_root, a), load(lake_root, b)
    changed = {}
    for uid in sorted(set(va.entries) & set(vb.entries)):
        ea, eb = va.entries[uid], vb.entries[uid]
        if ea["model"] != eb["model"]:
            changed[uid] = {"from": ea["model"], "to": eb["model"],
                            "cv_pinball_from": ea["cv_pinball"].get(ea["model"]), "cv_pinball_to": eb["cv_pinball"].get(eb["model"])}
    return {"a": a, "b": b, "added": sorted(set(vb.entries) - set(va.entries)), "removed": sorted(set(va.entries) - set(vb.entries)),
            "changed": changed, "chosen_a": va.manifest.get("chosen", {}), "chosen_b": vb.manifest.get("chosen", {}),
            "data_end_a": va.manifest.get("data_end"), "data_end_b": vb.manifest.get("data_end")}
