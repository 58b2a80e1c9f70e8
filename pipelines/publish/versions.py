"""Publication: a complete, self-checking version directory, then an atomic switch of ``current``.

A version is written under a hidden staging name, renamed into place, checked against its own
manifest, and only then does the ``current`` symlink move to it (``os.replace`` of a symlink is
atomic), so a reader sees yesterday's complete version or today's, never a mixture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tomllib
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from foundation.dictionary import DictionaryError
from foundation.errors import PublishError
from foundation.lake import write_json
from foundation.settings import config_path
from pipelines.publish.datadict import (
    CHANGES_SCHEMA,
    DICTIONARY_FILE,
    PUBLISHING_FILE,
    described_schema,
    row_group_rows,
)

log = logging.getLogger(__name__)
DATASETS = ("profiles", "links", "entities")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_name(business_date: str, run_id: str) -> str:
    """Versions sort by business date; the run id hash tells re-runs of one date apart."""
    return f"{business_date}_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"


def publish_version(
    published_root: Path,
    business_date: str,
    run_id: str,
    frames: dict[str, pl.DataFrame],
    metadata: dict[str, Any],
    changed_entities: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """Write ``frames`` (profiles, links, entities) as a new version and make it ``current``
    (``changed_entities``: see ``compute_changes``)."""
    missing = [name for name in DATASETS if name not in frames]
    if missing:
        raise PublishError(f"version for {business_date} lacks datasets {missing}; nothing published")
    previous = published_root / "current"
    frames = {
        **frames,
        "changes": compute_changes(previous if previous.exists() else None, frames, changed_entities),
    }
    version = version_name(business_date, run_id)
    published_root.mkdir(parents=True, exist_ok=True)
    # A version directory is never rewritten in place (`current` may point at it): a re-publish of
    # the same run gets the next free suffix.
    suffix = 1
    while (published_root / (version if suffix == 1 else f"{version}-{suffix}")).exists():
        suffix += 1
    if suffix > 1:
        version = f"{version}-{suffix}"
    # leftovers of a publisher that was killed (one publisher runs at a time: max_active_runs=1)
    for stale in published_root.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in published_root.glob(".current-*.tmp"):
        stale.unlink(missing_ok=True)
    staging = published_root / f".staging-{version}"
    files: dict[str, dict[str, Any]] = {}
    rows_per_group = row_group_rows()
    for name in (*DATASETS, "changes"):
        target = staging / name / "part-00000.parquet"
        target.parent.mkdir(parents=True)
        write_described(frames[name], name, target, rows_per_group)
        files[f"{name}/{target.name}"] = {"rows": frames[name].height, "sha256": file_sha256(target)}
    manifest = {
        "version": version,
        "business_date": business_date,
        "run_id": run_id,
        "files": files,
        "counts": {name: frames[name].height for name in (*DATASETS, "changes")},
        "previous_version": current_version(published_root),
        **metadata,
    }
    write_json(manifest, staging / "manifest.json")
    final = published_root / version
    os.replace(staging, final)
    verify_version(final)
    _switch_current(published_root, version)
    pruned = prune_versions(published_root, business_date)
    return {
        "version": version,
        "path": str(final),
        "profiles": frames["profiles"].height,
        "changes": frames["changes"].height,
        "pruned": pruned,
    }


def write_described(frame: pl.DataFrame, table: str, target: Path, rows_per_group: int) -> None:
    """One published file: each column's label, unit and description in its Parquet field metadata
    (config/profile_columns.toml, config/published_columns.toml), row groups of ``rows_per_group``
    rows with min/max statistics. Written into the staging directory (renamed whole later)."""
    try:
        schema = described_schema(frame, table)
    except DictionaryError as exc:
        raise PublishError(f"{exc}; nothing published") from exc
    frame.write_parquet(
        target,
        compression="zstd",
        row_group_size=rows_per_group,
        statistics=True,
        arrow_schema=schema,
        metadata={"table": table, "data_dictionary": str(DICTIONARY_FILE)},
    )


def compute_changes(
    previous: Path | None, frames: dict[str, pl.DataFrame], changed_entities: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Per firm, what changed since the previous version: grade, firms and records that came or went,
    and records that moved between firms (merges and splits, old id -> new id).

    ``changed_entities`` (entity_id): when given, every other entity's profile (but for ``as_of``)
    and links are known to be the previous version's (an incremental night), so only these are
    compared; the result is the same."""
    if previous is None:
        return pl.DataFrame(schema=CHANGES_SCHEMA)

    def only(frame: pl.LazyFrame) -> pl.LazyFrame:
        return (
            frame
            if changed_entities is None
            else frame.join(changed_entities.lazy(), on="entity_id", how="semi")
        )

    old_profiles = only(pl.scan_parquet(previous / "profiles" / "*.parquet")).collect()
    new_profiles = only(frames["profiles"].lazy()).collect()
    reasons = _reason_changes(old_profiles, new_profiles)
    old_profiles = old_profiles.select("entity_id", "grade", "score")
    old_links = only(
        pl.scan_parquet(previous / "links" / "*.parquet").select("source", "source_record_id", "entity_id")
    ).collect()
    new_profiles = new_profiles.select("entity_id", "grade", "score")
    new_links = only(frames["links"].lazy().select("source", "source_record_id", "entity_id")).collect()
    both = old_profiles.join(new_profiles, on="entity_id", how="full", coalesce=True, suffix="_new")
    grade = both.filter(
        pl.col("grade").is_not_null()
        & pl.col("grade_new").is_not_null()
        & (pl.col("grade") != pl.col("grade_new"))
    ).select(
        "entity_id",
        pl.lit("grade_changed").alias("change"),
        pl.format("{} -> {} (score {} -> {})", "grade", "grade_new", "score", "score_new").alias("detail"),
    )
    new_firms = both.filter(pl.col("grade").is_null()).select(
        "entity_id", pl.lit("new_firm").alias("change"), pl.format("grade {}", "grade_new").alias("detail")
    )
    gone_firms = both.filter(pl.col("grade_new").is_null()).select(
        "entity_id", pl.lit("firm_gone").alias("change"), pl.format("was grade {}", "grade").alias("detail")
    )
    record = pl.col("source") + ":" + pl.col("source_record_id")
    joined = old_links.join(
        new_links, on=["source", "source_record_id"], how="full", coalesce=True, suffix="_new"
    )
    new_records = joined.filter(pl.col("entity_id").is_null()).select(
        pl.col("entity_id_new").alias("entity_id"),
        pl.lit("new_record").alias("change"),
        record.alias("detail"),
    )
    gone_records = joined.filter(pl.col("entity_id_new").is_null()).select(
        "entity_id", pl.lit("record_gone").alias("change"), record.alias("detail")
    )
    moved = joined.filter(
        pl.col("entity_id").is_not_null()
        & pl.col("entity_id_new").is_not_null()
        & (pl.col("entity_id") != pl.col("entity_id_new"))
    )
    pairs = moved.group_by("entity_id", "entity_id_new").agg(pl.len().alias("records"))
    fan_in = pairs.group_by("entity_id_new").agg(pl.col("entity_id").n_unique().alias("olds"))
    fan_out = pairs.group_by("entity_id").agg(pl.col("entity_id_new").n_unique().alias("news"))
    remapped = (
        pairs.join(fan_in, on="entity_id_new")
        .join(fan_out, on="entity_id")
        .select(
            pl.col("entity_id_new").alias("entity_id"),
            pl.when(pl.col("olds") > 1)
            .then(pl.lit("merged_from"))
            .when(pl.col("news") > 1)
            .then(pl.lit("split_from"))
            .otherwise(pl.lit("renumbered_from"))
            .alias("change"),
            pl.format("{} record(s)", "records").alias("detail"),
            pl.col("entity_id").alias("related_entity_id"),
        )
    )
    parts = [
        f.with_columns(related_entity_id=pl.lit(None, dtype=pl.String))
        for f in (grade, new_firms, gone_firms, new_records, gone_records, reasons)
    ] + [remapped]
    return pl.concat([p.select(list(CHANGES_SCHEMA)).cast(CHANGES_SCHEMA) for p in parts]).sort(
        "entity_id", "change", "detail", "related_entity_id", nulls_last=True
    )


