"""Resolution per partition: ``prepare_resolution`` -> ``resolve_partition`` (each, any order) ->
``resolve_entities`` writes the same links, entities, registry and review queue, byte for byte, as
the one-call ``resolve_canonical``, however many partitions the configuration cuts it into."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from entity_resolution import pipeline
from entity_resolution.engine import Scale, finish_link, link, normalise, prepare_link, resolve_link_partition
from entity_resolution.pipeline import (
    ENGINE_DIR,
    IDENTITY_COLUMNS,
    KEYS,
    Resolution,
    enterprise_inputs,
    resolve_canonical,
    resolve_changes,
)
from entity_resolution.registry import NORMALISED, NORMALISED_BY
from entity_resolution.spec import load_spec
from foundation.lake import Lake, write_parquet
from pipelines.night import night_lake, registry_base
from pipelines.resolution import stages
from pipelines.sources.snapshot import accepted_records

FIRST, NIGHT = "2026-11-22", "2026-11-23"  # a Sunday (the first night), then a Monday
#: the keys today's resolve_entities returned: build_profiles, publish and the DAG read them
RESULT_KEYS = {
    "mode",
    "full_relink_reason",
    "records",
    "changed_records",
    "entities",
    "touched_entities",
    "methods",
    "code_grades",
    "links_path",
}


@pytest.fixture
def lake(published_lakes) -> Path:  # noqa: ANN001 - the conftest factory
    """A lake with two published nights: the second night's resolution is re-run here."""
    _, lake = published_lakes.lake(600, 11, days=2, nights=(FIRST, NIGHT))
    return lake


@pytest.fixture
def partition_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[int | None], None]]:
    """Set config/resolution.toml's partition_signatures (None: the spec's own) for this test."""

    def configure(value: int | None) -> None:
        config = tmp_path / "resolution.toml"
        line = f"partition_signatures = {value}\n" if value else ""
        config.write_text(f'spec = "enterprise"\nfull_relink_weekdays = [7]\n{line}', "utf-8")
        monkeypatch.setenv("CREDIT_RESOLUTION_CONFIG", str(config))

    yield configure


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _one_call(lake: Path, out: Path) -> dict[str, dict[str, str]]:
    """The night re-linked whole by ``resolve_canonical`` on a fresh copy of the base registry:
    digests of its links and entities (written as the stage writes them), registry and review."""
    night = night_lake(lake, NIGHT)
    base = registry_base(night)
    registry = out / "registry"
    shutil.copytree(base[0], registry)
    for name in ("published_version.json", "profile_valid_until.parquet", "profile_basis.json"):
        (registry / name).unlink(missing_ok=True)
    resolution = resolve_canonical(
        accepted_records(night).select(IDENTITY_COLUMNS).collect(),
        "enterprise",
        registry,
        out / "review",
        lake / "review" / "decisions.csv",
        NIGHT,
    )
    write_parquet(resolution.links, out / "tables" / "links.parquet")
    write_parquet(resolution.entities, out / "tables" / "entities.parquet")
    write_parquet(resolution.touched, out / "tables" / "touched_entities.parquet")
    return {
        "tables": _digests(out / "tables"),
        "registry": _digests(registry),
        "review": _digests(out / "review"),
    }


def _staged(lake: Path) -> dict[str, dict[str, str]]:
    """Digests of what the stages wrote for the night (the same kinds as ``_one_call``)."""
    work = night_lake(lake, NIGHT).work
    names = ("links.parquet", "entities.parquet", "touched_entities.parquet")
    return {
        "tables": {name: hashlib.sha256((work / name).read_bytes()).hexdigest() for name in names},
        "registry": _digests(work / "registry"),
        "review": _digests(lake / "review" / NIGHT),
    }


