"""Standardise and validate per extract shard: a source cut into several shards is standardised
and checked row by row in a task per shard, validate gathers them, and the night gives the same
accepted snapshots, quarantine and published files as with one shard per source, whatever is held
back or quarantined, and wherever it sits."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from foundation.errors import DataQualityError
from foundation.lake import RAW_PARTS, Lake
from pipelines import flow
from pipelines.night import part_path, shard_folder
from pipelines.quality import stages as quality_stages
from pipelines.sources import stages as source_stages
from pipelines.sources.registry import load_sources
from tests.conftest import mapping_settings

NIGHTS = ("2026-11-22", "2026-11-23")
SHARD_ROWS = 120
SOURCES = list(load_sources())


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate

    out = tmp_path_factory.mktemp("shard-validate-sources")
    generate(out, entities=300, seed=13, days=2, end_date=date(2026, 11, 23))
    return out


def _last_loan(src: Path) -> str:
    """A loan of the first night that the extract reads last: the highest id, in the last shard."""
    with sqlite3.connect(src / "lending" / "lending.db") as con:
        return str(
            con.execute("SELECT max(loan_id) FROM loans WHERE updated_at < '2026-11-23'").fetchone()[0]
        )


def _settings(folder: Path, shard_rows: int) -> dict[str, str]:
    return mapping_settings(
        folder, extract_shard_rows=shard_rows, partition_signatures=10**9, profile_shard_entities=250000
    )


def _report(lake: Lake, kind: str, source: str) -> dict:
    report = json.loads((lake.reports / kind / f"{source}.json").read_text("utf-8"))
    return {k: v for k, v in report.items() if k not in ("snapshot", "path")}  # paths name the lake


def _published(lake_dir: Path) -> dict:
    manifest = lake_dir / "published" / "current" / "manifest.json"
    return json.loads(manifest.read_text("utf-8"))["files"]


def test_a_night_in_shards_gives_what_one_shard_gives(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nights, with one shard per source and with shards of SHARD_ROWS. The first holds a bad
    loan in lending's last shard; on the second, social insurance fails its raw suite (every row
    changed, so in several shards: held back in validate) and tax loses most of its rows (held back
    by check: no shards to standardise)."""
    src = tmp_path / "sources"
    shutil.copytree(generated, src)
    victim = _last_loan(src)
    with sqlite3.connect(src / "lending" / "lending.db") as con:
        con.execute("UPDATE loans SET five_class = '未分类' WHERE loan_id = ?", (victim,))
    settings = {"one": _settings(tmp_path / "one", 10**9), "many": _settings(tmp_path / "many", SHARD_ROWS)}
    lakes = {kind: tmp_path / f"lake-{kind}" for kind in settings}
    shards: dict[str, dict[str, dict[str, int]]] = {}
    for night in NIGHTS:
        if night == NIGHTS[-1]:
            with sqlite3.connect(src / "social_insurance" / "social_insurance.db") as con:
                con.execute("UPDATE contributions SET amount_due = 'n/a', updated_at = '2026-11-23 08:00:00'")
            with sqlite3.connect(src / "tax" / "tax.db") as con:
                con.execute("DELETE FROM tax_records WHERE rowid % 10 < 9")
        for kind, environment in settings.items():
            with monkeypatch.context() as patch:
                for name, value in environment.items():
                    patch.setenv(name, value)
                results = flow.run_all(str(src), str(lakes[kind]), night, run_id=f"{kind} {night}")
            shards.setdefault(night, {})[kind] = {s: len(results[f"standardise {s}"]) for s in SOURCES}
            for source in SOURCES:
                staged = Lake(lakes[kind], night).staged(source)
                assert len(list(staged.glob(RAW_PARTS))) == shards[night][kind][source]
        one, many = Lake(lakes["one"], night), Lake(lakes["many"], night)
        for source in SOURCES:
            assert one.accepted(source).read_bytes() == many.accepted(source).read_bytes(), (night, source)
            assert one.quarantine(source).read_bytes() == many.quarantine(source).read_bytes(), (
                night,
                source,
            )
            for kind in ("batch", "validation"):
                assert _report(one, kind, source) == _report(many, kind, source), (night, source, kind)
        assert _published(one.root) == _published(many.root)  # every published file, by its SHA-256

    first, second = shards[NIGHTS[0]], shards[NIGHTS[1]]
    assert set(first["one"].values()) == {1}
    assert first["many"]["lending"] > 2 and first["many"]["social_insurance"] > 2
    many = Lake(lakes["many"], NIGHTS[0])
    last = first["many"]["lending"] - 1
    bad = pl.read_parquet(part_path(shard_folder(many, "lending", "quarantine"), last))
    assert bad.filter(pl.col("source_record_id") == victim)["reason"].str.contains("未分类").all()
    assert bad.height >= 1 and victim in pl.read_parquet(many.quarantine("lending"))["source_record_id"]

    many = Lake(lakes["many"], NIGHTS[1])
    assert second["many"]["social_insurance"] > 2 and second["many"]["tax"] == second["one"]["tax"] == 0
    for source, words in (("social_insurance", "type drift"), ("tax", "volume dropped")):
        report = _report(many, "validation", source)
        assert (
            report["stale"] and report["accepted"] == 0 and report["extracted"] == report["quarantined"] > 0
        )
        held = pl.read_parquet(many.quarantine(source))
        assert held["reason"].str.contains(words).all() and held["stage"].eq("batch").all()
        previous = Lake(lakes["many"], NIGHTS[0]).accepted(source)
        assert many.accepted(source).read_bytes() == previous.read_bytes()  # carried forward
    assert _report(many, "validation", "social_insurance")["quarantined"] == (
        pl.read_parquet(many.raw_parts("social_insurance")).height
    )