#: the structured explanation columns of a profile and the key naming what each entry is for
EXPLANATIONS = {"deductions": "rule", "vetoes": "list"}


def _reason_changes(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """Deductions and vetoes that came into force or expired, one change per (rule or list, record):
    a new record under a rule already in force is one ``reason_added``, not the whole reason again."""

    def itemised(frame: pl.DataFrame, column: str) -> bool:
        dtype = frame.schema.get(column)
        return isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)

    columns = [c for c in EXPLANATIONS if itemised(old, c) and itemised(new, c)]
    if not columns:
        return pl.DataFrame(schema={"entity_id": pl.String, "change": pl.String, "detail": pl.String})

    def exploded(frame: pl.DataFrame) -> pl.DataFrame:
        return pl.concat(
            [
                frame.select("entity_id", pl.col(c).alias("entry"))
                .explode("entry")
                .drop_nulls("entry")
                .select(
                    "entity_id",
                    pl.col("entry").struct.field(key).alias("what"),
                    pl.col("entry").struct.field("records"),
                )
                .explode("records")
                .select("entity_id", pl.format("{}: {}", "what", "records").alias("detail"))
                for c, key in EXPLANATIONS.items()
                if c in columns
            ]
        ).unique()

    before, after = exploded(old), exploded(new)
    # firms in both versions (a firm that came or went is reported as such, not reason by reason)
    common = old.select("entity_id").join(new.select("entity_id"), on="entity_id")
    added = after.join(before, on=["entity_id", "detail"], how="anti").join(common, on="entity_id")
    expired = before.join(after, on=["entity_id", "detail"], how="anti").join(common, on="entity_id")
    return pl.concat(
        [
            added.select("entity_id", pl.lit("reason_added").alias("change"), "detail"),
            expired.select("entity_id", pl.lit("reason_expired").alias("change"), "detail"),
        ]
    )


