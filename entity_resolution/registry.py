"""Stable entity ids across runs: a persisted registry of who each record belonged to.

A firm with a valid USCC is keyed by it. Any other entity keeps the id it had as long as it keeps
most of its records; new entities get a new id. When two entities become one, the smaller one's
id is recorded as ``merged`` into the survivor; when one falls apart, the pieces that lose the id
are recorded as ``split`` from it; an entity that gains a USCC is ``renumbered``. So an id held by
a regulator never dangles: ``resolve_id`` follows the history to the entity that holds it now.

Files in the registry folder (Parquet, each written atomically):
- ``members.parquet``: record_id, entity_id, first_seen, last_seen
- ``history.parquet``: run, old_id, new_id, kind (merged | split | renumbered)
- ``representatives.parquet``: per entity a record for each of its codes and up to three of its
  names (the spec's input columns), against which an incremental run links new records without
  re-linking everything; with each its keys (``BLOCK_KEYS``) and its fields as the engine
  normalises them (``NORMALISED``, with the normaliser's fingerprint ``NORMALISED_BY``), so a
  night neither normalises nor keys the known entities again
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from foundation.lake import write_parquet

HISTORY_SCHEMA = {"run": pl.String, "old_id": pl.String, "new_id": pl.String, "kind": pl.String}
MEMBER_SCHEMA = {
    "record_id": pl.String,
    "entity_id": pl.String,
    "first_seen": pl.String,
    "last_seen": pl.String,
}
#: names per entity an incremental run compares new records with (besides one record per code)
REPRESENTATIVES = 3
#: the columns whose values reach an entity by exact key: every value an entity holds keeps a
#: representative, so a new record with an old registration number still meets the record that
#: cross-walks it to the USCC
CODE_COLUMNS = ("uscc", "org_code", "reg_no")
#: the column of the company name as written (the enterprise spec's company-name input): the
#: representatives' distinct names are chosen on it, and the one-off spellings are counted on it
NAME_COLUMN = "name"
#: a representative's blocking and exact keys as the engine normalises them (a list of strings),
#: so an incremental run compares new records only with the representatives they can meet
BLOCK_KEYS = "block_keys"
#: a representative's fields as the engine normalises them (one-off spellings as written; a
#: struct) and the fingerprint of the normaliser that made them, stored beside its keys so an
#: incremental night links the representatives it reaches without normalising them again
NORMALISED, NORMALISED_BY = "normalised", "normalised_by"
#: rows per row group of the representatives' file: a night streams it through, and its rows are
#: wide (each carries its normalised fields), so a streaming read holds fewer of them at once
REPRESENTATIVE_ROW_GROUP = 65_536
#: the columns ``keys_of`` gives a representative (besides its record_id)
KEYED_COLUMNS = (BLOCK_KEYS, NORMALISED, NORMALISED_BY)


def representative_rows(records: pl.DataFrame) -> pl.Series:
    """The rows of ``records`` (entity_id, record_id, NAME_COLUMN and the codes) that are their
    entities' representatives, in (entity_id, record_id) order: per entity one record for each
    distinct code it holds and its first REPRESENTATIVES distinct names (first by record id, so the
    choice is deterministic). Chosen on those columns alone: a caller gathers whatever it holds
    per row (a night's registry rows carry their keys and normalised fields, costly to sort)."""
    codes = [c for c in CODE_COLUMNS if c in records.columns]
    ordered = (
        records.select("entity_id", "record_id", NAME_COLUMN, *codes)
        .with_row_index("_row")
        .sort("entity_id", "record_id")
    )
    by_code = [
        ordered.filter(pl.col(c).is_not_null()).unique(["entity_id", c], keep="first", maintain_order=True)
        for c in codes
    ]
    by_name = (
        ordered.unique(["entity_id", NAME_COLUMN], keep="first", maintain_order=True)
        .group_by("entity_id", maintain_order=True)
        .head(REPRESENTATIVES)
        .select(ordered.columns)
    )
    return pl.concat([*by_code, by_name]).unique("record_id").sort("entity_id", "record_id")["_row"]


def representatives_of(records: pl.DataFrame) -> pl.DataFrame:
    """Per entity its representatives (``representative_rows``), whole rows."""
    return records[representative_rows(records)]


def _input_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in KEYED_COLUMNS]


