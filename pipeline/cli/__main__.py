"""`python -m pipeline.cli …` runs the `peerscale` command."""

from pipeline.cli.app import app

app(prog_name="peerscale")
