"""The declarative engine as the nightly pipeline's resolver (config/resolution.toml).

``link_canonical`` takes the canonical records the pipeline holds and returns links and entities
in the same shapes as ``entity_resolution.resolve.resolve``, so the stages after it do not change.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from entity_resolution.engine import link
from entity_resolution.names import normalise_names
from entity_resolution.registry import Registry
from entity_resolution.resolve import CONFIDENCE, _entities, person_entity_id
from entity_resolution.review import read_decisions, write_review
from entity_resolution.spec import load_spec


def record_id() -> pl.Expr:
    """A canonical record's id for the engine: ``source:source_record_id``."""
    return pl.col("source") + ":" + pl.col("source_record_id")


def enterprise_inputs() -> list[pl.Expr]:
    """The enterprise spec's input columns from canonical records (the department's code as written
    goes to ``uscc``: the codes normaliser recognises organization codes and registration numbers
    in any column; ``reg_no`` carries the tax bureau's old registration numbers)."""
    return [
        record_id().alias("record_id"),
        pl.col("subject_name").alias("name"),
        pl.col("code_raw").alias("uscc"),
        pl.lit(None, pl.String).alias("org_code"),
        "reg_no",
        pl.lit(None, pl.String).alias("address"),
        "legal_rep",
        pl.lit(None, pl.String).alias("phone"),
    ]


def link_canonical(
    records: pl.DataFrame,
    spec_name: str = "enterprise",
    registry_dir: Path | None = None,
    review_dir: Path | None = None,
    decisions: Path | None = None,
    run: str = "run",
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(links, entities, stats) for canonical records (source, source_record_id, subject_name,
    code_raw, uscc, org_code, reg_no, code_status, legal_rep, updated_at)."""
    # a natural person's ID number is the person: never offered to the engine to match with a firm
    persons = records.filter(pl.col("code_status") == "resident_id")
    records = records.filter(pl.col("code_status") != "resident_id")
    spec = load_spec(spec_name)
    rid = record_id()
    inputs = records.select(*enterprise_inputs())
    registry = Registry(registry_dir) if registry_dir else None
    must, cannot = read_decisions(decisions) if decisions and decisions.exists() else ([], [])
    result = link(
        inputs, spec, must_link=must, cannot_link=cannot, anchors=registry.anchors() if registry else None
    )
    changes = registry.update(result.links, inputs, run) if registry else None
    if review_dir is not None:
        write_review(result.review, review_dir, run)
    code_letter = result.links["match_grade"].str.slice(0, 1)
    links = (
        records.select("source", "source_record_id", rid.alias("record_id"))
        .join(
            result.links.with_columns(code_letter.alias("_code")),
            on="record_id",
            how="left",
            maintain_order="left",
        )
        .select(
            "source",
            "source_record_id",
            "entity_id",
            "match_confidence",
            pl.when(pl.col("_code") == "A")
            .then(pl.lit("uscc"))
            .when((pl.col("_code") == "B") & (pl.col("match_confidence") >= 1))
            .then(pl.lit("code_crosswalk"))
            .otherwise(pl.lit("fellegi_sunter"))
            .alias("match_method"),
        )
    )
    person_links = persons.select(
        "source",
        "source_record_id",
        person_entity_id().alias("entity_id"),
        pl.lit(CONFIDENCE["resident_id"]).alias("match_confidence"),
        pl.lit("resident_id").alias("match_method"),
    )
    links = pl.concat([links, person_links], how="vertical_relaxed")
    records = pl.concat([records, persons])
    names = normalise_names(records["subject_name"])
    linked = (
        records.select(
            "source",
            "source_record_id",
            "subject_name",
            "uscc",
            "org_code",
            "reg_no",
            "code_status",
            "updated_at",
        )
        .with_columns(
            names["core"].alias("core"),
            names["legal_form"].alias("legal_form"),
            pl.lit(1).alias("n"),
        )
        .join(
            links.select("source", "source_record_id", "entity_id", "match_confidence"),
            on=["source", "source_record_id"],
        )
    )
    entities = _entities(linked, linked.select("entity_id", "source"))
    stats = {**result.stats, "registry_changes": 0 if changes is None else changes.height}
    return links, entities, stats
