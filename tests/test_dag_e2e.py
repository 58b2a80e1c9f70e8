"""The real `credit_nightly` DAG, run with `dag.test()` on small generated sources."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
RUN_AT = datetime(2026, 11, 24, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai"))  # processes 2026-11-23
BUSINESS_DATE = "2026-11-23"
PREVIOUS_DATE = "2026-11-22"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate

    out = tmp_path_factory.mktemp("dag-sources")
    generate(out, entities=1500, seed=11, days=2, end_date=date(2026, 11, 23))
    return out


def run_report(lake: Path, business_date: str = BUSINESS_DATE) -> str:
    return (lake / "reports" / business_date / "report.html").read_text("utf-8")


#: what the "Run report" button opens, relative to the Airflow API server (serving/run_reports.py)
REPORT_LINK = f"/credit-nightly/reports/{BUSINESS_DATE}/report.html"


def report_link(run, task_id: str = "report") -> str:  # noqa: ANN001 - an Airflow DagRun
    """What the "Run report" button of the run's task opens (the XCom the UI reads)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key="_link_RunReportLink"
        )
        return XComModel.deserialize_value(session.scalars(query).one())


@contextmanager
def dag_processor_supervisor() -> Iterator[None]:
    """What the DAG processor gives a DAG callback in production: a supervisor that answers its
    questions (the run's task states) from the metadata database, through the execution API.
    `dag.test()` runs DAG callbacks without one; this is Airflow's own in-process supervisor, the one
    `dag.test()` gives each task."""
    import psutil
    import structlog
    from airflow.sdk.execution_time.supervisor import (
        InProcessSupervisorComms,
        InProcessTestSupervisor,
        set_supervisor_comms,
    )

    supervisor = InProcessTestSupervisor(
        id=uuid.uuid4(),
        pid=os.getpid(),
        process=psutil.Process(),
        process_log=structlog.get_logger(logger_name="dag-processor").bind(),
        client=InProcessTestSupervisor._api_client(),
    )
    supervisor.comms = InProcessSupervisorComms(supervisor=supervisor)
    with set_supervisor_comms(supervisor.comms):
        yield


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["credit_nightly"]


def state(obj) -> str:
    return str(getattr(obj.state, "value", obj.state))


def states(run) -> dict[str, str]:
    return {ti.task_id: state(ti) for ti in run.get_task_instances()}


def firms_with_exactly_one_profile(links: pl.DataFrame, truth: pl.DataFrame) -> float:
    """Share of true firms whose records all carry one entity_id that holds no record of another firm."""
    joined = truth.join(
        links.select("source", "source_record_id", "entity_id"),
        on=["source", "source_record_id"],
        how="inner",
    )
    pure = (
        joined.group_by("entity_id")
        .agg(pl.col("entity_key").n_unique().alias("firms"))
        .filter(pl.col("firms") == 1)
    )
    whole = (
        joined.group_by("entity_key")
        .agg(pl.col("entity_id").n_unique().alias("ids"), pl.col("entity_id").first())
        .filter(pl.col("ids") == 1)
    )
    return whole.join(pure, on="entity_id").height / truth["entity_key"].n_unique()


def test_nightly_run_publishes_profiles_that_match_the_truth(
    airflow_db: Path,
    sources: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    lake = tmp_path / "lake"
    run = load_dag().test(
        logical_date=RUN_AT,
        run_conf={"sources_dir": str(sources), "lake_dir": str(lake), "business_date": BUSINESS_DATE},
    )
    assert state(run) == "success", states(run)
    assert set(states(run).values()) == {"success"}
    page = run_report(lake)
    assert f"run <b>{run.run_id}</b> success" in page and "<b>published</b>" in page
    assert "What failed" not in page
    assert report_link(run) == report_link(run, "plan") == REPORT_LINK
    current = lake / "published" / "current"
    assert current.resolve().name.startswith(f"{BUSINESS_DATE}_")
    profiles = pl.read_parquet(current / "profiles" / "*.parquet")
    links = pl.read_parquet(current / "links" / "*.parquet")
    assert profiles.height > 0 and profiles["entity_id"].is_unique().all()
    truth = pl.read_parquet(sources / "truth" / "records.parquet").select(
        "source", "source_record_id", "entity_key"
    )
    share = firms_with_exactly_one_profile(links, truth)
    print(f"firms with exactly one profile: {share:.4f}")
    assert share >= 0.95
    # downstream DAGs learn the published version from the asset event
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        extras = [e.extra for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id)]
    assert [extra["version"] for extra in extras] == [current.resolve().name]
    assert extras[0]["business_date"] == BUSINESS_DATE and extras[0]["profiles"] == profiles.height
    # the publish task's log links the run report and the GX Data Docs
    report = lake / "reports" / BUSINESS_DATE / "report.html"
    output = "".join(capfd.readouterr()) + caplog.text
    assert f"run report: {report.resolve()}" in output
    assert "Great Expectations Data Docs: file://" in output
    assert "Skipping registering" not in output  # GX's import noise is kept out of the task logs


