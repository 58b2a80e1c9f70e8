"""Profile: an incremental night's resolution alone, on a lake a `bench/bench_pipeline.py --keep` run
left, with time and resident memory per step of `entity_resolution.pipeline.resolve_changes`.

Runs `pipelines.resolution.stages.prepare_resolution` for ``--date`` (running it again starts the
night's resolution over, so the kept lake serves any number of runs), in this process, and prints
after each step its seconds, the peak resident size sampled every 0.2 s while it ran, and the
resident size after it; then the engine's own step times and the night's counts.

    nice .venv/bin/python bench/profile_night_resolution.py --lake /work/data/incr-1m/lake-1060000 \
        --date 2026-11-23 --config /work/data/incr-1m/resolution-no-weekly.toml
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the steps timed: (module, class or None, function)
STEPS = (
    ("entity_resolution.pipeline", None, "_snapshot_spellings"),
    ("entity_resolution.pipeline", None, "blocking_keys"),
    ("entity_resolution.pipeline", None, "_within_reach"),
    ("entity_resolution.pipeline", None, "_engine"),
    ("entity_resolution.pipeline", None, "_firm_links"),
    ("entity_resolution.pipeline", None, "entities_table"),
    ("entity_resolution.pipeline", None, "_upserted"),
    ("entity_resolution.registry", "Registry", "members"),
    ("entity_resolution.registry", "Registry", "update"),
    ("entity_resolution.registry", "Registry", "record_members"),
    ("entity_resolution.registry", "Registry", "_update_representatives"),
    ("entity_resolution.registry", "Registry", "key_representatives"),
)
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class Sampler:
    """The peak resident size since the last ``reset``, sampled every 0.2 s in a thread."""

    def __init__(self) -> None:
        self.peak = resident_mb()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, resident_mb())
            time.sleep(0.2)

    def reset(self) -> None:
        self.peak = resident_mb()


def timed(function: Callable[..., Any], name: str, sampler: Sampler, start: float) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        outer = sampler.peak  # (a step inside another: the outer one's peak is kept)
        sampler.reset()
        try:
            return function(*args, **kwargs)
        finally:
            print(
                f"{time.perf_counter() - start:7.1f} s  {name:24s} {time.perf_counter() - began:6.1f} s"
                f"  peak {sampler.peak:7,.0f} MB  after {resident_mb():7,.0f} MB",
                flush=True,
            )
            sampler.peak = max(outer, sampler.peak)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--date", required=True, help="the incremental night to resolve again")
    parser.add_argument("--config", help="a config/resolution.toml to use (CREDIT_RESOLUTION_CONFIG)")
    args = parser.parse_args()
    if args.config:
        os.environ["CREDIT_RESOLUTION_CONFIG"] = args.config
    import importlib

    from pipelines.resolution.stages import NIGHT_STATE, prepare_resolution

    sampler = Sampler()
    start = time.perf_counter()
    for module_name, owner, name in STEPS:
        target = importlib.import_module(module_name)
        target = getattr(target, owner) if owner else target
        setattr(target, name, timed(getattr(target, name), name, sampler, start))
    planned = prepare_resolution(args.lake, args.date)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"prepare_resolution {time.perf_counter() - start:.1f} s, CPU {usage.ru_utime + usage.ru_stime:.1f} s, "
        f"peak {usage.ru_maxrss / 1024:,.0f} MB; {planned['mode']}"
    )
    night = json.loads((Path(args.lake) / "work" / args.date / "resolution" / NIGHT_STATE).read_text("utf-8"))
    stats = night.get("stats") or {}
    print("engine (first round), seconds at the end of each step:", stats.get("seconds"))
    counts = (
        "changed_records", "freed_entities", "relinked_records", "representatives_compared",
        "representatives", "candidate_pairs", "touched_entities",
    )  # fmt: skip
    print({key: stats.get(key) for key in counts})


if __name__ == "__main__":
    main()
