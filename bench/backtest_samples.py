"""Walk-forward backtest on the sample data: default engine vs seasonal naive, region demand.

    .venv/bin/python bench/backtest_samples.py [--lake DIR] [--origins 6]

For each origin (daily, over the last 7 days of data_samples, each with 48 h of actuals after
it) the engine fits strictly on the 14 days before the origin; every region series' τ-quantile
(τ per resource from the cost model) is scored by pinball loss against the actual concurrent
demand. Prints the per-variant table and, last, one JSON line. Without --lake the samples are
ingested into a temporary lake first (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", help="A lake that already holds the samples (2026-01-01 .. 2026-02-05).")
    parser.add_argument("--origins", type=int, default=6)
    parser.add_argument("--models", default="auto")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from pipeline.common.config import Settings
    from pipeline.forecast.cross_validation import summarize, walk_forward
    from pipeline.run import backfill_ingest

    samples = REPO / "data_samples"
    lake_root = args.lake
    if not lake_root:
        lake_root = str(Path(tempfile.mkdtemp(prefix="peerscale-backtest-")) / "lake")
        t0 = time.perf_counter()
        backfill_ingest("2026-01-01T00:00", "2026-02-05T00:00", Settings(source_root=str(samples), lake_root=lake_root))
        print(f"ingested the samples into {lake_root} in {time.perf_counter() - t0:.0f} s")
    settings = Settings(source_root=str(samples), lake_root=lake_root)
    last_origin = datetime(2026, 2, 3, tzinfo=UTC)  # 48 h of actuals before the data ends (02-05)
    origins = [last_origin - timedelta(days=k) for k in range(args.origins)][::-1]
    rows = walk_forward(settings, origins, 48, args.models.split(","))
    table = summarize(rows)
    print(f"origins: {[o.strftime('%Y-%m-%dT%H:%MZ') for o in origins]}; region series × 48 h; pinball at each resource's τ")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    per_resource = rows.assign(scaled=rows["pinball"] / rows["mean_actual"].where(rows["mean_actual"] > 0, 1.0)) \
        .pivot_table(index="resource", columns="variant", values="scaled", aggfunc="mean")
    print(per_resource.to_string(float_format=lambda v: f"{v:.4f}"))
    engine = table.loc["engine"]
    naive = table.loc[[v for v in table.index if v.startswith("seasonal_naive")]]["scaled_pinball"].min()
    out = {
        "engine_scaled_pinball": round(float(engine["scaled_pinball"]), 5),
        "seasonal_naive_scaled_pinball": round(float(naive), 5),
        "ratio_vs_seasonal_naive": round(float(engine["scaled_pinball"] / naive), 4),
        "engine_coverage_80": round(float(engine["coverage_80"]), 4),
        "engine_seconds_per_run": round(float(engine["seconds"]), 2),
        "beats_seasonal_naive": bool(engine["scaled_pinball"] < naive),
    }
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
