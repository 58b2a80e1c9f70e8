"""Our engine and Splink (DuckDB backend) on the same records, side by side: generated enterprise
records under several noise settings and the public FEBRL1-4 benchmarks.

Splink is configured the way its documentation does it (the FEBRL3/FEBRL4 and deduplication
examples of the Splink docs): its name comparisons (``NameComparison``, Jaro-Winkler levels) with
term-frequency adjustments on names, addresses and legal representatives, u by random sampling
(1e7 pairs, as the docs recommend), m by EM over several blocking rules, the prior from
deterministic rules (``estimate_probability_two_random_records_match``), and clusters at a
threshold fixed up front (the spec's link threshold, 0.95; FEBRL4, a one-to-one link of two
files, with Splink's single-best-link clustering). On the generator both get the same normalised
fields (``entity_resolution.engine.normalise`` with the enterprise spec: name core and key, legal
form, branch, region, validated codes), so the comparison is of the linkage, not of Chinese text
handling; the normalising counts in Splink's seconds as it does in ours. On FEBRL Splink reads
FEBRL's own columns, as in its docs; our engine uses the spec named by ``--febrl-spec``.

Each engine runs in a process of its own on each data set (peak memory is its own VmHWM);
seconds are linking only (reading the input excluded). Generator records go through the nightly's
stages first (accepted records -> the enterprise spec's inputs, as tests/test_engine.py builds
them) and are cached under ``--cache``/gen-<setting>-<seed>[-<entities>]/ so reruns are quick.
Splink and FEBRL are bench extras: `.venv/bin/pip install -e '.[bench]' -e ./synthetic -c constraints.txt`.

    nice .venv/bin/python bench/compare_splink.py                       # default, hard, sparse; FEBRL1-4
    nice .venv/bin/python bench/compare_splink.py --noise hard-sparse --entities 20000 --no-febrl
    nice .venv/bin/python bench/compare_splink.py --no-generator --febrl febrl4
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.datasets import FEBRL_COLUMNS, FEBRL_FILES, load_febrl  # noqa: E402
from credit_synthetic.vocab import NOISE_SETTINGS  # noqa: E402

ENGINES = ("ours", "splink")
DEFAULT_NOISE = ("default", "hard", "sparse")
DEFAULT_ENTITIES = 5000  # about 47,000 accepted records
DEFAULT_CACHE = Path("/work/data") if Path("/work/data").is_dir() else ROOT / "bench" / "out" / "compare"
END = date(2026, 11, 23)
#: Splink's clustering threshold when the spec does not give ours (fixed before seeing any truth)
THRESHOLD = 0.95
#: u by random sampling: the Splink docs recommend 1e7 pairs or more (``--splink-u-pairs``)
U_PAIRS = {"max_pairs": 1e7}
#: seconds of Splink's steps in this process (printed with its row)
PHASES: dict[str, float] = {}


# --------------------------------------------------------------------------- data sets
@dataclasses.dataclass(frozen=True)
class DataSet:
    kind: str  # "generator" or "febrl"
    name: str  # noise setting or FEBRL set
    seed: int = 0
    entities: int = DEFAULT_ENTITIES

    @property
    def label(self) -> str:
        if self.kind == "febrl":
            return self.name
        size = "" if self.entities == DEFAULT_ENTITIES else f"-{self.entities}"
        return f"gen-{self.name}-{self.seed}{size}"

    @property
    def argument(self) -> str:
        return f"{self.kind}:{self.name}:{self.seed}:{self.entities}"

    @classmethod
    def parse(cls, text: str) -> DataSet:
        kind, name, seed, entities = text.split(":")
        return cls(kind, name, int(seed), int(entities))


def generator_folder(data: DataSet, cache: Path) -> Path:
    """Enterprise records of a generated city (records, truth and valid USCC per record), cached."""
    folder = cache / data.label
    if (folder / "records.parquet").exists():
        return folder
    from credit_synthetic.generate import generate
    from entity_resolution.pipeline import enterprise_inputs, record_id
    from pipelines import flow

    print(f"preparing {folder} (generate {data.entities:,} firms, run the stages) ...", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{data.label}.") as tmp:
        work = Path(tmp)
        generate(work / "sources", entities=data.entities, seed=data.seed, end_date=END, noise=data.name)
        flow.run_all(str(work / "sources"), str(work / "lake"), END.isoformat(), run_id="compare")
        accepted = pl.concat(
            [pl.read_parquet(f) for f in sorted(glob.glob(str(work / "lake" / "accepted" / "*" / "*")))],
            how="vertical_relaxed",
        )
        records = accepted.select(*enterprise_inputs())
        truth = (
            pl.read_parquet(work / "sources" / "truth" / "records.parquet")
            .select((pl.col("source") + ":" + pl.col("source_record_id")).alias("record_id"), "entity_key")
            .join(records.select("record_id"), on="record_id")
        )
        ready = work / "ready"
        ready.mkdir()
        records.write_parquet(ready / "records.parquet")
        truth.write_parquet(ready / "truth.parquet")
        accepted.select(record_id().alias("record_id"), "uscc").write_parquet(ready / "codes.parquet")
        shutil.copy(work / "sources" / "manifest.json", ready / "manifest.json")
        if folder.exists():  # a half-written folder of an interrupted run
            shutil.rmtree(folder)
        os.replace(ready, folder)  # whole or not at all
    return folder


def febrl_spec(name: str):  # noqa: ANN201 - a Spec, or None when it does not exist yet
    from entity_resolution.spec import SPECS_DIR, load_spec

    if not Path(name).exists() and not (SPECS_DIR / f"{Path(name).stem}.toml").exists():
        return None
    return load_spec(name)


# --------------------------------------------------------------------------- our engine
def run_ours(data: DataSet, cache: Path, spec_name: str) -> tuple[pl.DataFrame, float]:
    from entity_resolution.engine import link
    from entity_resolution.spec import load_spec

    if data.kind == "generator":
        records = pl.read_parquet(generator_folder(data, cache) / "records.parquet")
        spec = load_spec("enterprise")
    else:
        benchmark = load_febrl(data.name)
        spec = febrl_spec(spec_name)
        records = benchmark.inputs[0]
        if benchmark.link_only:
            if not hasattr(spec, "link_only"):
                raise SystemExit(f"spec {spec_name} has no link-only mode for {data.name}")
            spec = dataclasses.replace(spec, link_type="link_only")
            records = pl.concat(
                [
                    f.with_columns(pl.lit(str(i)).alias(spec.source_column))
                    for i, f in enumerate(benchmark.inputs)
                ]
            )
    started = time.perf_counter()
    links = link(records, spec).links
    return links.select(pl.col(spec.id_column).alias("record_id"), "entity_id"), time.perf_counter() - started


# --------------------------------------------------------------------------- Splink
def _clusters(linker, predictions, threshold: float, one_to_one: list[str] | None) -> pl.DataFrame:  # noqa: ANN001
    PHASES["predict"] = time.perf_counter()
    if one_to_one:
        clusters = linker.clustering.cluster_using_single_best_links(
            predictions, duplicate_free_datasets=one_to_one, threshold_match_probability=threshold
        )
    else:
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(predictions, threshold)
    frame = pl.from_arrow(clusters.as_duckdbpyrelation().select("unique_id, cluster_id").arrow())
    PHASES["cluster"] = time.perf_counter()
    return frame.select(
        pl.col("unique_id").cast(pl.String).alias("record_id"),
        pl.col("cluster_id").cast(pl.String).alias("entity_id"),
    )


def splink_enterprise(records: pl.DataFrame) -> pl.DataFrame:
    """Splink on our normalised enterprise fields, configured as its docs do for names."""
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    from entity_resolution.engine import normalise
    from entity_resolution.spec import load_spec

    spec = load_spec("enterprise")
    fields = normalise(records, spec).select(
        pl.col("record_id").alias("unique_id"),
        "org_code",  # a USCC's organization code, or the code written alone
        "reg_no",
        "name_core",
        "name_key",
        "name_legal_form",
        "name_branch",
        "region",  # the region the name states, else the USCC's division
        "legal_rep",
        "address",
    )
    tf = {"term_frequency_adjustments": True}
    comparisons = [
        cl.ExactMatch("org_code"),
        cl.ExactMatch("reg_no"),
        cl.NameComparison("name_core").configure(**tf),
        cl.ExactMatch("name_legal_form"),
        cl.ExactMatch("name_branch"),
        cl.ExactMatch("region").configure(**tf),
        cl.NameComparison("legal_rep").configure(**tf),
    ]
    if fields["address"].null_count() < fields.height:  # departments' records carry none today
        comparisons.append(cl.JaroWinklerAtThresholds("address", [0.9, 0.7]).configure(**tf))
    settings = SettingsCreator(
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[
            block_on("org_code"),
            block_on("reg_no"),
            block_on("name_key"),
            block_on("substr(name_core, 1, 2)", "substr(name_core, -2, 2)"),
            block_on("substr(name_core, 1, 3)"),
            block_on("substr(name_core, -3, 3)", "legal_rep"),
        ],
        comparisons=comparisons,
        retain_intermediate_calculation_columns=False,
    )
    linker = Linker(DuckDBAPI().register(fields.to_arrow()), settings)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("org_code"), block_on("name_key", "region", "name_legal_form")], recall=0.8
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=U_PAIRS["max_pairs"], seed=1)
    # each EM session trains every comparison but those of its blocking rule
    for rule in (block_on("org_code"), block_on("name_key"), block_on("legal_rep")):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    PHASES["train"] = time.perf_counter()
    predictions = linker.inference.predict(threshold_match_probability=THRESHOLD)
    return _clusters(linker, predictions, load_spec("enterprise").link_threshold, None)


def splink_febrl(inputs: tuple[pl.DataFrame, ...]) -> pl.DataFrame:
    """Splink on FEBRL's own columns with the model of its FEBRL3/FEBRL4 docs examples."""
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    link_only = len(inputs) == 2
    tf = {"term_frequency_adjustments": True}
    blocking = [
        block_on("given_name", "surname"),
        "l.given_name = r.surname and l.surname = r.given_name",  # swapped names
        block_on("date_of_birth"),
        block_on("soc_sec_id"),
        block_on("state", "address_1"),
        block_on("street_number", "address_1"),
        block_on("postcode"),
    ]
    settings = SettingsCreator(
        link_type="link_only" if link_only else "dedupe_only",
        blocking_rules_to_generate_predictions=blocking,
        comparisons=[
            cl.NameComparison("given_name").configure(**tf),
            cl.NameComparison("surname").configure(**tf),
            cl.DateOfBirthComparison(
                "date_of_birth", input_is_string=True, datetime_format="%Y%m%d", invalid_dates_as_null=True
            ),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
            cl.ExactMatch("street_number").configure(**tf),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]).configure(**tf),
            cl.DamerauLevenshteinAtThresholds("postcode", [1, 2]).configure(**tf),
        ],
        retain_intermediate_calculation_columns=False,
    )
    db_api = DuckDBAPI()
    names = ("febrl_a", "febrl_b")[: len(inputs)]
    tables = [
        db_api.register(
            frame.select(pl.col("record_id").alias("unique_id"), *FEBRL_COLUMNS).to_arrow(), table_name=name
        )
        for frame, name in zip(inputs, names, strict=True)
    ]
    linker = Linker(tables if link_only else tables[0], settings)
    linker.training.estimate_probability_two_random_records_match(
        [
            block_on("soc_sec_id"),
            block_on("given_name", "surname", "date_of_birth"),
            "l.given_name = r.surname and l.surname = r.given_name and l.date_of_birth = r.date_of_birth",
        ],
        recall=0.8,
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=U_PAIRS["max_pairs"], seed=1)
    for rule in (block_on("date_of_birth"), block_on("postcode")):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    PHASES["train"] = time.perf_counter()
    predictions = linker.inference.predict(threshold_match_probability=THRESHOLD)
    return _clusters(linker, predictions, THRESHOLD, list(names) if link_only else None)


