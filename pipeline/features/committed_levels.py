"""Committed demand as features: what running sessions hold at later times, from the request log.

A peering request declares its duration, so at an origin t the resources that sessions begun
before t still hold at t, t + 1 h, … are known exactly (`sql/committed_demand.sql`). The forecast
stage uses these levels to forecast only what new arrivals add (`pipeline.forecast.committed`).

- `carried_levels`: the level carried into each hour of a history (origin = target = hour).
- `committed_profile`: at origin t, what running sessions still hold at t + k.
- `added_by_lead`: at every origin of a history, what sessions begun from it on add to each
  window ahead (`sql/added_by_lead.sql`): forecast per lead, it completes the committed level
  window by window (pipeline.forecast.windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.features.sessions import session_connection, utc_column

SQL = Path(__file__).resolve().parent / "sql" / "committed_demand.sql"
ADDED_SQL = Path(__file__).resolve().parent / "sql" / "added_by_lead.sql"


def held_at(requests: pa.Table, regions: Sequence[str], points: Sequence[tuple[datetime, datetime]]) -> pd.DataFrame:
    """Resources held at each `target` by sessions begun before its `origin`, per region (wide by resource)."""
    grid = pa.table({"origin": utc_column([o for o, _ in points]), "target": utc_column([t for _, t in points])})
    with session_connection(requests, regions, points=grid) as con:
        frame = con.sql(SQL.read_text()).df()
    for col in ("origin", "target"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def carried_levels(requests: pa.Table, regions: Sequence[str], hours: Sequence[datetime]) -> pd.DataFrame:
    """`hour, region, <resources>`: the level carried into each hour by sessions begun before it."""
    frame = held_at(requests, regions, [(h, h) for h in hours])
    return frame.drop(columns=["target"]).rename(columns={"origin": "hour"})


def committed_profile(requests: pa.Table, regions: Sequence[str], origin: datetime, steps: int,
                      step: timedelta = timedelta(hours=1)) -> pd.DataFrame:
    """`hour, region, <resources>`: what sessions running at `origin` still hold at origin + k·step
    (`hour` is the time held at: a whole hour unless `step` is shorter)."""
    points = [(origin, origin + k * step) for k in range(steps)]
    frame = held_at(requests, regions, points)
    return frame.drop(columns=["origin"]).rename(columns={"target": "hour"})


def added_by_lead(requests: pa.Table, regions: Sequence[str], origins: Sequence[datetime], window_minutes: int, leads: int,
                  data_end: datetime) -> pd.DataFrame:
    """`origin, lead, region, <resources>`: the peak that sessions begun at or after each origin reach in
    window `lead` ([origin + lead·W, origin + (lead + 1)·W)); windows ending after `data_end` are left out."""
    grids = {"origins": pa.table({"origin": utc_column(origins)}), "leads": pa.table({"lead": pa.array(range(leads), pa.int64())})}
    with session_connection(requests, regions, **grids) as con:
        frame = con.sql(ADDED_SQL.read_text(), params={"window_minutes": window_minutes, "data_end": data_end}).df()
    frame["origin"] = pd.to_datetime(frame["origin"], utc=True)
    return frame
