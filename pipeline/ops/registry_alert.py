"""The alert when an hourly forecast could not score (all or some series) from the model registry.

Why here: the forecast stage only logs and writes the reason into its manifest's `registry` block
(pipeline.forecast.scoring); the stage wrapper reads it back and records the alert in the
monitor's format, so a missing, stale or incompatible registry is seen like any other alert.
"""

from __future__ import annotations

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.ops.monitoring import Alert, record_alert


def alert_on_fallback(settings: Settings, interval: DataInterval, published: dict) -> dict | None:
    """Record a `model_registry` warning when the run's manifest says it fell back; None otherwise."""
    path = storage.join(lake.forecast_dir(settings.lake_root, published["run_id"]), "manifest.json")
    block = lake.read_json(path).get("engine", {}).get("registry") or {}
    if not block.get("fallback"):
        return None
    status, reason = block.get("status", "?"), block.get("reason", "")
    if status in ("ok", "partial"):
        reason = f"{len(block.get('restated_series', []))} series restated since training, {len(block.get('failed_series', {}))} failed"
    alert = Alert("model_registry", "warning", block.get("version") or "CURRENT", 0.0, 0.0,
                  f"model registry {status}: {reason}; those series were forecast by the cheap models")
    return record_alert(settings, alert, interval.end, "registry", {"run_id": published["run_id"], "stage": "forecast"})
