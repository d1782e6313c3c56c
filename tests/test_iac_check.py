"""Static checks of rendered IaC: every file parses, checkov (pinned, in .venv-tools) passes, and
parsing errors fail the check. ``make test`` installs checkov first (``make tools``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.iac import render_cloudformation, render_terraform
from pipeline.iac.check import check_rendered, find_checkov
from tests.test_iac import PLAN_ID, W0, W2, sample_rows


@pytest.fixture(scope="module")
def checkov() -> str:
    found = find_checkov()
    if found is None:
        pytest.fail("checkov is not installed: run `make tools` (pinned in requirements-tools.txt, into .venv-tools/)")
    return found


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    manifest = {"plan_id": PLAN_ID, "valid_from": W0.isoformat(), "valid_to": W2.isoformat(), "tau": 0.8}
    root = tmp_path / "iac" / PLAN_ID
    render_terraform(pd.DataFrame(sample_rows()), manifest, root / "terraform")
    render_cloudformation(pd.DataFrame(sample_rows()), manifest, root / "cloudformation")
    return root


def test_rendered_sample_plan_passes(checkov: str, rendered: Path) -> None:
    report = check_rendered(rendered)
    assert report.parse_errors == [] and report.credential_errors == []
    assert {"terraform/regions/us-east-1/main.tf", "terraform/regions/us-east-1/plan.auto.tfvars.json",
            "terraform/peering/eu_west_1__us_east_1/main.tf", "cloudformation/deployment.json"} <= set(report.parsed_files)
    assert report.cfn_lint_ran and report.cfn_lint == []
    if report.terraform:  # a terraform binary is installed: fmt -check and validate ran on every root
        assert report.terraform == {"fmt": [], "validate": {}}
    runs = {run.framework: run for run in report.checkov}
    assert set(runs) == {"terraform", "cloudformation"}
    for run in runs.values():
        assert run.version and run.passed > 0
        assert run.parsing_errors == 0 and run.errors == []
        assert run.failed == 0, run.failed_checks
    assert report.ok


@pytest.mark.long
def test_parse_errors_and_failed_checks_fail_the_check(checkov: str, rendered: Path) -> None:
    (rendered / "terraform" / "regions" / "us-east-1" / "broken.tf").write_text('resource "aws_instance" "x" {\n  ami = \n')
    (rendered / "cloudformation" / "broken.template.json").write_text(
        '{"AWSTemplateFormatVersion": "2010-09-09", "Resources": {\n'
    )
    (rendered / "terraform" / "regions" / "us-east-1" / "extra.tf").write_text(
        'resource "aws_ebs_volume" "plain" {\n  availability_zone = "us-east-1a"\n  size              = 10\n}\n'
    )
    report = check_rendered(rendered)
    assert not report.ok
    assert [e.split(":")[0] for e in report.parse_errors] == [
        "cloudformation/broken.template.json", "terraform/regions/us-east-1/broken.tf"]
    runs = {run.framework: run for run in report.checkov}
    # checkov reports the parse errors too (while exiting 0): they are counted, never ignored.
    assert runs["terraform"].parsing_errors == 1
    assert runs["cloudformation"].parsing_errors == 1
    assert any(c["resource"] == "aws_ebs_volume.plain" for c in runs["terraform"].failed_checks)
    # Failed checks alone can be allowed; parse errors cannot.
    report.allow_failed_checks = True
    assert not report.ok
    (rendered / "terraform" / "regions" / "us-east-1" / "broken.tf").unlink()
    (rendered / "cloudformation" / "broken.template.json").unlink()
    report = check_rendered(rendered, allow_failed_checks=True)
    assert report.ok and next(r for r in report.checkov if r.framework == "terraform").failed >= 1


@pytest.mark.long
def test_cfn_lint_findings_fail_the_check(checkov: str, rendered: Path) -> None:
    import json

    template = rendered / "cloudformation" / "us-east-1.template.json"
    body = json.loads(template.read_text())
    body["Resources"]["Bogus"] = {"Type": "AWS::EC2::Instance", "Properties": {"NoSuchProperty": 1}}
    template.write_text(json.dumps(body))
    report = check_rendered(rendered)
    assert not report.ok
    assert any(f["file"] == "us-east-1.template.json" and f["level"] == "Error" for f in report.cfn_lint), report.cfn_lint


@pytest.mark.long
def test_published_plan_of_the_pipeline_passes(checkov: str, published_root: Path) -> None:
    """The real plan of the end-to-end run, as the pipeline rendered it (peering from the forecast)."""
    plan_dir = published_root / "build" / "iac" / "plan-20260129T0000Z"
    summary = (plan_dir / "terraform" / "plan.json").read_text()
    assert "pair forecast hourly-20260129T0000Z" in summary
    report = check_rendered(plan_dir)
    assert report.ok, report.to_dict()
    assert len([f for f in report.parsed_files if f.startswith("cloudformation/")]) == 7  # 6 regions + deployment
