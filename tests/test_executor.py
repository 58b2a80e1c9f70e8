"""The repository's local executor (airflow.cfg's ``[core] executor``, pipelines/executor.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

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


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
def test_the_local_executor_s_workers_start_with_the_stages_imported() -> None:
    """airflow.cfg names PreloadingLocalExecutor: the scheduler imports the stages and Great
    Expectations once and forks its workers after, so every worker (and every task process a worker
    forks) has them; Airflow's plain LocalExecutor, started the same way, has not."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_HOME": str(REPO)},
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["configured"] == "pipelines.executor.PreloadingLocalExecutor", found
    assert found["local"], found  # (`airflow standalone` keeps a local executor as it is)
    assert found["PreloadingLocalExecutor"] == {"workers": 2, "great_expectations": 2}, found
    assert found["LocalExecutor"] == {"workers": 2, "great_expectations": 0}, found
    assert "credit executor: preloaded" in probe.stderr + probe.stdout
