"""The repository's local executor (airflow.cfg's ``[core] executor``, pipelines/executor.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_probe

#: starts each executor as the scheduler does (its workers forked at start), reads what every
#: worker process has mapped, and stops it. SciPy comes in with Great Expectations only (neither
#: Airflow nor the stages import it): mapped in a worker, it was imported before the fork.
PROBE = """
import json, sys
from airflow.configuration import conf
from airflow.executors.executor_loader import ExecutorLoader
from airflow.executors.local_executor import LocalExecutor
configured = ExecutorLoader.import_default_executor_cls()[0]
found = {}
for executor in (LocalExecutor(parallelism=2), configured(parallelism=2)):  # (plain first)
    executor.start()
    maps = [open(f"/proc/{pid}/maps").read() for pid in executor.workers]
    executor.end()
    found[type(executor).__name__] = {
        "workers": len(maps),
        "great_expectations": sum("/scipy/" in m for m in maps),
    }
print(json.dumps({"configured": conf.get("core", "executor"), "local": configured.is_local, **found}))
"""

#: the executor when the preload fails (a stage module that cannot be imported)
BROKEN_PRELOAD = """
import json
import pipelines.executor
def broken():
    raise ImportError("a stage module that cannot be imported")
pipelines.executor.preload = broken
executor = pipelines.executor.PreloadingLocalExecutor(parallelism=2)
executor.start()
workers = [process.is_alive() for process in executor.workers.values()]
executor.end()
print(json.dumps({"workers": workers}))
"""

linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")


@linux_only
def test_the_local_executor_s_workers_start_with_the_stages_imported() -> None:
    """airflow.cfg names PreloadingLocalExecutor: the scheduler imports the stages and Great
    Expectations once and forks its workers after, so every worker (and every task process a worker
    forks) has them; Airflow's plain LocalExecutor, started the same way, has not."""
    found, output = run_probe(PROBE)
    assert found["configured"] == "pipelines.executor.PreloadingLocalExecutor", found
    assert found["local"], found  # (`airflow standalone` keeps a local executor as it is)
    assert found["PreloadingLocalExecutor"] == {"workers": 2, "great_expectations": 2}, found
    assert found["LocalExecutor"] == {"workers": 2, "great_expectations": 0}, found
    assert "credit executor: preloaded" in output


@linux_only
def test_a_preload_that_fails_leaves_the_scheduler_running_and_says_why() -> None:
    """A stage that cannot be imported does not stop the scheduler: its workers start, and the log
    says what failed (the tasks that need it then fail with the same error, each in its own log)."""
    found, output = run_probe(BROKEN_PRELOAD)
    assert found["workers"] == [True, True], found
    assert (
        "the stages could not be preloaded" in output and "a stage module that cannot be imported" in output
    )