@pytest.mark.parametrize(
    ("signatures", "reverse"),
    [(None, False), (150, False), (150, True)],
    ids=["one-partition", "several", "several-reversed"],
)
def test_partitions_give_the_one_call_result(
    lake: Path, tmp_path: Path, partition_signatures, signatures: int | None, reverse: bool
) -> None:  # noqa: ANN001
    partition_signatures(signatures)
    plan = stages.prepare_resolution(str(lake), NIGHT, full_relink=True)
    assert plan["mode"] == "full" and plan["full_relink_reason"] == "--full-relink"
    partitions = plan["partitions"]
    assert partitions == list(range(len(partitions)))
    assert len(partitions) == 1 if signatures is None else len(partitions) >= 5
    counted = [stages.resolve_partition(str(lake), NIGHT, p) for p in sorted(partitions, reverse=reverse)]
    assert {c["partition"] for c in counted} == set(partitions)
    result = stages.resolve_entities(str(lake), NIGHT)
    assert set(result) == RESULT_KEYS and result["mode"] == "full"
    assert result["records"] == pl.scan_parquet(Path(result["links_path"])).select(pl.len()).collect().item()
    expected = _one_call(lake, tmp_path / "one-call")
    assert _staged(lake) == expected
    assert expected["registry"].keys() >= {"members.parquet", "history.parquet", "representatives.parquet"}
    assert (
        sum(c["signatures"] for c in counted)
        == pl.read_parquet(
            night_lake(lake, NIGHT).work / "resolution" / ENGINE_DIR / "signatures.parquet", columns=["sig"]
        ).height
    )


def test_a_partition_run_again_changes_nothing(lake: Path, partition_signatures) -> None:  # noqa: ANN001
    partition_signatures(150)
    plan = stages.prepare_resolution(str(lake), NIGHT, full_relink=True)
    engine = night_lake(lake, NIGHT).work / "resolution" / ENGINE_DIR
    first = [stages.resolve_partition(str(lake), NIGHT, p) for p in plan["partitions"]]
    written = _digests(engine / "partitions")
    assert sum(name.endswith("links.parquet") for name in written) == len(plan["partitions"])
    again = [stages.resolve_partition(str(lake), NIGHT, p) for p in plan["partitions"][::2]]
    assert again == first[::2]
    assert _digests(engine / "partitions") == written
    with pytest.raises(ValueError, match="does not exist"):
        stages.resolve_partition(str(lake), NIGHT, len(plan["partitions"]))
    # the finish gathers; run again without a new preparation, it prepares afresh: the same files
    stages.resolve_entities(str(lake), NIGHT, full_relink=True)
    gathered = _staged(lake)
    stages.resolve_entities(str(lake), NIGHT, full_relink=True)
    assert _staged(lake) == gathered


def test_the_finish_wants_every_partition(lake: Path, partition_signatures) -> None:  # noqa: ANN001
    partition_signatures(150)
    plan = stages.prepare_resolution(str(lake), NIGHT, full_relink=True)
    for partition in plan["partitions"][1:]:
        stages.resolve_partition(str(lake), NIGHT, partition)
    engine = night_lake(lake, NIGHT).work / "resolution" / ENGINE_DIR
    with pytest.raises(FileNotFoundError, match="part-00000"):
        finish_link(engine, load_spec("enterprise"))


def _resolve_changes(night: Lake, changed: pl.DataFrame, version: Path, registry: Path) -> Resolution:
    """``resolve_changes`` as prepare_resolution calls it, on ``registry`` (a copy of the base)."""
    return resolve_changes(
        changed,
        pl.scan_parquet(version / "links" / "*.parquet"),
        pl.read_parquet(version / "entities" / "*.parquet"),
        lambda keys: (
            accepted_records(night).join(keys.lazy(), on=KEYS, how="semi").select(IDENTITY_COLUMNS).collect()
        ),
        "enterprise",
        registry,
        run=NIGHT,
    )


def test_an_incremental_night_is_resolved_whole(lake: Path, tmp_path: Path, partition_signatures) -> None:  # noqa: ANN001
    partition_signatures(150)  # (not used: an incremental night has no partitions)
    plan = stages.prepare_resolution(str(lake), NIGHT)
    assert plan == {"mode": "incremental", "full_relink_reason": None, "partitions": []}
    result = stages.resolve_entities(str(lake), NIGHT)
    assert set(result) == RESULT_KEYS and result["mode"] == "incremental"
    # today's incremental resolution, called directly on a fresh copy of the base registry
    night = night_lake(lake, NIGHT)
    registry, version = registry_base(night)
    staged = tmp_path / "registry"
    shutil.copytree(registry, staged)
    (staged / "published_version.json").unlink()
    changed = stages._changed_records(night, registry.name)
    assert changed is not None, "every source should have been upserted onto the first night"
    expected = _resolve_changes(night, changed.select(IDENTITY_COLUMNS).collect(), version, staged)
    assert pl.read_parquet(night.work / "links.parquet").equals(expected.links.lazy().collect())
    assert pl.read_parquet(night.work / "entities.parquet").equals(expected.entities)
    assert result["changed_records"] == expected.stats["changed_records"]


