"""A source's batch from raw to its snapshot, one shard at a time where it is large.

``standardise_source`` runs once per extract shard (Airflow maps it over the shards ``check``
lists): it maps the shard's raw part onto the canonical schema and checks each row with the
standardised suite, writing the shard's staged, accepted and quarantined rows, unless the raw suite
fails on the batch's sample (which every shard judges alike). Great Expectations runs only there.
``validate_source`` gathers the shards and decides what needs the whole batch: the raw suite's
verdict (which may hold the batch back), the batch-level expectations (a suite failure no row
carries, record ids unique across shards, every raw row accounted for), then the quarantine and the
upsert of the accepted changes into the source's snapshot, streamed, or the last good snapshot
carried forward.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from foundation.errors import DataQualityError
from foundation.lake import RAW_PARTS, Lake, write_json, write_parquet
from pipelines.night import (
    night_lake,
    part_path,
    read_report,
    read_shard_reports,
    rejects_path,
    report_path,
    shard_folder,
    suite_parameters,
)
from pipelines.quality import suites as quality
from pipelines.quality.suites import raw_suite_problems, stage_runner
from pipelines.sources.check import judge_batch
from pipelines.sources.registry import load_sources
from pipelines.sources.snapshot import ROW_GROUP_ROWS, merge_parts, merge_snapshot
from pipelines.sources.standardise import standardise
from pipelines.sources.watermarks import previous

log = logging.getLogger(__name__)

#: the shard whose raw-suite results on the batch's sample are kept (for Data Docs) and judged
SAMPLING_SHARD = 0


def _shard_report(lake: Lake, source: str, shard: int) -> Path:
    """Where a standardise shard writes its report (``read_shard_reports`` reads them in order)."""
    return part_path(shard_folder(lake, source, "report"), shard).with_suffix(".json")


def standardise_source(source: str, lake_dir: str, business_date: str, shard: int = 0) -> dict[str, Any]:
    """One extract shard of the batch: its raw part onto the canonical schema (a staged part), each
    row checked with the standardised suite (accepted changes and quarantined rows, with reasons and
    the row as delivered, for validate to gather). Every shard first runs the raw suite on the
    batch's sample (its first ``RAW_SAMPLE_ROWS`` rows, across the parts, as one task over the whole
    batch would): where it fails, the batch will be held back and its rows are not checked (a
    drifted column fails every row, the costliest validation there is). The sampling shard's
    results go to Data Docs, the others' are the same. A batch-level failure is recorded, not
    raised: validate judges it after the raw suite."""
    lake = night_lake(lake_dir, business_date)
    config = load_sources()[source]
    if not read_report(lake, "batch", source)["ok"]:  # check listed no shards: nothing to do
        return {"source": source, "shard": shard, "staged": 0, "skipped": "batch held back"}
    runner = stage_runner(lake)
    raw = lake.raw_part(source, shard)
    staged = part_path(lake.staged(source), shard)
    rows = standardise(config, raw, staged)
    sample_runner = runner if shard == SAMPLING_SHARD else quality.SuiteRunner()
    raw_problems = raw_suite_problems(config, lake.raw_parts(source), sample_runner)
    counts, failures = {"accepted": 0, "quarantined": 0}, []
    if not raw_problems:
        try:
            result = quality.validate_source(
                source,
                staged,
                part_path(shard_folder(lake, source, "accepted"), shard),
                part_path(shard_folder(lake, source, "quarantine"), shard),
                raw_path=raw,
                parameters=suite_parameters(business_date),
                runner=runner,
            )
            counts = {k: result[k] for k in ("accepted", "quarantined")}
        except DataQualityError as exc:  # no row carries it: the whole batch fails
            failures = [str(exc)]
    report = {
        "source": source,
        "shard": shard,
        "staged": rows,
        **counts,
        "raw_suite_problems": raw_problems,
        "batch_failures": failures,
    }
    write_json(report, _shard_report(lake, source, shard))
    return {**report, "path": str(staged)}


def _gather_shards(lake: Lake, source: str, shards: int) -> list[dict[str, Any]]:
    """The reports of the batch's standardise shards, in shard order; a missing one is an error."""
    return read_shard_reports(
        shard_folder(lake, source, "report"), shards, f"source '{source}': standardise", lake
    )


