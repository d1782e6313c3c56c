"""The `peerscale` command line: one module per command group, all registered in `app`."""
