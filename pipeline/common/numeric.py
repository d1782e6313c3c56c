"""Named tolerances and units, so that one rule is spelled one way everywhere.

Quantities (vCPU, GiB, Gbit/s) are floats that are summed, scaled and rounded on their way from a
forecast to a plan to a ledger. Two tolerances keep rounding from changing a decision:

* `EPS` when *comparing* sums: a total that equals a limit up to float error still fits.
* `ROUNDING_SLACK` before *rounding* a scaled quantity: 2.000001 units need 2 instances, not 3,
  and 1.999999 units still hold 2.
"""

from __future__ import annotations

import math

EPS = 1e-9
ROUNDING_SLACK = 1e-6

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400
PER_MILLE = 1000  # CP-SAT works in integers: shares in thousandths


def ceil_units(value: float, scale: float = 1.0) -> int:
    """Whole units needed to hold `value` (× `scale`), never rounding float noise up."""
    return math.ceil(value * scale - ROUNDING_SLACK)


def floor_units(value: float, scale: float = 1.0) -> int:
    """Whole units `value` (× `scale`) provides, never rounding float noise down."""
    return math.floor(value * scale + ROUNDING_SLACK)


def exceeds(total: float, limit: float) -> bool:
    """True when `total` is above `limit` by more than float error."""
    return total > limit + EPS