def run_splink(data: DataSet, cache: Path) -> tuple[pl.DataFrame, float]:
    if data.kind == "generator":
        records = pl.read_parquet(generator_folder(data, cache) / "records.parquet")
        started = PHASES["start"] = time.perf_counter()
        links = splink_enterprise(records)
    else:
        inputs = load_febrl(data.name).inputs
        started = PHASES["start"] = time.perf_counter()
        links = splink_febrl(inputs)
    return links, time.perf_counter() - started


# --------------------------------------------------------------------------- one engine, one process
def _peak_mb() -> float:
    """This process's peak resident memory since it started its program (VmHWM). ru_maxrss would
    also count the parent's memory at fork: Linux carries it over into the child across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_run(engine: str, data: DataSet, cache: Path, spec_name: str, out: Path) -> None:
    """The child process: link, write the links, print seconds and peak memory as JSON."""
    links, seconds = run_ours(data, cache, spec_name) if engine == "ours" else run_splink(data, cache)
    links.write_parquet(out)
    peak = _peak_mb()
    steps = {}
    if PHASES:  # Splink: seconds to the end of training, of predicting, of clustering
        start = PHASES["start"]
        steps = {k: round(PHASES[k] - start, 1) for k in ("train", "predict", "cluster")}
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "steps": steps}))


def measure(engine: str, data: DataSet, cache: Path, spec_name: str) -> dict:
    from entity_resolution.evaluate import entities_with_two_codes, evaluate, pairwise_involving

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "links.parquet"
        command = [sys.executable, __file__, "--engine-run", engine, data.argument, "--cache", str(cache)]
        command += ["--splink-u-pairs", str(U_PAIRS["max_pairs"])]
        done = subprocess.run(
            [*command, "--febrl-spec", spec_name, "--links", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return {
                "engine": engine,
                "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed",
            }
        run = json.loads(done.stdout.strip().splitlines()[-1])
        links = pl.read_parquet(out)
    if data.kind == "generator":
        folder = generator_folder(data, cache)
        truth = pl.read_parquet(folder / "truth.parquet")
        codes = pl.read_parquet(folder / "codes.parquet")
    else:
        truth, codes = load_febrl(data.name).truth, None
    scores = evaluate(links, truth, key=("record_id",))
    row = {
        "engine": engine,
        "records": truth.height,
        "seconds": run["seconds"],
        "peak_mb": run["peak_mb"],
        "precision": scores.pairwise_precision,
        "recall": scores.pairwise_recall,
        "f1": scores.pairwise_f1,
        "steps": run.get("steps") or {},
    }
    if codes is not None:
        no_code = codes.filter(pl.col("uscc").is_null())["record_id"]
        row["f1_codeless"] = pairwise_involving(links, truth, no_code)["pairwise_f1"]
        row["two_uscc"] = entities_with_two_codes(links, codes)
    return row


def _line(data: DataSet, row: dict) -> str:
    if "error" in row:
        return f"{data.label:<22}{row['engine']:<8}{row['error']}"
    codeless = f"{row['f1_codeless']:>12.4f}" if "f1_codeless" in row else f"{'-':>12}"
    two = f"{row['two_uscc']:>8,}" if "two_uscc" in row else f"{'-':>8}"
    return (
        f"{data.label:<22}{row['engine']:<8}{row['records']:>8,}{row['seconds']:>9.1f}{row['peak_mb']:>9,.0f}"
        f"{row['precision']:>8.4f}{row['recall']:>8.4f}{row['f1']:>8.4f}{codeless}{two}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--noise",
        nargs="+",
        default=list(DEFAULT_NOISE),
        choices=list(NOISE_SETTINGS),
        help="generator noise settings to compare on (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=41, help="generator seed")
    parser.add_argument(
        "--entities", type=int, default=DEFAULT_ENTITIES, help="firms per generated city (5000: ~47k records)"
    )
    parser.add_argument(
        "--febrl", nargs="+", default=list(FEBRL_FILES), choices=list(FEBRL_FILES), help="FEBRL sets"
    )
    parser.add_argument("--no-generator", action="store_true", help="FEBRL only")
    parser.add_argument("--no-febrl", action="store_true", help="generator only")
    parser.add_argument(
        "--febrl-spec",
        default="febrl",
        help="our engine's spec for FEBRL (a name in entity_resolution/specs/ or a path)",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where generated records are cached"
    )
    parser.add_argument(
        "--splink-u-pairs",
        type=float,
        default=U_PAIRS["max_pairs"],
        help="random pairs for Splink's u estimate (its docs recommend 1e7 or more)",
    )
    parser.add_argument("--engine-run", nargs=2, metavar=("ENGINE", "DATA"), help=argparse.SUPPRESS)
    parser.add_argument("--links", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    U_PAIRS["max_pairs"] = args.splink_u_pairs
    if args.engine_run:
        engine_run(
            args.engine_run[0], DataSet.parse(args.engine_run[1]), args.cache, args.febrl_spec, args.links
        )
        return 0

    sets = (
        [] if args.no_generator else [DataSet("generator", n, args.seed, args.entities) for n in args.noise]
    )
    sets += [] if args.no_febrl else [DataSet("febrl", n) for n in args.febrl]
    have_febrl_spec = febrl_spec(args.febrl_spec) is not None
    if not have_febrl_spec and not args.no_febrl:
        print(
            f"note: spec {args.febrl_spec!r} does not exist yet (entity_resolution/specs/febrl.toml comes "
            "with the engine's accuracy work): our engine is skipped on FEBRL, Splink still runs",
        )
    print(f"load before: {os.getloadavg()[0]:.2f} (2 cores, shared)")
    header = (
        f"{'data':<22}{'engine':<8}{'records':>8}{'seconds':>9}{'peak MB':>9}{'P':>8}{'R':>8}{'F1':>8}"
        f"{'F1 no-code':>12}{'2 USCC':>8}"
    )
    print(header)
    for data in sets:
        if data.kind == "generator":
            generator_folder(data, args.cache)  # prepared outside the timed children
        rows = {}
        for engine in ENGINES:
            if engine == "ours" and data.kind == "febrl" and not have_febrl_spec:
                continue
            rows[engine] = measure(engine, data, args.cache, args.febrl_spec)
            print(_line(data, rows[engine]), flush=True)
        if rows.get("splink", {}).get("steps"):
            steps = rows["splink"]["steps"]
            print(
                f"{data.label:<22}Splink's steps (s from start): trained {steps['train']}, predicted "
                f"{steps['predict']}, clustered {steps['cluster']}"
            )
        if all("seconds" in rows.get(e, {}) for e in ENGINES):
            ratio = rows["splink"]["seconds"] / rows["ours"]["seconds"]
            print(f"{data.label:<22}speed: ours is {ratio:.1f} x Splink's", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
