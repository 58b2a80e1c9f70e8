"""Our engine and Splink (DuckDB backend) on the same generated enterprise records, side by side.

Both get the same normalised fields (entity_resolution.engine.normalise with the enterprise spec:
simplified name core and key, validated codes, region), so the comparison is of the linkage, not
of the Chinese text handling. Splink gets comparable blocking rules and comparisons, u from random
sampling and m by EM, and clusters at the same link threshold. Splink is an optional benchmark
dependency: `.venv/bin/pip install -e '.[bench]' -c constraints.txt`.

    .venv/bin/python bench/compare_splink.py --records bench/out/link/records.parquet --sources bench/out/sources-1060000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_splink(fields: pl.DataFrame, threshold: float) -> tuple[pl.DataFrame, float, pl.DataFrame]:
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    frame = fields.rename({"record_id": "unique_id"}).to_pandas()
    settings = SettingsCreator(
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[
            block_on("uscc"),
            block_on("org_code"),
            block_on("name_key"),
            block_on("substr(name_core, 1, 2)", "substr(name_core, -2, 2)"),
            block_on("substr(name_core, 1, 3)"),
        ],
        comparisons=[
            cl.ExactMatch("uscc"),
            cl.JaroWinklerAtThresholds("name_core", [0.95, 0.85]),
            cl.ExactMatch("name_legal_form"),
            cl.ExactMatch("region"),
            cl.ExactMatch("name_branch"),
            cl.JaroWinklerAtThresholds("legal_rep", [0.9]),
        ],
        retain_intermediate_calculation_columns=False,
    )
    started = time.perf_counter()
    db_api = DuckDBAPI()
    linker = Linker(db_api.register(frame), settings)
    linker.training.estimate_probability_two_random_records_match([block_on("uscc")], recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
    # each EM run fixes its blocking columns and trains the others: two runs cover every comparison
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("substr(name_core, 1, 2)", "substr(name_core, -2, 2)")
    )
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("uscc"))
    predictions = linker.inference.predict(threshold_match_probability=0.5)

    def clusters_at(cut: float) -> pl.DataFrame:
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(predictions, cut)
        frame = pl.from_pandas(clusters.as_pandas_dataframe()[["unique_id", "cluster_id"]])
        return frame.select(
            pl.col("unique_id").cast(pl.String).alias("record_id"),
            pl.col("cluster_id").cast(pl.String).alias("entity_id"),
        )

    result = clusters_at(threshold)
    seconds = time.perf_counter() - started
    return result, seconds, clusters_at(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--records",
        type=Path,
        default=ROOT / "bench" / "out" / "link" / "records.parquet",
        help="enterprise records (bench/bench_link.py writes them)",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        default=ROOT / "bench" / "out" / "sources-1060000",
        help="the generated sources holding truth/records.parquet",
    )
    args = parser.parse_args()

    from entity_resolution.engine import link, normalise
    from entity_resolution.evaluate import entities_with_two_codes, evaluate, pairwise_involving
    from entity_resolution.spec import load_spec

    spec = load_spec("enterprise")
    records = pl.read_parquet(args.records)
    truth = (
        pl.read_parquet(args.sources / "truth" / "records.parquet")
        .select((pl.col("source") + ":" + pl.col("source_record_id")).alias("record_id"), "entity_key")
        .join(records.select("record_id"), on="record_id")
    )

    started = time.perf_counter()
    ours = link(records, spec).links
    ours_seconds = time.perf_counter() - started

    fields = normalise(records, spec).select(
        "record_id",
        "uscc",
        "org_code",
        "name_key",
        "name_core",
        "name_legal_form",
        "region",
        "name_branch",
        "legal_rep",
    )
    codes = fields.select("record_id", "uscc")
    theirs, splink_seconds, theirs_at_half = run_splink(fields, spec.link_threshold)
    no_code = codes.filter(pl.col("uscc").is_null())["record_id"]

    print(
        f"\n{records.height:,} enterprise records, {truth['entity_key'].n_unique():,} true firms, 2 cores\n"
    )
    print(f"{'':<34}{'this engine':>14}{'Splink 5 (DuckDB)':>20}")
    rows = []
    for links, seconds in ((ours, ours_seconds), (theirs, splink_seconds)):
        scores = evaluate(links, truth, key=("record_id",))
        hard = pairwise_involving(links, truth, no_code)
        rows.append(
            (
                seconds,
                scores.pairwise_precision,
                scores.pairwise_recall,
                scores.pairwise_f1,
                hard["pairwise_f1"],
                scores.bcubed_f1,
                entities_with_two_codes(links, codes),
            )
        )
    labels = [
        "seconds (train + predict + cluster)",
        "pairwise precision",
        "pairwise recall",
        "pairwise F1",
        "F1, pairs with a code-less record",
        "B-cubed F1",
        "entities with two valid USCCs",
    ]
    for i, label in enumerate(labels):
        a, b = rows[0][i], rows[1][i]
        fmt = "{:>14,.1f}{:>20,.1f}" if i == 0 else ("{:>14,}{:>20,}" if i == 6 else "{:>14.4f}{:>20.4f}")
        print(f"{label:<34}" + fmt.format(a, b))
    low = evaluate(theirs_at_half, truth, key=("record_id",))
    low_hard = pairwise_involving(theirs_at_half, truth, no_code)
    print(
        f"Splink clustered at 0.5 instead: pairwise F1 {low.pairwise_f1:.4f}, code-less pairs F1 "
        f"{low_hard['pairwise_f1']:.4f}, entities with two valid USCCs {entities_with_two_codes(theirs_at_half, codes)}"
    )
    print(
        f"\npeak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
