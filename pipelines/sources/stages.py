"""The per-source stages: plan the extract, extract (per shard), check (standardise, per shard,
and validate are quality's, pipelines/quality/stages.py: a shard's rows are checked as they are
standardised).

Airflow tasks (dags/credit_nightly.py) and ``credit run`` call these functions through the stage
table (``pipelines.flow.STAGES``); each takes paths and settings, writes Parquet and returns a small
dict of paths and counts.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from foundation.errors import SourceFormatError
from foundation.lake import RAW_PARTS, Lake, write_json, write_parquet
from pipelines.night import (
    SHARD_KINDS,
    cutoff_for,
    night_lake,
    part_path,
    read_shard_reports,
    rejects_path,
    report_path,
    shard_folder,
)
from pipelines.sources.check import check_batch, judge_batch
from pipelines.sources.extract import REJECT_SCHEMA, Shard, extract, plan_sql
from pipelines.sources.registry import load_sources
from pipelines.sources.watermarks import previous

log = logging.getLogger(__name__)


def _shard_reports(lake: Lake, source: str) -> Path:
    """Where plan_extract keeps the source's plan and each extract shard its report (beside the
    extract report check gathers from them, and dropped with it when a new run starts)."""
    return report_path(lake, "extract", source).with_suffix("")


def _clear_raw(lake: Lake, source: str, shards: int) -> None:
    """Remove what an earlier run left in the source's raw layer beyond this run's shards (a part
    of a larger shard count, a raw file of the one-file layout), so readers of all parts read
    this run's only."""
    raw = lake.raw(source)
    if raw.is_file():
        raw.unlink()
    keep = {lake.raw_part(source, shard) for shard in range(shards)}
    for part in raw.glob(RAW_PARTS) if raw.is_dir() else ():
        if part not in keep:
            part.unlink()


def plan_extract(source: str, sources_dir: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """How many extract shards the source needs tonight: ceil(changed rows / extract_shard_rows)
    for a SQL source (at least one, whose part carries the columns even when nothing changed), one
    for a file. The plan (shard boundaries, the source's totals) is kept for the shards and check.

    An unreachable source raises SourceUnavailableError (worth retrying); a table without its id or
    watermark column is planned as one shard, whose extraction records the problem for check."""
    lake = night_lake(lake_dir, business_date)
    config = load_sources()[source]
    base = previous(lake.root, source, business_date)
    plan: dict[str, Any] = {"shards": 1, "boundaries": []}
    if config.kind == "sql":
        try:
            plan = plan_sql(
                config, Path(sources_dir), cutoff_for(business_date), base.since() if base else None
            )
        except SourceFormatError as exc:
            log.error("%s", exc)
    plan["source"] = source
    _clear_raw(lake, source, plan["shards"])
    target = _shard_reports(lake, source) / "plan.json"
    for earlier in target.parent.glob("part-*.json"):  # an earlier plan's shards: check waits for this one's
        earlier.unlink()
    write_json(plan, target)
    log.info("extract %s in %d shard(s) (%s changed rows)", source, plan["shards"], plan.get("changed_rows"))
    return {
        "source": source,
        "shards": list(range(plan["shards"])),
        "changed_rows": plan.get("changed_rows"),
        "path": str(target),
    }


def _read_plan(lake: Lake, source: str) -> dict[str, Any] | None:
    path = _shard_reports(lake, source) / "plan.json"
    return json.loads(path.read_text("utf-8")) if path.exists() else None


def extract_source(
    source: str, sources_dir: str, lake_dir: str, business_date: str, shard: int = 0
) -> dict[str, Any]:
    """Pull the shard's part of what changed since the last published run (everything on the first
    run) into raw: the range of ids plan_extract gave it (without a plan, the whole source is
    shard 0). Re-running a shard rewrites the same part.

    An unreachable source raises SourceUnavailableError (worth retrying); a delivery that cannot be
    read as a whole is recorded as the batch's problem for the check stage to judge."""
    lake = night_lake(lake_dir, business_date)
    config = load_sources()[source]
    base = previous(lake.root, source, business_date)
    since = base.since() if base else None
    plan = _read_plan(lake, source)
    if plan is None:
        _clear_raw(lake, source, 1)
        plan = {"shards": 1, "boundaries": []}
    if not 0 <= shard < plan["shards"]:
        raise ValueError(f"source '{source}': shard {shard} is not one of the {plan['shards']} planned")
    bounds = [None, *plan["boundaries"], None]
    part = Shard(bounds[shard], bounds[shard + 1], plan.get("source_rows"), plan.get("newest"))
    target = lake.raw_part(source, shard)
    try:
        result = extract(
            config,
            Path(sources_dir),
            target,
            cutoff_for(business_date),
            since,
            rejects_path(lake, source),
            part,
        ).as_dict()
    except SourceFormatError as exc:
        log.error("%s", exc)
        if config.kind == "file" and config.file_path(Path(sources_dir)).exists():
            # the unreadable delivery itself is the evidence: keep a copy beside the quarantine
            kept = lake.quarantine(source).with_suffix(".delivery") / config.file_path(Path(sources_dir)).name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config.file_path(Path(sources_dir)), kept)
        write_parquet(pl.DataFrame(schema=REJECT_SCHEMA), rejects_path(lake, source))
        write_parquet(pl.DataFrame(), target)
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
        shard=shard,
        path=str(target),
        base_date=base.business_date if base else None,
        mode="incremental" if base else "full",
    )
    write_json(result, part_path(_shard_reports(lake, source), shard).with_suffix(".json"))
    log.info(
        "extracted %s rows from %s shard %d of %d (%s since %s; source holds %s)",
        result["rows"],
        source,
        shard,
        plan["shards"],
        result["mode"],
        result["since"],
        result["source_rows"],
    )
    return {k: result[k] for k in ("source", "shard", "rows", "source_rows", "rejects", "mode", "path")}


