"""Blocking: signatures (identical records compared once), nodes (signatures sharing an exact
key) and candidate pairs between nodes from the spec's united ``[[blocking]]`` rules.

Everything here is columnar (Polars, numpy, scipy's connected components), so its memory is a few
arrays per signature: no Python object per record, signature or pair. Candidate pairs come out in
shards of bounded size, each pair exactly once (in the first rule that pairs it), so no step ever
holds all the pairs of a city.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from entity_resolution.internals.cluster import Clusters
from entity_resolution.internals.compare import compared_columns
from entity_resolution.internals.normalise import (
    core_counts,
    correct_spellings,
    corrected_names,
    correction_table,
    normalise,
)
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


# a lazy input whose plan serialises smaller than this (a file scan) goes to a normalising worker
# as its sliced plan; a larger one (it holds its data) as a Parquet file of its chunk
_PLAN_BYTES = 1 << 20


def _normalise_chunk(chunk: pl.LazyFrame | Path, spec: Spec, parts: Path, number: int) -> None:
    """Normalise one chunk of records (a lazy slice, or a Parquet file of it), one-off spellings as
    written, and write under ``parts`` its record -> hash map (``records-N``), its signatures, each
    once (``unique-N``), and how many of its records carry each core (``cores-K-N`` per corrected
    name column K): the plain function a normalising worker runs."""
    frame = chunk.collect() if isinstance(chunk, pl.LazyFrame) else pl.read_parquet(chunk)
    _signature_chunk(normalise(frame, spec, correct=False), spec, parts, number)


def _signature_chunk(frame: pl.DataFrame, spec: Spec, parts: Path, number: int) -> None:
    """``_normalise_chunk``'s files of a chunk normalised already (one-off spellings as written)."""
    rid = spec.id_column
    for index, (_, counts) in enumerate(core_counts(frame, spec).items()):
        counts.write_parquet(parts / f"cores-{index}-{number:05d}.parquet")
    fields = signature_fields(spec, frame.columns)
    part = frame.select(rid, *fields).with_columns(_signature_hash(fields))
    del frame
    part.select(rid, "_h").write_parquet(parts / f"records-{number:05d}.parquet")
    part.drop(rid).unique("_h", keep="first", maintain_order=True).write_parquet(
        parts / f"unique-{number:05d}.parquet"
    )


def _signature_hash(fields: list[str]) -> pl.Expr:
    """A signature's hash (``_h``): it stands for the values of its fields."""
    return pl.struct(fields).hash(seed=0).alias("_h")


def _corrected_signatures(
    uniques: list[Path], spec: Spec, corrections: dict[str, pl.DataFrame], out: Path
) -> pl.DataFrame:
    """The signatures holding a one-off spelling (``corrections``), read as their neighbour: written
    to ``out`` as one more chunk's signatures; returns each old hash with its new one (``_h``,
    ``_new``). A one-off spelling is on one record of the whole input, so only a few signatures
    change, and the chunks' files are not written again."""
    cores = {column: f"{name}_core" for column, name in corrected_names(spec)}
    wrong = [
        pl.col(cores[column]).is_in(table["value"].implode())
        for column, table in corrections.items()
        if table.height
    ]
    fields = [c for c in pl.scan_parquet(uniques[0]).collect_schema().names() if c != "_h"]
    old = (
        pl.concat([pl.scan_parquet(path).filter(pl.any_horizontal(wrong)) for path in uniques])
        .unique("_h", keep="first", maintain_order=True)
        .collect()
        if wrong
        else pl.DataFrame(schema=pl.scan_parquet(uniques[0]).collect_schema())
    )
    new = correct_spellings(old.drop("_h"), spec, corrections).with_columns(_signature_hash(fields))
    new.unique("_h", keep="first", maintain_order=True).select(*fields, "_h").write_parquet(out)
    return pl.DataFrame({"_h": old["_h"], "_new": new["_h"]})


