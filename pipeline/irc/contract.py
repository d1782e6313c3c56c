"""The parts of the data contract the request path needs, without importing pyarrow.

`pipeline.common.schemas` is the single source of truth, but it builds pyarrow schemas at import
(~0.2 s). The IRC must import in well under 0.3 s, so these constants are repeated here and a
test (tests/test_irc.py::test_contract_matches_schemas) keeps them identical to the schemas.
"""

from __future__ import annotations

import re

from pipeline.common.numeric import SECONDS_PER_DAY

RESOURCE_TYPES: tuple[str, ...] = ("vcpu", "memory_gib", "storage_gib", "bandwidth_gbps")
PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "critical")
REGION_PATTERN = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
PLAN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# The longest session the peering_requests contract admits (ingest quarantines longer ones, the IRC
# refuses them): a session held "forever" would be carried into every later plan.
MAX_DURATION_S = 30.0 * SECONDS_PER_DAY
# The largest quantity one request may ask for (ingest quarantines larger ones, the IRC refuses them).
MAX_QUANTITY: dict[str, float] = {"vcpu": 1e7, "memory_gib": 1e7, "storage_gib": 1e8, "bandwidth_gbps": 1e6}
