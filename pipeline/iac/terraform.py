"""Terraform for a plan: a fixed module plus generated ``plan.auto.tfvars.json`` files.

The modules in ``terraform_templates/aws/`` never change per plan; a plan only produces data:

* ``regions/<region>/`` — a copy of ``aws/region`` (one AWS region per root, one state per region:
  a failed or removed region cannot touch another) and its ``plan.auto.tfvars.json``: the plan id,
  the provisioned span (see :mod:`pipeline.iac.model`), the region's lines keyed by
  ``instance_type/purchase_option`` (``for_each`` keys, stable across plans, so the next plan
  updates in place) and whether the region needs a transit gateway. A line of a sub-hour plan
  also carries its ``schedule`` (the later windows' sizes) and, on demand, when the span's per-zone
  minimum differs from its first window, ``reserved_zone_counts``; both are left out when they add
  nothing (always, for hourly plans), so an hourly plan's file is what it was before schedules;
* ``peering/<requester>__<accepter>/`` — a copy of ``aws/peering`` per planned region pair and its
  ``plan.auto.tfvars.json``; the two transit gateway ids come from the region roots' outputs at
  apply time (``hubs.auto.tfvars.json``, written by :mod:`pipeline.iac.tfapply`).

Terraform's providers cannot be chosen per ``for_each`` element, hence one root per region rather
than one root with an aliased provider per region (which would have to be generated per plan).

No plan value is pasted into HCL: values reach Terraform as JSON data, so there is nothing to
escape; names and counts are still validated in :mod:`pipeline.iac.model` because they become
AWS names and tags. Operator settings (AMI, subnets, endpoints, capacity reservations on/off)
are Terraform variables set from outside (``-var-file`` / ``TF_VAR_*``), never in the plan's file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.iac.model import InfraLine, InfraModel, build_model, provider_alias
from pipeline.iac.safety import assert_no_credentials, check_region

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_AMI_SSM_PARAMETER",
    "MODULES_ENV_VAR",
    "PEERING_DIR",
    "REGIONS_DIR",
    "TFVARS_FILE",
    "default_modules_dir",
    "pair_dir_name",
    "publish_dir",
    "region_tfvars",
    "render_terraform",
    "render_terraform_model",
]

MODULES_ENV_VAR = "PEERSCALE_TEMPLATES_DIR"

# Public SSM parameter AWS maintains with the latest Amazon Linux 2023 x86_64 AMI per region;
# launch templates use it unless the image_id variable names an AMI.
DEFAULT_AMI_SSM_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

TFVARS_FILE = "plan.auto.tfvars.json"
REGIONS_DIR = "regions"
PEERING_DIR = "peering"
NEW_DIR_MODE = 0o777  # minus the umask: rendered directories are readable like any the user creates


def default_modules_dir() -> Path:
    """The fixed modules: ``$PEERSCALE_TEMPLATES_DIR`` or the repo's ``terraform_templates/aws``."""
    override = os.environ.get(MODULES_ENV_VAR)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "terraform_templates" / "aws"


def pair_dir_name(requester: str, accepter: str) -> str:
    return f"{provider_alias(requester)}__{provider_alias(accepter)}"


def _line_vars(line: InfraLine) -> dict[str, Any]:
    """One line's tfvars; the span fields only where they say something (see the module docstring)."""
    out = {
        "line_id": line.line_id,
        "line_key": line.key,
        "instance_type": line.instance_type,
        "purchase_option": line.purchase_option,
        "count": line.instances,  # what the group runs: the plan's count plus its zone headroom
        "planned_count": line.count,
        "zone_headroom": line.zone_headroom,
        "warm_pool": line.warm_pool,
        "max_size": line.max_size,
        "storage_gib": line.storage_gib,
        "availability_zones": list(line.availability_zones),
        "zone_counts": dict(line.zones),
    }
    if line.schedule:
        out["schedule"] = [{"start_time": start, "desired_capacity": n} for start, n in line.schedule]
    if line.purchase_option == "on_demand" and line.reserved_zones != line.zones:  # spot lines reserve nothing
        out["reserved_zone_counts"] = dict(line.reserved_zones)
    return out


