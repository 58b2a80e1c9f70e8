"""The last two stages, which gather the profile shards: the profiles suite over all of them, then
publish (the books, one version of the shards' profiles, the watermarks, the registry commit, the
run report and Data Docs).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from foundation.errors import DataQualityError, PublishError
from foundation.lake import Lake, write_json, write_parquet
from pipelines.night import (
    BUILT_PROFILES,
    PROFILE_VALID_UNTIL,
    PROFILE_VALID_UNTIL_DIR,
    PROFILES_DIR,
    night_lake,
    part_path,
    read_profile_plan,
    report_path,
)
from pipelines.profiles.build import grade_counts
from pipelines.publish.reconciliation import accepted_figures, accepted_totals, reconcile
from pipelines.publish.report import build_run_report
from pipelines.publish.versions import publish_version
from pipelines.quality import suites as quality
from pipelines.quality.data_docs import build_site
from pipelines.quality.suites import stage_runner
from pipelines.resolution.registry import commit_registry
from pipelines.sources.registry import load_sources
from pipelines.sources.watermarks import record

log = logging.getLogger(__name__)


def shard_parts(lake: Lake, folder: str) -> list[Path]:
    """The parts tonight's profile shards wrote in ``folder`` (work/<folder>/part-*), in shard
    order; every shard of the plan must have written its own."""
    shards = range(len(read_profile_plan(lake)["starts"]))
    parts = [part_path(lake.work / folder, shard) for shard in shards]
    missing = [shard for shard, path in zip(shards, parts, strict=True) if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"profile shards {missing} of {lake.business_date} wrote no {folder} part under "
            f"{lake.work / folder}; run build_profiles for them first"
        )
    return parts


def validate_profiles(lake_dir: str, business_date: str) -> dict[str, Any]:
    """The profiles suite over every shard's profiles, as one table (one profile per entity, the
    sums reconciled with the accepted records). After an incremental build, over the profiles
    built tonight (the copied rows passed it when published), and one row per entity over all;
    the totals are reconciled with the accepted records by publish's books either way."""
    lake = night_lake(lake_dir, business_date)
    runner = stage_runner(lake)
    shard_parts(lake, PROFILES_DIR)  # every shard wrote its part: the glob below is the whole table
    every = lake.work / PROFILES_DIR / "*.parquet"
    if read_profile_plan(lake)["mode"] != "incremental":
        return quality.validate_profiles(every, accepted_totals(lake), runner=runner)
    rows = pl.scan_parquet(every).select(pl.len()).collect().item()
    twice = pl.scan_parquet(every).group_by("entity_id").len().filter(pl.col("len") > 1).collect()
    if twice.height:
        raise DataQualityError(
            f"profiles failed validation: {twice.height} entities have more than one profile, e.g. "
            f"{twice['entity_id'].sort().head(10).to_list()}"
        )
    shard_parts(lake, BUILT_PROFILES)
    result = quality.validate_profiles(lake.work / BUILT_PROFILES / "*.parquet", runner=runner)
    return {
        **result,
        "validated_rows": result["profiles"],
        "profiles": rows,
        "mode": "incremental",
    }


def gather_profiles(lake: Lake) -> dict[str, Any]:
    """The shards' profiles as one table, concatenated in shard order (the shards are contiguous
    entity-id ranges, each sorted: the whole is sorted by entity id) and in one chunk, so the
    published bytes do not depend on how many shards built it; their valid-until likewise, written
    to work/ for the registry (``commit_registry``); the entities built tonight (None after a full
    build); the summary (reports/<date>/profiles.json)."""
    plan = read_profile_plan(lake)
    profiles = pl.concat([pl.read_parquet(p) for p in shard_parts(lake, PROFILES_DIR)], rechunk=True)
    valid_until = pl.concat(
        [pl.read_parquet(p) for p in shard_parts(lake, PROFILE_VALID_UNTIL_DIR)], rechunk=True
    )
    write_parquet(valid_until, lake.work / PROFILE_VALID_UNTIL)
    built = None
    if plan["mode"] == "incremental":
        built = pl.concat(
            [pl.read_parquet(p, columns=["entity_id"]) for p in shard_parts(lake, BUILT_PROFILES)]
        )
    summary = {
        "profiles": profiles.height,
        "built": profiles.height if built is None else built.height,
        "mode": plan["mode"],
        "shards": len(plan["starts"]),
        "grades": grade_counts(profiles),
    }
    write_json(summary, lake.reports / "profiles.json")
    return {"profiles": profiles, "built": built, "summary": summary}


def publish(lake_dir: str, business_date: str, run_id: str) -> dict[str, Any]:
    lake = night_lake(lake_dir, business_date)
    validation = {}
    for name in load_sources():
        report = report_path(lake, "validation", name)
        if not report.exists():
            raise PublishError(
                f"no validation report for source '{name}' on {business_date}; nothing published"
            )
        validation[name] = json.loads(report.read_text("utf-8"))
    gathered = gather_profiles(lake)
    frames = {
        "profiles": gathered["profiles"],
        "links": pl.read_parquet(lake.work / "links.parquet"),
        "entities": pl.read_parquet(lake.work / "entities.parquet"),
    }
    expected, newest = accepted_figures(lake)
    books = reconcile(lake, frames["profiles"], frames["links"], validation, expected)
    if not books["balanced"]:
        write_json(
            {
                "business_date": business_date,
                "run_id": run_id,
                "published": False,
                "books": books,
                "sources": validation,
            },
            lake.reports / "summary.json",
        )
        log.error("run report: %s", build_run_report(lake.root, business_date).resolve().as_uri())
        raise PublishError("books do not balance: " + "; ".join(books["problems"]) + "; nothing published")
    sources = {
        name: {**{k: v for k, v in counts.items() if k != "snapshot"}, "as_of": str(newest.get(name))}
        for name, counts in validation.items()
    }
    changed = None
    if gathered["built"] is not None:
        # every other entity's links and profile are the previous version's (but for as_of)
        changed = pl.concat(
            [
                pl.read_parquet(lake.work / "touched_entities.parquet", columns=["entity_id"]),
                gathered["built"],
            ]
        ).unique()
    result = publish_version(lake.published, business_date, run_id, frames, {"sources": sources}, changed)
    # Only now, with the version live, do the watermarks (and the entity registry) advance.
    record(lake.root, business_date, validation)
    commit_registry(lake, result["version"])
    write_json(
        {
            "business_date": business_date,
            "run_id": run_id,
            "published": True,
            "books": books,
            "sources": sources,
            **result,
        },
        lake.reports / "summary.json",
    )
    docs = build_site(lake.root / "reports")
    report = build_run_report(lake.root, business_date)
    log.info("run report: %s", report.resolve().as_uri())
    log.info("Great Expectations Data Docs: %s", docs.resolve().as_uri())
    summary = gathered["summary"]
    return {
        **result,
        "grades": summary["grades"],
        "built": summary["built"],
        "mode": summary["mode"],
        "shards": summary["shards"],
        "report": str(report),
        "data_docs": str(docs),
    }
