#!/usr/bin/env bash
# The demo behind `make demo`: seed the lake with four weeks of history, train the model registry once
# (`peerscale train`), run the hourly DAG once (it scores with the registry)
# through Airflow (`airflow dags test`, throw-away SQLite home, no scheduler or webserver), show
# the plan, then send a few peering requests through the IRC.
#
# It writes where every `peerscale` command looks by default — lake/ and build/ of this checkout,
# reading data_samples/ — so `peerscale plan show`, `plan explain REGION`, `report`, `irc request …`,
# `forecast summary` and `backtest` work right after it with no flags. PEERSCALE_LAKE,
# PEERSCALE_BUILD and PEERSCALE_SOURCE move all of them together. Nothing is deleted: ingest
# replaces the hour partitions it writes and the DAG re-publishes the same plan, so running the
# demo again gives the same plan; other data in the lake is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN="$ROOT/.venv/bin"

export PEERSCALE_SOURCE="${PEERSCALE_SOURCE:-$ROOT/data_samples}"
export PEERSCALE_LAKE="${PEERSCALE_LAKE:-$ROOT/lake}"
export PEERSCALE_BUILD="${PEERSCALE_BUILD:-$ROOT/build}"
HISTORY_FROM="${HISTORY_FROM:-2026-01-01T00:00}"
RUN_HOUR="${RUN_HOUR:-2026-01-28T23:00}"        # the hour the DAG run covers; its plan starts at RUN_HOUR + 1 h
INTERVAL_END="${INTERVAL_END:-2026-01-29T00:00}"
PLAN_ID="plan-$(echo "$INTERVAL_END" | tr -d ':-')Z"   # plan-20260129T0000Z: plans are named after their interval end
mkdir -p "$PEERSCALE_BUILD"
echo "lake: $PEERSCALE_LAKE · build: $PEERSCALE_BUILD · source: $PEERSCALE_SOURCE"

echo "== 1/5 seed the lake with history [$HISTORY_FROM, $RUN_HOUR) from $PEERSCALE_SOURCE"
"$BIN/peerscale" ingest --from "$HISTORY_FROM" --to "$RUN_HOUR"

echo "== 2/5 train the model registry once on that history (laptop mode: the hourly run then scores with it)"
# PEERSCALE_DEMO_TRAIN_MODELS picks the zoo (default below: the fast members; unset it to "" for the whole zoo).
DEMO_ZOO="${PEERSCALE_DEMO_TRAIN_MODELS-seasonal_naive,seasonal_mean,auto_ets,global_gbm}"
"$BIN/peerscale" train --interval-end "$RUN_HOUR" ${DEMO_ZOO:+--models "$DEMO_ZOO"}

echo "== 3/5 run the hourly DAG through Airflow for the hour [$RUN_HOUR, $INTERVAL_END)"
AIRFLOW_HOME=$(mktemp -d -t peerscale-airflow-XXXXXX)
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
export AIRFLOW_HOME
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING
"$BIN/airflow" db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/migrate.log"; exit 1; }
# The pools the DAGs use (a scheduler never runs a task whose pool is missing; `dags test` ignores pools).
"$BIN/airflow" pools set "${PEERSCALE_POOL_MODEL_FIT:-peerscale_model_fit}" 2 "forecast shards and global model fits" > /dev/null
"$BIN/airflow" pools set "${PEERSCALE_POOL_SOLVER:-peerscale_solver}" 1 "CP-SAT plan solves" > /dev/null
# `airflow dags test` 3.3.2 fails at the end of a successful run of a DAG with a deadline (see
# dags/peerscale_callbacks.py): run the demo without it; a scheduler handles it.
export PEERSCALE_DEADLINE_MINUTES=0
# With an interval timetable the date given is when the run happens: it covers the hour before it.
DAG_LOG="$PEERSCALE_BUILD/demo_dag_run.log"
"$BIN/airflow" dags test peerscale_hourly "${INTERVAL_END}:00+00:00" > "$DAG_LOG" 2>&1 || {
  tail -n 60 "$DAG_LOG"; echo "DAG run failed; full log: $DAG_LOG"; exit 1; }
grep -E "state=|DagRun Finished" "$DAG_LOG" | tail -n 3 || true

echo "== 4/5 the published plan"
"$BIN/peerscale" plan show --plan-id "$PLAN_ID"
echo "  plan:      $PEERSCALE_LAKE/plans/plan_id=$PLAN_ID/"
echo "  terraform: $PEERSCALE_BUILD/iac/$PLAN_ID/terraform/"
echo "  report:    $PEERSCALE_BUILD/reports/$PLAN_ID.html"
echo "  DAG log:   $DAG_LOG"

echo "== 5/5 peering requests through the IRC (inside the plan window, ${INTERVAL_END})"
AT="${INTERVAL_END}:30Z"
irc() { "$BIN/peerscale" irc request --at "$AT" "$@" || true; }
echo "-- small request, inside the pre-allocation:"
irc --from us-east-1 --to eu-west-1 --vcpu 4 --memory-gib 16 --bandwidth-gbps 1
echo "-- a second small one to another region:"
irc --from eu-central-1 --to us-east-1 --vcpu 8 --memory-gib 32 --bandwidth-gbps 2
echo "-- a request larger than the pre-allocation (vCPU, memory), served on demand from the pool:"
irc --from us-west-2 --to ap-southeast-1 --vcpu 300 --memory-gib 600
echo "-- a request larger than the whole pool:"
irc --from us-west-2 --to ap-southeast-1 --vcpu 1000000 --memory-gib 16 --bandwidth-gbps 1
echo "-- an invalid request (unknown region):"
irc --from mars-north-1 --to eu-west-1 --vcpu 4 --memory-gib 16

cat <<EOF
demo finished: open $PEERSCALE_BUILD/reports/$PLAN_ID.html
next, with no flags (the demo wrote to the lake and build directories peerscale reads by default):
  peerscale plan show
  peerscale plan explain eu-west-1
  peerscale report
  peerscale irc request --from us-east-1 --to eu-west-1 --vcpu 4 --memory-gib 16
  peerscale forecast summary
  peerscale backtest            # the last 7 days of $PEERSCALE_SOURCE, under each allocation policy
EOF
