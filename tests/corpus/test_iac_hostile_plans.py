"""Corpus: `peerscale iac render` on plans carrying hostile values — quotes, `${…}` / `%{…}`
interpolation, shell substitutions, newlines and very long values aimed at Terraform, CloudFormation
or a shell. Each is refused with the field and the reason in one line (exit 2), nothing is
rendered for it, and the output of an earlier good render is left exactly as it was."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from tests import plan_store
from tests.corpus.test_cli_lake_faults import GOOD_LINES, one_line_error, plan_manifest, publish_plan, snapshot
from tests.test_iac import W0, W1, _line_rows

runner = CliRunner()
LONG = "us-east-" + "1" * 10_000


def _rows(plan_id: str, /, **change: Any) -> list[dict[str, Any]]:
    rows = _line_rows(W0, W1, "us-east-1", "m5.large", "on_demand", 2, plan_id=plan_id)
    rows[0].update(change)
    return rows


def _row(**change: Any) -> Callable[[str, str], None]:
    return lambda root, plan_id: publish_plan(root, plan_id, rows=_rows(plan_id, **change))


def _manifest(**change: Any) -> Callable[[str, str], None]:
    return lambda root, plan_id: publish_plan(root, plan_id, rows=_rows(plan_id), manifest={**plan_manifest(plan_id), **change})


def _manifest_edited(**change: Any) -> Callable[[str, str], None]:
    """A good plan whose manifest is edited by hand afterwards (hashes intact, content hostile)."""
    def write(root: str, plan_id: str) -> None:
        publish_plan(root, plan_id, rows=_rows(plan_id))
        path = plan_store.attempt_path(root, plan_id, "manifest.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return write


# case id → (how the hostile plan is written, text the one-line error holds)
CASES: dict[str, tuple[Callable[[str, str], None], str]] = {
    "region-quote": (_row(region='us-east-1"'), "unsafe plan value for 'region': 'us-east-1\"' — use a region name like 'us-east-1'"),
    "region-interpolation": (_row(region='${file("/etc/passwd")}'), "unsafe plan value for 'region': '${file(\"/etc/passwd\")}'"),
    "region-newline-injection": (_row(region='us-east-1"\nresource "aws_instance" "x" {}\n#'),
                                 "unsafe plan value for 'region': 'us-east-1\"\\nresource"),
    "region-very-long": (_row(region=LONG), "unsafe plan value for 'region': 'us-east-1111"),
    "instance-type-shell": (_row(instance_type="m5.large$(touch /tmp/pwned)"),
                            "unsafe plan value for 'instance_type': 'm5.large$(touch /tmp/pwned)'"),
    "instance-type-backtick": (_row(instance_type="m5.`id`"), "unsafe plan value for 'instance_type': 'm5.`id`'"),
    "purchase-option-quote": (_row(purchase_option="spot'"), "unsafe plan value for 'purchase_option': \"spot'\" — must be one of"),
    "line-id-template": (_row(line_id="us-east-1/%{ for x in y }x%{ endfor }"),
                         "unsafe plan value for 'line_id': 'us-east-1/%{ for x in y }x%{ endfor }' — remove '%{'"),
    "resource-type-newline": (_row(resource_type="vcpu\nEOF"), "unsafe plan value for 'resource_type': 'vcpu\\nEOF' — remove newlines"),
    "resource-type-backslash": (_row(resource_type="vcpu\\"), "unsafe plan value for 'resource_type': 'vcpu\\\\' — remove '\\\\'"),
    "count-negative": (_row(count=-3), "unsafe plan value for 'count': -3 — instance counts cannot be negative"),
    "quantity-infinite": (_row(quantity=float("inf")), "unsafe plan value for 'quantity': inf — must be finite and non-negative"),
    "manifest-plan-id-injection": (_manifest_edited(plan_id='plan-b"; rm -rf /'),
                                   "plan plan-b attempt 1: manifest.json names plan 'plan-b\"; rm -rf /'"),
    "manifest-tau-string": (_manifest(tau={"vcpu": '0.9"}'}), "unsafe plan value for 'tau': '0.9\"}' — must be a number in [0, 1]"),
    "row-of-another-plan": (_row(plan_id="plan-z"),
                            "unsafe plan value for 'plan_id': 'plan-z' — every row must carry the manifest's plan_id"),
}
# Every case here behaved on today's main (the validation predates the corpus): regressions that keep
# it so, now also held to the one-line error shape.


@pytest.fixture()
def rendered(tmp_path: Path) -> tuple[str, Path, dict[str, bytes]]:
    """A lake with a good plan already rendered: its output must survive a hostile render untouched."""
    root = str(tmp_path / "lake")
    publish_plan(root, "plan-a", GOOD_LINES)
    result = runner.invoke(app, ["iac", "render", "plan-a", "--lake", root, "--build", str(tmp_path / "build")])
    assert result.exit_code == 0, result.output
    return root, tmp_path / "build", snapshot(tmp_path / "build")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_plan_value_is_refused_before_anything_is_rendered(case: str, rendered, clean_env: None) -> None:
    root, build, before = rendered
    write, expected = CASES[case]
    write(root, "plan-b")
    result = runner.invoke(app, ["iac", "render", "plan-b", "--lake", root, "--build", str(build)], env={"COLUMNS": "200"})
    line = one_line_error(result, 2)
    assert expected in line, line
    assert len(line) < 2_200, "a very long value is cut, not printed whole"
    assert not (build / "iac" / "plan-b").exists()
    assert snapshot(build) == before


@pytest.mark.parametrize("plan_id", ["../plan-a", 'plan-a"${x}', "plan-a\nx", "plan a"])
def test_hostile_plan_id_argument_is_refused(plan_id: str, rendered, clean_env: None) -> None:
    root, build, before = rendered
    result = runner.invoke(app, ["iac", "render", plan_id, "--lake", root, "--build", str(build)])
    line = one_line_error(result, 2)
    assert f"unsafe plan value for 'plan_id': {plan_id!r}" in line, line
    assert snapshot(build) == before


def test_hostile_stack_prefix_is_refused_before_any_aws_call(rendered, clean_env: None) -> None:
    root, build, _ = rendered
    result = runner.invoke(app, ["iac", "apply", "plan-a", "--stack-prefix", 'x"; aws s3 rb --force s3://prod #', "--lake", root,
                                 "--build", str(build)])
    line = one_line_error(result, 2)
    assert "stack_prefix" in line or "stack prefix" in line, line
