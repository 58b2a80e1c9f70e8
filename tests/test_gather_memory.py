"""The gather of a full re-link (``finish_canonical`` / ``gather_canonical``) works a bucket of
entities at a time, yet gives exactly what building the links, entities and registry from the whole
snapshot at once gave (the reference below is that whole-snapshot code), whatever the bucket size
and however many processes build the buckets: the same bytes in every file with one or two."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

import entity_resolution.internals.pool as pool
import entity_resolution.pipeline as pipeline
from entity_resolution.engine import finish_link, resolve_link_partitions
from entity_resolution.pipeline import (
    ENGINE_DIR,
    IDENTITY_COLUMNS,
    KEYS,
    blocking_keys,
    enterprise_inputs,
    finish_canonical,
    prepare_canonical,
)
from entity_resolution.registry import Registry
from entity_resolution.review import write_review
from entity_resolution.spec import load_spec
from pipelines.night import night_lake, registry_base
from pipelines.sources.snapshot import accepted_records

FIRST, NIGHT = "2026-11-22", "2026-11-23"  # (the lake test_resolution_partitions uses)


def _whole(work: Path, registry_dir: Path, review_dir: Path, run: str) -> tuple[pl.DataFrame, ...]:
    """The gather as it was: every record read whole, the registry updated from all the links at
    once, the links and entities built over the whole snapshot. (links, entities, touched)"""
    spec = load_spec("enterprise")
    firms, persons = pl.read_parquet(work / "firms.parquet"), pl.read_parquet(work / "persons.parquet")
    inputs = firms.select(*enterprise_inputs())
    result = finish_link(work / ENGINE_DIR, spec)
    registry = Registry(registry_dir)
    registry.update(result.links, inputs, run)
    registry.key_representatives(lambda reps: blocking_keys(reps, spec))
    pipeline._write_spellings(registry.folder, pl.read_parquet(work / pipeline.SPELLINGS_FILE))
    write_review(result.review, review_dir, run)
    links = pl.concat([pipeline._firm_links(firms, result.links), pipeline._person_links(persons)]).sort(KEYS)
    entities = pipeline.entities_table(pl.concat([firms, persons]), links)
    return links, entities, entities.select("entity_id")


def _folder(folder: Path) -> dict[str, pl.DataFrame]:
    return {path.name: pl.read_parquet(path) for path in sorted(folder.glob("*.parquet"))}


@pytest.fixture(scope="module")
def prepared(published_lakes, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # noqa: ANN001
    """(a prepared and partitioned full re-link of the second night, the base registry it read)."""
    _, lake = published_lakes.lake(600, 11, days=2, nights=(FIRST, NIGHT))
    night = night_lake(lake, NIGHT)
    root = tmp_path_factory.mktemp("gather")
    registry = root / "registry"
    shutil.copytree(registry_base(night)[0], registry)
    (registry / "published_version.json").unlink()
    work = root / "work"
    records = accepted_records(night).select(IDENTITY_COLUMNS).collect()
    prepare_canonical(records, "enterprise", registry, None, work, partition_signatures=150)
    resolve_link_partitions(work / ENGINE_DIR, load_spec("enterprise"))
    return work, registry


def _copy(prepared: tuple[Path, Path], to: Path) -> tuple[Path, Path]:
    work, registry = prepared
    shutil.copytree(work, to / "work")
    shutil.copytree(registry, to / "registry")
    return to / "work", to / "registry"


@pytest.fixture(scope="module")
def reference(prepared: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    work, registry = _copy(prepared, tmp_path_factory.mktemp("whole"))
    links, entities, touched = _whole(work, registry, work.parent / "review", NIGHT)
    return {
        "links": links,
        "entities": entities,
        "touched": touched,
        "registry": _folder(registry),
        "review": _folder(work.parent / "review"),
    }


# 13: entities larger than a bucket go alone into theirs (asserted below); one record per bucket made
# a thousand buckets and cost three minutes a test without reaching any other path
BUCKETS = pytest.mark.parametrize(
    "bucket_records", [13, 97, 10**9], ids=["small-buckets", "buckets", "one-bucket"]
)


@BUCKETS
@pytest.mark.parametrize("workers", [1, 2], ids=["here", "pooled"])
def test_the_gather_per_bucket_equals_the_whole(
    prepared: tuple[Path, Path],
    reference: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bucket_records: int,
    workers: int,
) -> None:
    built = []  # the records each entities table was built from in this process
    table = pipeline.entities_table
    monkeypatch.setattr(
        pipeline,
        "entities_table",
        lambda records, *rest: built.append(records.height) or table(records, *rest),
    )
    pools = []  # the process pools the gather started (their workers)
    started = pool.process_pool

    @contextmanager
    def counted(size: int) -> Iterator:
        pools.append(size)
        with started(size) as executor:
            yield executor

    monkeypatch.setattr(pool, "process_pool", counted)
    work, registry = _copy(prepared, tmp_path)
    resolution = finish_canonical(
        work, registry, tmp_path / "review", NIGHT, bucket_records=bucket_records, workers=workers
    )
    assert resolution.links.equals(reference["links"])
    assert resolution.entities.equals(reference["entities"])
    assert resolution.touched.equals(reference["touched"])
    assert resolution.stats["registry_changes"] == reference["registry"]["history.parquet"].height
    found = _folder(registry)
    assert found.keys() == reference["registry"].keys() >= {"members.parquet", "representatives.parquet"}
    for name, frame in reference["registry"].items():
        assert found[name].equals(frame), name
    assert reference["registry"]["history.parquet"].height  # (a second night: ids moved and merged)
    assert {n: f.equals(reference["review"][n]) for n, f in _folder(tmp_path / "review").items()} == {
        n: True for n in reference["review"]
    }
    records = reference["links"].height
    if workers > 1 and bucket_records < records:
        # the buckets were built by a pool's processes, none here
        assert pools == [workers] and built == []
        return
    assert pools == []
    # the work was done a bucket at a time: no bucket larger than asked, unless one entity is
    largest = reference["entities"]["record_count"].max()
    assert sum(built) == records
    if bucket_records < records:
        assert len(built) > 1 and max(built) <= bucket_records + largest
        assert bucket_records > 13 or largest > bucket_records  # (the small buckets' edge was reached)
    else:
        assert built == [records]


def _digests(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folders`` (by its path inside them)."""
    return {
        f"{folder.name}/{path.relative_to(folder)}": hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@BUCKETS
def test_the_files_are_the_same_bytes_however_many_workers(
    prepared: tuple[Path, Path], tmp_path: Path, bucket_records: int
) -> None:
    """The links, entities, touched entities, registry (members, history, representatives,
    spellings) and review queue: byte for byte the same built here or by two processes."""
    digests = []
    for workers in (1, 2):
        work, registry = _copy(prepared, tmp_path / f"workers-{workers}")
        finish_canonical(work, registry, work.parent / "review", NIGHT, bucket_records, workers)
        digests.append(_digests(work / "finished", registry, work.parent / "review"))
    assert {
        "finished/links.parquet",
        "registry/representatives.parquet",
        "registry/spellings.parquet",
    } <= set(digests[0])
    assert digests[0] == digests[1]
