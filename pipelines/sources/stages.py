"""The per-source stages: extract, check, standardise (validate is quality's, pipelines/quality/stages.py).

Airflow tasks (dags/credit_nightly.py) and ``credit run`` call these functions through the stage
table (``pipelines.flow.STAGES``); each takes paths and settings, writes Parquet and returns a small
dict of paths and counts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from foundation.errors import SourceFormatError
from foundation.lake import write_json, write_parquet
from pipelines.night import cutoff_for, night_lake, read_report, rejects_path, report_path
from pipelines.sources.check import check_batch, judge_batch
from pipelines.sources.extract import REJECT_SCHEMA, extract
from pipelines.sources.registry import load_sources
from pipelines.sources.standardise import standardise
from pipelines.sources.watermarks import previous

log = logging.getLogger(__name__)


def extract_source(source: str, sources_dir: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """Pull what changed since the last published run (everything on the first run) into raw.

    An unreachable source raises SourceUnavailableError (worth retrying); a delivery that cannot be
    read as a whole is recorded as the batch's problem for the check stage to judge."""
    lake = night_lake(lake_dir, business_date)
    config = load_sources()[source]
    base = previous(lake.root, source, business_date)
    since = base.since() if base else None
    try:
        result = extract(
            config,
            Path(sources_dir),
            lake.raw(source),
            cutoff_for(business_date),
            since,
            rejects_path(lake, source),
        ).as_dict()
    except SourceFormatError as exc:
        log.error("%s", exc)
        if config.kind == "file" and config.file_path(Path(sources_dir)).exists():
            # the unreadable delivery itself is the evidence: keep a copy beside the quarantine
            kept = lake.quarantine(source).with_suffix(".delivery") / config.file_path(Path(sources_dir)).name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config.file_path(Path(sources_dir)), kept)
        write_parquet(pl.DataFrame(schema=REJECT_SCHEMA), rejects_path(lake, source))
        write_parquet(pl.DataFrame(), lake.raw(source))
        result = {
            "rows": 0,
            "source_rows": 0,
            "newest": None,
            "columns": [],
            "rejects": 0,
            "since": None if since is None else str(since),
            "problem": str(exc),
        }
    result.update(
        source=source,
        path=str(lake.raw(source)),
        base_date=base.business_date if base else None,
        mode="incremental" if base else "full",
    )
    write_json(result, report_path(lake, "extract", source))
    log.info(
        "extracted %s rows from %s (%s since %s; source holds %s)",
        result["rows"],
        source,
        result["mode"],
        result["since"],
        result["source_rows"],
    )
    return {k: result[k] for k in ("source", "rows", "source_rows", "rejects", "mode", "path")}


def check_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """Batch checks (readable, columns, volume, staleness; the raw suite runs in the validate task).
    A critical source's failure stops the run."""
    lake = night_lake(lake_dir, business_date)
    config = load_sources()[source]
    extracted = read_report(lake, "extract", source)
    problems = check_batch(config, extracted, previous(lake.root, source, business_date), business_date)
    return judge_batch(lake, config, problems)


def standardise_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    lake = night_lake(lake_dir, business_date)
    if not read_report(lake, "batch", source)["ok"]:
        return {"source": source, "rows": 0, "skipped": "batch held back", "path": None}
    rows = standardise(load_sources()[source], lake.raw(source), lake.staged(source))
    return {"source": source, "rows": rows, "path": str(lake.staged(source))}
