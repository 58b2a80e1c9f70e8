"""DAG integrity: the DAG imports, is scheduled as intended, and parsing touches no database."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.sources.registry import source_names

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
DAG_FILE = DAGS / "credit_nightly.py"
SOURCES = tuple(source_names())  # the registry reader, as the DAG uses it
HEAVY = {"polars", "pandas", "numpy", "great_expectations", "pyarrow", "rapidfuzz", "entity_resolution"}
#: first-party modules the DAG may import at parse time: standard library only (the settings, the
#: errors its retry policy names, the stage table, the source registry and the packages around them)
LIGHT = {
    "pipelines",
    "foundation",
    "foundation.errors",
    "foundation.settings",
    "pipelines.flow",
    "pipelines.sources",
    "pipelines.sources.registry",
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["credit_nightly"]


def test_every_dag_file_imports(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "credit_nightly" in dagbag.dags


def test_schedule_timezone_and_concurrency(dag) -> None:
    from airflow.sdk import CronTriggerTimetable

    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 2 * * *"
    assert str(getattr(dag.timetable.timezone, "name", dag.timetable.timezone)) == "Asia/Shanghai"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.start_date < datetime.now(UTC)
    assert {"credit", "nightly"} <= set(dag.tags)
    assert set(dag.params) == {"sources_dir", "lake_dir", "business_date"}


def test_one_task_group_per_registered_source(dag) -> None:
    assert len(SOURCES) >= 6
    groups = {task_id.split(".")[0] for task_id in dag.task_ids if "." in task_id}
    assert groups == set(SOURCES)


def test_retries_only_where_a_retry_can_help(dag) -> None:
    for source in SOURCES:
        extract = dag.get_task(f"{source}.extract")
        assert extract.retries == 3
        assert extract.retry_exponential_backoff
        assert extract.retry_delay == timedelta(seconds=10)
        assert extract.max_retry_delay == timedelta(minutes=5)
        assert extract.retry_policy is not None
        # the others' one retry is for a lost worker only: their retry policy fails any error
        assert dag.get_task(f"{source}.validate").retries == 1
        assert dag.get_task(f"{source}.check").retries == 1
    assert dag.get_task("validate_profiles").retries == 1
    assert all(task.on_failure_callback for task in dag.tasks)


def test_tasks_present_and_ordered(dag) -> None:
    def downstream(task_id: str) -> set[str]:
        return dag.get_task(task_id).get_flat_relative_ids(upstream=False)

    for source in SOURCES:
        assert f"{source}.check" in dag.get_task(f"{source}.extract").downstream_task_ids
        assert f"{source}.standardise" in dag.get_task(f"{source}.check").downstream_task_ids
        assert f"{source}.validate" in dag.get_task(f"{source}.standardise").downstream_task_ids
        assert f"{source}.extract" in dag.get_task(f"{source}.plan_extract").downstream_task_ids
        assert "prepare_resolution" in dag.get_task(f"{source}.validate").downstream_task_ids
        # a source's failure stops its own chain only: no other source's tasks wait on it
        assert not {t for t in downstream(f"{source}.extract") if "." in t and not t.startswith(f"{source}.")}
    assert "resolve_partition" in dag.get_task("prepare_resolution").downstream_task_ids
    assert "resolve_entities" in dag.get_task("resolve_partition").downstream_task_ids
    assert "plan_profiles" in dag.get_task("resolve_entities").downstream_task_ids
    assert "build_profiles" in dag.get_task("plan_profiles").downstream_task_ids
    assert "explain_links" not in dag.task_ids  # the evidence comes out of resolution itself
    assert "validate_profiles" in dag.get_task("build_profiles").downstream_task_ids
    assert dag.get_task("publish").upstream_task_ids == {"plan", "validate_profiles"}
    assert {"resolve_entities", "publish"} <= downstream("plan")
    assert [t.task_id for t in dag.leaves] == ["report"]
    # the report runs after everything, whatever failed, and does not decide the run's state
    report = dag.get_task("report")
    assert report.is_teardown and not report.on_failure_fail_dagrun
    assert report.upstream_task_ids == {"plan", "publish", *(f"{s}.validate" for s in SOURCES)}
    assert [link.name for link in report.operator_extra_links] == ["Run report"]
    # the run's first task has the button too: a run that never reaches `report` has its report
    assert [link.name for link in dag.get_task("plan").operator_extra_links] == ["Run report"]
    assert dag.has_on_failure_callback  # it writes the report when `report` never ran
    # a held-back source skips its check (and so the shards it would list); the gather that follows
    # still runs to carry its snapshot forward
    for source in SOURCES:
        assert dag.get_task(f"{source}.validate").trigger_rule == "none_failed"


def test_mapped_stages_expand_over_what_the_stage_before_lists(dag) -> None:
    """Dynamic task mapping: extract per shard of each source, resolution per partition, profiles
    per shard; the stage after gathers, and runs when there was nothing to map (an incremental
    night has no partitions: Airflow skips a mapped task with no items)."""
    from pipelines.flow import GATHERS, PLANS, STAGES

    mapped = {stage.name: stage for stage in STAGES if stage.mapped_over}
    for task in dag.tasks:
        name = task.task_id.rpartition(".")[2]
        if name in mapped:
            assert task.is_mapped and task.map_index_template == "{{ map_index_label }}", task.task_id
            (planner,) = task.upstream_task_ids - {"plan"}
            assert PLANS[planner.rpartition(".")[2]] is mapped[name]
            (gatherer,) = task.downstream_task_ids
            assert gatherer.rpartition(".")[2] in GATHERS
            assert dag.get_task(gatherer).trigger_rule == "none_failed"
        else:
            assert not getattr(task, "is_mapped", False), task.task_id
    assert {
        task.task_id.rpartition(".")[2] for task in dag.tasks if getattr(task, "is_mapped", False)
    } == set(mapped)


def test_the_tasks_are_the_stage_table(dag) -> None:
    """The DAG is shaped from pipelines/flow.py, the table `credit run` follows: each source's
    stages in a chain, then the whole-night stages in a chain, between `plan` and `report`."""
    from pipelines.flow import PER_SOURCE, WHOLE_NIGHT

    per_source = [stage.name for stage in PER_SOURCE]
    whole_night = [stage.name for stage in WHOLE_NIGHT]
    assert set(dag.task_ids) == {
        "plan",
        "report",
        *whole_night,
        *(f"{source}.{name}" for source in SOURCES for name in per_source),
    }
    for source in SOURCES:
        chained = [f"{source}.{name}" for name in per_source]
        for before, after in zip(chained, chained[1:], strict=False):
            assert dag.get_task(after).upstream_task_ids == {"plan", before}
        assert chained[-1] in dag.get_task(whole_night[0]).upstream_task_ids
    for before, after in zip(whole_night, whole_night[1:], strict=False):
        assert dag.get_task(after).upstream_task_ids == {"plan", before}
    for stage in (*PER_SOURCE, *WHOLE_NIGHT):
        for task in dag.tasks:
            if task.task_id.rpartition(".")[2] == stage.name:
                assert (task.retries > 1) == stage.retryable, task.task_id
                assert task.doc_md == stage.doc


def test_every_task_fails_a_data_quality_failure_at_once_and_retries_an_outage(dag) -> None:
    """Airflow 3.3's ExceptionRetryPolicy on every task, from the flow's lists of failures never
    retried and retried: a stage that may be retried retries an outage, and anything else as its
    retries say; every other task fails any error at once (its retries serve a lost worker, which
    the scheduler retries without asking the policy), however many retries it has."""
    from airflow.sdk import RetryAction

    from foundation.errors import DataQualityError, SourceFormatError, SourceUnavailableError
    from pipelines.flow import STAGES

    retryable = {stage.name for stage in STAGES if stage.retryable}
    for task in dag.tasks:
        decide = task.retry_policy.evaluate
        assert task.retries >= 1, task.task_id  # a lost worker's task runs again on another
        assert decide(DataQualityError("batch held back"), 1, 4).action == RetryAction.FAIL, task.task_id
        assert decide(SourceFormatError("tax", "not GBK"), 1, 4).action == RetryAction.FAIL
        if task.task_id.rpartition(".")[2] in retryable:
            assert decide(SourceUnavailableError("tax", "down"), 1, 4).action == RetryAction.RETRY
            assert decide(OSError("disk full"), 1, 4).action == RetryAction.DEFAULT
        else:
            assert decide(SourceUnavailableError("tax", "down"), 1, 4).action == RetryAction.FAIL
            assert decide(OSError("disk full"), 1, 4).action == RetryAction.FAIL, task.task_id
    assert retryable  # extract


def test_owner_and_timeouts_come_from_configuration(dag) -> None:
    nightly = tomllib.loads((REPO / "config" / "nightly.toml").read_text("utf-8"))
    minutes = nightly["task_timeout_minutes"]
    assert dag.dagrun_timeout == timedelta(minutes=nightly["run_timeout_minutes"])
    for task in dag.tasks:
        name = task.task_id.rpartition(".")[2]
        assert task.owner == nightly["owner"], task.task_id
        assert task.execution_timeout == timedelta(minutes=minutes.get(name, minutes["default"])), (
            task.task_id
        )
    assert len({task.execution_timeout for task in dag.tasks}) > 1  # the per-task overrides apply


def test_publish_emits_the_profiles_asset(dag) -> None:
    from airflow.sdk import Asset

    outlets = dag.get_task("publish").outlets
    assert len(outlets) == 1 and isinstance(outlets[0], Asset)
    assert outlets[0].name == "credit_profiles"


@pytest.mark.parametrize(
    ("run_after", "conf_date", "expected"),
    [
        (datetime(2026, 11, 23, 18, 0, tzinfo=UTC), None, "2026-11-23"),  # 02:00 on 24 Nov in Shanghai
        (datetime(2026, 11, 24, 1, 0, tzinfo=UTC), None, "2026-11-23"),  # a manual run later that day
        (datetime(2026, 11, 23, 18, 0, tzinfo=UTC), "2026-10-01", "2026-10-01"),  # the param wins
    ],
)
def test_business_date_is_the_previous_day_in_shanghai(
    dag, run_after, conf_date, expected, tmp_path: Path
) -> None:
    plan = dag.get_task("plan").python_callable
    params = {"sources_dir": str(tmp_path), "lake_dir": "/l", "business_date": conf_date}
    assert plan(params=params, logical_date=run_after) == {
        "business_date": expected,
        "sources_dir": str(tmp_path),
        "lake_dir": "/l",
    }


def test_a_sources_folder_that_does_not_exist_fails_the_plan_at_once(dag, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    plan = dag.get_task("plan").python_callable
    params = {"sources_dir": str(tmp_path / "nowhere"), "lake_dir": "/l", "business_date": "2026-11-23"}
    with pytest.raises(AirflowFailException, match="nowhere: no such folder"):
        plan(params=params, logical_date=datetime(2026, 11, 23, 18, 0, tzinfo=UTC))


def test_no_heavy_imports_at_the_top_of_the_dag_file() -> None:
    tree = ast.parse(DAG_FILE.read_text("utf-8"))
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module not in LIGHT:
            top_level.add(node.module.split(".")[0])
    assert not top_level & (HEAVY | {"pipelines", "sqlalchemy"}), top_level


PARSE_WITHOUT_DATABASE = textwrap.dedent(
    """
    import json, sqlite3, sys, time
    import airflow, airflow.sdk  # airflow's own start-up may configure its ORM; parsing the DAG may not
    import sqlalchemy, sqlalchemy.engine
    from airflow.dag_processing.dagbag import DagBag

    def refuse(*args, **kwargs):
        raise RuntimeError("database or connection access while parsing the DAG")

    sqlalchemy.create_engine = sqlalchemy.engine.create_engine = refuse
    sqlite3.connect = refuse
    airflow.sdk.BaseHook.get_connection = classmethod(refuse)
    airflow.sdk.Variable.get = staticmethod(refuse)
    before = set(sys.modules)
    start = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    seconds = time.perf_counter() - start
    heavy = sorted(m for m in set(sys.modules) - before
                   if m.split(".")[0] in set(sys.argv[2].split(","))
                   or (m.split(".")[0] in ("pipelines", "foundation") and m not in sys.argv[3].split(",")))
    print(json.dumps({"seconds": seconds, "file_seconds": [s.duration.total_seconds() for s in bag.dagbag_stats],
                      "errors": {str(k): v for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags),
                      "heavy": heavy}))
    """
)


def test_parsing_touches_no_database_and_stays_cheap() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARSE_WITHOUT_DATABASE, str(DAGS), ",".join(sorted(HEAVY)), ",".join(LIGHT)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "AIRFLOW_HOME": str(REPO), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"DAG folder parsed in {report['seconds']:.3f} s (per file: {report['file_seconds']})")
    assert report["errors"] == {}
    assert report["dags"] == ["credit_nightly"]
    assert report["heavy"] == [], f"the DAG file imports heavy modules at parse time: {report['heavy']}"
    assert report["seconds"] < 5, report
