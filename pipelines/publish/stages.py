"""The last two stages: the profiles suite, then publish (the books, the version, the watermarks,
the registry commit, the run report and Data Docs).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import polars as pl

from foundation.errors import DataQualityError, PublishError
from foundation.lake import write_json
from pipelines.night import BUILT_PROFILES, night_lake, report_path
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


def validate_profiles(lake_dir: str, business_date: str) -> dict[str, Any]:
    """The profiles suite over the night's profiles. After an incremental build, over the profiles
    built tonight (the copied rows passed it when published), and one row per entity over all;
    the totals are reconciled with the accepted records by publish's books either way."""
    lake = night_lake(lake_dir, business_date)
    runner = stage_runner(lake)
    report = lake.reports / "profiles.json"
    built = json.loads(report.read_text("utf-8")) if report.exists() else {}
    if built.get("mode") != "incremental":
        return quality.validate_profiles(lake.work / "profiles.parquet", accepted_totals(lake), runner=runner)
    twice = (
        pl.scan_parquet(lake.work / "profiles.parquet")
        .group_by("entity_id")
        .len()
        .filter(pl.col("len") > 1)
        .collect()
    )
    if twice.height:
        raise DataQualityError(
            f"profiles failed validation: {twice.height} entities have more than one profile, e.g. "
            f"{twice['entity_id'].head(10).to_list()}"
        )
    result = quality.validate_profiles(lake.work / BUILT_PROFILES, runner=runner)
    return {
        **result,
        "validated_rows": result["profiles"],
        "profiles": built["profiles"],
        "mode": "incremental",
    }


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
    frames = {
        "profiles": pl.read_parquet(lake.work / "profiles.parquet"),
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
    built = lake.reports / "profiles.json"
    changed = None
    if built.exists() and json.loads(built.read_text("utf-8")).get("mode") == "incremental":
        # every other entity's links and profile are the previous version's (but for as_of)
        changed = pl.concat(
            [
                pl.read_parquet(lake.work / "touched_entities.parquet", columns=["entity_id"]),
                pl.read_parquet(lake.work / BUILT_PROFILES, columns=["entity_id"]),
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
    return {**result, "report": str(report), "data_docs": str(docs)}
