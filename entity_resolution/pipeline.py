"""The nightly pipeline's resolver: canonical records through the declarative engine (one engine).

``resolve_canonical`` links a full snapshot; ``resolve_changes`` links only a night's new and changed
records against the registry's entity representatives and keeps every other record's link as it was
published. Both return (links, entities, stats) with the evidence a regulator sees per link taken
from what this adapter already holds: the name and code as recorded (the records it was given) and
the match grade (the engine's own comparisons; one letter per comparison of the spec). No second
pass over the snapshot.

``resolve_canonical`` is ``prepare_canonical`` (up to the engine's partitions, saved in a work
directory), ``resolve_canonical_partition`` per partition (any order, any process) and
``finish_canonical`` (the engine's links, registry, review queue, links and entities): the nightly
DAG runs the three as tasks of their own, with the same result. The finish (``gather_canonical``,
which writes the links and entities as files) holds only the engine's links whole: the rest is
built a bucket of entities at a time.

The adapter adds what is about canonical records rather than about matching: a natural person's
resident ID number is the person (never offered to the engine), the entities table (name, codes,
former names), and ``match_method``, the kind of evidence that attached each record.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import polars as pl

from entity_resolution.engine import (
    FittedModel,
    Scale,
    finish_link,
    link,
    normalise,
    prepare_link,
    resolve_link_partition,
    resolve_link_partitions,
)
from entity_resolution.internals.blocking import key_expr, read_spellings, signature_fields
from entity_resolution.internals.normalise import (
    corrected,
    correction_tables,
    normaliser_fingerprint,
    spelling_counts,
)
from entity_resolution.internals.pool import pool_or_here
from entity_resolution.names import normalise_names
from entity_resolution.registry import (
    BLOCK_KEYS,
    KEYED_COLUMNS,
    NAME_COLUMN,
    NORMALISED,
    NORMALISED_BY,
    Registry,
    representative_rows,
    with_block_keys,
)
from entity_resolution.review import read_decisions, write_review
from entity_resolution.spec import Spec, load_spec
from foundation.identifiers import compact_code_expr
from foundation.lake import write_json, write_parquet

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)

#: the canonical columns resolution reads
IDENTITY_COLUMNS = (
    "source",
    "source_record_id",
    "subject_name",
    "code_raw",
    "uscc",
    "org_code",
    "reg_no",
    "code_status",
    "legal_rep",
    "authority",
    "headcount",
    "score",
    "updated_at",
)
KEYS = ["source", "source_record_id"]
#: beside the registry: how many of the snapshot's firm records carry each spelling of a company
#: name's core (``spelling_counts``), so an incremental night counts only its own records' names
#: rather than normalising every name of the snapshot again
SPELLINGS_FILE = "spellings.parquet"


def _write_spellings(registry_dir: Path, counts: pl.DataFrame) -> None:
    write_parquet(
        counts.select("value", pl.col("len").cast(pl.Int64)).sort("value"), registry_dir / SPELLINGS_FILE
    )


def _counted(names: pl.DataFrame) -> pl.DataFrame:
    """``spelling_counts`` of a column NAME_COLUMN (one row per record)."""
    return spelling_counts(names.group_by(NAME_COLUMN).len().rename({NAME_COLUMN: "name"}))


def _snapshot_spellings(
    registry_dir: Path, previous_links: pl.DataFrame | pl.LazyFrame, changed: pl.DataFrame
) -> pl.DataFrame:
    """The spelling counts of tonight's snapshot (the published firm records' names, with tonight's
    in place of the versions they replace): the last night's stored counts, less the replaced
    versions' names, plus tonight's; counted over all published names when none are stored (a
    registry an older version wrote). The same counts either way."""
    previous_links, keys = previous_links.lazy(), changed.lazy().select(KEYS)
    firm = pl.col("match_method") != "resident_id"
    tonight = _split_persons(changed)[0].select(pl.col("subject_name").alias(NAME_COLUMN))
    stored = registry_dir / SPELLINGS_FILE
    if not stored.exists():
        kept = previous_links.join(keys, on=KEYS, how="anti").filter(firm)
        return _counted(
            pl.concat([kept.select(pl.col("recorded_name").alias(NAME_COLUMN)).collect(), tonight])
        )
    replaced = previous_links.join(keys, on=KEYS, how="semi").filter(firm)
    gone = _counted(replaced.select(pl.col("recorded_name").alias(NAME_COLUMN)).collect())
    return (
        pl.concat(
            [
                pl.read_parquet(stored),
                _counted(tonight),
                gone.with_columns(-pl.col("len")),
            ]
        )
        .group_by("value")
        .agg(pl.col("len").sum())
        .filter(pl.col("len") > 0)
    )


#: match_method values, shown to regulators with each link (defined here once)
MATCH_METHODS = {
    "uscc": "the record's own valid USCC is the firm's",
    "uscc_repaired": "the record's USCC, repaired, is the firm's",
    "code_crosswalk": "the record's organization code or old registration number is the firm's",
    "fellegi_sunter": "the engine matched its name, region, legal representative, ... (match_grade)",
    "own_entity": "no other record matched it: a firm of its own",
    "resident_id": "a natural person's resident ID number",
}
#: a resident ID number is the person: as sure as a valid USCC
RESIDENT_ID_CONFIDENCE = 1.0


def _hash_ids(prefix: str, keys: pl.Expr) -> pl.Expr:
    """A deterministic id per key: a SHA-1 of it (stable across library versions, unlike Polars'
    own hash), computed once per distinct key."""
    return keys.map_batches(
        lambda values: (
            values.unique()
            .to_frame("k")
            .with_columns(
                h=pl.col("k").map_elements(
                    lambda k: prefix + hashlib.sha1(k.encode()).hexdigest()[:16], return_dtype=pl.String
                )
            )
            .pipe(lambda t: values.to_frame("k").join(t, on="k", how="left", maintain_order="left")["h"])
        ),
        return_dtype=pl.String,
    )


def person_entity_id() -> pl.Expr:
    """A natural person's entity id: a hash of the ID number as written, compacted (never the number)."""
    return _hash_ids("X", pl.lit("P") + compact_code_expr(pl.col("code_raw")))


def record_id() -> pl.Expr:
    """A canonical record's id for the engine: ``source:source_record_id``."""
    return pl.col("source") + ":" + pl.col("source_record_id")


def enterprise_inputs() -> list[pl.Expr]:
    """The enterprise spec's input columns from canonical records (the department's code as written
    goes to ``uscc``: the codes normaliser recognises organization codes and registration numbers
    in any column; ``reg_no`` carries the tax bureau's old registration numbers)."""
    return [
        record_id().alias("record_id"),
        pl.col("subject_name").alias(NAME_COLUMN),
        pl.col("code_raw").alias("uscc"),
        pl.lit(None, pl.String).alias("org_code"),
        "reg_no",
        pl.lit(None, pl.String).alias("address"),
        "legal_rep",
        pl.lit(None, pl.String).alias("phone"),
        "authority",  # the lender, court or penalty authority: where the firm was seen
        unit_figures().alias("figures"),
    ]


