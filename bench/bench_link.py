"""Benchmark: `entity_resolution.engine.link` on about a million enterprise records.

Takes the accepted records of a lake built by `bench/bench_pipeline.py --keep` (every tenth true
firm, all its records, so the truth stays whole), links them with the enterprise spec in a fresh
process, and prints seconds and peak memory per step, candidate pairs, pair shards, partitions and
the largest one, the share of true pairs the blocking keeps, and pairwise / B-cubed scores overall
and over pairs involving a record without a valid code. Build the lake with
`bench/accepted_lake.py` (the stages up to the accepted records only).

    nice .venv/bin/python bench/accepted_lake.py --entities 1060000 --workdir /work/data
    nice .venv/bin/python bench/bench_link.py --lake /work/data/lake-1060000 \
        --sources /work/data/sources-1060000 --share 10      # ~1M records; --share 1: ~10M
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from entity_resolution.pipeline import enterprise_inputs  # noqa: E402

RUNNER = """
import json, os, resource, sys, time
from pathlib import Path
import polars as pl
from entity_resolution.engine import link
from entity_resolution.spec import load_spec
records = pl.scan_parquet(sys.argv[1])  # read a chunk at a time by link
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
load = os.getloadavg()
start = time.perf_counter()
result = link(records, load_spec("enterprise"), keep_pairs=False, work_dir=Path(sys.argv[3]))
seconds = time.perf_counter() - start
result.links.write_parquet(sys.argv[2])
result.assignments.sink_parquet(sys.argv[4])
print(json.dumps({"seconds": seconds, "load": load, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "input_mb": loaded, "stats": result.stats}))
"""


def build_input(lake: Path, sources: Path, share: int, out: Path, layer: str = "accepted") -> tuple[int, int]:
    """Write the records to link (``out``), their valid codes (``codes.parquet``: record id, uscc)
    and the truth of the firms kept (``truth.parquet``) beside it. Run in a process of its own: a
    process started from one that held the input would inherit its peak memory (``ru_maxrss``
    survives fork and exec), so the engine's figure would be the benchmark's, not its own."""
    truth = pl.read_parquet(sources / "truth" / "records.parquet").select(
        (pl.col("source") + ":" + pl.col("source_record_id")).alias("record_id"), "entity_key"
    )
    keep = truth.filter(pl.col("entity_key").hash(seed=1) % share == 0)
    files = sorted(glob.glob(str(lake / layer / "*" / "*.parquet")))
    if not files:
        raise SystemExit(f"no {layer} records in {lake}: build them with bench/accepted_lake.py")
    accepted = (
        pl.concat([pl.scan_parquet(f) for f in files], how="vertical_relaxed")
        .select(*enterprise_inputs(), pl.col("uscc").alias("_valid_uscc"))
        .join(keep.lazy().select("record_id"), on="record_id")
        .collect()
    )
    accepted.drop("_valid_uscc").write_parquet(out)
    accepted.select("record_id", pl.col("_valid_uscc").alias("uscc")).write_parquet(
        out.parent / "codes.parquet"
    )
    keep.write_parquet(out.parent / "truth.parquet")
    return accepted.height, keep["entity_key"].n_unique()


def blocking_recall(truth: pl.DataFrame, assignments: pl.DataFrame, pairs: pl.LazyFrame) -> float:
    """Share of true record pairs that blocking keeps: same signature, same exact-key node, or a
    candidate pair between their signatures."""
    per_sig = truth.join(assignments, on="record_id").group_by("entity_key", "sig", "node").len()
    sig_pairs = per_sig.join(per_sig, on="entity_key", suffix="_r").filter(pl.col("sig") < pl.col("sig_r"))
    wanted = sig_pairs.select(
        pl.col("sig").cast(pl.UInt32).alias("l"), pl.col("sig_r").cast(pl.UInt32).alias("r")
    )
    candidates = (
        pairs.select(pl.col("l").cast(pl.UInt32), pl.col("r").cast(pl.UInt32))
        .join(wanted.lazy(), on=["l", "r"], how="semi")
        .with_columns(pl.lit(True).alias("c"))
        .collect()
    )
    sig_pairs = sig_pairs.join(candidates, left_on=["sig", "sig_r"], right_on=["l", "r"], how="left")
    weight = pl.col("len") * pl.col("len_r")
    total = (
        sig_pairs.select(weight.sum()).item()
        + per_sig.select((pl.col("len") * (pl.col("len") - 1) / 2).sum()).item()
    )
    kept = (
        sig_pairs.filter(pl.col("c").fill_null(False) | (pl.col("node") == pl.col("node_r")))
        .select(weight.sum())
        .item()
        + per_sig.select((pl.col("len") * (pl.col("len") - 1) / 2).sum()).item()
    )
    return kept / total if total else 1.0


def phase_table(stats: dict) -> str:
    """Per step of the engine: wall seconds, CPU seconds (all threads; on a loaded machine the wall
    time is the CPU time stretched by the other processes) and the peak memory by its end."""
    lines = [f"  {'step':<11}{'wall s':>9}{'cpu s':>9}{'peak MB':>10}"]
    wall_before = cpu_before = 0.0
    for name, wall in stats["seconds"].items():
        cpu = stats["cpu_seconds"][name]
        lines.append(
            f"  {name:<11}{wall - wall_before:>9.1f}{cpu - cpu_before:>9.1f}{stats['peak_mb'][name]:>10,}"
        )
        wall_before, cpu_before = wall, cpu
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", type=Path, default=ROOT / "bench" / "out" / "lake-1060000")
    parser.add_argument("--sources", type=Path, default=ROOT / "bench" / "out" / "sources-1060000")
    parser.add_argument("--share", type=int, default=10, help="keep every n-th true firm")
    parser.add_argument(
        "--layer",
        choices=("accepted", "staged"),
        default="accepted",
        help="link the accepted records, or the staged ones of a lake built without validation",
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / "bench" / "out" / "link", help="the engine's work directory"
    )
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        records, firms = pool.submit(
            build_input, args.lake, args.sources, args.share, work / "records.parquet", args.layer
        ).result()
    print(
        f"input: {records:,} records of {firms:,} true firms "
        f"({time.perf_counter() - started:.1f} s to prepare)"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            str(work / "records.parquet"),
            str(work / "links.parquet"),
            str(work / "engine"),
            str(work / "assignments.parquet"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    run = json.loads(out.stdout.strip().splitlines()[-1])
    codes, truth = pl.read_parquet(work / "codes.parquet"), pl.read_parquet(work / "truth.parquet")

    from entity_resolution.evaluate import entities_with_two_codes, evaluate, pairwise_involving

    links = pl.read_parquet(work / "links.parquet")
    scores = evaluate(links, truth, key=("record_id",))
    hard = pairwise_involving(links, truth, codes.filter(pl.col("uscc").is_null())["record_id"])
    recall = blocking_recall(
        truth,
        pl.read_parquet(work / "assignments.parquet"),
        pl.scan_parquet(work / "engine" / "shards" / "*.parquet"),
    )
    stats = run["stats"]
    print(
        f"\nlink: {run['seconds']:.1f} s, {stats['cpu_seconds']['total']:.1f} CPU s, peak memory "
        f"{run['peak_mb']:,.0f} MB (2 cores; the process before linking {run['input_mb']:,.0f} MB; load "
        f"average {run['load'][0]:.1f} before, {os.getloadavg()[0]:.1f} after)"
    )
    print(phase_table(stats))
    print(
        f"  pair shards {stats['pair_shards']:,}; partitions {stats['partitions']:,}, the largest "
        f"{stats['largest_partition']:,} signatures (largest component {stats['largest_component']:,})"
    )
    print("  records per match rule:", json.dumps(stats["match_rules"]))
    print(
        f"  signatures {stats['signatures']:,}; candidate pairs {stats['candidate_pairs']:,}; linked pairs "
        f"{stats['linked_pairs']:,}; refused by constraints {stats['refused_by_constraints']:,}; review pairs "
        f"{stats['review_pairs']:,}; entities {stats['entities']:,}"
    )
    print(f"  blocking keeps {recall:.4%} of true pairs")
    print(
        f"  all pairs: precision {scores.pairwise_precision:.4f} recall {scores.pairwise_recall:.4f} "
        f"F1 {scores.pairwise_f1:.4f}; B-cubed F1 {scores.bcubed_f1:.4f}"
    )
    print(
        f"  pairs involving a record without a valid code ({hard['true_pairs']:,} true pairs): precision "
        f"{hard['pairwise_precision']:.4f} recall {hard['pairwise_recall']:.4f} F1 {hard['pairwise_f1']:.4f}"
    )
    print(f"  entities holding two different valid USCCs: {entities_with_two_codes(links, codes)}")
    print(f"(this process peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
