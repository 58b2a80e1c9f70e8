"""The night's stages, in order: the one table the Airflow DAG (dags/credit_nightly.py) and
``credit run`` (``run_all`` here) both read, so the two cannot drift apart.

A stage names its plain function by import path, imported only when the stage runs: the DAG file
imports this module while it is parsed, so it holds nothing but the standard library and the
settings. Which failures may be retried is declared here too (``NEVER_RETRIED``, ``RETRIED``);
the DAG turns it into an Airflow retry policy. How often and how long (retries, timeouts, owner)
is tuned in config/nightly.toml.
"""

from __future__ import annotations

import inspect
import itertools
import resource
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from typing import Any

from foundation.errors import DataQualityError, SourceFormatError, SourceUnavailableError
from foundation.settings import config_path


@dataclass(frozen=True)
class Stage:
    """One step of the night. Its function takes, by parameter name, what it needs of the run:
    ``source`` (per-source stages), ``sources_dir``, ``lake_dir``, ``business_date``, ``run_id``,
    ``full_relink``; it returns a small JSON-able dict (paths and counts)."""

    #: the Airflow task id (inside the source's task group when per_source) and the progress label
    name: str
    #: "module.function", imported when the stage runs
    function: str
    #: once for every registered source, or once for the whole night
    per_source: bool
    #: what it does, shown as the task's documentation in the Airflow UI
    doc: str
    #: may a failure be retried (the transient ones: RETRIED)? config/nightly.toml [retry] says how
    retryable: bool = False
    #: returns {"ok": False, "problems": [...]} when the source's batch is held back (the DAG shows
    #: the task skipped); the run goes on with the source's last good snapshot
    judges_batch: bool = False
    #: runs for a held-back source too, to carry its last good snapshot forward
    after_held_back: bool = False
    #: a mapped stage runs once for every item of the list the stage before it returns under this
    #: key (Airflow's dynamic task mapping; in order, in-process, in ``credit run``), with the item
    #: given to its function as the parameter ``item``; the stage after it gathers what the items
    #: wrote (and runs when the list was empty)
    mapped_over: str | None = None
    #: the mapped stage's parameter that takes one item ("shard", "partition")
    item: str | None = None

    def label(self, source: str | None = None, item: int | None = None) -> str:
        """The stage's name for people: "extract lending", "resolve entities", "build profiles
        shard 2"."""
        mapped = None if item is None else f"{self.item} {item}"
        return " ".join(filter(None, (self.name.replace("_", " "), source, mapped)))


STAGES: tuple[Stage, ...] = (
    Stage(
        "plan_extract",
        "pipelines.sources.stages.plan_extract",
        per_source=True,
        retryable=True,
        doc="Count the source's records changed since the last published run and cut them into "
        "shards of `extract_shard_rows` (config/sources.toml; a file source is one shard), ranges "
        "of its id column, each read by an `extract` task of its own (retried while the source is "
        "unavailable).",
    ),
    Stage(
        "extract",
        "pipelines.sources.stages.extract_source",
        per_source=True,
        retryable=True,
        mapped_over="shards",
        item="shard",
        doc="Copy one shard of the source's records changed since the last published run into "
        "`LAKE/raw` (retried while the source is unavailable; unreadable deliveries are judged by "
        "`check`).",
    ),
    Stage(
        "check",
        "pipelines.sources.stages.check_source",
        per_source=True,
        judges_batch=True,
        doc="Gather the shards, then batch checks (readable, every mapped column there, volume "
        "against the last run, staleness), and list the shards to standardise. A failing batch is "
        "held back: a critical source fails here, any other falls back to its last good snapshot and "
        "this task ends skipped (its standardise shards too), so the grid shows it at a glance.",
    ),
    Stage(
        "standardise",
        "pipelines.quality.stages.standardise_source",
        per_source=True,
        mapped_over="shards",
        item="shard",
        doc="Map one extract shard's raw records to the canonical schema (`LAKE/staged`) and check each "
        "row with the source's standardised Great Expectations suite: accepted changes and quarantined "
        "rows, with reasons, for `validate`, once the raw suite passed on the batch's sample (every "
        "shard judges the same rows; where it fails the batch will be held back, its rows unchecked).",
    ),
    Stage(
        "validate",
        "pipelines.quality.stages.validate_source",
        per_source=True,
        after_held_back=True,
        doc="Gather the shards: the raw suite's verdict (a failure holds the batch back, as `check` "
        "does), batch-level checks (a failure no row carries, record ids unique across shards: they "
        "fail the task without retries), then quarantine (`LAKE/quarantine`) and the accepted changes "
        "upserted into the source's snapshot (`LAKE/accepted`); a held-back batch is quarantined whole "
        "and its last good snapshot carried forward.",
    ),
    Stage(
        "prepare_resolution",
        "pipelines.resolution.stages.prepare_resolution",
        per_source=False,
        doc="Compare the accepted records of all sources and cut the candidate graph into partitions "
        "of about `partition_signatures` (the engine spec's `[scale]`, config/resolution.toml); "
        "an incremental night is linked here whole and has no partitions.",
    ),
    Stage(
        "resolve_partition",
        "pipelines.resolution.stages.resolve_partition",
        per_source=False,
        mapped_over="partitions",
        item="partition",
        doc="Cluster and grade one partition of the candidate graph (`LAKE/work/<date>/resolution`).",
    ),
    Stage(
        "resolve_entities",
        "pipelines.resolution.stages.resolve_entities",
        per_source=False,
        doc="Gather the partitions into links and entities (`LAKE/work/<date>/links, entities`), "
        "update the registry aside and write the review queue.",
    ),
    Stage(
        "plan_profiles",
        "pipelines.profiles.stages.plan_profiles",
        per_source=False,
        doc="Cut the entities to build into shards of `profile_shard_entities` (config/nightly.toml "
        "`[mapping]`), ranges of their ids, and work out what tonight must rebuild.",
    ),
    Stage(
        "build_profiles",
        "pipelines.profiles.stages.build_profiles",
        per_source=False,
        mapped_over="shards",
        item="shard",
        doc="The credit profiles of one shard of entities (`LAKE/work/<date>/profiles/`).",
    ),
    Stage(
        "validate_profiles",
        "pipelines.publish.stages.validate_profiles",
        per_source=False,
        doc="Checks on the profile table, over all shards; a failure stops the run before "
        "publishing, without retries.",
    ),
    Stage(
        "publish",
        "pipelines.publish.stages.publish",
        per_source=False,
        doc="Gather the shards into one version, switch `current` to it and tell downstream DAGs "
        "which version it is.",
    ),
)

