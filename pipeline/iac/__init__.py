"""Infrastructure as code from a plan: render (Terraform, CloudFormation), check, apply.

- :mod:`pipeline.iac.model` — what the plan asks for, validated (shared by every renderer)
- :mod:`pipeline.iac.terraform`, :mod:`pipeline.iac.cloudformation` — the renderers
- :mod:`pipeline.iac.render` — render a plan from the lake into ``<build>/iac/<plan_id>/``
- :mod:`pipeline.iac.check` — parse every file, run checkov
- :mod:`pipeline.iac.apply` (CloudFormation change sets), :mod:`pipeline.iac.tfapply` (Terraform)
- :mod:`pipeline.iac.providers` — capacity reservations and cross-region peering via EC2
- :mod:`pipeline.iac.safety` — validation of every templated value, credential guards

Plan values are validated before they reach a template. Names below load on first use, so that
``import pipeline.cli.iac`` (the CLI) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "UnsafePlanValue": "pipeline.iac.safety",
    "UnsafeRenderedOutput": "pipeline.iac.safety",
    "render_terraform": "pipeline.iac.terraform",
    "render_cloudformation": "pipeline.iac.cloudformation",
    "render_plan": "pipeline.iac.render",
    "build_model": "pipeline.iac.model",
    "apply_cloudformation": "pipeline.iac.apply",
    "apply_terraform": "pipeline.iac.tfapply",
    "check_rendered": "pipeline.iac.check",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.iac' has no attribute {name!r}")