def _plan_bytes(records: pl.LazyFrame) -> int:
    try:
        return len(records.serialize())
    except Exception:  # noqa: BLE001 (a plan that cannot be serialised, e.g. a Python function in it)
        return _PLAN_BYTES


def _normalise_in_workers(
    records: pl.LazyFrame,
    spec: Spec,
    offsets: list[int],
    chunk_records: int,
    parts: Path,
    pool: Executor,
    in_memory: bool = False,
) -> None:
    """``_normalise_chunk`` over the chunks, run by the ``pool``'s workers. A file scan's chunks go
    as sliced plans; any other input is written aside a chunk at a time (``in_memory``: known to
    hold its data, not serialised to find out: 15 s for 3.6M records)."""
    from entity_resolution.internals.pool import InProcess

    here = isinstance(pool, InProcess)  # (a chunk read in this process needs no file)
    plan_bytes = 0 if here else _PLAN_BYTES if in_memory else _plan_bytes(records)
    futures = []
    for number, offset in enumerate(offsets):
        chunk: pl.LazyFrame | Path = records.slice(offset, chunk_records)
        if plan_bytes >= _PLAN_BYTES:
            path = parts / f"input-{number:05d}.parquet"
            chunk.sink_parquet(path)
            chunk = path
        futures.append(pool.submit(_normalise_chunk, chunk, spec, parts, number))
    for future in futures:
        future.result()  # a worker's error surfaces here


