"""The resolution stages: the adapter that hands the night's accepted records to the engine
(entity_resolution.pipeline) and keeps its registry aside until the night publishes.

``prepare_resolution`` -> ``resolve_partition`` (once per partition it lists, mapped) ->
``resolve_entities`` (the gather). Their work files live in ``lake.work / "resolution"``.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from entity_resolution.pipeline import (
    ENTITIES_FILE,
    IDENTITY_COLUMNS,
    KEYS,
    LINKS_FILE,
    TOUCHED_FILE,
    KnownEntitiesConflict,
    Resolution,
    gather_canonical,
    prepare_canonical,
    resolve_canonical_partition,
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


#: in the night's resolution work directory (``lake.work / "resolution"``): what ``prepare_resolution``
#: decided, for the partitions and the finish
NIGHT_STATE = "night.json"


def _work(lake: Lake) -> Path:
    return lake.work / "resolution"


def _stage_registry(lake: Lake) -> tuple[Path, tuple[Path, Path] | None]:
    """(the night's staged registry, the base it was copied from): a fresh copy of the last
    published night's registry (LAKE/work/<date>/registry), empty on a first night. Made afresh by
    every stage that writes to it, so a re-run starts from the same registry."""
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
    return staged_registry, base


def _review_places(lake: Lake, staged_registry: Path) -> dict[str, Any]:
    return {
        "registry_dir": staged_registry,
        "review_dir": lake.root / "review" / lake.business_date,
        "decisions": lake.root / "review" / "decisions.csv",
        "run": lake.business_date,
    }


def _partition_signatures(settings: dict[str, Any]) -> int | None:
    """config/resolution.toml's ``partition_signatures`` (else the spec's ``[scale]`` value)."""
    value = settings.get("partition_signatures")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(
            f"config/resolution.toml: partition_signatures must be a positive integer, not {value!r}"
        )
    return value


def prepare_resolution(lake_dir: str, business_date: str, full_relink: bool = False) -> dict[str, Any]:
    """Decide how tonight links its accepted records (config/resolution.toml's spec) and do all but
    the partitions' clustering; ``partitions`` lists the partitions ``resolve_partition`` resolves.

    A night after a published one links only its new and changed records against the registry's
    entity representatives, whole, here (no partitions); the first night, a ``full_relink``, the
    ``full_relink_weekdays`` and an incremental night that finds a known firm it cannot place
    re-link the whole snapshot: the engine's preparation, cut into partitions of about
    ``partition_signatures`` signatures (config/resolution.toml, else the spec's ``[scale]``).
    The registry is updated aside (LAKE/work/<date>/registry) and committed only when this run
    publishes; unsure pairs go to LAKE/review/<date>/. Running it again starts the night's
    resolution over.
    """
    lake = night_lake(lake_dir, business_date)
    settings = resolution_settings()
    spec = settings.get("spec", "enterprise")
    work = _work(lake)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    staged_registry, base = _stage_registry(lake)
    weekly = date.fromisoformat(business_date).isoweekday() in settings.get("full_relink_weekdays", [])
    changed = _changed_records(lake, base[0].name) if base and not (full_relink or weekly) else None
    review = _review_places(lake, staged_registry)
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
                pl.scan_parquet(version / "links" / "*.parquet"),  # (read whole after the engine)
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
        else:
            _write_resolution(lake, resolution)
            write_json({"mode": "incremental", "reason": None, "stats": resolution.stats}, work / NIGHT_STATE)
            return {"mode": "incremental", "full_relink_reason": None, "partitions": []}
    partitions = prepare_canonical(
        accepted_records(lake).select(IDENTITY_COLUMNS),  # streamed: never whole in this process
        spec,
        staged_registry,
        review["decisions"],
        work,
        _partition_signatures(settings),
    )
    write_json({"mode": "full", "reason": reason}, work / NIGHT_STATE)
    return {"mode": "full", "full_relink_reason": reason, "partitions": list(range(partitions))}


def resolve_partition(lake_dir: str, business_date: str, partition: int) -> dict[str, Any]:
    """Cluster and grade one partition of the night's prepared full re-link (its signatures' entities,
    in ``lake.work/resolution/engine/partitions/part-N/links.parquet``). Writes the same file when
    run again; partitions may run in any order, each in a process of its own."""
    lake = night_lake(lake_dir, business_date)
    counts = resolve_canonical_partition(_work(lake), partition)
    return {"partition": partition, **counts}


def resolve_entities(lake_dir: str, business_date: str, full_relink: bool = False) -> dict[str, Any]:
    """Gather the night's resolution: the links, entities and touched entities (LAKE/work/<date>/)
    and the resolution report. After a full re-link's partitions: the entities named, the registry
    updated (on a fresh copy of its base, so a re-run gives the same), the review queue written.

    When nothing is prepared for the night (a stage table without ``prepare_resolution``, or this
    task run again after it gathered), it prepares and resolves every partition here first, with
    ``full_relink``.
    """
    lake = night_lake(lake_dir, business_date)
    work = _work(lake)
    if not (work / NIGHT_STATE).exists():
        planned = prepare_resolution(lake_dir, business_date, full_relink)
        for partition in planned["partitions"]:
            resolve_partition(lake_dir, business_date, partition)
    night = json.loads((work / NIGHT_STATE).read_text("utf-8"))
    if night["mode"] == "incremental":
        stats = night["stats"]
    else:
        staged_registry, _ = _stage_registry(lake)
        review = _review_places(lake, staged_registry)
        stats = gather_canonical(work, lake.work, staged_registry, review["review_dir"], review["run"])
    log.info("resolution: %s", stats)
    # the counts from the written files (streaming queries: the links are not read whole)
    links = pl.scan_parquet(lake.work / LINKS_FILE)
    methods = dict(links.group_by("match_method").len().sort("match_method").collect().iter_rows())
    grades = (
        links.drop_nulls("match_grade")
        .group_by(pl.col("match_grade").str.slice(0, 1).alias("code"))
        .len()
        .sort("code")
        .collect()
    )
    count = lambda name: pl.scan_parquet(lake.work / name).select(pl.len()).collect().item()  # noqa: E731
    records = count(LINKS_FILE)
    result = {
        "mode": stats["mode"],
        "full_relink_reason": night["reason"],
        "records": records,
        "changed_records": stats.get("changed_records", records),
        "entities": count(ENTITIES_FILE),
        "touched_entities": count(TOUCHED_FILE),
        "methods": methods,
        "code_grades": dict(grades.iter_rows()),
        "links_path": str(lake.work / LINKS_FILE),
    }
    write_json({**result, "stats": stats}, report_path(lake, "resolution", "entities"))
    # gathered: a later call without a new preparation (a re-run of an older stage table, or of
    # this task alone) prepares afresh rather than gathering what may be stale
    (work / NIGHT_STATE).unlink()
    return result


def _write_resolution(lake: Lake, resolution: Resolution) -> None:
    """The files build_profiles and publish read: links, entities, touched entities."""
    write_parquet(resolution.links, lake.work / LINKS_FILE)
    write_parquet(resolution.entities, lake.work / ENTITIES_FILE)
    write_parquet(resolution.touched, lake.work / TOUCHED_FILE)
