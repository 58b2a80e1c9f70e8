"""credit_nightly: pull the departmental sources, check them, resolve firms, publish profiles.

Thin on purpose: the stages, their order and which may be retried come from the stage table in
``pipelines/flow.py`` (the one ``credit run`` follows too); every stage's task calls its plain
function (imported only when the task runs, so that parsing this file stays cheap) and passes only
paths and counts through XCom. The retry policies fail a data-quality failure or an unreadable
delivery at once and retry a source that is down where the stage may be retried; any task whose
worker was lost (a host gone, under the CeleryExecutor of deploy/) is run again on another.

Every run reports itself: `plan` (the run's setup) replaces the date's report with a "running"
one, a failed task records what failed and why, and `report` (the run's teardown, which runs
whatever failed and does not decide the run's state) writes the final report and Data Docs. When
Airflow fails the run before `report` could run (the run timed out, or `plan` failed), the DAG's
failure callback writes the report instead. The "Run report" button of `plan` and `report` opens
the report over http in the Airflow API server (plugins/credit_run_reports.py). A source held back
and carried forward from its last good snapshot shows its `check` task as skipped (and its
`standardise` shards, none to run), its `validate` carrying the snapshot forward. Owner, timeouts
and how often a retryable stage retries come from config/nightly.toml.
"""

from __future__ import annotations

import logging
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
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from foundation.settings import airflow_lake, airflow_sources
from pipelines.flow import (
    GATHERS,
    NEVER_RETRIED,
    PER_SOURCE,
    PLANS,
    RETRIED,
    WHOLE_NIGHT,
    Stage,
    nightly_settings,
    run_stage,
)
from pipelines.sources.registry import source_names  # the registry: a small TOML read, standard library only

TIMEZONE = "Asia/Shanghai"
# Airflow builds the DAG by running this file, so what is read here (through foundation.settings) is
# read each time the file is parsed; a changed setting shows at the next parse.
NIGHTLY = nightly_settings()
log = logging.getLogger(__name__)


#: why Airflow failed a run (the `reason` of the DAG failure callback), as the run report says it
RUN_FAILURE_REASONS = {
    "timed_out": f"timed out: still running after its dagrun_timeout of {NIGHTLY.run_timeout}",
    "task_failure": "a task failed",
    "all_tasks_deadlocked": "no task could run (deadlock)",
}
PROFILES_ASSET = Asset(name="credit_profiles", uri="credit://published/current/profiles")
#: the asset a stage updates, for downstream DAGs (its event's extra says which version)
OUTLETS = {"publish": PROFILES_ASSET}

# A data-quality failure or an unreadable delivery fails at once (a person has to look). A stage
# that may be retried retries a source that is down, and anything else as its retries say. Every
# other task fails at once on any error it raises: its retries (config/nightly.toml
# lost_task_retries) serve only a task whose worker was lost, which the scheduler fails without an
# error from the task and so without asking the policy.
NEVER_RETRIED_RULES = [
    RetryRule(exception=error, action=RetryAction.FAIL, reason=why) for error, why in NEVER_RETRIED.items()
]
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[*NEVER_RETRIED_RULES, RetryRule(exception=list(RETRIED), action=RetryAction.RETRY)]
)
FAIL_POLICY = ExceptionRetryPolicy(rules=NEVER_RETRIED_RULES, default=RetryAction.FAIL)


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
    from pipelines.publish.report import finish_failed_run

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
    from foundation.notify import send_alert

    ti = context.get("task_instance") or context.get("ti")
    task_id, error = getattr(ti, "task_id", None), context.get("exception")
    map_index = getattr(ti, "map_index", -1)
    if task_id is not None and map_index is not None and map_index >= 0:
        task_id = f"{task_id}_{map_index}"  # a mapped task, named as Airflow's task states name it
    if task_id is not None:
        from pipelines.publish.report import record_failure

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


def stage_settings(stage: Stage) -> dict[str, Any]:
    """A stage's task settings: its timeout, retries if it may be retried, and what else the table
    says (runs after a held-back batch; updates an asset)."""
    settings: dict[str, Any] = {
        "task_id": stage.name,
        "doc_md": stage.doc,
        "execution_timeout": NIGHTLY.task_timeout(stage.name),
        # one XCom, the result: the `-> dict` annotation of the task function would otherwise push
        # each key as an XCom of its own (and refuse a planning stage's list of items)
        "multiple_outputs": False,
    }
    if stage.retryable:
        settings |= {
            "retry_policy": RETRY_POLICY,
            "retries": max(NIGHTLY.retries, NIGHTLY.lost_task_retries),
            "retry_delay": NIGHTLY.retry_delay,
            "retry_exponential_backoff": NIGHTLY.retry_backoff,
            "max_retry_delay": NIGHTLY.max_retry_delay,
        }
    if stage.after_held_back or stage.name in GATHERS:
        # a held-back source's `check` ends skipped, and a mapped stage with no items is skipped:
        # what comes after still runs
        settings["trigger_rule"] = "none_failed"
    if stage.mapped_over:  # the grid names each mapped task by its item ("shard 3")
        settings["map_index_template"] = "{{ map_index_label }}"
    if stage.name in OUTLETS:
        settings["outlets"] = [OUTLETS[stage.name]]
    return settings