def _spelling_corrections(
    spec: Spec,
    parts: Path,
    spellings: dict[str, pl.DataFrame] | None,
    made: dict[str, pl.DataFrame] | None = None,
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """(per corrected name column the spelling counts to judge by: ``spellings`` when given (the
    whole input's, when the records are a part of it), else the chunks' cores added up; and the
    ``correction_table`` of the records' cores by those counts, or the column's table in ``made``
    (``correction_tables`` of those ``spellings``: the same corrections for every core, and more
    rows, which correct nothing here))."""
    counted: dict[str, pl.DataFrame] = {}
    corrections: dict[str, pl.DataFrame] = {}
    for index, (column, _) in enumerate(corrected_names(spec)):
        files = sorted(parts.glob(f"cores-{index}-*.parquet"))
        if not files:
            continue
        given, table = (spellings or {}).get(column), (made or {}).get(column)
        if given is not None and table is not None:
            counted[column], corrections[column] = given, table
            continue
        cores = pl.concat([pl.read_parquet(f) for f in files]).group_by("value").agg(pl.col("len").sum())
        counted[column] = cores if given is None else given
        corrections[column] = correction_table(cores["value"], counted[column])
    return counted, corrections


def signatures(
    records: pl.LazyFrame,
    spec: Spec,
    chunk_records: int,
    work: Path,
    spellings: dict[str, pl.DataFrame] | None = None,
    workers: int = 1,
    in_memory: bool = False,
    normalised: pl.DataFrame | None = None,
    corrections: dict[str, pl.DataFrame] | None = None,
) -> tuple[pl.DataFrame, Path, Path]:
    """(the signatures, a row per ``sig`` number in order, without their first record ids; the
    Parquet file of the same with ``first_record``, the smallest record id holding each; the
    Parquet file of the record id -> ``sig`` map), the files under ``work``; the spelling counts
    the one-off spellings were judged by go beside them (``read_spellings``).

    Records are normalised ``chunk_records`` at a time, ``workers`` chunks at once (each in a
    process of its own), and only the signature fields are kept; each chunk's record -> hash map
    and its signatures go to disk, so the full-width normalised frame never exists for the whole
    input, and the per-record map (which grows with the input, not with the signatures) is built
    and kept on disk by streaming queries. A signature is kept from the first chunk holding it (its
    fields are equal in every chunk), so the result never depends on ``chunk_records`` or
    ``workers``. ``spellings``: the whole input's spelling counts (``read_spellings`` of its signatures) when
    ``records`` is a part of it; by default the records' own, counted as they are normalised.
    ``normalised``: more records, normalised already as ``normalise(..., correct=False)`` makes them
    (the id column and the signature fields): signed as they are, in chunks after the records'.
    ``corrections``: ``correction_tables(spec, spellings)``, made already (not made again)."""
    rid = spec.id_column
    parts = work / "signatures"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    height = records.select(pl.len()).collect().item()
    offsets = list(range(0, max(height, 1), chunk_records))
    from entity_resolution.internals.pool import pool_or_here

    with pool_or_here(min(workers, len(offsets))) as pool:
        _normalise_in_workers(records, spec, offsets, chunk_records, parts, pool, in_memory)
    chunks = len(offsets)
    if normalised is not None and normalised.height:
        # (the dtypes the records' chunks have, whatever the stored ones became)
        schema = normalise(records.head(0).collect(), spec, correct=False).schema
        normalised = normalised.cast({c: schema[c] for c in normalised.columns if c in schema}, strict=False)
        for offset in range(0, normalised.height, chunk_records):
            _signature_chunk(normalised.slice(offset, chunk_records), spec, parts, chunks)
            chunks += 1
    # one-off spellings, judged among all the chunks' records, are corrected in the few signatures
    # holding one: they go as one chunk more, and their records take the new hashes
    counted, corrections = _spelling_corrections(spec, parts, spellings, corrections)
    uniques = [parts / f"unique-{number:05d}.parquet" for number in range(chunks)]
    renamed = _corrected_signatures(uniques, spec, corrections, parts / "unique-corrected.parquet")
    uniques.append(parts / "unique-corrected.parquet")
    hashes = pl.scan_parquet(parts / "records-*.parquet").with_columns(
        pl.col("_h").replace(renamed["_h"], renamed["_new"])
    )
    for column, path in _spelling_files(work, spec).items():
        if column in counted:
            counted[column].select("value", pl.col("len").cast(pl.Int64)).sort("value").write_parquet(path)
    # per chunk, which of its signatures no earlier chunk holds (a hash stands for its fields)
    seen = pl.Series("_h", [], dtype=pl.UInt64)
    first_seen: list[pl.Series] = []
    for path in uniques:
        found = pl.read_parquet(path, columns=["_h"])["_h"]
        new = ~found.is_in(seen.implode())
        first_seen.append(new)
        seen = pl.concat([seen, found.filter(new)])
    del seen
    # each signature is numbered by its smallest record id, whatever the input order or chunking
    # (the u sample draws signature numbers); a hash stands for its fields' values
    numbered = (
        hashes.group_by("_h")
        .agg(pl.col(rid).min().alias("first_record"))
        .sort("first_record")
        .with_row_index("sig")
        .collect(engine="streaming")
    )
    # the first record ids wait on disk while the signatures are put in order: a hash and a number
    # per signature stay in memory, not a string
    first_records = parts / "first_records.parquet"
    numbered.select("first_record").write_parquet(first_records)
    numbered = numbered.select("_h", "sig")
    record_file = work / "records.parquet"
    (
        hashes.join(numbered.lazy(), on="_h", maintain_order="left")  # (deterministic)
        .select(rid, "sig")
        .sink_parquet(record_file)
    )
    # the signatures' fields, read a column at a time from the chunks' files (each signature from
    # the first chunk holding it) and put in ``sig`` order: the table is never held twice
    order = (
        _first_found(uniques, first_seen, "_h")
        .to_frame()
        .with_row_index("row")
        .join(numbered, on="_h")
        .sort("sig")["row"]
    )
    fields = [c for c in pl.scan_parquet(uniques[0]).collect_schema().names() if c != "_h"]
    sig = pl.DataFrame([_first_found(uniques, first_seen, column).gather(order) for column in fields])
    del first_seen, order
    sig.insert_column(0, numbered["sig"])
    del numbered
    signature_file = work / "signatures.parquet"
    sig.with_columns(pl.read_parquet(first_records)["first_record"]).write_parquet(
        signature_file, compression="lz4"
    )
    shutil.rmtree(parts, ignore_errors=True)
    return sig, signature_file, record_file


def _spelling_files(work: Path, spec: Spec) -> dict[str, Path]:
    return {
        column: work / f"spellings-{index}.parquet" for index, (column, _) in enumerate(corrected_names(spec))
    }


def read_spellings(work: Path, spec: Spec) -> dict[str, pl.DataFrame]:
    """The spelling counts ``signatures`` judged one-off spellings by in ``work`` (per corrected
    company-name column: ``value``, ``len``, sorted by value): the input's own, counted as its
    chunks were normalised, or those it was given. A caller keeping them for a later part of the
    input (an incremental night) needs no pass of its own over the names."""
    return {
        column: pl.read_parquet(path) for column, path in _spelling_files(work, spec).items() if path.exists()
    }


def _first_found(uniques: list[Path], first_seen: list[pl.Series], column: str) -> pl.Series:
    """One column of the chunks' signature files, each signature from the first chunk holding it."""
    return pl.concat(
        [
            pl.read_parquet(path, columns=[column])[column].filter(new)
            for path, new in zip(uniques, first_seen, strict=True)
        ]
    )


def labels_with_several_values(labels: np.ndarray, values: pl.Series) -> np.ndarray:
    """The labels (one per row of ``values``) under which ``values`` holds more than one distinct
    non-null value: a node or group with two USCCs, two anchors."""
    return (
        pl.DataFrame({"label": labels, "value": values})
        .drop_nulls("value")
        .group_by("label")
        .agg(pl.col("value").n_unique().alias("values"))
        .filter(pl.col("values") > 1)["label"]
        .to_numpy()
    )


def components_by_smallest(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph on ``n`` vertices with edges (a, b), each labelled by its
    smallest vertex (so the labels do not depend on how the edges were found)."""
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


def exact_nodes(sig: pl.DataFrame, spec: Spec) -> np.ndarray:
    """Per signature its node (the smallest signature of its node): signatures sharing an exact key
    (a valid code), never across two values of ``cannot_link_on``.

    Connected components of the key edges; the rare component that would hold two values (an org
    code shared by two different USCCs) is rebuilt by joining its edges one by one, refusing a join
    that would put two values in one node."""
    n = sig.height
    edges = []
    for index, key in enumerate(spec.exact_keys):
        if key not in sig.columns:
            continue
        edges.append(
            sig.select("sig", key)
            .filter(pl.col(key).is_not_null())
            .select(pl.col("sig").min().over(key).alias("a"), pl.col("sig").alias("b"))
            .filter(pl.col("a") != pl.col("b"))
            .with_columns(pl.lit(index).alias("key"))
        )
    if not edges or n == 0:
        return np.arange(n, dtype=np.int64)
    edge_frame = pl.concat(edges).sort("key", "a", "b")
    a, b = edge_frame["a"].to_numpy(), edge_frame["b"].to_numpy()
    node = components_by_smallest(n, a, b)
    bad = spec.cannot_link_on
    if not bad or bad not in sig.columns:
        return node
    conflicted = labels_with_several_values(node, sig[bad])
    if len(conflicted) == 0:
        return node
    members = np.flatnonzero(np.isin(node, conflicted))
    local = np.full(n, -1, dtype=np.int64)
    local[members] = np.arange(len(members))
    values = sig[bad].gather(members).to_list()
    clusters = Clusters(len(members), {i: v for i, v in enumerate(values) if v is not None})
    inside = local[a] >= 0
    for x, y in zip(local[a[inside]].tolist(), local[b[inside]].tolist(), strict=True):
        clusters.join_exact(x, y)
    roots = clusters.roots()
    smallest = np.full(len(members), n, dtype=np.int64)
    np.minimum.at(smallest, roots, members)
    node[members] = smallest[roots]
    return node


def _codes(values: pl.Series) -> np.ndarray:
    """Values as integers (equal values, equal integers; null is -1)."""
    return values.rank("dense").fill_null(0).cast(pl.Int64).to_numpy() - 1


@dataclass(frozen=True)
class ShardTask:
    """One shard of candidate pairs to make (``shard_pairs``), as files: the members of its blocks
    and, in ``folder``, the per-signature arrays that rule pairs out (a worker maps them, so no task
    carries an array per signature)."""

    number: int  # in the fixed order of the shards (shards left empty are skipped later)
    rows: Path  # the members of the shard's blocks: sig, b (block), node
    folder: Path  # blocks-K.npy per rule, value.npy, branch-I.npy, source.npy (link-only)
    earlier: int  # rules before this one: a pair one of their blocks holds is theirs
    branches: int


def plan_shards(
    sig: pl.DataFrame,
    node: np.ndarray,
    spec: Spec,
    shard_pairs: int,
    folder: Path,
    fresh: np.ndarray | None = None,
    owner: np.ndarray | None = None,
) -> Iterator[ShardTask]:
    """The shards of candidate pairs (l < r) of signatures in different nodes sharing every key of
    some blocking rule, about ``shard_pairs`` pairs each, as tasks for ``shard_pairs_of`` (files
    under ``folder``). With ``fresh`` (a flag per signature: an incremental run's fixed entities
    are the others), only pairs with a fresh side: two fixed entities never join, nor need their
    pairs, and a block of known firms costs its new records times its size, not its size squared.

    A pair comes from the first rule that pairs it (later rules drop pairs an earlier rule's block
    holds), so the shards are disjoint without ever uniting all pairs; blocks are cut into shards in
    a fixed order, so the set of pairs never depends on ``shard_pairs``."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = spec.cannot_link_on
    if bad and bad in sig.columns:
        np.save(folder / "value.npy", _codes(sig[bad]))
    branches = [c for c in spec.cannot_link_unless_equal if c in sig.columns]
    for number, column in enumerate(branches):
        np.save(
            folder / f"branch-{number}.npy", sig[column].rank("dense").fill_null(0).cast(pl.Int64).to_numpy()
        )
    if spec.link_only:  # the input of each signature, for ``cross_input_pairs`` (a code per input)
        np.save(folder / "source.npy", _codes(sig[spec.source_column]))
    if fresh is not None:
        np.save(folder / "fresh.npy", fresh)
    if owner is not None:
        np.save(folder / "owner.npy", owner)
    rules = 0  # rules whose blocks are written (blocks-K.npy: each signature's block, -1: in none)
    tasks = 0
    for rule in spec.blocking:
        if not all(k.column in sig.columns for k in rule):
            continue
        names = [f"k{i}" for i in range(len(rule))]
        usable = pl.all_horizontal(pl.col(c).is_not_null() & (pl.col(c) != "") for c in names)
        # a block is numbered by its smallest signature: independent of how it was found
        member = (
            sig.select("sig", *[key_expr(k).alias(f"k{i}") for i, k in enumerate(rule)])
            .filter(usable)
            .with_columns(pl.col("sig").min().over(names).alias("b"), pl.len().over(names).alias("size"))
            .filter(pl.col("size") <= spec.max_block_size)
            .select("sig", "b", "size")
        )
        this = np.full(sig.height, -1, dtype=np.int64)
        this[member["sig"].to_numpy()] = member["b"].to_numpy()
        np.save(folder / f"blocks-{rules}.npy", this)
        earlier, rules = rules, rules + 1
        del this
        if member.height == 0:
            continue
        # blocks in a fixed order (by number), cut into shards of about shard_pairs pairs
        shard_of = (
            member.group_by("b")
            .agg(pl.col("size").first())
            .sort("b")
            .select(
                "b",
                (
                    (pl.col("size").cast(pl.Int64) * (pl.col("size") - 1) // 2).cum_sum()
                    // max(shard_pairs, 1)
                ).alias("shard"),
            )
        )
        member = (
            member.with_columns(pl.Series("node", node[member["sig"].to_numpy()]))
            .join(shard_of, on="b")
            .sort("shard", "sig")
        )
        for rows in member.partition_by("shard", maintain_order=True, include_key=False):
            path = folder / f"rows-{tasks:05d}.parquet"
            rows.select("sig", "b", "node").write_parquet(path, compression="lz4")
            yield ShardTask(tasks, path, folder, earlier, len(branches))
            tasks += 1


def _block_pairs(block: np.ndarray, sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows sharing a block, as row positions (i, j) with ``sig[i] < sig[j]``: per
    block its members in ``sig`` order, each paired with those after it. Made by index arithmetic
    over the rows sorted once, not by joining the rows with themselves (a hash join of a shard's
    members, then a sort of its pairs: 18 of the 82 CPU s of comparing a city's 52M pairs)."""
    order = np.lexsort((sig, block))
    sorted_blocks = block[order]
    n = len(order)
    starts = np.flatnonzero(np.r_[True, sorted_blocks[1:] != sorted_blocks[:-1]])  # (no rows: [0], empty)
    sizes = np.diff(np.r_[starts, n])
    after = np.repeat(starts + sizes, sizes) - np.arange(n) - 1  # members after each in its block
    first = np.repeat(np.arange(n), after)
    # (each pair's distance from its first member: 1, 2, ... within that member's run of pairs)
    step = np.arange(len(first)) - np.repeat(np.cumsum(after) - after, after) + 1
    return order[first], order[first + step]


def shard_pairs_of(task: ShardTask) -> pl.DataFrame:
    """The candidate pairs (l, r) of one shard, in order, without the pairs an earlier rule holds
    or the constraints rule out anyway: the plain function a worker runs (arrays memory-mapped).

    Pairs are found as positions among the shard's rows, and each per-signature array is read
    once per row (a shard's members), then compared per pair among those: a pair's two lookups
    land in a shard-sized array rather than in a city's (5M signatures, memory-mapped)."""
    rows = pl.read_parquet(task.rows)
    sig = rows["sig"].to_numpy()
    node = rows["node"].to_numpy()
    if (task.folder / "fresh.npy").exists():  # only pairs with a fresh side (``plan_shards``)
        fresh = np.load(task.folder / "fresh.npy", mmap_mode="r")[sig]
        positions = rows.select("b", pl.Series("fresh", fresh)).with_row_index("i")
        found = (
            positions.filter("fresh")
            .join(positions, on="b", suffix="_r")
            .filter(
                (pl.col("i") != pl.col("i_r"))
                & (~pl.col("fresh_r") | (pl.col("i") < pl.col("i_r")))  # two fresh ones once
            )
        )
        a, b = found["i"].to_numpy().astype(np.int64), found["i_r"].to_numpy().astype(np.int64)
        swap = sig[a] > sig[b]
        i, j = np.where(swap, b, a), np.where(swap, a, b)
    else:
        i, j = _block_pairs(rows["b"].to_numpy(), sig)
    del rows

    def per_row(name: str) -> np.ndarray:
        return np.load(task.folder / f"{name}.npy", mmap_mode="r")[sig]

    keep = node[i] != node[j]
    for rule in range(task.earlier):  # an earlier rule already pairs them
        other = per_row(f"blocks-{rule}")
        keep &= ~((other[i] >= 0) & (other[i] == other[j]))
    if (task.folder / "owner.npy").exists():  # two fixed entities' signatures (``plan_shards``)
        owner = per_row("owner")
        keep &= (owner[i] < 0) | (owner[j] < 0) | (owner[i] == owner[j])
    if (task.folder / "value.npy").exists():  # two different USCCs are never candidates
        value = per_row("value")
        keep &= (value[i] < 0) | (value[j] < 0) | (value[i] == value[j])
    for number in range(task.branches):
        branch = per_row(f"branch-{number}")
        keep &= branch[i] == branch[j]
    return pl.DataFrame({"l": sig[i[keep]], "r": sig[j[keep]]}).sort("l", "r")
