"""Static checks of a rendered plan: every file parses, and checkov finds nothing.

1. Every ``*.tf`` parses with python-hcl2 and every ``*.json`` with the json module (the file
   names of failures are reported).
2. checkov (``--skip-download``: no network) runs on ``terraform/`` with the terraform framework
   and on ``cloudformation/`` with the cloudformation framework. A checkov *parsing error* always
   fails the check; a failed checkov check fails it too unless ``allow_failed_checks``.
3. cfn-lint (installed with ``moto[server]``) lints every ``cloudformation/*.template.json``;
   any error or warning fails the check (informational findings are listed, not failing).
4. ``terraform fmt -check`` and ``terraform validate`` (every root, no backend) when a terraform
   binary is installed; ``PEERSCALE_TF_PLUGIN_DIR`` lets ``init`` work offline.
5. No rendered file contains credential-like text or the value of a secret environment variable.

checkov is not installed in the project's venv (its pins would downgrade boto3, botocore and
packaging): ``make tools`` installs the pinned version from ``requirements-tools.txt`` into
``.venv-tools/``. It is found via ``$PEERSCALE_CHECKOV``, then ``checkov`` on PATH, then
``.venv-tools/bin/checkov``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common.config import REPO_ROOT
from pipeline.iac.safety import SECRET_ENV_VARS, UnsafeRenderedOutput, assert_no_credentials, redact

__all__ = ["CHECKOV_ENV", "CheckReport", "CheckovMissing", "CheckovRun", "check_rendered", "find_checkov", "parse_rendered"]

CHECKOV_ENV = "PEERSCALE_CHECKOV"
TOOLS_CHECKOV = REPO_ROOT / ".venv-tools" / "bin" / "checkov"
FRAMEWORKS = {"terraform": "terraform", "cloudformation": "cloudformation"}


class CheckovMissing(RuntimeError):
    """checkov is not installed where peerscale looks for it."""


@dataclass
class CheckovRun:
    framework: str
    directory: str
    version: str | None = None
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    parsing_errors: int = 0
    resource_count: int = 0
    failed_checks: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # checkov's own error lines (parse failures)


@dataclass
class CheckReport:
    directory: str
    parsed_files: list[str] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    credential_errors: list[str] = field(default_factory=list)
    checkov: list[CheckovRun] = field(default_factory=list)
    cfn_lint: list[dict[str, str]] = field(default_factory=list)  # level, rule, file, line, message
    cfn_lint_ran: bool = False
    terraform: dict[str, Any] = field(default_factory=dict)  # {"fmt": [...], "validate": {root: [...]}} when run
    allow_failed_checks: bool = False

    @property
    def ok(self) -> bool:
        if self.parse_errors or self.credential_errors:
            return False
        if any(f["level"] in ("Error", "Warning") for f in self.cfn_lint):
            return False
        if self.terraform and (self.terraform.get("fmt") or self.terraform.get("validate")):
            return False
        return not any(
            run.parsing_errors or run.errors or (run.failed and not self.allow_failed_checks) for run in self.checkov
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def find_checkov() -> str | None:
    override = os.environ.get(CHECKOV_ENV, "").strip()
    if override:
        return shutil.which(override) or (override if Path(override).is_file() else None)
    found = shutil.which("checkov")
    if found:
        return found
    return str(TOOLS_CHECKOV) if TOOLS_CHECKOV.is_file() else None


CFN_LINT_ENV = "PEERSCALE_CFN_LINT"


def find_cfn_lint() -> str | None:
    """``$PEERSCALE_CFN_LINT``, else ``cfn-lint`` next to this Python (the venv), else on PATH."""
    import sys

    override = os.environ.get(CFN_LINT_ENV, "").strip()
    if override:
        return shutil.which(override) or (override if Path(override).is_file() else None)
    beside = Path(sys.executable).with_name("cfn-lint")
    return str(beside) if beside.is_file() else shutil.which("cfn-lint")


def run_cfn_lint(templates: list[Path], cfn_lint: str, timeout_s: float = 600) -> list[dict[str, str]]:
    """cfn-lint's findings on ``templates`` (JSON output); a crash is reported as one Error finding."""
    done = subprocess.run([cfn_lint, "--format", "json", "--", *map(str, templates)], capture_output=True, text=True,
                          timeout=timeout_s, env=_checkov_env())
    try:
        found = json.loads(done.stdout or "[]")
    except ValueError:
        return [{"level": "Error", "rule": "cfn-lint", "file": "", "line": "",
                 "message": f"cfn-lint exited {done.returncode}: {redact((done.stderr or done.stdout)[-500:])}"}]
    return [{"level": str(f.get("Level")), "rule": str((f.get("Rule") or {}).get("Id")), "file": Path(str(f.get("Filename"))).name,
             "line": str(((f.get("Location") or {}).get("Start") or {}).get("LineNumber", "")), "message": str(f.get("Message"))}
            for f in found]


