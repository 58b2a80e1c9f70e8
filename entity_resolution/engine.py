"""A declarative Fellegi-Sunter linkage engine: any tabular records, driven by a TOML spec.

Steps, all vectorised (Polars joins for blocking, rapidfuzz ``cpdist`` for pair similarities,
numpy for the model, scipy for connected components):

1. normalise the input columns into fields (spec ``[[normalise]]``), a chunk of records at a time,
   and collapse identical records into *signatures*, so ten monthly records of one employer are
   compared once;
2. exact keys (``[exact]``): signatures that share a valid code form one node (known matches);
3. blocking rules (``[[blocking]]``, united) give candidate pairs between nodes, never two nodes
   whose ``cannot_link_on`` values differ, in shards of bounded size;
4. comparisons (``[[compare]]``) put each pair on a level per field, one shard at a time;
5. the model: u from random pairs, m from the known matches (``m_from_known_matches``: pairs of
   signatures sharing a valid code) and EM on the candidates for the rest (over the distinct level
   patterns and their counts); a pair's match probability follows from its levels' weights;
6. partitions: connected components of exact keys, pairs above the link threshold and decisions,
   packed into partitions of bounded size (``internals/partition.py``), each resolved on its own:
7. clustering: pairs above the link threshold are joined strongest first, refusing any join that
   would put two different ``cannot_link_on`` values (two valid USCCs) or two different branches in
   one entity — also through chains; steward decisions become must-link and cannot-link;
8. a unit (a record, or signatures sharing a code) that matches another entity about as well as
   its own stands alone, ``undecided`` (``internals/cluster.py`` ``undecided_units``);
9. pairs between the review and link thresholds, and the linked pairs of undecided records, are
   returned for the review queue.

Spec ``[scale]`` (``normalise_records``, ``shard_pairs``, ``partition_signatures``, and how many
normalising chunks, pair shards and partitions run at once, ``normalise_workers``,
``compare_workers`` and ``partition_workers``, each in a process of its own) sets how the work is
cut, which bounds memory and never changes the result. What grows with the input stays in the work
directory between phases (Parquet, read by streaming queries): the record -> signature
map (``records.parquet``), the signature table with its first record ids (``signatures.parquet``;
blocking, comparisons and the model hold it in memory without those ids), the pair shards, and per
partition its signatures, pairs, decisions and result (``partitions/part-N/``). Clustering holds
only integer arrays per signature and one partition's frames.

``link`` runs three steps a scheduler may also run as tasks of their own (the nightly DAG does):
``prepare_link`` (1-6, up to the partition directories; what the rest needs is saved beside them
as Parquet, .npy and JSON), ``resolve_link_partition`` per partition (7-8, any order, any
process), ``finish_link`` (entity names, links, the review queue). The result is the same.

The evidence per link, from the engine's own comparisons (``links`` columns):

- ``match_grade``: one letter per ``[[compare]]``, in the spec's order, comparing the record's
  signature with its entity's representative (the entity's smallest signature holding its code,
  else its smallest signature): **A** same (the comparison's top level), **B** similar (a level in
  between), **F** different (level 0), **Z** missing on either side. With the enterprise spec: code, name, legal form, region, name tokens,
  legal representative, address, phone, unit figures.
- ``match_rule``: how the record came to its entity: ``exact_key`` (its signature shares an exact
  key, a valid code, with another), ``probabilistic`` (a scored pair at or above the link
  threshold), ``decision`` (a steward's must-link or the registry's fixed entity), ``identical``
  (its entity is its signature alone: the records in it agree on every field the spec uses),
  ``undecided`` (it matches two entities about equally well, so it stands alone for review).
- ``match_confidence``: 1 for exact keys and lone signatures, else the match probability of the
  strongest accepted pair touching its signature; for an undecided record, the chance that it is
  a firm of its own.
- ``recorded_columns`` given to ``link`` are copied from the input as recorded (e.g. the name and
  code the source wrote).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl

from entity_resolution.internals.blocking import components_by_smallest, exact_nodes, plan_shards, signatures
from entity_resolution.internals.compare import (
    PairComparer,
    compared_columns,
    decode_patterns,
    pattern_radix,
    signature_frequencies,
    term_frequencies,
)
from entity_resolution.internals.model import estimate, sampled, weights
from entity_resolution.internals.normalise import normalise
from entity_resolution.internals.partition import (
    COUNTS_FILE,
    MATCH_RULES,
    Scale,
    pack,
    resolve_partition_files,
)
from entity_resolution.internals.shards import ShardScoring, compare_shard, score_shard
from entity_resolution.spec import Spec
from foundation.lake import write_json, write_parquet

__all__ = [
    "MATCH_RULES",
    "FittedModel",
    "Linkage",
    "Scale",
    "finish_link",
    "link",
    "normalise",
    "partition_dir",
    "prepare_link",
    "resolve_link_partition",
    "resolve_link_partitions",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FittedModel:
    """A model as ``link`` fitted it, to score another input with: m and u per comparison level,
    the prior of a match among all pairs and the term-frequency tables. An incremental night links
    a few records again with the model its first pass fitted on many (a handful of records is too
    few to fit one on)."""

    m: list[np.ndarray]
    u: list[np.ndarray]
    prior: float
    frequencies: dict[str, pl.DataFrame]


@dataclass
class Linkage:
    links: pl.DataFrame  # record_id, entity_id, match_confidence, match_grade, match_rule (+ recorded)
    pairs: pl.DataFrame  # scored candidate pairs (signature ids, probability)
    review: pl.DataFrame  # pairs between the review and link thresholds, with both records
    model: dict[str, Any]  # m, u, lambda per comparison level
    stats: dict[str, Any] = field(default_factory=dict)
    # record id -> signature, node (blocking diagnostics): a scan of ``work_dir``'s record map, so
    # the 10M rows of a city are read only when asked for
    assignments: pl.LazyFrame | None = None
    fitted: FittedModel | None = None  # (``link`` only: the model unrounded, to pass to another run)


def _owners(anchor_of: pl.DataFrame, node: np.ndarray) -> np.ndarray:
    """Per signature, a number for the one fixed entity (anchor) its exact-key node holds, -1 when
    it holds none or several: a new record in such a node is that entity's whatever its pairs (a
    known firm's USCC), so its pairs with another fixed entity can only be refused (``plan_shards``)."""
    n = len(node)
    code = np.full(n, -1, dtype=np.int64)
    code[anchor_of["sig"].to_numpy()] = anchor_of["anchor"].rank("dense").cast(pl.Int64).to_numpy()
    big = np.iinfo(np.int64).max
    lowest, highest = np.full(n, big, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    np.minimum.at(lowest, node, np.where(code >= 0, code, big))
    np.maximum.at(highest, node, code)
    one = (highest >= 0) & (lowest == highest)
    return np.where(one[node], highest[node], -1)


def _stable_id(first_record: str) -> str:
    return "X" + hashlib.sha1(first_record.encode()).hexdigest()[:16]


def _peak_mb() -> float:
    """The largest resident set of this process or of a partition worker it ran (``ru_maxrss`` of
    the children is the largest child's, not their sum)."""
    own, children = (
        resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return max(own, children) / 1024


def _cpu_seconds() -> float:
    """CPU seconds of this process's threads and of the partition workers it ran and waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _duplicated_id(records: pl.LazyFrame, rid: str) -> str | None:
    """A record id the input holds twice, else None. The ids are grouped by a 64-bit hash (a
    number per record, not a string: the input may be a city's records streamed from a file) and
    only the records of a hash held twice are compared as strings."""
    hashed = records.select(pl.col(rid).hash(seed=0).alias("_h"))
    twice = hashed.group_by("_h").len().filter(pl.col("len") > 1).select("_h").collect(engine="streaming")
    if twice.height == 0:
        return None
    ids = (
        records.select(rid)
        .filter(pl.col(rid).hash(seed=0).is_in(twice["_h"].implode()))
        .group_by(rid)
        .len()
        .filter(pl.col("len") > 1)
        .sort(rid)
        .collect()
    )
    return ids[rid][0] if ids.height else None


def _anchor_frame(anchors: dict[str, str] | pl.DataFrame | None, rid: str) -> pl.DataFrame | None:
    """The anchors as a frame (``rid``, ``anchor``, ``_order``: their order), None when there are
    none. A frame is taken as it is (a registry's members: no Python string per record)."""
    if anchors is None or len(anchors) == 0:
        return None
    if isinstance(anchors, pl.DataFrame):
        frame = anchors.select(pl.col(rid).cast(pl.String), pl.col("anchor").cast(pl.String))
    else:
        frame = pl.DataFrame(
            {rid: list(anchors), "anchor": list(anchors.values())},
            schema={rid: pl.String, "anchor": pl.String},
        )
    return frame.with_row_index("_order")


def _kept_columns(spec: Spec, columns: list[str]) -> set[str]:
    """The signature table's columns ``_prepare`` reads after the comparer has coded the compared
    ones: numbers and nodes, exact keys, blocking keys, constraints, term-frequency columns."""
    wanted = {
        "sig",
        "node",
        *spec.exact_keys,
        *(k.column for rule in spec.blocking for k in rule),
        *([spec.cannot_link_on] if spec.cannot_link_on else []),
        *spec.cannot_link_unless_equal,
        *(c.column for c in spec.comparisons if c.tf_adjust),
        *([spec.source_column] if spec.link_only else []),
    }
    return wanted & set(columns)


# ---------------------------------------------------------------------------------- the engine
#: in the work directory: what ``finish_link`` needs of ``prepare_link`` besides the partitions
STATE_FILE = "state.json"


class _Clock:
    """Cumulative wall seconds, CPU seconds and peak MB per step (``stats``); saved with the state
    so that a finish in another process carries on from where the preparation stopped."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {"seconds": {}, "cpu_seconds": {}, "peak_mb": {}}
        self.timings: dict[str, float] = dict(saved["seconds"])
        self.cpu: dict[str, float] = dict(
            saved["cpu_seconds"]
        )  # all threads: wall time says little on a loaded machine
        self.peaks: dict[str, float] = dict(saved["peak_mb"])
        self.started = time.perf_counter() - max(self.timings.values(), default=0.0)
        self.cpu_started = _cpu_seconds() - max(self.cpu.values(), default=0.0)

    def step(self, name: str) -> None:
        self.timings[name] = time.perf_counter() - self.started
        self.cpu[name] = round(_cpu_seconds() - self.cpu_started, 2)
        self.peaks[name] = round(_peak_mb())

    def saved(self) -> dict[str, Any]:
        return {"seconds": self.timings, "cpu_seconds": self.cpu, "peak_mb": self.peaks}


def link(
    records: pl.DataFrame | pl.LazyFrame,
    spec: Spec,
    must_link: list[tuple[str, str]] | None = None,
    cannot_link: list[tuple[str, str]] | None = None,
    anchors: dict[str, str] | pl.DataFrame | None = None,
    seed: int = 7,
    fixed_anchors: bool = False,
    *,
    recorded_columns: Sequence[str] = (),
    keep_pairs: bool = True,
    work_dir: Path | None = None,
    scale: Scale | None = None,
    frequencies: dict[str, pl.DataFrame] | None = None,
    spellings: dict[str, pl.DataFrame] | None = None,
    model: FittedModel | None = None,
    normalised: pl.DataFrame | None = None,
    corrections: dict[str, pl.DataFrame] | None = None,
) -> Linkage:
    """Link ``records`` (the spec's id column plus its input columns) into entities. A LazyFrame
    (e.g. ``pl.scan_parquet``) is read a chunk at a time, so the input never sits in memory whole.

    ``must_link`` / ``cannot_link`` are record-id pairs (steward decisions); ``anchors`` maps record
    ids to entity ids they already hold (the registry), so known entities keep their ids (a dict, or
    a frame of the id column and ``anchor``, in the same order: a city's registry as a frame). With
    ``fixed_anchors`` (an incremental run) the anchored entities are taken as they are: their
    records stay together and two of them never merge; only the other records are placed, and
    only pairs with one of them are made (the model learns from those), none between a record whose
    exact keys put it with one anchored entity and another anchored entity's records.

    ``recorded_columns``: input columns copied into ``links`` as recorded (evidence). ``keep_pairs``
    False leaves ``pairs`` holding only the pairs at or above the review threshold (all candidate
    pairs of a city do not fit in memory). ``work_dir`` keeps the pair shards and partitions there
    (default: a temporary directory, removed); ``scale`` overrides the spec's ``[scale]``.
    ``frequencies`` are the term-frequency tables (``term_frequencies``) of the whole input when
    ``records`` is one part of it; by default they are computed from ``records``. ``spellings``
    likewise: per company-name input column, how many records of the whole input carry each
    spelling (``internals.normalise.spelling_counts``), by which ``correct_one_offs`` tells a
    one-off spelling; by default counted over ``records``. ``model``: score with this fitted model
    (another run's ``Linkage.fitted``, its term frequencies included) rather than fit one here.
    ``normalised``: more records to link, normalised already (the id column and the signature
    fields as ``normalise(..., correct=False)`` makes them: a registry's representatives, stored
    so), which are not normalised again; the same result as giving them as records.
    ``corrections``: ``internals.normalise.correction_tables(spec, spellings)``, made already by a
    caller that corrects other parts by the same ``spellings`` (not made again here).

    The same as ``prepare_link``, then ``resolve_link_partition`` for every partition (here
    ``[scale] partition_workers`` at once), then ``finish_link``: the steps a scheduler may run as
    tasks of their own.
    """
    scale = scale or Scale.of(spec)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="link-"))
    try:
        clock = _Clock()
        _, fitted = _prepare(
            records, spec, must_link, cannot_link, anchors, seed, fixed_anchors, recorded_columns,
            keep_pairs, work, scale, clock, frequencies, spellings, model, normalised, corrections,
        )  # fmt: skip
        resolve_link_partitions(work, spec, scale.partition_workers)
        linkage = _finish(work, spec, clock)
        linkage.fitted = fitted
        if work_dir is None:  # the work files go: what the assignments scan is read now
            linkage.assignments = linkage.assignments.collect().lazy()
        return linkage
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def prepare_link(
    records: pl.DataFrame | pl.LazyFrame,
    spec: Spec,
    must_link: list[tuple[str, str]] | None = None,
    cannot_link: list[tuple[str, str]] | None = None,
    anchors: dict[str, str] | pl.DataFrame | None = None,
    seed: int = 7,
    fixed_anchors: bool = False,
    *,
    work_dir: Path,
    recorded_columns: Sequence[str] = (),
    keep_pairs: bool = True,
    scale: Scale | None = None,
    frequencies: dict[str, pl.DataFrame] | None = None,
    spellings: dict[str, pl.DataFrame] | None = None,
) -> int:
    """``link`` up to the partitions: signatures, blocking, comparisons, the model, and the partition
    directories under ``work_dir`` (``partition_dir``), with what ``finish_link`` needs saved beside
    them (Parquet, .npy and JSON). Returns how many partitions there are: resolve each with
    ``resolve_link_partition``, in any order and any process, then call ``finish_link``."""
    clock = _Clock()
    partitions, _ = _prepare(
        records, spec, must_link, cannot_link, anchors, seed, fixed_anchors, recorded_columns,
        keep_pairs, Path(work_dir), scale or Scale.of(spec), clock, frequencies, spellings, None, None,
    )  # fmt: skip
    return partitions


def partition_dir(work_dir: Path, number: int) -> Path:
    """Partition ``number``'s directory (its inputs and ``links.parquet``) under ``work_dir``."""
    return Path(work_dir) / "partitions" / f"part-{number:05d}"


def resolve_link_partition(work_dir: Path, spec: Spec, number: int) -> dict[str, int]:
    """Resolve partition ``number`` of a prepared work directory: its ``links.parquet`` (atomic and
    deterministic, so a re-run writes the same file). Returns its counts (signatures, scored pairs,
    linked pairs, pairs refused by the constraints)."""
    state = json.loads((Path(work_dir) / STATE_FILE).read_text("utf-8"))
    if not 0 <= number < state["partitions"]:
        raise ValueError(f"{work_dir}: partition {number} of {state['partitions']} does not exist")
    directory = partition_dir(work_dir, number)
    counts = resolve_partition_files(directory, spec)
    return {
        "signatures": pl.scan_parquet(directory / "signatures.parquet").select(pl.len()).collect().item(),
        "scored_pairs": pl.scan_parquet(directory / "scored.parquet").select(pl.len()).collect().item(),
        **counts,
    }


def finish_link(work_dir: Path, spec: Spec) -> Linkage:
    """``link`` after the partitions: names the entities and builds the links, the review pairs and
    the stats from ``prepare_link``'s saved state and every partition's ``links.parquet`` (a
    partition not resolved yet is an error). Reads only; the same Linkage however the partitions ran."""
    work = Path(work_dir)
    return _finish(work, spec, _Clock(json.loads((work / STATE_FILE).read_text("utf-8"))["clock"]))


def _in_order(
    pool: Executor | None, function: Callable[..., T], items: Iterable[Any], *same: Any
) -> Iterator[T]:
    """``function(item, *same)`` for each of ``items``, the results in their order: run by the
    ``pool``'s workers (several at once), else here, one after the other."""
    if pool is None:
        return (function(item, *same) for item in items)
    return pool.map(function, items, *(itertools.repeat(value) for value in same))


def _prepare(
    records: pl.DataFrame | pl.LazyFrame,
    spec: Spec,
    must_link: list[tuple[str, str]] | None,
    cannot_link: list[tuple[str, str]] | None,
    anchors: dict[str, str] | pl.DataFrame | None,
    seed: int,
    fixed_anchors: bool,
    recorded_columns: Sequence[str],
    keep_pairs: bool,
    work: Path,
    scale: Scale,
    clock: _Clock,
    frequencies: dict[str, pl.DataFrame] | None,
    spellings: dict[str, pl.DataFrame] | None,
    model: FittedModel | None,
    normalised: pl.DataFrame | None = None,
    corrections: dict[str, pl.DataFrame] | None = None,
) -> tuple[int, FittedModel]:
    """Steps 1-6 into ``work`` (emptied first); returns the number of partitions and the model
    (``model`` when given: then nothing is fitted)."""
    step = clock.step
    rid = spec.id_column
    in_memory = isinstance(records, pl.DataFrame)  # (its plan would carry the data to a worker)
    records = records.lazy()
    if normalised is not None and recorded_columns:
        raise ValueError("recorded_columns need every record as recorded: none may come normalised")
    if corrections is not None and spellings is None:
        raise ValueError("corrections are made from the spellings they judge by: give both")
    every_id = records.select(rid)
    if normalised is not None:
        every_id = pl.concat([every_id, normalised.lazy().select(pl.col(rid).cast(pl.String))])
    duplicated = _duplicated_id(every_id, rid)
    if duplicated is not None:
        raise ValueError(f"record ids in '{rid}' must be unique ({duplicated!r} is not)")
    if spec.link_only and spec.source_column not in records.collect_schema().names():
        raise ValueError(f"link_only spec {spec.name!r}: the records need a '{spec.source_column}' column")
    missing = [c for c in recorded_columns if c not in records.collect_schema().names()]
    if missing:
        raise ValueError(f"recorded_columns {missing} are not columns of the records")
    (work / STATE_FILE).unlink(missing_ok=True)  # no finish from a half-written preparation
    shutil.rmtree(work / "shards", ignore_errors=True)
    shutil.rmtree(work / "partitions", ignore_errors=True)
    (work / "shards").mkdir(parents=True)
    (work / "partitions").mkdir(parents=True)
    # 1. signatures: identical values on everything that matters are compared once
    # each phase reads the columns it needs from the work files: the record -> signature map (which
    # grows with the input) never sits in memory whole, nor do the signatures' first record ids
    given_normalised = normalised.height if normalised is not None else 0
    sig, signature_file, record_file = signatures(
        records, spec, scale.normalise_records, work, spellings, scale.normalise_workers, in_memory, normalised,
        corrections,
    )  # fmt: skip
    del normalised
    n = sig.height
    step("signatures")
    anchor_frame = _anchor_frame(anchors, rid)
    fresh = None  # with fixed anchors, the signatures holding a record that is not an anchor
    anchor_of = None  # and each anchored signature's anchor
    if fixed_anchors and anchor_frame is not None:
        unanchored = (
            pl.scan_parquet(record_file)
            .join(anchor_frame.lazy().select(rid), on=rid, how="anti")
            .select("sig")
            .unique()
            .collect()
        )
        fresh = np.zeros(n, dtype=bool)
        fresh[unanchored["sig"].to_numpy()] = True
        # each signature takes the first anchor of its records (in the anchors' order)
        anchor_of = (
            anchor_frame.lazy()
            .join(pl.scan_parquet(record_file), on=rid)
            .sort("_order")
            .group_by("sig", maintain_order=True)
            .agg(pl.col("anchor").first())
            .sort("sig")
            .collect()
        )

    # 2. nodes: signatures sharing an exact key (a valid code) are one node
    node = exact_nodes(sig, spec)
    sig = sig.with_columns(pl.Series("node", node))
    owner = None if anchor_of is None else _owners(anchor_of, node)
    step("exact")

    # 3-4. blocking and comparisons, a shard at a time, ``[scale] compare_workers`` at once (each in a
    # process of its own); EM needs only the level patterns' counts
    radix = pattern_radix(spec)
    comparer = PairComparer(sig, spec)  # the compared columns coded once, for every shard
    # what the partitions take from the signature file (read before the columns below are dropped)
    columns = [
        "sig", "node", "first_record",
        *dict.fromkeys(
            c
            for c in [*compared_columns(spec), spec.cannot_link_on, *spec.cannot_link_unless_equal]
            if c and c in sig.columns
        ),
    ]  # fmt: skip
    shown = [c for c in compared_columns(spec) if sig.schema.get(c) != pl.List(pl.String)]
    # a column only compared is the comparer's now (each distinct value once): the signature table
    # keeps what blocking, the constraints, the model and the term frequencies read
    sig = sig.select(c for c in sig.columns if c in _kept_columns(spec, sig.columns))
    staged = work / "compare"  # the shards' tasks and what their workers read (removed after scoring)
    shutil.rmtree(staged, ignore_errors=True)
    tasks = plan_shards(sig, node, spec, scale.shard_pairs, staged, fresh, owner)
    first = list(itertools.islice(tasks, 2))  # (a pool for two shards at least)
    with ExitStack() as stack:
        pool = None
        if scale.compare_workers > 1 and len(first) > 1:
            from entity_resolution.internals.pool import process_pool

            pool = stack.enter_context(process_pool(scale.compare_workers))
            comparer.save(staged / "comparer")  # a worker maps it once, no copy pickled per task
        # the shards keep the tasks' order, numbered without those left empty: the same files
        # however many workers compared them; the pool's workers start on the first shards while
        # this process plans the rest, then samples the model's m and u and looks up each
        # signature's term frequencies (what needs no candidate pair)
        compared = _in_order(
            pool,
            compare_shard,
            itertools.chain(first, tasks),
            spec,
            staged,
            staged / "comparer" if pool else comparer,
        )
        start = None if model else sampled(sig, spec, seed, comparer)
        if frequencies is None and model:
            frequencies = model.frequencies
        if frequencies is None:  # accuracy hook: term frequencies (per exact-key node)
            frequencies = term_frequencies(sig, spec, unit="node")
        # per signature, looked up once for every shard, and read by the shards' workers from files
        frequency_files = {}
        for number, (column, values) in enumerate(signature_frequencies(sig, frequencies).items()):
            frequency_files[column] = staged / f"frequencies-{number}.npy"
            np.save(frequency_files[column], values)
        shard_paths: list[Path] = []
        pattern_parts: list[pl.DataFrame] = []
        candidates = 0
        for written, height, counts in filter(None, compared):
            shard_paths.append(work / "shards" / f"shard-{len(shard_paths):05d}.parquet")
            written.rename(shard_paths[-1])
            pattern_parts.append(counts)
            candidates += height
        patterns = (
            pl.concat(pattern_parts).group_by("pattern").agg(pl.col("len").sum()).sort("pattern")
            if pattern_parts
            else pl.DataFrame(schema={"pattern": pl.Int64, "len": pl.UInt32})
        )
        del tasks, first, pattern_parts
        step("compare")

        # 5. the model, then every pair's probability from its pattern
        pattern_codes = patterns["pattern"].to_numpy()
        pattern_levels = decode_patterns(pattern_codes, radix, spec)
        if model:
            m, u, prior = model.m, model.u, model.prior
        else:
            m, u, prior = estimate(
                sig, pattern_levels, spec, seed, counts=patterns["len"].to_numpy(), start=start
            )
        pattern_weights = weights(pattern_levels, m, u) if len(pattern_codes) else np.zeros(0)
        del comparer  # its coded columns are a row per signature
        scoring = ShardScoring(pattern_codes, pattern_levels, pattern_weights, u, prior, frequency_files)
        # every pair's probability, written back beside its pattern; the pairs at or above the
        # review threshold kept
        kept = list(_in_order(pool, score_shard, shard_paths, scoring, spec))
    shutil.rmtree(staged, ignore_errors=True)
    above_review = (
        pl.concat(kept)
        if kept
        else pl.DataFrame(
            schema={"l": pl.UInt32, "r": pl.UInt32, "pattern": pl.Int64, "probability": pl.Float64}
        )
    )
    linked = above_review.filter(pl.col("probability") >= spec.link_threshold)
    step("model")

    # decisions: steward must-link / cannot-link and the registry's fixed entities, on signatures
    sig_of = pl.scan_parquet(record_file)
    decision_rows = []
    for kind, pairs in (("must", must_link or []), ("cannot", cannot_link or [])):
        if pairs:
            decision_rows.append(
                pl.DataFrame(
                    {"a": [a for a, _ in pairs], "b": [b for _, b in pairs]},
                    schema={"a": pl.String, "b": pl.String},
                )
                .with_row_index("order")
                .lazy()
                .join(sig_of.rename({rid: "a", "sig": "l"}), on="a")
                .join(sig_of.rename({rid: "b", "sig": "r"}), on="b")
                .select(pl.lit(kind).alias("kind"), "l", "r", "order")
                .collect()
            )
    if anchor_of is not None:
        # the signatures of one anchored entity are joined (forced) to its smallest one
        firsts = anchor_of.with_columns(pl.col("sig").min().over("anchor").alias("first"))
        must_count = len(must_link or [])  # the steward's must-links come first
        forced = (
            firsts.filter(pl.col("sig") != pl.col("first"))
            .select(pl.lit("must").alias("kind"), pl.col("first").alias("l"), pl.col("sig").alias("r"))
            .with_row_index("order", offset=must_count)
            .select("kind", "l", "r", "order")
        )
        decision_rows.append(forced)
    decisions = (
        pl.concat([d.cast({"l": pl.UInt32, "r": pl.UInt32, "order": pl.UInt32}) for d in decision_rows])
        if decision_rows
        else pl.DataFrame(schema={"kind": pl.String, "l": pl.UInt32, "r": pl.UInt32, "order": pl.UInt32})
    )
    # 6. partitions: components of exact keys, linked pairs and must-links, packed
    must = decisions.filter(pl.col("kind") == "must")
    edge_a = np.concatenate([node, linked["l"].to_numpy(), must["l"].to_numpy()]).astype(np.int64)
    edge_b = np.concatenate([np.arange(n), linked["r"].to_numpy(), must["r"].to_numpy()]).astype(np.int64)
    component = components_by_smallest(n, edge_a, edge_b) if n else np.zeros(0, dtype=np.int64)
    partition = pack(component, scale.partition_signatures)
    # a cannot-link across components can never be tested: it stays out of the partitions
    decisions = decisions.filter(
        pl.Series(
            component[decisions["l"].to_numpy()] == component[decisions["r"].to_numpy()], dtype=pl.Boolean
        )
    )
    partitions = int(partition.max()) + 1 if n else 0
    sizes = np.bincount(partition, minlength=partitions)
    del sig  # from here on a partition's signatures are read from the work files

    # each partition's signatures: the table read once, in signature order, and cut by partition
    # (no join: node and partition are arrays by signature number; no sort: the order is kept)
    table = (
        pl.read_parquet(signature_file, columns=[c for c in columns if c != "node"])
        .with_columns(pl.Series("node", node, dtype=pl.Int64), pl.Series("part", partition))
        .select(*columns, "part")
    )
    if anchor_of is not None:
        table = table.join(anchor_of, on="sig", how="left", maintain_order="left")
    for number in range(partitions):
        partition_dir(work, number).mkdir(parents=True)
        table.filter(pl.col("part") == number).drop("part").write_parquet(
            partition_dir(work, number) / "signatures.parquet", compression="lz4"
        )
    del table
    # the scored pairs inside a component, routed a shard at a time (arrays looked up by signature
    # number: no join) to their partition's folder
    for number, path in enumerate(shard_paths):
        shard = pl.read_parquet(path, columns=["l", "r", "probability"])
        left, right = shard["l"].to_numpy(), shard["r"].to_numpy()
        inside = component[left] == component[right]
        shard = shard.filter(pl.Series(inside)).with_columns(pl.Series("part", partition[left[inside]]))
        for (part,), rows in shard.partition_by("part", as_dict=True, include_key=False).items():
            folder = work / "partitions" / "scored" / f"part={part}"
            folder.mkdir(parents=True, exist_ok=True)
            rows.write_parquet(folder / f"{number:05d}.parquet", compression="lz4")
        del shard, left, right, inside
    decision_part = decisions.with_columns(pl.Series("part", partition[decisions["l"].to_numpy()]))
    decision_parts = decision_part.partition_by("part", as_dict=True, include_key=False)
    largest_component = int(np.unique(component, return_counts=True)[1].max()) if n else 0
    del component, partition
    empty_decisions = decisions.clear()
    for number in range(partitions):
        directory = partition_dir(work, number)
        _read_part(work / "partitions" / "scored", number, _SCORED_SCHEMA).sort("l", "r").write_parquet(
            directory / "scored.parquet", compression="lz4"
        )
        decision_parts.pop((number,), empty_decisions).write_parquet(directory / "decisions.parquet")
    shutil.rmtree(work / "partitions" / "scored", ignore_errors=True)  # (each share is in its directory)

    # what the finish needs, saved beside the partitions (no pickles: plain files of known formats)
    # (in pair order: the same file however the pairs were cut into shards)
    write_parquet(above_review.sort("l", "r"), work / "above_review.parquet")
    np.save(work / "nodes.npy", node)
    if anchor_frame is not None:
        write_parquet(anchor_frame, work / "anchors.parquet")
    if recorded_columns:
        write_parquet(records.select(rid, *recorded_columns), work / "recorded.parquet")
    step("partition")
    state = {
        "given_normalised": given_normalised,
        "signatures": n,
        "candidate_pairs": candidates,
        "pair_shards": len(shard_paths),
        "partitions": partitions,
        "largest_partition": int(sizes.max()) if partitions else 0,
        "largest_component": largest_component,
        "lambda": prior,
        "m": [values.tolist() for values in m],
        "u": [values.tolist() for values in u],
        "shown": shown,
        "recorded_columns": list(recorded_columns),
        "keep_pairs": keep_pairs,
        "anchors": anchor_frame is not None,
        "signature_file": signature_file.name,
        "record_file": record_file.name,
        "clock": clock.saved(),
    }
    write_json(state, work / STATE_FILE)  # last: its presence says the preparation is whole
    return partitions, FittedModel(m, u, prior, frequencies)


def _finish(work: Path, spec: Spec, clock: _Clock) -> Linkage:
    """Steps 7-9 from ``_prepare``'s state and the partitions' results: entity names and links."""
    step = clock.step
    rid = spec.id_column
    state = json.loads((work / STATE_FILE).read_text("utf-8"))
    n, partitions, shown = state["signatures"], state["partitions"], state["shown"]
    radix = pattern_radix(spec)
    prior = state["lambda"]
    m = [np.array(values) for values in state["m"]]
    u = [np.array(values) for values in state["u"]]
    signature_file = work / state["signature_file"]
    sig_of = pl.scan_parquet(work / state["record_file"])
    node = np.load(work / "nodes.npy")
    above_review = pl.read_parquet(work / "above_review.parquet")
    linked = above_review.filter(pl.col("probability") >= spec.link_threshold)
    review = above_review.filter(pl.col("probability") < spec.link_threshold).sort("l", "r")
    anchor_frame = pl.read_parquet(work / "anchors.parquet") if state["anchors"] else None
    shard_paths = [work / "shards" / f"shard-{number:05d}.parquet" for number in range(state["pair_shards"])]
    directories = [partition_dir(work, number) for number in range(partitions)]
    unresolved = [d.name for d in directories if not (d / "links.parquet").exists()]
    if unresolved:
        raise FileNotFoundError(f"{work}: partitions not resolved yet: {unresolved[:5]} ({len(unresolved)})")
    counts = {"linked_pairs": 0, "refused_by_constraints": 0}
    for directory in directories:
        for key, value in json.loads((directory / COUNTS_FILE).read_text("utf-8")).items():
            counts[key] += value
    results = [directory / "links.parquet" for directory in directories]
    # each partition's result stays in its links.parquet: the entities are named from the files
    resolved = (
        pl.scan_parquet(results)
        if results
        else pl.LazyFrame(
            schema={
                "sig": pl.UInt32,
                "cluster": pl.UInt32,
                "match_confidence": pl.Float64,
                "match_grade": pl.String,
                "match_rule": pl.String,
                "cluster_value": pl.String,
                "cluster_first_record": pl.String,
            }
        )  # fmt: skip
    )
    # the review queue: pairs between the review and link thresholds, and the linked pairs of the
    # signatures left undecided (they match two entities about equally well)
    undecided = resolved.filter(pl.col("match_rule") == "undecided").select("sig").collect()["sig"].implode()
    review = pl.concat(
        [
            review,
            linked.filter(pl.col("l").is_in(undecided) | pl.col("r").is_in(undecided)).select(review.columns),
        ]
    ).sort("l", "r")
    review_pairs = _review_pairs(
        review.select("l", "r", "probability"),
        decode_patterns(review["pattern"].to_numpy(), radix, spec),
        pl.scan_parquet(signature_file)
        .select("sig", "first_record", *shown)
        .join(pl.concat([review["l"], review["r"]]).unique().to_frame("sig").lazy(), on="sig", how="semi")
        .collect(),
        spec,
    )
    step("cluster")

    # entity ids: the cannot-link value (the USCC) when there is one, an anchor's id, else a stable hash
    clusters = (
        resolved.group_by("cluster")
        .agg(pl.col("cluster_value").first(), pl.col("cluster_first_record").first())
        .collect(engine="streaming")
    )
    anchor_ids: dict[int, str] = {}
    if anchor_frame is not None:
        anchored = (
            anchor_frame.lazy()
            .join(sig_of, on=rid)
            .join(resolved.select("sig", "cluster"), on="sig")
            .group_by("cluster", "anchor")
            .len()
            .collect()
        )
        # an id goes to the one cluster that holds most of its records (the others are splits)
        # (ties by cluster, then anchor: the group order of a join is not fixed)
        votes = anchored.sort(["len", "cluster", "anchor"], descending=[True, False, False])
        claimed: set[str] = set()
        for cluster_id, anchor, _ in votes.iter_rows():
            if cluster_id not in anchor_ids and anchor not in claimed:
                anchor_ids[cluster_id] = anchor
                claimed.add(anchor)
    names = _entity_names(clusters, anchor_ids)
    links = (
        sig_of.join(
            resolved.join(names.lazy(), on="cluster").select(
                "sig", "entity_id", "match_confidence", "match_grade", "match_rule"
            ),
            on="sig",
        )
        .select(rid, "entity_id", "match_confidence", "match_grade", "match_rule")
        .sort(rid)
        .collect(engine="streaming")
    )
    del names
    if state["recorded_columns"]:
        recorded = pl.read_parquet(work / "recorded.parquet")
        links = links.join(recorded, on=rid, how="left", maintain_order="left")
    step("entities")

    if state["keep_pairs"]:
        scored = (
            pl.concat([pl.read_parquet(path).drop("pattern") for path in shard_paths]).sort("l", "r")
            if shard_paths
            else pl.DataFrame(schema={"l": pl.UInt32, "r": pl.UInt32, "probability": pl.Float64})
        )
    else:
        scored = above_review.drop("pattern").sort("l", "r")
    step("total")
    stats = {
        "records": links.height,
        "signatures": n,
        "given_normalised": state["given_normalised"],  # (records taken as normalised, not normalised here)
        "candidate_pairs": state["candidate_pairs"],
        "linked_pairs": counts["linked_pairs"],
        "refused_by_constraints": counts["refused_by_constraints"],
        "review_pairs": review.height,
        "entities": links["entity_id"].n_unique(),
        "lambda": prior,
        "pair_shards": len(shard_paths),
        "partitions": partitions,
        "largest_partition": state["largest_partition"],
        "largest_component": state["largest_component"],
        "match_rules": dict(links.group_by("match_rule").len().sort("match_rule").iter_rows()),
        "seconds": {k: round(v, 2) for k, v in clock.timings.items()},
        "peak_mb": clock.peaks,
        "cpu_seconds": clock.cpu,
    }
    model = {
        c.name: {
            "m": m[j].round(5).tolist(),
            "u": u[j].round(5).tolist(),
            "levels": ["null", *range(c.levels)],
        }
        for j, c in enumerate(spec.comparisons)
    }
    log.info("linked %s", stats)
    nodes = pl.DataFrame({"sig": pl.Series(np.arange(n), dtype=pl.UInt32), "node": node})
    assignments = sig_of.join(nodes.lazy(), on="sig", maintain_order="left")
    return Linkage(
        links=links,
        pairs=scored,
        review=review_pairs,
        model={"lambda": prior, **model},
        stats=stats,
        assignments=assignments,
    )


def resolve_link_partitions(work_dir: Path, spec: Spec, workers: int | None = None) -> None:
    """Every partition of a prepared work directory, ``workers`` at once (default: the spec's
    ``[scale] partition_workers``): what ``link`` does between ``prepare_link`` and ``finish_link``."""
    state = json.loads((Path(work_dir) / STATE_FILE).read_text("utf-8"))
    directories = [partition_dir(work_dir, number) for number in range(state["partitions"])]
    _resolve_partitions(directories, spec, Scale.of(spec).partition_workers if workers is None else workers)


def _resolve_partitions(directories: list[Path], spec: Spec, workers: int) -> list[dict[str, int]]:
    """Each partition directory resolved by the plain function a worker runs; with ``workers`` > 1
    several at once (``internals.pool.process_pool``: spawned processes, also inside an Airflow task
    under Celery). Partitions are independent and each writes its own file, so the result is the
    same however many run at once."""
    if workers <= 1 or len(directories) <= 1:
        return [resolve_partition_files(directory, spec) for directory in directories]
    from entity_resolution.internals.pool import process_pool

    with process_pool(min(workers, len(directories))) as pool:
        return list(pool.map(resolve_partition_files, directories, [spec] * len(directories)))


def _entity_names(clusters: pl.DataFrame, anchor_ids: dict[int, str]) -> pl.DataFrame:
    """Per cluster its entity id: its ``cluster_value`` (the USCC), its anchor, else the stable
    hash of its first record. A hash that another cluster holds as its anchor (an entity split
    after a merge kept the id minted from this cluster's record) goes back to the cluster it was
    minted from, and the other takes its own: two entities never share an id."""
    cluster_type = clusters.schema["cluster"]
    anchor_ids = dict(anchor_ids)
    while True:
        anchored = pl.DataFrame(
            {"cluster": list(anchor_ids), "anchor": list(anchor_ids.values())},
            schema={"cluster": cluster_type, "anchor": pl.String},
        )
        named = clusters.join(anchored, on="cluster", how="left")
        unnamed = named.filter(pl.col("cluster_value").is_null() & pl.col("anchor").is_null())
        hashed = pl.DataFrame(
            {
                "cluster": unnamed["cluster"],
                "hashed": [_stable_id(first) for first in unnamed["cluster_first_record"].to_list()],
            },
            schema={"cluster": cluster_type, "hashed": pl.String},
        )
        taken = hashed.join(anchored.rename({"cluster": "holder"}), left_on="hashed", right_on="anchor")
        if taken.height == 0:
            break
        for cluster_id, hashed_id, holder in taken.sort("cluster").iter_rows():
            del anchor_ids[holder]
            anchor_ids[cluster_id] = hashed_id
    return named.join(hashed, on="cluster", how="left").select(
        "cluster", pl.coalesce("cluster_value", "anchor", "hashed").alias("entity_id")
    )


_SCORED_SCHEMA = {"l": pl.UInt32, "r": pl.UInt32, "probability": pl.Float64}


def _read_part(base: Path, number: int, schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Partition ``number``'s rows routed to ``base/part=N/`` (none when nothing was routed to it)."""
    folder = base / f"part={number}"
    if not folder.exists():
        return pl.DataFrame(schema=schema)
    return pl.read_parquet(folder / "*.parquet", hive_partitioning=False)


def _review_pairs(review: pl.DataFrame, levels: np.ndarray, sig: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """Review-queue rows: one example record on each side, the levels and the probability."""
    rid = spec.id_column
    shown = [c for c in sig.columns if c not in ("sig", "first_record")]
    left = sig.select("sig", *shown, pl.col("first_record").alias("record"))
    out = review.join(left, left_on="l", right_on="sig", how="left").join(
        left, left_on="r", right_on="sig", how="left", suffix="_r"
    )
    out = out.rename({"record": f"{rid}_l", "record_r": f"{rid}_r"}).rename({c: f"{c}_l" for c in shown})
    for j, comparison in enumerate(spec.comparisons):
        out = out.with_columns(
            pl.Series(f"level_{comparison.name}", levels[:, j] if len(levels) else [], dtype=pl.Int8)
        )
    return out.drop("l", "r")
