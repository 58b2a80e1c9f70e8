"""Batch-level checks: is this delivery of a source fit to replace the last good one?

Row-level problems quarantine rows; these checks judge the batch as a whole. Before anything is
standardised (``check_batch``, no Great Expectations import): the file could be read at all, every
mapped column is there, the volume did not drop by more than the source's ``max_volume_drop``
against the last published run, and the newest record is not older than ``max_age_days``. Then, in
the validate task, which imports Great Expectations anyway (~5 s a process), the raw suite
(``expectations/<source>.raw.json``: schema and types, on a sample) must pass before the
standardised suite runs (``raw_suite_problems``). A batch that fails either is held back: a
critical source fails the run, any other falls back to its last good snapshot and the profiles it
feeds are marked stale.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pipelines.publish.watermarks import Watermark
from pipelines.sources.registry import SourceConfig

if TYPE_CHECKING:
    from pipelines.quality.suites import SuiteRunner

#: rows of the raw batch the raw suite looks at (schema and type drift show in any sample)
RAW_SAMPLE_ROWS = 20_000


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Raw values as the source wrote them, as text (the raw suite checks their shape)."""
    return frame.select(
        [
            (
                pl.col(name).list.eval(pl.element().cast(pl.String)).list.join(",")
                if isinstance(dtype, pl.List)
                else pl.col(name).cast(pl.String)
            ).alias(name)
            for name, dtype in frame.schema.items()
        ]
    )


def raw_suite_problems(source: SourceConfig, raw_path: Path, runner: SuiteRunner | None = None) -> list[str]:
    """Failures of the source's raw suite on a sample of the batch, as readable sentences
    (``runner``: the stage's suite runner, else one in memory)."""
    from pipelines.quality.suites import ROW_ID, run_suite

    suite = source.raw_suite or f"{source.name}.raw"
    sample = _as_text(pl.scan_parquet(raw_path).head(RAW_SAMPLE_ROWS).collect())
    outcome = run_suite(sample.with_row_index(ROW_ID), suite, runner=runner)
    problems = list(outcome.batch_failures)
    if outcome.row_failures.height:  # "mostly" expectations report rows only when they fail as a whole
        by_reason = outcome.row_failures.group_by("reason").len().sort("len", descending=True)
        problems += [f"{r} ({n} of {sample.height} sampled rows)" for r, n in by_reason.iter_rows()]
    return problems


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