def gather_extract(lake: Lake, source: str) -> dict[str, Any]:
    """The source's extract report, gathered over its shards' (what check and validate read):
    rows and rejects summed, the source's totals and columns as the shards saw them, the first
    problem any shard met."""
    plan = _read_plan(lake, source) or {"shards": 1}
    parts = read_shard_reports(
        _shard_reports(lake, source), plan["shards"], f"source '{source}': extract", lake
    )
    problems = [p["problem"] for p in parts if p.get("problem")]
    first = parts[0]
    report = {
        **{k: first[k] for k in ("source", "since", "base_date", "mode")},
        "rows": sum(int(p["rows"]) for p in parts),
        "rejects": sum(int(p["rejects"]) for p in parts),
        "source_rows": max(int(p["source_rows"]) for p in parts),
        "newest": max((p["newest"] for p in parts if p["newest"]), default=None),
        "columns": next((p["columns"] for p in parts if p["columns"]), []),
        "shards": plan["shards"],
        "path": str(lake.raw(source)),
    }
    if problems:
        report["problem"] = problems[0]
    write_json(report, report_path(lake, "extract", source))
    return report


def _clear_shards(lake: Lake, source: str) -> None:
    """Drop what an earlier run's standardise shards left for the source (its staged parts, the
    parts and reports kept for validate), so validate gathers this run's shards only."""
    staged = lake.staged(source)
    if staged.is_file():  # the one-file layout of before
        staged.unlink()
    for folder in (staged, *(shard_folder(lake, source, kind) for kind in SHARD_KINDS)):
        shutil.rmtree(folder, ignore_errors=True)


def check_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """Gather the extract shards' reports, then the batch checks (readable, columns, volume,
    staleness; the raw suite runs in the first standardise shard). A critical source's failure
    stops the run. Lists the shards to standardise: the extract's, none for a held-back batch."""
    lake = night_lake(lake_dir, business_date)
    config = load_sources()[source]
    extracted = gather_extract(lake, source)
    _clear_shards(lake, source)
    problems = check_batch(config, extracted, previous(lake.root, source, business_date), business_date)
    verdict = judge_batch(lake, config, problems)
    return {**verdict, "shards": list(range(extracted["shards"])) if verdict["ok"] else []}
