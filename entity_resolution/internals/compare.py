"""Comparisons: each candidate pair gets a level per ``[[compare]]`` (NULL_LEVEL when a side is missing)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from rapidfuzz import distance
from rapidfuzz.process import cpdist

from entity_resolution.spec import PREFIX_SCORES, Comparison, Spec

NULL_LEVEL = -1


def compared_columns(spec: Spec) -> list[str]:
    return list(dict.fromkeys(c.column for c in spec.comparisons))


def _strings(values: pl.Series) -> list[str]:
    return values.cast(pl.String).fill_null("").to_list()


def levels_of(comparison: Comparison, left: pl.Series, right: pl.Series) -> np.ndarray:
    """The level of each pair for one comparison (NULL_LEVEL where either side is missing)."""
    null = (left.is_null() | right.is_null()).to_numpy()
    if comparison.method == "token_jaccard":
        null |= (left.list.len().fill_null(0) == 0).to_numpy() | (
            right.list.len().fill_null(0) == 0
        ).to_numpy()
        frame = pl.DataFrame({"l": left, "r": right})
        inter = frame.select(pl.col("l").list.set_intersection(pl.col("r")).list.len()).to_series().to_numpy()
        union = frame.select(pl.col("l").list.set_union(pl.col("r")).list.len()).to_series().to_numpy()
        score = np.divide(inter, union, out=np.zeros(len(inter), dtype=float), where=union > 0)
        higher_is_better = True
    elif comparison.method == "exact":
        score = (left == right).fill_null(False).to_numpy().astype(float)
        higher_is_better = True
    elif comparison.method == "prefix":
        equal, nested, _ = PREFIX_SCORES
        frame = pl.DataFrame({"l": left.cast(pl.String), "r": right.cast(pl.String)})
        score = (
            frame.select(
                pl.when(pl.col("l") == pl.col("r"))
                .then(equal)
                .when(pl.col("l").str.starts_with(pl.col("r")) | pl.col("r").str.starts_with(pl.col("l")))
                .then(nested)
                .otherwise(0.0)
            )
            .to_series()
            .fill_null(0.0)
            .to_numpy()
        )
        higher_is_better = True
    elif comparison.method in ("numeric", "date_days"):
        l_values = left.cast(pl.Int64 if comparison.method == "date_days" else pl.Float64)
        r_values = right.cast(pl.Int64 if comparison.method == "date_days" else pl.Float64)
        score = (l_values - r_values).abs().cast(pl.Float64).fill_null(math.inf).to_numpy()
        higher_is_better = False
    else:
        a, b = _strings(left), _strings(right)
        if comparison.method == "levenshtein":
            score = cpdist(a, b, scorer=distance.Levenshtein.distance, workers=-1).astype(float)
            higher_is_better = False
        else:
            score = cpdist(a, b, scorer=distance.JaroWinkler.similarity, workers=-1)
            higher_is_better = True
    level = np.zeros(len(score), dtype=np.int8)
    for threshold in sorted(comparison.thresholds, reverse=not higher_is_better):
        met = score >= threshold - 1e-9 if higher_is_better else score <= threshold + 1e-9
        level = np.where(met, level + 1, level)
    if comparison.method == "exact":
        level = np.where(score >= 1, comparison.levels - 1, 0).astype(np.int8)
    elif comparison.one_char_level:
        level = np.where(level > 0, level + 1, level)
    if comparison.one_char_level:
        if comparison.method == "exact":
            a, b = _strings(left), _strings(right)
        one_apart = cpdist(a, b, scorer=distance.Levenshtein.distance, workers=-1) == 1
        level = np.where(one_apart, 1, level)
    return np.where(null, NULL_LEVEL, level).astype(np.int8)


def compare_pairs(sig: pl.DataFrame, pairs: pl.DataFrame, spec: Spec) -> np.ndarray:
    """Levels, one column per comparison, for pairs (l, r) of signature rows."""
    columns = compared_columns(spec)
    left = sig.select(columns)[pairs["l"].to_numpy()]
    right = sig.select(columns)[pairs["r"].to_numpy()]
    return (
        np.column_stack([levels_of(c, left[c.column], right[c.column]) for c in spec.comparisons])
        if len(pairs)
        else np.zeros((0, len(spec.comparisons)), dtype=np.int8)
    )


def term_frequencies(frame: pl.DataFrame, spec: Spec, unit: str | None = None) -> dict[str, pl.DataFrame]:
    """Per ``tf_adjust`` comparison column, each value's share (``tf``) of the units holding a value.

    A unit is a row, or one distinct ``unit`` (e.g. the exact-key node: ten records of one coded
    firm count once). Computed once over the whole input, the tables serve every partition.
    """
    tables = {}
    for comparison in spec.comparisons:
        column = comparison.column
        if not comparison.tf_adjust or column in tables or column not in frame.columns:
            continue
        values = frame.select(column, *([unit] if unit else [])).drop_nulls(column)
        if unit:
            values = values.unique()
        total = max(values.height, 1)
        tables[column] = values.group_by(column).len().select(column, (pl.col("len") / total).alias("tf"))
    return tables


def value_frequencies(
    sig: pl.DataFrame, pairs: pl.DataFrame, spec: Spec, tables: dict[str, pl.DataFrame]
) -> dict[str, np.ndarray]:
    """Per ``tf_adjust`` column, the larger term frequency of the pair's two values (NaN if unknown)."""
    out = {}
    for column, table in tables.items():
        tf = sig.select("sig", column).join(table, on=column, how="left").sort("sig")["tf"].to_numpy()
        left, right = tf[pairs["l"].to_numpy()], tf[pairs["r"].to_numpy()]
        out[column] = np.fmax(left, right)
    return out