#: failures a retry cannot mend, and why: the DAG's retry policy fails the task at once
NEVER_RETRIED: dict[type[Exception], str] = {
    DataQualityError: "a data-quality failure: a person has to look at the data; retrying will not change it",
    SourceFormatError: "the source delivered data that cannot be read; retrying will not help",
}
#: transient failures: a retryable stage retries them (every other failure follows the stage's retries)
RETRIED: tuple[type[Exception], ...] = (SourceUnavailableError,)


def _check_order(stages: tuple[Stage, ...]) -> None:
    """The DAG chains each source's stages, then joins the sources for the whole-night stages: a
    per-source stage after a whole-night one has no place in that shape."""
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"pipelines.flow.STAGES: stage names repeat: {names}")
    kinds = [stage.per_source for stage in stages]
    first_whole_night = kinds.index(False) if False in kinds else 0
    if not first_whole_night or any(kinds[first_whole_night:]):
        raise ValueError(f"pipelines.flow.STAGES: per-source stages first, then whole-night ones: {names}")
    for before, stage, after in zip((None, *stages[:-1]), stages, (*stages[1:], None), strict=True):
        if stage.mapped_over is None:
            continue
        # the items come from the stage before (of the same kind, not mapped itself) and a stage of
        # the same kind after gathers what they wrote
        if (
            not stage.item
            or before is None
            or after is None
            or before.per_source != stage.per_source
            or after.per_source != stage.per_source
            or before.mapped_over
            or after.mapped_over
        ):
            raise ValueError(
                f"pipelines.flow.STAGES: mapped stage {stage.name} needs an item parameter, a stage of its "
                f"kind before it that lists the items and one after it that gathers them: {names}"
            )


_check_order(STAGES)
PER_SOURCE = tuple(stage for stage in STAGES if stage.per_source)
WHOLE_NIGHT = tuple(stage for stage in STAGES if not stage.per_source)
#: stages whose result lists the items of the mapped stage after them: the mapped stage, by their name
PLANS = {before.name: stage for before, stage in itertools.pairwise(STAGES) if stage.mapped_over}
#: stages that gather what the mapped stage before them wrote
GATHERS = frozenset(stage.name for before, stage in itertools.pairwise(STAGES) if before.mapped_over)


def stage_function(stage: Stage) -> Callable[..., dict[str, Any]]:
    """The stage's plain function, imported now (not when the DAG file is parsed)."""
    module, _, name = stage.function.rpartition(".")
    return getattr(import_module(module), name)


def preload() -> list[str]:
    """Import every stage's function and what the stages import on first use, in a process that
    forks the task processes (a Celery worker: deploy/worker_preload.py), so that each task starts
    with them imported rather than paying for them again (Great Expectations' import costs a
    standardise shard about 5 CPU s). The forked task processes share these pages until they
    write to them (Airflow's own preload freezes its objects for the same reason). Returns the
    modules imported, in order."""
    from pipelines.quality.suites import SLOW_IMPORTS

    modules = list(dict.fromkeys(stage.function.rpartition(".")[0] for stage in STAGES))
    for stage in STAGES:
        stage_function(stage)
    for name in SLOW_IMPORTS:
        import_module(name)
    return [*modules, *SLOW_IMPORTS]


