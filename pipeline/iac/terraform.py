"""Render a plan's first window into Terraform for AWS.

The plan covers several hourly windows; only the first (earliest ``valid_from``) is what gets
provisioned now, so only its lines are rendered. On-demand lines become EC2 capacity reservations
that expire at the window's end; spot lines become a launch template plus an auto scaling group
with a spot-only mixed instances policy, scaled to zero at the window's end.

Every value is validated (:mod:`pipeline.iac.safety`) before rendering, output is deterministic
(same plan → same bytes), and the output directory is replaced as a whole so a reader never sees
a half-rendered configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import pyarrow as pa

from pipeline.iac.safety import (
    UnsafePlanValue,
    assert_no_credentials,
    check_count,
    check_instance_type,
    check_plan_id,
    check_purchase_option,
    check_region,
    check_tag_value,
    check_timestamp,
    hcl_identifier,
    hcl_number,
    hcl_string,
    hcl_text,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_AMI_SSM_PARAMETER",
    "TEMPLATES_ENV_VAR",
    "TerraformLine",
    "TerraformRegion",
    "default_templates_dir",
    "render_terraform",
    "resource_name",
]

TEMPLATES_ENV_VAR = "PEERSCALE_TEMPLATES_DIR"

# Public SSM parameter AWS maintains with the latest Amazon Linux 2023 x86_64 AMI per region;
# spot launch templates use it unless var.image_ids names an AMI for the region.
DEFAULT_AMI_SSM_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

REQUIRED_COLUMNS: tuple[str, ...] = (
    "plan_id",
    "valid_from",
    "valid_to",
    "region",
    "instance_type",
    "purchase_option",
    "count",
    "line_id",
)

TFVARS_FILE = "terraform.tfvars.json"
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_NAME_SLUG_MAX = 60
_TERRAFORM_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class TerraformLine:
    """One plan line of the first window, already validated and shaped for the templates."""

    line_id: str
    name: str  # Terraform resource name, [a-z0-9_] only
    region: str
    provider_alias: str
    instance_type: str
    purchase_option: str
    count: int
    valid_from: str  # RFC 3339 UTC
    valid_to: str  # RFC 3339 UTC


@dataclass(frozen=True)
class TerraformRegion:
    """A plan region: one aliased provider and its default availability zone."""

    name: str
    provider_alias: str
    default_availability_zone: str
    has_spot: bool


def default_templates_dir() -> Path:
    """Templates to use when none is passed: ``$PEERSCALE_TEMPLATES_DIR`` or the repo's own."""
    override = os.environ.get(TEMPLATES_ENV_VAR)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "terraform_templates" / "aws"


def provider_alias(region: str) -> str:
    """Provider alias for a validated region: dashes become underscores (``us_east_1``)."""
    return check_region(region).replace("-", "_")


def resource_name(line_id: str) -> str:
    """Terraform resource name for a line: a readable slug plus a hash of the exact line id.

    The hash keeps names unique even when two line ids slug to the same text (``m5.large`` vs
    ``m5-large``), and it depends on the line id only, so names are stable across renders.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", line_id.lower()).strip("_")[:_NAME_SLUG_MAX].rstrip("_")
    digest = hashlib.sha256(line_id.encode("utf-8")).hexdigest()[:8]
    name = f"line_{slug}_{digest}" if slug else f"line_{digest}"
    assert _TERRAFORM_NAME.fullmatch(name), name
    return name


def _format_ts(value: datetime) -> str:
    """RFC 3339 UTC, the format capacity reservation end_date and ASG schedules expect."""
    return value.strftime(_TIMESTAMP_FORMAT)


def _records(plan: pd.DataFrame | pa.Table) -> list[dict[str, Any]]:
    """Plan rows as dicts, from either a pandas DataFrame or a pyarrow Table."""
    is_table = isinstance(plan, pa.Table)
    columns = plan.column_names if is_table else list(plan.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"plan is missing columns {missing}; expected the PLAN schema")
    if is_table:
        return plan.select(list(REQUIRED_COLUMNS)).to_pylist()
    return plan[list(REQUIRED_COLUMNS)].to_dict(orient="records")


def _validate_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every templated field of one plan row; return the normalised values."""
    valid_from = check_timestamp(row["valid_from"], "valid_from")
    valid_to = check_timestamp(row["valid_to"], "valid_to")
    if valid_to <= valid_from:
        raise UnsafePlanValue(
            "valid_to", row["valid_to"], f"must be after valid_from ({_format_ts(valid_from)})"
        )
    line_id = check_tag_value(row["line_id"], "line_id")
    return {
        "plan_id": check_plan_id(row["plan_id"]),
        "valid_from": valid_from,
        "valid_to": valid_to,
        "region": check_region(row["region"]),
        "instance_type": check_instance_type(row["instance_type"]),
        "purchase_option": check_purchase_option(row["purchase_option"]),
        "count": check_count(row["count"]),
        "line_id": line_id,
    }


