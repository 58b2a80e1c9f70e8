"""The engine's per-shard work (steps 3-5): a shard's candidate pairs compared, then scored, as
plain functions of files that a pool's worker runs (``internals.pool.process_pool``) or the
preparing process itself, with the same result. What every shard reads (the comparer's coded
columns, the per-signature arrays) is in files the workers map into memory, read once per worker:
a task carries paths and the model's few numbers, never a table per signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from entity_resolution.internals.blocking import ShardTask, shard_pairs_of
from entity_resolution.internals.cluster import cross_input_pairs
from entity_resolution.internals.compare import (
    PairComparer,
    encode_patterns,
    pattern_radix,
    value_frequencies,
)
from entity_resolution.internals.model import probability, tf_adjustment
from entity_resolution.spec import Spec

#: a worker's comparer per folder (``PairComparer.save``): loaded by its first task. A pool lives for
#: one preparation, so a folder always holds the comparer the worker first read from it
_COMPARERS: dict[Path, PairComparer] = {}


def pairs_file(folder: Path, task: ShardTask) -> Path:
    """Where ``compare_shard`` writes task ``task``'s compared pairs (renamed into the shard's
    place once the shards left empty are known)."""
    return folder / f"pairs-{task.number:05d}.parquet"


def compare_shard(
    task: ShardTask, spec: Spec, folder: Path, comparer: PairComparer | Path
) -> tuple[Path, int, pl.DataFrame] | None:
    """A shard's candidate pairs (``shard_pairs_of``) and each one's level pattern, written to
    ``pairs_file(folder, task)``; returns the file, how many pairs it holds and how many have each
    pattern (EM needs only those), or None when the shard has no pairs (no file). ``comparer``: the one of
    the preparing process, or the folder it was saved to (a worker's)."""
    pairs = shard_pairs_of(task)
    if not pairs.height:
        return None
    if spec.link_only:  # accuracy hook: only pairs across the two inputs
        source = pl.DataFrame({"source": np.load(task.folder / "source.npy")})
        pairs = cross_input_pairs(source, pairs, "source")
    if isinstance(comparer, Path):
        if comparer not in _COMPARERS:
            _COMPARERS[comparer] = PairComparer.load(comparer, spec)
        comparer = _COMPARERS[comparer]
    code = encode_patterns(comparer.levels(pairs), pattern_radix(spec))
    path = pairs_file(folder, task)
    pairs.with_columns(pl.Series("pattern", code)).write_parquet(path, compression="lz4")
    return path, pairs.height, pl.DataFrame({"pattern": code}).group_by("pattern").len()


@dataclass(frozen=True)
class ShardScoring:
    """What scoring a shard takes of the model: its distinct patterns (sorted), their levels and
    weights, u and the prior (a few numbers per pattern), and per ``tf_adjust`` column the file of
    each signature's term frequency (``signature_frequencies``, saved as .npy)."""

    patterns: np.ndarray
    levels: np.ndarray
    weights: np.ndarray
    u: list[np.ndarray]
    prior: float
    frequencies: dict[str, Path]


def score_shard(path: Path, scoring: ShardScoring, spec: Spec) -> pl.DataFrame:
    """Every pair's match probability, written back into its shard beside its pattern; returns the
    shard's pairs at or above the review threshold."""
    shard = pl.read_parquet(path)
    index = np.searchsorted(scoring.patterns, shard["pattern"].to_numpy())
    levels = scoring.levels[index]
    frequencies = {column: np.load(file, mmap_mode="r") for column, file in scoring.frequencies.items()}
    adjustment = tf_adjustment(levels, scoring.u, spec, value_frequencies(frequencies, shard))
    p = probability(scoring.weights[index] + adjustment, scoring.prior) if len(index) else np.zeros(0)
    shard = shard.with_columns(pl.Series("probability", p))
    shard.write_parquet(path, compression="lz4")
    return shard.filter(pl.col("probability") >= spec.review_threshold)
