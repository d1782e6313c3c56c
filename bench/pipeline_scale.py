"""Pipeline scale benchmark: wall time of one in-process hourly run for 6, 30 and 100 regions.

    .venv/bin/python bench/pipeline_scale.py                  # 6, 30 and 100 regions
    .venv/bin/python bench/pipeline_scale.py --quick          # 6 and 30 regions
    .venv/bin/python bench/pipeline_scale.py --sizes 30 --profile /tmp/prof   # + one cProfile per stage
    .venv/bin/python bench/pipeline_scale.py --sizes 30 --warm-hours 1        # the hour after another (steady state)
    .venv/bin/python bench/pipeline_scale.py --sizes 100 --seed-cache /tmp/seeds  # keep / reuse the seeded lake

For each size N it generates N regions of synthetic sources with `pipeline.samples.generate` (the six
sample regions, then `xx-region-07` ... `xx-region-99`, `xx-region-a-00` ...; unknown names get a
profile from a hash of the name), 15 days of history and a request rate that keeps the samples'
traffic per ordered pair (55 requests/h over 30 pairs, i.e. ~1.83 per pair-hour, so 870 pairs get
~1,600/h and 9,900 pairs ~18,000/h). It seeds a fresh lake with `backfill_ingest` (timed, reported
apart) and then times `run_hourly` for the last hour as `peerscale run` runs it - laptop mode:
ingest → features → forecast (single process) → feedback → plan → render IaC → report → publish →
monitor, each stage in a forked process of its own (`--in-process`: all in one, as `--profile`
needs) - stage by stage through the run's progress callback. Series fitted per second = forecast series / forecast-stage
seconds (series = pair volumes + region demand per resource + inbound totals per region).

Peak resident memory is sampled every 50 ms per stage over the run's process (RSS) and its workers
(each one's unique pages: a forked worker shares its parent's, see `RssSampler`). With
two or more sizes, each stage's seconds are fitted as c·n^k on the two largest and projected to
`--project-to` regions (default 1,000), with the workers a 10-minute run would need.

Each size runs in a fresh child process (cold imports and JIT, like `peerscale run`), in a temp
directory under /tmp that is removed afterwards. A size that exceeds --timeout-min is stopped and
reported with the seconds of the stages it finished and of the stage it was in. The 1-minute load
average is sampled during every hourly run (the host may be shared). Floor from issue #8: a 30-region
hourly run under 5 minutes on 2 cores; issue 17's (30 regions ≤ 30 s, 100 regions ≤ 300 s and ≤ 4 GB
peak) are reported under `floors_issue17`. Figures are printed, never asserted; the last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START = date(2026, 1, 1)
PAIR_RATE = 55.0 / 30.0  # the committed samples' requests per ordered pair-hour
FLOOR_30_S = 300.0
#: issue 17's floors on 2 cores: (summary key, the most it may be)
FLOORS_17 = (("regions_30_run_s", 30.0), ("regions_100_run_s", 300.0), ("regions_100_peak_rss_gb", 4.0))
STAGES = ("ingest", "features", "forecast", "feedback", "plan", "render", "report", "publish", "monitor")


def region_names(n: int) -> list[str]:
    from pipeline.samples.generate import DEFAULT_REGIONS

    names = list(DEFAULT_REGIONS[:n])
    # Region codes end in at most two digits: from 100 on, xx-region-a-00, xx-region-a-01, ...
    names += [f"xx-region-{i:02d}" if i < 100 else f"xx-region-{chr(ord('a') + i // 100 - 1)}-{i % 100:02d}"
              for i in range(len(names) + 1, n + 1)]
    return names


def stage_key(message: str) -> str:
    """The progress message names the stage first ("ingest <interval>", "render IaC", ...)."""
    return message.split()[0].lower()


# ---------------------------------------------------------------------------------------------
# Child: one size, one process
# ---------------------------------------------------------------------------------------------


def emit(tag: str, payload: dict) -> None:
    print(f"@{tag} {json.dumps(payload)}", flush=True)


class RssSampler(threading.Thread):
    """Peak resident memory of this process and its children (solver, band and joblib workers),
    sampled every 50 ms; `take()` returns the peak since the last call (one stage) and starts a new one.

    The tree's memory is this process's RSS plus each child's *unique* set (USS: the pages only it
    holds). A forked worker maps every page of its parent, so summing RSS would count the parent's
    memory once per worker (at 30 regions: a 1.8 GB plan stage read 3.6 GB with two solver workers);
    a spawned worker's shared libraries are the only pages its USS leaves out."""

    def __init__(self, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc, self.every_s, self.peak, self.stop = psutil.Process(), every_s, 0, threading.Event()
        self.lock = threading.Lock()  # a sample taken before `take()` must not land in the next stage

    def tree_rss(self) -> int:
        import psutil

        total = self.proc.memory_info().rss
        for p in self.proc.children(recursive=True):
            try:
                total += p.memory_full_info().uss
            except psutil.Error:  # a worker may exit between listing and reading
                continue
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.peak = max(self.peak, self.tree_rss())
            self.stop.wait(self.every_s)

    def take(self) -> float:
        with self.lock:
            peak, self.peak = max(self.peak, self.tree_rss()), 0
        return round(peak / 2**30, 3)


def _train_registry(run_end: datetime, settings, zoo: str) -> dict:
    """`peerscale train` on the history before the run (laptop mode): the hourly run then scores from the registry."""
    from pipeline.run import stage_train

    t0 = time.perf_counter()
    trained = stage_train(run_end - timedelta(hours=1), settings, tuple(m.strip() for m in zoo.split(",") if m.strip()))
    out = {"train_s": round(time.perf_counter() - t0, 2), "train_series": trained.get("series"), "train_zoo": zoo,
           "train_chosen": trained.get("chosen")}
    emit("setup", out)
    return out


def generate_fleet(source: Path, n: int, days: int, seed: int, pair_rate: float = PAIR_RATE, start: date = START) -> dict:
    """The samples' generator over `n` regions (`region_names`) and `days` days into `source`, at
    `pair_rate` requests per ordered pair-hour, with dirty rows; returns its row counts."""
    from pipeline.samples.generate import generate_sample_data

    return generate_sample_data(source, start=start, days=days, regions=region_names(n), seed=seed,
                                requests_per_hour=pair_rate * n * (n - 1), dirty_rows=True)


def _seed_lake(n: int, root: Path, days: int, pair_rate: float, seed: int, cache: Path | None) -> dict:
    """Generate the fleet's sources into `root/source` and backfill-ingest them into `root/lake`; with a
    `cache` directory, copy both from there when an earlier run seeded the same size, days, rate and
    seed (the 100-region seed takes ~10 minutes), else seed and keep a copy there."""
    from pipeline.common.config import Settings
    from pipeline.run import backfill_ingest

    pairs = n * (n - 1)
    out: dict = {"regions": n, "pairs": pairs, "requests_per_hour": round(pair_rate * pairs, 1)}
    kept = cache / f"regions{n}-days{days}-rate{pair_rate:.4f}-seed{seed}" if cache is not None else None
    if kept is not None and (kept / ".seeded.json").exists():
        t0 = time.perf_counter()
        for part in ("source", "lake"):
            shutil.copytree(kept / part, root / part)
        out.update(json.loads((kept / ".seeded.json").read_text()), seeded_from=str(kept), copy_s=round(time.perf_counter() - t0, 2))
        # re-ingest the backfill's last hour (idempotent): the timed run then starts as warm as after a backfill
        settings = Settings(source_root=str(root / "source"), lake_root=str(root / "lake"), build_root=str(root / "build"), seed=seed)
        run_end = datetime(START.year, START.month, START.day, tzinfo=UTC) + timedelta(days=days)
        backfill_ingest(run_end - timedelta(hours=2), run_end - timedelta(hours=1), settings)
        emit("setup", {"seeded_from": out["seeded_from"], "copy_s": out["copy_s"],
                       "peering_requests": out["source_rows"]["peering_requests"], "backfill_ingest_s": out["backfill_ingest_s"]})
        return out
    t0 = time.perf_counter()
    out["source_rows"] = generate_fleet(root / "source", n, days, seed, pair_rate)
    out["generate_s"] = round(time.perf_counter() - t0, 2)
    emit("setup", {"generate_s": out["generate_s"], "peering_requests": out["source_rows"]["peering_requests"]})
    settings = Settings(source_root=str(root / "source"), lake_root=str(root / "lake"), build_root=str(root / "build"), seed=seed)
    run_end = datetime(START.year, START.month, START.day, tzinfo=UTC) + timedelta(days=days)
    t0 = time.perf_counter()
    backfill_ingest(run_end - timedelta(days=days), run_end - timedelta(hours=1), settings)
    out["backfill_ingest_s"] = round(time.perf_counter() - t0, 2)
    emit("setup", {"backfill_ingest_s": out["backfill_ingest_s"]})
    if kept is not None:
        shutil.rmtree(kept, ignore_errors=True)
        for part in ("source", "lake"):
            shutil.copytree(root / part, kept / part)
        (kept / ".seeded.json").write_text(json.dumps({k: out[k] for k in ("source_rows", "generate_s", "backfill_ingest_s")}))
    return out


def child(n: int, root: Path, days: int, pair_rate: float, seed: int, profile_dir: Path | None, train_zoo: str | None = None,
          seed_cache: Path | None = None, warm_hours: int = 0, stage_processes: bool = True) -> None:
    from pipeline.common.config import Settings
    from pipeline.common.parallel import in_child_process
    from pipeline.run import run_hourly

    # seeding in a process of its own too: what it leaves resident is not the timed run's
    out = in_child_process(_seed_lake, n, root, days, pair_rate, seed, seed_cache) if stage_processes else \
        _seed_lake(n, root, days, pair_rate, seed, seed_cache)
    settings = Settings(source_root=str(root / "source"), lake_root=str(root / "lake"), build_root=str(root / "build"), seed=seed)
    run_end = datetime(START.year, START.month, START.day, tzinfo=UTC) + timedelta(days=days)
    if train_zoo:
        out.update(_train_registry(run_end, settings, train_zoo))

    marks: list[tuple[str, float]] = []
    profiler = {"current": None}
    rss = RssSampler()
    rss.start()
    rss_gb: dict[str, float] = {}

    def progress(message: str) -> None:
        now = time.perf_counter()
        if profile_dir is not None:
            _switch_profiler(profiler, marks[-1][0] if marks else None, stage_key(message), profile_dir, n)
        peak = rss.take()
        if marks:
            rss_gb[marks[-1][0]] = peak
        marks.append((stage_key(message), now))
        emit("stage", {"stage": stage_key(message), "t": now})

    for k in range(warm_hours, 0, -1):  # untimed: the hours before, as a scheduled run would follow them
        t0 = time.perf_counter()
        run_hourly(run_end - timedelta(hours=k), settings, stage_processes=stage_processes)
        emit("setup", {f"warm_run_{k}h_before_s": round(time.perf_counter() - t0, 2)})
    rss.take()
    t_start = time.perf_counter()
    summary = run_hourly(run_end, settings, progress=progress, stage_processes=stage_processes)
    t_end = time.perf_counter()
    rss_gb[marks[-1][0]] = rss.take()
    rss.stop.set()
    out["stage_peak_rss_gb"] = rss_gb
    out["peak_rss_gb"] = max(rss_gb.values())
    if profile_dir is not None:
        _switch_profiler(profiler, marks[-1][0], None, profile_dir, n)
    bounds = [t for _, t in marks] + [t_end]
    out["run_s"] = round(t_end - t_start, 2)
    out["stages_s"] = {name: round(bounds[i + 1] - t, 2) for i, (name, t) in enumerate(marks)}
    out["interval_end"] = run_end.isoformat()
    out["series"] = int(summary.forecast["series"])
    out.update(_forecast_facts(settings, summary.forecast["run_id"]))
    out.update(_plan_facts(settings, summary.plan))
    out["ingest_rows_run"] = sum(int(r.get("rows_valid") or 0) for r in summary.ingest)
    out["alerts"] = summary.monitoring.get("alerts")
    emit("result", out)


def _switch_profiler(state: dict, finished: str | None, starting: str | None, profile_dir: Path, n: int) -> None:
    """One cProfile per stage: stop the finished stage's profiler (dump it), start the next one."""
    import cProfile

    prof = state["current"]
    if prof is not None:
        prof.disable()
        prof.dump_stats(str(profile_dir / f"regions{n}_{finished}.prof"))
    state["current"] = None
    if starting is not None:
        state["current"] = cProfile.Profile()
        state["current"].enable()


def _short(file: str) -> str:
    """A profiled file relative to the repo or to site-packages."""
    for marker in (str(REPO) + "/", "site-packages/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def print_profiles(profile_dir: Path, n: int, top: int = 8) -> dict:
    """Top functions per profiled stage, by own time and by cumulative time, as shares of the stage."""
    import pstats

    out = {}
    for stage in STAGES:
        path = profile_dir / f"regions{n}_{stage}.prof"
        if not path.exists():
            continue
        st = pstats.Stats(str(path))
        total = st.total_tt or 1e-9
        rows = [(tt, ct, nc, f"{func} ({_short(file)}:{line})") for (file, line, func), (_, nc, tt, ct, _) in st.stats.items()]
        print(f"   profile {stage} ({total:.1f} s under cProfile, {path}):", flush=True)
        for label, idx in (("own", 0), ("cum", 1)):
            for r in sorted(rows, key=lambda r: -r[idx])[:top]:
                print(f"     {label} {100 * r[idx] / total:5.1f} %  {r[idx]:8.2f} s  {r[2]:>9} calls  {r[3]}", flush=True)
        out[stage] = [{"function": r[3], "own_share": round(r[0] / total, 4)} for r in sorted(rows, key=lambda r: -r[0])[:top]]
    return out


def _forecast_facts(settings, run_id: str) -> dict:
    from pipeline.common import lake, storage
    from pipeline.forecast.engine import read_forecast

    manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, run_id), "manifest.json"))
    chosen: dict[str, int] = {}
    for sel in manifest.get("selection", {}).values():
        name = sel.get("model", "?") if isinstance(sel, dict) else str(sel)
        chosen[name] = chosen.get(name, 0) + 1
    rows = len(read_forecast(settings, run_id))
    block = manifest.get("engine", {}).get("registry") or {}
    decisions = manifest.get("engine", {}).get("regressors") or {}
    regressors = {name: f"kept from {d['reused_from']}" if d.get("reused_from") else
                  f"decided in this run on {d.get('sample_series') or d.get('series')} series: "
                  f"{len(d.get('used') or [])} of {len(d.get('candidates') or [])} columns kept"
                  for name, d in decisions.items() if isinstance(d, dict)}
    return {"forecast_rows": rows, "models": manifest.get("models"), "models_chosen": chosen, "regressor_decisions": regressors,
            "history_series": manifest.get("history", {}).get("series"),
            "registry": {k: block.get(k) for k in ("status", "version", "covered") if k in block}}