def test_a_shard_is_missing_or_an_id_in_two_shards_fails_the_batch(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate gathers every shard check listed, and a record id standardised in two shards (the
    suite sees one shard at a time) fails the batch rather than enter the snapshot twice."""
    for name, value in _settings(tmp_path / "settings", SHARD_ROWS).items():
        monkeypatch.setenv(name, value)
    lake_dir, night, source = str(tmp_path / "lake"), NIGHTS[0], "social_insurance"
    plan = source_stages.plan_extract(source, str(generated), lake_dir, night)
    for shard in plan["shards"]:
        source_stages.extract_source(source, str(generated), lake_dir, night, shard=shard)
    listed = source_stages.check_source(source, lake_dir, night)["shards"]
    assert listed == plan["shards"] and len(listed) > 2
    for shard in listed[:-1]:
        result = quality_stages.standardise_source(source, lake_dir, night, shard=shard)
        assert result["staged"] == result["accepted"] + result["quarantined"] > 0
        assert result["raw_suite_problems"] == []  # the batch's sample, the same in every shard
    with pytest.raises(
        FileNotFoundError, match=f"standardise shard {listed[-1]} of {len(listed)} has no report"
    ):
        quality_stages.validate_source(source, lake_dir, night)
    quality_stages.standardise_source(source, lake_dir, night, shard=listed[-1])
    lake = Lake(tmp_path / "lake", night)
    # the first shard's first record standardised in the last shard too
    first, last = (part_path(lake.staged(source), shard) for shard in (listed[0], listed[-1]))
    pl.concat([pl.read_parquet(last), pl.read_parquet(first).head(1)]).write_parquet(last)
    with pytest.raises(DataQualityError, match="record ids in more than one shard"):
        quality_stages.validate_source(source, lake_dir, night)


@pytest.mark.parametrize(
    "parts",
    [
        [["a", "c", "e"], ["b", "d"]],  # interleaved ranges: merged
        [["a", "b"], [], ["c", "d", "e"]],  # ranges one after the other (an empty part between)
        [["c", "d"], ["a", "b"]],  # one after the other, but not in shard order
    ],
)
def test_the_shards_accepted_changes_come_out_sorted_by_record_id(
    tmp_path: Path, parts: list[list[str]]
) -> None:
    from pipelines.sources.snapshot import merge_parts

    paths = []
    for shard, ids in enumerate(parts):
        paths.append(tmp_path / f"part-{shard}.parquet")
        pl.DataFrame(
            {"source_record_id": ids, "shard": [shard] * len(ids)},
            schema_overrides={"source_record_id": pl.String},
        ).write_parquet(paths[-1])
    merged = merge_parts(paths).collect()
    assert merged["source_record_id"].to_list() == sorted(i for ids in parts for i in ids)
