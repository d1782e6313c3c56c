"""Credentials never land in rendered IaC, and unsafe values never reach a template."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from pipeline.iac import UnsafePlanValue, UnsafeRenderedOutput, render_cloudformation, render_terraform, safety
from pipeline.iac.render import render_plan
from tests.moto_server import TEST_SECRET
from tests.test_iac import PLAN_ID, W0, W2, sample_rows
from tests.test_iac_apply import PLAN_A, _publish

MANIFEST = {"plan_id": PLAN_ID, "valid_from": W0.isoformat(), "valid_to": W2.isoformat(), "tau": 0.8}


@pytest.fixture()
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-" + TEST_SECRET[::-1])
    return TEST_SECRET


def test_rendered_files_never_hold_credentials(secret_env: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.common.config import Settings

    caplog.set_level(logging.DEBUG)
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    _publish(settings, "plan-a", PLAN_A)
    render_plan("plan-a", settings)
    files = [p for p in (tmp_path / "build").rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in [*files, *(tmp_path / "lake").rglob("*.json")]:
        text = path.read_text()
        assert secret_env not in text and "AKIAIOSFODNN7EXAMPLE" not in text and "session-token-" not in text
        assert "access_key" not in text and "secret_key" not in text
    assert secret_env not in caplog.text


def test_a_plan_value_equal_to_a_secret_is_refused(secret_env: str, tmp_path: Path) -> None:
    """A value that happens to carry the secret (a corrupt or hostile plan) is never written."""
    rows = sample_rows()
    first = rows[0]["line_id"]
    rows = [{**row, "line_id": f"us-east-1/{secret_env}"} if row["line_id"] == first else row for row in rows]
    for render in (render_terraform, render_cloudformation):
        with pytest.raises(UnsafeRenderedOutput, match="secret environment variable") as excinfo:
            render(pd.DataFrame(rows), MANIFEST, tmp_path / render.__name__)
        assert secret_env not in str(excinfo.value)
        assert not (tmp_path / render.__name__).exists()


def test_access_key_shapes_are_refused(tmp_path: Path) -> None:
    rows = sample_rows()
    first = rows[0]["line_id"]
    rows = [{**row, "line_id": "AKIAABCDEFGHIJKLMNOP"} if row["line_id"] == first else row for row in rows]
    with pytest.raises(UnsafeRenderedOutput):
        render_cloudformation(pd.DataFrame(rows), MANIFEST, tmp_path / "cfn")


def test_redact_hides_secret_environment_values(secret_env: str) -> None:
    text = f"error calling X with key {secret_env} and token session-token-{secret_env[::-1]}"
    redacted = safety.redact(text)
    assert secret_env not in redacted and "session-token-" not in redacted
    assert redacted.count("***") == 2


@pytest.mark.parametrize(
    "check, value",
    [
        (safety.check_region, "us-east-1${x}"),
        (safety.check_region, "us-east-1\n"),
        (safety.check_region, 'us-east-1"'),
        (safety.check_instance_type, "m5.large${x}"),
        (safety.check_instance_type, "m5.large'"),
        (safety.check_plan_id, "plan\nid"),
        (safety.check_plan_id, "plan-${x}"),
        (safety.check_plan_id, 'plan"x'),
        (lambda v: safety.check_tag_value(v, "tag"), "a${b}"),
        (lambda v: safety.check_tag_value(v, "tag"), "a\nb"),
        (lambda v: safety.check_tag_value(v, "tag"), 'a"b'),
        (lambda v: safety.check_tag_value(v, "tag"), "x" * 257),
    ],
)
def test_strict_patterns(check, value: str) -> None:
    with pytest.raises(UnsafePlanValue):
        check(value)


def test_stack_prefix_is_validated(tmp_path: Path) -> None:
    from pipeline.common.config import Settings
    from pipeline.iac.apply import apply_cloudformation

    settings = Settings(source_root=str(tmp_path), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    with pytest.raises(UnsafePlanValue, match="stack_prefix"):
        apply_cloudformation("plan-a", settings, stack_prefix='x"${y}')
