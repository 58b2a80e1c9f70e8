"""Comparisons: each candidate pair gets a level per ``[[compare]]`` (NULL_LEVEL when a side is missing)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz import distance
from rapidfuzz.process import cpdist

from entity_resolution.internals.distinct import distinct_rows, first_rows
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


class PairComparer:
    """The spec's comparisons over one signature table, for any number of pair batches.

    Each compared column is coded once (a row's code is its value's place among the column's
    distinct values, which the comparer keeps; -1 when missing), so a batch needs no strings per pair: a pair with a missing side is NULL_LEVEL
    without being looked at, and a comparison is computed once per distinct (left value, right
    value) among the rest. Candidate pairs repeat value pairs a lot (signatures sharing a trade
    name differ in another field), and ``levels_of`` is a function of the two values alone, so the
    levels are exactly those of comparing every pair.
    """

    def __init__(self, sig: pl.DataFrame, spec: Spec) -> None:
        self.spec = spec
        # per compared column its distinct values and each row's place among them: the comparer
        # holds no reference to ``sig``, whose columns its caller may drop
        self.values: dict[str, pl.Series] = {}
        self.codes: dict[str, np.ndarray] = {}
        for column in compared_columns(spec):
            rows, place = distinct_rows(sig[column])
            self.values[column] = sig[column].gather(rows)
            self.codes[column] = place.fill_null(-1).cast(pl.Int32).to_numpy()  # -1: missing
        self.empty = {  # a token comparison reads an empty token list as missing too
            c.column: (sig[c.column].list.len().fill_null(0) == 0).to_numpy()
            for c in spec.comparisons
            if c.method == "token_jaccard"
        }

    def save(self, folder: Path) -> None:
        """The coded columns as files in ``folder`` (numpy arrays, uncompressed Arrow IPC) that a
        pool's worker reads once with ``load``: the codes (a row per signature) are mapped into
        memory, one copy in the page cache for every worker, and nothing the size of the signature
        table is pickled per task."""
        folder.mkdir(parents=True, exist_ok=True)
        for number, column in enumerate(compared_columns(self.spec)):
            np.save(folder / f"codes-{number}.npy", self.codes[column])
            self.values[column].to_frame().write_ipc(
                folder / f"values-{number}.arrow", compression="uncompressed"
            )
            if column in self.empty:
                np.save(folder / f"empty-{number}.npy", self.empty[column])

    @classmethod
    def load(cls, folder: Path, spec: Spec) -> PairComparer:
        """The comparer ``save`` wrote to ``folder``: its codes memory-mapped (read only), its
        distinct values read."""
        comparer = cls.__new__(cls)
        comparer.spec = spec
        comparer.values, comparer.codes, comparer.empty = {}, {}, {}
        for number, column in enumerate(compared_columns(spec)):
            comparer.codes[column] = np.load(folder / f"codes-{number}.npy", mmap_mode="r")
            comparer.values[column] = pl.read_ipc(folder / f"values-{number}.arrow").to_series()
            if (folder / f"empty-{number}.npy").exists():
                comparer.empty[column] = np.load(folder / f"empty-{number}.npy", mmap_mode="r")
        return comparer

    def levels(self, pairs: pl.DataFrame) -> np.ndarray:
        """Levels, one column per comparison, for pairs (l, r) of signature rows."""
        if not len(pairs):
            return np.zeros((0, len(self.spec.comparisons)), dtype=np.int8)
        left, right = pairs["l"].to_numpy().astype(np.int64), pairs["r"].to_numpy().astype(np.int64)
        return np.column_stack([self._levels(c, left, right) for c in self.spec.comparisons])

    def _codes_decide(self, comparison: Comparison) -> bool:
        """An exact comparison (without a one-character level) of values whose equality is identity
        (text, integers, dates, booleans): two rows hold equal values exactly when they hold the
        same code, so the codes alone give the level. Floats are left to their values (whether
        0.0 equals -0.0, or NaN itself, is a rule of comparison, not of grouping)."""
        dtype = self.values[comparison.column].dtype
        return (
            comparison.method == "exact"
            and not comparison.one_char_level
            and (dtype == pl.String or dtype.is_integer() or dtype.is_temporal() or dtype == pl.Boolean)
        )

    def _levels(self, comparison: Comparison, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        codes = self.codes[comparison.column]
        code_l, code_r = codes[left], codes[right]
        present = (code_l >= 0) & (code_r >= 0)
        empty = self.empty.get(comparison.column)
        if empty is not None:
            present &= ~empty[left] & ~empty[right]
        level = np.full(len(left), NULL_LEVEL, dtype=np.int8)
        at = np.flatnonzero(present)
        if len(at) == 0:
            return level
        if self._codes_decide(comparison):  # equal values are equal codes: no value is looked at
            same = code_l[at] == code_r[at]
            level[at] = np.where(same, comparison.levels - 1, 0)
            return level
        # one representative pair per distinct (left code, right code), in order of first occurrence
        key = code_l[at].astype(np.int64) * len(self.values[comparison.column]) + code_r[at]
        first = first_rows(pl.Series(key))
        is_first = first == np.arange(len(at))
        representative = at[is_first]
        slot = np.cumsum(is_first) - 1  # a representative's place among the representatives
        values = self.values[comparison.column]
        distinct = levels_of(
            comparison, values.gather(code_l[representative]), values.gather(code_r[representative])
        )
        level[at] = distinct[slot[first]]
        return level


def compare_pairs(sig: pl.DataFrame, pairs: pl.DataFrame, spec: Spec) -> np.ndarray:
    """Levels, one column per comparison, for pairs (l, r) of signature rows (one batch: a caller
    with many batches over one table keeps a ``PairComparer``)."""
    return PairComparer(sig, spec).levels(pairs)


def pattern_radix(spec: Spec) -> np.ndarray:
    """Per comparison its place value in a pair's pattern (``encode_patterns``)."""
    sizes = np.array([c.levels + 1 for c in spec.comparisons], dtype=np.int64)
    if float(np.prod(sizes.astype(float))) >= 2**62:
        raise ValueError(f"spec {spec.source}: too many comparison levels to count their patterns")
    return np.concatenate([[1], np.cumprod(sizes)[:-1]])


def encode_patterns(levels: np.ndarray, radix: np.ndarray) -> np.ndarray:
    """Each pair's levels as one integer (its pattern)."""
    code = np.zeros(len(levels), dtype=np.int64)
    for j, place in enumerate(radix.tolist()):  # (an integer matrix product has no fast kernel)
        code += (levels[:, j].astype(np.int64) + 1) * place
    return code


def decode_patterns(patterns: np.ndarray, radix: np.ndarray, spec: Spec) -> np.ndarray:
    """The levels of each pattern (``encode_patterns`` undone)."""
    sizes = np.array([c.levels + 1 for c in spec.comparisons], dtype=np.int64)
    return ((patterns[:, None] // radix[None, :]) % sizes[None, :] - 1).astype(np.int8)


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


def signature_frequencies(sig: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> dict[str, np.ndarray]:
    """Per ``tf_adjust`` column, each signature's term frequency (NaN if unknown), looked up once
    for all the pair shards."""
    return {
        column: sig.select(column).join(table, on=column, how="left", maintain_order="left")["tf"].to_numpy()
        for column, table in tables.items()
    }


def value_frequencies(frequencies: dict[str, np.ndarray], pairs: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per ``tf_adjust`` column, the larger term frequency of the pair's two values (NaN if unknown)."""
    left, right = pairs["l"].to_numpy(), pairs["r"].to_numpy()
    return {column: np.fmax(tf[left], tf[right]) for column, tf in frequencies.items()}