def parse_rendered(directory: Path) -> tuple[list[str], list[str]]:
    """Parse every rendered file; returns (parsed file names, 'file: error' strings)."""
    import hcl2

    parsed, errors = [], []
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        name = str(path.relative_to(directory))
        if path.name.startswith("."):
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".tf":
                hcl2.loads(text)
            elif path.suffix == ".json":
                json.loads(text)
            else:
                continue
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            continue
        parsed.append(name)
    return parsed, errors


def _checkov_env() -> dict[str, str]:
    """checkov needs no cloud credentials: it never gets them."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV_VARS and not k.startswith("TF_TOKEN_")}
    env.update(BC_SKIP_MAPPING="TRUE", CHECKOV_EXPERIMENTAL_IMAGE_REFERENCING="False", LOG_LEVEL="ERROR")
    return env


def run_checkov(directory: Path, frameworks: dict[str, str], checkov: str, timeout_s: float = 600) -> list[CheckovRun]:
    """One ``checkov -d DIR --framework F1 F2 --skip-download`` run (JSON output), one summary per
    framework. ``frameworks`` maps a sub-directory of ``directory`` to the framework checking it."""
    command = [checkov, "-d", str(directory), "--framework", *frameworks.values(), "--skip-download", "--quiet",
               "--compact", "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=_checkov_env())
    runs = {fw: CheckovRun(framework=fw, directory=str(directory / sub)) for sub, fw in frameworks.items()}
    first = next(iter(runs.values()))
    for line in (done.stderr or "").splitlines():
        if "[ERROR]" in line or "error parsing" in line.lower():
            owner = next((runs[fw] for sub, fw in frameworks.items() if f"/{sub}/" in line), first)
            owner.errors.append(redact(line.strip()))
    if done.returncode not in (0, 1):
        first.errors.append(f"checkov exited {done.returncode}: {redact((done.stderr or '').strip())[-1000:]}")
        return list(runs.values())
    try:
        payload = json.loads(done.stdout or "{}")
    except ValueError:
        first.errors.append(f"checkov printed no JSON: {redact(done.stdout[:500])}")
        return list(runs.values())
    for report in payload if isinstance(payload, list) else [payload]:
        run = runs.get(str(report.get("check_type")))
        if run is None:
            continue
        summary = report.get("summary", {})
        run.version = summary.get("checkov_version", run.version)
        for key in ("passed", "failed", "skipped", "parsing_errors", "resource_count"):
            setattr(run, key, getattr(run, key) + int(summary.get(key, 0) or 0))
        for check in (report.get("results") or {}).get("failed_checks", []) or []:
            run.failed_checks.append({
                "check_id": str(check.get("check_id")),
                "name": str(check.get("check_name")),
                "resource": str(check.get("resource")),
                "file": str(check.get("file_path")),
            })
    return list(runs.values())


def check_rendered(directory: Path, require_checkov: bool = True, allow_failed_checks: bool = False) -> CheckReport:
    """Check ``<build>/iac/<plan_id>`` (its ``terraform/`` and ``cloudformation/``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: render the plan first (peerscale iac render PLAN_ID)")
    report = CheckReport(directory=str(directory), allow_failed_checks=allow_failed_checks)
    report.parsed_files, report.parse_errors = parse_rendered(directory)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            assert_no_credentials(path.read_text(encoding="utf-8", errors="replace"), path.name)
        except UnsafeRenderedOutput as exc:
            report.credential_errors.append(str(exc))
    templates = sorted((directory / "cloudformation").glob("*.template.json"))
    cfn_lint = find_cfn_lint()
    if templates and cfn_lint:
        report.cfn_lint, report.cfn_lint_ran = run_cfn_lint(templates, cfn_lint), True
    if (directory / "terraform").is_dir():
        from pipeline.iac.tfapply import find_terraform, terraform_checks

        if find_terraform():
            report.terraform = terraform_checks(directory / "terraform")
    checkov = find_checkov()
    if checkov is None:
        if require_checkov:
            raise CheckovMissing(
                "checkov not found: run `make tools` (installs the pinned checkov into .venv-tools/), put checkov on "
                f"PATH, or set {CHECKOV_ENV}; never pip-install it into .venv (it downgrades boto3/botocore)"
            )
        return report
    present = {sub: fw for sub, fw in FRAMEWORKS.items() if (directory / sub).is_dir()}
    if present:
        report.checkov = run_checkov(directory, present, checkov)
    return report
