"""The workers of the engine's parallel steps (normalising chunks, resolving partitions)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def process_pool(workers: int) -> Iterator[Executor]:
    """``workers`` spawned processes (forking a process that holds Polars' thread pool is unsafe).

    An Airflow task under the CeleryExecutor runs in a daemonic process (a child of the worker's
    billiard pool): see ``_allowed_children``. Threads instead would hold the GIL in the steps'
    Python parts and leave the second core idle."""
    with (
        _allowed_children(),
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        yield pool


@contextmanager
def _allowed_children() -> Iterator[None]:
    """Let a daemonic process start the pool's processes while the pool lives.

    multiprocessing refuses children to a daemonic process (they would be orphaned if it were
    terminated; the pool's workers end on their own when their parent's pipe closes), and Celery's
    billiard replaces the process's authentication key with its own type, which a spawned child
    cannot receive. Both are set back when the pool has ended."""
    process = multiprocessing.current_process()
    if not process.daemon:
        yield
        return
    saved = dict(process._config)  # noqa: SLF001 - multiprocessing keeps both settings only here
    process._config.pop("daemon", None)  # noqa: SLF001
    process._config["authkey"] = multiprocessing.process.AuthenticationString(bytes(process.authkey))  # noqa: SLF001
    try:
        yield
    finally:
        process._config.clear()  # noqa: SLF001
        process._config.update(saved)  # noqa: SLF001
