"""The workers of the engine's parallel steps (normalising chunks, resolving partitions)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from typing import Any, TypeVar

_Result = TypeVar("_Result")


@contextmanager
def process_pool(workers: int) -> Iterator[Executor]:
    """``workers`` spawned processes (forking a process that holds Polars' thread pool is unsafe).

    An Airflow task under the CeleryExecutor runs in a daemonic process (a child of the worker's
    billiard pool): see ``_allowed_children``. Threads instead would hold the GIL in the steps'
    Python parts and leave the second core idle."""
    with (
        _allowed_children(),
        _main_not_rerun(),
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        yield pool


class InProcess(Executor):
    """An executor that runs each call at once, in this process (one worker: no pool to start)."""

    def submit(self, fn: Callable[..., _Result], /, *args: Any, **kwargs: Any) -> Future[_Result]:
        done: Future[_Result] = Future()
        done.set_result(fn(*args, **kwargs))
        return done


@contextmanager
def pool_or_here(workers: int) -> Iterator[Executor]:
    """``process_pool(workers)``, or this process alone (``InProcess``) for one worker."""
    if workers <= 1:
        yield InProcess()
        return
    with process_pool(workers) as pool:
        yield pool


@contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Spawned workers without a second run of this process's main script.

    A spawned process runs the parent's ``__main__`` file again unless the module names itself
    ``__main__``; the workers need only the engine's modules. In an Airflow task the main script
    is ``airflow``, whose import sets Airflow up against a metadata database that a task process
    may not reach: every worker died at start."""
    main = sys.modules["__main__"]
    saved = main.__dict__.get("__spec__")
    if getattr(saved, "name", None) is not None:  # run as a module (python -m ...): never re-run
        yield
        return
    main.__spec__ = ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = saved


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
