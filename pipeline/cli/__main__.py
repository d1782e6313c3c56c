"""`python -m pipeline.cli …` runs the `peerscale` command."""

from pipeline.cli.app import main

main()
