"""Hammer a ledger from several threads (and, run several times, several processes).

    python -m pipeline.irc.stress --ledger sqlite:///tmp/l.db --threads 4 --ops 200 --seed 1

Each thread reserves random sessions (random resources, start and duration over the windows
`ledger_fixture_rows()` describes), releases some of its grants, and the process prints one JSON
object: every grant (id, region, start, end, requirements, short-lived?) and every successful
release. `--sweep-at T` makes one thread call `sweep(T)` now and then; sessions marked
short-lived end before T, the others after it. The tests combine the outputs of several
processes and check the ledger against them (no over-grant, no lost update, reusable capacity).
Load the capacity first (`--load`), once, from the parent.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
from typing import Any

from pipeline.common.numeric import SECONDS_PER_HOUR as H
from pipeline.irc.ledger import open_ledger

T0 = 1_767_225_600  # 2026-01-01T00:00Z: window starts are whole hours
WINDOWS = 3
REGIONS = ("eu-west-1", "us-east-1")
CAPACITY = {"vcpu": 60.0, "memory_gib": 240.0, "bandwidth_gbps": 12.0}
SWEEP_AT = T0 + 5400  # short-lived sessions end by then, long ones after (no window is old enough to drop)


def ledger_fixture_rows() -> list[tuple[int, int, str, str, float]]:
    """The capacity the stress runs against: WINDOWS hourly windows x REGIONS x CAPACITY."""
    return [
        (T0 + w * H, T0 + (w + 1) * H, region, rt, q)
        for w in range(WINDOWS)
        for region in REGIONS
        for rt, q in CAPACITY.items()
    ]


def _session(rng: random.Random) -> tuple[str, dict[str, float], float, float, bool]:
    region = rng.choice(REGIONS)
    types = rng.sample(sorted(CAPACITY), rng.randint(1, len(CAPACITY)))
    requirements = {rt: round(rng.uniform(0.05, 0.08) * CAPACITY[rt], 3) for rt in types}
    short_lived = rng.random() < 0.5
    if short_lived:  # starts in the first window, ends by SWEEP_AT
        start = T0 + rng.uniform(0, H - 1)
        end = start + rng.uniform(60, 1800)
    else:  # anywhere in the plan, ends after SWEEP_AT (overlapping one to three windows)
        start = T0 + rng.uniform(0, WINDOWS * H - 1)
        end = max(start, SWEEP_AT) + rng.uniform(60, 5400)
    return region, requirements, start, end, short_lived


def run(ledger_or_url: Any, threads: int, ops: int, seed: int, release_share: float, sweep: bool) -> dict[str, Any]:
    """Run the threads against a Ledger object or URL; returns grants, releases and errors."""
    ledger = open_ledger(ledger_or_url) if isinstance(ledger_or_url, str) else ledger_or_url
    granted: list[list[Any]] = []
    released: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        mine: list[str] = []
        barrier.wait()
        for n in range(ops):
            try:
                region, requirements, start, end, short_lived = _session(rng)
                allocation_id = f"pre-s{seed}-t{index}-{n}"
                short = ledger.reserve(allocation_id, region, requirements, start, end, 1.0, "normal", T0)
                if not short:
                    mine.append(allocation_id)
                    with lock:
                        granted.append([allocation_id, region, start, end, requirements, short_lived])
                if mine and rng.random() < release_share:
                    victim = mine.pop(rng.randrange(len(mine)))
                    if ledger.release(victim):
                        with lock:
                            released.append(victim)
                if sweep and index == 0 and n % 25 == 0:
                    ledger.sweep(SWEEP_AT)
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if isinstance(ledger_or_url, str):
        ledger.close()
    return {"granted": granted, "released": released, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--release-share", type=float, default=0.0)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--load", action="store_true", help="only load the fixture capacity and exit")
    args = parser.parse_args(argv)
    if args.load:
        ledger = open_ledger(args.ledger)
        ledger.load_capacities(ledger_fixture_rows(), "plan-stress")
        ledger.close()
        return 0
    json.dump(run(args.ledger, args.threads, args.ops, args.seed, args.release_share, args.sweep), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
