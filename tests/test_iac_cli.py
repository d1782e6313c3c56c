"""`peerscale iac render|check|apply PLAN_ID` against the loopback AWS (moto server), lake on S3."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common.config import Settings
from pipeline.iac.apply import applied_plan_id
from pipeline.iac.providers import CAPACITY_PROVIDER_ENV
from tests.moto_server import TEST_SECRET, aws_env, moto_server, s3_bucket  # noqa: F401
from tests.test_iac_apply import PLAN_A, PLAN_E, _manifest, _publish, _stacks

runner = CliRunner()

# moto's own notices: it skips AWS::AutoScaling::WarmPool (documented limitation) and has no error
# shape for InvalidInstanceType.NotFound (the error still reaches the client with its code).
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*WarmPool.*not supported by moto:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not match an error shape:UserWarning"),
]


@pytest.fixture()
def cli_env(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, list[str], str]:
    monkeypatch.setenv(CAPACITY_PROVIDER_ENV, "ledger")
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=f"s3://{s3_bucket}/lake", build_root=str(tmp_path / "build"))
    _publish(settings, "plan-a", PLAN_A)
    return settings, ["--lake", settings.lake_root, "--build", settings.build_root], f"c{uuid.uuid4().hex[:10]}"


def test_render(cli_env) -> None:
    settings, where, _ = cli_env
    result = runner.invoke(app, ["iac", "render", "plan-a", *where])
    assert result.exit_code == 0, result.output
    root = Path(settings.build_root) / "iac" / "plan-a"
    assert (root / "terraform" / "regions" / "us-east-1" / "main.tf").is_file() and (root / "cloudformation" / "deployment.json").is_file()
    assert "1 pair(s)" in result.output


def test_rendered_files_respect_the_umask(cli_env) -> None:
    """Rendered directories and files get the umask's modes (the staging directory was chmod 0755 whatever the umask)."""
    import os
    import stat

    settings, where, _ = cli_env
    modes: dict[int, set[str]] = {}
    for mask in (0o022, 0o077):
        previous = os.umask(mask)
        try:
            result = runner.invoke(app, ["iac", "render", "plan-a", *where])
        finally:
            os.umask(previous)
        assert result.exit_code == 0, result.output
        root = Path(settings.build_root) / "iac" / "plan-a"
        modes[mask] = {oct(stat.S_IMODE(p.stat().st_mode)) for p in (root / "terraform", *(root / "terraform").iterdir())}
    assert modes == {0o022: {"0o755", "0o644"}, 0o077: {"0o700", "0o600"}}


def test_render_refuses_an_unsafe_plan_id(cli_env) -> None:
    _, where, _ = cli_env
    result = runner.invoke(app, ["iac", "render", 'plan-a"${x}', *where])
    assert result.exit_code == 2
    assert "unsafe plan value" in result.output


def test_apply_is_a_dry_run_by_default_and_needs_confirmation(cli_env) -> None:
    settings, where, prefix = cli_env
    dry = runner.invoke(app, ["iac", "apply", "plan-a", "--stack-prefix", prefix, *where])
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing was changed" in dry.output and "create" in dry.output
    assert _stacks(prefix) == {}

    # --apply without --yes and without a terminal: refused, nothing changes.
    refused = runner.invoke(app, ["iac", "apply", "plan-a", "--apply", "--stack-prefix", prefix, *where])
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert _stacks(prefix) == {} and applied_plan_id(settings) is None

    applied = runner.invoke(app, ["iac", "apply", "plan-a", "--apply", "--yes", "--stack-prefix", prefix, *where])
    assert applied.exit_code == 0, applied.output
    assert "applied plan plan-a" in applied.output
    assert set(_stacks(prefix)) == {"eu-west-1", "us-east-1"}
    assert applied_plan_id(settings) == "plan-a"

    _publish(settings, "plan-e", PLAN_E)
    failed = runner.invoke(app, ["iac", "apply", "plan-e", "--apply", "--yes", "--stack-prefix", prefix, *where])
    assert failed.exit_code == 1
    assert "apply failed" in failed.output and "m5.mega" in failed.output
    assert _manifest(settings, "plan-e")["apply"]["status"] == "apply_failed"
    assert applied_plan_id(settings) == "plan-a"
    for output in (dry.output, refused.output, applied.output, failed.output):
        assert TEST_SECRET not in output


def test_terraform_engine_without_a_binary(cli_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, where, _ = cli_env
    empty = tmp_path / "no-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("PEERSCALE_TERRAFORM", raising=False)
    result = runner.invoke(app, ["iac", "apply", "plan-a", "--engine", "terraform", *where])
    assert result.exit_code == 2
    assert "neither `terraform` nor `tofu`" in result.output


@pytest.mark.long
def test_check(cli_env) -> None:
    from pipeline.iac.check import find_checkov

    if find_checkov() is None:
        pytest.fail("checkov is not installed: run `make tools`")
    _, where, _ = cli_env
    result = runner.invoke(app, ["iac", "check", "plan-a", *where])
    assert result.exit_code == 0, result.output
    assert "terraform" in result.output and "cloudformation" in result.output and "ok" in result.output
