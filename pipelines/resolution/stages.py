"""The resolve-entities stage: the adapter that hands the night's accepted records to the engine
(entity_resolution.pipeline) and keeps its registry aside until the night publishes.
"""

from __future__ import annotations

import logging
import shutil
from datetime import date
from typing import Any

import polars as pl

from entity_resolution.pipeline import (
    IDENTITY_COLUMNS,
    KEYS,
    KnownEntitiesConflict,
    resolve_canonical,
    resolve_changes,
)
from foundation.lake import Lake, write_json, write_parquet
from foundation.settings import resolution_settings
from pipelines.night import (
    PROFILE_BASIS,
    PROFILE_VALID_UNTIL,
    REGISTRY_VERSION_FILE,
    night_lake,
    read_report,
    registry_base,
    report_path,
)
from pipelines.resolution.registry import link_or_copy
from pipelines.sources.registry import load_sources
from pipelines.sources.snapshot import accepted_records

log = logging.getLogger(__name__)


def _changed_records(lake: Lake, base_date: str) -> pl.LazyFrame | None:
    """The night's new and changed accepted records over all sources (None when some source was not
    upserted onto the same base date, e.g. a source seen for the first time: then a full re-link)."""
    frames = []
    for name in load_sources():
        report = read_report(lake, "validation", name)
        if report.get("base_date") != base_date:
            return None
        delta = lake.work / "accepted_changes" / f"{name}.parquet"
        if report.get("stale"):
            continue  # held back: its snapshot is the base's, nothing changed
        frames.append(pl.scan_parquet(delta))
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def resolve_entities(lake_dir: str, business_date: str, full_relink: bool = False) -> dict[str, Any]:
    """Link the accepted records to entities with the engine (config/resolution.toml's spec).

    A night after a published one links only its new and changed records against the registry's
    entity representatives; the first night, a ``full_relink`` and the ``full_relink_weekdays``
    re-link the whole snapshot. The registry is updated aside (LAKE/work/<date>/registry) and
    committed only when this run publishes; unsure pairs go to LAKE/review/<date>/.
    """
    lake = night_lake(lake_dir, business_date)
    settings = resolution_settings()
    spec = settings.get("spec", "enterprise")
    base = registry_base(lake)
    staged_registry = lake.work / "registry"
    shutil.rmtree(staged_registry, ignore_errors=True)
    if base:
        # (tonight's profiles write their own valid-until and basis: not the base night's)
        shutil.copytree(
            base[0],
            staged_registry,
            ignore=shutil.ignore_patterns(PROFILE_VALID_UNTIL, PROFILE_BASIS),
            copy_function=link_or_copy,  # hard links: the registry's files are replaced, not rewritten
        )
        (staged_registry / REGISTRY_VERSION_FILE).unlink()
    weekly = date.fromisoformat(business_date).isoweekday() in settings.get("full_relink_weekdays", [])
    changed = _changed_records(lake, base[0].name) if base and not (full_relink or weekly) else None
    review = {
        "registry_dir": staged_registry,
        "review_dir": lake.root / "review" / business_date,
        "decisions": lake.root / "review" / "decisions.csv",
        "run": business_date,
    }
    resolution = None
    reason = (
        "no earlier published night"
        if not base
        else "--full-relink"
        if full_relink
        else "full_relink_weekdays"
        if weekly
        else "a source not upserted onto the last published night"
        if changed is None
        else None
    )
    if reason is None and changed is not None:
        version = base[1]
        try:
            resolution = resolve_changes(
                changed.select(IDENTITY_COLUMNS).collect(),
                pl.read_parquet(version / "links" / "*.parquet"),
                pl.read_parquet(version / "entities" / "*.parquet"),
                lambda keys: (
                    accepted_records(lake)
                    .join(keys.lazy(), on=KEYS, how="semi")
                    .select(IDENTITY_COLUMNS)
                    .collect()
                ),
                spec,
                **review,
            )
        except KnownEntitiesConflict as conflict:
            log.warning("%s; re-linking the whole snapshot", conflict)
            reason = str(conflict)
    if resolution is None:
        resolution = resolve_canonical(
            accepted_records(lake).select(IDENTITY_COLUMNS).collect(), spec, **review
        )
    log.info("resolution: %s", resolution.stats)
    write_parquet(resolution.links, lake.work / "links.parquet")
    write_parquet(resolution.entities, lake.work / "entities.parquet")
    write_parquet(resolution.touched, lake.work / "touched_entities.parquet")
    methods = dict(resolution.links.group_by("match_method").len().sort("match_method").iter_rows())
    grades = (
        resolution.links.drop_nulls("match_grade")
        .group_by(pl.col("match_grade").str.slice(0, 1).alias("code"))
        .len()
        .sort("code")
    )
    result = {
        "mode": resolution.stats["mode"],
        "full_relink_reason": reason,
        "records": resolution.links.height,
        "changed_records": resolution.stats.get("changed_records", resolution.links.height),
        "entities": resolution.entities.height,
        "touched_entities": resolution.touched.height,
        "methods": methods,
        "code_grades": dict(grades.iter_rows()),
        "links_path": str(lake.work / "links.parquet"),
    }
    write_json({**result, "stats": resolution.stats}, report_path(lake, "resolution", "entities"))
    return result