def run_stage(
    stage: Stage, run: Mapping[str, Any], source: str | None = None, item: int | None = None
) -> dict[str, Any]:
    """Call the stage's function with what it asks of ``run`` (its parameters, by name) and, for a
    per-source stage, the source; for a mapped stage, its item."""
    function = stage_function(stage)
    values = {**run, "source": source} if stage.per_source else dict(run)
    if stage.mapped_over:
        if item is None:
            raise TypeError(f"stage {stage.name} is mapped over {stage.mapped_over}: it needs an item")
        values[stage.item] = item  # type: ignore[index]
    parameters = inspect.signature(function).parameters
    missing = [
        name
        for name, parameter in parameters.items()
        if name not in values and parameter.default is inspect.Parameter.empty
    ]
    if missing:
        raise TypeError(
            f"stage {stage.name} ({stage.function}) needs {missing}; the run gives {sorted(values)}"
        )
    from pipelines.quality.suites import SLOW_IMPORTS

    # (imported before the call: by this process's parent, a preloading worker or executor)
    preloaded = all(name in sys.modules for name in SLOW_IMPORTS)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    result = function(**{name: values[name] for name in parameters if name in values})
    if not isinstance(result, dict):
        return result
    return {
        **result,
        "resources": {
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(_cpu_seconds() - cpu_started, 2),
            "peak_mb": _peak_mb(),
            "preloaded": preloaded,
        },
    }


# What a stage cost (its result's ``resources``): wall and CPU seconds of its call, and the largest
# resident memory of its process or of a process it waited for, so that a run's costs can be read
# from its task results (bench/bench_workers.py). In ``credit run`` every stage shares one process:
# the peak is the largest so far.
def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_mb() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 1)


def run_all(
    sources_dir: str,
    lake_dir: str,
    business_date: str,
    run_id: str | None = None,
    progress: bool = False,
    full_relink: bool = False,
) -> dict[str, Any]:
    """The whole night in-process, stage by stage in the table's order (each per-source stage for
    every source before the next stage), with the same functions the DAG's tasks call; the results
    by stage label ("extract lending", "publish"). ``full_relink``: re-link the whole snapshot even
    after a published night."""
    from tqdm import tqdm

    from pipelines.sources.registry import source_names

    run = {
        "sources_dir": sources_dir,
        "lake_dir": lake_dir,
        "business_date": business_date,
        "run_id": run_id or f"cli__{business_date}",
        "full_relink": full_relink,
    }
    sources = source_names()
    steps = [(stage, source) for stage in PER_SOURCE for source in sources]
    steps += [(stage, None) for stage in WHOLE_NIGHT]
    results: dict[str, Any] = {}
    before: dict[str | None, dict[str, Any]] = {}  # per source (None: the whole night), the last result
    bar = tqdm(steps, desc="credit run", unit="step", disable=not progress)
    for stage, source in bar:
        label = stage.label(source)
        bar.set_postfix_str(label)
        if stage.mapped_over:  # every item in order; the result is the list of the items' results
            items = before[source][stage.mapped_over]
            results[label] = [run_stage(stage, run, source, item) for item in items]
            continue
        results[label] = before[source] = run_stage(stage, run, source)
    return results


@dataclass(frozen=True)
class NightlySettings:
    """config/nightly.toml: the DAG's owner, timeouts and how a retryable stage retries."""

    owner: str
    run_timeout: timedelta
    task_timeouts: dict[str, timedelta]
    retries: int
    retry_delay: timedelta
    retry_backoff: float
    max_retry_delay: timedelta
    #: retries of every task, used only when its worker is lost (see the DAG's retry policies)
    lost_task_retries: int

    def task_timeout(self, task: str) -> timedelta:
        """A task's execution_timeout, by its name without the source group."""
        return self.task_timeouts.get(task, self.task_timeouts["default"])


def nightly_settings() -> NightlySettings:
    """config/nightly.toml (CREDIT_NIGHTLY_CONFIG points a deployment at its own)."""
    path = config_path("nightly.toml")
    settings = tomllib.loads(path.read_text("utf-8"))
    try:
        retry, timeouts = settings["retry"], settings["task_timeout_minutes"]
        timeouts["default"]  # every task not listed gets it
        return NightlySettings(
            owner=settings["owner"],
            run_timeout=timedelta(minutes=settings["run_timeout_minutes"]),
            task_timeouts={task: timedelta(minutes=minutes) for task, minutes in timeouts.items()},
            retries=retry["retries"],
            retry_delay=timedelta(seconds=retry["delay_seconds"]),
            retry_backoff=float(retry["backoff"]),
            max_retry_delay=timedelta(minutes=retry["max_delay_minutes"]),
            lost_task_retries=retry["lost_task_retries"],
        )
    except KeyError as missing:
        raise KeyError(f"{path}: no setting {missing}") from None
