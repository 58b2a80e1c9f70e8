"""The profile stages: a plan that cuts the night's entities into shards (entity-id ranges), then
one build per shard: every profile after a full re-link, else only those touched tonight or whose
time-dependent figures change, the rest carried from the previous version. Publish gathers the
shards (pipelines/publish/stages.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from foundation import grading
from foundation.grading import grading_path
from foundation.lake import Lake, write_json, write_parquet
from foundation.settings import config_path
from pipelines.night import (
    BUILT_PROFILES,
    PROFILE_BASIS,
    PROFILE_PLAN,
    PROFILE_VALID_UNTIL,
    PROFILE_VALID_UNTIL_DIR,
    PROFILES_DIR,
    PROFILES_TO_REBUILD,
    REGISTRY_DIR,
    night_lake,
    part_path,
    read_profile_plan,
    read_report,
    registry_base,
)
from pipelines.profiles import build as profiles
from pipelines.profiles.build import build_profiles_valid_until, grade_counts
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


def profile_shard_entities() -> int:
    """Entities per profile shard (config/nightly.toml ``[mapping] profile_shard_entities``, read
    now: CREDIT_NIGHTLY_CONFIG points a deployment or a test at its own)."""
    path = config_path("nightly.toml")
    try:
        size = tomllib.loads(path.read_text("utf-8"))["mapping"]["profile_shard_entities"]
    except KeyError:
        raise KeyError(f"{path}: no setting [mapping] profile_shard_entities") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(
            f"{path}: [mapping] profile_shard_entities must be a whole number >= 1, not {size!r}"
        )
    return size


def shard_starts(entity_ids: pl.Series, size: int) -> list[str]:
    """The first entity id of each shard: the sorted ids cut into ceil(n / size) contiguous ranges
    of nearly equal length (one shard, possibly empty, when there are no more than ``size``)."""
    count = max(1, -(-len(entity_ids) // size))
    ids = entity_ids.sort()
    return [ids[(i * len(ids)) // count] for i in range(count)] if len(ids) else [""]


def in_shard(starts: list[str], shard: int) -> pl.Expr:
    """Entities of ``shard``: from its first id up to the next shard's (the first shard open below,
    the last open above), so every entity id falls in exactly one shard."""
    if not 0 <= shard < len(starts):
        raise ValueError(f"no profile shard {shard}: tonight's plan has shards 0..{len(starts) - 1}")
    condition = pl.lit(True)
    if shard > 0:
        condition &= pl.col("entity_id") >= starts[shard]
    if shard + 1 < len(starts):
        condition &= pl.col("entity_id") < starts[shard + 1]
    return condition


def _stale_sources(lake: Lake) -> frozenset[str]:
    return frozenset(name for name in load_sources() if read_report(lake, "validation", name).get("stale"))


def plan_profiles(lake_dir: str, business_date: str) -> dict[str, Any]:
    """Cut the night's entities into shards of about ``[mapping] profile_shard_entities`` entities
    to build (by entity id), and work out once what every shard needs: whether tonight rebuilds
    every profile or only some (which, saved beside the plan), the basis, the version the others
    are carried from. Earlier parts are removed: the shards written after this plan are the night's.

    On an incremental night the shards are cut by the entities to rebuild, not by all: each shard
    scans the whole links file and the accepted snapshots to find its rows, so a night that
    rebuilds a quarter of the profiles in as many shards as a full build would pay nearly a full
    build's reading; the profiles it carries over are copied, a range of the previous version each."""
    lake = night_lake(lake_dir, business_date)
    stale = _stale_sources(lake)
    basis = _profile_basis(business_date, stale)
    rebuild = _profiles_to_rebuild(lake, basis)
    ids = pl.read_parquet(lake.work / "entities.parquet", columns=["entity_id"])["entity_id"]
    size = profile_shard_entities()
    starts = shard_starts(ids if rebuild is None else rebuild[1]["entity_id"], size)
    for folder in (PROFILES_DIR, PROFILE_VALID_UNTIL_DIR, BUILT_PROFILES):
        shutil.rmtree(lake.work / folder, ignore_errors=True)
    if rebuild is not None:
        write_parquet(rebuild[1], lake.work / PROFILES_TO_REBUILD)
    else:
        (lake.work / PROFILES_TO_REBUILD).unlink(missing_ok=True)
    base = registry_base(lake) if rebuild is not None else None
    plan = {
        "mode": "full" if rebuild is None else "incremental",
        "starts": starts,
        "stale_sources": sorted(stale),
        # by name, not path: a lake copied or moved keeps its plan
        "previous_version": base[1].name if base else None,
        "registry": base[0].name if base else None,
    }
    write_json(basis, lake.work / PROFILE_BASIS)
    write_json(plan, lake.work / PROFILE_PLAN)
    return {
        "shards": list(range(len(starts))),
        "entities": len(ids),
        "shard_entities": size,
        "mode": plan["mode"],
        "to_rebuild": None if rebuild is None else rebuild[1].height,
    }


