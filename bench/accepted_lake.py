"""Build a benchmark lake up to the accepted records only (generate, then extract, check,
standardise and validate every source, each in its own process), for benchmarks of the stages
after validation such as `bench/bench_link.py`.

    nice .venv/bin/python bench/accepted_lake.py --entities 1060000 --workdir /work/data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import run_stage  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--date", default="2026-11-25")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    sources = args.workdir / f"sources-{args.entities}"
    lake = args.workdir / f"lake-{args.entities}"
    started = time.perf_counter()
    if not (sources / "truth" / "records.parquet").exists():
        run_stage("generate", str(sources), args.entities, args.seed, args.date)
        print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)

    from pipelines.sources import source_names

    for source in source_names():
        run_stage("extract_source", source, str(sources), str(lake), args.date)
        for stage in ("check_source", "standardise_source", "validate_source"):
            run_stage(stage, source, str(lake), args.date)
        print(f"{source} accepted at {time.perf_counter() - started:.0f} s", flush=True)
    print(f"accepted records in {lake / 'accepted'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
