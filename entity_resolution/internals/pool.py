"""The workers of the engine's parallel steps (normalising chunks, resolving partitions)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager


@contextmanager
def process_pool(workers: int) -> Iterator[Executor]:
    """``workers`` spawned processes (forking a process that holds Polars' thread pool is unsafe).

    An Airflow task under the CeleryExecutor runs in a daemonic process (a child of the worker's
    pool), which multiprocessing forbids to start processes of its own (and whose inherited
    process state cannot be handed to a spawned one). There the workers are threads: the steps
    spend their time in Polars and rapidfuzz, which release the GIL, and each writes its own
    files, so the result is the same."""
    if multiprocessing.current_process().daemon:
        with ThreadPoolExecutor(workers) as threads:
            yield threads
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool
