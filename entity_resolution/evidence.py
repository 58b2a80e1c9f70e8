"""Why a record is attached to its firm, in the spirit of D&B's match-grade string.

For every link: the name and code as the source recorded them, and ``match_grade``, one letter per
compared field — code, name, legal representative — A same, B similar, F different, Z missing:

- code: A the record's own valid USCC is the firm's; B it reached the firm's USCC through a repair,
  the organization code or the old registration number; F a code that does not match; Z no code;
- name: A the exact name or a former name; B the same after normalisation (width, script,
  brackets, region, legal form) or a close fuzzy match (rapidfuzz ratio >= 85); F otherwise;
- legal representative: A same as the firm's; F different; Z missing on either side.

Computed over distinct (record name, firm name) pairs, so a million links cost seconds.
"""

from __future__ import annotations

import polars as pl
from rapidfuzz import fuzz
from rapidfuzz.process import cpdist

from entity_resolution.names import normalise_names

EVIDENCE_COLUMNS = ("recorded_name", "recorded_code", "match_grade")
SIMILAR_NAME = 85.0


def _name_letters(pairs: pl.DataFrame) -> pl.Series:
    """pairs(recorded_name, firm_name, former_names) -> A/B/F/Z per pair; only the pairs that are
    not already the same name are normalised and compared."""
    same = (pl.col("recorded_name") == pl.col("firm_name")) | pl.col("former_names").list.contains(
        pl.col("recorded_name")
    )
    pairs = pairs.with_row_index("_pair").with_columns(_same=same.fill_null(False))
    differ = pairs.filter(
        ~pl.col("_same") & pl.col("recorded_name").is_not_null() & (pl.col("recorded_name") != "")
    )
    keys = normalise_names(pl.concat([differ["recorded_name"], differ["firm_name"]]).unique().drop_nulls())
    key_of = keys.select("name", pl.col("name_key").alias("key"))
    differ = differ.join(
        key_of.rename({"name": "recorded_name", "key": "recorded_key"}), on="recorded_name", how="left"
    ).join(key_of.rename({"name": "firm_name", "key": "firm_key"}), on="firm_name", how="left")
    similarity = cpdist(
        differ["recorded_key"].fill_null("").to_list(),
        differ["firm_key"].fill_null("").to_list(),
        scorer=fuzz.ratio,
        workers=-1,
    )
    differ = differ.with_columns(
        letter=pl.when(
            (pl.col("recorded_key") == pl.col("firm_key")) | (pl.Series(similarity) >= SIMILAR_NAME)
        )
        .then(pl.lit("B"))
        .otherwise(pl.lit("F"))
    )
    return (
        pairs.join(differ.select("_pair", "letter"), on="_pair", how="left")
        .sort("_pair")
        .select(
            pl.when(pl.col("_same"))
            .then(pl.lit("A"))
            .when(pl.col("letter").is_not_null())
            .then(pl.col("letter"))
            .otherwise(pl.lit("Z"))
        )
        .to_series()
    )


def match_evidence(links: pl.LazyFrame, records: pl.LazyFrame, entities: pl.LazyFrame) -> pl.LazyFrame:
    """Links with ``recorded_name``, ``recorded_code`` and ``match_grade`` added (same order), lazily:
    only the distinct (recorded name, firm name) pairs are collected, the rest streams.

    ``records`` holds source, source_record_id, subject_name, code_raw, uscc, org_code, reg_no,
    code_status, legal_rep; ``entities`` holds entity_id, uscc, org_code, reg_no, name, former_names.
    """
    keys = ["source", "source_record_id"]
    linked = links.join(records, on=keys, how="left", maintain_order="left")
    firm_rep = (
        linked.select("entity_id", "legal_rep")
        .drop_nulls("legal_rep")
        .group_by("entity_id")
        .agg(pl.col("legal_rep").mode().sort().first().alias("firm_rep"))
    )
    firms = entities.select(
        "entity_id",
        pl.col("uscc").alias("firm_uscc"),
        pl.col("org_code").alias("firm_org"),
        pl.col("reg_no").alias("firm_reg"),
        pl.col("name").alias("firm_name"),
        "former_names",
    )
    frame = linked.join(firms, on="entity_id", how="left", maintain_order="left").join(
        firm_rep, on="entity_id", how="left", maintain_order="left"
    )
    pairs = (
        frame.select(pl.col("subject_name").alias("recorded_name"), "entity_id")
        .unique()
        .join(firms.select("entity_id", "firm_name", "former_names"), on="entity_id", how="left")
        .drop("entity_id")
        .unique(["recorded_name", "firm_name"], keep="any")
        .sort("recorded_name", "firm_name", nulls_last=True)
        .collect(engine="streaming")
    )
    names = pairs.select("recorded_name", "firm_name").with_columns(name_letter=_name_letters(pairs))
    code = (
        pl.when(pl.col("code_raw").is_null() | (pl.col("code_raw").str.strip_chars() == ""))
        .then(pl.lit("Z"))
        .when((pl.col("code_status") == "valid") & (pl.col("uscc") == pl.col("firm_uscc")))
        .then(pl.lit("A"))
        .when(
            (pl.col("uscc").is_not_null() & (pl.col("uscc") == pl.col("firm_uscc")))
            | (pl.col("org_code").is_not_null() & (pl.col("org_code") == pl.col("firm_org")))
            | (pl.col("reg_no").is_not_null() & (pl.col("reg_no") == pl.col("firm_reg")))
        )
        .then(pl.lit("B"))
        .otherwise(pl.lit("F"))
    )
    rep = (
        pl.when(pl.col("legal_rep").is_null() | pl.col("firm_rep").is_null())
        .then(pl.lit("Z"))
        .when(pl.col("legal_rep") == pl.col("firm_rep"))
        .then(pl.lit("A"))
        .otherwise(pl.lit("F"))
    )
    link_columns = links.collect_schema().names()
    return frame.join(
        names.lazy(),
        left_on=["subject_name", "firm_name"],
        right_on=["recorded_name", "firm_name"],
        how="left",
        nulls_equal=True,
        maintain_order="left",
    ).select(
        *link_columns,
        pl.col("subject_name").alias("recorded_name"),
        pl.col("code_raw").alias("recorded_code"),
        pl.concat_str(code, pl.col("name_letter").fill_null("Z"), rep).alias("match_grade"),
    )
