"""credit_nightly: pull the departmental sources, check them, resolve firms, publish profiles.

Thin on purpose: every task calls one plain function in ``pipelines.stages`` (imported inside the
task so that parsing this file stays cheap) and passes only paths and counts through XCom.
"""

from __future__ import annotations

import logging
import os
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import (
    Asset,
    CronTriggerTimetable,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    TaskGroup,
    dag,
    task,
)
from airflow.sdk.exceptions import AirflowFailException

from pipelines.settings import config_path

REPO = Path(__file__).resolve().parent.parent
TIMEZONE = "Asia/Shanghai"
# The source list comes from the declarative registry (a small TOML read, no database access).
SOURCES_CONFIG = config_path("sources.toml")
SOURCES = tuple(tomllib.loads(SOURCES_CONFIG.read_text("utf-8"))["sources"])
log = logging.getLogger(__name__)
PROFILES_ASSET = Asset(name="credit_profiles", uri="credit://published/current/profiles")

# A source that is down may come back: retry. One that delivers unreadable data will not: fail.
EXTRACT_RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception="pipelines.errors.SourceFormatError",
            action=RetryAction.FAIL,
            reason="the source delivered data that cannot be read; retrying will not help",
        ),
        RetryRule(exception="pipelines.errors.SourceUnavailableError", action=RetryAction.RETRY),
    ]
)


def notify_failure(context: Any) -> None:
    """Failure callback: log which task failed and why, and send the same as a JSON alert (to the
    webhook in CREDIT_ALERT_WEBHOOK if set)."""
    from pipelines.notify import send_alert

    ti = context.get("task_instance") or context.get("ti")
    task_id, error = getattr(ti, "task_id", None), context.get("exception")
    log.error(
        "credit_nightly: task %s failed in run %s: %s: %s",
        task_id,
        context.get("run_id"),
        type(error).__name__,
        error,
    )
    send_alert(
        {
            "dag_id": "credit_nightly",
            "task_id": task_id,
            "run_id": context.get("run_id"),
            "try_number": getattr(ti, "try_number", None),
            "error": str(error),
        }
    )


