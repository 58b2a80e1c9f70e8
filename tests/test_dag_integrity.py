"""DAG integrity: the DAG imports, is scheduled as intended, and parsing touches no database."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "credit_nightly" in dagbag.dags


def test_schedule_timezone_and_concurrency(dagbag) -> None:
    from airflow.sdk import CronTriggerTimetable

    dag = dagbag.dags["credit_nightly"]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 2 * * *"
    assert str(getattr(dag.timetable.timezone, "name", dag.timetable.timezone)) == "Asia/Shanghai"
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_tasks_retries_and_order(dagbag) -> None:
    dag = dagbag.dags["credit_nightly"]
    sources = ("lending", "tax", "contract", "product_quality", "social_insurance", "violations")
    for source in sources:
        extract = dag.get_task(f"{source}.extract")
        validate = dag.get_task(f"{source}.validate")
        assert extract.retries == 3 and extract.retry_exponential_backoff
        assert extract.max_retry_delay == timedelta(minutes=5)
        assert extract.retry_policy is not None
        assert validate.retries == 0
        assert f"{source}.standardise" in extract.downstream_task_ids
        assert "resolve_entities" in validate.downstream_task_ids
    assert dag.get_task("validate_profiles").retries == 0
    assert dag.get_task("publish").upstream_task_ids == {"plan", "validate_profiles"}
    assert "build_profiles" in dag.get_task("resolve_entities").downstream_task_ids


def test_publish_emits_the_profiles_asset(dagbag) -> None:
    outlets = dagbag.dags["credit_nightly"].get_task("publish").outlets
    assert [asset.name for asset in outlets] == ["credit_profiles"]


PARSE_WITHOUT_DATABASE = textwrap.dedent(
    """
    import importlib.util, json, sqlite3, sys, time
    import airflow, airflow.sdk  # airflow's own start-up may configure its ORM; the DAG file may not
    import sqlalchemy

    def refuse(*args, **kwargs):
        raise RuntimeError("database or connection access while parsing the DAG")

    sqlalchemy.create_engine = refuse
    sqlite3.connect = refuse
    airflow.sdk.BaseHook.get_connection = classmethod(refuse)
    airflow.sdk.Variable.get = staticmethod(refuse)
    before = set(sys.modules)
    start = time.perf_counter()
    spec = importlib.util.spec_from_file_location("credit_nightly_dag", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seconds = time.perf_counter() - start
    heavy = sorted(m for m in set(sys.modules) - before
                   if m.split(".")[0] in {"polars", "pandas", "great_expectations", "pyarrow", "rapidfuzz",
                                          "entity_resolution"}
                   or (m.startswith("pipelines.") and m != "pipelines.errors"))
    print(json.dumps({"seconds": seconds, "heavy": heavy, "dag": module.credit_nightly.__name__}))
    """
)


def test_parsing_touches_no_database_and_stays_cheap() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARSE_WITHOUT_DATABASE, str(DAGS / "credit_nightly.py")],
        capture_output=True, text=True, cwd=REPO,
        env={**__import__("os").environ, "AIRFLOW_HOME": str(REPO), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"the DAG file imports heavy modules at parse time: {report['heavy']}"
    assert report["seconds"] < 5, report
