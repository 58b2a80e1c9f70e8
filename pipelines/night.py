"""The night's lake and the files its stages hand each other: the one place that names them.

Every stage group's glue (``pipelines/<group>/stages.py``) finds the night's lake, its reports and
the files kept beside the published registry here, so no group imports another's glue for a path.
Imports nothing of pipelines.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from foundation.lake import RAW_PART, Lake


def night_lake(lake_dir: str | Path, business_date: str) -> Lake:
    """The lake of one night; a malformed date fails here, before any stage writes."""
    date.fromisoformat(business_date)  # fail early on a malformed date
    return Lake(Path(lake_dir), business_date)


def cutoff_for(business_date: str) -> datetime:
    """Records of business date D are those last changed before D + 1 day, 00:00."""
    return datetime.combine(date.fromisoformat(business_date) + timedelta(days=1), datetime.min.time())


def suite_parameters(business_date: str) -> dict[str, Any]:
    """Values the suites refer to as ``{"$PARAMETER": ...}``: nothing may happen after the business date."""
    return {
        "business_day_end": cutoff_for(business_date),
        "business_period": business_date[:7].replace("-", ""),
    }


def report_path(lake: Lake, kind: str, source: str) -> Path:
    return lake.reports / kind / f"{source}.json"


def read_report(lake: Lake, kind: str, source: str) -> dict[str, Any]:
    path = report_path(lake, kind, source)
    if not path.exists():
        raise FileNotFoundError(
            f"source '{source}': no {kind} report for {lake.business_date} at {path}; "
            f"run the earlier stages first"
        )
    return json.loads(path.read_text("utf-8"))


def rejects_path(lake: Lake, source: str) -> Path:
    return lake.raw(source).with_name(f"{source}.rejects.parquet")


#: where the entity registry of each published business date lives (LAKE/registry/<date>/)
REGISTRY_DIR = "registry"


#: the published version a registry belongs to (written beside it on publish)
REGISTRY_VERSION_FILE = "published_version.json"


def registry_base(lake: Lake) -> tuple[Path, Path] | None:
    """(registry, published version) of the latest published business date before this run's, or
    None when there is none: a full re-link."""
    root = lake.root / REGISTRY_DIR
    if not root.is_dir():
        return None
    for day_dir in sorted((p for p in root.iterdir() if p.is_dir() and p.name[:1].isdigit()), reverse=True):
        pointer = day_dir / REGISTRY_VERSION_FILE
        if day_dir.name >= lake.business_date or not pointer.exists():
            continue
        version = lake.published / json.loads(pointer.read_text("utf-8"))["version"]
        return (day_dir, version) if version.is_dir() else None
    return None


#: beside each published night's registry: every profile's last unchanged day, and what its
#: profiles rest on besides their records (an incremental night copies what is still valid)
PROFILE_VALID_UNTIL = "profile_valid_until.parquet"


PROFILE_BASIS = "profile_basis.json"


#: the profiles an incremental night built (the others are the previous version's rows): a folder
#: of one part per shard, as PROFILES_DIR
BUILT_PROFILES = "profiles_built"


#: the night's profiles, one part per shard of entities (``part_path``); publish gathers them
PROFILES_DIR = "profiles"


#: each shard's profiles' valid-until (publish gathers them into PROFILE_VALID_UNTIL)
PROFILE_VALID_UNTIL_DIR = "profile_valid_until"


#: the profiles' shards (entity-id ranges), the build mode and the previous version it carries from
PROFILE_PLAN = "profiles_plan.json"


def read_profile_plan(lake: Lake) -> dict[str, Any]:
    """Tonight's profile plan (``pipelines.profiles.stages.plan_profiles``): the shards read it,
    and so does the gather (publish)."""
    path = lake.work / PROFILE_PLAN
    if not path.exists():
        raise FileNotFoundError(
            f"no profile plan for {lake.business_date} at {path}; run plan_profiles first"
        )
    return json.loads(path.read_text("utf-8"))


#: the entity ids whose profiles an incremental night must build (the rest are carried)
PROFILES_TO_REBUILD = "profiles_to_rebuild.parquet"


def part_path(folder: Path, shard: int) -> Path:
    """A shard's file in a folder of parts, named as the raw layer's (``foundation.lake.RAW_PART``):
    sorted by name is sorted by shard."""
    return folder / RAW_PART.format(shard=shard)


def read_shard_reports(folder: Path, shards: int, what: str, lake: Lake) -> list[dict[str, Any]]:
    """The JSON reports the ``shards`` items of a mapped stage wrote in ``folder`` (``part_path``
    with ``.json``), in shard order, for its gather; a missing one is an error naming it (``what``:
    e.g. "source 'tax': extract")."""
    reports = []
    for shard in range(shards):
        path = part_path(folder, shard).with_suffix(".json")
        if not path.exists():
            raise FileNotFoundError(
                f"{what} shard {shard} of {shards} has no report for {lake.business_date} at {path}; "
                "run it first"
            )
        reports.append(json.loads(path.read_text("utf-8")))
    return reports


#: what each shard of a source's batch hands the validate task (``LAKE/work/<date>/shards/<source>/``):
#: a folder per kind (SHARD_KINDS), one part per shard (``part_path``); the staged parts themselves
#: are ``LAKE/staged/<date>/<source>.parquet/part-N.parquet``, as the raw layer's
SHARDS_DIR = "shards"
#: accepted changes and quarantined rows (Parquet), and the shard's report (JSON, ``.json`` suffix)
SHARD_KINDS = ("accepted", "quarantine", "report")


def shard_folder(lake: Lake, source: str, kind: str) -> Path:
    """Where the standardise shards of ``source`` keep their ``kind`` (one of SHARD_KINDS)."""
    if kind not in SHARD_KINDS:
        raise ValueError(f"no shard folder '{kind}': one of {SHARD_KINDS}")
    return lake.work / SHARDS_DIR / source / kind
