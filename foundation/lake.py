"""Where each stage reads and writes in the lake, and atomic writes for everything others read."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from foundation.settings import DEFAULT_LAKE, DEFAULT_SOURCES, REPO_ROOT  # noqa: F401 - re-exported

#: the Data Docs site's folder under ``LAKE/reports`` (beside the per-night folders): built by
#: pipelines.quality.data_docs, served by serving.run_reports
SITE_DIR = "data-docs"
#: a source's raw layer is a folder of parts, one per extract shard
RAW_PART = "part-{shard:05d}.parquet"
RAW_PARTS = "part-*.parquet"


@dataclass(frozen=True)
class Lake:
    """The lake's layout for one business date."""

    root: Path
    business_date: str

    def raw(self, source: str) -> Path:
        """The folder of the source's raw parts, one per extract shard (``raw_part``)."""
        return self.root / "raw" / self.business_date / f"{source}.parquet"

    def raw_part(self, source: str, shard: int) -> Path:
        """What extract shard ``shard`` of the source wrote (zero-padded: name order is shard order)."""
        return self.raw(source) / RAW_PART.format(shard=shard)

    def raw_parts(self, source: str) -> Path:
        """Every raw part of the source as one glob, which Polars reads in shard order (a temporary
        file an interrupted write left behind does not match it)."""
        return self.raw(source) / RAW_PARTS

    def staged(self, source: str) -> Path:
        return self.root / "staged" / self.business_date / f"{source}.parquet"

    def accepted(self, source: str) -> Path:
        return self.root / "accepted" / self.business_date / f"{source}.parquet"

    def quarantine(self, source: str) -> Path:
        return self.root / "quarantine" / source / f"{self.business_date}.parquet"

    @property
    def work(self) -> Path:
        return self.root / "work" / self.business_date

    @property
    def published(self) -> Path:
        return self.root / "published"

    @property
    def current(self) -> Path:
        return self.published / "current"

    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.business_date


@contextmanager
def atomic_path(target: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success, with
    ``mode`` (0o600 for secrets: the file is never visible with a wider mode)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # mkstemp makes owner-only files; readers are other users
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


# rows per row group of every file written here: a streamed write's row groups otherwise follow
# the engine's morsels, which vary with threads and timing, so the same rows gave different bytes
ROW_GROUP_ROWS = 512**2  # (polars' own default for a frame in memory)


def write_parquet(frame: pl.DataFrame | pl.LazyFrame, target: Path, **options: Any) -> int:
    """Write a frame (a lazy one streams) atomically; return its row count. zstd level 1 by
    default: a third faster to write than polars' default level for 8 % more bytes. The same rows
    give the same bytes, streamed or not, whatever the threads."""
    options = {"compression": "zstd", "compression_level": 1, "row_group_size": ROW_GROUP_ROWS, **options}
    with atomic_path(target) as tmp:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(tmp, **options)
        else:
            frame.write_parquet(tmp, **options)
    return pl.scan_parquet(target).select(pl.len()).collect().item()


def write_json(payload: Any, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(
            json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True, default=str), "utf-8"
        )


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written directory into place (old content removed after the swap)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        shutil.rmtree(old)
