"""The validate stage of a source: the raw suite, the standardised suite, quarantine, and the
promotion of the accepted changes into the source's snapshot (or the last good one, held back).
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from foundation.errors import DataQualityError
from foundation.lake import RAW_PARTS, write_json, write_parquet
from pipelines.night import night_lake, read_report, rejects_path, report_path, suite_parameters
from pipelines.quality import suites as quality
from pipelines.quality.suites import raw_suite_problems, stage_runner
from pipelines.sources.check import judge_batch
from pipelines.sources.registry import load_sources
from pipelines.sources.snapshot import merge_snapshot
from pipelines.sources.watermarks import previous

log = logging.getLogger(__name__)


def validate_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """Promote a batch: GX row checks on the changes, quarantine with reasons, upsert into the
    snapshot. A batch the check stage held back is quarantined whole and the last good snapshot
    is carried forward (stale)."""
    lake = night_lake(lake_dir, business_date)
    runner = stage_runner(lake)
    extracted = read_report(lake, "extract", source)
    batch = read_report(lake, "batch", source)
    if batch["ok"]:  # the raw suite, here because this task imports Great Expectations anyway
        config = load_sources()[source]
        batch = judge_batch(lake, config, raw_suite_problems(config, lake.raw_parts(source), runner))
    base = previous(lake.root, source, business_date)
    rejects = pl.read_parquet(rejects_path(lake, source))
    if batch["ok"]:
        # with no earlier snapshot the accepted changes are the snapshot; otherwise they are upserted
        delta_path = lake.work / "accepted_changes" / f"{source}.parquet" if base else lake.accepted(source)
        result = quality.validate_source(
            source,
            lake.staged(source),
            delta_path,
            lake.quarantine(source),
            raw_path=lake.raw_parts(source),
            rejects=rejects,
            parameters=suite_parameters(business_date),
            runner=runner,
        )
        snapshot = (
            merge_snapshot(base.snapshot, delta_path, lake.accepted(source)) if base else result["accepted"]
        )
        state = {"newest": extracted["newest"], "source_rows": extracted["source_rows"], "stale": False}
    else:
        if base is None:
            raise DataQualityError(
                f"source '{source}' batch held back ({'; '.join(batch['problems'])}) and no earlier good "
                f"snapshot exists to fall back on; nothing can be published"
            )
        reason = "batch held back: " + "; ".join(batch["problems"])
        # every extract shard's part, even one that could not read its rows (no columns)
        parts = [pl.read_parquet(part) for part in sorted(lake.raw(source).glob(RAW_PARTS))]
        held = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
        quarantined = pl.concat(
            [
                quality.rejects_to_quarantine(source, rejects, stage="extract"),
                quality.conform_quarantine(
                    pl.DataFrame({"original": quality.original_values(held)}).with_columns(
                        pl.lit(source).alias("source"),
                        pl.lit("batch").alias("stage"),
                        pl.lit(reason).alias("reason"),
                        pl.concat_list(pl.lit("batch:promotable")).alias("failed_expectations"),
                    )
                ),
            ]
        )
        write_parquet(quarantined, lake.quarantine(source))
        snapshot = write_parquet(pl.scan_parquet(base.snapshot), lake.accepted(source))
        result = {
            "source": source,
            "extracted": held.height + rejects.height,
            "accepted": 0,
            "quarantined": quarantined.height,
        }
        state = {"newest": base.newest, "source_rows": base.source_rows, "stale": True}
        log.warning(
            "source %s: %s; using the snapshot of %s (%d records)",
            source,
            reason,
            base.business_date,
            snapshot,
        )
    counts = {k: result[k] for k in ("source", "extracted", "accepted", "quarantined")}
    report = {
        **counts,
        **state,
        "snapshot_records": snapshot,
        "snapshot": str(lake.accepted(source)),
        "base_date": base.business_date if base else None,
        "problems": batch["problems"],
    }
    write_json(report, report_path(lake, "validation", source))
    return {
        **counts,
        "snapshot_records": snapshot,
        "stale": state["stale"],
        "accepted_path": str(lake.accepted(source)),
        "quarantine_path": str(lake.quarantine(source)),
    }
