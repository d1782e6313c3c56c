"""The `peerscale` command line: `app` builds the root and registers every group; one
`*_commands.py` module per command group; `options` holds what they share."""