def test_the_engine_steps_give_what_link_gives(lake: Path, tmp_path: Path) -> None:
    """The engine alone, with what the pipeline does not use (every scored pair, recorded columns)."""
    firms = accepted_records(night_lake(lake, NIGHT)).select(IDENTITY_COLUMNS).collect()
    inputs = firms.filter(pl.col("code_status") != "resident_id").select(*enterprise_inputs())
    spec = load_spec("enterprise")
    scale = replace(Scale.of(spec), partition_signatures=150, partition_workers=1)
    must = list(zip(inputs["record_id"][:3], inputs["record_id"][3:6], strict=True))
    anchors = dict(zip(inputs["record_id"][::50], inputs["record_id"][::50], strict=True))
    options = {"recorded_columns": ["name"], "keep_pairs": True, "scale": scale, "anchors": anchors}
    whole = link(inputs, spec, must, **options)
    partitions = prepare_link(inputs, spec, must, work_dir=tmp_path / "work", **options)
    assert partitions == whole.stats["partitions"] >= 5
    for number in reversed(range(partitions)):
        resolve_link_partition(tmp_path / "work", spec, number)
    steps = finish_link(tmp_path / "work", spec)
    assert steps.links.equals(whole.links) and "name" in steps.links.columns
    assert steps.pairs.equals(whole.pairs) and steps.review.equals(whole.review)
    assert steps.model == whole.model
    # (the record map is written by a streaming query: its rows in no fixed order)
    assert steps.assignments.collect().sort("record_id").equals(whole.assignments.collect().sort("record_id"))
    varying = ("seconds", "cpu_seconds", "peak_mb")
    assert {k: v for k, v in steps.stats.items() if k not in varying} == {
        k: v for k, v in whole.stats.items() if k not in varying
    }


def test_an_incremental_night_takes_the_representatives_as_stored_normalised(
    lake: Path, tmp_path: Path
) -> None:
    """The registry keeps each representative's normalised fields with the normaliser's
    fingerprint: an incremental night normalises only its own records, with the same resolution as
    from a registry an older version wrote (none stored) or another normaliser (another
    fingerprint), whose representatives it normalises again."""
    night = night_lake(lake, NIGHT)
    registry, version = registry_base(night)
    stored = pl.read_parquet(registry / "representatives.parquet")
    assert stored[NORMALISED_BY].null_count() == 0 and stored[NORMALISED_BY].n_unique() == 1
    changed = stages._changed_records(night, registry.name).select(IDENTITY_COLUMNS).collect()
    ways = {
        "stored": stored,
        "older": stored.drop(NORMALISED, NORMALISED_BY),
        "another normaliser": stored.with_columns(pl.lit("0" * 16).alias(NORMALISED_BY)),
    }
    results = {}
    for way, representatives in ways.items():
        staged = tmp_path / way
        shutil.copytree(registry, staged)
        (staged / "published_version.json").unlink()
        representatives.write_parquet(staged / "representatives.parquet")
        results[way] = _resolve_changes(night, changed, version, staged)
    stats = results["stored"].stats
    assert stats["given_normalised"] == stats["representatives_compared"] > 0
    links = results["stored"].links.lazy().collect()
    for way in ("older", "another normaliser"):
        assert results[way].stats["given_normalised"] == 0
        assert results[way].links.lazy().collect().equals(links)
        assert results[way].entities.equals(results["stored"].entities)
    # tonight's representatives are stored normalised too, by tonight's normaliser
    after = pl.read_parquet(tmp_path / "stored" / "representatives.parquet")
    assert after[NORMALISED_BY].null_count() == 0 and after[NORMALISED_BY].n_unique() == 1
    assert after.height > 0 and not after.join(stored, on="record_id", how="anti").is_empty()


