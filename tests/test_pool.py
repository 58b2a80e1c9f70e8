"""The engine's workers run where an Airflow task runs under the CeleryExecutor: in a daemonic
process of Celery's billiard pool, which multiprocessing would forbid to start processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import billiard
import pytest


def _pool_in_a_daemon(queue: Any) -> None:
    from entity_resolution.internals.pool import process_pool

    before = (multiprocessing.current_process().daemon, bytes(multiprocessing.current_process().authkey))
    try:
        with process_pool(2) as pool:
            pids = set(pool.map(_worker_pid, range(8)))
            queue.put((type(pool).__name__, os.getpid() not in pids, sorted(pool.map(abs, [-3, 1, -2]))))
    except Exception as error:  # noqa: BLE001 - reported to the test
        queue.put((type(error).__name__, str(error)))
    after = (multiprocessing.current_process().daemon, bytes(multiprocessing.current_process().authkey))
    queue.put(before == after)


def _worker_pid(_: int) -> int:
    return os.getpid()


@pytest.mark.parametrize("start", ["multiprocessing", "billiard"])
def test_a_daemonic_process_runs_the_steps_in_processes(start: str) -> None:
    """From a daemonic process (the standard library's or billiard's, as a Celery worker's pool
    starts it) the steps still run in processes of their own, and the process's settings are as
    they were afterwards."""
    context = multiprocessing.get_context("spawn") if start == "multiprocessing" else billiard
    queue = context.Queue()
    process = context.Process(target=_pool_in_a_daemon, args=(queue,), daemon=True)
    process.start()
    try:
        assert queue.get(timeout=120) == (ProcessPoolExecutor.__name__, True, [1, 2, 3])
        assert queue.get(timeout=60) is True
    finally:
        process.join(60)
    assert process.exitcode == 0


def test_elsewhere_the_steps_run_in_processes_of_their_own() -> None:
    from entity_resolution.internals.pool import process_pool

    with process_pool(2) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
        assert sorted(pool.map(abs, [-3, 1, -2])) == [1, 2, 3]


MAIN_SCRIPT = """
import sys
if __name__ != "__main__":  # as the airflow script, which cannot be run again in a task's child
    raise SystemExit("the main script ran again in a worker")
from entity_resolution.internals.pool import process_pool
with process_pool(2) as pool:
    print(sorted(pool.map(abs, [-3, 1, -2])))
print(getattr(sys.modules["__main__"].__spec__, "name", None))
"""


def test_the_workers_do_not_run_the_main_script_again(tmp_path: Path) -> None:
    """The workers start without the parent's main script (under Airflow: the ``airflow`` command,
    whose set-up fails in a task's children), and the script's own module is as it was after."""
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT, "utf-8")
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[1, 2, 3]", "None"]