@dataclass(frozen=True)
class _Window:
    """The first window of a plan, reduced to what the templates need."""

    start: datetime
    end: datetime
    regions: list[TerraformRegion]
    lines: list[TerraformLine]  # lines with at least one instance, sorted
    skipped_line_ids: list[str]  # zero-count lines: AWS refuses zero-instance reservations


def _first_window(rows: Iterable[Mapping[str, Any]], plan_id: str) -> _Window:
    """Validate all rows, then collapse the first window's rows into lines.

    Every row is validated, not only the first window's: a plan carrying an unsafe value anywhere
    is suspect as a whole.
    """
    checked = [_validate_row(row) for row in rows]
    if not checked:
        raise ValueError("plan has no rows; nothing to render")
    for row in checked:
        if row["plan_id"] != plan_id:
            raise UnsafePlanValue(
                "plan_id",
                row["plan_id"],
                f"every row must carry the manifest's plan_id {plan_id!r}",
            )
    start = min(row["valid_from"] for row in checked)
    window_rows = [row for row in checked if row["valid_from"] == start]
    ends = {row["valid_to"] for row in window_rows}
    if len(ends) != 1:
        raise ValueError(
            f"first window starting {_format_ts(start)} has several valid_to values "
            f"{sorted(_format_ts(e) for e in ends)}; a window must have one end"
        )
    end = ends.pop()

    by_line: dict[str, dict[str, Any]] = {}
    for row in window_rows:
        key = (row["region"], row["instance_type"], row["purchase_option"], row["count"])
        seen = by_line.setdefault(row["line_id"], {"key": key})
        if seen["key"] != key:
            raise ValueError(
                f"line {row['line_id']!r} has inconsistent (region, instance_type, "
                f"purchase_option, count) across its resource rows: {seen['key']} vs {key}"
            )

    lines: list[TerraformLine] = []
    skipped: list[str] = []
    names: dict[str, str] = {}
    for line_id, info in by_line.items():
        region, instance_type, purchase_option, count = info["key"]
        if count == 0:
            skipped.append(line_id)
            continue
        name = resource_name(line_id)
        if name in names:  # a sha256 prefix collision; refuse rather than overwrite a resource
            raise ValueError(f"line ids {names[name]!r} and {line_id!r} map to the same name")
        names[name] = line_id
        lines.append(
            TerraformLine(
                line_id=line_id,
                name=name,
                region=region,
                provider_alias=provider_alias(region),
                instance_type=instance_type,
                purchase_option=purchase_option,
                count=count,
                valid_from=_format_ts(start),
                valid_to=_format_ts(end),
            )
        )
    lines.sort(key=lambda l: (l.region, l.purchase_option, l.instance_type, l.line_id))

    # A region whose lines are all zero still gets a provider: the plan names it.
    spot_regions = {l.region for l in lines if l.purchase_option == "spot"}
    regions = [
        TerraformRegion(
            name=region,
            provider_alias=provider_alias(region),
            default_availability_zone=f"{region}a",
            has_spot=region in spot_regions,
        )
        for region in sorted({row["region"] for row in window_rows})
    ]
    return _Window(start, end, regions, lines, sorted(skipped))


def _tau(manifest: Mapping[str, Any]) -> str | None:
    """The manifest's newsvendor τ (one number, or one per resource type) for the header comment."""
    tau = manifest.get("tau")
    if tau is None:
        return None
    items = sorted(tau.items()) if isinstance(tau, Mapping) else [(None, tau)]
    parts = []
    for resource, value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise UnsafePlanValue("tau", value, "must be a number in [0, 1]")
        if resource is not None and not str(resource).isidentifier():
            raise UnsafePlanValue("tau", resource, "resource type keys must be plain identifiers")
        parts.append(f"{float(value):.6g}" if resource is None else f"{resource}={float(value):.6g}")
    return ", ".join(parts)