def stage_task(stage: Stage) -> Any:
    """The task that runs one stage of the table: its plain function over the run's folders."""

    @task(**stage_settings(stage))
    def execute(
        run: dict[str, str], source: str | None = None, item: int | None = None, **context: Any
    ) -> dict[str, Any] | list[int]:
        if stage.mapped_over:  # the grid's name of this mapped task
            get_current_context()["map_index_label"] = f"{stage.item} {item}"
        result = run_stage(stage, {**run, "run_id": context["run_id"]}, source, item)
        if stage.judges_batch and not result["ok"]:
            raise AirflowSkipException(
                f"source '{source}' held back ({'; '.join(result['problems'])}): its last good snapshot "
                "is carried forward and its profiles are marked stale"
            )
        if stage.name in OUTLETS:  # downstream DAGs learn which version was published
            context["outlet_events"][OUTLETS[stage.name]].extra = {
                "version": result["version"],
                "business_date": run["business_date"],
                "profiles": result["profiles"],
                "path": result["path"],
                "report": result["report"],
            }
        if stage.name in PLANS:
            # Airflow expands only a task's return value: a planning stage returns the items for the
            # mapped stage after it, and keeps its whole result as the XCom "result"
            context["ti"].xcom_push(key="result", value=result)
            return result[PLANS[stage.name].mapped_over]
        return result

    return execute


def chained(stages: tuple[Stage, ...], run: Any, source: str | None = None, after: Any = None) -> Any:
    """The stages' tasks one after the other (the first after ``after``); a mapped stage expands
    over the list the stage before it returned. Returns the last task."""
    previous = None
    for stage in stages:
        if stage.mapped_over:
            step = stage_task(stage).partial(run=run, source=source).expand(item=previous)
        else:
            step = stage_task(stage)(run, source)
        if previous is not None:
            previous >> step
        elif after is not None:
            after >> step
        previous = step
    return previous


@dag(
    dag_id="credit_nightly",
    schedule=CronTriggerTimetable("0 2 * * *", timezone=TIMEZONE),
    start_date=pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
    catchup=False,
    max_active_runs=1,
    tags=["credit", "nightly"],
    doc_md=__doc__,
    dagrun_timeout=NIGHTLY.run_timeout,
    on_failure_callback=report_failed_run,
    default_args={
        "owner": NIGHTLY.owner,
        "on_failure_callback": notify_failure,
        "retries": NIGHTLY.lost_task_retries,
        "retry_delay": NIGHTLY.retry_delay,
        "retry_policy": FAIL_POLICY,
        "execution_timeout": NIGHTLY.task_timeout("default"),
    },
    params={
        "sources_dir": Param(
            str(airflow_sources()),
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
    @task(execution_timeout=NIGHTLY.task_timeout("plan"))
    def plan(**context: Any) -> dict[str, str]:
        """Fix the business date once: the run at 02:00 on day X processes day X - 1 (Asia/Shanghai),
        unless the `business_date` param says otherwise; the date's report now says "running"."""
        run = plan_of(context)
        if "run_id" in context:  # a real run (not a unit test calling the function)
            from pipelines.publish.report import start_run

            start_run(run["lake_dir"], run["business_date"], context["run_id"])
        if not Path(run["sources_dir"]).is_dir():
            # a wrong folder is no source outage: fail at once rather than retry every extract
            raise AirflowFailException(f"sources_dir {run['sources_dir']}: no such folder")
        return run

    @task(execution_timeout=NIGHTLY.task_timeout("report"))
    def report(run: dict[str, str] | None, **context: Any) -> str:
        """Write the run's report, failed or not: every task's state and what failed, where and why
        (the run's teardown: it runs whatever happened upstream and does not decide the run's state;
        after a failed `plan` it works out the run's date and folders itself)."""
        from pipelines.publish.report import finish_run

        run = run or plan_of(context)
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[context["run_id"]]).get(context["run_id"], {})
        states = {t: str(getattr(s, "value", s)) for t, s in states.items() if t != ti.task_id}
        page = finish_run(run["lake_dir"], run["business_date"], context["run_id"], states)
        log.info("run report: %s (the Run report button opens it)", page.resolve())
        return str(page.resolve())

    run = plan()
    last_per_source = []
    for source in source_names():
        stages = ", ".join(stage.name for stage in PER_SOURCE)
        with TaskGroup(group_id=source, tooltip=f"{stages} {source}"):
            last_per_source.append(chained(PER_SOURCE, run, source))
    last = chained(WHOLE_NIGHT, run, after=last_per_source)
    reported = report(run)
    for planned_or_reported in (run, reported):
        planned_or_reported.operator.operator_extra_links = [RunReportLink()]
    [*last_per_source, last] >> reported.as_teardown()


credit_nightly()
