"""Batch-level checks: is this delivery of a source fit to replace the last good one?

Row-level problems quarantine rows; these checks judge the batch as a whole. Before anything is
standardised (``check_batch``, no Great Expectations import): the file could be read at all, every
mapped column is there, the volume did not drop by more than the source's ``max_volume_drop``
against the last published run, and the newest record is not older than ``max_age_days``. Then the
raw suite (``expectations/<source>.raw.json``: schema and types, on a sample) runs in every
standardise shard, which imports Great Expectations anyway (~3 s a process), and validate judges
the batch by it before anything is promoted (``pipelines.quality.suites.raw_suite_problems``). A
batch that fails either is held back: a critical source fails the run, any other falls back to its
last good snapshot and the profiles it feeds are marked stale.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from foundation.errors import DataQualityError
from foundation.lake import Lake, write_json
from pipelines.night import report_path
from pipelines.sources.registry import SourceConfig
from pipelines.sources.watermarks import Watermark

log = logging.getLogger(__name__)


def check_batch(
    source: SourceConfig,
    extracted: dict[str, Any],
    base: Watermark | None,
    business_date: str,
) -> list[str]:
    """Every reason, short of the raw suite, to hold this batch back (empty: standardise it)."""
    if extracted.get("problem"):
        return [str(extracted["problem"])]
    problems: list[str] = []
    columns = set(extracted.get("columns") or [])
    missing = sorted(_mapped_columns(source) - columns) if columns else []
    if missing:
        added = sorted(columns - _mapped_columns(source))
        problems.append(
            f"schema drift: columns {missing} are missing or renamed (unmapped columns now "
            f"delivered: {added})"
        )
    rows = int(extracted.get("source_rows", 0))
    if base is not None and base.source_rows and rows < (1 - source.max_volume_drop) * base.source_rows:
        problems.append(
            f"volume dropped from {base.source_rows:,} rows ({base.business_date}) to {rows:,} "
            f"(more than {source.max_volume_drop:.0%})"
        )
    newest = extracted.get("newest")
    limit = date.fromisoformat(business_date) - timedelta(days=source.max_age_days)
    if rows and newest and datetime.fromisoformat(str(newest)).date() < limit:
        problems.append(
            f"stale data: the newest record changed on {str(newest)[:10]}, more than "
            f"{source.max_age_days} days before {business_date}"
        )
    if not rows:
        problems.append("the source holds no rows before the cutoff")
    return problems


def _mapped_columns(source: SourceConfig) -> set[str]:
    columns = {source.id_column, source.watermark}
    for spec in source.mapping.values():
        if isinstance(spec, str):
            columns.add(spec)
        elif isinstance(spec, dict):
            columns.update([spec["column"]] if "column" in spec else spec.get("coalesce", []))
    return columns


def judge_batch(lake: Lake, config: SourceConfig, problems: list[str]) -> dict[str, Any]:
    """Record the batch verdict; a held-back critical source stops the run."""
    result = {"source": config.name, "ok": not problems, "problems": problems, "critical": config.critical}
    write_json(result, report_path(lake, "batch", config.name))
    if problems:
        message = f"source '{config.name}' batch held back: " + "; ".join(problems)
        if config.critical:
            raise DataQualityError(message + " (the source is critical: the run stops)")
        log.warning("%s; its last good snapshot will be used and its profiles marked stale", message)
    return result
