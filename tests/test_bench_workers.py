"""bench/bench_workers.py's own logic: the deployment's settings retargeted (and nothing else
changed), the figures it reads out of a run (critical path, overhead per task, tasks per worker,
the largest peak), the content hash it compares between worker counts, and its refusal of nights
that published different content. The whole bench (real Celery workers over a night) runs for
minutes, not here; tests/test_celery.py runs the deployment itself end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bench.bench_workers import (
    celery_settings,
    content_hash,
    critical_path,
    label,
    published,
    retargeted,
    same_content,
    summarise,
    worker_of_tasks,
)

T0 = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)


def test_only_the_addresses_are_retargeted() -> None:
    settings = celery_settings()
    moved = retargeted(settings, "credit_bench_2w", 13, 41234)
    assert moved["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert moved["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/credit_bench_2w")
    assert moved["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert moved["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("/credit_bench_2w")
    assert moved["AIRFLOW__CELERY__BROKER_URL"].endswith(":6379/13")
    assert moved["AIRFLOW__API__PORT"] == "41234"
    old_port = settings["AIRFLOW__API__PORT"]
    # every URL that named the API server's port names the new one, and nothing else is changed
    for key, value in settings.items():
        if f":{old_port}" in value:
            assert moved[key] == value.replace(f":{old_port}", ":41234")
    assert "AIRFLOW__CELERY__WORKER_CONCURRENCY" not in moved
    assert "AIRFLOW__CORE__EXECUTOR" not in moved


def instance(
    task_id: str,
    start: float,
    end: float,
    *,
    map_index: int = -1,
    worker: str = "worker1",
    stage: float | None = None,
    peak: float | None = None,
) -> dict[str, Any]:
    """A task instance as read_run gives it: queued a second before it started."""
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    return {
        "task_id": task_id,
        "map_index": map_index,
        "state": "success",
        "try_number": 1,
        "worker": worker,
        "hostname": "vm",
        "queued": at(start - 1),
        "start": at(start),
        "end": at(end),
        "resources": None if stage is None else {"seconds": stage, "cpu_seconds": stage, "peak_mb": peak},
    }


def night() -> dict[str, Any]:
    """plan -> extract[0], extract[1] (mapped) -> publish -> report; extract[1] is the long item."""
    return {
        "state": "success",
        "start": T0,
        "end": T0 + timedelta(seconds=40),
        "earlier_tries": 0,
        "downstream": {
            "plan": ["extract", "publish", "report"],
            "extract": ["publish", "report"],
            "publish": ["report"],
            "report": [],
        },
        "instances": [
            instance("plan", 2, 4),
            instance("extract", 6, 10, map_index=0, stage=3, peak=500),
            instance("extract", 7, 25, map_index=1, worker="worker2", stage=16, peak=2500),
            instance("publish", 28, 34, stage=5, peak=800),
            instance("report", 36, 39),
        ],
    }


def test_the_figures_of_a_run() -> None:
    figures = summarise(night())
    assert figures["wall_seconds"] == 40
    assert figures["task_instances"] == 5
    # the long item decided the run's end, not the short one
    assert figures["critical_path"] == ["plan", "extract[1]", "publish", "report"]
    # on the path, 21 s of stage work (16 + 5; plan and report report none): 19 s over 4 tasks
    assert figures["critical_path_stage_seconds"] == 21
    assert figures["overhead_per_task"] == pytest.approx(19 / 4)
    # the gaps between the path's tasks: 40 - (2 + 18 + 6 + 3)
    assert figures["critical_path_gaps_per_task"] == pytest.approx(11 / 4)
    # endless slots and no scheduling: 2 + 18 + 6 + 3
    assert figures["longest_path_seconds"] == 29
    assert figures["wall_minus_longest_path_per_task"] == pytest.approx(11 / 5)
    assert figures["queued_to_start_mean"] == 1 and figures["queued_to_start_max"] == 1
    assert figures["tasks_per_worker"] == {"worker1": 4, "worker2": 1}
    assert figures["tasks_per_hostname"] == {"vm": 5}
    assert (figures["largest_peak_mb"], figures["largest_peak_task"]) == (2500, "extract[1]")
    by_task = {t["task"]: t for t in figures["tasks"]}
    assert by_task["extract[1]"]["in_task_overhead"] == 2  # 18 s of task, 16 s of stage
    assert by_task["plan"]["in_task_overhead"] is None


def test_the_critical_path_follows_the_dag_not_the_clock() -> None:
    """A task that ended just before publish started, but is not upstream of it, is not on the path."""
    run = night()
    run["instances"].append(instance("straggler", 3, 27))
    run["downstream"]["straggler"] = []
    figures = summarise(run)
    assert figures["critical_path"] == ["plan", "extract[1]", "publish", "report"]
    assert critical_path([], {}) == []


def test_a_mapped_item_is_named_as_the_grid_names_it() -> None:
    assert label({"task_id": "lending.extract", "map_index": -1, "item": None}) == "lending.extract"
    assert label({"task_id": "build_profiles", "map_index": 2, "item": None}) == "build_profiles[2]"
    assert (
        label({"task_id": "build_profiles", "map_index": 2, "item": "shard 2"}) == "build_profiles[shard 2]"
    )


def test_each_task_is_credited_to_the_worker_that_received_it(tmp_path: Path) -> None:
    (tmp_path / "worker1.log").write_text(
        "x [info] Task execute_workload[0a1b-2c] received [celery.worker.strategy]\n", "utf-8"
    )
    (tmp_path / "worker2.log").write_text(
        "x [info] Task execute_workload[3d4e-5f] received [celery.worker.strategy]\n"
        "x [info] Task execute_workload[3d4e-5f] succeeded in 4.7s: None\n",
        "utf-8",
    )
    (tmp_path / "scheduler.log").write_text("Task execute_workload[9999-99] received\n", "utf-8")
    assert worker_of_tasks(tmp_path) == {"0a1b-2c": "worker1", "3d4e-5f": "worker2"}


@pytest.mark.slow  # publishes a night (shared with tests/test_celery.py): left out by make test-quick
def test_nights_that_published_different_content_are_refused(published_lakes: Any) -> None:
    _, one = published_lakes.lake(300, 5)
    _, other = published_lakes.lake(300, 5)
    first, second = published(one), published(other)
    assert first["content_hash"] == second["content_hash"] and len(first["content_hash"]) == 16
    same_content({1: {"published": first}, 2: {"published": second}})
    # one row of the profiles changed: another content hash, and the bench says so
    version = other / "published" / "current"
    profiles = next((version / "profiles").glob("*.parquet"))
    frame = pl.read_parquet(profiles)
    frame.with_columns(pl.col("name").reverse()).write_parquet(profiles)
    changed = content_hash(version)
    assert changed != first["content_hash"]
    with pytest.raises(AssertionError, match="different content"):
        same_content({1: {"published": first}, 2: {"published": {**second, "content_hash": changed}}})
