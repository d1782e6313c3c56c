"""Infrastructure as code rendered from a published plan (Terraform for AWS, for now).

Plan values are validated before they reach a template; see :mod:`pipeline.iac.safety`.
"""

from pipeline.iac.safety import UnsafePlanValue, UnsafeRenderedOutput
from pipeline.iac.terraform import render_terraform

__all__ = ["UnsafePlanValue", "UnsafeRenderedOutput", "render_terraform"]
