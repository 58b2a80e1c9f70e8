"""Self-describing published data, read back the way outside readers read it (DuckDB, pyarrow):
every column's label, unit and description in the Parquet schema, money as exact decimals that add
up to the accepted records, row groups of the configured size with statistics; and the readers of
the profiles (query service, export) keep money exact."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import duckdb
import httpx
import polars as pl
import pyarrow.parquet as pq
import pytest

from foundation.errors import PublishError
from pipelines.cli import main as credit_main
from pipelines.profiles.build import MONEY
from pipelines.publish.datadict import (
    DATA_DICTIONARY,
    TABLES,
    field_metadata,
    published_schemas,
    render_markdown,
    table_columns,
)
from pipelines.publish.reconciliation import RECONCILED_TOTALS
from pipelines.publish.versions import current_version, publish_version, row_group_rows
from tests.conftest import PublishedLakes
from tests.service_support import DAYS, build_lake, credit, serving


@pytest.fixture(scope="module")
def lake(published_lakes: PublishedLakes) -> Path:
    """Two real nights (so `changes` has rows) over 400 generated firms."""
    return build_lake(published_lakes, entities=400)[1]


def files(lake: Path, table: str) -> str:
    return str(lake / "published" / "current" / table / "*.parquet")


def money_columns() -> list[str]:
    """The profile columns the dictionary gives in 元."""
    return [name for name, column in table_columns("profiles").items() if column.unit == "元"]


def test_every_published_column_carries_its_description(lake: Path) -> None:
    for table in TABLES:
        described = table_columns(table)
        path = next((lake / "published" / "current" / table).glob("*.parquet"))
        schema = pq.read_schema(path)
        assert schema.names, table
        for field in schema:
            metadata = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
            assert metadata == field_metadata(described[field.name]), (table, field.name)
            assert metadata["description"] and metadata["label"] and metadata["label_en"]
        kv = dict(
            duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{path}')").fetchall()
        )
        assert kv["table"] == table and kv["data_dictionary"] == "docs/data_dictionary.md"


def test_money_is_one_decimal_unit_per_column(lake: Path) -> None:
    money = money_columns()
    assert money, "the dictionary names no column in 元"
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{files(lake, 'profiles')}')").fetchall()
    types = {row[0]: row[1] for row in described}
    wanted = f"DECIMAL({MONEY.precision},{MONEY.scale})"
    assert {c for c, t in types.items() if t.startswith("DECIMAL")} == set(money)
    assert all(types[c] == wanted for c in money)
    schema = pq.read_schema(next((lake / "published" / "current" / "profiles").glob("*.parquet")))
    assert all(schema.field(c).metadata[b"unit"] == "元".encode() for c in money)
    # 万元 fines arrive scaled to 元 and stay whole fen amounts
    fines = pl.read_parquet(files(lake, "profiles"), columns=["violations_fines_12m"]).to_series()
    assert fines.dtype == MONEY and fines.sum() > 0


def test_decimals_sum_to_the_accepted_records_totals(lake: Path) -> None:
    """DuckDB and pyarrow add the published money exactly to what the accepted records hold."""
    accepted = str(lake / "accepted" / DAYS[-1] / "*.parquet")
    for column, (types, value) in RECONCILED_TOTALS.items():
        if value is None:
            continue
        kinds = ", ".join(f"'{t}'" for t in types)
        (records,) = duckdb.sql(
            f"SELECT sum(CAST({value} AS DECIMAL(38, 2))) FROM read_parquet('{accepted}') "
            f"WHERE record_type IN ({kinds})"
        ).fetchall()[0]
        (published,) = duckdb.sql(
            f"SELECT sum({column}) FROM read_parquet('{files(lake, 'profiles')}')"
        ).fetchall()[0]
        assert isinstance(published, Decimal) and published == records and records > 0, column
        table = pq.read_table(lake / "published" / "current" / "profiles", columns=[column])
        assert (
            table.column(column).to_pylist()
            and sum(v or 0 for v in table.column(column).to_pylist()) == records
        )
    summary = json.loads((lake / "reports" / DAYS[-1] / "summary.json").read_text("utf-8"))
    assert summary["books"]["balanced"] and not summary["books"]["problems"]


def test_row_groups_have_the_configured_size_and_statistics(lake: Path, tmp_path: Path) -> None:
    rows = row_group_rows()
    # the real profiles: fewer firms than a group, so one group, with min/max per column
    path = next((lake / "published" / "current" / "profiles").glob("*.parquet"))
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 1 and meta.row_group(0).num_rows == meta.num_rows
    entity = meta.row_group(0).column(0)
    assert entity.path_in_schema == "entity_id" and entity.statistics.has_min_max
    # a table larger than a group: full groups, the rest in the last
    n = rows * 2 + rows // 2
    ids = pl.int_range(n, eager=True).cast(pl.String).str.zfill(8).alias("entity_id")
    big = {
        "profiles": pl.DataFrame({"entity_id": ["E1"], "grade": ["A"], "score": [1000]}),
        "links": pl.DataFrame({"source": "lending", "source_record_id": ids, "entity_id": ids}),
        "entities": pl.DataFrame({"entity_id": ["E1"]}),
    }
    version = Path(publish_version(tmp_path, "2026-11-23", "big", big, {})["path"])
    groups = duckdb.sql(
        "SELECT row_group_id, any_value(row_group_num_rows), bool_and(stats_min_value IS NOT NULL) "
        f"FROM parquet_metadata('{version / 'links' / 'part-00000.parquet'}') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [g[1] for g in groups] == [rows, rows, rows // 2]
    assert all(g[2] for g in groups)


def test_a_column_without_a_description_is_not_published(tmp_path: Path) -> None:
    ids = ["E1", "E2"]
    frames = {
        "profiles": pl.DataFrame({"entity_id": ids, "grade": ["A", "B"], "score": [950, 800]}),
        "links": pl.DataFrame({"source": "lending", "source_record_id": ids, "entity_id": ids}),
        "entities": pl.DataFrame({"entity_id": ids}),
    }
    first = publish_version(tmp_path, "2026-11-22", "run-1", frames, {})
    frames["links"] = frames["links"].with_columns(secret_note=pl.lit("x"))
    with pytest.raises(PublishError, match=r"'links'.*\['secret_note'\].*published_columns.toml"):
        publish_version(tmp_path, "2026-11-23", "run-2", frames, {})
    assert current_version(tmp_path) == first["version"]


def test_the_data_dictionary_is_generated_and_up_to_date(lake: Path, tmp_path: Path) -> None:
    """docs/data_dictionary.md is what `credit dictionary` generates (a stale copy fails `--check`),
    and it gives every column of every published file with the type readers see."""
    assert credit_main(["dictionary", "--check", "--out", str(DATA_DICTIONARY)]) == 0, (
        "run `credit dictionary` in the checkout and commit docs/data_dictionary.md"
    )
    stale = tmp_path / "dictionary.md"
    stale.write_text(render_markdown(published_schemas()).replace("贷款余额", "贷款"), "utf-8")
    assert credit_main(["dictionary", "--check", "--out", str(stale)]) == 1
    assert credit_main(["dictionary", "--out", str(stale)]) == 0
    assert credit_main(["dictionary", "--check", "--out", str(stale)]) == 0
    text = stale.read_text("utf-8")
    for table in TABLES:
        published = pl.read_parquet_schema(next((lake / "published" / "current" / table).glob("*.parquet")))
        assert dict(published) == published_schemas()[table], table
        section = text.split(f"## {table}\n", 1)[1].split("\n## ", 1)[0]
        assert [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")] == list(
            published
        )


def test_service_and_export_show_money_exactly(lake: Path, tmp_path: Path) -> None:
    profiles = pl.read_parquet(files(lake, "profiles"))
    firm = (
        profiles.filter((pl.col("entity_type") == "enterprise") & (pl.col("lending_amount") > 0))
        .sort("lending_amount", descending=True)
        .row(0, named=True)
    )
    regulator = credit("token", "create", "--role", "regulator", "--name", "money check", "--lake", str(lake))
    public = credit("token", "create", "--role", "public", "--name", "money portal", "--lake", str(lake))
    with serving(lake) as base:
        for token in (regulator, public):
            reply = httpx.get(
                f"{base}/api/v1/profiles/{firm['uscc']}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
            # a JSON number with the decimal's exact digits, never a string or a rounded float
            for column in money_columns():
                assert f'"{column}":{firm[column]}' in reply.text, column
            exact = json.loads(reply.text, parse_float=Decimal)["profile"]
            assert exact["lending_amount"] == firm["lending_amount"]
    out = tmp_path / "export.csv"
    assert credit_main(["export", "--lake", str(lake), "--out", str(out), "--header", "names"]) == 0
    exported = pl.read_csv(out, infer_schema=False)
    row = exported.filter(pl.col("entity_id") == firm["entity_id"]).row(0, named=True)
    assert all(row[c] == str(firm[c]) for c in money_columns())
