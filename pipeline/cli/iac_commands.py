"""`peerscale iac render | check | apply PLAN_ID`: a plan as Terraform and CloudFormation.

Imports stay light at module level (typer, rich): boto3, hcl2 and pyarrow load inside commands so
`peerscale --help` stays fast.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.table import Table

from pipeline.cli import options
from pipeline.cli.options import BuildOption, JsonOption, LakeOption, console, err, print_json, safe, settings, styled

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.common.config import Settings

PlanIdArg = typer.Argument(..., help="Plan to work on, e.g. plan-20260129T0000Z (see `peerscale plan show`).")


class Engine(StrEnum):
    cloudformation = "cloudformation"
    terraform = "terraform"


def fail(message: str, code: int = options.EXIT_USAGE) -> NoReturn:
    """options.fail (which redacts secret values: messages may quote AWS errors)."""
    options.fail(message, code)


def render(plan_id: str = PlanIdArg, lake: str | None = LakeOption, build: str | None = BuildOption) -> None:
    """Render the plan into <build>/iac/PLAN_ID/{terraform,cloudformation}/."""
    from pipeline.iac.render import render_plan
    from pipeline.iac.safety import UnsafePlanValue, UnsafeRenderedOutput

    try:
        out = render_plan(plan_id, settings(lake, build=build))
    except (FileNotFoundError, ValueError, UnsafePlanValue, UnsafeRenderedOutput, OSError) as exc:
        fail(str(exc))
    console.print(styled(f"terraform:      {out['terraform_dir']}"))
    console.print(styled(f"cloudformation: {out['cloudformation_dir']}"))
    console.print(styled(f"peering:        {out['peered_pairs']} pair(s) — {out['peering']}"))


def check(
    plan_id: str = PlanIdArg,
    lake: str | None = LakeOption,
    build: str | None = BuildOption,
    render_first: bool = typer.Option(True, "--render/--no-render", help="Render the plan before checking it."),
    allow_failed_checks: bool = typer.Option(False, help="Report failed checkov checks without failing (parse errors still fail)."),
    json_out: bool = JsonOption,
) -> None:
    """Parse every rendered file, then run checkov (--skip-download) on the Terraform and CloudFormation output."""
    from pipeline.iac.check import CheckovMissing, check_rendered
    from pipeline.iac.render import iac_dir, render_plan

    config = settings(lake, build=build)
    try:
        if render_first:
            render_plan(plan_id, config)
        report = check_rendered(iac_dir(config, plan_id))
    except CheckovMissing as exc:
        fail(str(exc))
    except (FileNotFoundError, ValueError, OSError) as exc:
        fail(str(exc))
    report.allow_failed_checks = allow_failed_checks
    if json_out:
        print_json(report.to_dict(), indent=2)
    else:
        _print_check(report)
    if not report.ok:
        raise typer.Exit(1)
    (err if json_out else console).print(styled(("ok", "green")))


def _print_check(report: Any) -> None:
    console.print(styled(f"parsed {len(report.parsed_files)} file(s) in {report.directory}"))
    for problem in report.parse_errors + report.credential_errors:
        console.print(styled(("✗", "red"), f" {problem}"))
    table = Table(title="checkov", title_justify="left")
    for col in ("framework", "version", "passed", "failed", "skipped", "parsing errors"):
        table.add_column(col, justify="left" if col in ("framework", "version") else "right")
    for run in report.checkov:
        table.add_row(safe(run.framework), safe(run.version or "?"), str(run.passed), str(run.failed), str(run.skipped),
                      str(run.parsing_errors))
    console.print(table)
    for run in report.checkov:
        for failed in run.failed_checks:
            console.print(styled(("✗", "red"), f" {failed['check_id']} {failed['resource']} ({failed['file']}): {failed['name']}"))
        for line in run.errors:
            console.print(styled(("✗", "red"), f" {line}"))
    _print_linters(report)


def _print_linters(report: Any) -> None:
    """cfn-lint findings and terraform fmt/validate results (each only when the tool ran)."""
    if report.cfn_lint_ran:
        failing = [f for f in report.cfn_lint if f["level"] in ("Error", "Warning")]
        console.print(styled(f"cfn-lint: {len(failing)} error(s)/warning(s), {len(report.cfn_lint) - len(failing)} note(s)"))
        for f in report.cfn_lint:
            console.print(styled(("✗" if f in failing else "·", "red" if f in failing else "dim"),
                                 f" {f['rule']} {f['file']}:{f['line']} {f['message']}"))
    if report.terraform:
        fmt, validate = report.terraform.get("fmt", []), report.terraform.get("validate", {})
        console.print(styled(f"terraform fmt -check: {'ok' if not fmt else ', '.join(fmt)} · validate: "
                             f"{'ok' if not validate else str(len(validate)) + ' root(s) invalid'}"))
        for root, errors in validate.items():
            for error in errors:
                console.print(styled(("✗", "red"), f" {root}: {error[:500]}"))


def apply(
    plan_id: str = PlanIdArg,
    engine: Engine = typer.Option(Engine.cloudformation, help="cloudformation (boto3 change sets) or terraform (needs terraform or tofu)."),
    do_apply: bool = typer.Option(False, "--apply", help="Change infrastructure. Without it this is a dry run."),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --apply: do not ask for confirmation."),
    stack_prefix: str = typer.Option("peerscale", help="CloudFormation stacks are named <prefix>-<region>."),
    lake: str | None = LakeOption,
    build: str | None = BuildOption,
) -> None:
    """Show what applying the plan would change (dry run, the default); with --apply (and --yes or a
    confirmation) apply it. Records the outcome in plans/plan_id=<id>/apply.json; plans/APPLIED moves on success only."""
    from pipeline.iac.apply import ApplyFailed
    from pipeline.iac.safety import UnsafePlanValue

    config = settings(lake, build=build)
    status = console.status(styled(f"{engine.value}: planning"))

    def progress(message: str) -> None:
        status.update(styled(f"{engine.value}: {message}"))

    try:
        with status:
            preview = _run(engine, plan_id, config, execute=False, stack_prefix=stack_prefix, progress=progress)
        _print_result(preview)
        if not do_apply:
            console.print(styled("dry run: nothing was changed. Re-run with ", ("--apply", "bold"), " to apply."))
            return
        if not yes:
            if not sys.stdin.isatty():
                fail("refusing to apply without confirmation: pass --yes (no terminal to ask on)")
            if not typer.confirm(f"Apply plan {plan_id} with {engine.value}? This changes infrastructure"):
                console.print(styled("aborted: nothing was changed"))
                raise typer.Exit(1)
        with status:
            result = _run(engine, plan_id, config, execute=True, stack_prefix=stack_prefix, progress=progress)
    except typer.Exit:
        raise
    except ApplyFailed as exc:
        fail(f"apply failed (recorded in the plan's apply.json; plans/APPLIED unchanged): {exc}", code=1)
    except (FileNotFoundError, ValueError, UnsafePlanValue, OSError, RuntimeError) as exc:
        fail(str(exc))
    _print_result(result)
    console.print(styled(("applied", "green"), " plan ", (plan_id, "bold"), f"; plans/APPLIED → {plan_id}"))


def _run(engine: Engine, plan_id: str, config: Settings, *, execute: bool, stack_prefix: str, progress: Callable[[str], None]) -> Any:
    """Dry run or apply with the chosen engine; returns its ApplyResult."""
    if engine is Engine.terraform:
        from pipeline.iac.tfapply import apply_terraform

        return apply_terraform(plan_id, config, execute=execute, progress=progress)
    from pipeline.iac.apply import apply_cloudformation

    return apply_cloudformation(plan_id, config, execute=execute, stack_prefix=stack_prefix, progress=progress)


def _print_result(result: Any) -> None:
    if result.engine == "terraform":
        counts = result.terraform_plan.get("counts", {})
        console.print(styled("terraform plan: " + ", ".join(f"{k} {v}" for k, v in counts.items())))
        for root, summary in result.terraform_plan.get("roots", {}).items():
            for change in summary.get("changes", [])[:50]:
                console.print(styled(f"  {change['action']:>8} {root}: {change['address']}"))
        return
    table = Table(title=safe(f"{'preview' if result.dry_run else 'applied'}: plan {result.plan_id}"), title_justify="left")
    for col in ("region", "stack", "action", "add", "modify", "remove", "status"):
        table.add_column(col, justify="right" if col in ("add", "modify", "remove") else "left")
    for region, stack in sorted(result.stacks.items()):
        table.add_row(safe(region), safe(stack.stack_name), safe(stack.action), str(stack.changes.get("Add", 0)),
                      str(stack.changes.get("Modify", 0)), str(stack.changes.get("Remove", 0)), safe(stack.status))
    console.print(table)
    peering = result.peering
    if peering:
        console.print(styled(f"peering ({peering.get('source')}): created {peering.get('created', 0)}, "
                             f"removed {peering.get('removed', 0)}, unchanged {peering.get('unchanged', 0)}"))
    reservations = result.capacity_reservations
    if reservations:
        console.print(styled(f"capacity reservations via {reservations.get('provider')}: created {reservations.get('created', 0)}, "
                             f"modified {reservations.get('modified', 0)}, removed {reservations.get('removed', 0)}, "
                             f"unchanged {reservations.get('unchanged', 0)}"))
