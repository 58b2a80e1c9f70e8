"""A pool of worker processes for the engine's parallel steps (normalising chunks, partitions)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """``workers`` spawned processes (forking a process that holds Polars' thread pool is unsafe).

    An Airflow task under the CeleryExecutor runs in a daemonic process (a child of the worker's
    pool), and multiprocessing refuses to start children from a daemonic process, lest they outlive
    it. These never do: the pool is shut down, its processes joined, before this returns; so the
    flag is lifted for the pool's lifetime and put back after."""
    current = multiprocessing.current_process()
    daemonic = bool(current._config.get("daemon"))  # noqa: SLF001 - the flag Process.start checks
    if daemonic:
        current._config["daemon"] = False  # noqa: SLF001
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    finally:
        if daemonic:
            current._config["daemon"] = True  # noqa: SLF001