def test_a_spelling_one_off_tonight_but_not_in_the_snapshot_reaches_its_firm(
    lake: Path, tmp_path: Path
) -> None:
    """Tonight's records are keyed as the engine reads them, by the whole snapshot's spellings: a
    firm's trade name that only one of tonight's records carries, one character from a new firm's
    that two of tonight's records carry, is not read as the new firm's (it recurs in the snapshot),
    so the night reaches the firm's representatives and the record joins it, as a full re-link
    would join it."""
    night = night_lake(lake, NIGHT)
    registry, version = registry_base(night)
    spec = load_spec("enterprise")
    records = accepted_records(night).select(IDENTITY_COLUMNS).collect()
    links = pl.read_parquet(version / "links" / "*.parquet")
    # a firm with a USCC and code-less records naming it: one of them, recorded again tonight
    codeless = records.filter(
        pl.col("uscc").is_null() & pl.col("org_code").is_null() & pl.col("reg_no").is_null()
    )
    linked = codeless.join(links.select(*KEYS, "entity_id"), on=KEYS).filter(
        pl.col("entity_id").str.len_chars() == 18
    )
    cores = normalise(linked.select(*enterprise_inputs()), spec)["name_core"]
    linked = linked.with_columns(cores.alias("core")).filter(pl.col("core").str.len_chars() >= 4)
    firm = (
        linked.group_by("entity_id", "core")
        .len()
        .filter(pl.col("len") >= 2)
        .sort("entity_id")
        .row(0, named=True)
    )
    record = linked.filter(pl.col("entity_id") == firm["entity_id"], pl.col("core") == firm["core"]).head(1)
    core = firm["core"]
    sibling = ("鑫" if core[0] != "鑫" else "淼") + core[1:]  # a new firm one character away
    # tonight's changes (the model needs them), none of which names the firm, and three records more
    tonight = stages._changed_records(night, registry.name).select(IDENTITY_COLUMNS).collect()
    tonight = tonight.filter(~pl.col("subject_name").str.contains(core, literal=True).fill_null(False))
    changed = pl.concat(
        [
            tonight,
            record.drop("core", "entity_id").with_columns(pl.lit("TONIGHT-1").alias("source_record_id")),
            *(
                record.drop("core", "entity_id").with_columns(
                    pl.lit(f"TONIGHT-{n}").alias("source_record_id"),
                    pl.col("subject_name").str.replace(core, sibling, literal=True),
                )
                for n in (2, 3)
            ),
        ],
        how="vertical_relaxed",
    )
    staged = tmp_path / "registry"
    shutil.copytree(registry, staged)
    (staged / "published_version.json").unlink()
    result = _resolve_changes(night, changed, version, staged)
    tonight = result.links.lazy().filter(pl.col("source_record_id").str.starts_with("TONIGHT-")).collect()
    entity = dict(zip(tonight["source_record_id"], tonight["entity_id"], strict=True))
    assert entity["TONIGHT-1"] == firm["entity_id"]
    assert entity["TONIGHT-2"] == entity["TONIGHT-3"] != firm["entity_id"]


def test_an_incremental_night_reaches_the_representatives_its_links_need(lake: Path) -> None:
    """The night gives the engine only the known firms its records can join: those sharing a
    blocking key with a record that no known firm's USCC places, and those sharing an exact key
    with any. With the model held fixed, its records' links are those it gets from every
    representative of the registry."""
    night = night_lake(lake, NIGHT)
    registry, version = registry_base(night)
    spec = load_spec("enterprise")
    changed = stages._changed_records(night, registry.name).select(IDENTITY_COLUMNS).collect()
    previous = pl.scan_parquet(version / "links" / "*.parquet")
    spellings = {"name": pipeline._snapshot_spellings(registry, previous, changed)}
    inputs = pipeline._split_persons(changed)[0].select(*enterprise_inputs())
    keys = pipeline.blocking_keys(inputs, spec, spellings)
    stored = pl.scan_parquet(registry / "representatives.parquet")
    reached = pipeline._within_reach(stored, keys, spec)
    every = stored.drop(pipeline.BLOCK_KEYS).collect()
    assert 0 < reached.height < every.height
    links, renamed, whole = pipeline._engine(inputs, spec, None, every, spellings)
    again, renamed_again, _ = pipeline._engine(inputs, spec, None, reached, spellings, whole.fitted)
    assert again.equals(links) and renamed_again == renamed
