"""peerscale: predictive inter-region resource allocation (ingest → features → forecast → plan → IaC → publish → IRC).

`pipeline.__version__` is the installed distribution's version, read on first use so that
importing the package stays free of metadata look-ups.
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("peerscale")
        except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