def _environment(templates_dir: Path) -> jinja2.Environment:
    """Jinja for HCL: no HTML escaping, undefined names fail, and quoting goes through filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["q"] = hcl_string
    env.filters["n"] = hcl_number
    env.filters["ident"] = hcl_identifier
    env.filters["text"] = hcl_text
    return env


def _tfvars(regions: list[TerraformRegion]) -> str:
    """Operator-editable variable values; JSON so that no value needs HCL escaping."""
    values = {
        "ami_ssm_parameter": DEFAULT_AMI_SSM_PARAMETER,
        "availability_zones": {r.name: r.default_availability_zone for r in regions},
        "image_ids": {},
        "subnet_ids": {r.name: [] for r in regions},
    }
    return json.dumps(values, indent=2, sort_keys=True) + "\n"


def _publish_dir(staging: Path, out_dir: Path) -> None:
    """Swap ``staging`` in as ``out_dir``; the previous render is removed only after the swap."""
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


def render_terraform(
    plan: pd.DataFrame | pa.Table,
    manifest: Mapping[str, Any],
    out_dir: Path,
    templates_dir: Path | None = None,
) -> list[Path]:
    """Render the plan's first window as a Terraform root module in ``out_dir``.

    ``plan`` follows :data:`pipeline.schemas.PLAN`; ``manifest`` must carry the same ``plan_id``
    (``tau`` is echoed in a header comment when present). Templates come from ``templates_dir``,
    else ``$PEERSCALE_TEMPLATES_DIR``, else the repo's ``terraform_templates/aws``: every
    ``*.j2`` is rendered (minus the suffix; names starting with ``_`` are partials) and every
    static ``*.tf`` is copied. A ``terraform.tfvars.json`` with default variable values is added.

    Output is replaced as a whole: rendered in memory, written to a temporary sibling directory,
    then swapped in, so a failure leaves the previous render (or nothing) in place.

    Returns the written files, sorted. Raises, before anything is written:
    :class:`UnsafePlanValue` if a plan or manifest value is unsafe to render;
    :class:`UnsafeRenderedOutput` if rendered text looks like it carries credentials;
    ``ValueError`` if the plan is empty or a line is inconsistent across its rows;
    ``FileNotFoundError`` if the templates directory is missing.
    """
    plan_id = check_plan_id(manifest.get("plan_id"), "manifest.plan_id")
    tau = _tau(manifest)
    window = _first_window(_records(plan), plan_id)

    templates_dir = Path(templates_dir) if templates_dir is not None else default_templates_dir()
    if not templates_dir.is_dir():
        raise FileNotFoundError(
            f"Terraform templates directory {templates_dir} does not exist; pass templates_dir or "
            f"set {TEMPLATES_ENV_VAR}"
        )
    template_names = sorted(
        p.name for p in templates_dir.iterdir() if p.is_file() and p.name.endswith(".j2")
    )
    static_files = sorted(
        p for p in templates_dir.iterdir() if p.is_file() and p.name.endswith(".tf")
    )

    context = {
        "plan_id": plan_id,
        "tau": tau,
        "window": {"valid_from": _format_ts(window.start), "valid_to": _format_ts(window.end)},
        "regions": [asdict(r) for r in window.regions],
        "on_demand_lines": [asdict(l) for l in window.lines if l.purchase_option == "on_demand"],
        "spot_lines": [asdict(l) for l in window.lines if l.purchase_option == "spot"],
        "skipped_line_ids": window.skipped_line_ids,
    }

    # Render everything in memory first: a template error must not leave files behind.
    env = _environment(templates_dir)
    outputs: dict[str, str] = {}
    for name in template_names:
        if name.startswith("_"):
            continue
        outputs[name.removesuffix(".j2")] = env.get_template(name).render(**context)
    for path in static_files:
        if path.name in outputs:
            raise ValueError(f"{path.name} is both a static file and a template in {templates_dir}")
        outputs[path.name] = path.read_text(encoding="utf-8")
    outputs[TFVARS_FILE] = _tfvars(window.regions)
    for name, text in outputs.items():
        assert_no_credentials(text, name)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name in sorted(outputs):
            (staging / name).write_bytes(outputs[name].encode("utf-8"))
        staging.chmod(0o755)
        _publish_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / name for name in sorted(outputs)]
