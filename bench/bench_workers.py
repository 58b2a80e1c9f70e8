"""Benchmark: the cost of going wide. The same night on 1 and 2 Celery workers of the
production-shaped deployment (deploy/run-celery.sh with deploy/celery.env), read back from Airflow's
metadata database: the run's wall time, each task's duration and queued->start delay, the scheduling
overhead per task, tasks per worker and the largest task's peak memory; and the published
version's content hash, which must be the same whatever the number of workers.

    nice -n 10 .venv/bin/python bench/bench_workers.py --generate 20000 --workers 1 2
    nice -n 10 .venv/bin/python bench/bench_workers.py --sources /work/data/src-10m --workers 1 2

For each worker count: a fresh metadata database (on the PostgreSQL server deploy/celery.env
names), a fresh lake and Redis database, and deploy/run-celery.sh N started with only the addresses
retargeted (the database, the Redis database, a free API port; every other setting is the file's);
`credit_nightly` is triggered with the run's folders and date, waited for, and everything stopped.
Nothing here names a task: the critical path follows the DAG's own dependencies (the serialised
DAG), so a mapped DAG (more tasks, ``task[item]``) is read the same way.

Scheduling overhead, per task: along the run's critical path (walked back from the task that ended
last, each time to the upstream task instance that ended last), everything that is not the stage's
own work: the gap between the upstream's end and the task's start (the scheduler, the queue, a free
slot, the worker starting the task) plus the task's time outside its stage function (the task
process, imports, XCom), divided by the tasks on the path. The simpler figure, (wall - the DAG's
longest path of task durations) / task instances, is reported beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "deploy" / "celery.env"
RUN_CELERY = ROOT / "deploy" / "run-celery.sh"
BIN = Path(sys.executable).parent
DAG_ID = "credit_nightly"
#: a Redis database of the bench's own (tests/test_celery.py uses 11, the deployment 0)
REDIS_DB = 13
#: how a Celery worker's log names a task it received: the id is the task instance's external_executor_id
#: issue 17's goal on one 2-core machine: the 10M-record night within 5 minutes, no task above 4 GB
GOAL_SECONDS, GOAL_TASK_MB = 300, 4096
RECEIVED = re.compile(r"Task execute_workload\[([0-9a-f-]+)\] received")


# ---------------------------------------------------------------- the deployment


def celery_settings(path: Path = SETTINGS_FILE) -> dict[str, str]:
    """deploy/celery.env as deploy/run-celery.sh reads it: KEY=VALUE lines, comments and blanks skipped."""
    lines = (line.strip() for line in path.read_text("utf-8").splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def retargeted(settings: Mapping[str, str], database: str, redis_db: int, port: int) -> dict[str, str]:
    """The settings whose addresses move for one bench run: both database URLs to ``database``, the
    broker to ``redis_db``, the API server (and every URL naming it) to ``port``. The rest of the file
    applies as it is, so the bench measures the deployment's own settings."""
    import sqlalchemy as sa

    out: dict[str, str] = {}
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        prefix = "db+" if settings[key].startswith("db+") else ""  # Celery's database result backend
        url = sa.make_url(settings[key].removeprefix(prefix)).set(database=database)
        out[key] = prefix + url.render_as_string(hide_password=False)
    broker = settings["AIRFLOW__CELERY__BROKER_URL"]
    if broker.startswith("redis://"):
        out["AIRFLOW__CELERY__BROKER_URL"] = re.sub(r"/\d*$", f"/{redis_db}", broker)
    old_port = settings["AIRFLOW__API__PORT"]
    out["AIRFLOW__API__PORT"] = str(port)
    for key, value in settings.items():
        if f":{old_port}" in value and key not in out:
            out[key] = value.replace(f":{old_port}", f":{port}")
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _on_server(url: str, *statements: str) -> None:
    """Run ``statements`` on the server of the database ``url`` names, from its `postgres` database
    (where deploy/run-celery.sh creates the metadata database too)."""
    import sqlalchemy as sa

    admin = sa.create_engine(sa.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as con:
            for statement in statements:
                con.execute(sa.text(statement))
    finally:
        admin.dispose()


def fresh_database(url: str) -> None:
    """Drop and create the metadata database ``url`` names: the night's tables start empty."""
    import sqlalchemy as sa

    name = sa.make_url(url).database
    _on_server(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    import sqlalchemy as sa

    _on_server(url, f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)')


def flush_broker(broker_url: str) -> None:
    """Empty the bench's Redis database: no message of an earlier run is delivered to this one's
    workers (another broker, e.g. RabbitMQ, is left as it is)."""
    if broker_url.startswith("redis://"):
        import redis

        redis.Redis.from_url(broker_url).flushdb()


class Deployment:
    """deploy/run-celery.sh N running under ``env``: its component logs (AIRFLOW_HOME/logs/celery)
    and the metadata database."""

    def __init__(self, workers: int, env: dict[str, str], out: Path) -> None:
        import sqlalchemy as sa

        self.workers = workers
        self.env = env
        self.logs = Path(env["AIRFLOW_HOME"]) / "logs" / "celery"
        self.out = out
        self.database = sa.create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        self.process: subprocess.Popen | None = None
        self.started_seconds = 0.0

    def rows(self, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        with self.database.connect() as con:
            return list(con.execute(sa.text(sql), params))

    def airflow(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "airflow"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        if done.returncode:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def start(self, timeout: float) -> None:
        """Start deploy/run-celery.sh and wait for every worker's ``ready.`` and the serialised DAG."""
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "run-celery.log", "w") as log:
            self.process = subprocess.Popen(
                [str(RUN_CELERY), str(self.workers)],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        names = [f"worker{i}" for i in range(1, self.workers + 1)]

        def ready() -> bool:
            # the script names a component once its log was (re)started: only then is "ready." this run's
            named = (self.out / "run-celery.log").read_text("utf-8", "replace")
            return all(
                f"run-celery: {n} (pid" in named
                and (self.logs / f"{n}.log").exists()
                and "ready." in (self.logs / f"{n}.log").read_text("utf-8", "replace")
                for n in names
            )

        self.wait_for("every worker ready", ready, timeout)
        self.wait_for(
            f"the DAG processor to serialise {DAG_ID}",
            lambda: self.rows("SELECT 1 FROM serialized_dag WHERE dag_id = :d", d=DAG_ID),
            timeout,
        )
        self.started_seconds = round(time.monotonic() - started, 1)

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"deploy/run-celery.sh exited while waiting for {what}{self.tails()}")
            if found := check():
                return found
            time.sleep(2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{self.tails()}")

    def tails(self) -> str:
        logs = [self.out / "run-celery.log", *sorted(self.logs.glob("*.log"))]
        return "".join(
            f"\n--- {log.name}\n{log.read_text('utf-8', 'replace')[-2000:]}" for log in logs if log.exists()
        )

    def stop(self) -> None:
        """Stop run-celery.sh (its trap stops every component's process group), then any group it
        named that is still there; keep the component logs beside the results."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:  # the script's own stop did not finish: its groups
                named = (self.out / "run-celery.log").read_text("utf-8", "replace")
                for pid in map(int, re.findall(r"run-celery: \S+ \(pid (\d+),", named)):
                    with suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait()
        for log in self.logs.glob("*.log"):
            shutil.copy2(log, self.out / log.name)
        self.database.dispose()


@contextmanager
def deployment(
    workers: int,
    database: str,
    out: Path,
    redis_db: int = REDIS_DB,
    extra: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> Iterator[Deployment]:
    """A running deployment of ``workers`` Celery workers on a fresh metadata database ``database``
    and an emptied Redis database, stopped whatever happens."""
    moved = retargeted(celery_settings(), database, redis_db, free_port())
    if clash := sorted(set(extra or {}) & set(moved)):  # the fresh database is dropped and created
        raise ValueError(f"the bench sets {clash} itself (a database, broker and port of its own)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env |= {
        "AIRFLOW_HOME": str(ROOT),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "BIN": str(BIN),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # only the triggered night: no scheduled run starts when the DAG is unpaused
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # task logs beside the results, not in the checkout's logs/
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(out / "airflow-logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(out / "dag-processor-logs"),
        **moved,
        **(extra or {}),
    }
    fresh_database(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    flush_broker(env["AIRFLOW__CELERY__BROKER_URL"])
    running = Deployment(workers, env, out)
    try:
        running.start(timeout)
        yield running
    finally:
        running.stop()


def run_night(running: Deployment, run_id: str, conf: Mapping[str, str], timeout: float) -> str:
    """Trigger the night and wait for its end: its final state."""
    running.airflow("dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf))
    running.airflow("dags", "unpause", DAG_ID)  # a DAG is paused at creation (airflow.cfg)

    def finished() -> str | None:
        states = running.rows(
            "SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r", d=DAG_ID, r=run_id
        )
        return states[0][0] if states and states[0][0] in ("success", "failed") else None

    return running.wait_for(f"run {run_id} to finish", finished, timeout)


# ---------------------------------------------------------------- what the metadata database says


def worker_of_tasks(logs: Path) -> dict[str, str]:
    """Which worker received which Celery task (a task instance's external_executor_id), from the
    workers' logs (worker1.log, ...): on one machine every worker records the same hostname."""
    found: dict[str, str] = {}
    for log in sorted(logs.glob("worker*.log")):
        for task_id in RECEIVED.findall(log.read_text("utf-8", "replace")):
            found[task_id] = log.stem
    return found


def read_run(running: Deployment, run_id: str) -> dict[str, Any]:
    """The run, its task instances (with each stage result's ``resources`` and the worker that ran
    it) and the DAG's dependencies, as plain data for ``summarise``."""
    (run,) = running.rows(
        "SELECT state, start_date, end_date, created_dag_version_id FROM dag_run WHERE dag_id = :d AND run_id = :r",
        d=DAG_ID,
        r=run_id,
    )
    # a stage's result is its return value, except a planning stage's: that returns the items it
    # lists (Airflow expands only a return value) and keeps its result under the key "result"
    results = {
        (task, index): value
        for task, index, value in running.rows(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id = :d AND run_id = :r "
            "AND key IN ('return_value', 'result')",
            d=DAG_ID,
            r=run_id,
        )
        if isinstance(value, dict) and "resources" in value
    }
    workers = worker_of_tasks(running.logs)
    instances = []
    for row in running.rows(
        "SELECT task_id, map_index, rendered_map_index, state, try_number, hostname, external_executor_id, "
        "queued_dttm, start_date, end_date FROM task_instance WHERE dag_id = :d AND run_id = :r",
        d=DAG_ID,
        r=run_id,
    ):
        result = results.get((row.task_id, row.map_index))
        instances.append(
            {
                "task_id": row.task_id,
                "map_index": row.map_index,
                "item": row.rendered_map_index,
                "state": row.state,
                "try_number": row.try_number,
                "worker": workers.get(row.external_executor_id or "", row.hostname or None),
                "hostname": row.hostname or None,
                "queued": row.queued_dttm,
                "start": row.start_date,
                "end": row.end_date,
                "resources": result["resources"] if result else None,
            }
        )
    earlier_tries = running.rows(
        "SELECT count(*) FROM task_instance_history WHERE dag_id = :d AND run_id = :r", d=DAG_ID, r=run_id
    )[0][0]
    data, compressed = running.rows(
        "SELECT data, data_compressed FROM serialized_dag WHERE dag_version_id = :v",
        v=run.created_dag_version_id,
    )[0]
    dag = (data or json.loads(zlib.decompress(compressed)))["dag"]
    downstream = {t["__var"]["task_id"]: t["__var"].get("downstream_task_ids", []) for t in dag["tasks"]}
    return {
        "state": run.state,
        "start": run.start_date,
        "end": run.end_date,
        "instances": instances,
        "downstream": downstream,
        "earlier_tries": earlier_tries,
    }


def _seconds(start: datetime | None, end: datetime | None) -> float:
    return (end - start).total_seconds() if start and end else 0.0


def label(instance: Mapping[str, Any]) -> str:
    """A task instance's name: the task id, with ``[item]`` for a mapped task's item (its name in
    the grid, "shard 3", or its map index)."""
    index = instance["map_index"]
    if index is None or index < 0:
        return instance["task_id"]
    return f"{instance['task_id']}[{instance.get('item') or index}]"


def summarise(run: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one run (``read_run``'s data): wall time, per task instance its delays and
    costs, the critical path and the overhead per task on it, tasks per worker, the largest peak."""
    wall = _seconds(run["start"], run["end"])
    upstream: dict[str, list[str]] = {task: [] for task in run["downstream"]}
    for task, followers in run["downstream"].items():
        for follower in followers:
            upstream[follower].append(task)
    tasks = []
    for ti in sorted(run["instances"], key=lambda ti: (ti["start"] is None, ti["start"] or 0, label(ti))):
        resources = ti["resources"] or {}
        duration = _seconds(ti["start"], ti["end"])
        tasks.append(
            {
                "task": label(ti),
                "task_id": ti["task_id"],
                "state": ti["state"],
                "worker": ti["worker"],
                "hostname": ti.get("hostname"),
                "queued_to_start": round(_seconds(ti["queued"], ti["start"]), 2) if ti["queued"] else None,
                "duration": round(duration, 2),
                "stage_seconds": resources.get("seconds"),
                "cpu_seconds": resources.get("cpu_seconds"),
                "peak_mb": resources.get("peak_mb"),
                # the task's time outside its stage function: task process, imports, XCom
                "in_task_overhead": round(duration - resources["seconds"], 2) if resources else None,
                "start": ti["start"],
                "end": ti["end"],
            }
        )
    ran = [t for t in tasks if t["start"] and t["end"]]
    path = critical_path(ran, upstream)
    # everything along the path that is not a stage function's own seconds
    stage_on_path = sum(t["stage_seconds"] or 0.0 for t in path)
    longest = longest_path(ran, run["downstream"])
    delays = [t["queued_to_start"] for t in tasks if t["queued_to_start"] is not None]
    in_task = [t["in_task_overhead"] for t in tasks if t["in_task_overhead"] is not None]
    per_worker: dict[str, int] = {}
    per_host: dict[str, int] = {}
    for t in ran:  # a task no worker ran (upstream failed, skipped by the scheduler) is nobody's
        if t["worker"]:
            per_worker[t["worker"]] = per_worker.get(t["worker"], 0) + 1
        if t["hostname"]:
            per_host[t["hostname"]] = per_host.get(t["hostname"], 0) + 1
    measured = [t for t in tasks if t["peak_mb"] is not None]
    largest = max(measured, key=lambda t: t["peak_mb"]) if measured else None
    states: dict[str, int] = {}
    for t in tasks:
        states[t["state"] or "none"] = states.get(t["state"] or "none", 0) + 1
    return {
        "state": run["state"],
        "wall_seconds": round(wall, 1),
        "task_instances": len(tasks),
        "states": dict(sorted(states.items())),
        "earlier_tries": run["earlier_tries"],
        "critical_path": [t["task"] for t in path],
        "critical_path_stage_seconds": round(stage_on_path, 1),
        "overhead_per_task": round((wall - stage_on_path) / len(path), 2) if path else None,
        "critical_path_gaps_per_task": round((wall - sum(t["duration"] for t in path)) / len(path), 2)
        if path
        else None,
        "longest_path_seconds": round(longest, 1),
        "wall_minus_longest_path_per_task": round((wall - longest) / len(ran), 2) if ran else None,
        "queued_to_start_mean": round(statistics.fmean(delays), 2) if delays else None,
        "queued_to_start_max": round(max(delays), 2) if delays else None,
        "in_task_overhead_mean": round(statistics.fmean(in_task), 2) if in_task else None,
        "stage_seconds_total": round(sum(t["stage_seconds"] or 0.0 for t in tasks), 1),
        "cpu_seconds_total": round(sum(t["cpu_seconds"] or 0.0 for t in tasks), 1),
        "tasks_per_worker": dict(sorted(per_worker.items())),
        # what task_instance records: one name for every worker of one machine
        "tasks_per_hostname": dict(sorted(per_host.items())),
        "largest_peak_mb": largest["peak_mb"] if largest else None,
        "largest_peak_task": largest["task"] if largest else None,
        "tasks": [{k: v for k, v in t.items() if k not in ("start", "end")} for t in tasks],
    }


def critical_path(ran: list[dict[str, Any]], upstream: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """The chain that decided when the run ended: from the task instance that ended last, back each
    time to the upstream instance (of any upstream task, any map index) that ended last."""
    if not ran:
        return []
    by_task: dict[str, list[dict[str, Any]]] = {}
    for t in ran:
        by_task.setdefault(t["task_id"], []).append(t)
    step = max(ran, key=lambda t: t["end"])
    path = [step]
    while True:
        before = [u for task in upstream.get(step["task_id"], []) for u in by_task.get(task, [])]
        before = [u for u in before if u["end"] <= step["start"]] or before
        if not before:
            break
        step = max(before, key=lambda u: u["end"])
        path.append(step)
    return path[::-1]


def longest_path(ran: list[dict[str, Any]], downstream: Mapping[str, list[str]]) -> float:
    """The DAG's longest path of task durations (a mapped task counts its longest item): the run's
    length on endless slots with no scheduling at all."""
    duration: dict[str, float] = {}
    for t in ran:
        duration[t["task_id"]] = max(duration.get(t["task_id"], 0.0), t["duration"])
    finish: dict[str, float] = {}

    def ends(task: str) -> float:
        if task not in finish:
            finish[task] = duration.get(task, 0.0) + max(
                (0.0, *(ends(u) for u, followers in downstream.items() if task in followers))
            )
        return finish[task]

    return max((ends(task) for task in downstream), default=0.0)


# ---------------------------------------------------------------- the published version


def content_hash(version: Path) -> str:
    """docs/architecture.md's content hash of a published version: the SHA-256, cut to 16 hex digits,
    of every Parquet file read back with Polars (its path in the version, schema and rows as NDJSON)."""
    import polars as pl

    digest = hashlib.sha256()
    for path in sorted(version.rglob("*.parquet")):
        frame = pl.read_parquet(path)
        digest.update(path.relative_to(version).as_posix().encode())
        digest.update(repr(frame.schema).encode())
        digest.update(frame.write_ndjson().encode())
    return digest.hexdigest()[:16]


def published(lake: Path) -> dict[str, Any]:
    """The lake's current version: its name, content hash, and every file's rows and SHA-256
    (pipelines/publish/versions.py verify_version checks them against the files)."""
    from pipelines.publish.versions import verify_version

    current = lake / "published" / "current"
    manifest = verify_version(current)
    return {"version": manifest["version"], "content_hash": content_hash(current), "files": manifest["files"]}


def same_content(nights: Mapping[int, Mapping[str, Any]]) -> None:
    """Every worker count published the same content (hash and files); else an AssertionError naming them."""
    hashes = {
        n: (night["published"]["content_hash"], night["published"]["files"]) for n, night in nights.items()
    }
    if len({json.dumps(h, sort_keys=True) for h in hashes.values()}) > 1:
        raise AssertionError(
            "the nights published different content: "
            + ", ".join(f"{n} worker(s) {h[0]}" for n, h in sorted(hashes.items()))
        )


# ---------------------------------------------------------------- the bench


def bench_night(
    workers: int,
    sources: Path,
    business_date: str,
    work: Path,
    *,
    database_prefix: str = "credit_bench",
    redis_db: int = REDIS_DB,
    extra: Mapping[str, str] | None = None,
    timeout: float = 3600,
    keep: bool = False,
) -> dict[str, Any]:
    """One night on ``workers`` workers: a fresh database and lake, the deployment, the run, its
    figures and what it published."""
    out = work / f"{workers}w"
    lake = out / "lake"
    shutil.rmtree(out, ignore_errors=True)
    database = f"{database_prefix}_{workers}w"
    run_id = f"bench-{workers}w"
    conf = {"sources_dir": str(sources), "lake_dir": str(lake), "business_date": business_date}
    with deployment(workers, database, out, redis_db, extra) as running:
        started = time.monotonic()
        state = run_night(running, run_id, conf, timeout)
        waited = time.monotonic() - started
        figures = summarise(read_run(running, run_id))
    night = {
        "workers": workers,
        "deployment_start_seconds": running.started_seconds,
        "trigger_to_end_seconds": round(waited, 1),
        **figures,
        # a failed night published nothing: its figures still say where it stopped
        "published": published(lake) if state == "success" else None,
        # what the components ran with: the settings file, under the bench's own (the environment wins)
        "settings": celery_settings() | {k: v for k, v in running.env.items() if k.startswith("AIRFLOW__")},
    }
    if not keep and state == "success":  # a failed night's lake and database are kept to look at
        shutil.rmtree(lake, ignore_errors=True)
        drop_database(night["settings"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    return night


def print_nights(nights: Mapping[int, Mapping[str, Any]]) -> None:
    """The comparison table, then each night's task instances."""
    columns = (
        ("workers", "workers", "{}"),
        ("wall s", "wall_seconds", "{:.1f}"),
        ("tasks", "task_instances", "{}"),
        ("overhead/task s", "overhead_per_task", "{:.2f}"),
        ("queued->start mean/max s", None, None),
        ("longest path s", "longest_path_seconds", "{:.1f}"),
        ("peak MB", "largest_peak_mb", "{:,.0f}"),
        ("peak task", "largest_peak_task", "{}"),
        ("content hash", None, None),
    )
    rows = []
    for night in nights.values():
        row = []
        for title, key, form in columns:
            if title.startswith("queued"):
                delays = (night["queued_to_start_mean"], night["queued_to_start_max"])
                row.append(" / ".join("-" if d is None else f"{d:.2f}" for d in delays))
            elif title == "content hash":
                row.append(night["published"]["content_hash"] if night["published"] else night["state"])
            else:
                row.append("-" if night[key] is None else form.format(night[key]))
        rows.append(row)
    widths = [max(len(c[0]), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print("  ".join(c[0].rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    for night in nights.values():
        met = night["wall_seconds"] <= GOAL_SECONDS and (night["largest_peak_mb"] or 0) <= GOAL_TASK_MB
        print(
            f"\n{night['workers']} worker(s): deployment up in {night['deployment_start_seconds']} s; "
            f"stage seconds {night['stage_seconds_total']}, CPU seconds {night['cpu_seconds_total']}; "
            f"load average {night['load_average_before']} before, {night['load_average_after']} after; "
            f"goal ({GOAL_SECONDS} s, {GOAL_TASK_MB} MB a task) {'met' if met else 'not met'}\n"
            f"tasks per worker {night['tasks_per_worker']}; critical path {' > '.join(night['critical_path'])}"
        )
        print(
            f"{'task':<36}{'worker':>9}{'queued>start':>13}{'duration':>10}{'stage s':>9}{'CPU s':>8}{'peak MB':>9}"
        )
        for t in night["tasks"]:
            print(
                f"{t['task']:<36}{t['worker'] or '-':>9}"
                + "".join(
                    f"{'-' if t[k] is None else f'{t[k]:,.1f}':>{w}}"
                    for k, w in (
                        ("queued_to_start", 13),
                        ("duration", 10),
                        ("stage_seconds", 9),
                        ("cpu_seconds", 8),
                        ("peak_mb", 9),
                    )
                )
            )


def generate(entities: int, seed: int, out: Path) -> Path:
    """``credit generate`` into ``out`` (kept: the next bench reuses it)."""
    if not (out / "manifest.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [
                str(BIN / "credit"),
                "generate",
                "--entities",
                str(entities),
                "--seed",
                str(seed),
                "--days",
                "1",
                "--out",
                str(out),
            ],
            check=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--sources", type=Path, help="generated sources (credit generate's folder)")
    given.add_argument(
        "--generate", type=int, metavar="ENTITIES", help="generate this many firms into WORK first"
    )
    parser.add_argument("--seed", type=int, default=7, help="with --generate")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run")
    parser.add_argument("--date", help="business date (default: the sources' end date, manifest.json)")
    parser.add_argument(
        "--work", type=Path, default=ROOT / "bench" / "out" / "workers", help="lakes, logs, results"
    )
    parser.add_argument("--keep", action="store_true", help="keep each night's lake and metadata database")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a night may take")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an Airflow setting over deploy/celery.env's, e.g. AIRFLOW__CELERY__WORKER_CONCURRENCY=1",
    )
    args = parser.parse_args(argv)
    from foundation.lake import write_json

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sources = (
        args.sources or generate(args.generate, args.seed, work / f"sources-{args.generate}")
    ).resolve()
    business_date = args.date or json.loads((sources / "manifest.json").read_text("utf-8"))["end_date"]
    extra = dict(item.split("=", 1) for item in args.set)
    results = {
        "sources": str(sources),
        "business_date": business_date,
        "records": json.loads((sources / "manifest.json").read_text("utf-8")).get("records"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }
    nights: dict[int, dict[str, Any]] = {}
    for workers in args.workers:
        print(
            f"bench_workers: {workers} worker(s), {sources}, {business_date} ({os.getloadavg()[0]:.1f} load)",
            flush=True,
        )
        before = [round(x, 2) for x in os.getloadavg()]
        nights[workers] = bench_night(
            workers, sources, business_date, work, extra=extra, timeout=args.timeout, keep=args.keep
        )
        nights[workers] |= {
            "load_average_before": before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
        # written after every night: a later night that fails loses none of the earlier ones
        write_json({**results, "nights": nights}, work / "bench_workers.json")
    print_nights(nights)
    print(f"\nresults: {work / 'bench_workers.json'}")
    failed = {n: night["state"] for n, night in nights.items() if night["state"] != "success"}
    if failed:
        raise SystemExit(f"bench_workers: nights that did not succeed (workers: state): {failed}")
    same_content(nights)
    print("every worker count published the same content")
    return 0


if __name__ == "__main__":
    sys.exit(main())
