"""The pipeline's stages as plain functions: paths and settings in, Parquet out, a small dict back.

Airflow tasks (dags/credit_nightly.py) and ``credit run`` call exactly these functions, so the
nightly DAG and the command line cannot drift apart. Each returns only paths and counts.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.errors import PublishError
from pipelines.lake import Lake, write_json, write_parquet
from pipelines.sources import load_sources

log = logging.getLogger(__name__)


def _lake(lake_dir: str | Path, business_date: str) -> Lake:
    date.fromisoformat(business_date)  # fail early on a malformed date
    return Lake(Path(lake_dir), business_date)


def cutoff_for(business_date: str) -> datetime:
    """Records of business date D are those last changed before D + 1 day, 00:00."""
    return datetime.combine(date.fromisoformat(business_date) + timedelta(days=1), datetime.min.time())


def extract_source(source: str, sources_dir: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    from pipelines.extract import extract

    lake = _lake(lake_dir, business_date)
    config = load_sources()[source]
    rows = extract(config, Path(sources_dir), lake.raw(source), cutoff_for(business_date))
    log.info("extracted %s rows from %s", rows, source)
    return {"source": source, "rows": rows, "path": str(lake.raw(source))}


def standardise_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    from pipelines.standardise import standardise

    lake = _lake(lake_dir, business_date)
    rows = standardise(load_sources()[source], lake.raw(source), lake.staged(source))
    return {"source": source, "rows": rows, "path": str(lake.staged(source))}


def validate_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    from pipelines import quality

    lake = _lake(lake_dir, business_date)
    result = quality.validate_source(source, lake.staged(source), lake.accepted(source), lake.quarantine(source))
    counts = {k: result[k] for k in ("source", "extracted", "accepted", "quarantined")}
    write_json(counts, lake.reports / "validation" / f"{source}.json")
    return {**counts, "accepted_path": str(lake.accepted(source)), "quarantine_path": str(lake.quarantine(source))}


def _accepted(lake: Lake) -> pl.LazyFrame:
    paths = [lake.accepted(name) for name in load_sources()]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"accepted data missing for {missing} in {lake.root}")
    return pl.concat([pl.scan_parquet(p) for p in paths], how="vertical_relaxed")


def resolve_entities(lake_dir: str, business_date: str) -> dict[str, Any]:
    from entity_resolution.resolve import IDENTITY_COLUMNS, resolve

    lake = _lake(lake_dir, business_date)
    # no local reference to the records: resolve() drops them once it has the distinct signatures
    links, entities = resolve(_accepted(lake).select(IDENTITY_COLUMNS).collect())
    write_parquet(links, lake.work / "links.parquet")
    write_parquet(entities, lake.work / "entities.parquet")
    methods = dict(links.group_by("match_method").len().sort("match_method").iter_rows())
    return {"records": links.height, "entities": entities.height, "methods": methods,
            "links_path": str(lake.work / "links.parquet")}


def build_profiles(lake_dir: str, business_date: str) -> dict[str, Any]:
    from pipelines.profiles import build_profiles as build

    lake = _lake(lake_dir, business_date)
    profiles = build(
        _accepted(lake),
        pl.scan_parquet(lake.work / "links.parquet"),
        pl.scan_parquet(lake.work / "entities.parquet"),
        as_of=date.fromisoformat(business_date),
    )
    write_parquet(profiles, lake.work / "profiles.parquet")
    grades = dict(profiles.group_by("grade").len().sort("grade").iter_rows())
    return {"profiles": profiles.height, "grades": grades, "path": str(lake.work / "profiles.parquet")}


def validate_profiles(lake_dir: str, business_date: str) -> dict[str, Any]:
    from pipelines import quality

    lake = _lake(lake_dir, business_date)
    return quality.validate_profiles(lake.work / "profiles.parquet")


def publish(lake_dir: str, business_date: str, run_id: str) -> dict[str, Any]:
    from pipelines.publish import publish_version

    lake = _lake(lake_dir, business_date)
    validation = {}
    for name in load_sources():
        report = lake.reports / "validation" / f"{name}.json"
        if not report.exists():
            raise PublishError(f"no validation report for source '{name}' on {business_date}; nothing published")
        validation[name] = json.loads(report.read_text("utf-8"))
    frames = {
        "profiles": pl.read_parquet(lake.work / "profiles.parquet"),
        "links": pl.read_parquet(lake.work / "links.parquet"),
        "entities": pl.read_parquet(lake.work / "entities.parquet"),
    }
    accepted = sum(v["accepted"] for v in validation.values())
    if frames["links"].height != accepted:
        raise PublishError(
            f"books do not balance: {accepted} accepted records but {frames['links'].height} links; nothing published"
        )
    as_of = (
        _accepted(lake).group_by("source").agg(pl.col("updated_at").max()).collect()
    )
    sources = {
        row["source"]: {**validation[row["source"]], "as_of": str(row["updated_at"])}
        for row in as_of.iter_rows(named=True)
    }
    result = publish_version(lake.published, business_date, run_id, frames, {"sources": sources})
    write_json({"business_date": business_date, "run_id": run_id, "sources": sources, **result},
               lake.reports / "summary.json")
    return result


def run_all(sources_dir: str, lake_dir: str, business_date: str, run_id: str | None = None,
            progress: bool = False) -> dict[str, Any]:
    """The whole pipeline in-process, with the same stage functions and order as the DAG."""
    from tqdm import tqdm

    names = list(load_sources())
    steps: list[tuple[str, Any]] = []
    for name in names:
        steps.append((f"extract {name}", lambda n=name: extract_source(n, sources_dir, lake_dir, business_date)))
    for name in names:
        steps.append((f"standardise {name}", lambda n=name: standardise_source(n, lake_dir, business_date)))
    for name in names:
        steps.append((f"validate {name}", lambda n=name: validate_source(n, lake_dir, business_date)))
    steps += [
        ("resolve entities", lambda: resolve_entities(lake_dir, business_date)),
        ("build profiles", lambda: build_profiles(lake_dir, business_date)),
        ("validate profiles", lambda: validate_profiles(lake_dir, business_date)),
        ("publish", lambda: publish(lake_dir, business_date, run_id or f"cli__{business_date}")),
    ]
    results: dict[str, Any] = {}
    bar = tqdm(steps, desc="credit run", unit="step", disable=not progress)
    for label, step in bar:
        bar.set_postfix_str(label)
        results[label] = step()
    return results
