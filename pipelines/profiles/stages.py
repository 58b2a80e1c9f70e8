"""The build-profiles stage: every profile after a full re-link, else only those touched tonight or
whose time-dependent figures change, the rest carried from the previous version.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from foundation import grading
from foundation.grading import grading_path
from foundation.lake import Lake, write_json, write_parquet
from pipelines.night import (
    BUILT_PROFILES,
    PROFILE_BASIS,
    PROFILE_VALID_UNTIL,
    night_lake,
    read_report,
    registry_base,
)
from pipelines.profiles import build as profiles
from pipelines.profiles.build import build_profiles_valid_until
from pipelines.sources.registry import load_sources
from pipelines.sources.snapshot import accepted_records


def _profile_basis(business_date: str, stale: frozenset[str]) -> dict[str, Any]:
    """What every profile depends on besides its own records and the day: the sources held back
    and the grading, industries and code that turn records into a profile."""
    digest = hashlib.sha256()
    for path in (grading_path(), profiles.industries_path(), Path(profiles.__file__), Path(grading.__file__)):
        digest.update(Path(path).read_bytes())
    return {"as_of": business_date, "stale_sources": sorted(stale), "rules": digest.hexdigest()}


def _profiles_to_rebuild(lake: Lake, basis: dict[str, Any]) -> tuple[Path, pl.DataFrame] | None:
    """(previous version, entity ids whose profiles must be built tonight), or None when every
    profile must be built: after a full re-link, or when the previous night's profiles rest on
    another basis (other sources held back, other rules)."""
    resolution = read_report(lake, "resolution", "entities")
    base = registry_base(lake)
    if resolution["mode"] != "incremental" or base is None:
        return None
    registry, version = base
    if not (registry / PROFILE_BASIS).exists() or not (registry / PROFILE_VALID_UNTIL).exists():
        return None
    before = json.loads((registry / PROFILE_BASIS).read_text("utf-8"))
    if before.get("rules") != basis["rules"]:
        return None
    # a source held back tonight and not last night (or the other way round): the profiles with
    # its records show another freshness
    restated = sorted(set(before.get("stale_sources", [])) ^ set(basis["stale_sources"]))
    restated_firms = (
        pl.scan_parquet(lake.work / "links.parquet")
        .filter(pl.col("source").is_in(restated))
        .select("entity_id")
    )
    expired = (
        pl.scan_parquet(registry / PROFILE_VALID_UNTIL)
        .filter(pl.col("valid_until") < date.fromisoformat(lake.business_date))
        .select("entity_id")
    )
    published = pl.scan_parquet(version / "profiles" / "*.parquet").select("entity_id")
    new = (
        pl.scan_parquet(lake.work / "entities.parquet")
        .select("entity_id")
        .join(published, on="entity_id", how="anti")
    )
    touched = pl.scan_parquet(lake.work / "touched_entities.parquet").select("entity_id")
    ids = pl.concat([touched, expired, new, restated_firms])
    return version, ids.unique().sort("entity_id").collect()


def build_profiles(lake_dir: str, business_date: str) -> dict[str, Any]:
    """One profile per entity. After an incremental resolution only the touched entities' profiles
    and those whose time-dependent figures change by tonight (``valid_until``) are built; every
    other row is the previous version's, as of tonight."""
    lake = night_lake(lake_dir, business_date)
    stale = frozenset(name for name in load_sources() if read_report(lake, "validation", name).get("stale"))
    basis = _profile_basis(business_date, stale)
    plan = _profiles_to_rebuild(lake, basis)
    links = pl.scan_parquet(lake.work / "links.parquet")
    entities = pl.scan_parquet(lake.work / "entities.parquet")
    records = accepted_records(lake)
    if plan is not None:
        rebuild = plan[1].lazy()
        links = links.join(rebuild, on="entity_id", how="semi")
        entities = entities.join(rebuild, on="entity_id", how="semi")
        records = records.join(
            links.select("source", "source_record_id"), on=["source", "source_record_id"], how="semi"
        )
    profiles, valid_until = build_profiles_valid_until(
        records, links, entities, as_of=date.fromisoformat(business_date), stale_sources=stale
    )
    built = profiles.height
    if plan is not None:
        version, rebuild = plan
        registry = registry_base(lake)[0]  # type: ignore[index]
        current = pl.scan_parquet(lake.work / "entities.parquet").select("entity_id")
        kept = (
            pl.scan_parquet(version / "profiles" / "*.parquet")
            .join(rebuild.lazy(), on="entity_id", how="anti")
            .join(current, on="entity_id", how="semi")
            .with_columns(as_of=pl.lit(date.fromisoformat(business_date)))
            .collect()
        )
        profiles = pl.concat([kept, profiles.select(kept.columns)]).sort("entity_id")
        valid_until = pl.concat(
            [
                pl.read_parquet(registry / PROFILE_VALID_UNTIL).join(
                    kept.select("entity_id"), on="entity_id", how="semi"
                ),
                valid_until,
            ]
        ).sort("entity_id")
    write_parquet(profiles, lake.work / "profiles.parquet")
    if plan is not None:  # what validate_profiles checks: the copied rows were checked when published
        write_parquet(profiles.join(plan[1], on="entity_id", how="semi"), lake.work / BUILT_PROFILES)
    write_parquet(valid_until, lake.work / PROFILE_VALID_UNTIL)
    write_json(basis, lake.work / PROFILE_BASIS)
    grades = dict(profiles.group_by("grade").len().sort("grade").iter_rows())
    result = {
        "profiles": profiles.height,
        "built": built,
        "mode": "full" if plan is None else "incremental",
        "grades": grades,
        "path": str(lake.work / "profiles.parquet"),
    }
    write_json(result, lake.reports / "profiles.json")
    return result
