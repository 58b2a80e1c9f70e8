"""Blocking: signatures (identical records compared once), nodes (signatures sharing an exact
key) and candidate pairs between nodes from the spec's united ``[[blocking]]`` rules."""

from __future__ import annotations

import polars as pl

from entity_resolution.internals.cluster import Clusters
from entity_resolution.internals.compare import compared_columns
from entity_resolution.spec import BlockKey, Spec


def key_expr(key: BlockKey) -> pl.Expr:
    expr = pl.col(key.column).cast(pl.String)
    if key.start is None and key.stop is None:
        return expr
    if key.start is not None and key.start < 0:
        return expr.str.slice(key.start)
    return expr.str.slice(key.start or 0, key.stop)


def signature_fields(spec: Spec, columns: list[str]) -> list[str]:
    """Every field that matters to a decision: records equal on all of them are one signature."""
    fields = dict.fromkeys(
        [
            *compared_columns(spec),
            *spec.exact_keys,
            *([spec.cannot_link_on] if spec.cannot_link_on else []),
            *spec.cannot_link_unless_equal,
            *(k.column for rule in spec.blocking for k in rule),
            *([spec.source_column] if spec.link_only else []),  # accuracy hook: inputs never share one
        ]
    )
    return [f for f in fields if f in columns]


def signatures(frame: pl.DataFrame, spec: Spec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(signatures with a ``sig`` number, record id -> ``sig``)."""
    rid = spec.id_column
    fields = signature_fields(spec, frame.columns)
    per_record = frame.select(rid, *fields).with_columns(pl.struct(fields).hash(seed=0).alias("_h"))
    # accuracy2 (determinism): each signature is numbered by its smallest record id, whatever the
    # input order (the u sample draws signature numbers)
    sig = per_record.sort(rid).unique("_h", keep="first", maintain_order=True).with_row_index("sig")
    per_record = per_record.select(rid, "_h").join(sig.select("_h", "sig"), on="_h").drop("_h")
    return sig, per_record


def exact_nodes(sig: pl.DataFrame, spec: Spec) -> Clusters:
    """Signatures sharing an exact key (a valid code) joined into nodes, never across two values of
    ``cannot_link_on``; the returned clusters go on to the linking step."""
    bad = spec.cannot_link_on
    value_of: dict[int, str] = {}
    if bad and bad in sig.columns:
        value_of = {
            i: v for i, v in zip(sig["sig"].to_list(), sig[bad].to_list(), strict=True) if v is not None
        }
    branch_of = {}
    for column in spec.cannot_link_unless_equal:
        if column in sig.columns:
            branch_of = dict(zip(sig["sig"].to_list(), sig[column].to_list(), strict=True))
    clusters = Clusters(sig.height, value_of, branch_of)
    key_edges = []
    for key in spec.exact_keys:
        if key not in sig.columns:
            continue
        groups = (
            sig.filter(pl.col(key).is_not_null()).group_by(key).agg(pl.col("sig").min().alias("root"), "sig")
        )
        edges = groups.explode("sig").filter(pl.col("sig") != pl.col("root"))
        key_edges.append(edges.select(pl.col("root").alias("a"), pl.col("sig").alias("b")))
    if key_edges:
        for a, b in pl.concat(key_edges).iter_rows():
            clusters.join_exact(a, b)
    return clusters


def candidate_pairs(sig: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """Pairs (l < r) of signatures in different nodes sharing every key of some blocking rule,
    without pairs the constraints rule out anyway."""
    candidate_parts = []
    for rule in spec.blocking:
        if not all(k.column in sig.columns for k in rule):
            continue
        keys = sig.select(
            "sig", "node", *[key_expr(k).alias(f"k{i}") for i, k in enumerate(rule)]
        ).drop_nulls()
        keys = keys.filter(pl.all_horizontal(pl.col(f"k{i}") != "" for i in range(len(rule))))
        names = [f"k{i}" for i in range(len(rule))]
        sizes = keys.group_by(names).len()
        keys = keys.join(sizes.filter(pl.col("len") <= spec.max_block_size).drop("len"), on=names)
        pairs = (
            keys.join(keys, on=names, suffix="_r")
            .filter((pl.col("sig") < pl.col("sig_r")) & (pl.col("node") != pl.col("node_r")))
            .select(pl.col("sig").alias("l"), pl.col("sig_r").alias("r"))
        )
        candidate_parts.append(pairs)
    candidates = (
        pl.concat(candidate_parts).unique()
        if candidate_parts
        else pl.DataFrame(schema={"l": pl.UInt32, "r": pl.UInt32})
    )
    bad = spec.cannot_link_on
    if bad and bad in sig.columns:  # two different USCCs are never candidates
        values = sig.select("sig", pl.col(bad).alias("v"))
        candidates = (
            candidates.join(values, left_on="l", right_on="sig", how="left")
            .join(values, left_on="r", right_on="sig", how="left", suffix="_r")
            .filter(pl.col("v").is_null() | pl.col("v_r").is_null() | (pl.col("v") == pl.col("v_r")))
            .select("l", "r")
        )
    for column in spec.cannot_link_unless_equal:
        if column in sig.columns:
            values = sig.select("sig", pl.col(column).alias("v"))
            candidates = (
                candidates.join(values, left_on="l", right_on="sig", how="left")
                .join(values, left_on="r", right_on="sig", how="left", suffix="_r")
                .filter(pl.col("v").eq_missing(pl.col("v_r")))
                .select("l", "r")
            )
    return candidates.sort("l", "r")