def _plan_facts(settings, plan: dict) -> dict:
    from pipeline.plan import read_plan

    _, manifest = read_plan(settings, plan["plan_id"])
    return {"plan_id": plan["plan_id"], "plan_rows": plan.get("rows"), "plan_status": manifest.get("status"),
            "plan_gap": manifest.get("gap"), "plan_shortfalls": plan.get("shortfall"),
            "hourly_cost_total": plan.get("hourly_cost_total")}


# ---------------------------------------------------------------------------------------------
# Parent: sizes, timeouts, load
# ---------------------------------------------------------------------------------------------


class LoadSampler(threading.Thread):
    """1-minute load average every few seconds while the hourly run is timed (set `active`)."""

    def __init__(self, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stop, self.active = every_s, [], threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.active.is_set():
                self.samples.append(os.getloadavg()[0])
            self.stop.wait(self.every_s)

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"load1_mean": round(sum(s) / len(s), 2), "load1_max": round(max(s), 2)}


def run_size(n: int, args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"peerscale-scale-{n}-", dir="/tmp"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--root", str(root), "--days", str(args.days),
           "--pair-rate", str(args.pair_rate), "--seed", str(args.seed)]
    if args.train_zoo:
        cmd += ["--train-zoo", args.train_zoo]
    if args.seed_cache:
        cmd += ["--seed-cache", str(Path(args.seed_cache).resolve())]
    if args.warm_hours:
        cmd += ["--warm-hours", str(args.warm_hours)]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        cmd += ["--profile", str(Path(args.profile).resolve())]
    if args.in_process or args.profile:
        cmd += ["--in-process"]
    print(f"\n== {n} regions ({n * (n - 1)} ordered pairs) · temp dir {root}", flush=True)
    load = LoadSampler()
    load.start()
    loadavg_before = os.getloadavg()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            cwd=str(REPO))
    stages: list[tuple[str, float]] = []
    result: dict = {}
    setup: dict = {}
    timed_out = {"hit": False, "at": None}
    deadline_s = args.timeout_min * 60.0
    run_started: dict = {}

    def watchdog() -> None:
        while proc.poll() is None:
            if run_started and time.monotonic() - run_started["mono"] > deadline_s:
                timed_out.update(hit=True, at=time.perf_counter())
                os.killpg(proc.pid, 9)  # the child's own session: it and its solver workers only
                return
            time.sleep(1.0)

    threading.Thread(target=watchdog, daemon=True).start()
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("@stage "):
            payload = json.loads(line[7:])
            if not run_started:
                run_started["mono"] = time.monotonic()
                load.active.set()
            if stages:
                print(f"   {stages[-1][0]:>9}: {payload['t'] - stages[-1][1]:8.2f} s", flush=True)
            stages.append((payload["stage"], payload["t"]))
        elif line.startswith("@setup "):
            for k, v in json.loads(line[7:]).items():
                setup[k] = v
                print(f"   setup {k}: {v}", flush=True)
        elif line.startswith("@result "):
            result = json.loads(line[8:])
        else:
            tail = [*tail, line][-40:]
    proc.wait()
    load.stop.set()
    load.join()
    loadavg_after = os.getloadavg()
    shutil.rmtree(root, ignore_errors=True)

    out: dict = {"regions": n, "pairs": n * (n - 1), "requests_per_hour": round(args.pair_rate * n * (n - 1), 1), **setup}
    if result:
        out.update(result)
        print(f"   {stages[-1][0]:>9}: {result['stages_s'][stages[-1][0]]:8.2f} s", flush=True)
    else:
        out["status"] = "stopped after timeout" if timed_out["hit"] else f"failed (exit {proc.returncode})"
        if stages:
            # Child clocks are perf_counter values of the same machine: stage times between marks are exact,
            # the running stage is reported up to the stop.
            marks = [t for _, t in stages]
            done = {name: round(marks[i + 1] - t, 2) for i, (name, t) in enumerate(stages[:-1])}
            out["stages_s"] = done
            out["running_stage"] = stages[-1][0]
            if timed_out["hit"]:
                out["running_stage_s_at_stop"] = round(timed_out["at"] - marks[-1], 2)
                out["run_s_at_stop"] = round(timed_out["at"] - marks[0], 2)
                print(f"   {stages[-1][0]:>9}: {out['running_stage_s_at_stop']:8.2f} s and still running when stopped "
                      f"after {out['run_s_at_stop']:.0f} s (--timeout-min {args.timeout_min:g})", flush=True)
        print(f"   {out['status']}" + (("; last output:\n" + "\n".join("     " + t for t in tail[-15:])) if tail else ""), flush=True)
    out["status"] = out.get("status", "ok")
    if args.profile:
        out["profile_top"] = print_profiles(Path(args.profile).resolve(), n)
    out["loadavg_before"] = [round(x, 2) for x in loadavg_before]
    out["loadavg_after"] = [round(x, 2) for x in loadavg_after]
    out.update(load.summary())
    if "run_s" in out:
        forecast_s = out["stages_s"].get("forecast") or float("nan")
        out["series_per_s"] = round(out["series"] / forecast_s, 2)
        out["series_per_run_s"] = round(out["series"] / out["run_s"], 2)
        print(f"   run {out['run_s']:.1f} s · {out['series']} series, {out['series_per_s']:.1f} series/s in the forecast stage "
              f"({out['series_per_run_s']:.1f}/s over the run) · plan {out.get('plan_status')} {out.get('plan_rows')} rows, "
              f"gap {out.get('plan_gap')} · load1 mean {out['load1_mean']} max {out['load1_max']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6,30,100", help="comma-separated region counts")
    parser.add_argument("--quick", action="store_true", help="6 and 30 regions only")
    parser.add_argument("--days", type=int, default=15, help="days of generated history (the forecast fits on 14)")
    parser.add_argument("--pair-rate", type=float, default=PAIR_RATE, help="requests per ordered pair-hour")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-min", type=float, default=30.0, help="stop a size's hourly run after this long")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="write one cProfile file per size and stage into DIR (slows the run; figures then inflated)")
    parser.add_argument("--project-to", type=int, default=1000, help="regions to project the per-stage costs to")
    parser.add_argument("--train-zoo", default=None, metavar="MODELS",
                        help="train the model registry with this comma-separated zoo before each size's hourly run "
                             "(untimed setup; the run then scores from the registry, issue 15's regions_30_run_s)")
    parser.add_argument("--seed-cache", default=None, metavar="DIR",
                        help="keep each size's seeded sources and lake in DIR and copy them from there next time "
                             "(skips generating and backfilling: ~10 minutes at 100 regions)")
    parser.add_argument("--warm-hours", type=int, default=0, metavar="K",
                        help="run the K hours before the timed one first, untimed (steady state: e.g. the day's "
                             "regressor decision is then kept; their memory stays in the process)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every stage in one process (`peerscale run --in-process`; implied by --profile) "
                             "instead of each in a process of its own")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        child(args.child, Path(args.root), args.days, args.pair_rate, args.seed, Path(args.profile) if args.profile else None,
              args.train_zoo, Path(args.seed_cache) if args.seed_cache else None, args.warm_hours, not args.in_process)
        return

    sizes = [6, 30] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"pipeline scale benchmark · {os.cpu_count()} CPUs visible · load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} · "
          f"{args.days} days, {args.pair_rate:.3f} requests per pair-hour{' · cProfile on' if args.profile else ''}", flush=True)
    results = {n: run_size(n, args) for n in sizes}

    print("\nper-stage seconds:", flush=True)
    print(f"{'regions':>8} " + " ".join(f"{s:>9}" for s in STAGES) + f" {'run':>9} {'series':>7} {'series/s':>9} {'load1':>6}")
    for n, r in results.items():
        st = r.get("stages_s", {})
        cells = " ".join(f"{st[s]:9.2f}" if s in st else f"{'-':>9}" for s in STAGES)
        run = f"{r['run_s']:9.2f}" if "run_s" in r else f"{'stopped':>9}"
        print(f"{n:>8} {cells} {run} {r.get('series', '-'):>7} {r.get('series_per_s', '-'):>9} {r['load1_mean']:>6}", flush=True)
    if 30 in results and "run_s" in results[30]:
        verdict = "meets" if results[30]["run_s"] < FLOOR_30_S else "misses"
        print(f"30-region hourly run {results[30]['run_s']:.1f} s: {verdict} the 5-minute floor (issue #8)", flush=True)

    summary: dict = {"cpus": os.cpu_count(), "days": args.days, "pair_rate": round(args.pair_rate, 4),
                     "profiled": bool(args.profile), "warm_hours": args.warm_hours, "floor_30_s": FLOOR_30_S,
                     "stage_processes": not (args.in_process or args.profile)}
    for n, r in results.items():
        p = f"regions_{n}_"
        summary[p + "run_s"] = r.get("run_s")
        summary[p + "status"] = r["status"]
        summary[p + "pairs"] = r["pairs"]
        summary[p + "series"] = r.get("series")
        summary[p + "series_per_s"] = r.get("series_per_s")
        summary[p + "series_per_run_s"] = r.get("series_per_run_s")
        summary[p + "stages_s"] = r.get("stages_s")
        summary[p + "backfill_ingest_s"] = r.get("backfill_ingest_s")
        summary[p + "generate_s"] = r.get("generate_s")
        summary[p + "requests_per_hour"] = r.get("requests_per_hour")
        summary[p + "peering_requests"] = r.get("peering_requests")
        summary[p + "models_chosen"] = r.get("models_chosen")
        summary[p + "regressor_decisions"] = r.get("regressor_decisions")
        if "train_s" in r:  # --train-zoo: the run scored from the registry
            summary[p + "train_s"] = r.get("train_s")
            summary[p + "registry"] = r.get("registry")
        summary[p + "plan_status"] = r.get("plan_status")
        summary[p + "plan_gap"] = r.get("plan_gap")
        summary[p + "load1_mean"] = r["load1_mean"]
        summary[p + "load1_max"] = r["load1_max"]
        for k in ("running_stage", "running_stage_s_at_stop", "run_s_at_stop"):
            if k in r:
                summary[p + k] = r[k]
    if summary.get("regions_30_run_s") is not None:
        summary["regions_30_meets_floor"] = summary["regions_30_run_s"] < FLOOR_30_S
    for n, r in results.items():
        summary[f"regions_{n}_peak_rss_gb"] = r.get("peak_rss_gb")
        summary[f"regions_{n}_stage_peak_rss_gb"] = r.get("stage_peak_rss_gb")
    summary["floors_issue17"] = {key: {"floor": limit, "measured": summary.get(key),
                                       "met": None if summary.get(key) is None else summary[key] <= limit}
                                 for key, limit in FLOORS_17}
    summary.update(print_projection(results, target=args.project_to))
    print(json.dumps(summary), flush=True)


