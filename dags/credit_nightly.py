"""credit_nightly: pull the departmental sources, check them, resolve firms, publish profiles.

Thin on purpose: every task calls one plain function in ``pipelines.stages`` (imported inside the
task so that parsing this file stays cheap) and passes only paths and counts through XCom.

Every run reports itself: `plan` (the run's setup) replaces the date's report with a "running"
one, a failed task records what failed and why, and `report` (the run's teardown, which runs
whatever failed and does not decide the run's state) writes the final report and Data Docs. When
Airflow fails the run before `report` could run (the run timed out, or `plan` failed), the DAG's
failure callback writes the report instead. The "Run report" button of `plan` and `report` opens
the report over http in the Airflow API server (plugins/credit_run_reports.py). A source held back
and carried forward from its last good snapshot shows its `check` task as skipped. Owner and
timeouts come from config/nightly.toml.
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
    BaseOperatorLink,
    CronTriggerTimetable,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    TaskGroup,
    dag,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipelines.settings import airflow_lake, config_path

REPO = Path(__file__).resolve().parent.parent
TIMEZONE = "Asia/Shanghai"
# The source list comes from the declarative registry (a small TOML read, no database access).
SOURCES_CONFIG = config_path("sources.toml")
SOURCES = tuple(tomllib.loads(SOURCES_CONFIG.read_text("utf-8"))["sources"])
NIGHTLY_CONFIG = config_path("nightly.toml")
NIGHTLY = tomllib.loads(NIGHTLY_CONFIG.read_text("utf-8"))
log = logging.getLogger(__name__)
RUN_TIMEOUT = timedelta(minutes=NIGHTLY["run_timeout_minutes"])
#: why Airflow failed a run (the `reason` of the DAG failure callback), as the run report says it
RUN_FAILURE_REASONS = {
    "timed_out": f"timed out: still running after its dagrun_timeout of {RUN_TIMEOUT}",
    "task_failure": "a task failed",
    "all_tasks_deadlocked": "no task could run (deadlock)",
}
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


def task_timeout(name: str) -> timedelta:
    """A task's execution_timeout from config/nightly.toml (its name without the source group)."""
    minutes = NIGHTLY["task_timeout_minutes"]
    return timedelta(minutes=minutes.get(name, minutes["default"]))


def plan_of(context: Any) -> dict[str, str]:
    """The run's business date and folders from its params: the run at 02:00 on day X processes
    day X - 1 (Asia/Shanghai) unless the `business_date` param says otherwise. `plan` returns it;
    the callbacks and the report link work it out the same way, whatever ran."""
    params = context["params"]
    business_date = params.get("business_date")
    if not business_date:
        run_time = context.get("logical_date") or context["dag_run"].run_after
        business_date = pendulum.instance(run_time).in_timezone(TIMEZONE).subtract(days=1).date().isoformat()
    return {
        "business_date": business_date,
        "sources_dir": params["sources_dir"],
        "lake_dir": params["lake_dir"],
    }


class RunReportLink(BaseOperatorLink):
    """The "Run report" button (on `plan` and `report`): the run's report, served over http by the
    Airflow API server to users who may read this DAG's runs (serving/run_reports.py)."""

    name = "Run report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        # called in the task's process when the task ends, with its task instance (any end state)
        from airflow.sdk import conf

        from serving.run_reports import report_url

        run = plan_of(ti_key.get_template_context())
        return report_url(run["business_date"], conf.get("api", "base_url", fallback=None))


