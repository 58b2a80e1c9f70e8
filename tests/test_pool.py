"""The engine's worker pool starts from a daemonic process: where an Airflow task runs under the
CeleryExecutor (a child of the worker's pool), which multiprocessing otherwise refuses."""

from __future__ import annotations

import multiprocessing
from typing import Any


def _pool_in_a_daemon(queue: Any) -> None:
    from entity_resolution.internals.pool import process_pool

    with process_pool(2) as pool:
        queue.put(sorted(pool.map(abs, [-3, 1, -2])))
    queue.put(multiprocessing.current_process().daemon)  # the flag is back


def test_a_daemonic_process_runs_the_pool_and_stays_daemonic() -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_pool_in_a_daemon, args=(queue,), daemon=True)
    process.start()
    try:
        assert queue.get(timeout=60) == [1, 2, 3]
        assert queue.get(timeout=30) is True
    finally:
        process.join(60)
    assert process.exitcode == 0
