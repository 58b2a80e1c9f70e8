"""The pipeline's stages as plain functions: paths and settings in, Parquet out, a small dict back.

Airflow tasks (dags/credit_nightly.py) and ``credit run`` call exactly these functions, in the
order of one stage table (``pipelines.flow.STAGES``), so the nightly DAG and the command line
cannot drift apart. Each returns only paths and counts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.errors import DataQualityError, PublishError
from pipelines.lake import Lake, write_json, write_parquet
from pipelines.settings import resolution_settings  # noqa: F401 (stages.resolution_settings)
from pipelines.sources import SourceConfig, load_sources

log = logging.getLogger(__name__)


def _lake(lake_dir: str | Path, business_date: str) -> Lake:
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


def _suite_runner(lake: Lake) -> Any:
    """A suite runner keeping this run's GX validation results (for Data Docs) under LAKE/reports/<date>/gx."""
    from pipelines.quality import DataDocs, SuiteRunner

    return SuiteRunner(DataDocs(lake.reports / "gx", run_name=lake.business_date))


def _report(lake: Lake, kind: str, source: str) -> Path:
    return lake.reports / kind / f"{source}.json"


def _read_report(lake: Lake, kind: str, source: str) -> dict[str, Any]:
    path = _report(lake, kind, source)
    if not path.exists():
        raise FileNotFoundError(
            f"source '{source}': no {kind} report for {lake.business_date} at {path}; "
            f"run the earlier stages first"
        )
    return json.loads(path.read_text("utf-8"))


def rejects_path(lake: Lake, source: str) -> Path:
    return lake.raw(source).with_name(f"{source}.rejects.parquet")


