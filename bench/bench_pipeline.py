"""Benchmark: generate N firms, then run every pipeline stage in its own process (as Airflow does),
printing wall time, records per second and peak memory (RSS) per stage.

    .venv/bin/python bench/bench_pipeline.py --entities 100000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_RUNNER = """
import json, resource, sys, time
from pipelines import stages
name, args = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter()
result = getattr(stages, name)(*args) if name != "generate" else None
if name == "generate":
    from pathlib import Path
    from datetime import date
    from pipelines.generate import generate
    result = generate(Path(args[0]), entities=args[1], seed=args[2], end_date=date.fromisoformat(args[3]))
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "result": result}, default=str))
"""


def run_stage(name: str, *args: object) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STAGE_RUNNER, name, json.dumps(args)], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def validate_in_parallel(sources: list[str], lake: Path, day: str, workers: int = 2) -> float:
    """Wall time of check + validate for every source, ``workers`` sources at a time (each in its own
    process, as Airflow's LocalExecutor runs the task groups)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(source: str) -> None:
        run_stage("check_source", source, str(lake), day)
        run_stage("validate_source", source, str(lake), day)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, sources))
    return time.perf_counter() - start


def machine_reference() -> float:
    """Seconds for a fixed pure-Python loop (20M additions): this machine's speed at the time of
    the run, printed beside the figures because a shared machine's speed varies, even within one run."""
    start = time.perf_counter()
    total = 0
    for i in range(20_000_000):
        total += i
    return time.perf_counter() - start


def import_reference() -> float:
    """Seconds to import Great Expectations in a fresh process (best of two): every check and
    validate task pays it, so it is the fixed part of the validation figures."""
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import great_expectations"], cwd=ROOT, check=True)
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--date", default="2026-11-23")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and lake")
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="time only check + validate, two sources at a time, on the lake a --keep run left",
    )
    args = parser.parse_args()

    sources = args.workdir / f"sources-{args.entities}"
    lake = args.workdir / f"lake-{args.entities}"
    if args.validation_only:
        if not (lake / "staged").exists():
            raise SystemExit(f"no kept lake at {lake}: run with --entities {args.entities} --keep first")
        from pipelines.sources import source_names

        reference = machine_reference()
        wall = validate_in_parallel(source_names(), lake, args.date)
        print(
            f"validation of the kept {args.entities:,}-firm lake, two sources at a time: {wall:.1f} s wall "
            f"(20M-addition loop {reference:.2f} s; Great Expectations import {import_reference():.1f} s)"
        )
        return 0
    shutil.rmtree(lake, ignore_errors=True)
    rows: list[tuple[str, float, int, float]] = []
    reference_before = machine_reference()

    gen = run_stage("generate", str(sources), args.entities, args.seed, args.date)
    records = sum(gen["result"]["rows"].values()) if isinstance(gen["result"].get("rows"), dict) else 0
    rows.append(("generate", gen["seconds"], records, gen["peak_mb"]))

    from pipelines.sources import source_names

    total_start = time.perf_counter()
    for stage in ("extract_source", "check_source", "standardise_source", "validate_source"):
        for source in source_names():
            call = (
                (source, str(sources), str(lake), args.date)
                if stage == "extract_source"
                else (source, str(lake), args.date)
            )
            res = run_stage(stage, *call)
            n = res["result"].get("rows", res["result"].get("extracted", 0))
            if stage == "check_source":
                n = json.loads((lake / "reports" / args.date / "extract" / f"{source}.json").read_text())[
                    "rows"
                ]
            rows.append((f"{stage.split('_')[0]} {source}", res["seconds"], n, res["peak_mb"]))
    for stage, call in (
        ("resolve_entities", (str(lake), args.date)),
        ("explain_links", (str(lake), args.date)),
        ("build_profiles", (str(lake), args.date)),
        ("validate_profiles", (str(lake), args.date)),
        ("publish", (str(lake), args.date, "bench")),
    ):
        res = run_stage(stage, *call)
        n = (
            res["result"].get("records")
            or res["result"].get("links")
            or res["result"].get("profiles")
            or res["result"].get("rows")
            or 0
        )
        rows.append((stage, res["seconds"], int(n), res["peak_mb"]))
    pipeline_seconds = time.perf_counter() - total_start
    parallel_validation = validate_in_parallel(source_names(), lake, args.date)

    import polars as pl

    from entity_resolution.evaluate import evaluate

    scores = evaluate(
        pl.read_parquet(lake / "published" / "current" / "links" / "*.parquet"),
        pl.read_parquet(sources / "truth" / "records.parquet"),
    )

    print(f"\nbenchmark: {args.entities:,} firms, {records:,} source records, 2 cores")
    print(
        f"machine reference (20M-addition Python loop): {reference_before:.2f} s before, "
        f"{machine_reference():.2f} s after; Great Expectations import {import_reference():.1f} s\n"
    )
    print(f"{'stage':<28}{'seconds':>9}{'records':>12}{'records/s':>12}{'peak MB':>10}")
    for name, seconds, n, peak in rows:
        rate = n / seconds if seconds and n else 0
        print(f"{name:<28}{seconds:>9.1f}{n:>12,}{rate:>12,.0f}{peak:>10,.0f}")
    validated = sum(r[2] for r in rows if r[0].startswith("validate "))
    print(
        f"\nvalidation (raw suite + batch checks, standardised suite, quarantine, snapshot) of {validated:,} "
        f"records, sources two at a time as the DAG's task groups run: {parallel_validation:.1f} s wall"
    )
    print(
        f"pipeline end to end (extract..publish, incl. process start-up): {pipeline_seconds:.1f} s;"
        f" peak stage memory {max(r[3] for r in rows[1:]):,.0f} MB"
    )
    print("linkage vs truth:", json.dumps(scores.as_dict()))
    if not args.keep:
        shutil.rmtree(lake, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
