"""The `peerscale` command line: the root app, and the one place every command is registered.

Each command group lives in its own `*_commands.py` module as plain functions; this module only
wires them into Typer, so `peerscale --help` and this file list the same things. Only typer and
rich are imported at module level: pandas, Airflow, the solvers and the models load inside the
command that needs them, so `peerscale --help` and `peerscale irc request` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from pipeline.cli import (
    backtest_commands,
    forecast_commands,
    iac_commands,
    irc_commands,
    models_commands,
    plan_commands,
    run_commands,
    samples_commands,
    ui_commands,
)
from pipeline.cli.guard import EXIT_CODES_EPILOG, GuardedGroup
from pipeline.cli.options import DEBUG_ENV

app = typer.Typer(
    help="peerscale — forecast inter-region peering demand, pre-allocate capacity, serve requests fast.",
    no_args_is_help=True,
    cls=GuardedGroup,  # every command's failure becomes a one-line error and an exit code
    epilog=EXIT_CODES_EPILOG,
)


def _print_version(value: bool) -> None:
    if value:
        from pipeline import __version__

        typer.echo(f"peerscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."),
    debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV, help="Print the traceback of a failure as well as its one-line error."),
) -> None:
    """peerscale — forecast inter-region peering demand, pre-allocate capacity, serve requests fast."""


def group(help: str, commands: dict[str, Callable[..., Any]], *, default: Callable[..., Any] | None = None,
          cls: type[typer.core.TyperGroup] | None = None) -> typer.Typer:
    """A command group; `default` runs when no subcommand is named (`peerscale forecast --input …`)."""
    sub = typer.Typer(help=help, no_args_is_help=True, invoke_without_command=default is not None, cls=cls,
                      epilog=EXIT_CODES_EPILOG)
    if default is not None:
        sub.callback(epilog=EXIT_CODES_EPILOG)(default)
    for name, command in commands.items():
        sub.command(name, epilog=EXIT_CODES_EPILOG)(command)
    return sub


# -- every command, in the order `peerscale --help` lists them -----------------------------
app.command("run", epilog=EXIT_CODES_EPILOG)(run_commands.run)
app.command("ingest", epilog=EXIT_CODES_EPILOG)(run_commands.ingest)
app.command("backfill", epilog=EXIT_CODES_EPILOG)(run_commands.backfill)
app.command("report", epilog=EXIT_CODES_EPILOG)(run_commands.report)
app.command("backtest", epilog=EXIT_CODES_EPILOG)(backtest_commands.backtest)
app.command("train", epilog=EXIT_CODES_EPILOG)(models_commands.train)
app.command("ui", epilog=EXIT_CODES_EPILOG)(ui_commands.ui)
app.add_typer(group("Inspect published plans.", {
    "show": plan_commands.show,
    "explain": plan_commands.explain,
    "diff": plan_commands.diff,
}), name="plan")
app.add_typer(group("The Inter-Region Coordinator: send peering requests through the latest plan.", {
    "request": irc_commands.request,
    "shadow": irc_commands.shadow,
    "replay": irc_commands.replay,
    "serve": irc_commands.serve,
    "health": irc_commands.health,
}), name="irc")
app.add_typer(group("Forecast a long-format file (peerscale forecast --input …), or summarise a pipeline forecast run.", {
    "summary": forecast_commands.summary,
}, default=forecast_commands.forecast, cls=forecast_commands.LevelsGroup), name="forecast")
app.add_typer(group("Infrastructure as code: render a plan as Terraform and CloudFormation, check it, apply it.", {
    "render": iac_commands.render,
    "check": iac_commands.check,
    "apply": iac_commands.apply,
}), name="iac")
app.add_typer(group("The versioned model registry daily training writes and hourly runs score with.", {
    "list": models_commands.list_,
    "show": models_commands.show,
    "promote": models_commands.promote,
    "diff": models_commands.diff,
}), name="models")
app.add_typer(group("Sample source data in the documented formats.", {
    "generate": samples_commands.generate,
}), name="samples")


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="peerscale")


if __name__ == "__main__":  # pragma: no cover
    main()