def region_tfvars(model: InfraModel, region: str) -> dict[str, Any]:
    """The plan's values for one region root (an empty ``lines`` map empties the region)."""
    check_region(region)
    has_tgw = any(r.name == region and r.has_transit_gateway for r in model.regions)
    return {
        "plan_id": model.plan_id,
        "region": region,
        "window": {"valid_from": model.valid_from, "valid_to": model.valid_to},
        "lines": {f"{line.instance_type}/{line.purchase_option}": _line_vars(line) for line in model.lines_in(region)},
        "transit_gateway": has_tgw,
    }


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def _module_files(modules_dir: Path, name: str) -> dict[str, str]:
    source = modules_dir / name
    if not source.is_dir():
        raise FileNotFoundError(
            f"Terraform module {source} does not exist; pass modules_dir or set {MODULES_ENV_VAR}"
        )
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(source.glob("*.tf"))}
    if not files:
        raise FileNotFoundError(f"Terraform module {source} has no *.tf files")
    return files


def render_terraform_model(
    model: InfraModel,
    out_dir: Path,
    modules_dir: Path | None = None,
    empty_regions: Iterable[str] = (),
) -> list[Path]:
    """Write the fixed modules and the plan's tfvars for ``model`` into ``out_dir`` (replaced whole).

    ``empty_regions`` are regions provisioned before but absent from this plan: they get a root
    with no lines, so applying it removes what the earlier plan created there.
    """
    modules_dir = Path(modules_dir) if modules_dir is not None else default_modules_dir()
    region_module = _module_files(modules_dir, "region")
    peering_module = _module_files(modules_dir, "peering")
    files: dict[str, str] = {}
    regions = sorted({r.name for r in model.regions} | {check_region(r) for r in empty_regions})
    for region in regions:
        for name, text in region_module.items():
            files[f"{REGIONS_DIR}/{region}/{name}"] = text
        files[f"{REGIONS_DIR}/{region}/{TFVARS_FILE}"] = _json(region_tfvars(model, region))
    for pair in model.peering:
        base = f"{PEERING_DIR}/{pair_dir_name(pair.requester, pair.accepter)}"
        for name, text in peering_module.items():
            files[f"{base}/{name}"] = text
        files[f"{base}/{TFVARS_FILE}"] = _json({
            "plan_id": model.plan_id,
            "requester_region": pair.requester,
            "accepter_region": pair.accepter,
            "expected_requests": pair.expected_requests,
        })
    files["plan.json"] = _json({
        "plan_id": model.plan_id,
        "tau": model.tau,
        "window": {"valid_from": model.valid_from, "valid_to": model.valid_to},
        "regions": regions,
        "pairs": [pair_dir_name(p.requester, p.accepter) for p in model.peering],
        "peering_source": model.peering_source,
        "skipped_line_ids": list(model.skipped_line_ids),
    })
    return publish_dir(files, out_dir)


def render_terraform(
    plan: pd.DataFrame | pa.Table,
    manifest: Mapping[str, Any],
    out_dir: Path,
    modules_dir: Path | None = None,
    peering: Sequence[tuple[str, str, float | None]] | None = None,
    peering_source: str | None = None,
) -> list[Path]:
    """Render the plan's provisioned span as Terraform roots in ``out_dir`` (see the module docstring).

    Raises before anything is written: :class:`~pipeline.iac.safety.UnsafePlanValue` for a plan
    value that cannot be a name, tag or count; ``ValueError`` for an empty or inconsistent plan;
    ``FileNotFoundError`` when the modules are missing.
    """
    model = build_model(plan, manifest, peering=peering, peering_source=peering_source)
    return render_terraform_model(model, out_dir, modules_dir)


def publish_dir(files: Mapping[str, str], out_dir: Path) -> list[Path]:
    """Write ``files`` (relative name → text) into a staging sibling of ``out_dir``, then swap it in.

    The previous content is removed only after the swap, so a failure leaves it (or nothing) in
    place. Every text is checked for credentials first. Returns the written paths, sorted.
    """
    for name, text in files.items():
        assert_no_credentials(text, name)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir with 0o777 lets the umask decide (0755 under 022), where mkdtemp + chmod 0755 ignored it.
    staging = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir(mode=NEW_DIR_MODE)
    try:
        for name in sorted(files):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=NEW_DIR_MODE)
            target.write_bytes(files[name].encode("utf-8"))
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / name for name in sorted(files)]


def _swap_in(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    if not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a directory")
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    retired.rmdir()
    os.replace(out_dir, retired)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(retired, out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)
