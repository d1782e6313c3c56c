"""Render a plan's first window into a Terraform root module for AWS.

What becomes which resource is described in :mod:`pipeline.iac.model`. Every value is validated
before rendering, output is deterministic (same plan → same bytes), and the output directory is
replaced as a whole so a reader never sees a half-rendered configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import pyarrow as pa

from pipeline.iac.model import (
    InfraModel,
    InfraRegion,
    build_model,
    provider_alias,
    resource_name,
)
from pipeline.iac.safety import (
    assert_no_credentials,
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
    "TFVARS_FILE",
    "default_templates_dir",
    "provider_alias",
    "publish_dir",
    "render_terraform",
    "render_terraform_model",
    "resource_name",
]

TEMPLATES_ENV_VAR = "PEERSCALE_TEMPLATES_DIR"

# Public SSM parameter AWS maintains with the latest Amazon Linux 2023 x86_64 AMI per region;
# launch templates use it unless var.image_ids names an AMI for the region.
DEFAULT_AMI_SSM_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

TFVARS_FILE = "terraform.tfvars.json"
NEW_DIR_MODE = 0o777  # minus the umask: rendered directories are readable like any the user creates


def default_templates_dir() -> Path:
    """Templates to use when none is passed: ``$PEERSCALE_TEMPLATES_DIR`` or the repo's own."""
    override = os.environ.get(TEMPLATES_ENV_VAR)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "terraform_templates" / "aws"


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


def _tfvars(regions: Sequence[InfraRegion]) -> str:
    """Operator-editable variable values; JSON so that no value needs HCL escaping."""
    values = {
        "ami_ssm_parameter": DEFAULT_AMI_SSM_PARAMETER,
        "availability_zones": {r.name: r.default_availability_zone for r in regions},
        "image_ids": {},
        "subnet_ids": {r.name: [] for r in regions},
        "warm_pool_state": "Stopped",
    }
    return json.dumps(values, indent=2, sort_keys=True) + "\n"


def publish_dir(files: Mapping[str, str], out_dir: Path) -> list[Path]:
    """Write ``files`` (name → text) into a staging sibling of ``out_dir``, then swap it in.

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
            (staging / name).write_bytes(files[name].encode("utf-8"))
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


def render_terraform_model(model: InfraModel, out_dir: Path, templates_dir: Path | None = None) -> list[Path]:
    """Render an already-validated :class:`InfraModel` (see :func:`render_terraform`)."""
    templates_dir = Path(templates_dir) if templates_dir is not None else default_templates_dir()
    if not templates_dir.is_dir():
        raise FileNotFoundError(
            f"Terraform templates directory {templates_dir} does not exist; pass templates_dir or "
            f"set {TEMPLATES_ENV_VAR}"
        )
    template_names = sorted(p.name for p in templates_dir.iterdir() if p.is_file() and p.name.endswith(".j2"))
    static_files = sorted(p for p in templates_dir.iterdir() if p.is_file() and p.name.endswith(".tf"))
    lines = [asdict(line) | {"max_size": line.max_size} for line in model.lines]
    context: dict[str, Any] = {
        "plan_id": model.plan_id,
        "tau": model.tau,
        "window": {"valid_from": model.valid_from, "valid_to": model.valid_to},
        "regions": [asdict(r) for r in model.regions],
        "on_demand_lines": [line for line in lines if line["purchase_option"] == "on_demand"],
        "spot_lines": [line for line in lines if line["purchase_option"] == "spot"],
        "skipped_line_ids": list(model.skipped_line_ids),
        "peering": [
            asdict(p) | {"key": p.key, "name": p.name, "requester_alias": p.requester_alias,
                         "accepter_alias": p.accepter_alias,
                         "expected": None if p.expected_requests is None else f"{p.expected_requests:g}"}
            for p in model.peering
        ],
        "peering_source": model.peering_source,
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
    outputs[TFVARS_FILE] = _tfvars(model.regions)
    return publish_dir(outputs, out_dir)


def render_terraform(
    plan: pd.DataFrame | pa.Table,
    manifest: Mapping[str, Any],
    out_dir: Path,
    templates_dir: Path | None = None,
    peering: Sequence[tuple[str, str, float | None]] | None = None,
    peering_source: str | None = None,
) -> list[Path]:
    """Render the plan's first window as a Terraform root module in ``out_dir``.

    ``plan`` follows :data:`pipeline.common.schemas.PLAN`; ``manifest`` must carry the same ``plan_id``
    (``tau`` is echoed in a header comment when present). ``peering`` lists the region pairs to
    peer (default: every pair of regions with lines; see :mod:`pipeline.iac.model`). Templates
    come from ``templates_dir``, else ``$PEERSCALE_TEMPLATES_DIR``, else the repo's
    ``terraform_templates/aws``: every ``*.j2`` is rendered (minus the suffix; names starting with
    ``_`` are partials) and every static ``*.tf`` is copied. A ``terraform.tfvars.json`` with
    default variable values is added.

    Output is replaced as a whole: rendered in memory, written to a temporary sibling directory,
    then swapped in, so a failure leaves the previous render (or nothing) in place.

    Returns the written files, sorted. Raises, before anything is written:
    :class:`UnsafePlanValue` if a plan or manifest value is unsafe to render;
    :class:`UnsafeRenderedOutput` if rendered text looks like it carries credentials;
    ``ValueError`` if the plan is empty or a line is inconsistent across its rows;
    ``FileNotFoundError`` if the templates directory is missing.
    """
    model = build_model(plan, manifest, peering=peering, peering_source=peering_source)
    return render_terraform_model(model, out_dir, templates_dir)