def retention_days(config: Path | None = None) -> int:
    """Days a version is kept (config/publishing.toml, or CREDIT_PUBLISHING_CONFIG's, resolved now)."""
    config = config or config_path(PUBLISHING_FILE)
    return int(tomllib.loads(config.read_text("utf-8")).get("retention_days", 30))


def prune_versions(
    published_root: Path, newest_business_date: str, keep_days: int | None = None
) -> list[str]:
    """Remove versions whose business date is more than ``keep_days`` before the newest one;
    never the version ``current`` points at."""
    keep_days = retention_days() if keep_days is None else keep_days
    cutoff = date.fromisoformat(newest_business_date) - timedelta(days=keep_days)
    current = current_version(published_root)
    pruned = []
    for entry in sorted(published_root.iterdir()):
        if entry.name.startswith(".") or entry.name in ("current", current) or not entry.is_dir():
            continue
        try:
            version_date = date.fromisoformat(entry.name[:10])
        except ValueError:
            continue
        if version_date < cutoff:
            shutil.rmtree(entry)
            pruned.append(entry.name)
    if pruned:
        log.info("pruned %d published versions older than %s: %s", len(pruned), cutoff, pruned)
    return pruned


def verify_version(version_dir: Path) -> dict[str, Any]:
    """Refuse a version whose files do not match its manifest (missing, extra rows, changed bytes)."""
    manifest_path = version_dir / "manifest.json"
    if not manifest_path.exists():
        raise PublishError(f"{version_dir} has no manifest.json")
    manifest = json.loads(manifest_path.read_text("utf-8"))
    for relative, expected in manifest["files"].items():
        path = version_dir / relative
        if not path.exists():
            raise PublishError(f"{version_dir.name}: {relative} is missing")
        if file_sha256(path) != expected["sha256"]:
            raise PublishError(f"{version_dir.name}: {relative} does not match its manifest checksum")
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        if rows != expected["rows"]:
            raise PublishError(
                f"{version_dir.name}: {relative} has {rows} rows, manifest says {expected['rows']}"
            )
    return manifest


def _switch_current(published_root: Path, version: str) -> None:
    link = published_root / "current"
    tmp = published_root / f".current-{version}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version, target_is_directory=True)
    os.replace(tmp, link)


def current_version(published_root: Path) -> str | None:
    link = published_root / "current"
    return os.readlink(link) if link.is_symlink() else None
