"""The engine's workers run where an Airflow task runs under the CeleryExecutor: in a daemonic
process, which multiprocessing forbids to start processes of its own."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any


def _pool_in_a_daemon(queue: Any) -> None:
    from entity_resolution.internals.pool import process_pool

    try:
        with process_pool(2) as pool:
            queue.put((type(pool).__name__, sorted(pool.map(abs, [-3, 1, -2]))))
    except Exception as error:  # noqa: BLE001 - reported to the test
        queue.put((type(error).__name__, str(error)))


def test_a_daemonic_process_runs_the_steps_in_threads() -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_pool_in_a_daemon, args=(queue,), daemon=True)
    process.start()
    try:
        assert queue.get(timeout=60) == (ThreadPoolExecutor.__name__, [1, 2, 3])
    finally:
        process.join(60)
    assert process.exitcode == 0


def test_elsewhere_the_steps_run_in_processes_of_their_own() -> None:
    from entity_resolution.internals.pool import process_pool

    with process_pool(2) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
        assert sorted(pool.map(abs, [-3, 1, -2])) == [1, 2, 3]
