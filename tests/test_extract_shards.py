"""SQL sources: the fast reader (ADBC) reads what SQLAlchemy reads, and a source read in shards
(ranges of its id column, one extract task each) gives the same raw, staged and accepted data as
one read, byte for byte."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sqlite3
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from foundation import settings
from foundation.errors import SourceUnavailableError
from foundation.lake import RAW_PARTS, Lake
from pipelines.night import cutoff_for
from pipelines.quality import stages as quality_stages
from pipelines.sources import stages as source_stages
from pipelines.sources import watermarks
from pipelines.sources.extract import Shard, extract, plan_sql
from pipelines.sources.registry import REGISTRY_FILE, SourceConfig, load_sources

NIGHTS = ("2026-11-22", "2026-11-23")
SQL_SOURCES = [name for name, config in load_sources().items() if config.kind == "sql"]
SHARD_ROWS = 150


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate

    out = tmp_path_factory.mktemp("shard-sources")
    generate(out, entities=600, seed=5, days=2, end_date=date(2026, 11, 23))
    return out


def _registry(folder: Path, shard_rows: int | None) -> Path:
    """A copy of config/sources.toml with another global extract_shard_rows (None: the key left out)."""
    text = settings.config_path(REGISTRY_FILE).read_text("utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("extract_shard_rows")]
    if shard_rows is not None:
        first_table = next(i for i, line in enumerate(lines) if line.startswith("[sources."))
        lines.insert(first_table, f"extract_shard_rows = {shard_rows}")
    path = folder / f"sources-{shard_rows}.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _read(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path)


def _crafted(path: Path, rows: int = 3_000) -> SourceConfig:
    """A SQLite table with what trips readers up: ids missing (NULL sorts first in SQLite), a text
    column empty in the first rows and text later, text and whole numbers in a FLOAT column,
    missing watermarks."""
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE t (id TEXT PRIMARY KEY, late TEXT, amount FLOAT, n INTEGER, updated_at TEXT)"
        )
        connection.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
            [
                (
                    None if i % 97 == 0 else f"R{i:06d}",
                    None if i < 2_500 else f"late {i}",
                    "n/a" if i % 13 == 0 else (i if i % 7 == 0 else round(i / 8 + 0.01, 2)),
                    None if i % 11 == 0 else i,
                    None if i % 89 == 0 else f"2026-11-{20 + i % 4} 0{i % 10}:00:00",
                )
                for i in range(rows)
            ],
        )
    return SourceConfig(
        name="crafted",
        kind="sql",
        id_column="id",
        watermark="updated_at",
        suite="crafted.standardised",
        critical=False,
        mapping={},
        url=f"sqlite:///{path}",
        table="t",
        extract_shard_rows=700,
    )


def _through_sqlalchemy(config: SourceConfig) -> SourceConfig:
    return dataclasses.replace(config, options={**config.options, "reader": "sqlalchemy"})


def _read_in_shards(
    config: SourceConfig, sources_dir: Path, folder: Path, since: datetime | None
) -> list[pl.DataFrame]:
    cutoff = cutoff_for(NIGHTS[-1])
    plan = plan_sql(config, sources_dir, cutoff, since)
    bounds = [None, *plan["boundaries"], None]
    parts = []
    for k in range(plan["shards"]):
        shard = Shard(bounds[k], bounds[k + 1], plan["source_rows"], plan["newest"])
        extract(config, sources_dir, folder / f"part-{k}.parquet", cutoff, since, shard=shard)
        parts.append(_read(folder / f"part-{k}.parquet"))
    return parts


@pytest.mark.parametrize("source", SQL_SOURCES)
@pytest.mark.parametrize("since", [None, datetime(2026, 11, 23)])
def test_fast_reader_reads_what_sqlalchemy_reads(sources: Path, tmp_path: Path, source: str, since) -> None:
    """Same rows, same types, same order as the SQLAlchemy reader, on the generated databases."""
    config = load_sources()[source]
    cutoff = cutoff_for(NIGHTS[-1])
    fast = extract(config, sources, tmp_path / "fast.parquet", cutoff, since)
    slow = extract(_through_sqlalchemy(config), sources, tmp_path / "slow.parquet", cutoff, since)
    assert fast == slow and fast.rows > 0
    expected = _read(tmp_path / "slow.parquet")
    assert _read(tmp_path / "fast.parquet").equals(expected)
    assert set(expected.schema.values()) == {pl.String}  # SQLite: read as the text it holds


def test_fast_reader_on_awkward_sqlite_rows(tmp_path: Path) -> None:
    config = _crafted(tmp_path / "crafted.db")
    cutoff = cutoff_for(NIGHTS[-1])
    extract(config, tmp_path, tmp_path / "fast.parquet", cutoff)
    extract(_through_sqlalchemy(config), tmp_path, tmp_path / "slow.parquet", cutoff)
    fast = _read(tmp_path / "fast.parquet")
    assert fast.equals(_read(tmp_path / "slow.parquet"))
    assert fast["late"].slice(100, 1_500).is_null().all() and fast["late"].tail(10).is_not_null().all()
    assert "n/a" in fast["amount"].to_list() and fast["id"].null_count() > 0


@pytest.mark.parametrize("since", [None, datetime(2026, 11, 22)])
def test_shards_together_are_the_whole_read(tmp_path: Path, since) -> None:
    """Shard k reads ids from boundary k-1 to boundary k: every row once, in the one read's order,
    rows without an id included (with the first shard, where SQLite sorts them)."""
    config = _crafted(tmp_path / "crafted.db")
    extract(config, tmp_path, tmp_path / "whole.parquet", cutoff_for(NIGHTS[-1]), since)
    parts = _read_in_shards(config, tmp_path, tmp_path, since)
    changed = _read(tmp_path / "whole.parquet").height
    assert len(parts) == math.ceil(changed / config.extract_shard_rows) > 2
    assert pl.concat(parts).equals(_read(tmp_path / "whole.parquet"))
    assert all(part.height <= config.extract_shard_rows for part in parts)
    assert parts[0]["id"].null_count() > 0
    assert sum(part["id"].null_count() for part in parts[1:]) == 0


def test_fast_reader_keeps_every_digit_of_a_real(tmp_path: Path) -> None:
    """SQLite's text of a REAL value that needs 16 or 17 significant digits: ADBC's SQLite (3.53)
    writes the stored double exactly, where an older SQLite (3.40, Python's here) rounded it to 15
    digits (the only difference between the readers: raw keeps the value as it is)."""
    config = _crafted(tmp_path / "crafted.db", rows=10)
    exact = [0.1 + 0.2, 1 / 3, 2**53 + 2.0, 123456789.123456789]
    with sqlite3.connect(tmp_path / "crafted.db") as connection:
        connection.executemany(
            "INSERT INTO t VALUES (?, NULL, ?, NULL, '2026-11-23 00:00:00')",
            [(f"X{i}", value) for i, value in enumerate(exact)],
        )
    extract(config, tmp_path, tmp_path / "fast.parquet", cutoff_for(NIGHTS[-1]))
    read = _read(tmp_path / "fast.parquet").filter(pl.col("id").str.starts_with("X"))
    assert [float(text) for text in read["amount"]] == exact


def _night(
    source: str, sources: Path, lake: Path, night: str, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> dict:
    """One source's stages for one night as the DAG runs them: plan, every shard, check,
    standardise, validate."""
    monkeypatch.setenv("CREDIT_SOURCES_CONFIG", str(registry))
    plan = source_stages.plan_extract(source, str(sources), str(lake), night)
    for shard in plan["shards"]:
        source_stages.extract_source(source, str(sources), str(lake), night, shard=shard)
    for shard in source_stages.check_source(source, str(lake), night)["shards"]:
        quality_stages.standardise_source(source, str(lake), night, shard=shard)
    quality_stages.validate_source(source, str(lake), night)
    return plan


def test_one_shard_or_many_publish_the_same_bytes(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full night, then an incremental one on top of it: the staged Parquet and the accepted
    snapshot are byte-identical whatever the shard count."""
    registries = {"one": _registry(tmp_path, None), "many": _registry(tmp_path, SHARD_ROWS)}
    lakes = {kind: tmp_path / kind for kind in registries}
    for night in NIGHTS:
        for kind, registry in registries.items():
            validated = {}
            for source in SQL_SOURCES:
                plan = _night(source, sources, lakes[kind], night, registry, monkeypatch)
                lake = Lake(lakes[kind], night)
                extracted = json.loads((lake.reports / "extract" / f"{source}.json").read_text("utf-8"))
                shards = 1 if kind == "one" else max(1, math.ceil(plan["changed_rows"] / SHARD_ROWS))
                assert len(plan["shards"]) == shards and (night != NIGHTS[0] or kind == "one" or shards > 2)
                assert extracted["shards"] == shards and extracted["rows"] == plan["changed_rows"]
                assert len(list(lake.raw(source).iterdir())) == shards
                assert extracted["mode"] == ("full" if night == NIGHTS[0] else "incremental")
                validated[source] = json.loads(
                    (lake.reports / "validation" / f"{source}.json").read_text("utf-8")
                )
            # what publish does once the version is live: the next night builds on these snapshots
            watermarks.record(lakes[kind], night, validated)
        for source in SQL_SOURCES:
            one, many = Lake(lakes["one"], night), Lake(lakes["many"], night)
            assert _read(one.raw_parts(source)).equals(_read(many.raw_parts(source)))
            assert _read(one.staged(source) / RAW_PARTS).equals(_read(many.staged(source) / RAW_PARTS))
            assert one.quarantine(source).read_bytes() == many.quarantine(source).read_bytes()
            assert one.accepted(source).read_bytes() == many.accepted(source).read_bytes()


def test_a_shard_is_idempotent_and_an_earlier_plans_parts_go(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake_dir, night = tmp_path / "lake", NIGHTS[-1]
    lake = Lake(lake_dir, night)
    monkeypatch.setenv("CREDIT_SOURCES_CONFIG", str(_registry(tmp_path, 300)))
    plan = source_stages.plan_extract("lending", str(sources), str(lake_dir), night)
    assert len(plan["shards"]) > 2
    for shard in plan["shards"]:
        source_stages.extract_source("lending", str(sources), str(lake_dir), night, shard=shard)
    second = lake.raw_part("lending", 1).read_bytes()
    again = source_stages.extract_source("lending", str(sources), str(lake_dir), night, shard=1)
    assert lake.raw_part("lending", 1).read_bytes() == second and again["shard"] == 1
    whole = _read(lake.raw_parts("lending"))
    # planned again with larger shards: the parts beyond the new count are gone, the rest rewritten
    monkeypatch.setenv("CREDIT_SOURCES_CONFIG", str(_registry(tmp_path, 10**6)))
    assert source_stages.plan_extract("lending", str(sources), str(lake_dir), night)["shards"] == [0]
    assert [p.name for p in lake.raw("lending").iterdir()] == ["part-00000.parquet"]
    with pytest.raises(FileNotFoundError, match="shard 0 of 1 has no report"):
        source_stages.check_source("lending", str(lake_dir), night)
    source_stages.extract_source("lending", str(sources), str(lake_dir), night)
    assert source_stages.check_source("lending", str(lake_dir), night)["ok"]
    assert _read(lake.raw_parts("lending")).equals(whole)
    with pytest.raises(ValueError, match="shard 1 is not one of the 1 planned"):
        source_stages.extract_source("lending", str(sources), str(lake_dir), night, shard=1)


def test_a_source_gone_during_the_night_is_unavailable_in_its_shard(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "sources"
    shutil.copytree(sources, copy)
    monkeypatch.setenv("CREDIT_SOURCES_CONFIG", str(_registry(tmp_path, 300)))
    lake_dir, night = tmp_path / "lake", NIGHTS[-1]
    plan = source_stages.plan_extract("tax", str(copy), str(lake_dir), night)
    source_stages.extract_source("tax", str(copy), str(lake_dir), night, shard=0)
    (copy / "tax" / "tax.db").unlink()
    with pytest.raises(SourceUnavailableError, match="source 'tax' is unavailable: database file"):
        source_stages.extract_source("tax", str(copy), str(lake_dir), night, shard=plan["shards"][-1])
    with pytest.raises(SourceUnavailableError, match="source 'tax' is unavailable"):
        source_stages.plan_extract("tax", str(copy), str(lake_dir), night)


def test_a_file_source_is_one_shard(sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDIT_SOURCES_CONFIG", str(_registry(tmp_path, 10)))
    plan = source_stages.plan_extract("contract", str(sources), str(tmp_path), NIGHTS[-1])
    assert plan["shards"] == [0]
    done = source_stages.extract_source("contract", str(sources), str(tmp_path), NIGHTS[-1], shard=0)
    assert done["rows"] > 10


def test_shard_size_is_configured_globally_and_per_source(tmp_path: Path) -> None:
    registry = _registry(tmp_path, 5_000).read_text("utf-8")
    registry = registry.replace("[sources.tax]\n", "[sources.tax]\nextract_shard_rows = 250\n")
    (tmp_path / "own.toml").write_text(registry, "utf-8")
    configured = load_sources(tmp_path / "own.toml")
    assert configured["tax"].extract_shard_rows == 250 and configured["lending"].extract_shard_rows == 5_000
    assert load_sources(_registry(tmp_path, None))["lending"].extract_shard_rows is None
    (tmp_path / "bad.toml").write_text(registry.replace("= 250", "= 0"), "utf-8")
    with pytest.raises(ValueError, match="extract_shard_rows must be a positive whole number"):
        load_sources(tmp_path / "bad.toml")


@pytest.mark.postgres
def test_postgresql_fast_reader_and_shards(sources: Path, postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL through ADBC (binary COPY) reads what psycopg2 reads; a REAL column, whose values
    ADBC would widen differently, keeps the table on SQLAlchemy. Rows without an id sort last
    there, and go with the last shard."""
    from credit_synthetic.generate import write_sql_table

    with sqlite3.connect(sources / "lending" / "lending.db") as connection:
        loans = pl.read_database("SELECT * FROM loans", connection, infer_schema_length=None)
    table = "loans_extract_shards"  # not test_sql_sources.py's table: modules may run side by side
    write_sql_table(loans, postgres_url, table, "loan_id")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey"))
            connection.execute(sa.text(f"ALTER TABLE {table} ALTER COLUMN loan_id DROP NOT NULL"))
            connection.execute(sa.text(f"UPDATE {table} SET loan_id = NULL WHERE loan_id LIKE '%7'"))
            connection.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN ratio REAL"))
            connection.execute(sa.text(f"UPDATE {table} SET ratio = 0.1 WHERE overdue_days > 0"))
        config = dataclasses.replace(
            load_sources()["lending"],
            url=postgres_url,
            url_env=None,
            table=table,
            extract_shard_rows=SHARD_ROWS,
        )
        cutoff = cutoff_for(NIGHTS[-1])
        extract(_through_sqlalchemy(config), sources, tmp_path / "slow.parquet", cutoff)
        extract(config, sources, tmp_path / "fast.parquet", cutoff)
        expected = _read(tmp_path / "slow.parquet")
        assert _read(tmp_path / "fast.parquet").equals(expected)
        assert 0.1 in expected["ratio"].to_list()
        with engine.begin() as connection:
            connection.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN ratio"))
        extract(_through_sqlalchemy(config), sources, tmp_path / "slow.parquet", cutoff)
        extract(config, sources, tmp_path / "fast.parquet", cutoff)
        expected = _read(tmp_path / "slow.parquet")
        assert _read(tmp_path / "fast.parquet").equals(expected)
        assert expected.schema["overdue_days"] == pl.Int64 and expected.schema["amount"] == pl.Float64
        parts = _read_in_shards(config, sources, tmp_path, None)
        assert len(parts) > 2 and pl.concat(parts).equals(expected)
        assert parts[-1]["loan_id"].null_count() == expected["loan_id"].null_count() > 0
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