@dataclass
class Registry:
    folder: Path

    @property
    def members_path(self) -> Path:
        return self.folder / "members.parquet"

    @property
    def history_path(self) -> Path:
        return self.folder / "history.parquet"

    @property
    def representatives_path(self) -> Path:
        return self.folder / "representatives.parquet"

    def members(self) -> pl.DataFrame:
        return (
            pl.read_parquet(self.members_path)
            if self.members_path.exists()
            else pl.DataFrame(schema=MEMBER_SCHEMA)
        )

    def history(self) -> pl.DataFrame:
        return (
            pl.read_parquet(self.history_path)
            if self.history_path.exists()
            else pl.DataFrame(schema=HISTORY_SCHEMA)
        )

    def representatives(self) -> pl.DataFrame | None:
        return pl.read_parquet(self.representatives_path) if self.representatives_path.exists() else None

    def scan_representatives(self) -> pl.LazyFrame | None:
        """The representatives as a scan (None when there are none): read only as far as asked."""
        return pl.scan_parquet(self.representatives_path) if self.representatives_path.exists() else None

    def anchors(self) -> dict[str, str]:
        """record id -> the entity id it held (to name the clusters of the next run)."""
        members = self.members()
        return dict(zip(members["record_id"].to_list(), members["entity_id"].to_list(), strict=True))

    def resolve_id(self, entity_id: str) -> str:
        """The id that holds an old id's firm today (following merges and renumbering)."""
        moves = {
            old: new
            for old, new, kind in self.history().select("old_id", "new_id", "kind").iter_rows()
            if kind in ("merged", "renumbered")
        }
        seen = set()
        while entity_id in moves and entity_id not in seen:
            seen.add(entity_id)
            entity_id = moves[entity_id]
        return entity_id

    def update(
        self,
        links: pl.DataFrame,
        records: pl.DataFrame,
        run: str,
        id_column: str = "record_id",
        partial: bool = False,
        members: pl.DataFrame | None = None,
        keys_of: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> pl.DataFrame:
        """Record this run's links; return the changes (old id -> new id) it made.

        ``links``: record_id, entity_id (ids already chosen with ``anchors()``); ``records``: the
        input rows, for the representatives. ``partial``: the links cover only some records (an
        incremental run); the others keep their entities. ``members``: the members as the caller
        read them already (``members()``, before this run). ``keys_of``: as ``key_representatives``'s,
        to store this run's representatives with their keys in the same write.
        """
        now = links.select(pl.col(id_column).alias("record_id"), "entity_id")
        previous = (members if members is not None else self.members()) if partial else None
        change_frame = self.record_members(now, run, partial, previous)
        reps = records.rename({id_column: "record_id"}).join(now, on="record_id")
        if keys_of is not None:
            reps = with_block_keys(reps, keys_of)
        if previous is not None and self.representatives_path.exists():
            self._update_representatives(reps, now, previous)
        else:
            self.store_representatives(representatives_of(reps))
        return change_frame

    def _update_representatives(self, reps: pl.DataFrame, now: pl.DataFrame, previous: pl.DataFrame) -> None:
        """An incremental run's representatives: the stored ones stay unless their record changed
        (it is among ``reps``, tonight's), and a kept one follows its record when this run moved it
        (e.g. its entity was renumbered); only the entities that gained, lost or changed records
        choose theirs again (``representatives_of`` is per entity and keeps its own choice). The
        stored file streams through: the others keep their place (in entity_id, record_id order)
        and the few chosen again are merged in, so the 4M representatives of a city are never read
        whole."""
        stored = pl.scan_parquet(self.representatives_path)
        kept = (
            stored.join(reps.lazy().select("record_id"), on="record_id", how="anti", maintain_order="left")
            .join(now.lazy(), on="record_id", how="left", suffix="_now", maintain_order="left")
            .with_columns(pl.coalesce("entity_id_now", "entity_id").alias("entity_id"))
            .drop("entity_id_now")
        )
        schema = kept.collect_schema()
        # (unkeyed tonight: keyed after, by key_representatives)
        reps = reps.with_columns(
            pl.lit(None, schema[c]).alias(c) for c in KEYED_COLUMNS if c in schema and c not in reps.columns
        )
        reps = reps.select(schema.names()).cast(dict(schema), strict=False)
        affected = pl.concat([now["entity_id"], previous.join(now, on="record_id", how="semi")["entity_id"]])
        again = pl.col("entity_id").is_in(affected.unique().implode())
        chosen = representatives_of(
            pl.concat([kept.filter(again).collect(engine="streaming"), reps.filter(again)])
        )
        # (tonight's records all belong to affected entities: none of them is among the rest)
        rest = pl.concat([kept.filter(~again), reps.filter(~again).lazy()])
        in_order = (pl.col("entity_id") >= pl.col("entity_id").shift(1)).all()
        if reps.filter(~again).height or not stored.select(in_order).collect(engine="streaming").item():
            self.store_representatives(
                pl.concat([rest.collect(engine="streaming"), chosen]).sort("entity_id", "record_id")
            )
        else:  # an entity is either chosen again or kept whole: merging on its id keeps record order
            self.store_representatives(rest.merge_sorted(chosen.lazy(), key="entity_id"))

    def record_members(
        self, now: pl.DataFrame, run: str, partial: bool = False, previous: pl.DataFrame | None = None
    ) -> pl.DataFrame:
        """The members and history part of ``update`` (``now``: record_id, entity_id); the changes.
        A full run's members are written by a streaming query from ``now`` in record id order (as
        a full run's links come): no second copy of them is sorted. ``previous``: the members as
        read already (not read a second time: 10M of them are 580 MB)."""
        previous = self.members() if previous is None else previous
        moved = previous.join(now, on="record_id", suffix="_new").filter(
            pl.col("entity_id") != pl.col("entity_id_new")
        )
        changes = []
        if moved.height:
            flows = moved.group_by("entity_id", "entity_id_new").len()
            still = set(now["entity_id"].unique().to_list())
            # largest flows first, ties by ids: the group order of a group_by is not fixed
            ordered = flows.sort(["len", "entity_id", "entity_id_new"], descending=[True, False, False])
            for old, new, _ in ordered.iter_rows():
                if old in still:
                    kind = "split"  # the old id lives on elsewhere: these records left it
                elif not old.startswith("X") or new.startswith("X"):
                    kind = "merged"
                else:
                    kind = "renumbered"  # a code-less entity found its USCC
                changes.append((run, old, new, kind))
        change_frame = pl.DataFrame(changes, schema=HISTORY_SCHEMA, orient="row").unique(
            ["old_id", "new_id"], keep="first", maintain_order=True
        )
        del moved
        merged = (
            now.lazy()
            .join(
                previous.lazy().select("record_id", "first_seen"),
                on="record_id",
                how="left",
                maintain_order="left",
            )
            .with_columns(pl.col("first_seen").fill_null(run), pl.lit(run).alias("last_seen"))
            .select(list(MEMBER_SCHEMA))
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        if partial:
            # the night's few members merged into the kept ones (in record id order as written),
            # not the whole table sorted again
            # (streamed into the file: the 10M members of a city are not copied twice in memory)
            kept = previous.lazy().join(
                now.lazy().select("record_id"), on="record_id", how="anti", maintain_order="left"
            )
            tonight = merged.collect().sort("record_id")
            members = (
                kept.merge_sorted(tonight.lazy(), key="record_id")
                if previous["record_id"].is_sorted()
                else pl.concat([kept.collect(), tonight]).sort("record_id")
            )
            write_parquet(members, self.members_path)
        elif not now["record_id"].is_sorted():
            write_parquet(merged.collect().sort("record_id"), self.members_path)
        else:  # a full run's links come in record id order: streamed so, not sorted again
            write_parquet(merged, self.members_path)
        write_parquet(pl.concat([self.history(), change_frame]), self.history_path)
        return change_frame

    def store_representatives(self, reps: pl.DataFrame | pl.LazyFrame) -> None:
        """Write the representatives (in entity_id, record_id order: a lazy frame of parts in that
        order streams into the file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_parquet(reps, self.representatives_path, row_group_size=REPRESENTATIVE_ROW_GROUP)

    def key_representatives(self, keys_of: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        """Store each representative's ``BLOCK_KEYS`` (``keys_of``: input rows -> record_id,
        BLOCK_KEYS), computed only for the representatives that lack them (none: not read)."""
        if not self.representatives_path.exists():
            return
        stored = pl.scan_parquet(self.representatives_path)
        lacking = (
            pl.col(BLOCK_KEYS).is_null().sum() if BLOCK_KEYS in stored.collect_schema().names() else pl.len()
        )
        if stored.select(lacking).collect().item():
            write_parquet(
                with_block_keys(pl.read_parquet(self.representatives_path), keys_of),
                self.representatives_path,
            )


def with_block_keys(reps: pl.DataFrame, keys_of: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
    """Representatives (in entity_id, record_id order) with their ``BLOCK_KEYS`` and whatever else
    ``keys_of`` gives (``KEYED_COLUMNS``), computed for those that lack keys."""
    if BLOCK_KEYS not in reps.columns:
        reps = reps.with_columns(pl.lit(None, pl.List(pl.String)).alias(BLOCK_KEYS))
    missing = reps.filter(pl.col(BLOCK_KEYS).is_null())
    if missing.is_empty():
        return reps
    keys = keys_of(missing.select(_input_columns(missing)).drop("entity_id"))
    given = [c for c in keys.columns if c != "record_id"]
    columns = [*reps.columns, *(c for c in given if c not in reps.columns)]
    keyed = (
        missing.drop(given, strict=False)
        .join(keys, on="record_id", how="left")
        .with_columns(pl.col(BLOCK_KEYS).fill_null(pl.lit([], pl.List(pl.String))))
    )
    have = reps.filter(pl.col(BLOCK_KEYS).is_not_null())
    have = have.with_columns(pl.lit(None, keys.schema[c]).alias(c) for c in given if c not in have.columns)
    reps = pl.concat([have.select(columns), keyed.select(columns)], how="vertical_relaxed")
    return reps.sort("entity_id", "record_id")
