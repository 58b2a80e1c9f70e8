"""Imported by each Celery worker at start (deploy/celery_config.py): the stages and their slow
imports, once per worker instead of once per task (``pipelines.flow.preload``). The line it
writes to the worker's log says what was imported and what it cost."""

import sys
import time

from pipelines.flow import preload

_started = time.perf_counter()
_modules = preload()
print(
    f"credit worker: preloaded {len(_modules)} modules for the tasks in {time.perf_counter() - _started:.1f} s: "
    + ", ".join(_modules),
    file=sys.stderr,
    flush=True,
)