def extract_source(source: str, sources_dir: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """Pull what changed since the last published run (everything on the first run) into raw.

    An unreachable source raises SourceUnavailableError (worth retrying); a delivery that cannot be
    read as a whole is recorded as the batch's problem for the check stage to judge."""
    from pipelines.errors import SourceFormatError
    from pipelines.extract import REJECT_SCHEMA, extract
    from pipelines.lake import write_parquet as write
    from pipelines.state import previous

    lake = _lake(lake_dir, business_date)
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
        write(pl.DataFrame(schema=REJECT_SCHEMA), rejects_path(lake, source))
        write(pl.DataFrame(), lake.raw(source))
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
    write_json(result, _report(lake, "extract", source))
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
    from pipelines.batch import check_batch
    from pipelines.state import previous

    lake = _lake(lake_dir, business_date)
    config = load_sources()[source]
    extracted = _read_report(lake, "extract", source)
    problems = check_batch(config, extracted, previous(lake.root, source, business_date), business_date)
    return _judge_batch(lake, config, problems)


def _judge_batch(lake: Lake, config: SourceConfig, problems: list[str]) -> dict[str, Any]:
    """Record the batch verdict; a held-back critical source stops the run."""
    result = {"source": config.name, "ok": not problems, "problems": problems, "critical": config.critical}
    write_json(result, _report(lake, "batch", config.name))
    if problems:
        message = f"source '{config.name}' batch held back: " + "; ".join(problems)
        if config.critical:
            raise DataQualityError(message + " (the source is critical: the run stops)")
        log.warning("%s; its last good snapshot will be used and its profiles marked stale", message)
    return result


def standardise_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    from pipelines.standardise import standardise

    lake = _lake(lake_dir, business_date)
    if not _read_report(lake, "batch", source)["ok"]:
        return {"source": source, "rows": 0, "skipped": "batch held back", "path": None}
    rows = standardise(load_sources()[source], lake.raw(source), lake.staged(source))
    return {"source": source, "rows": rows, "path": str(lake.staged(source))}


def _merge_snapshot(base: Path, delta: Path, target: Path) -> int:
    """The source's full accepted state: the last snapshot with this run's accepted rows upserted
    (a record's newest accepted version wins; a record whose new version was quarantined keeps its
    last good version)."""
    changed = pl.scan_parquet(delta)
    kept = pl.scan_parquet(base).join(
        changed.select("source_record_id"), on="source_record_id", how="anti", maintain_order="left"
    )
    # both are sorted by record id (snapshots are written so, the accepted changes too) and hold no
    # id in common: merged, not sorted again (the snapshot is the night's largest file per source)
    return write_parquet(kept.merge_sorted(changed, key="source_record_id"), target)


def validate_source(source: str, lake_dir: str, business_date: str) -> dict[str, Any]:
    """Promote a batch: GX row checks on the changes, quarantine with reasons, upsert into the
    snapshot. A batch the check stage held back is quarantined whole and the last good snapshot
    is carried forward (stale)."""
    from pipelines import quality
    from pipelines.state import previous

    lake = _lake(lake_dir, business_date)
    runner = _suite_runner(lake)
    extracted = _read_report(lake, "extract", source)
    batch = _read_report(lake, "batch", source)
    if batch["ok"]:  # the raw suite, here because this task imports Great Expectations anyway
        from pipelines.batch import raw_suite_problems

        config = load_sources()[source]
        batch = _judge_batch(lake, config, raw_suite_problems(config, lake.raw(source), runner))
    base = previous(lake.root, source, business_date)
    rejects = pl.read_parquet(rejects_path(lake, source))
    if batch["ok"]:
        # with no earlier snapshot the accepted changes are the snapshot; otherwise they are upserted
        delta_path = lake.work / "accepted_changes" / f"{source}.parquet" if base else lake.accepted(source)
        result = quality.validate_source(
            source,
            lake.staged(source),
            delta_path,
            lake.quarantine(source),
            raw_path=lake.raw(source),
            rejects=rejects,
            parameters=suite_parameters(business_date),
            runner=runner,
        )
        snapshot = (
            _merge_snapshot(base.snapshot, delta_path, lake.accepted(source)) if base else result["accepted"]
        )
        state = {"newest": extracted["newest"], "source_rows": extracted["source_rows"], "stale": False}
    else:
        if base is None:
            raise DataQualityError(
                f"source '{source}' batch held back ({'; '.join(batch['problems'])}) and no earlier good "
                f"snapshot exists to fall back on; nothing can be published"
            )
        reason = "batch held back: " + "; ".join(batch["problems"])
        held = pl.read_parquet(lake.raw(source)) if lake.raw(source).exists() else pl.DataFrame()
        quarantined = pl.concat(
            [
                quality.rejects_to_quarantine(source, rejects, stage="extract"),
                quality.conform_quarantine(
                    pl.DataFrame({"original": quality.original_values(held)}).with_columns(
                        pl.lit(source).alias("source"),
                        pl.lit("batch").alias("stage"),
                        pl.lit(reason).alias("reason"),
                        pl.concat_list(pl.lit("batch:promotable")).alias("failed_expectations"),
                    )
                ),
            ]
        )
        write_parquet(quarantined, lake.quarantine(source))
        snapshot = write_parquet(pl.scan_parquet(base.snapshot), lake.accepted(source))
        result = {
            "source": source,
            "extracted": held.height + rejects.height,
            "accepted": 0,
            "quarantined": quarantined.height,
        }
        state = {"newest": base.newest, "source_rows": base.source_rows, "stale": True}
        log.warning(
            "source %s: %s; using the snapshot of %s (%d records)",
            source,
            reason,
            base.business_date,
            snapshot,
        )
    counts = {k: result[k] for k in ("source", "extracted", "accepted", "quarantined")}
    report = {
        **counts,
        **state,
        "snapshot_records": snapshot,
        "snapshot": str(lake.accepted(source)),
        "base_date": base.business_date if base else None,
        "problems": batch["problems"],
    }
    write_json(report, _report(lake, "validation", source))
    return {
        **counts,
        "snapshot_records": snapshot,
        "stale": state["stale"],
        "accepted_path": str(lake.accepted(source)),
        "quarantine_path": str(lake.quarantine(source)),
    }


def _accepted(lake: Lake) -> pl.LazyFrame:
    paths = [lake.accepted(name) for name in load_sources()]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"accepted data missing for {missing} in {lake.root}")
    return pl.concat([pl.scan_parquet(p) for p in paths], how="vertical_relaxed")


#: where the entity registry of each published business date lives (LAKE/registry/<date>/)
REGISTRY_DIR = "registry"
#: the published version a registry belongs to (written beside it on publish)
REGISTRY_VERSION_FILE = "published_version.json"


