"""A source's accepted snapshot: the last one with the night's accepted changes upserted, and all
sources' snapshots read together (what resolution, profiles and the books read).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import polars as pl

from foundation.lake import Lake, write_parquet
from pipelines.sources.registry import load_sources

#: rows per row group of what is written from several parts (a snapshot, the accepted changes, the
#: quarantine): a lazy write otherwise cuts row groups as its input's chunks come, which differ with
#: the shard count, and the file would not be the same bytes whatever the count. Polars' default for
#: a frame written whole.
ROW_GROUP_ROWS = 512**2


def merge_parts(parts: list[Path]) -> pl.LazyFrame:
    """Accepted changes kept in parts (one per shard), each sorted by record id and holding ids no
    other holds, as one frame sorted by record id, lazily: one after the other where the parts' id
    ranges follow each other (the extract cuts shards by id, so they usually do), merged otherwise
    (a merge holds more of its inputs at once)."""
    if not parts:
        raise ValueError("no parts to merge")
    frames = [pl.scan_parquet(part) for part in parts]
    key = pl.col("source_record_id")
    bounds = pl.concat(
        [frame.select(key.min().alias("low"), key.max().alias("high")) for frame in frames]
    ).collect()
    ranges = bounds.drop_nulls().rows()
    if all(high < low for (_, high), (low, _) in itertools.pairwise(ranges)):
        return pl.concat(frames)
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.merge_sorted(frame, key="source_record_id")
    return merged


def merge_snapshot(base: Path, delta: Path, target: Path) -> int:
    """The source's full accepted state: the last snapshot with this run's accepted rows upserted
    (a record's newest accepted version wins; a record whose new version was quarantined keeps its
    last good version)."""
    changed = pl.scan_parquet(delta)
    kept = pl.scan_parquet(base).join(
        changed.select("source_record_id"), on="source_record_id", how="anti", maintain_order="left"
    )
    # both are sorted by record id (snapshots are written so, the accepted changes too) and hold no
    # id in common: merged, not sorted again (the snapshot is the night's largest file per source)
    return write_parquet(
        kept.merge_sorted(changed, key="source_record_id"), target, row_group_size=ROW_GROUP_ROWS
    )


def accepted_records(lake: Lake) -> pl.LazyFrame:
    paths = [lake.accepted(name) for name in load_sources()]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"accepted data missing for {missing} in {lake.root}")
    return pl.concat([pl.scan_parquet(p) for p in paths], how="vertical_relaxed")