def build_profiles(lake_dir: str, business_date: str, shard: int) -> dict[str, Any]:
    """The profiles of one shard of entities (``plan_profiles``), to ``work/profiles/part-<shard>``
    with their valid-until (and, on an incremental night, the rows built tonight). It reads only
    the shard's entities, links and records. After an incremental resolution only the touched
    entities' profiles and those whose time-dependent figures change by tonight are built; every
    other row is the previous version's, as of tonight. A re-run writes the same files."""
    lake = night_lake(lake_dir, business_date)
    plan = read_profile_plan(lake)
    mine = in_shard(plan["starts"], shard)
    as_of = date.fromisoformat(business_date)
    entities = pl.scan_parquet(lake.work / "entities.parquet").filter(mine)
    # the links are sorted by record: one streaming pass keeps the shard's (a small frame)
    links = pl.scan_parquet(lake.work / "links.parquet").filter(mine)
    rebuild = None
    if plan["mode"] == "incremental":
        rebuild = pl.scan_parquet(lake.work / PROFILES_TO_REBUILD).filter(mine).collect()
        links = links.join(rebuild.lazy(), on="entity_id", how="semi")
        entities = entities.join(rebuild.lazy(), on="entity_id", how="semi")
    links = links.collect(engine="streaming")
    # the records of those links: a filter on their ids, pushed into the snapshots' scan with the
    # columns the build reads (at 1M firms a fifth peaks at 2.5 GB, against 4.4 GB with a semi-join
    # on both keys); an id another source also uses may come along, the build's join drops it
    ids = links["source_record_id"].implode()
    records = accepted_records(lake).filter(pl.col("source_record_id").is_in(ids))
    profiles, valid_until = build_profiles_valid_until(
        records, links.lazy(), entities, as_of=as_of, stale_sources=frozenset(plan["stale_sources"])
    )
    built = profiles.height
    if rebuild is not None:
        version = lake.published / plan["previous_version"]
        registry = lake.root / REGISTRY_DIR / plan["registry"]
        current = pl.scan_parquet(lake.work / "entities.parquet").filter(mine).select("entity_id")
        kept = (
            pl.scan_parquet(version / "profiles" / "*.parquet")
            .filter(mine)
            .join(rebuild.lazy(), on="entity_id", how="anti")
            .join(current, on="entity_id", how="semi")
            .with_columns(as_of=pl.lit(as_of))
            .collect()
        )
        write_parquet(profiles, part_path(lake.work / BUILT_PROFILES, shard))
        profiles = pl.concat([kept, profiles.select(kept.columns)]).sort("entity_id")
        valid_until = pl.concat(
            [
                pl.scan_parquet(registry / PROFILE_VALID_UNTIL)
                .filter(mine)
                .join(kept.lazy().select("entity_id"), on="entity_id", how="semi")
                .collect(),
                valid_until,
            ]
        ).sort("entity_id")
    write_parquet(valid_until, part_path(lake.work / PROFILE_VALID_UNTIL_DIR, shard))
    # last: a part in PROFILES_DIR means the shard is complete
    path = part_path(lake.work / PROFILES_DIR, shard)
    write_parquet(profiles, path)
    return {
        "shard": shard,
        "profiles": profiles.height,
        "built": built,
        "mode": plan["mode"],
        "grades": grade_counts(profiles),
        "path": str(path),
    }
