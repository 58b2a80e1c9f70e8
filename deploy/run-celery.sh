#!/usr/bin/env bash
# Start the production-shaped deployment on this machine (`make run-celery WORKERS=2`): Airflow's
# scheduler, DAG processor, API server and triggerer, and WORKERS Celery workers, against the
# PostgreSQL and Redis that deploy/celery.env names. Runs until Ctrl-C (or until any component
# exits), then stops them all. Logs: AIRFLOW_HOME/logs/celery/<component>.log.
# On several hosts run the same components with the same settings file: the four services once,
# `airflow celery worker` on every worker host.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-2}
bin=${BIN:-.venv/bin}
export PATH="$PWD/$bin:$PATH"
export AIRFLOW_HOME=${AIRFLOW_HOME:-$PWD} PYTHONPATH=${PYTHONPATH:-$PWD}

# the settings file; a variable already set in the environment wins
while IFS= read -r line; do
  [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
  name=${line%%=*}
  [[ -n ${!name+x} ]] || export "${line?}"
done <"${CREDIT_CELERY_ENV:-deploy/celery.env}"

# the metadata database, created on first use (the server's owner may do this instead)
python - <<'PY'
import os

import sqlalchemy as sa

url = sa.make_url(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
engine = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
with engine.connect() as con:
    if not con.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": url.database}):
        con.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
        print(f"run-celery: created database {url.database}")
PY
airflow db migrate

logs="$AIRFLOW_HOME/logs/celery"
mkdir -p "$logs"
pids=()
start() {  # name, command...: each component in its own process group, stopped whole
  local name=$1
  shift
  setsid "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  echo "run-celery: $name (pid $!, log $logs/$name.log)"
}
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 5
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'echo "run-celery: stopping"; exit 0' INT TERM

start scheduler airflow scheduler
start dag-processor airflow dag-processor
start api-server airflow api-server
start triggerer airflow triggerer
for i in $(seq "$workers"); do
  # on one machine the workers share the log folder: only the first serves logs (port 8793)
  start "worker$i" airflow celery worker --celery-hostname "worker$i@%h" $([ "$i" -gt 1 ] && echo --skip-serve-logs)
done
echo "run-celery: UI $AIRFLOW__API__BASE_URL; Ctrl-C stops everything"
wait -n "${pids[@]}" || true
echo "run-celery: a component exited; stopping the others" >&2
exit 1