def unit_figures() -> pl.Expr:
    """The figures a record states about its firm itself, not about an event: a social insurance
    contribution's insured headcount and contribution base (its ``score``). A unit's monthly
    records repeat them (the base is fixed for the year), so two records stating the same figures
    in one source are likely one unit; the engine learns from records sharing a valid code how
    often a firm's records agree on them. Null for a record that states no headcount."""
    return pl.when(pl.col("headcount").is_not_null() & pl.col("score").is_not_null()).then(
        pl.concat_str(
            [pl.col("source"), pl.col("headcount").cast(pl.String), pl.col("score").cast(pl.String)],
            separator="|",
        )
    )


def _exact_key(column: str) -> str:
    """How a ``BLOCK_KEYS`` entry of an exact key begins (``uscc=...``); a blocking rule's begins
    with its number."""
    return f"{column}="


def blocking_keys(
    inputs: pl.DataFrame,
    spec: Spec,
    spellings: dict[str, pl.DataFrame] | None = None,
    corrections: dict[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """(record id, ``BLOCK_KEYS``, ``NORMALISED``, ``NORMALISED_BY``): every value through which
    the engine can bring a record together with another, normalised as the engine normalises: its
    exact keys and each blocking rule's key (rule number and values). A new record can only meet a
    known entity's representatives that share one of these. ``spellings``: as ``normalise``'s
    (``inputs`` one part of a whole). And the record's signature fields as the engine normalises
    them before it corrects spellings (a struct, with the normaliser's fingerprint): what the
    engine takes as it is from a representative (``link(..., normalised=...)``). ``corrections``:
    ``correction_tables(spec, spellings)``, made once by a caller that keys many parts by the same
    spellings (``spellings`` is then not read for their columns)."""
    rid = spec.id_column
    written = normalise(inputs, spec, correct=False)
    fields = signature_fields(spec, written.columns)
    normalised = written.select(
        pl.col(rid).alias("record_id"),
        pl.struct(fields).alias(NORMALISED),
        pl.lit(normaliser_fingerprint(spec, fields)).alias(NORMALISED_BY),
    )
    frame = corrected(written, spec, spellings, corrections)
    del written
    # a record has at most one key of each kind, and each kind's keys begin with a prefix of its
    # own that ends at its first "=" (``_exact_key``, the rule's number; no prefix begins another),
    # so two keys of a record sort as their prefixes do: listed in that order, each record's keys
    # are sorted and distinct without a sort or a group_by; joined by a NUL and split rather than
    # listed by Polars' list functions (3.7 -> 0.6 s for a million representatives, Polars 2.1)
    keys = {
        _exact_key(key): pl.lit(_exact_key(key)) + pl.col(key).cast(pl.String)
        for key in spec.exact_keys
        if key in frame.columns
    }
    for number, rule in enumerate(spec.blocking):
        if not all(k.column in frame.columns for k in rule):
            continue
        values = [key_expr(k) for k in rule]
        usable = pl.all_horizontal(v.is_not_null() & (v != "") for v in values)
        keys[f"{number}="] = pl.when(usable).then(
            pl.concat_str([pl.lit(f"{number}="), *values], separator="\x1f")
        )
    ordered = [keys[prefix] for prefix in sorted(keys)] or [pl.lit(None, pl.String)]
    listed = frame.select(
        pl.concat_str(ordered, separator="\x00", ignore_nulls=True).str.split("\x00").alias(BLOCK_KEYS),
        pl.sum_horizontal(key.is_not_null() for key in ordered).alias("keys"),
    )
    block_keys = listed.select(pl.when(pl.col("keys") > 0).then(BLOCK_KEYS).alias(BLOCK_KEYS)).to_series()
    if (block_keys.list.len() != listed["keys"]).any():  # a key with a NUL in it: listed as they are
        whole = pl.concat_list(ordered).list.drop_nulls()
        block_keys = frame.select(pl.when(whole.list.len() > 0).then(whole).alias(BLOCK_KEYS)).to_series()
    # (a record with no key has none: null)
    return normalised.with_columns(block_keys).select("record_id", *KEYED_COLUMNS)


def _within_reach(representatives: pl.LazyFrame, input_keys: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """The representatives of every known entity one of whose representatives shares a key with
    the inputs (``input_keys``, from ``blocking_keys``): all of such an entity's, so its codes still
    constrain the engine. A blocking key more than ``max_block_size`` representatives hold is
    passed over: its block has at least as many signatures in the snapshot, so a full run drops it
    too (exact keys always count). A record holding the USCC of a known entity reaches through its
    exact keys alone: it is that entity's, and the engine pairs it with no other known entity
    (``engine._owners``). Every representative when the registry does not hold their keys (written
    by an older version). ``representatives`` is a scan of the registry's: only the
    representatives reached are read whole (a city's registry holds 4M, each with its keys)."""
    stored = representatives.collect_schema().names()
    if BLOCK_KEYS not in stored or representatives.select(pl.col(BLOCK_KEYS).null_count()).collect().item():
        return representatives.collect()
    keyed = input_keys.select("record_id", pl.col(BLOCK_KEYS).alias("key")).explode("key").drop_nulls()
    held = (
        representatives.select("entity_id", pl.col(BLOCK_KEYS).alias("key"))
        .explode("key")
        .join(keyed.select("key").unique().lazy(), on="key", how="semi")
        .collect(engine="streaming")
    )
    blocking = pl.col("key").str.slice(0, 1).str.contains("[0-9]")
    held = held.filter(~blocking | (pl.len().over("key") <= spec.max_block_size))
    # a record with the USCC of a known entity is that entity's, paired with no other known firm
    # (``engine._owners``): its exact keys reach its firm, its blocking keys nothing the engine uses
    code = spec.cannot_link_on
    if code and code in spec.exact_keys:
        known_codes = held.filter(pl.col("key").str.starts_with(_exact_key(code))).select("key").unique()
        placed = keyed.join(known_codes, on="key", how="semi").select("record_id").unique()
        floating = keyed.join(placed, on="record_id", how="anti").filter(blocking).select("key").unique()
        held = held.filter(~blocking | pl.col("key").is_in(floating["key"].implode()))
    hit = held.select("entity_id").unique()
    # (without their keys: the engine does not read them)
    return (
        representatives.join(hit.lazy(), on="entity_id", how="semi", maintain_order="left")
        .drop(BLOCK_KEYS)
        .collect()
    )


def _keys_from(
    known: pl.DataFrame, spec: Spec, corrections: dict[str, pl.DataFrame]
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """``blocking_keys`` (with ``corrections``) that takes the keys of records already in ``known``
    from there."""

    def keys_of(reps: pl.DataFrame) -> pl.DataFrame:
        have = known.join(reps.select("record_id"), on="record_id", how="semi")
        rest = reps.join(have.select("record_id"), on="record_id", how="anti")
        return pl.concat([have, blocking_keys(rest, spec, corrections=corrections)]) if rest.height else have

    return keys_of


def grade_letters(spec: Spec) -> str:
    """What the grade's letters stand for, from the spec (the published dictionary and pages say it)."""
    names = ", ".join(c.name for c in spec.comparisons)
    return f"one letter per comparison of the {spec.name} spec ({names}): A same, B similar, F different, Z missing"


class KnownEntitiesConflict(Exception):
    """An incremental night cannot place its records without changing a known firm that has a USCC
    (new evidence ties it to another USCC): the night needs a full re-link."""


@dataclass
class Resolution:
    # KEYS, entity_id, match_confidence, match_method, recorded_name, recorded_code, match_grade; an
    # incremental night's is a plan over the previous version's files, to stream into a file
    links: pl.DataFrame | pl.LazyFrame
    entities: pl.DataFrame
    touched: pl.DataFrame  # entity_id of every entity whose records changed (all of them in a full run)
    stats: dict[str, Any] = field(default_factory=dict)


def _split_persons(records: Frame) -> tuple[Frame, Frame]:
    """(firms' records, natural persons' records): a resident ID number is never matched with a firm.
    Lazy for a lazy input (a full snapshot streams to the work directory)."""
    records = records.with_columns(pl.col(c).cast(pl.String) for c in IDENTITY_COLUMNS if c != "updated_at")
    person = pl.col("code_status") == "resident_id"
    return records.filter(~person.fill_null(False)), records.filter(person.fill_null(False))


#: how many times an incremental night frees the known firms its records conflict with before it
#: gives up (a full re-link follows)
RELINK_ROUNDS = 3
#: suffix of a representative whose record changed tonight: its previous version still stands
#: for its entity while the new version is placed afresh
PREVIOUS_VERSION = "#previous"


def _engine(
    inputs: pl.DataFrame,
    spec: Spec,
    decisions: Path | None,
    representatives: pl.DataFrame,
    spellings: dict[str, pl.DataFrame],
    model: FittedModel | None = None,
    corrections: dict[str, pl.DataFrame] | None = None,
) -> tuple[pl.DataFrame, dict[str, str], Any]:
    """Run the engine for an incremental night: known entities (``representatives``) are fixed and
    only ``inputs`` are placed, with ``spellings`` counted over the whole snapshot (``corrections``:
    their ``correction_tables``, made once for the night). Returns (links of
    ``inputs``, renamed known entities old id -> new id, the engine's Linkage). A known entity is
    renamed when a new record brings it a USCC. ``model``: score with it (another round's) rather
    than fit one. (A full snapshot: ``prepare_canonical``.)"""
    must, cannot = read_decisions(decisions) if decisions and decisions.exists() else ([], [])
    changed = pl.col("record_id").is_in(inputs["record_id"].implode())
    reps = representatives.with_columns(
        pl.when(changed).then(pl.col("record_id") + PREVIOUS_VERSION).otherwise(pl.col("record_id"))
    )
    anchors = reps.select("record_id", pl.col("entity_id").alias("anchor"))  # (a frame: no dict of 3M)
    # the representatives stored normalised by tonight's normaliser go to the engine as they are;
    # the others (a registry an older version wrote) are normalised again
    fields = signature_fields(spec, normalise(inputs.clear(), spec, correct=False).columns)
    stored = NORMALISED in reps.columns and [f.name for f in reps.schema[NORMALISED].fields] == fields
    ready = (
        (pl.col(NORMALISED_BY) == normaliser_fingerprint(spec, fields)).fill_null(False)
        if stored
        else pl.lit(False)
    )
    ready = reps.select(ready.alias("ready"))["ready"]
    normalised = (  # (all of them, as on every night after a full one: no copy)
        (reps if ready.all() else reps.filter(ready)).select("record_id", pl.col(NORMALISED).struct.unnest())
        if stored
        else None
    )
    reps_raw = reps.filter(~ready)
    # (a registry written before an input column existed holds none of it)
    missing = [pl.lit(None, pl.String).alias(c) for c in inputs.columns if c not in reps.columns]
    combined = pl.concat(
        [inputs, reps_raw.with_columns(missing).select(inputs.columns)], how="vertical_relaxed"
    )
    del reps_raw
    result = link(
        combined,
        spec,
        must,
        cannot,
        anchors=anchors,
        fixed_anchors=True,
        spellings=spellings,
        keep_pairs=False,
        model=model,
        normalised=normalised,
        corrections=corrections,
    )
    moved = (
        reps.select("record_id", pl.col("entity_id").alias("anchor"))
        .join(result.links.select("record_id", "entity_id"), on="record_id")
        .filter(pl.col("entity_id") != pl.col("anchor"))
        .unique("anchor")
    )
    renamed = dict(zip(moved["anchor"].to_list(), moved["entity_id"].to_list(), strict=True))
    return result.links.join(inputs.select("record_id"), on="record_id", how="semi"), renamed, result


def _firm_links(records: pl.DataFrame, engine_links: pl.DataFrame) -> pl.DataFrame:
    """The engine's links with the evidence columns and match_method (vectorised over the records;
    ``records`` must hold all records of the entities they belong to, the method looks at them)."""
    return _firm_evidence(
        records.with_columns(record_id().alias("record_id")).join(
            engine_links, on="record_id", how="left", maintain_order="left"
        )
    )


def _firm_evidence(frame: pl.DataFrame) -> pl.DataFrame:
    """``_firm_links`` of records that carry their engine link's columns already (the gather's
    buckets: no second join on the record ids)."""
    org_in_uscc = pl.col("entity_id").str.slice(8, 9)
    # a code shared with another record of the entity, or the organization code inside its USCC
    shared = lambda code: pl.col(code).is_not_null() & (pl.len().over("entity_id", code) > 1)  # noqa: E731
    method = (
        pl.when(pl.col("uscc").is_not_null() & (pl.col("uscc") == pl.col("entity_id")))
        .then(
            pl.when(pl.col("code_status") == "valid").then(pl.lit("uscc")).otherwise(pl.lit("uscc_repaired"))
        )
        .when(
            (pl.col("org_code").is_not_null() & (pl.col("org_code") == org_in_uscc))
            | shared("org_code")
            | shared("reg_no")
        )
        .then(pl.lit("code_crosswalk"))
        # the entity holds records written differently: the engine's comparisons put them together
        .when(pl.struct("subject_name", "code_raw").n_unique().over("entity_id") > 1)
        .then(pl.lit("fellegi_sunter"))
        .otherwise(pl.lit("own_entity"))
    )
    return frame.select(
        *KEYS,
        "entity_id",
        "match_confidence",
        method.alias("match_method"),
        pl.col("subject_name").alias("recorded_name"),
        pl.col("code_raw").alias("recorded_code"),
        "match_grade",
    )


def _person_links(persons: pl.DataFrame) -> pl.DataFrame:
    """A person's records are linked by the ID number alone: no comparison, so no grade."""
    return persons.select(
        *KEYS,
        person_entity_id().alias("entity_id"),
        pl.lit(RESIDENT_ID_CONFIDENCE).alias("match_confidence"),
        pl.lit("resident_id").alias("match_method"),
        pl.col("subject_name").alias("recorded_name"),
        pl.col("code_raw").alias("recorded_code"),
        pl.lit(None, pl.String).alias("match_grade"),
    )


def entities_table(
    records: pl.DataFrame, links: pl.DataFrame, names: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per entity: its codes, its most used full name (a name seen with a valid code and a
    legal form preferred, then the latest), up to three former names (another trade name, seen at
    least twice), the record and source counts, whether it is a natural person. ``names``: the
    records' ``normalise_names``, when the caller has them."""
    names = normalise_names(records["subject_name"]) if names is None else names
    linked = records.with_columns(names["core"].alias("core"), names["legal_form"].alias("legal_form")).join(
        links.select(*KEYS, "entity_id", "match_confidence"), on=KEYS
    )
    name_rank = (
        linked.filter(pl.col("subject_name").is_not_null())
        .group_by("entity_id", "subject_name")
        .agg(
            pl.len().alias("n"),
            pl.col("updated_at").max().alias("last"),
            pl.col("core").first(),
            (
                pl.col("code_status").is_in(["valid", "repaired"]).any().cast(pl.Int8)
                + pl.col("legal_form").is_not_null().any().cast(pl.Int8)
            ).alias("pref"),
        )
        .sort(["entity_id", "pref", "n", "last", "subject_name"], descending=[False, True, True, True, False])
    )
    primary = name_rank.group_by("entity_id", maintain_order=True).agg(
        pl.col("subject_name").first().alias("name"), pl.col("core").first().alias("primary_core")
    )
    former = (
        name_rank.join(primary, on="entity_id")
        .filter(
            pl.col("core").is_not_null() & (pl.col("core") != pl.col("primary_core")) & (pl.col("n") >= 2)
        )
        .group_by("entity_id")
        .agg(pl.col("subject_name").sort().head(3).alias("former_names"))
    )
    codes = linked.group_by("entity_id").agg(
        pl.col("uscc").drop_nulls().first(),
        pl.col("org_code").drop_nulls().mode().sort().first(),
        pl.col("reg_no").drop_nulls().mode().sort().first(),
        pl.col("match_confidence").min().alias("min_match_confidence"),
        # identified by a resident ID number: a natural person (自然人), not a firm
        (pl.col("code_status") == "resident_id").any().alias("natural_person"),
        pl.len().alias("record_count"),
        pl.col("source").n_unique().alias("source_count"),
    )
    return (
        codes.join(primary.drop("primary_core"), on="entity_id", how="left")
        .join(former, on="entity_id", how="left")
        .with_columns(pl.col("former_names").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .select(
            "entity_id",
            "uscc",
            "org_code",
            "reg_no",
            "min_match_confidence",
            "natural_person",
            "record_count",
            "source_count",
            "name",
            "former_names",
        )
        .sort("entity_id")
    )


def resolve_canonical(
    records: pl.DataFrame,
    spec_name: str = "enterprise",
    registry_dir: Path | None = None,
    review_dir: Path | None = None,
    decisions: Path | None = None,
    run: str = "run",
    partition_signatures: int | None = None,
) -> Resolution:
    """Link a whole snapshot of canonical records (IDENTITY_COLUMNS): ``prepare_canonical``, every
    partition (the spec's ``partition_workers`` at once), ``finish_canonical``, in a temporary
    work directory. ``partition_signatures`` overrides the spec's ``[scale]`` value (never the result)."""
    with tempfile.TemporaryDirectory(prefix="resolve-") as work_dir:
        work = Path(work_dir)
        prepare_canonical(records, spec_name, registry_dir, decisions, work, partition_signatures)
        resolve_link_partitions(work / ENGINE_DIR, load_spec(spec_name))
        return finish_canonical(work, registry_dir, review_dir, run)


#: in a resolution work directory: the engine's work files, and what the finish needs of the rest
ENGINE_DIR = "engine"
CANONICAL_STATE = "canonical.json"


def prepare_canonical(
    records: pl.DataFrame | pl.LazyFrame,
    spec_name: str,
    registry_dir: Path | None,
    decisions: Path | None,
    work_dir: Path,
    partition_signatures: int | None = None,
) -> int:
    """A full snapshot's linkage up to the engine's partitions (``engine.prepare_link``): persons
    split off, spellings counted, the registry's anchors and the steward's decisions read; all that
    ``finish_canonical`` needs is saved in ``work_dir`` (Parquet, JSON). Returns the number of
    partitions: resolve each with ``resolve_canonical_partition``, in any order or process.

    ``records`` may be lazy (a scan of the snapshot): they are streamed into the firms' and
    persons' files first, and the engine reads the firms' file, each normalising worker its own
    rows of it, so no process holds a row per record of the snapshot."""
    work = Path(work_dir)
    (work / CANONICAL_STATE).unlink(missing_ok=True)  # no finish from a half-written preparation
    _write_split(records.lazy(), work)
    spec = load_spec(spec_name)
    inputs = pl.scan_parquet(work / "firms.parquet").select(*enterprise_inputs())
    registry = Registry(registry_dir) if registry_dir else None
    scale = Scale.of(spec)
    if partition_signatures is not None:
        scale = replace(scale, partition_signatures=int(partition_signatures))
    must, cannot = read_decisions(decisions) if decisions and decisions.exists() else ([], [])
    partitions = prepare_link(
        inputs,
        spec,
        must,
        cannot,
        anchors=_registry_anchors(registry, spec) if registry else None,
        keep_pairs=False,
        work_dir=work / ENGINE_DIR,
        scale=scale,
    )
    shutil.rmtree(work / ENGINE_DIR / "shards", ignore_errors=True)  # (without keep_pairs, unread)
    # the spelling counts the engine counted as it normalised, kept for the next night
    spellings = read_spellings(work / ENGINE_DIR, spec) if registry else None
    kept_spellings = bool(spellings and NAME_COLUMN in spellings)
    if kept_spellings:  # (in a fixed order: the counts' group order is not)
        write_parquet(spellings[NAME_COLUMN].sort("value"), work / SPELLINGS_FILE)
    write_json(
        {"spec": spec_name, "partitions": partitions, "spellings": kept_spellings}, work / CANONICAL_STATE
    )
    return partitions


def _write_split(records: pl.LazyFrame, work: Path) -> None:
    """``firms.parquet`` and ``persons.parquet`` (``_split_persons``) in ``work``, each streamed
    from ``records`` in their order."""
    firms, persons = _split_persons(records)
    write_parquet(firms, work / "firms.parquet")
    write_parquet(persons, work / "persons.parquet")


def _registry_anchors(registry: Registry, spec: Spec) -> pl.DataFrame:
    """The registry's anchors (``Registry.anchors``: record id -> the entity id it held) as the
    engine's frame, in the same order: a column per record rather than a Python string."""
    return registry.members().select(
        pl.col("record_id").alias(spec.id_column), pl.col("entity_id").alias("anchor")
    )


def resolve_canonical_partition(work_dir: Path, number: int) -> dict[str, int]:
    """Resolve partition ``number`` of a prepared ``work_dir`` (``engine.resolve_link_partition``:
    writes the same file when run again); its counts."""
    state = json.loads((Path(work_dir) / CANONICAL_STATE).read_text("utf-8"))
    return resolve_link_partition(Path(work_dir) / ENGINE_DIR, load_spec(state["spec"]), number)


#: the gather builds the links, the entities and the registry's representatives a bucket of
#: entities at a time (a range of entity ids holding about this many records): what bounds its
#: memory, never the result
GATHER_BUCKET_RECORDS = 250_000
#: what a full linkage's gather writes (the names the nightly's stages read)
LINKS_FILE, ENTITIES_FILE, TOUCHED_FILE = "links.parquet", "entities.parquet", "touched_entities.parquet"
#: in a resolution work directory: the gather's buckets and parts
GATHER_DIR = "gather"
#: the engine's link columns the adapter uses
ENGINE_COLUMNS = ("record_id", "entity_id", "match_confidence", "match_grade")


def finish_canonical(
    work_dir: Path,
    registry_dir: Path | None = None,
    review_dir: Path | None = None,
    run: str = "run",
    bucket_records: int = GATHER_BUCKET_RECORDS,
    workers: int | None = None,
) -> Resolution:
    """A prepared full linkage once every partition is resolved (``gather_canonical``, into the
    work directory), as frames."""
    out = Path(work_dir) / "finished"
    stats = gather_canonical(work_dir, out, registry_dir, review_dir, run, bucket_records, workers)
    links, entities, touched = (
        pl.read_parquet(out / name) for name in (LINKS_FILE, ENTITIES_FILE, TOUCHED_FILE)
    )
    return Resolution(links, entities, touched, stats)


def gather_canonical(
    work_dir: Path,
    out_dir: Path,
    registry_dir: Path | None = None,
    review_dir: Path | None = None,
    run: str = "run",
    bucket_records: int = GATHER_BUCKET_RECORDS,
    workers: int | None = None,
) -> dict[str, Any]:
    """A prepared full linkage once every partition is resolved: the engine's links, the registry
    updated (``registry_dir``: the one ``prepare_canonical`` read its anchors from, as it was then),
    the review queue, and the firms' and persons' links, the entities table and the touched
    entities written in ``out_dir`` (LINKS_FILE, ENTITIES_FILE, TOUCHED_FILE). Returns the stats.

    Only the engine's links (four columns) are held whole. The records are cut into buckets of
    entities (``_entity_buckets``): an entity's evidence, row and representatives need only its
    own records, so each bucket is built alone (``_gather_bucket``) and its entities and
    representatives, ranges of entity ids, follow one another in order; its links go to ranges of
    record keys (``_key_cuts``), each sorted alone (``_sort_range``). Buckets, ranges and
    representatives' parts are worked ``workers`` at once (default: the spec's ``[scale]
    normalise_workers``), each in a process of its own that reads and writes the gather's stage
    files: only small results (a bucket's spelling counts) come back, gathered in bucket order.
    The same files however many buckets or workers."""
    work, out = Path(work_dir), Path(out_dir)
    state = json.loads((work / CANONICAL_STATE).read_text("utf-8"))
    spec = load_spec(state["spec"])
    result = finish_link(work / ENGINE_DIR, spec)
    stats = {**result.stats, "mode": "full"}
    if review_dir is not None:
        write_review(result.review, review_dir, run)
    engine_links = result.links.select(ENGINE_COLUMNS)
    del result
    registry = Registry(registry_dir) if registry_dir else None
    changes = registry.record_members(engine_links, run) if registry else None
    stats["registry_changes"] = 0 if changes is None else changes.height

    stage = work / GATHER_DIR
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    persons = (
        pl.scan_parquet(work / "persons.parquet")
        .with_columns(person_entity_id().alias("entity_id"))
        .collect()
    )
    bucket_of = _entity_buckets(pl.concat([engine_links["entity_id"], persons["entity_id"]]), bucket_records)
    buckets = int(bucket_of["bucket"].max()) + 1 if bucket_of.height else 1
    for (bucket,), part in (
        persons.join(bucket_of, on="entity_id", maintain_order="left")
        .partition_by("bucket", as_dict=True, include_key=False)
        .items()
    ):
        _stage_write(part, stage / "persons" / f"bucket-{bucket:05d}" / "part-00000.arrow")
    firms = pl.scan_parquet(work / "firms.parquet")
    cuts = _key_cuts(pl.concat([firms.select(KEYS), persons.lazy().select(KEYS)]), buckets)
    empty_firms = (
        firms.with_columns(
            record_id().alias("record_id"),
            pl.lit(None, pl.String).alias("entity_id"),
            pl.lit(None, pl.Float64).alias("match_confidence"),
            pl.lit(None, pl.String).alias("match_grade"),
        )
        .clear()
        .collect()
    )
    empty = (empty_firms, persons.clear())
    del persons  # (their buckets written: not held through the firms' shuffle)
    engine_links = engine_links.join(bucket_of, on="entity_id", maintain_order="left")  # (one copy held)
    del bucket_of
    _shuffle_firms(firms, engine_links, stage, bucket_records)
    del engine_links
    in_order = lambda kind, name: pl.scan_ipc(  # noqa: E731
        [stage / kind / f"{name}-{number:05d}.arrow" for number in range(buckets)]
    )
    workers = Scale.of(spec).normalise_workers if workers is None else workers
    with pool_or_here(min(workers, buckets)) as pool:
        built = list(
            pool.map(partial(_gather_bucket, stage, cuts, empty, registry is not None), range(buckets))
        )
        ranges = [
            pool.submit(_sort_range, stage, built[-1].links_schema, number) for number in range(buckets)
        ]
        if registry:
            # the representatives' parts keyed as ``Registry.key_representatives`` keys them all at
            # once: a name's one-off spellings judged by the spellings of all the representatives
            spellings = pl.concat([b.spellings for b in built]).group_by("value").agg(pl.col("len").sum())
            # (their one-off spellings' corrections made once here, each part corrected by lookup)
            corrections = correction_tables(spec, {NAME_COLUMN: spellings}).get(NAME_COLUMN)
            if corrections is not None:
                _stage_write(corrections, stage / REPRESENTATIVES_CORRECTIONS)
            keyed = [
                pool.submit(_key_representative_parts, stage, spec, numbers)
                for numbers in _consecutive([b.representatives for b in built], bucket_records)
            ]
        # (written here while the workers sort and key)
        write_parquet(in_order("entities", "part"), out / ENTITIES_FILE)
        write_parquet(pl.scan_parquet(out / ENTITIES_FILE).select("entity_id"), out / TOUCHED_FILE)
        for done in ranges:
            done.result()
        write_parquet(in_order("links", "sorted"), out / LINKS_FILE)
        if registry:
            for done in keyed:
                done.result()
    if registry:
        registry.store_representatives(in_order("representatives", "keyed"))
        if state["spellings"]:
            _write_spellings(registry.folder, pl.read_parquet(work / SPELLINGS_FILE))
    shutil.rmtree(stage, ignore_errors=True)
    return stats


#: in the gather's stage folder: the corrections of the representatives' one-off name spellings,
#: judged by the spellings of all the representatives (``correction_tables``)
REPRESENTATIVES_CORRECTIONS = "representatives-corrections.arrow"


class _Built(NamedTuple):
    """What the gather needs of a bucket built (``_gather_bucket``)."""

    links_schema: dict[str, pl.DataType]
    representatives: int  # how many
    spellings: pl.DataFrame | None  # the spelling counts of the representatives' names


def _gather_bucket(
    stage: Path,
    cuts: pl.Series,
    empty: tuple[pl.DataFrame, pl.DataFrame],
    representatives: bool,
    bucket: int,
) -> _Built:
    """Build bucket ``bucket`` from its stage files (``empty``: the firms' and persons' frames when
    it has none): its links, cut into the ranges of record keys ``cuts`` (``_range_of``), its
    entities and, with ``representatives``, its registry representatives, each written to a stage
    file. Returns what the gather needs of it (``_Built``)."""
    bucket_firms = _bucket(stage / "firms", bucket, empty[0])
    bucket_persons = _bucket(stage / "persons", bucket, empty[1]).select(IDENTITY_COLUMNS)
    links = pl.concat([_firm_evidence(bucket_firms), _person_links(bucket_persons)])
    records = pl.concat([bucket_firms.select(IDENTITY_COLUMNS), bucket_persons])
    names = normalise_names(records["subject_name"])
    _stage_write(entities_table(records, links, names), stage / "entities" / f"part-{bucket:05d}.arrow")
    for (number,), part in (
        links.with_columns(_range_of(cuts, links))
        .partition_by("range", as_dict=True, include_key=False)
        .items()
    ):
        _stage_write(part, stage / "links" / f"range-{number:05d}" / f"part-{bucket:05d}.arrow")
    if not representatives:
        return _Built(dict(links.schema), 0, None)
    firm_inputs = bucket_firms.select(*enterprise_inputs(), "entity_id")
    rows = representative_rows(firm_inputs)
    _stage_write(firm_inputs[rows], stage / "representatives" / f"part-{bucket:05d}.arrow")
    # their spellings, for their keys: the cores of their names, normalised already (``names`` has
    # a row per record, the firms' first), taken by row rather than looked up by name
    counts = (
        names["core"]
        .gather(rows)
        .drop_nulls()
        .rename("value")
        .value_counts(name="len")
        .with_columns(pl.col("len").cast(pl.Int64))
    )
    return _Built(dict(links.schema), rows.len(), counts)


def _sort_range(stage: Path, schema: dict[str, pl.DataType], number: int) -> None:
    """Range ``number`` of the links (every bucket's part of it) sorted by KEYS (``sorted-N``)."""
    parts = sorted((stage / "links" / f"range-{number:05d}").glob("part-*.arrow"))
    part = pl.concat([pl.read_ipc(p) for p in parts]) if parts else pl.DataFrame(schema=schema)
    _stage_write(part.sort(KEYS), stage / "links" / f"sorted-{number:05d}.arrow")


def _key_representative_parts(stage: Path, spec: Spec, numbers: list[int]) -> None:
    """Parts ``numbers`` of the representatives (``part-N``, consecutive) with their ``BLOCK_KEYS``
    (``keyed-N``, each part's rows as they were), the names' one-off spellings corrected as judged
    by all the representatives' spellings (``REPRESENTATIVES_CORRECTIONS``, made once)."""
    parts = [pl.read_ipc(stage / "representatives" / f"part-{number:05d}.arrow") for number in numbers]
    made = stage / REPRESENTATIVES_CORRECTIONS
    corrections = {NAME_COLUMN: pl.read_ipc(made)} if made.exists() else {}
    # (the parts are consecutive ranges of entity ids: in order together as each is alone)
    keyed = with_block_keys(pl.concat(parts), lambda reps: blocking_keys(reps, spec, corrections=corrections))
    start = 0
    for number, part in zip(numbers, parts, strict=True):
        _stage_write(keyed.slice(start, part.height), stage / "representatives" / f"keyed-{number:05d}.arrow")
        start += part.height


def _consecutive(sizes: list[int], limit: int) -> list[list[int]]:
    """The numbers of ``sizes`` cut into runs of consecutive numbers holding at most ``limit`` in
    all (a larger one alone)."""
    runs: list[list[int]] = []
    held = 0
    for number, size in enumerate(sizes):
        if not runs or held + size > limit:
            runs.append([])
            held = 0
        runs[-1].append(number)
        held += size
    return runs


def _entity_buckets(entity_ids: pl.Series, bucket_records: int) -> pl.DataFrame:
    """(entity_id, bucket): consecutive ranges of the entity ids (one per record) holding about
    ``bucket_records`` records each (an entity is never cut)."""
    counts = entity_ids.value_counts(name="n").sort("entity_id")
    return counts.select(
        "entity_id",
        ((pl.col("n").cum_sum() - pl.col("n")) // max(1, bucket_records)).cast(pl.UInt32).alias("bucket"),
    ).with_columns(pl.col("bucket").rank("dense").cast(pl.UInt32) - 1)


def _key_cuts(keys: pl.LazyFrame, ranges: int) -> pl.Series:
    """Where ``ranges`` ranges of KEYS of about as many records each begin (cut at a sample of the
    keys), so that links sorted per range follow one another in KEYS order: the keys joined by a
    NUL (``_joined_keys``), which sort as the KEYS do."""
    total = keys.select(pl.len()).collect().item()
    sample = (
        keys.gather_every(max(1, total // max(1, ranges * 64)))
        .select(_joined_keys())
        .collect()
        .to_series()
        .sort()
    )
    return sample.gather([sample.len() * i // ranges for i in range(1, ranges)]).unique().sort()


def _joined_keys() -> pl.Expr:
    return pl.concat_str(*KEYS, separator="\x00")


def _range_of(cuts: pl.Series, frame: pl.DataFrame) -> pl.Series:
    """Per row of a frame with KEYS, the number of its range of KEYS (``_key_cuts``), by binary search."""
    return cuts.search_sorted(frame.select(_joined_keys()).to_series(), side="right").alias("range")


def _bucket(folder: Path, bucket: int, empty: pl.DataFrame) -> pl.DataFrame:
    """Bucket ``bucket``'s rows (``_stage_write`` parts, in order; ``empty`` when none)."""
    parts = sorted((folder / f"bucket-{bucket:05d}").glob("part-*.arrow"))
    return pl.concat([pl.read_ipc(part) for part in parts]) if parts else empty


def _stage_write(frame: pl.DataFrame, path: Path) -> None:
    """A work file of the gather's own, read back once by it: Arrow IPC, uncompressed (a third of
    the time Parquet takes to write and read; not atomic, nobody else reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_ipc(path, compression="uncompressed")


def _shuffle_firms(firms: pl.LazyFrame, engine: pl.DataFrame, stage: Path, chunk: int) -> None:
    """The firms' records with their engine links (``engine``, in record id order, with each
    entity's bucket) into one folder per bucket, ``chunk`` records at a time, in their order. A
    record's link is found by binary search: no hash table of every record id."""
    ids = engine["record_id"]
    total = firms.select(pl.len()).collect().item()
    for number, start in enumerate(range(0, total, chunk)):
        part = firms.slice(start, chunk).collect().with_columns(record_id().alias("record_id"))
        at = ids.search_sorted(part["record_id"])
        found = engine[at.clip(0, max(0, engine.height - 1))]
        if not (found["record_id"] == part["record_id"]).all():
            raise ValueError("a firm's record has no link from the engine")
        part = pl.concat([part, found.drop("record_id")], how="horizontal")
        for (bucket,), piece in part.partition_by("bucket", as_dict=True, include_key=False).items():
            _stage_write(piece, stage / "firms" / f"bucket-{bucket:05d}" / f"part-{number:05d}.arrow")


def _out_of_order(keys: list[str]) -> pl.Expr:
    """True when some row comes before the row above it in ``keys`` order (no sort)."""
    earlier = pl.lit(False)
    ties = pl.lit(True)
    for key in keys:
        before = pl.col(key).shift(1)
        earlier = earlier | (ties & (pl.col(key) < before))
        ties = ties & (pl.col(key) == before)
    return earlier.any()


def _sorted_by(frame: pl.DataFrame, keys: list[str]) -> bool:
    """Are ``frame``'s rows in ``keys`` order (one vectorised pass, no sort)?"""
    return not frame.select(_out_of_order(keys)).item()


def _upserted(previous: pl.DataFrame, new: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``previous`` with ``new``'s rows in place of those with their keys, in ``keys`` order. The
    previous version's rows are in that order already (it was written so): the night's few rows are
    sorted and merged in, per value of the leading keys, rather than the whole table sorted again
    (the same rows in the same order; a table found out of order is sorted)."""
    kept = previous.join(new.select(keys), on=keys, how="anti", maintain_order="left")
    if not _sorted_by(kept, keys):
        return pl.concat([kept, new]).sort(keys)
    new = new.sort(keys)
    *leading, last = keys
    if not leading:
        return kept.merge_sorted(new, key=last)

    def part(frame: pl.DataFrame, values: tuple[Any, ...]) -> pl.DataFrame:
        """The rows with these leading values: a slice of the sorted frame (no copy) by binary search."""
        if len(leading) > 1:
            return frame.filter(
                pl.all_horizontal(pl.col(k) == v for k, v in zip(leading, values, strict=True))
            )
        column = frame[leading[0]]
        start, end = (int(column.search_sorted(values[0], side=side)) for side in ("left", "right"))
        return frame.slice(start, end - start)

    groups = pl.concat([kept.select(leading), new.select(leading)]).unique().sort(leading).rows()
    return pl.concat([part(kept, values).merge_sorted(part(new, values), key=last) for values in groups])


def _upserted_stream(previous: pl.LazyFrame, new: pl.DataFrame, keys: list[str]) -> pl.LazyFrame:
    """``_upserted`` as a plan to stream into a file: ``previous`` (a scan of a version's table, in
    ``keys`` order as written) without ``new``'s keys, with ``new``'s rows merged in per value of
    the leading keys. A table found out of order is read and sorted whole."""
    *leading, last = keys
    kept = previous.join(new.lazy().select(keys), on=keys, how="anti", maintain_order="left")
    if not leading or previous.select(_out_of_order(keys)).collect(engine="streaming").item():
        return _upserted(previous.collect(engine="streaming"), new, keys).lazy()
    new = new.sort(keys)
    groups = (
        pl.concat([previous.select(leading).unique().collect(engine="streaming"), new.select(leading)])
        .unique()
        .sort(leading)
        .rows()
    )

    def equal(values: tuple[Any, ...]) -> pl.Expr:
        return pl.all_horizontal(pl.col(k) == v for k, v in zip(leading, values, strict=True))

    return pl.concat(
        [
            kept.filter(equal(values)).merge_sorted(new.filter(equal(values)).lazy(), key=last)
            for values in groups
        ]
    )


def resolve_changes(
    changed: pl.DataFrame,
    previous_links: pl.DataFrame | pl.LazyFrame,
    previous_entities: pl.DataFrame,
    members_of: Callable[[pl.DataFrame], pl.DataFrame],
    spec_name: str,
    registry_dir: Path,
    review_dir: Path | None = None,
    decisions: Path | None = None,
    run: str = "run",
) -> Resolution:
    """An incremental night: link the ``changed`` records (new or changed canonical records) against
    the registry's representatives of the known entities, which stay as they are; every other
    record keeps its published link. ``members_of(keys)`` returns the canonical records (all of the
    snapshot's, IDENTITY_COLUMNS) with the given KEYS, to rebuild the touched entities' rows.
    Known firms the night's records contradict are re-linked with them (``freed_entities``);
    KnownEntitiesConflict when that does not settle it. ``previous_links`` may be a scan (in
    ``KEYS`` order, as published): it is never read whole, and the ``links`` returned are a plan
    over it that streams into a file (``foundation.lake.write_parquet``)."""
    registry = Registry(registry_dir)
    representatives = registry.scan_representatives()
    if representatives is None:
        raise ValueError(f"registry {registry_dir} has no representatives: run a full re-link first")
    spec = load_spec(spec_name)
    members = registry.members()
    # a spelling is one-off only among the whole snapshot's records (the published names, with
    # tonight's in place of the versions they replace), as in a full re-link
    spellings = {NAME_COLUMN: _snapshot_spellings(registry_dir, previous_links, changed)}
    corrections = correction_tables(spec, spellings)  # (made once: the night keys and links several parts)
    firms, persons = _split_persons(changed)
    inputs = firms.select(*enterprise_inputs())
    # (keyed as the engine reads them: a spelling is one-off only among the whole snapshot's records)
    input_keys = blocking_keys(inputs, spec, corrections=corrections)
    reps = _within_reach(representatives, input_keys, spec)
    engine_links, renamed, result = _engine(inputs, spec, decisions, reps, spellings, corrections=corrections)
    compared, engine_stats, fitted = reps.height, result.stats, result.fitted
    del reps
    # A known firm with a USCC that tonight's records tie to another USCC was a false merge: its
    # records are placed afresh (no longer fixed), so the engine can take it apart. Only they and
    # the night's records placed with them are linked again (with the model fitted above), against
    # the representatives they reach; the night's other records keep their places.
    freed: list[str] = []
    again = pl.Series("record_id", [], dtype=pl.String)  # the records linked again
    reviews = [result.review]
    del result  # (its links and record map are a row per record compared: 3.6M on a city's night)
    for relink in range(RELINK_ROUNDS):
        conflicts = [old for old in renamed if not old.startswith("X")]
        if not conflicts:
            break
        freed += conflicts
        if relink == RELINK_ROUNDS - 1:
            raise KnownEntitiesConflict(
                f"tonight's records tie known firms to other firms' USCCs (e.g. {freed[:3]}) through "
                f"{RELINK_ROUNDS} rounds of re-linking them: only a full re-link can take them apart"
            )
        freed_ids = members.filter(pl.col("entity_id").is_in(freed))["record_id"]
        keys = freed_ids.str.splitn(":", 2).struct.rename_fields(KEYS).struct.unnest()
        changed = pl.concat([changed, members_of(keys.join(changed.select(KEYS), on=KEYS, how="anti"))])
        firms, persons = _split_persons(changed)
        inputs = firms.select(*enterprise_inputs())
        # with whole clusters of the night's records: a cluster that loses one is decided again
        seeds = pl.concat(
            [
                again,
                freed_ids,
                engine_links.filter(pl.col("entity_id").is_in([renamed[old] for old in conflicts]))[
                    "record_id"
                ],
            ]
        )
        clusters = engine_links.filter(pl.col("record_id").is_in(seeds.implode()))["entity_id"].unique()
        again = (
            pl.concat(
                [seeds, engine_links.filter(pl.col("entity_id").is_in(clusters.implode()))["record_id"]]
            )
            .unique()
            .sort()
        )
        relinked = inputs.filter(pl.col("record_id").is_in(again.implode()))
        relinked_keys = blocking_keys(relinked, spec, corrections=corrections)
        input_keys = pl.concat([input_keys, relinked_keys.join(input_keys, on="record_id", how="anti")])
        reps = _within_reach(representatives.filter(~pl.col("entity_id").is_in(freed)), relinked_keys, spec)
        links_again, renamed_again, result_again = _engine(
            relinked, spec, decisions, reps, spellings, fitted, corrections=corrections
        )
        del reps
        engine_links = pl.concat(
            [engine_links.join(links_again.select("record_id"), on="record_id", how="anti"), links_again]
        )
        decided_again = set(clusters.to_list()) | set(freed)
        renamed = {old: new for old, new in renamed.items() if not {old, new} & decided_again} | renamed_again
        again_ids = again.implode()
        reviews = [
            *(
                review.filter(
                    ~pl.col("record_id_l").is_in(again_ids) & ~pl.col("record_id_r").is_in(again_ids)
                )
                for review in reviews
            ),
            result_again.review,
        ]
        del result_again
    known = representatives.select(pl.len()).collect().item()
    del representatives
    keys_of = _keys_from(input_keys, spec, corrections)
    # a known entity that a new record gave its USCC takes that id with all its records
    rename = pl.col("entity_id").replace(renamed)
    moved = members.filter(pl.col("entity_id").is_in(list(renamed))).with_columns(rename)
    moved = moved.join(engine_links.select("record_id"), on="record_id", how="anti")
    changes = registry.update(
        pl.concat([engine_links.select("record_id", "entity_id"), moved.select("record_id", "entity_id")]),
        inputs,
        run,
        partial=True,
        members=members,
        keys_of=keys_of,
    )
    del members
    registry.key_representatives(keys_of)  # (the representatives of a registry an older version wrote)
    _write_spellings(registry_dir, spellings[NAME_COLUMN])
    if review_dir is not None:
        write_review(pl.concat(reviews, how="vertical_relaxed"), review_dir, run)
    # the previous version's links stream: only the changed and touched entities' rows are read
    previous = previous_links.lazy().with_columns(rename)
    changed_keys = changed.select(KEYS)
    now = pl.concat(
        [
            engine_links["entity_id"],
            _person_links(persons)["entity_id"],
            pl.Series(list(renamed), dtype=pl.String),
        ]
    )
    before = (
        previous.join(changed_keys.lazy(), on=KEYS, how="semi")
        .select("entity_id")
        .collect(engine="streaming")["entity_id"]
    )
    touched = pl.concat([before, now]).unique().sort().to_frame("entity_id")
    # the touched entities' other records, with the links they had (their method is looked at again)
    kept = (
        previous.join(touched.lazy(), on="entity_id", how="semi", maintain_order="left")
        .join(changed_keys.lazy(), on=KEYS, how="anti", maintain_order="left")
        .collect(engine="streaming")
    )
    kept_records = members_of(kept.select(KEYS))
    if kept_records.height != kept.height:
        raise ValueError(
            f"{kept.height - kept_records.height} records linked in the previous version are missing from "
            f"the accepted snapshot: run a full re-link"
        )
    kept_firms, kept_persons = _split_persons(kept_records)
    kept_engine = kept.select(record_id().alias("record_id"), "entity_id", "match_confidence", "match_grade")
    rebuilt = pl.concat(
        [
            _firm_links(
                pl.concat([kept_firms, firms]),
                pl.concat([kept_engine, engine_links.select(kept_engine.columns)]),
            ),
            _person_links(pl.concat([kept_persons, persons])),
        ]
    ).select(previous.collect_schema().names())
    links = _upserted_stream(previous, rebuilt, KEYS)
    del kept, kept_records, kept_engine
    entities = _upserted(
        previous_entities.join(touched, on="entity_id", how="anti", maintain_order="left"),
        entities_table(pl.concat([kept_firms, kept_persons, firms, persons]), rebuilt).select(
            previous_entities.columns
        ),
        ["entity_id"],
    )
    stats = {
        **engine_stats,
        "mode": "incremental",
        "changed_records": changed.height,
        "freed_entities": len(freed),
        "relinked_records": again.len(),
        "representatives_compared": compared,
        "representatives": known,
        "touched_entities": touched.height,
        "registry_changes": changes.height,
    }
    return Resolution(links, entities, touched, stats)