def _batch_failures(
    lake: Lake, source: str, extracted: dict[str, Any], reports: list[dict[str, Any]]
) -> list[str]:
    """What fails the whole batch beyond its rows: a shard's suite failure no row carries, a raw row
    no shard standardised, a record id standardised in two shards (shards are ranges of the id
    column, so a record's versions share one; the suite's uniqueness check sees one shard)."""
    failures = [failure for report in reports for failure in report["batch_failures"]]
    staged = sum(int(report["staged"]) for report in reports)
    if staged != int(extracted["rows"]):
        failures.append(
            f"source '{source}': {staged:,} rows standardised of the {extracted['rows']:,} extracted"
        )
    if len(reports) > 1:
        ids = pl.concat(
            [
                pl.scan_parquet(part_path(lake.staged(source), r["shard"]))
                .select("source_record_id")
                .unique()
                .with_columns(pl.lit(r["shard"]).alias("shard"))
                for r in reports
            ]
        )
        shared = (
            ids.drop_nulls("source_record_id")
            .group_by("source_record_id")
            .len()
            .filter(pl.col("len") > 1)
            .select("source_record_id")
            .sort("source_record_id")
            .head(10)
            .collect(engine="streaming")
        )
        if shared.height:
            failures.append(
                f"source '{source}': record ids in more than one shard (e.g. "
                f"{shared['source_record_id'].to_list()}); the extract cuts shards by id, so they "
                "differ only in their raw type"
            )
    return failures


def validate_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """Promote a batch, gathering its standardise shards: the raw suite's verdict (a failure holds
    the batch back, as ``check`` does), the batch-level failures (``DataQualityError``), then the
    quarantine (unreadable lines, then each shard's quarantined rows) and the accepted changes
    upserted into the snapshot. A held-back batch is quarantined whole and the last good snapshot
    carried forward (stale). Reads the shards' parts lazily: no whole batch in memory."""
    lake = night_lake(lake_dir, business_date)
    config = load_sources()[source]
    extracted = read_report(lake, "extract", source)
    batch = read_report(lake, "batch", source)
    reports = _gather_shards(lake, source, int(extracted["shards"])) if batch["ok"] else []
    if reports:
        batch = judge_batch(lake, config, reports[SAMPLING_SHARD]["raw_suite_problems"])
    base = previous(lake.root, source, business_date)
    rejects = pl.read_parquet(rejects_path(lake, source))
    if batch["ok"]:
        failures = _batch_failures(lake, source, extracted, reports)
        if failures:
            raise DataQualityError(
                f"source '{source}' failed batch-level expectations: " + "; ".join(failures)
            )
        # with no earlier snapshot the accepted changes are the snapshot; otherwise they are upserted
        delta_path = lake.work / "accepted_changes" / f"{source}.parquet" if base else lake.accepted(source)
        accepted = write_parquet(
            merge_parts([part_path(shard_folder(lake, source, "accepted"), r["shard"]) for r in reports]),
            delta_path,
            row_group_size=ROW_GROUP_ROWS,
        )
        quarantined = write_parquet(
            pl.concat(
                [
                    quality.rejects_to_quarantine(source, rejects).lazy(),
                    *(
                        pl.scan_parquet(part_path(shard_folder(lake, source, "quarantine"), r["shard"]))
                        for r in reports
                    ),
                ]
            ),
            lake.quarantine(source),
            row_group_size=ROW_GROUP_ROWS,
        )
        snapshot = merge_snapshot(base.snapshot, delta_path, lake.accepted(source)) if base else accepted
        result = {
            "source": source,
            "extracted": sum(int(r["staged"]) for r in reports) + rejects.height,
            "accepted": accepted,
            "quarantined": quarantined,
        }
        state = {"newest": extracted["newest"], "source_rows": extracted["source_rows"], "stale": False}
    else:
        if base is None:
            raise DataQualityError(
                f"source '{source}' batch held back ({'; '.join(batch['problems'])}) and no earlier good "
                f"snapshot exists to fall back on; nothing can be published"
            )
        reason = "batch held back: " + "; ".join(batch["problems"])
        # every extract shard's part, even one that could not read its rows (no columns)
        held = pl.concat(
            [pl.scan_parquet(part) for part in sorted(lake.raw(source).glob(RAW_PARTS))] or [pl.LazyFrame()],
            how="diagonal_relaxed",
        )
        quarantined = write_parquet(
            pl.concat(
                [
                    quality.rejects_to_quarantine(source, rejects, stage="extract").lazy(),
                    quality.conform_quarantine(
                        quality.original_rows(held).with_columns(
                            pl.lit(source).alias("source"),
                            pl.lit("batch").alias("stage"),
                            pl.lit(reason).alias("reason"),
                            pl.concat_list(pl.lit("batch:promotable")).alias("failed_expectations"),
                        )
                    ),
                ]
            ),
            lake.quarantine(source),
            row_group_size=ROW_GROUP_ROWS,
        )
        snapshot = write_parquet(
            pl.scan_parquet(base.snapshot), lake.accepted(source), row_group_size=ROW_GROUP_ROWS
        )
        # every row extracted is quarantined: the unreadable lines and the held rows
        result = {"source": source, "extracted": quarantined, "accepted": 0, "quarantined": quarantined}
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
        "shards": len(reports),
        "snapshot_records": snapshot,
        "stale": state["stale"],
        "accepted_path": str(lake.accepted(source)),
        "quarantine_path": str(lake.quarantine(source)),
    }
