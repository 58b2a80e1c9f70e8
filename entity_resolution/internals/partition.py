"""Partitions: the unit of clustering, grading and (later) of work mapped over workers.

After scoring, two signatures can only end in one entity when a chain of exact keys, pairs at or
above the link threshold or steward / registry decisions joins them (average linkage, too, only
joins components with some pair above the threshold between them). The connected components of
that graph are therefore independent; they are packed, in order of their smallest signature, into
partitions of about ``partition_signatures`` signatures (a larger component is a partition of its
own). Each partition is a directory of plain files, resolved by ``resolve_partition_files`` alone:

- ``signatures.parquet``: its signatures (``sig``, ``node``, ``first_record``, the constraint and
  compared fields, ``anchor``);
- ``scored.parquet``: every scored candidate pair inside it (``l``, ``r``, ``probability``);
- ``decisions.parquet``: steward and registry decisions inside it (``kind``, ``l``, ``r``, ``order``);
- output ``links.parquet``: per signature its ``cluster`` (the smallest signature of its entity),
  ``cluster_value``, ``cluster_first_record``, ``match_confidence``, ``match_grade``, ``match_rule``;
  and ``counts.json``: its linked pairs and pairs refused by the constraints.

The result never depends on how components are packed: a component is resolved the same way in any
partition, and every order inside one is global (pairs by probability, then signature numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from entity_resolution.internals.blocking import components_by_smallest, labels_with_several_values
from entity_resolution.internals.cluster import Clusters, cluster, undecided_units
from entity_resolution.internals.compare import NULL_LEVEL, compare_pairs
from entity_resolution.spec import Spec

# how each record came to its entity (links' ``match_rule``)
MATCH_RULES = ("exact_key", "probabilistic", "decision", "identical", "undecided")
#: beside a partition's ``links.parquet``: its linked and refused pair counts
COUNTS_FILE = "counts.json"


@dataclass(frozen=True)
class Scale:
    """How the work is cut (spec ``[scale]``): never changes the result, only memory and time."""

    normalise_records: int = 1_000_000  # records normalised at a time
    shard_pairs: int = 5_000_000  # candidate pairs compared at a time
    partition_signatures: int = 1_000_000  # signatures clustered and graded at a time
    partition_workers: int = 1  # partitions resolved at once, each in a process of its own
    normalise_workers: int = 1  # chunks of records normalised at once, each in a process of its own
    compare_workers: int = 1  # pair shards compared (and scored) at once, each in a process of its own

    @classmethod
    def of(cls, spec: Spec) -> Scale:
        settings = getattr(spec, "scale", None) or {}
        unknown = set(settings) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"spec {spec.source}: [scale] has unknown settings {sorted(unknown)}")
        values = {k: int(v) for k, v in settings.items()}
        if any(v < 1 for v in values.values()):
            raise ValueError(f"spec {spec.source}: [scale] settings must be at least 1")
        return cls(**values)


def pack(component: np.ndarray, limit: int) -> np.ndarray:
    """Per signature its partition: components (labelled by their smallest signature) in order,
    packed into partitions of about ``limit`` signatures; a larger component stays whole."""
    labels, sizes = np.unique(component, return_counts=True)
    boundary = np.concatenate([[0], np.cumsum(sizes)[:-1]]) // max(limit, 1)
    # a component starting in a partition stays in it: renumber the partitions densely
    _, part_of_label = np.unique(boundary, return_inverse=True)
    return part_of_label[np.searchsorted(labels, component)]


def grades(frame: pl.DataFrame, cluster_row: np.ndarray, spec: Spec) -> pl.Series:
    """Per signature (a row of ``frame``) its match grade against its entity's representative (the
    row ``cluster_row``: the entity's smallest signature holding its code, else its smallest): one
    letter per comparison, A same (top level), B similar (a level in between), F different
    (level 0), Z missing on either side."""
    pairs = pl.DataFrame({"l": np.arange(frame.height), "r": cluster_row})
    levels = pl.DataFrame(compare_pairs(frame, pairs, spec), schema=[c.name for c in spec.comparisons])
    letters = [
        pl.when(pl.col(c.name) == NULL_LEVEL)
        .then(pl.lit("Z"))
        .when(pl.col(c.name) == c.levels - 1)
        .then(pl.lit("A"))
        .when(pl.col(c.name) == 0)
        .then(pl.lit("F"))
        .otherwise(pl.lit("B"))
        for c in spec.comparisons
    ]
    return levels.select(pl.concat_str(letters).alias("match_grade")).to_series()


def resolve_partition(
    sig: pl.DataFrame, scored: pl.DataFrame, decisions: pl.DataFrame, spec: Spec
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Cluster, grade and rate one partition (see the module docstring for the frames); returns the
    per-signature result and counts of linked / refused pairs."""
    sig = sig.sort("sig")
    n = sig.height
    global_ids = sig["sig"].to_numpy()

    def local(values: pl.Series) -> np.ndarray:
        return np.searchsorted(global_ids, values.to_numpy()).astype(np.int64)

    node = local(sig["node"])
    decisions = decisions.sort("order")
    forced_rows = decisions.filter(pl.col("kind") == "must")
    forbidden_rows = decisions.filter(pl.col("kind") == "cannot")
    # the pairs on the partition's rows, looked up once (rows keep the signatures' order)
    scored = scored.with_columns(pl.Series("l", local(scored["l"])), pl.Series("r", local(scored["r"])))
    linked = scored.filter(pl.col("probability") >= spec.link_threshold).sort(
        ["probability", "l", "r"], descending=[True, False, False]
    )
    left, right = linked["l"].to_numpy(), linked["r"].to_numpy()
    forced_l, forced_r = local(forced_rows["l"]), local(forced_rows["r"])
    # only signatures a linked pair reaches through exact keys and forced links can end in an
    # entity other than their forced group: the union-find (a Python object per signature) runs
    # over them alone; every other group is settled at once (``_settled_groups``)
    group, settled = _settled_groups(
        sig, node, np.unique(node[np.concatenate([left, right])]), forced_l, forced_r, spec
    )
    active = np.flatnonzero(~settled)
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[active] = np.arange(len(active))

    def active_rows(values: pl.Series) -> np.ndarray:
        return row_of[local(values)]

    bad = spec.cannot_link_on
    active_sig = sig[active]
    value_of = (
        {i: v for i, v in enumerate(active_sig[bad].to_list()) if v is not None}
        if bad and bad in sig.columns
        else {}
    )
    branch_of: dict[int, Any] = {}
    for column in spec.cannot_link_unless_equal:
        if column in sig.columns:
            branch_of = dict(enumerate(active_sig[column].to_list()))
    clusters = Clusters(len(active), value_of, branch_of)
    clusters.join_nodes(row_of[node[active]])
    # (a forced link inside a settled group is settled with it)
    forced = [
        (a, b)
        for a, b in zip(row_of[forced_l].tolist(), row_of[forced_r].tolist(), strict=True)
        if a >= 0 and b >= 0
    ]
    forbidden_l, forbidden_r = active_rows(forbidden_rows["l"]), active_rows(forbidden_rows["r"])
    forbidden = {
        frozenset(pair)
        for pair in zip(forbidden_l.tolist(), forbidden_r.tolist(), strict=True)
        if min(pair) >= 0  # both sides can join something
    }
    anchor_of = (
        {i: a for i, a in enumerate(active_sig["anchor"].to_list()) if a is not None}
        if "anchor" in sig.columns
        else {}
    )
    clusters.start_linking(forbidden, anchor_of)
    for a, b in forced:
        clusters.join(a, b, force=True)

    def on_rows(pairs: pl.DataFrame) -> pl.DataFrame:
        """The pairs between active signatures, on their rows (a pair inside a settled group joins
        nothing: both its signatures are in one entity already)."""
        return pairs.with_columns(
            pl.Series("l", row_of[pairs["l"].to_numpy()]), pl.Series("r", row_of[pairs["r"].to_numpy()])
        ).filter((pl.col("l") >= 0) & (pl.col("r") >= 0))

    # accuracy hook: average linkage (or one-to-one) over the partition's active signatures
    joined = np.array(cluster(clusters, on_rows(scored), on_rows(linked), spec), dtype=bool)
    # the smallest row (signature) of each cluster; a settled group's: the smallest of the group
    smallest_in_group = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest_in_group, group, np.arange(n))
    cluster_row = smallest_in_group[group]
    if len(active):
        roots = clusters.roots()
        smallest = np.full(len(active), n, dtype=np.int64)
        np.minimum.at(smallest, roots, active)
        cluster_row[active] = smallest[roots]
    # a unit that matches another entity about as well as its own is left on its own (undecided)
    fixed = np.zeros(n, dtype=bool)
    if bad and bad in sig.columns:
        fixed |= sig[bad].is_not_null().to_numpy()
    if "anchor" in sig.columns:
        fixed |= sig["anchor"].is_not_null().to_numpy()
    fixed[local(pl.concat([forced_rows["l"], forced_rows["r"]]))] = True
    fixed = np.bincount(node, weights=fixed, minlength=n)[node] > 0  # per unit: any of its signatures
    value = np.full(n, -1, dtype=np.int64)  # each signature's entity's constraint value
    if bad and bad in sig.columns:
        code = sig[bad].rank("dense").fill_null(0).cast(pl.Int64).to_numpy() - 1
        np.maximum.at(value, cluster_row, code)
        value = value[cluster_row]
    alone = (
        undecided_units(
            node,
            cluster_row,
            scored,
            spec.link_threshold,
            fixed,
            value,
        )
        if not spec.link_only
        else np.full(n, np.nan)
    )
    undecided = ~np.isnan(alone)
    if undecided.any():
        label = np.where(undecided, n + node, cluster_row)
        smallest = np.full(2 * n, n, dtype=np.int64)
        np.minimum.at(smallest, label, np.arange(n))
        cluster_row = smallest[label]
    accepted = cluster_row[left] == cluster_row[right]

    # confidence: 1 for exact keys and lone signatures; else the strongest accepted pair touching it
    strongest = np.full(n, np.nan)
    if len(accepted) and accepted.any():
        probability = linked["probability"].to_numpy()[accepted]
        np.fmax.at(strongest, left[accepted], probability)
        np.fmax.at(strongest, right[accepted], probability)
    node_size = np.bincount(node, minlength=n)[node]
    cluster_size = np.bincount(cluster_row, minlength=n)[cluster_row]
    by_key = node_size > 1
    confidence = np.where(undecided, alone, np.where(by_key | np.isnan(strongest), 1.0, strongest)).round(4)
    rule = np.where(
        undecided,
        "undecided",
        np.where(
            by_key,
            "exact_key",
            np.where(
                ~np.isnan(strongest), "probabilistic", np.where(cluster_size > 1, "decision", "identical")
            ),
        ),
    )
    # the representative: the entity's smallest signature holding its code, else its smallest
    representative = cluster_row.copy()
    if bad and bad in sig.columns:
        coded = np.flatnonzero(sig[bad].is_not_null().to_numpy())
        first_coded = np.full(n, n, dtype=np.int64)
        np.minimum.at(first_coded, cluster_row[coded], coded)
        representative = np.where(first_coded[cluster_row] < n, first_coded[cluster_row], cluster_row)
    out = pl.DataFrame(
        {
            "sig": global_ids,
            "cluster": global_ids[cluster_row],
            "match_confidence": confidence,
            "match_grade": grades(sig, representative, spec),
            "match_rule": pl.Series(rule, dtype=pl.String),
            "_value": sig[bad] if bad and bad in sig.columns else pl.Series([None] * n, dtype=pl.String),
            "_first": sig["first_record"],
        }
    )
    out = out.with_columns(
        pl.col("_value").drop_nulls().first().over("cluster").alias("cluster_value"),
        pl.col("_first").min().over("cluster").alias("cluster_first_record"),
    ).drop("_value", "_first")
    return out, {"linked_pairs": int(accepted.sum()), "refused_by_constraints": int((~joined).sum())}


