"""The Terraform applier: the command sequence, the manifest summary, dry run vs apply, failures.

Terraform and OpenTofu cannot be installed on this project's machines (no registry ships them), so
these tests put a stand-in ``terraform`` on PATH: a small script that records its arguments,
writes the saved plan file, and for ``show -json`` prints a plan in Terraform's JSON format built
from the ``resource`` blocks of the rendered module. It stands in for the binary only; everything
of ours (rendering, command sequence, state location, manifest, APPLIED, redaction) is real.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from pipeline.common.config import Settings
from pipeline.iac.apply import ApplyFailed, applied_plan_id
from pipeline.iac.tfapply import TerraformNotInstalled, apply_terraform, find_terraform
from tests.moto_server import TEST_SECRET
from tests.test_iac_apply import PLAN_A, _manifest, _publish

FAKE_TERRAFORM = r'''#!{python}
"""Stand-in for terraform: records argv, fakes plan/show/apply."""
import json, os, pathlib, re, sys
log = pathlib.Path(os.environ["FAKE_TF_LOG"])
with log.open("a") as handle:
    handle.write(json.dumps({{"args": sys.argv[1:], "cwd": os.getcwd(), "data_dir": os.environ.get("TF_DATA_DIR"),
                              "automation": os.environ.get("TF_IN_AUTOMATION")}}) + "\n")
command = sys.argv[1]
if command == "plan":
    out = next(a for a in sys.argv if a.startswith("-out="))[5:]
    pathlib.Path(out).write_text("saved plan")
elif command == "show":
    assert sys.argv[-1] == "tfplan" and pathlib.Path("tfplan").exists()
    addresses = []
    for tf in sorted(pathlib.Path(".").glob("*.tf")):
        addresses += [f"{{t}}.{{n}}" for t, n in re.findall(r'^resource "([a-z0-9_]+)" "([a-z0-9_]+)"', tf.read_text(), re.M)]
    changes = [{{"address": a, "change": {{"actions": ["create"]}}}} for a in addresses]
    changes.append({{"address": "data.aws_ssm_parameter.x", "change": {{"actions": ["read"]}}}})
    print(json.dumps({{"format_version": "1.2", "terraform_version": "1.9.8", "resource_changes": changes}}))
elif command == "apply":
    if os.environ.get("FAKE_TF_FAIL"):
        print("Error: creating EC2 Capacity Reservation: InsufficientInstanceCapacity (key "
              + os.environ.get("AWS_SECRET_ACCESS_KEY", "") + ")", file=sys.stderr)
        sys.exit(1)
    assert sys.argv[-1] == "tfplan"
'''


@pytest.fixture()
def fake_terraform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "terraform"
    script.write_text(FAKE_TERRAFORM.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "terraform-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TF_LOG", str(log))
    monkeypatch.delenv("PEERSCALE_TERRAFORM", raising=False)
    monkeypatch.delenv("PEERSCALE_TF_STATE", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    return log


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    _publish(settings, "plan-a", PLAN_A)
    return settings


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_without_terraform_or_tofu_it_says_so(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("PEERSCALE_TERRAFORM", raising=False)
    assert find_terraform() is None
    with pytest.raises(TerraformNotInstalled) as excinfo:
        apply_terraform("plan-a", settings)
    message = str(excinfo.value)
    assert "neither `terraform` nor `tofu`" in message and "--engine cloudformation" in message


def test_dry_run_plans_and_records_the_summary(settings: Settings, fake_terraform: Path) -> None:
    result = apply_terraform("plan-a", settings)
    assert result.status == "planned" and result.dry_run
    calls = _calls(fake_terraform)
    assert [c["args"][0] for c in calls] == ["init", "plan", "show"]
    tf_dir = str(Path(settings.build_root) / "iac" / "plan-a" / "terraform")
    assert all(c["cwd"] == tf_dir and c["automation"] == "1" for c in calls)
    state = Path(settings.build_root) / "iac" / "terraform.tfstate"
    assert f"-backend-config=path={state.absolute()}" in calls[0]["args"]  # state outlives re-renders
    assert calls[1]["args"][-1] == "-out=tfplan"
    assert calls[2]["args"] == ["show", "-json", "-no-color", "tfplan"]
    assert calls[0]["data_dir"] == str(Path(settings.build_root) / "iac" / ".terraform")
    summary = _manifest(settings, "plan-a")["terraform_plan"]
    counts = summary["counts"]
    # 2 regions x 2 lines: 4 launch templates, 4 groups, 4 schedules, 2 reservations; 2 gateways, 1 peering + accepter.
    assert counts["create"] == 4 + 4 + 4 + 2 + 2 + 2
    assert counts["read"] == 1 and counts["delete"] == 0
    assert summary["terraform_version"] == "1.9.8"
    assert "apply" not in _manifest(settings, "plan-a")
    assert applied_plan_id(settings) is None


def test_apply_runs_the_saved_plan(settings: Settings, fake_terraform: Path) -> None:
    result = apply_terraform("plan-a", settings, execute=True)
    assert result.status == "applied"
    calls = _calls(fake_terraform)
    assert [c["args"][0] for c in calls] == ["init", "plan", "show", "apply"]
    assert calls[-1]["args"][-1] == "tfplan"  # exactly the plan that was shown
    manifest = _manifest(settings, "plan-a")
    assert manifest["apply"]["status"] == "applied" and manifest["apply"]["engine"] == "terraform"
    assert manifest["status"] == "published"
    assert applied_plan_id(settings) == "plan-a"


def test_failed_apply_is_recorded_and_redacted(settings: Settings, fake_terraform: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_terraform("plan-a", settings, execute=True)
    _publish(settings, "plan-b", PLAN_A)
    monkeypatch.setenv("FAKE_TF_FAIL", "1")
    with pytest.raises(ApplyFailed) as excinfo:
        apply_terraform("plan-b", settings, execute=True)
    assert "InsufficientInstanceCapacity" in str(excinfo.value)
    assert TEST_SECRET not in str(excinfo.value)
    failed = _manifest(settings, "plan-b")["apply"]
    assert failed["status"] == "apply_failed" and "InsufficientInstanceCapacity" in failed["error"]
    assert TEST_SECRET not in json.dumps(_manifest(settings, "plan-b"))
    assert "***" in failed["error"]  # the secret the tool printed was redacted
    assert applied_plan_id(settings) == "plan-a"
