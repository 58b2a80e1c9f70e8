"""Build a benchmark lake up to the accepted records only (generate, then extract, check,
standardise and validate every source, each in its own process), for benchmarks of the stages
after validation such as `bench/bench_link.py`. ``--until standardise`` stops before the validate
gather (the staged records). A source whose last stage's output exists is skipped, so an
interrupted build resumes.

    nice .venv/bin/python bench/accepted_lake.py --entities 1060000 --workdir /work/data --until standardise
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import run_stage, run_stages  # noqa: E402
from pipelines.flow import PER_SOURCE  # noqa: E402

STAGES = tuple(stage.name for stage in PER_SOURCE)  # the table's per-source stages, in order


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--date", default="2026-11-25")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="the last stage to run")
    args = parser.parse_args()
    sources = args.workdir / f"sources-{args.entities}"
    lake = args.workdir / f"lake-{args.entities}"
    started = time.perf_counter()
    if not (sources / "truth" / "records.parquet").exists():
        run_stage("generate", str(sources), args.entities, args.seed, args.date, 1)
        print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)

    from foundation.lake import Lake
    from pipelines.sources.registry import source_names

    paths = Lake(lake, args.date)
    stages = PER_SOURCE[: STAGES.index(args.until) + 1]
    for source in source_names():
        # a source whose last stage's output is there is done (a stage re-run starts it over)
        done = {"standardise": paths.staged(source), "validate": paths.accepted(source)}.get(args.until)
        if done is not None and done.exists():
            continue
        night = {"sources_dir": str(sources), "lake_dir": str(lake), "business_date": args.date}
        run_stages(stages, night, source)
        print(f"{source} through {args.until} at {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