def task_states(dag_id: str, run_id: str) -> dict[str, str]:
    """Every task's state in the run, asked of Airflow (the task's or the DAG processor's supervisor)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    try:
        found = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    except NameError:  # no supervisor to ask: `airflow dags test` runs DAG callbacks on its own
        log.warning("credit_nightly: the task states of run %s cannot be asked here", run_id)
        return {}
    return {task: str(getattr(state, "value", state)) for task, state in found.items()}


def report_failed_run(context: Any) -> None:
    """DAG failure callback: Airflow failed the run. When that happened before the `report` task
    could run (the run timed out: Airflow skips what is unfinished; or `plan` failed), the report is
    written here, naming the task the timeout stopped; otherwise the report gains the reason."""
    from pipelines.report import finish_failed_run

    reason = str(context.get("reason") or "failed")
    if "params" not in context:  # no task instance in the context: nothing says which lake and date
        log.error(
            "credit_nightly: run %s failed (%s); no context to write its report", context["run_id"], reason
        )
        return
    run, ti = plan_of(context), context.get("ti")
    why = RUN_FAILURE_REASONS.get(reason, reason)
    stopped = {ti.task_id: f"stopped: the run {why}"} if reason == "timed_out" and ti is not None else {}
    page = finish_failed_run(
        run["lake_dir"],
        run["business_date"],
        context["run_id"],
        task_states(context["dag"].dag_id, context["run_id"]),
        reason=why,
        stopped=stopped,
    )
    log.error("credit_nightly: run %s failed (%s); run report: %s", context["run_id"], why, page)


def notify_failure(context: Any) -> None:
    """Failure callback: log which task failed and why, keep it for the run report, and send the
    same as a JSON alert (to the webhook in CREDIT_ALERT_WEBHOOK if set)."""
    from pipelines.notify import send_alert

    ti = context.get("task_instance") or context.get("ti")
    task_id, error = getattr(ti, "task_id", None), context.get("exception")
    if task_id is not None:
        from pipelines.report import record_failure

        run = plan_of(context)
        record_failure(run["lake_dir"], run["business_date"], context["run_id"], task_id, error)
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
    from pipelines.errors import DataQualityError

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
    dagrun_timeout=RUN_TIMEOUT,
    on_failure_callback=report_failed_run,
    default_args={
        "owner": NIGHTLY["owner"],
        "on_failure_callback": notify_failure,
        "retries": 0,
        "execution_timeout": task_timeout("default"),
    },
    params={
        "sources_dir": Param(
            os.environ.get("CREDIT_SOURCES") or str(REPO / "data" / "sources"),
            type="string",
            description="folder of the file-drop sources and default SQLite databases",
        ),
        "lake_dir": Param(
            str(airflow_lake()),
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
    @task(execution_timeout=task_timeout("plan"))
    def plan(**context: Any) -> dict[str, str]:
        """Fix the business date once: the run at 02:00 on day X processes day X - 1 (Asia/Shanghai),
        unless the `business_date` param says otherwise; the date's report now says "running"."""
        run = plan_of(context)
        if "run_id" in context:  # a real run (not a unit test calling the function)
            from pipelines.report import start_run

            start_run(run["lake_dir"], run["business_date"], context["run_id"])
        if not Path(run["sources_dir"]).is_dir():
            # a wrong folder is no source outage: fail at once rather than retry every extract
            raise AirflowFailException(f"sources_dir {run['sources_dir']}: no such folder")
        return run

    @task(
        retries=3,
        retry_delay=timedelta(seconds=10),
        retry_exponential_backoff=2.0,
        max_retry_delay=timedelta(minutes=5),
        retry_policy=EXTRACT_RETRY_POLICY,
        execution_timeout=task_timeout("extract"),
    )
    def extract(run: dict[str, str], source: str) -> dict[str, Any]:
        """Copy the source's records changed since the last published run into `LAKE/raw` (retried
        while the source is unavailable; unreadable deliveries are judged by `check`)."""
        from pipelines.stages import extract_source

        return extract_source(source, run["sources_dir"], run["lake_dir"], run["business_date"])

    @task(retries=0, execution_timeout=task_timeout("check"))
    def check(run: dict[str, str], source: str, extracted: dict[str, Any]) -> dict[str, Any]:
        """Batch checks (readable, every mapped column there, volume against the last run,
        staleness). A failing batch is held back: a critical source fails here, any other falls back
        to its last good snapshot and this task ends skipped, so the grid shows it at a glance."""
        from pipelines.stages import check_source

        result = _fail_on_quality(check_source, source, run["lake_dir"], run["business_date"])
        if not result["ok"]:
            raise AirflowSkipException(
                f"source '{source}' held back ({'; '.join(result['problems'])}): its last good snapshot "
                "is carried forward and its profiles are marked stale"
            )
        return result

    # runs after a skipped `check` too: a held-back source is carried forward, not left out
    @task(trigger_rule="none_failed", execution_timeout=task_timeout("standardise"))
    def standardise(run: dict[str, str], source: str) -> dict[str, Any]:
        """Map the raw records to the canonical schema (`LAKE/staged`)."""
        from pipelines.stages import standardise_source

        return standardise_source(source, run["lake_dir"], run["business_date"])

    @task(retries=0, execution_timeout=task_timeout("validate"))
    def validate(run: dict[str, str], source: str, staged: dict[str, Any]) -> dict[str, Any]:
        """Great Expectations checks: the raw suite on a sample (a failure holds the batch back, as
        `check` does), then the standardised suite: good rows to `LAKE/accepted`, bad rows to
        `LAKE/quarantine`; a batch-level failure fails the task without retries."""
        from pipelines.stages import validate_source

        return _fail_on_quality(validate_source, source, run["lake_dir"], run["business_date"])

    @task(execution_timeout=task_timeout("resolve_entities"))
    def resolve_entities(run: dict[str, str], validated: list[dict[str, Any]]) -> dict[str, Any]:
        """Link the accepted records of all sources to firms (`LAKE/work/<date>/links, entities`)."""
        from pipelines.stages import resolve_entities as resolve

        return resolve(run["lake_dir"], run["business_date"])

    @task(execution_timeout=task_timeout("build_profiles"))
    def build_profiles(run: dict[str, str], resolved: dict[str, Any]) -> dict[str, Any]:
        """One credit profile per firm (`LAKE/work/<date>/profiles`)."""
        from pipelines.stages import build_profiles as build

        return build(run["lake_dir"], run["business_date"])

    @task(retries=0, execution_timeout=task_timeout("validate_profiles"))
    def validate_profiles(run: dict[str, str], built: dict[str, Any]) -> dict[str, Any]:
        """Checks on the profile table; a failure stops the run before publishing, without retries."""
        from pipelines.stages import validate_profiles as check

        return _fail_on_quality(check, run["lake_dir"], run["business_date"])

    @task(outlets=[PROFILES_ASSET], execution_timeout=task_timeout("publish"))
    def publish(run: dict[str, str], checked: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Switch `current` to the new version and tell downstream DAGs which version it is."""
        from pipelines.stages import publish as publish_version

        result = publish_version(run["lake_dir"], run["business_date"], context["run_id"])
        context["outlet_events"][PROFILES_ASSET].extra = {
            "version": result["version"],
            "business_date": run["business_date"],
            "profiles": result["profiles"],
            "path": result["path"],
            "report": result["report"],
        }
        return result

    @task(retries=0, execution_timeout=task_timeout("report"))
    def report(run: dict[str, str] | None, **context: Any) -> str:
        """Write the run's report, failed or not: every task's state and what failed, where and why
        (the run's teardown: it runs whatever happened upstream and does not decide the run's state;
        after a failed `plan` it works out the run's date and folders itself)."""
        from pipelines.report import finish_run

        run = run or plan_of(context)
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[context["run_id"]]).get(context["run_id"], {})
        states = {t: str(getattr(s, "value", s)) for t, s in states.items() if t != ti.task_id}
        page = finish_run(run["lake_dir"], run["business_date"], context["run_id"], states)
        log.info("run report: %s (the Run report button opens it)", page.resolve())
        return str(page.resolve())

    run = plan()
    validated = []
    for source in SOURCES:
        with TaskGroup(group_id=source, tooltip=f"extract, check, standardise and validate {source}"):
            checked = check(run, source, extract(run, source))
            staged = standardise(run, source)
            checked >> staged
            validated.append(validate(run, source, staged))
    resolved = resolve_entities(run, validated)
    published = publish(run, validate_profiles(run, build_profiles(run, resolved)))
    reported = report(run)
    for planned_or_reported in (run, reported):
        planned_or_reported.operator.operator_extra_links = [RunReportLink()]
    [*validated, published] >> reported.as_teardown()


credit_nightly()
