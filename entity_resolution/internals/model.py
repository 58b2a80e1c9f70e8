"""The Fellegi-Sunter model: u from random pairs, m from known matches and EM, and the match
probability of a pair from its levels' weights."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from entity_resolution.internals.compare import compare_pairs
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


def probability(weights: np.ndarray, prior: float) -> np.ndarray:
    odds = weights + math.log2(prior / (1 - prior))
    return 1.0 / (1.0 + np.exp2(-np.clip(odds, -60, 60)))


def estimate(
    sig: pl.DataFrame, levels: np.ndarray, spec: Spec, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(m, u, lambda): u from random signature pairs, m from known matches (two signatures of one
    node) for ``m_from_known_matches``, EM over the candidates' ``levels`` for the rest."""
    n = sig.height
    rng = np.random.default_rng(seed)
    random_pairs = pl.DataFrame(
        {"l": rng.integers(0, n, spec.u_sample_pairs), "r": rng.integers(0, n, spec.u_sample_pairs)}
    ).filter(pl.col("l") != pl.col("r"))
    u = frequencies(compare_pairs(sig, random_pairs, spec), spec)
    members = sig.group_by("node").agg("sig").filter(pl.col("sig").list.len() > 1)
    known = (
        members.with_columns(pl.col("sig").list.sample(2, seed=seed).alias("pair"))
        .select(pl.col("pair").list.get(0).alias("l"), pl.col("pair").list.get(1).alias("r"))
        .head(spec.m_sample_pairs)
    )
    known_levels = compare_pairs(sig, known, spec)
    m = (
        frequencies(known_levels, spec)
        if len(known_levels)
        else [np.full(c.levels + 1, 1 / (c.levels + 1)) for c in spec.comparisons]
    )
    for j, comparison in enumerate(spec.comparisons):  # m of unsupervised comparisons: start from a guess
        if comparison.name not in spec.m_from_known_matches:
            guess = np.linspace(0.05, 1.0, comparison.levels) ** 3
            m[j] = np.concatenate([[m[j][0]], guess / guess.sum() * (1 - m[j][0])])
    prior = 0.1
    fixed = [c.name in spec.m_from_known_matches for c in spec.comparisons]
    for _ in range(spec.em_iterations if len(levels) else 0):
        p = probability(weights(levels, m, u), prior)
        prior = float(np.clip(p.mean(), 1e-6, 1 - 1e-6))
        for j, comparison in enumerate(spec.comparisons):
            if fixed[j]:
                continue
            index = levels[:, j].astype(np.int64) + 1
            mass = np.bincount(index, weights=p, minlength=comparison.levels + 1) + 0.5
            m[j] = mass / mass.sum()
    return m, u, prior