def _settled_groups(
    sig: pl.DataFrame,
    node: np.ndarray,
    touched: np.ndarray,
    forced_l: np.ndarray,
    forced_r: np.ndarray,
    spec: Spec,
) -> tuple[np.ndarray, np.ndarray]:
    """(per signature its forced group, labelled by its smallest row; whether that group is
    settled). A group is the signatures that exact keys and forced links (a steward's must-links,
    one anchored entity's signatures on an incremental night) join. It is settled, one entity
    whatever the union-find would do, when no linked pair reaches it (``touched``: the nodes a
    linked pair touches) and it holds at most one ``cannot_link_on`` value and one anchor: every
    forced join in it then succeeds, in any order, and nothing else can join it. On a night that
    is most of the known firms' representatives, which each anchor's forced links used to walk
    through one Python object per signature."""
    n = len(node)
    if len(forced_l) == 0:  # (a full run, mostly) each group is a node: joined whatever it holds
        return node, ~np.isin(node, touched)
    group = components_by_smallest(
        n, np.concatenate([node, forced_l]), np.concatenate([np.arange(n), forced_r])
    )
    unsettled = np.zeros(n, dtype=bool)  # per group label
    unsettled[group[np.isin(node, touched)]] = True
    for column in (spec.cannot_link_on, "anchor"):
        if column and column in sig.columns:
            unsettled[labels_with_several_values(group, sig[column])] = True
    return group, ~unsettled[group]


def resolve_partition_files(directory: Path, spec: Spec) -> dict[str, int]:
    """``resolve_partition`` over a partition directory: reads its three inputs and writes
    ``links.parquet`` beside them (atomically); a plain function of paths, as a worker runs it."""
    from foundation.lake import write_json, write_parquet

    directory = Path(directory)
    out, counts = resolve_partition(
        pl.read_parquet(directory / "signatures.parquet"),
        pl.read_parquet(directory / "scored.parquet"),
        pl.read_parquet(directory / "decisions.parquet"),
        spec,
    )
    write_json(counts, directory / COUNTS_FILE)  # before the links: their presence says both are there
    write_parquet(out, directory / "links.parquet")
    return counts