def _link_or_copy(source: str, target: str) -> None:
    """``copy_function`` for a folder whose files are replaced whole, never written in place: a
    hard link (no bytes copied), a copy where the file system refuses one."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _registry_base(lake: Lake) -> tuple[Path, Path] | None:
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


def _changed_records(lake: Lake, base_date: str) -> pl.LazyFrame | None:
    """The night's new and changed accepted records over all sources (None when some source was not
    upserted onto the same base date, e.g. a source seen for the first time: then a full re-link)."""
    frames = []
    for name in load_sources():
        report = _read_report(lake, "validation", name)
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
    from entity_resolution.pipeline import (
        IDENTITY_COLUMNS,
        KEYS,
        KnownEntitiesConflict,
        resolve_canonical,
        resolve_changes,
    )

    lake = _lake(lake_dir, business_date)
    settings = resolution_settings()
    spec = settings.get("spec", "enterprise")
    base = _registry_base(lake)
    staged_registry = lake.work / "registry"
    shutil.rmtree(staged_registry, ignore_errors=True)
    if base:
        # (tonight's profiles write their own valid-until and basis: not the base night's); hard
        # links, not copies: the registry's files are only ever replaced whole (atomic writes)
        shutil.copytree(
            base[0],
            staged_registry,
            ignore=shutil.ignore_patterns(PROFILE_VALID_UNTIL, PROFILE_BASIS),
            copy_function=_link_or_copy,
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
                    _accepted(lake).join(keys.lazy(), on=KEYS, how="semi").select(IDENTITY_COLUMNS).collect()
                ),
                spec,
                **review,
            )
        except KnownEntitiesConflict as conflict:
            log.warning("%s; re-linking the whole snapshot", conflict)
            reason = str(conflict)
    if resolution is None:
        resolution = resolve_canonical(_accepted(lake).select(IDENTITY_COLUMNS).collect(), spec, **review)
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
    write_json({**result, "stats": resolution.stats}, _report(lake, "resolution", "entities"))
    return result


#: beside each published night's registry: every profile's last unchanged day, and what its
#: profiles rest on besides their records (an incremental night copies what is still valid)
PROFILE_VALID_UNTIL = "profile_valid_until.parquet"
PROFILE_BASIS = "profile_basis.json"
#: the profiles an incremental night built (the others are the previous version's rows)
BUILT_PROFILES = "profiles_built.parquet"


def _profile_basis(business_date: str, stale: frozenset[str]) -> dict[str, Any]:
    """What every profile depends on besides its own records and the day: the sources held back
    and the grading, industries and code that turn records into a profile."""
    import hashlib

    from pipelines import profiles

    digest = hashlib.sha256()
    for path in (profiles.grading_path(), profiles.industries_path(), Path(profiles.__file__)):
        digest.update(Path(path).read_bytes())
    return {"as_of": business_date, "stale_sources": sorted(stale), "rules": digest.hexdigest()}


def _profiles_to_rebuild(lake: Lake, basis: dict[str, Any]) -> tuple[Path, pl.DataFrame] | None:
    """(previous version, entity ids whose profiles must be built tonight), or None when every
    profile must be built: after a full re-link, or when the previous night's profiles rest on
    another basis (other sources held back, other rules)."""
    resolution = _read_report(lake, "resolution", "entities")
    base = _registry_base(lake)
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
    from pipelines.profiles import build_profiles_valid_until as build

    lake = _lake(lake_dir, business_date)
    stale = frozenset(name for name in load_sources() if _read_report(lake, "validation", name).get("stale"))
    basis = _profile_basis(business_date, stale)
    plan = _profiles_to_rebuild(lake, basis)
    links = pl.scan_parquet(lake.work / "links.parquet")
    entities = pl.scan_parquet(lake.work / "entities.parquet")
    records = _accepted(lake)
    if plan is not None:
        rebuild = plan[1].lazy()
        links = links.join(rebuild, on="entity_id", how="semi")
        entities = entities.join(rebuild, on="entity_id", how="semi")
        records = records.join(
            links.select("source", "source_record_id"), on=["source", "source_record_id"], how="semi"
        )
    profiles, valid_until = build(
        records, links, entities, as_of=date.fromisoformat(business_date), stale_sources=stale
    )
    built = profiles.height
    if plan is not None:
        version, rebuild = plan
        registry = _registry_base(lake)[0]  # type: ignore[index]
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


def validate_profiles(lake_dir: str, business_date: str) -> dict[str, Any]:
    """The profiles suite over the night's profiles. After an incremental build, over the profiles
    built tonight (the copied rows passed it when published), and one row per entity over all;
    the totals are reconciled with the accepted records by publish's books either way."""
    from pipelines import quality

    lake = _lake(lake_dir, business_date)
    runner = _suite_runner(lake)
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