def _fail_on_quality(call: Any, *args: Any) -> Any:
    """Data-quality failures are not retried: a person has to look at the data."""
    from pipelines.quality import DataQualityError

    try:
        return call(*args)
    except DataQualityError as exc:
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id="credit_nightly",
    schedule=CronTriggerTimetable("0 2 * * *", timezone=TIMEZONE),
    start_date=pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
    catchup=False,
    max_active_runs=1,
    tags=["credit", "nightly"],
    doc_md=__doc__,
    default_args={"on_failure_callback": notify_failure, "retries": 0},
    params={
        "sources_dir": Param(
            os.environ.get("CREDIT_SOURCES") or str(REPO / "data" / "sources"),
            type="string",
            description="folder of the file-drop sources and default SQLite databases",
        ),
        "lake_dir": Param(
            os.environ.get("CREDIT_LAKE") or str(REPO / "data" / "lake"),
            type="string",
            description="lake folder: raw, staged, accepted, quarantine, published",
        ),
        "business_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="business date to process; default: the day before the run",
        ),
    },
)
def credit_nightly() -> None:
    @task
    def plan(**context: Any) -> dict[str, str]:
        """Fix the business date once: the run at 02:00 on day X processes day X - 1 (Asia/Shanghai),
        unless the `business_date` param says otherwise."""
        params = context["params"]
        business_date = params.get("business_date")
        if not business_date:
            run_time = context.get("logical_date") or context["dag_run"].run_after
            business_date = (
                pendulum.instance(run_time).in_timezone(TIMEZONE).subtract(days=1).date().isoformat()
            )
        return {
            "business_date": business_date,
            "sources_dir": params["sources_dir"],
            "lake_dir": params["lake_dir"],
        }

    @task(
        retries=3,
        retry_delay=timedelta(seconds=10),
        retry_exponential_backoff=2.0,
        max_retry_delay=timedelta(minutes=5),
        retry_policy=EXTRACT_RETRY_POLICY,
    )
    def extract(run: dict[str, str], source: str) -> dict[str, Any]:
        """Copy the source's records changed since the last published run into `LAKE/raw` (retried
        while the source is unavailable; unreadable deliveries are judged by `check`)."""
        from pipelines.stages import extract_source

        return extract_source(source, run["sources_dir"], run["lake_dir"], run["business_date"])

    @task(retries=0)
    def check(run: dict[str, str], source: str, extracted: dict[str, Any]) -> dict[str, Any]:
        """Batch checks (readable, every mapped column there, volume against the last run,
        staleness). A failing batch is held back: a critical source fails here, any other falls back
        to its last good snapshot."""
        from pipelines.stages import check_source

        return _fail_on_quality(check_source, source, run["lake_dir"], run["business_date"])

    @task
    def standardise(run: dict[str, str], source: str, checked: dict[str, Any]) -> dict[str, Any]:
        """Map the raw records to the canonical schema (`LAKE/staged`)."""
        from pipelines.stages import standardise_source

        return standardise_source(source, run["lake_dir"], run["business_date"])

    @task(retries=0)
    def validate(run: dict[str, str], source: str, staged: dict[str, Any]) -> dict[str, Any]:
        """Great Expectations checks: the raw suite on a sample (a failure holds the batch back, as
        `check` does), then the standardised suite: good rows to `LAKE/accepted`, bad rows to
        `LAKE/quarantine`; a batch-level failure fails the task without retries."""
        from pipelines.stages import validate_source

        return _fail_on_quality(validate_source, source, run["lake_dir"], run["business_date"])

    @task
    def resolve_entities(run: dict[str, str], validated: list[dict[str, Any]]) -> dict[str, Any]:
        """Link the accepted records of all sources to firms (`LAKE/work/<date>/links, entities`)."""
        from pipelines.stages import resolve_entities as resolve

        return resolve(run["lake_dir"], run["business_date"])

    @task
    def explain_links(run: dict[str, str], resolved: dict[str, Any]) -> dict[str, Any]:
        """Per link, the name and code as recorded and the match grade (code, name, legal rep)."""
        from pipelines.stages import explain_links as explain

        return explain(run["lake_dir"], run["business_date"])

    @task
    def build_profiles(run: dict[str, str], resolved: dict[str, Any]) -> dict[str, Any]:
        """One credit profile per firm (`LAKE/work/<date>/profiles`)."""
        from pipelines.stages import build_profiles as build

        return build(run["lake_dir"], run["business_date"])

    @task(retries=0)
    def validate_profiles(run: dict[str, str], built: dict[str, Any]) -> dict[str, Any]:
        """Checks on the profile table; a failure stops the run before publishing, without retries."""
        from pipelines.stages import validate_profiles as check

        return _fail_on_quality(check, run["lake_dir"], run["business_date"])

    @task(outlets=[PROFILES_ASSET])
    def publish(run: dict[str, str], checked: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Switch `current` to the new version and tell downstream DAGs which version it is."""
        from pipelines.stages import publish as publish_version

        result = publish_version(run["lake_dir"], run["business_date"], context["run_id"])
        context["outlet_events"][PROFILES_ASSET].extra = {
            "version": result["version"],
            "business_date": run["business_date"],
            "profiles": result["profiles"],
            "path": result["path"],
        }
        return result

    run = plan()
    validated = []
    for source in SOURCES:
        with TaskGroup(group_id=source, tooltip=f"extract, check, standardise and validate {source}"):
            extracted = extract(run, source)
            staged = standardise(run, source, check(run, source, extracted))
            validated.append(validate(run, source, staged))
    resolved = resolve_entities(run, validated)
    publish(run, validate_profiles(run, build_profiles(run, explain_links(run, resolved))))


credit_nightly()
