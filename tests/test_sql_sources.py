"""SQL sources go through SQLAlchemy: the same extraction code reads SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from credit_synthetic.generate import write_sql_table
from pipelines.night import cutoff_for
from pipelines.quality import stages as quality_stages
from pipelines.sources import stages as source_stages
from pipelines.sources.extract import extract
from pipelines.sources.registry import load_sources

BUSINESS_DATE = "2026-11-23"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate

    out = tmp_path_factory.mktemp("sql-sources")
    generate(out, entities=800, seed=21, days=2, end_date=date(2026, 11, 23))
    return out


@pytest.mark.postgres
def test_postgresql_source_extracts_like_sqlite(
    sources: Path, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sqlite3.connect(sources / "lending" / "lending.db") as connection:
        loans = pl.read_database("SELECT * FROM loans", connection, infer_schema_length=None)
    write_sql_table(loans, postgres_url, "loans", "loan_id")
    try:
        sqlite_rows = source_stages.extract_source(
            "lending", str(sources), str(tmp_path / "a"), BUSINESS_DATE
        )
        monkeypatch.setenv("CREDIT_LENDING_URL", postgres_url)  # the registry's url_env override
        pg_rows = source_stages.extract_source("lending", str(sources), str(tmp_path / "b"), BUSINESS_DATE)
        assert pg_rows["rows"] == sqlite_rows["rows"] > 0
        # raw keeps each backend's own types (SQLite's are text); the canonical rows are identical
        for lake in ("a", "b"):
            source_stages.check_source("lending", str(tmp_path / lake), BUSINESS_DATE)
            quality_stages.standardise_source("lending", str(tmp_path / lake), BUSINESS_DATE)
        staged = [
            pl.read_parquet(tmp_path / lake / "staged" / BUSINESS_DATE / "lending.parquet")
            for lake in ("a", "b")
        ]
        assert staged[0].equals(staged[1])
        earlier = source_stages.extract_source("lending", str(sources), str(tmp_path / "c"), "2026-11-22")[
            "rows"
        ]
        assert 0 < earlier < pg_rows["rows"]  # the watermark filter runs in PostgreSQL too
        # an Airflow connection (here from the environment, as AIRFLOW_CONN_<ID>) instead of a URL
        monkeypatch.delenv("CREDIT_LENDING_URL")
        monkeypatch.setenv(
            "AIRFLOW_CONN_CREDIT_LENDING", postgres_url.replace("postgresql+psycopg2", "postgres")
        )
        config = dataclasses.replace(load_sources()["lending"], url=None, conn_id="credit_lending")
        assert config.resolved_url(sources).startswith("postgresql+psycopg2://postgres@127.0.0.1")
        via_connection = extract(config, sources, tmp_path / "d.parquet", cutoff_for(BUSINESS_DATE))
        assert via_connection.rows == pg_rows["rows"]
    finally:
        engine = sa.create_engine(postgres_url)
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS loans"))
        engine.dispose()


def test_unreachable_database_names_the_source(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation.errors import SourceUnavailableError

    monkeypatch.setenv("CREDIT_LENDING_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/none")
    with pytest.raises(SourceUnavailableError, match="source 'lending' is unavailable: cannot connect"):
        source_stages.extract_source("lending", str(sources), str(tmp_path), BUSINESS_DATE)
