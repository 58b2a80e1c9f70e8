"""The real `credit_nightly` DAG, run with `dag.test()` on small generated sources."""

from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from entity_resolution.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
RUN_AT = datetime(2026, 11, 24, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai"))  # processes 2026-11-23


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("dag-sources")
    generate(out, entities=1500, seed=11, days=1, end_date=date(2026, 11, 23))
    return out


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["credit_nightly"]


def states(run) -> dict[str, str]:
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}


def test_nightly_run_publishes_profiles_that_match_the_truth(airflow_db: Path, sources: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    run = load_dag().test(logical_date=RUN_AT, run_conf={"sources_dir": str(sources), "lake_dir": str(lake)})
    assert str(getattr(run.state, "value", run.state)) == "success", states(run)
    current = lake / "published" / "current"
    assert (current / "manifest.json").exists()
    assert current.resolve().name.startswith("2026-11-23_")  # the business date is the day before the run
    profiles = pl.read_parquet(current / "profiles" / "*.parquet")
    links = pl.read_parquet(current / "links" / "*.parquet")
    assert profiles.height > 0 and profiles["entity_id"].is_unique().all()
    scores = evaluate(links, pl.read_parquet(sources / "truth" / "records.parquet"))
    assert scores.firms_with_exactly_one_profile >= 0.95, scores
    summary = (lake / "reports" / "2026-11-23" / "summary.json").read_text("utf-8")
    assert '"extracted"' in summary and '"quarantined"' in summary
    # downstream DAGs learn the published version from the asset event
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()
        extras = [event.extra for event in events]
    assert [extra["version"] for extra in extras] == [current.resolve().name]
    assert extras[0]["business_date"] == "2026-11-23" and extras[0]["profiles"] == profiles.height


def test_missing_source_fails_its_task_and_publishes_nothing(
    airflow_db: Path, sources: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "sources"
    shutil.copytree(sources, broken)
    (broken / "contract" / "enforcement.csv").unlink()
    lake = tmp_path / "lake"
    dag = load_dag()
    for task in dag.tasks:  # retries would only make the test wait
        task.retries = 0
    run = dag.test(logical_date=RUN_AT, run_conf={"sources_dir": str(broken), "lake_dir": str(lake)})
    task_states = states(run)
    assert str(getattr(run.state, "value", run.state)) == "failed"
    assert task_states["contract.extract"] == "failed"
    assert task_states["lending.extract"] == "success"
    assert task_states["publish"] in ("upstream_failed", "None", "skipped")
    assert not (lake / "published" / "current").exists()
    output = "".join(capfd.readouterr())
    assert "source 'contract' is unavailable" in output
