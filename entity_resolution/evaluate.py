"""Accuracy of a linkage against the generator's truth: pairwise and B-cubed scores.

Pair counts come from group sizes (n choose 2), so evaluating millions of records needs no pair
enumeration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import polars as pl


@dataclass(frozen=True)
class Scores:
    records: int
    truth_records_without_link: int
    true_firms: int
    predicted_entities: int
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    firms_with_exactly_one_profile: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _pairs(col: pl.Expr) -> pl.Expr:
    return (col * (col - 1) / 2).sum()


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def evaluate(
    links: pl.DataFrame, truth: pl.DataFrame, key: tuple[str, ...] = ("source", "source_record_id")
) -> Scores:
    """Compare ``links`` (key + entity_id) with ``truth`` (key + entity_key) on the records both hold
    (a quarantined record has no link; it is counted, not scored)."""
    joined = truth.select(*key, "entity_key").join(links.select(*key, "entity_id"), on=list(key), how="inner")
    both = joined.group_by("entity_id", "entity_key").len()
    predicted = joined.group_by("entity_id").len()
    actual = joined.group_by("entity_key").len()
    tp = both.select(_pairs(pl.col("len"))).item()
    pp = predicted.select(_pairs(pl.col("len"))).item()
    ap = actual.select(_pairs(pl.col("len"))).item()
    precision = 1.0 if pp == 0 else tp / pp
    recall = 1.0 if ap == 0 else tp / ap
    # B-cubed: per record, overlap of its predicted and true clusters.
    sized = both.join(predicted.rename({"len": "p"}), on="entity_id").join(
        actual.rename({"len": "a"}), on="entity_key"
    )
    n = joined.height
    b_precision = sized.select((pl.col("len") ** 2 / pl.col("p")).sum()).item() / n
    b_recall = sized.select((pl.col("len") ** 2 / pl.col("a")).sum()).item() / n
    # A firm "gets exactly one profile" when all its records share one entity that holds no other firm.
    pure = both.group_by("entity_id").len().filter(pl.col("len") == 1).select("entity_id")
    per_firm = both.group_by("entity_key").agg(
        pl.col("entity_id").n_unique().alias("n"), pl.col("entity_id").first()
    )
    exact = per_firm.filter(pl.col("n") == 1).join(pure, on="entity_id").height
    return Scores(
        records=n,
        truth_records_without_link=truth.height - n,
        true_firms=actual.height,
        predicted_entities=predicted.height,
        pairwise_precision=round(precision, 6),
        pairwise_recall=round(recall, 6),
        pairwise_f1=round(_f1(precision, recall), 6),
        bcubed_precision=round(b_precision, 6),
        bcubed_recall=round(b_recall, 6),
        bcubed_f1=round(_f1(b_precision, b_recall), 6),
        firms_with_exactly_one_profile=round(exact / max(actual.height, 1), 6),
    )


def _pairs_involving(count: pl.Expr, flagged: pl.Expr) -> pl.Expr:
    """Pairs in a group of ``count`` records that involve at least one of its ``flagged`` records."""
    return (count * (count - 1) / 2 - (count - flagged) * (count - flagged - 1) / 2).sum()


def pairwise_involving(
    links: pl.DataFrame, truth: pl.DataFrame, flagged: pl.Series, key: tuple[str, ...] = ("record_id",)
) -> dict[str, float]:
    """Pairwise precision, recall and F1 over the pairs that involve at least one flagged record
    (e.g. the records without a valid code: the hard part of linkage)."""
    joined = (
        truth.select(*key, "entity_key")
        .join(links.select(*key, "entity_id"), on=list(key), how="inner")
        .with_columns(
            pl.struct(key).is_in(flagged.implode())
            if len(key) > 1
            else pl.col(key[0]).is_in(flagged.implode()).alias("_flag")
        )
    )
    if "_flag" not in joined.columns:
        joined = joined.rename({joined.columns[-1]: "_flag"})

    def count(by: list[str]) -> float:
        groups = joined.group_by(by).agg(pl.len().alias("n"), pl.col("_flag").sum().alias("f"))
        return groups.select(_pairs_involving(pl.col("n"), pl.col("f"))).item() or 0.0

    tp, pp, ap = count(["entity_id", "entity_key"]), count(["entity_id"]), count(["entity_key"])
    precision = 1.0 if pp == 0 else tp / pp
    recall = 1.0 if ap == 0 else tp / ap
    return {
        "pairwise_precision": round(precision, 6),
        "pairwise_recall": round(recall, 6),
        "pairwise_f1": round(_f1(precision, recall), 6),
        "true_pairs": int(ap),
    }


def entities_with_two_codes(
    links: pl.DataFrame, codes: pl.DataFrame, key: tuple[str, ...] = ("record_id",)
) -> int:
    """How many entities hold records with two different valid USCCs (must be zero)."""
    return (
        links.select(*key, "entity_id")
        .join(codes.select(*key, "uscc"), on=list(key))
        .drop_nulls("uscc")
        .group_by("entity_id")
        .agg(pl.col("uscc").n_unique())
        .filter(pl.col("uscc") > 1)
        .height
    )
