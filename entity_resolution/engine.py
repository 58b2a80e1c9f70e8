"""A declarative Fellegi-Sunter linkage engine: any tabular records, driven by a TOML spec.

Steps, all vectorised (Polars joins for blocking, rapidfuzz ``cpdist`` for pair similarities,
numpy for the model):

1. normalise the input columns into fields (spec ``[[normalise]]``) and collapse identical records
   into *signatures*, so ten monthly records of one employer are compared once;
2. exact keys (``[exact]``): signatures that share a valid code form one node (known matches);
3. blocking rules (``[[blocking]]``, united) give candidate pairs between nodes, never two nodes
   whose ``cannot_link_on`` values differ;
4. comparisons (``[[compare]]``) put each pair on a level per field;
5. the model: u from random pairs, m from the known matches (``m_from_known_matches``: pairs of
   signatures sharing a valid code) and EM on the candidates for the rest; a pair's match
   probability follows from its levels' weights;
6. clustering: pairs above the link threshold are joined strongest first, refusing any join that
   would put two different ``cannot_link_on`` values (two valid USCCs) or two different branches in
   one entity — also through chains; steward decisions become must-link and cannot-link;
7. pairs between the review and link thresholds are returned for the review queue.

Every record gets its entity, a confidence (0-1) and a match grade: one letter per comparison,
comparing the record with its entity's representative (A same, B similar, F different, Z missing).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from entity_resolution.internals.blocking import candidate_pairs, exact_nodes, signatures
from entity_resolution.internals.cluster import cluster, cross_input_pairs
from entity_resolution.internals.compare import (
    NULL_LEVEL,
    compare_pairs,
    compared_columns,
    term_frequencies,
    value_frequencies,
)
from entity_resolution.internals.model import estimate, probability, tf_adjustment, weights
from entity_resolution.internals.normalise import normalise
from entity_resolution.spec import Spec

__all__ = ["Linkage", "link", "normalise"]

log = logging.getLogger(__name__)


@dataclass
class Linkage:
    links: pl.DataFrame  # record_id, entity_id, match_confidence, match_grade
    pairs: pl.DataFrame  # scored candidate pairs (signature ids, levels, probability)
    review: pl.DataFrame  # pairs between the review and link thresholds, with both records
    model: dict[str, Any]  # m, u, lambda per comparison level
    stats: dict[str, Any] = field(default_factory=dict)
    assignments: pl.DataFrame | None = None  # record id -> signature, node (for blocking diagnostics)


def _stable_id(members: list[str]) -> str:
    return "X" + hashlib.sha1(min(members).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- the engine
def link(
    records: pl.DataFrame,
    spec: Spec,
    must_link: list[tuple[str, str]] | None = None,
    cannot_link: list[tuple[str, str]] | None = None,
    anchors: dict[str, str] | None = None,
    seed: int = 7,
    fixed_anchors: bool = False,
    frequencies: dict[str, pl.DataFrame] | None = None,
) -> Linkage:
    """Link ``records`` (the spec's id column plus its input columns) into entities.

    ``must_link`` / ``cannot_link`` are record-id pairs (steward decisions); ``anchors`` maps record
    ids to entity ids they already hold (the registry), so known entities keep their ids. With
    ``fixed_anchors`` (an incremental run) the anchored entities are taken as they are: their
    records stay together and two of them never merge; only the other records are placed.
    ``frequencies`` are the term-frequency tables (``term_frequencies``) of the whole input when
    ``records`` is one partition of it; by default they are computed from ``records``.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    rid = spec.id_column
    if records[rid].is_duplicated().any():
        raise ValueError(f"record ids in '{rid}' must be unique")
    if spec.link_only and spec.source_column not in records.columns:
        raise ValueError(f"link_only spec {spec.name!r}: the records need a '{spec.source_column}' column")
    frame = normalise(records, spec)
    timings["normalise"] = time.perf_counter() - started

    # 1. signatures: identical values on everything that matters are compared once
    sig, per_record = signatures(frame, spec)
    n = sig.height
    timings["signatures"] = time.perf_counter() - started

    # 2. nodes: signatures sharing an exact key (a valid code) are one node
    clusters = exact_nodes(sig, spec)
    sig = sig.with_columns(pl.Series("node", clusters.roots()))
    timings["exact"] = time.perf_counter() - started

    # 3. blocking: candidate pairs between different nodes
    candidates = candidate_pairs(sig, spec)
    if spec.link_only:  # accuracy hook: only pairs across the two inputs
        candidates = cross_input_pairs(sig, candidates, spec.source_column)
    timings["blocking"] = time.perf_counter() - started

    # 4-5. comparisons and the model
    levels = compare_pairs(sig, candidates, spec)
    m, u, prior = estimate(sig, levels, spec, seed)
    if frequencies is None:  # accuracy hook: term frequencies (per exact-key node)
        frequencies = term_frequencies(sig, spec, unit="node")
    adjustment = tf_adjustment(levels, u, spec, value_frequencies(sig, candidates, spec, frequencies))
    match_probability = probability(weights(levels, m, u) + adjustment, prior) if len(levels) else np.zeros(0)
    scored = candidates.with_columns(pl.Series("probability", match_probability))
    timings["model"] = time.perf_counter() - started

    # 6. clustering with constraints (strongest evidence first)
    rid_to_sig = dict(zip(per_record[rid].to_list(), per_record["sig"].to_list(), strict=True))
    forced = [
        (rid_to_sig[a], rid_to_sig[b]) for a, b in (must_link or []) if a in rid_to_sig and b in rid_to_sig
    ]
    forbidden = {
        frozenset((rid_to_sig[a], rid_to_sig[b]))
        for a, b in (cannot_link or [])
        if a in rid_to_sig and b in rid_to_sig
    }
    anchor_of: dict[int, str] = {}
    if fixed_anchors and anchors:
        for record, entity in anchors.items():
            if record in rid_to_sig:
                anchor_of.setdefault(rid_to_sig[record], entity)
        first_of: dict[str, int] = {}
        for signature, entity in sorted(anchor_of.items()):
            if entity in first_of:
                forced.append((first_of[entity], signature))
            else:
                first_of[entity] = signature
    clusters.start_linking(forbidden, anchor_of)
    for a, b in forced:
        clusters.join(a, b, force=True)
    linked = scored.filter(pl.col("probability") >= spec.link_threshold).sort(
        ["probability", "l", "r"], descending=[True, False, False]
    )
    accepted = cluster(clusters, scored, linked, spec)  # accuracy hook: average linkage / one-to-one
    sig = sig.with_columns(pl.Series("root", clusters.roots()))
    timings["cluster"] = time.perf_counter() - started

    # entity ids: the cannot-link value (the USCC) when there is one, an anchor's id, else a stable hash
    records_per_root = per_record.join(sig.select("sig", "root"), on="sig")
    naming = records_per_root.group_by("root").agg(pl.col(rid).alias("members"))
    bad = spec.cannot_link_on
    value_col = pl.col(bad) if bad and bad in sig.columns else pl.lit(None, pl.String)
    root_value = sig.group_by("root").agg(value_col.drop_nulls().first().alias("value"))
    anchor_ids = {}
    if anchors:
        anchored = records_per_root.filter(pl.col(rid).is_in(list(anchors))).with_columns(
            pl.col(rid).replace_strict(anchors, return_dtype=pl.String).alias("anchor")
        )
        # an id goes to the one cluster that holds most of its records (the others are splits)
        votes = anchored.group_by("root", "anchor").len().sort(["len", "root"], descending=[True, False])
        claimed: set[str] = set()
        for root_id, anchor, _ in votes.iter_rows():
            if root_id not in anchor_ids and anchor not in claimed:
                anchor_ids[root_id] = anchor
                claimed.add(anchor)
    naming = naming.join(root_value, on="root", how="left")
    entity_of = {
        r: (value or anchor_ids.get(r) or _stable_id(members))
        for r, members, value in naming.select("root", "members", "value").iter_rows()
    }
    sig = sig.with_columns(
        pl.col("root").replace_strict(entity_of, return_dtype=pl.String).alias("entity_id")
    )

    # confidence: 1 for exact keys and singletons; else the strongest accepted pair touching the signature
    strongest = (
        pl.concat(
            [
                linked.filter(pl.Series(accepted)).select(pl.col("l").alias("sig"), "probability"),
                linked.filter(pl.Series(accepted)).select(pl.col("r").alias("sig"), "probability"),
            ]
        )
        .group_by("sig")
        .agg(pl.col("probability").max())
        if len(linked)
        else pl.DataFrame(schema={"sig": pl.UInt32, "probability": pl.Float64})
    )
    coded = sig.join(sig.group_by("node").len(), on="node").filter(pl.col("len") > 1)["sig"]
    sig = sig.join(strongest, on="sig", how="left").with_columns(
        pl.when(pl.col("sig").is_in(coded.implode()))
        .then(1.0)
        .otherwise(pl.col("probability").fill_null(1.0))
        .round(4)
        .alias("match_confidence")
    )
    grades = _grades(sig, spec)
    links = (
        per_record.join(sig.select("sig", "entity_id", "match_confidence"), on="sig")
        .join(grades, on="sig")
        .select(rid, "entity_id", "match_confidence", "match_grade")
        .sort(rid)
    )
    review = scored.filter(
        (pl.col("probability") >= spec.review_threshold) & (pl.col("probability") < spec.link_threshold)
    )
    review_pairs = _review_pairs(
        review,
        levels[(match_probability >= spec.review_threshold) & (match_probability < spec.link_threshold)],
        sig,
        per_record,
        spec,
    )
    timings["total"] = time.perf_counter() - started
    stats = {
        "records": records.height,
        "signatures": n,
        "candidate_pairs": len(candidates),
        "linked_pairs": int(sum(accepted)),
        "refused_by_constraints": int(len(accepted) - sum(accepted)),
        "review_pairs": review.height,
        "entities": links["entity_id"].n_unique(),
        "lambda": prior,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    model = {
        c.name: {
            "m": m[j].round(5).tolist(),
            "u": u[j].round(5).tolist(),
            "levels": ["null", *range(c.levels)],
        }
        for j, c in enumerate(spec.comparisons)
    }
    log.info("linked %s", stats)
    assignments = per_record.join(sig.select("sig", "node"), on="sig")
    return Linkage(
        links=links,
        pairs=scored,
        review=review_pairs,
        model={"lambda": prior, **model},
        stats=stats,
        assignments=assignments,
    )


def _grades(sig: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """Each signature against its entity's representative (the entity's most common signature)."""
    representative = sig.sort("sig").group_by("entity_id").agg(pl.col("sig").first().alias("rep"))
    pairs = (
        sig.select(pl.col("sig").alias("l"), "entity_id")
        .join(representative, on="entity_id")
        .select("l", pl.col("rep").alias("r"))
    )
    levels = compare_pairs(sig, pairs, spec)
    letters = []
    for j, comparison in enumerate(spec.comparisons):
        top = comparison.levels - 1
        column = levels[:, j]
        letters.append(
            np.where(column == NULL_LEVEL, "Z", np.where(column == top, "A", np.where(column == 0, "F", "B")))
        )
    grade = ["".join(chars) for chars in zip(*letters, strict=True)] if letters else []
    return pairs.select(pl.col("l").alias("sig")).with_columns(
        pl.Series("match_grade", grade, dtype=pl.String)
    )


def _review_pairs(
    review: pl.DataFrame, levels: np.ndarray, sig: pl.DataFrame, per_record: pl.DataFrame, spec: Spec
) -> pl.DataFrame:
    """Review-queue rows: one example record on each side, the levels and the probability."""
    rid = spec.id_column
    example = per_record.group_by("sig").agg(pl.col(rid).min().alias("record"))
    shown = [c for c in compared_columns(spec) if sig.schema.get(c) != pl.List(pl.String)]
    left = sig.select("sig", *shown).join(example, on="sig")
    out = review.join(left, left_on="l", right_on="sig", how="left").join(
        left, left_on="r", right_on="sig", how="left", suffix="_r"
    )
    out = out.rename({"record": f"{rid}_l", "record_r": f"{rid}_r"}).rename({c: f"{c}_l" for c in shown})
    for j, comparison in enumerate(spec.comparisons):
        out = out.with_columns(
            pl.Series(f"level_{comparison.name}", levels[:, j] if len(levels) else [], dtype=pl.Int8)
        )
    return out.drop("l", "r")
