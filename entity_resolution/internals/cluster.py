"""Constrained clustering: a union-find over signatures that refuses joins the spec forbids.

Two components never join when they hold different ``cannot_link_on`` values (two valid USCCs),
different ``cannot_link_unless_equal`` values (two branches), a steward's cannot-link, or two
different registry anchors (an incremental run with fixed entities) — also through chains.

Above the exact keys, components join by average linkage (a record joins a cluster only when its
pairs with the cluster's members match well enough on average), or, in link-only mode, one-to-one.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import polars as pl

from entity_resolution.spec import Spec


class Clusters:
    """Union-find over ``n`` signatures carrying each component's constraint values."""

    def __init__(
        self,
        n: int,
        value_of: dict[int, str] | None = None,
        branch_of: dict[int, Any] | None = None,
    ) -> None:
        self.parent = list(range(n))
        self.component_value: dict[int, str | None] = dict(value_of or {})
        self.branch_of = branch_of or {}
        self.component_branch: dict[int, Any] = {}
        self.separated: dict[int, set[int]] = {}  # root -> roots it must never join
        self.component_anchor: dict[int, str] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def roots(self) -> np.ndarray:
        """Each member's root, by pointer jumping over the whole parent array at once (numpy, not a
        ``find`` per member); every path is then compressed, which changes no root."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while len(parent):
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        self.parent = parent.tolist()
        return parent

    def join_exact(self, a: int, b: int) -> None:
        """Signatures sharing an exact key, unless their components hold two different values."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        va, vb = self.component_value.get(ra), self.component_value.get(rb)
        if va and vb and va != vb:  # an org code shared by two different USCCs: keep them apart
            return
        self.parent[rb] = ra
        self.component_value[ra] = va or vb

    def join_nodes(self, heads: np.ndarray) -> None:
        """Each member joined to its node's head (``heads``: per member, its node's smallest member),
        as ``join_exact`` one by one would, at once: a node holds at most one ``cannot_link_on``
        value (``blocking.exact_nodes`` keeps two apart), so no join among its members is refused."""
        self.parent = heads.tolist()
        for member, value in list(self.component_value.items()):
            self.component_value[self.parent[member]] = value

    def start_linking(self, forbidden: set[frozenset[int]], anchor_of: dict[int, str]) -> None:
        """After the exact keys: the branch of each component, steward cannot-links and anchors."""
        if self.branch_of:  # (a component's branch: its last member's, in member order)
            branches = map(self.branch_of.get, range(len(self.parent)))
            self.component_branch = dict(zip(self.roots().tolist(), branches, strict=True))
        for pair in forbidden:
            a, b = tuple(pair)
            self.separated.setdefault(self.find(a), set()).add(self.find(b))
            self.separated.setdefault(self.find(b), set()).add(self.find(a))
        self.component_anchor = {self.find(i): a for i, a in anchor_of.items()}

    def join(self, a: int, b: int, force: bool = False) -> bool:
        """Join the components of ``a`` and ``b`` unless a constraint forbids it (``force``: a
        steward's must-link or one anchored entity, which only anchors and two different
        ``cannot_link_on`` values can refuse: two valid USCCs are two firms whatever joins them)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        va, vb = self.component_value.get(ra), self.component_value.get(rb)
        if va and vb and va != vb:
            return False
        if not force:
            if self.branch_of and self.component_branch.get(ra) != self.component_branch.get(rb):
                return False
            if rb in self.separated.get(ra, set()):
                return False
        if self.component_anchor:
            aa, ab = self.component_anchor.get(ra), self.component_anchor.get(rb)
            if aa and ab and aa != ab:
                return False
            self.component_anchor[ra] = aa or ab
        self.parent[rb] = ra
        self.component_value[ra] = va or vb
        if self.branch_of:
            self.component_branch[ra] = self.component_branch.get(ra)
        self.separated.setdefault(ra, set()).update(self.find(x) for x in self.separated.pop(rb, set()))
        for other in self.separated.get(ra, set()):
            self.separated.setdefault(other, set()).add(ra)
        return True


def average_linkage(clusters: Clusters, scored: pl.DataFrame, threshold: float) -> None:
    """Join clusters while some two of them match well enough, best first.

    Units are the components after the exact keys (a firm known by its code is one unit; a unit's
    link to another is its best pair). Two clusters match well enough when the mean link over all
    their unit pairs is at least ``threshold`` (not one strong link), or, for one record joining a
    firm known by its code, when its link to that coded unit (the cluster's representative) is.
    A chain A-B-C whose A-C link is weak stays apart, where single linkage would collapse it. Ties
    go by component number (deterministic); a join a constraint refuses is dropped. ``scored``
    holds all scored pairs (``l``, ``r`` index the clusters' rows, ``probability``) of one
    partition: nothing else is needed.
    """
    roots = clusters.roots()
    if scored.height == 0:
        return
    edges = (
        pl.DataFrame(
            {
                "a": roots[scored["l"].to_numpy()],
                "b": roots[scored["r"].to_numpy()],
                "p": scored["probability"].to_numpy(),
            }
        )
        .filter(pl.col("a") != pl.col("b"))
        .select(pl.min_horizontal("a", "b").alias("a"), pl.max_horizontal("a", "b").alias("b"), "p")
        .group_by("a", "b")
        .agg(pl.col("p").max())
        .sort("a", "b")
    )
    unit_link = {(a, b): p for a, b, p in edges.iter_rows()}
    units = sorted({*edges["a"].to_list(), *edges["b"].to_list()})
    coded = {unit: unit for unit in units if clusters.component_value.get(unit)}  # cluster -> its coded unit
    size: dict[int, int] = {}  # units per cluster (1 when absent)

    def score(x: int, y: int, total: float, count: int) -> float:
        best = total / count
        for firm, record in ((x, y), (y, x)):
            if firm in coded and size.get(record, 1) == 1:
                rep = coded[firm]
                best = max(best, unit_link.get((min(rep, record), max(rep, record)), 0.0))
        return best

    # the links between two clusters: [sum, count], one list shared by both sides
    between: dict[int, dict[int, list[float]]] = {}
    for (a, b), p in unit_link.items():
        stats = [p, 1]
        between.setdefault(a, {})[b] = stats
        between.setdefault(b, {})[a] = stats
    # the candidates, best first: the unit links at or above the threshold sorted once (numpy),
    # merged with a heap of the scores recomputed after joins; popping the smaller of the two heads
    # is popping one heap holding both (ties between equal entries do not matter)
    strong = edges.filter(pl.col("p") >= threshold).sort(
        pl.col("p").neg(), "a", "b", maintain_order=True
    )  # (the order of the tuples (-p, a, b))
    initial = list(zip((-strong["p"]).to_list(), strong["a"].to_list(), strong["b"].to_list(), strict=True))
    del strong
    heap: list[tuple[float, int, int]] = []
    at = 0
    while at < len(initial) or heap:
        if heap and (at == len(initial) or heap[0] < initial[at]):
            negative, a, b = heapq.heappop(heap)
        else:
            negative, a, b = initial[at]
            at += 1
        stats = between.get(a, {}).get(b)
        if stats is None or clusters.find(a) != a or clusters.find(b) != b:
            continue
        if score(a, b, *stats) != -negative:
            continue  # a stale entry: the clusters grew since
        if not clusters.join(a, b):
            del between[a][b], between[b][a]
            continue
        kept = clusters.find(a)
        gone = b if kept == a else a
        size[kept] = size.get(kept, 1) + size.pop(gone, 1)
        if gone in coded:
            coded[kept] = coded.pop(gone)
        kept_links = between.setdefault(kept, {})
        kept_links.pop(gone, None)
        for other, (total, count) in between.pop(gone, {}).items():
            if other == kept:
                continue
            del between[other][gone]
            merged = kept_links.get(other)
            if merged is None:
                merged = kept_links[other] = between[other][kept] = [0.0, 0]
            merged[0] += total
            merged[1] += count
        for other, (total, count) in kept_links.items():
            value = score(kept, other, total, count)
            if value >= threshold:
                heapq.heappush(heap, (-value, min(kept, other), max(kept, other)))


def one_to_one(clusters: Clusters, linked: pl.DataFrame) -> None:
    """Link-only: the strongest pairs first (``linked`` is sorted), each component taking at most
    one partner from the other input."""
    partnered: set[int] = set()
    for a, b in zip(linked["l"].to_list(), linked["r"].to_list(), strict=True):
        ra, rb = clusters.find(a), clusters.find(b)
        if ra == rb or ra in partnered or rb in partnered:
            continue
        if clusters.join(a, b):
            partnered.add(clusters.find(a))


def cross_input_pairs(sig: pl.DataFrame, candidates: pl.DataFrame, source_column: str) -> pl.DataFrame:
    """Link-only: candidate pairs whose two signatures come from different inputs."""
    source = sig[source_column].to_numpy()
    left, right = source[candidates["l"].to_numpy()], source[candidates["r"].to_numpy()]
    return candidates.filter(pl.Series(left != right))


def cluster(clusters: Clusters, scored: pl.DataFrame, linked: pl.DataFrame, spec: Spec) -> list[bool]:
    """Join the components after the exact keys and forced links; per pair of ``linked`` (the pairs
    at or above the link threshold), whether it ended inside one entity."""
    if spec.link_only:
        one_to_one(clusters, linked)
    else:
        average_linkage(clusters, scored, spec.link_threshold)
    roots = clusters.roots()
    if linked.height == 0:
        return []
    return (roots[linked["l"].to_numpy()] == roots[linked["r"].to_numpy()]).tolist()


def undecided_units(
    unit: np.ndarray,
    entity: np.ndarray,
    scored: pl.DataFrame,
    threshold: float,
    fixed: np.ndarray,
    value: np.ndarray,
) -> np.ndarray:
    """Per signature, NaN when its unit (its exact-key node) is decided, else the chance that the
    unit is an entity of its own: a unit that joined an entity but matches another entity that
    cannot be the same (another ``cannot_link_on`` value: another valid USCC) about as well, so that
    it is not at least ``threshold`` likely to be its entity's rather than the other's (a rival
    entity is one it has a pair at or above ``threshold`` with, so the partition holds both).

    A unit belongs to at most one of them: with p_E the mean match probability of its pairs with
    entity E's signatures (average linkage's measure) and o_E = p_E / (1 - p_E), the chance that it
    is its own entity C's is o_C / (1 + o_C + sum of the others' o_E). For its own entity, p_C is
    its best pair with C's coded unit when that is higher, as average linkage joined it: C's
    code-less records dilute the mean without saying anything against it (a monthly contribution
    repeating the firm's figures matches the coded ones, not the firm's loans). Not for a rival: the
    pairs kept are those above the review threshold, so a rival's best pair is often one with a
    record that states little (no region), its contradicting pairs being absent. A record with a trade name
    that two firms in different cities carry, and no code, region or anything else to tell them
    apart, matches both equally: it is left on its own (for review), not guessed. ``unit`` and
    ``entity`` give each signature's smallest signature of its node and of its entity; ``scored``
    holds the partition's scored pairs (``l``, ``r`` as signature rows, ``probability``); ``fixed``
    marks units that never move (a valid code, a decision); ``value`` is each signature's entity's
    constraint value as an integer (-1: none). A pair with an undecided unit is no evidence for
    that unit's entity: a second round leaves out the first round's undecided units (one round more
    could undo the other's choices back and forth)."""
    n = len(unit)
    out = np.full(n, np.nan)
    if scored.height == 0 or n == 0:
        return out
    left, right = scored["l"].to_numpy(), scored["r"].to_numpy()
    p = scored["probability"].to_numpy()
    both = pl.DataFrame(
        {
            "unit": np.concatenate([unit[left], unit[right]]),
            "other": np.concatenate([unit[right], unit[left]]),
            "entity": np.concatenate([entity[right], entity[left]]),
            "p": np.tile(p, 2),
            # the other side holds its entity's code: average linkage's coded unit
            "coded": fixed[np.concatenate([unit[right], unit[left]])]
            & (value[np.concatenate([right, left])] >= 0),
        }
    ).filter(pl.col("unit") != pl.col("other"))
    mine, theirs = value[both["unit"].to_numpy()], value[both["entity"].to_numpy()]
    both = both.filter(
        pl.Series(~fixed[both["unit"].to_numpy()])
        & (
            (pl.col("entity") == pl.Series(entity[both["unit"].to_numpy()]))
            | pl.Series((mine >= 0) & (theirs >= 0) & (mine != theirs))
        )
    )
    undecided = pl.DataFrame(schema={"unit": both.schema["unit"], "all": pl.Float64})
    for _ in range(2):  # with all the evidence, then without the first round's undecided units
        best = (
            both.join(undecided.select(pl.col("unit").alias("other")), on="other", how="anti")
            .group_by("unit", "entity")
            .agg(
                pl.col("p").mean(),
                pl.col("p").filter("coded").max().alias("coded"),
                pl.col("p").max().alias("top"),
            )
        )
        best = (
            best.with_columns(pl.Series("own", entity[best["unit"].to_numpy()]))
            .with_columns(
                pl.when(pl.col("entity") == pl.col("own"))
                .then(pl.max_horizontal("p", "coded"))
                .otherwise(pl.col("p"))
                .clip(1e-12, 1 - 1e-12)
                .alias("p")
            )
            .with_columns((pl.col("p") / (1 - pl.col("p"))).alias("odds"))
        )
        # a rival: another entity it has a linked pair with (so one partition holds both)
        rival = (pl.col("entity") != pl.col("own")) & (pl.col("top") >= threshold)
        rated = (
            best.filter((pl.col("entity") == pl.col("own")) | rival)
            .group_by("unit")
            .agg(
                pl.col("odds").filter(pl.col("entity") == pl.col("own")).max().alias("mine"),
                pl.col("odds").sum().alias("all"),
                pl.len().alias("entities"),
            )
        )
        found = (
            rated.filter(
                pl.col("mine").is_not_null()
                & (pl.col("entities") > 1)
                & (pl.col("mine") / (1 + pl.col("all")) < threshold)
            )
            .select("unit", "all")
            .sort("unit")
        )
        undecided = found
    out[undecided["unit"].to_numpy()] = (1 / (1 + undecided["all"])).to_numpy()
    return out[unit]
