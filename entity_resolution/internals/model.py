"""The Fellegi-Sunter model: u from random pairs, m from known matches and EM, and the match
probability of a pair from its levels' weights."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from entity_resolution.internals.compare import PairComparer
from entity_resolution.spec import Spec


def frequencies(levels: np.ndarray, spec: Spec, smoothing: float = 1.0) -> list[np.ndarray]:
    """Per comparison, the share of pairs on each level (index 0 = null level, then 0..n)."""
    out = []
    for j, comparison in enumerate(spec.comparisons):
        counts = np.bincount(levels[:, j].astype(np.int64) + 1, minlength=comparison.levels + 1).astype(float)
        counts[1:] += smoothing  # never a zero probability for a real level
        counts[0] += smoothing
        out.append(counts / counts.sum())
    return out


def weights(levels: np.ndarray, m: list[np.ndarray], u: list[np.ndarray]) -> np.ndarray:
    total = np.zeros(len(levels))
    for j in range(levels.shape[1]):
        index = levels[:, j].astype(np.int64) + 1
        w = np.log2(m[j] / u[j])
        w[0] = 0.0  # a missing value is no evidence either way
        total += w[index]
    return total


def tf_adjustment(
    levels: np.ndarray, u: list[np.ndarray], spec: Spec, frequencies_of: dict[str, np.ndarray]
) -> np.ndarray:
    """Extra weight per pair for ``tf_adjust`` comparisons agreeing at the top level: the u of the
    pair's own value is its frequency, so the weight is log2(m / tf) instead of log2(m / u) (Splink's
    term-frequency adjustment; a trade name shared by many firms counts for less)."""
    total = np.zeros(len(levels))
    for j, comparison in enumerate(spec.comparisons):
        tf = frequencies_of.get(comparison.column)
        if not comparison.tf_adjust or tf is None:
            continue
        top = comparison.levels - 1
        u_top = u[j][top + 1]
        at_top = (levels[:, j] == top) & ~np.isnan(tf)
        total += np.where(at_top, np.log2(u_top / np.where(at_top, tf, u_top)), 0.0)
    return total


def probability(weights: np.ndarray, prior: float) -> np.ndarray:
    odds = weights + math.log2(prior / (1 - prior))
    return 1.0 / (1.0 + np.exp2(-np.clip(odds, -60, 60)))


def sampled(
    sig: pl.DataFrame, spec: Spec, seed: int, comparer: PairComparer
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(m before EM, u): u from random signature pairs, m from known matches (two signatures of one
    node) for ``m_from_known_matches`` and a guess for the rest. Needs no candidate pair, so the
    engine computes it while the shards are compared."""
    n = sig.height
    rng = np.random.default_rng(seed)
    random_pairs = pl.DataFrame(
        {"l": rng.integers(0, n, spec.u_sample_pairs), "r": rng.integers(0, n, spec.u_sample_pairs)}
    ).filter(pl.col("l") != pl.col("r"))
    u = frequencies(comparer.levels(random_pairs), spec)
    # scale hook: nodes in a fixed order, so the known matches sampled never change between runs
    members = sig.group_by("node", maintain_order=True).agg("sig").filter(pl.col("sig").list.len() > 1)
    known = (
        members.with_columns(pl.col("sig").list.sample(2, seed=seed).alias("pair"))
        .select(pl.col("pair").list.get(0).alias("l"), pl.col("pair").list.get(1).alias("r"))
        .head(spec.m_sample_pairs)
    )
    known_levels = comparer.levels(known)
    m = (
        frequencies(known_levels, spec)
        if len(known_levels)
        else [np.full(c.levels + 1, 1 / (c.levels + 1)) for c in spec.comparisons]
    )
    for j, comparison in enumerate(spec.comparisons):  # m of unsupervised comparisons: start from a guess
        if comparison.name not in spec.m_from_known_matches:
            guess = np.linspace(0.05, 1.0, comparison.levels) ** 3
            m[j] = np.concatenate([[m[j][0]], guess / guess.sum() * (1 - m[j][0])])
    return m, u


def estimate(
    sig: pl.DataFrame,
    levels: np.ndarray,
    spec: Spec,
    seed: int,
    counts: np.ndarray | None = None,
    comparer: PairComparer | None = None,
    start: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(m, u, lambda): ``sampled``'s m and u, then EM over the candidates' ``levels`` for the m
    not learnt from known matches; lambda is the prior of a match among all pairs.

    ``counts``: ``levels`` are distinct level patterns of the candidates and ``counts`` how many
    candidates have each (EM needs no row per candidate pair). ``comparer``: the one the candidates
    were compared with (its columns are coded already), else one is made for ``sig``. ``start``:
    ``sampled``'s result, when computed already."""
    m, u = start or sampled(sig, spec, seed, comparer or PairComparer(sig, spec))
    m = list(m)  # (EM replaces the m it learns, never changes start's arrays)
    counts = np.ones(len(levels)) if counts is None else np.asarray(counts, dtype=float)
    n = sig.height
    # EM over the candidates: a match class (m, fixed where known matches taught it) and a non-match
    # class of its own (blocked non-matches agree on their blocking keys far more often than random
    # pairs do); lambda is the share of matches among the candidates
    prior = 0.1
    fixed = [c.name in spec.m_from_known_matches for c in spec.comparisons]
    u_blocked = [values.copy() for values in u]
    for _ in range(spec.em_iterations if len(levels) else 0):
        p = probability(weights(levels, m, u_blocked), prior)
        prior = float(np.clip(np.average(p, weights=counts), 1e-6, 1 - 1e-6))
        for j, comparison in enumerate(spec.comparisons):
            index = levels[:, j].astype(np.int64) + 1
            mass = np.bincount(index, weights=(1 - p) * counts, minlength=comparison.levels + 1) + 0.5
            u_blocked[j] = mass / mass.sum()
            if fixed[j]:
                continue
            mass = np.bincount(index, weights=p * counts, minlength=comparison.levels + 1) + 0.5
            m[j] = mass / mass.sum()
    # the prior for scoring with random-pair u: the expected matches among all pairs
    if spec.link_only:
        sizes = sig.group_by(spec.source_column).len()["len"].to_list()
        all_pairs = float(np.prod(sizes)) if len(sizes) == 2 else n * (n - 1) / 2
    else:
        all_pairs = n * (n - 1) / 2
    prior = float(np.clip(prior * counts.sum() / max(all_pairs, 1.0), 1e-12, 1 - 1e-6))
    return m, u, prior
