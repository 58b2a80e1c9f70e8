"""The local executor of this repository (airflow.cfg's ``[core] executor``): Airflow's LocalExecutor,
with the stages and their slow imports loaded once in the scheduler before it forks its workers.

A LocalExecutor forks its worker processes from the scheduler, and each worker forks a process per
task (Airflow 3's task supervisor); a task process starts with whatever its parents had imported.
Plain, every one of a night's 40 task processes imports the stage modules again, and the ones
that check data import Great Expectations (about 4 CPU s each: seven a night). Here they are
imported once (``pipelines.flow.preload``, as each Celery worker does at start:
deploy/worker_preload.py), and the pages are shared with every process forked after. Where
workers are spawned rather than forked (macOS' default start method), nothing changes.
"""

from __future__ import annotations

import logging
import time

from airflow.executors.local_executor import LocalExecutor

from pipelines.flow import preload

log = logging.getLogger(__name__)


class PreloadingLocalExecutor(LocalExecutor):
    """LocalExecutor whose forked workers (and their task processes) find the stages imported."""

    def start(self) -> None:
        if self.is_mp_using_fork:
            started = time.perf_counter()
            try:
                modules = preload()
            except Exception:  # noqa: BLE001 - the scheduler runs on; each task meets the error itself
                log.exception(
                    "credit executor: the stages could not be preloaded; each task process imports "
                    "them itself, and a task that needs what failed fails with this error"
                )
            else:
                log.info(
                    "credit executor: preloaded %d modules for the task processes in %.1f s: %s",
                    len(modules),
                    time.perf_counter() - started,
                    ", ".join(modules),
                )
        super().start()