def print_projection(results: dict[int, dict], target: int, budget_s: float = 600.0) -> dict:
    """Each stage's seconds as c·n^k fitted on the two largest finished sizes, projected to `target`
    regions; and how many workers a `budget_s` run needs if the forecast and plan stages (sharded
    by series and by region) split evenly over workers while the other stages stay serial."""
    done = sorted(n for n, r in results.items() if "run_s" in r)
    if len(done) < 2:
        return {}
    a, b = done[-2], done[-1]
    stages: dict[str, float] = {}
    exponents: dict[str, float] = {}
    for stage in STAGES:
        ta, tb = results[a]["stages_s"].get(stage), results[b]["stages_s"].get(stage)
        if not ta or not tb or ta <= 0 or tb <= 0:
            continue
        k = math.log(tb / ta) / math.log(b / a)
        exponents[stage] = round(k, 2)
        stages[stage] = round(tb * (target / b) ** k, 1)
    parallel = sum(v for s, v in stages.items() if s in ("forecast", "plan"))
    serial = sum(v for s, v in stages.items() if s not in ("forecast", "plan"))
    workers = math.ceil(parallel / (budget_s - serial)) if serial < budget_s else None
    print(f"\nprojection to {target} regions (c·n^k per stage, fitted on {a} and {b} regions):", flush=True)
    for stage, seconds in stages.items():
        print(f"   {stage:>9}: n^{exponents[stage]:<5} → {seconds:10.1f} s", flush=True)
    verdict = (f"{workers} workers for a {budget_s / 60:.0f}-minute run (forecast and plan spread, the rest serial: {serial:.0f} s)"
               if workers else f"no worker count fits {budget_s / 60:.0f} minutes: the serial stages alone take {serial:.0f} s")
    print(f"   total on one worker {sum(stages.values()):.0f} s · {verdict}", flush=True)
    return {f"projected_{target}_stages_s": stages, f"projected_{target}_exponents": exponents,
            f"projected_{target}_run_s_one_worker": round(sum(stages.values()), 1),
            f"projected_{target}_workers_for_10_min": workers}


if __name__ == "__main__":
    main()
