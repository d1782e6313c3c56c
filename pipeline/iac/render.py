"""Render a published (or planned) plan from the lake into ``<build>/iac/<plan_id>/``.

``terraform/`` (a Terraform root module) and ``cloudformation/`` (one stack template per region
plus ``deployment.json``) describe the same infrastructure (see :mod:`pipeline.iac.model`).

Planned peering pairs come from the plan's pair forecast (``lake/forecasts/run=<forecast_run_id>``,
series ``pair:<src>→<dst>:requests``): a pair of plan regions is peered when the forecast expects
at least :data:`~pipeline.iac.model.MIN_PAIR_REQUESTS` request(s) between them, both directions
together, over the plan's windows. Peering is long-lived, so the whole plan horizon counts, not
only the provisioned span. Without a readable forecast every pair of plan regions is peered, and the
rendered files say so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import lake, plan_files, storage
from pipeline.common.config import Settings
from pipeline.iac.cloudformation import render_cloudformation_model
from pipeline.iac.model import MIN_PAIR_REQUESTS, all_pairs, build_model, pairs_from_forecast
from pipeline.iac.safety import check_plan_id
from pipeline.iac.terraform import render_terraform_model

__all__ = ["ZONES_ENV", "cloud_rows", "iac_dir", "load_plan", "planned_pairs", "render_plan", "zones_per_region"]

ZONES_ENV = "PEERSCALE_AZ_PER_REGION"
log = logging.getLogger(__name__)


def zones_per_region(settings: Settings) -> int | None:
    """The deprecated ``$PEERSCALE_AZ_PER_REGION`` override, or None (the default): lines then sit in
    the zones the plan names (``pipeline.plan.zones``: configure those with ``PEERSCALE_ZONES``,
    planner.json ``zones`` or ``peerscale run --zones``). When set, each line's ``count`` is spread
    evenly over the region's first N zones with no zone headroom, as before the plan knew zones."""
    del settings  # configuration is environment-only; kept for a Settings field later
    text = os.environ.get(ZONES_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise ValueError(f"{ZONES_ENV} must be a whole number of zones, not {text!r}") from exc
    if not 1 <= value <= 6:
        raise ValueError(f"{ZONES_ENV} must be between 1 and 6, not {value}")
    log.warning("%s=%d is deprecated and overrides the plan's zones (no N+1 across zones); "
                "set PEERSCALE_ZONES or planner.json 'zones' instead", ZONES_ENV, value)
    return value


def iac_dir(settings: Settings, plan_id: str) -> Path:
    """``<build>/iac/<plan_id>``: local only (Terraform and the appliers need a directory)."""
    check_plan_id(plan_id)
    if storage.is_s3(settings.build_root):
        raise ValueError(
            f"build root {settings.build_root} is on S3; rendered IaC needs a local directory "
            "(set PEERSCALE_BUILD or --build to a local path)"
        )
    return Path(settings.build_root) / "iac" / plan_id


def load_plan(settings: Settings, plan_id: str, attempt: int | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """A plan's rows (pyarrow) and manifest, from a local or s3:// lake, hashes verified.

    `attempt` defaults to the newest published attempt, else the newest complete one (render runs
    between the plan stage and publish). FileNotFoundError when there is none; PlanIntegrityError (a
    ValueError) when the files do not match the manifest's hashes.
    """
    check_plan_id(plan_id)
    root = settings.lake_root
    if attempt is None:
        attempt = plan_files.default_attempt(root, plan_id)
    manifest, files = plan_files.read_attempt(root, plan_id, attempt)
    return pq.read_table(pa.BufferReader(files[plan_files.PLAN_FILE])), manifest


def _instant(text: Any) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else None


def planned_pairs(
    settings: Settings, manifest: dict[str, Any], regions: list[str]
) -> tuple[Sequence[tuple[str, str, float | None]], str]:
    """Region pairs to peer and a sentence saying where they come from."""
    run_id = manifest.get("forecast_run_id")
    start, end = _instant(manifest.get("valid_from")), _instant(manifest.get("valid_to"))
    if isinstance(run_id, str) and run_id and start and end:
        path = storage.join(lake.forecast_dir(settings.lake_root, run_id), "forecast.parquet")
        if storage.exists(path):
            fs, inner = storage.filesystem(path)
            forecast = storage.with_retries(
                "read", path, lambda: pq.read_table(inner, filesystem=fs, columns=["series_id", "ds", "mean"])
            )
            pairs = pairs_from_forecast(forecast, regions, start, end)
            return pairs, (
                f"pair forecast {run_id}, pairs expecting at least {MIN_PAIR_REQUESTS:g} request(s) "
                f"over the plan windows ({len(pairs)} of {len(all_pairs(regions))} pairs)"
            )
    return all_pairs(regions), "every pair of plan regions (no pair forecast found for this plan)"


def render_plan(
    plan_id: str, settings: Settings, attempt: int | None = None, empty_regions: Sequence[str] = ()
) -> dict[str, str]:
    """Render Terraform and CloudFormation for ``plan_id``; returns paths (strings, XCom-friendly).

    Both renders are validated before anything is written; each output directory is replaced
    as a whole. ``empty_regions`` (regions an earlier apply provisioned, gone from this plan) get
    a Terraform root without lines. Lines sit in the plan's zones (see :func:`zones_per_region`).
    """
    out = iac_dir(settings, plan_id)
    plan, manifest = load_plan(settings, plan_id, attempt)
    if manifest.get("plan_id") != plan_id:
        raise ValueError(f"manifest of {plan_id} names plan {manifest.get('plan_id')!r}")
    zones = zones_per_region(settings)
    build_model(plan, manifest, zones_per_region=zones)  # validates every row, on-premise ones included
    plan, onprem = cloud_rows(plan)
    probe = build_model(plan, manifest, zones_per_region=zones)  # its regions decide the pairs
    active = sorted({line.region for line in probe.lines})
    pairs, source = planned_pairs(settings, manifest, active)
    model = build_model(plan, manifest, peering=pairs, peering_source=source, zones_per_region=zones)
    tf_files = render_terraform_model(model, out / "terraform", empty_regions=[r for r in empty_regions if r not in active])
    cfn_files = render_cloudformation_model(model, out / "cloudformation")
    return {
        "terraform_dir": str(out / "terraform"),
        "cloudformation_dir": str(out / "cloudformation"),
        "files": str(len(tf_files) + len(cfn_files)),
        "peering": source,
        "peered_pairs": str(len(model.peering)),
        "onprem_regions": ",".join(onprem),
    }


def cloud_rows(plan: pa.Table) -> tuple[pa.Table, list[str]]:
    """The plan without its on-premise regions (``PEERSCALE_ONPREM_REGIONS``), and those regions.

    On-premise regions go to the site's automation (:mod:`pipeline.iac.onprem`), never into
    Terraform or CloudFormation. A plan with no cloud region left cannot be rendered.
    """
    import pyarrow.compute as pc

    from pipeline.iac.onprem import onprem_regions

    configured = onprem_regions()
    regions = set(plan.column("region").to_pylist())
    onprem = sorted(regions & configured)
    if not onprem:
        return plan, []
    cloud = plan.filter(pc.invert(pc.is_in(plan.column("region"), value_set=pa.array(onprem))))
    if cloud.num_rows == 0:
        raise ValueError(f"every region of the plan is on premise ({', '.join(onprem)}): no cloud IaC to render")
    return cloud, onprem