def test_a_night_cut_into_shards_and_partitions_publishes_what_credit_run_publishes(
    airflow_db: Path, published_lakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dynamic task mapping: with small shards every large stage runs as several mapped tasks
    (extract per shard of a source, resolution per partition, profiles per shard), and the night
    publishes the same bytes as `credit run` with one task per stage (the default settings)."""
    import json

    from tests.conftest import mapping_settings

    sources, reference = published_lakes.lake(300, 5)  # `credit run`, one shard and partition each
    for name, value in mapping_settings(
        tmp_path / "config", extract_shard_rows=250, partition_signatures=400, profile_shard_entities=60
    ).items():
        monkeypatch.setenv(name, value)
    lake = tmp_path / "lake"
    run = load_dag().test(
        logical_date=RUN_AT,
        run_conf={"sources_dir": str(sources), "lake_dir": str(lake), "business_date": BUSINESS_DATE},
    )
    assert state(run) == "success", states(run)
    mapped: dict[str, set[int]] = {}
    for ti in run.get_task_instances():
        assert state(ti) == "success", ti.task_id
        if ti.map_index >= 0:
            mapped.setdefault(ti.task_id.rpartition(".")[2], set()).add(ti.map_index)
            assert ti.rendered_map_index.startswith(("shard ", "partition ")), ti.rendered_map_index
    assert {name: len(items) > 1 for name, items in mapped.items()} == {
        "extract": True,
        "standardise": True,
        "resolve_partition": True,
        "build_profiles": True,
    }, mapped

    def published(root: Path) -> dict:
        current = root / "published" / "current"
        return json.loads((current / "manifest.json").read_text("utf-8"))["files"]

    assert published(lake) == published(reference)  # every published file: its rows and SHA-256


def test_missing_source_fails_its_task_and_publishes_nothing(
    airflow_db: Path,
    sources: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = tmp_path / "sources"
    shutil.copytree(sources, broken)
    (broken / "contract" / "enforcement.csv").unlink()
    lake = tmp_path / "lake"
    # an earlier attempt at the same date published: its report must not pass for this run's
    earlier = lake / "reports" / BUSINESS_DATE
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text('{"run_id": "earlier-attempt", "published": true, "version": "v0"}')
    (earlier / "report.html").write_text("<p>earlier-attempt: published</p>")
    dag = load_dag()
    for task in dag.tasks:  # retries would only make the test wait
        task.retries = 0
    # no business_date in the conf: the run at 02:00 on 24 Nov derives 23 Nov
    with dag_processor_supervisor():
        run = dag.test(logical_date=RUN_AT, run_conf={"sources_dir": str(broken), "lake_dir": str(lake)})
    task_states = states(run)
    assert state(run) == "failed"
    assert {task for task, s in task_states.items() if s == "failed"} == {"contract.extract"}
    assert task_states["contract.validate"] == "upstream_failed"
    assert task_states["lending.validate"] == "success"
    assert task_states["publish"] != "success"
    assert task_states["report"] == "success"  # the report is written; the run still failed
    assert (lake / "raw" / BUSINESS_DATE / "lending.parquet").exists()
    assert not (lake / "published" / "current").exists()
    output = "".join(capfd.readouterr()) + caplog.text
    assert "source 'contract' is unavailable" in output
    assert "task contract.extract_0 failed" in output  # the failure callback's message (shard 0)
    # the run's report says it failed and names the task, stage, source and error
    page = run_report(lake)
    assert f"run <b>{run.run_id}</b> failed" in page and "<b>NOT published</b>" in page
    assert "earlier-attempt" not in page and "v0" not in page
    assert (
        "<tr><td>contract.extract_0</td><td>extract</td><td>contract</td>"
        "<td>SourceUnavailableError: source &#x27;contract&#x27; is unavailable" in page
    )
    assert "<tr><td>contract.validate</td><td>upstream_failed</td></tr>" in page
    assert "<tr><td>contract</td><td>None</td>" not in page and "not validated in this run" in page
    assert report_link(run) == REPORT_LINK
    # the DAG's failure callback adds why Airflow failed the run
    assert "failed at " in page and "(a task failed)" in page


def test_a_data_quality_failure_is_not_retried_while_a_source_that_is_down_is(
    airflow_db: Path, sources: Path, tmp_path: Path
) -> None:
    """The DAG's retry policy decides from the error, whatever a task's retries: a critical source
    whose batch fails its checks (a data-quality failure) fails at its first try even where retries
    are allowed, while a source that is down is retried and, once its export has arrived, goes on."""
    import sqlite3

    src = tmp_path / "sources"
    shutil.copytree(sources, src)
    lake = tmp_path / "lake"
    with sqlite3.connect(src / "lending" / "lending.db") as con:  # schema drift in a critical source
        con.execute("ALTER TABLE loans RENAME COLUMN five_class TO risk_class")
    court = src / "contract" / "enforcement.csv"
    late = tmp_path / "enforcement.csv"
    court.rename(late)  # the court's export is late: not there at the first try
    dag = load_dag()
    check = dag.get_task("lending.check")
    check.retries, check.retry_delay = 2, timedelta(0)  # retries allowed, and they would come at once
    extract = dag.get_task("contract.extract")
    assert extract.retries > 0
    extract.retry_delay, extract.retry_exponential_backoff = timedelta(0), 0  # no waiting in a test
    extract.on_retry_callback = [lambda context: late.rename(court)]  # delivered before the retry
    with dag_processor_supervisor():
        run = dag.test(
            logical_date=RUN_AT,
            run_conf={"sources_dir": str(src), "lake_dir": str(lake), "business_date": BUSINESS_DATE},
        )
    tries = {ti.task_id: (state(ti), ti.try_number) for ti in run.get_task_instances()}
    assert tries["lending.check"] == ("failed", 1)
    assert tries["contract.extract"] == ("success", 2)
    assert tries["contract.validate"] == ("success", 1)
    assert state(run) == "failed" and tries["publish"][0] == "upstream_failed"
    page = run_report(lake)
    assert (
        "<tr><td>lending.check</td><td>check</td><td>lending</td>"
        "<td>DataQualityError: source &#x27;lending&#x27; batch held back: schema drift" in page
    )
    assert "<td>contract.extract</td><td>extract</td>" not in page  # a retried failure is no failure


def test_a_held_back_source_shows_its_check_skipped_and_the_night_still_publishes(
    airflow_db: Path, sources: Path, tmp_path: Path
) -> None:
    """A non-critical source's bad delivery is carried forward from its last good snapshot: its
    `check` ends skipped (pink in the grid), the rest of its chain and the night go on."""
    from pipelines import flow

    src = tmp_path / "sources"
    shutil.copytree(sources, src)
    lake = tmp_path / "lake"
    flow.run_all(str(src), str(lake), PREVIOUS_DATE, run_id="the night before")
    penalties = src / "violations" / "penalties.csv"  # schema drift: a mapped column renamed
    penalties.write_bytes(penalties.read_bytes().replace("罚款金额（万元）".encode(), "罚款金额".encode(), 1))
    run = load_dag().test(
        logical_date=RUN_AT,
        run_conf={"sources_dir": str(src), "lake_dir": str(lake), "business_date": BUSINESS_DATE},
    )
    task_states = states(run)
    assert state(run) == "success", task_states
    assert task_states["violations.check"] == "skipped"
    # no shards to standardise: the gather still runs and carries the last good snapshot forward
    assert task_states["violations.standardise"] == "skipped"
    assert task_states["violations.validate"] == "success"
    assert task_states["resolve_partition"] == "skipped"  # an incremental night: no partitions
    skipped = ("violations.check", "violations.standardise", "resolve_partition")
    assert {s for t, s in task_states.items() if t not in skipped} == {"success"}
    summary = (lake / "reports" / BUSINESS_DATE / "summary.json").read_text("utf-8")
    assert '"published": true' in summary
    page = run_report(lake)
    assert "<tr><td>violations.check</td><td>skipped</td></tr>" in page
    assert "stale (last good snapshot)" in page and "schema drift" in page


def test_a_failed_plan_still_writes_the_report(airflow_db: Path, tmp_path: Path) -> None:
    """`plan` fails (a sources folder that is not there): nothing but the `report` teardown runs,
    without `plan`'s result (it crashed on that before), and writes the report naming `plan` and
    its error; the DAG's failure callback adds why Airflow failed the run."""
    lake = tmp_path / "lake"
    nowhere = tmp_path / "no-such-sources"
    with dag_processor_supervisor():
        run = load_dag().test(
            logical_date=RUN_AT,
            run_conf={"sources_dir": str(nowhere), "lake_dir": str(lake), "business_date": BUSINESS_DATE},
        )
    task_states = states(run)
    assert state(run) == "failed"
    assert task_states["plan"] == "failed"
    assert task_states["report"] == "success" and task_states["publish"] == "upstream_failed"
    page = run_report(lake)
    assert f"run <b>{run.run_id}</b> failed" in page and "<b>NOT published</b>" in page
    assert "(a task failed)" in page
    assert (
        "<tr><td>plan</td><td>plan</td><td>(all sources)</td>"
        f"<td>AirflowFailException: sources_dir {nowhere}: no such folder</td></tr>" in page
    )
    assert "<tr><td>publish</td><td>upstream_failed</td></tr>" in page
    assert (
        report_link(run, "plan") == report_link(run) == REPORT_LINK
    )  # the button is there on the failed `plan`


def test_a_timed_out_run_writes_the_report_naming_the_task_it_stopped(
    airflow_db: Path, sources: Path, tmp_path: Path
) -> None:
    """A run still going after its dagrun_timeout: Airflow's scheduler fails it and skips every
    unfinished task, the `report` teardown included; the DAG processor runs the DAG's failure
    callback, which writes the report. The night is a real run whose `plan` and extracts ran; the
    task still running is set so in the database (a test cannot wait hours), then the scheduler's
    own timeout step and the DAG processor's own callback step run on it."""
    import structlog
    from airflow.dag_processing.dagbag import DagBag
    from airflow.dag_processing.processor import _execute_dag_callbacks
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    lake = tmp_path / "lake"
    dag = load_dag()
    # plan and the extracts run for real; the rest is only marked done, to be rolled back below
    run = dag.test(
        logical_date=RUN_AT,
        run_conf={"sources_dir": str(sources), "lake_dir": str(lake), "business_date": BUSINESS_DATE},
        mark_success_pattern=r"(?!plan$)(?!.*\.extract$).*",
    )
    stuck = "resolve_entities"
    with create_session() as session:
        dag_run = session.scalar(select(DagRun).where(DagRun.run_id == run.run_id))
        for ti in session.scalars(select(TaskInstance).where(TaskInstance.run_id == run.run_id)):
            if ti.task_id == stuck:
                ti.state, ti.end_date = TaskInstanceState.RUNNING, None
            elif ti.task_id == "plan" or ti.task_id.endswith(".extract"):
                continue
            elif ti.task_id.split(".")[-1] in ("check", "standardise", "validate"):
                continue  # done before the stuck task
            else:
                ti.state, ti.start_date, ti.end_date = None, None, None
        dag_run.state = DagRunState.RUNNING
        dag_run.end_date = None
        dag_run.start_date = datetime.now(tz=ZoneInfo("UTC")) - dag.dagrun_timeout - timedelta(minutes=1)
        session.commit()
        request = SchedulerJobRunner(job=Job())._schedule_dag_run(dag_run, session=session)
        session.commit()
    assert request is not None and request.msg == "timed_out"
    with dag_processor_supervisor():
        _execute_dag_callbacks(DagBag(dag_folder=str(REPO / "dags")), request, structlog.get_logger())
    task_states = states(run)
    assert task_states[stuck] == task_states["report"] == task_states["publish"] == "skipped"
    page = run_report(lake)
    assert f"run <b>{run.run_id}</b> failed" in page and "<b>NOT published</b>" in page
    assert "(timed out: still running after its dagrun_timeout of 6:00:00)" in page
    assert (
        f"<tr><td>{stuck}</td><td>{stuck}</td><td>(all sources)</td>"
        "<td>stopped: the run timed out: still running after its dagrun_timeout of 6:00:00</td></tr>" in page
    )
    assert "<tr><td>report</td><td>skipped</td></tr>" in page