#: profile column -> (which accepted records, which value; None counts them): the totals that the
#: published profiles must reconcile with, to the cent
RECONCILED_TOTALS: dict[str, tuple[tuple[str, ...] | None, str | None]] = {
    "record_count": (None, None),
    "lending_loans": (("loan",), None),
    "lending_amount": (("loan",), "amount"),
    "lending_balance": (("loan",), "balance"),
    "tax_arrears_balance": (("tax_arrears",), "balance"),
    "contract_cases": (("dishonest_debtor", "enforcement", "contract_default"), None),
}


def accepted_totals(lake: Lake) -> dict[str, Decimal | int]:
    """What the accepted records add up to, per reconciled profile column: counts, and money summed
    exactly as the profiles sum it (``pipelines.profiles.money``: each record to the fen)."""
    return accepted_figures(lake)[0]


def accepted_figures(lake: Lake) -> tuple[dict[str, Decimal | int], dict[str, Any]]:
    """(``accepted_totals``, each source's newest ``updated_at``) in one pass over the snapshots:
    publish needs both, and the snapshots are the night's largest input."""
    from pipelines.profiles import money

    wanted = []
    for column, (types, value) in RECONCILED_TOTALS.items():
        if types is None:
            wanted.append(pl.len().alias(column))
            continue
        rows = pl.col("record_type").is_in(list(types))
        total = money(pl.col(value).fill_null(0)).filter(rows).sum() if value else rows.sum()
        wanted.append(total.alias(column))
    per_source = (
        _accepted(lake).group_by("source").agg(*wanted, pl.col("updated_at").max()).sort("source").collect()
    )
    totals = per_source.select(pl.col(c).sum() for c in RECONCILED_TOTALS).row(0, named=True)
    newest = dict(per_source.select("source", "updated_at").iter_rows())
    return {k: v if v is not None else 0 for k, v in totals.items()}, newest


def reconcile(
    lake: Lake,
    profiles: pl.DataFrame,
    links: pl.DataFrame,
    validation: dict[str, dict[str, Any]],
    expected: dict[str, Decimal | int] | None = None,
) -> dict[str, Any]:
    """The books: per source extracted = accepted + quarantined, one link per snapshot record, and
    the profiles' totals equal to the accepted records' (money exactly, as decimals; counts exactly;
    ``expected``: ``accepted_totals``, when the caller has them)."""
    problems = []
    for name, counts in validation.items():
        if counts["extracted"] != counts["accepted"] + counts["quarantined"]:
            problems.append(
                f"source '{name}': extracted {counts['extracted']} != accepted {counts['accepted']} "
                f"+ quarantined {counts['quarantined']}"
            )
    snapshot_records = sum(v["snapshot_records"] for v in validation.values())
    if links.height != snapshot_records:
        problems.append(f"{snapshot_records} accepted records but {links.height} links")
    expected = accepted_totals(lake) if expected is None else expected
    totals: dict[str, Any] = {}
    for column in RECONCILED_TOTALS:
        published = profiles[column].fill_null(0).sum()
        totals[column] = {
            "records": round(float(expected[column]), 2),
            "profiles": round(float(published), 2),
        }
        if expected[column] != published:
            problems.append(
                f"{column}: accepted records hold {expected[column]:,} but profiles {published:,}"
            )
    return {
        "balanced": not problems,
        "problems": problems,
        "totals": totals,
        "snapshot_records": snapshot_records,
        "links": links.height,
        "profiles": profiles.height,
    }


def publish(lake_dir: str, business_date: str, run_id: str) -> dict[str, Any]:
    from pipelines.data_docs import build_site
    from pipelines.publish import publish_version
    from pipelines.report import build_run_report
    from pipelines.state import record

    lake = _lake(lake_dir, business_date)
    validation = {}
    for name in load_sources():
        report = _report(lake, "validation", name)
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
    if (lake.work / "registry").is_dir():
        from pipelines.lake import replace_dir

        staging = lake.root / REGISTRY_DIR / f".{business_date}.new"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(lake.work / "registry", staging, copy_function=_link_or_copy)
        for name in (PROFILE_VALID_UNTIL, PROFILE_BASIS):  # what tomorrow's profiles build on
            if (lake.work / name).exists():
                shutil.copyfile(lake.work / name, staging / name)
        write_json({"version": result["version"]}, staging / REGISTRY_VERSION_FILE)
        replace_dir(staging, lake.root / REGISTRY_DIR / business_date)
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
