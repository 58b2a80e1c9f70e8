"""The published tables' column dictionary: Parquet field metadata and docs/data_dictionary.md.

Profiles are described by config/profile_columns.toml (``foundation.dictionary.load_columns``), the
other published tables by config/published_columns.toml in the same format. Publishing writes each
column's label, unit and description into the Parquet schema, so any reader (pyarrow, DuckDB,
Spark) finds them in the file; the Markdown data dictionary is generated from the same definition
and the same type mapping, so neither can drift from the files.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from foundation.dictionary import _COLUMN_KEYS, Column, DictionaryError, _checked, load_columns
from foundation.errors import PublishError
from foundation.lake import REPO_ROOT
from foundation.settings import config_path
from pipelines.profiles.build import MONEY

PUBLISHED_COLUMNS_FILE = "published_columns.toml"
#: the generated data dictionary, relative to the checkout (and `credit dictionary`'s folder)
PUBLISHING_FILE = "publishing.toml"
CHANGES_SCHEMA = {
    "entity_id": pl.String,
    "change": pl.String,
    "detail": pl.String,
    "related_entity_id": pl.String,
}
DICTIONARY_FILE = Path("docs") / "data_dictionary.md"
DATA_DICTIONARY = REPO_ROOT / DICTIONARY_FILE
#: the published tables, in the order the data dictionary shows them
TABLES = ("profiles", "links", "entities", "changes")
#: the Parquet field-metadata keys a column's description is written under
FIELD_KEYS = ("label", "label_en", "unit", "description")


def _other_tables() -> dict[str, dict[str, Column]]:
    """table -> column -> ``Column`` for links, entities and changes (config/published_columns.toml)."""
    return _read_tables(config_path(PUBLISHED_COLUMNS_FILE))


@cache
def _read_tables(path: Path) -> dict[str, dict[str, Column]]:
    try:
        raw = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DictionaryError(f"{path}: cannot read the column dictionary: {exc}") from exc
    unknown = sorted(set(raw) - set(TABLES[1:]))
    if unknown:
        raise DictionaryError(f"{path}: unknown table(s) {unknown}; expected {list(TABLES[1:])}")
    allowed = _COLUMN_KEYS - {"ratio", "domain"}
    out = {}
    for table, columns in raw.items():
        for name, entry in columns.items():
            _checked(entry, allowed, ("label", "label_en", "description"), f"{path}: [{table}.{name}]")
        out[table] = {name: Column(name=name, **entry) for name, entry in columns.items()}
    return out


def table_columns(table: str) -> dict[str, Column]:
    """The described columns of one published table."""
    if table == "profiles":
        return load_columns()
    if table not in TABLES:
        raise DictionaryError(f"no published table {table!r}; known: {list(TABLES)}")
    return _other_tables().get(table, {})


def stored_unit(column: Column) -> str | None:
    """The unit of the value as stored: a ratio column holds a share 0-1 that pages show in %."""
    return f"share 0-1 (shown in {column.unit})" if column.ratio else column.unit


def field_metadata(column: Column) -> dict[str, str]:
    """What a Parquet field carries about its column (only the keys that have a value)."""
    values = {key: getattr(column, key) for key in FIELD_KEYS} | {"unit": stored_unit(column)}
    return {key: str(value) for key, value in values.items() if value}


def described_schema(frame: pl.DataFrame, table: str) -> pa.Schema:
    """``frame``'s Arrow schema with every column's description as field metadata; a column the
    dictionary does not describe is refused (published data describes itself)."""
    columns = table_columns(table)
    missing = [name for name in frame.columns if name not in columns]
    if missing:
        source = "config/profile_columns.toml" if table == "profiles" else "config/published_columns.toml"
        raise DictionaryError(
            f"published table {table!r}: column(s) {missing} are not described; add them to {source}"
        )
    schema = frame.head(0).to_arrow().schema
    return pa.schema([field.with_metadata(field_metadata(columns[field.name])) for field in schema])


def parquet_type(dtype: pl.DataType) -> str:
    """How a column's type reads in the data dictionary (as DuckDB and pyarrow report it)."""
    if isinstance(dtype, pl.Decimal):
        return f"decimal({dtype.precision}, {dtype.scale})"
    if isinstance(dtype, pl.List):
        return f"list of {parquet_type(dtype.inner)}"
    if isinstance(dtype, pl.Struct):
        return "struct {" + ", ".join(f.name for f in dtype.fields) + "}"
    names = {
        pl.String: "string",
        pl.Int64: "int64",
        pl.Int32: "int32",
        pl.UInt32: "uint32",
        pl.Float64: "double",
        pl.Boolean: "boolean",
        pl.Date: "date",
    }
    return names.get(type(dtype), str(dtype).lower())


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def render_markdown(schemas: dict[str, dict[str, pl.DataType]]) -> str:
    """The data dictionary: per published table, each column's type, unit, labels and description.

    ``schemas``: table -> the column types as published (``published_schemas``)."""
    lines = [
        "# Data dictionary of the published tables",
        "",
        "<!-- generated by `credit dictionary` from config/profile_columns.toml,",
        "     config/published_columns.toml and the published schemas; do not edit by hand -->",
        "",
        "Every column below is also described inside the Parquet files themselves: each field of",
        f"`LAKE/published/<version>/<table>/*.parquet` carries {', '.join(f'`{k}`' for k in FIELD_KEYS)}",
        "as Arrow field metadata (`pyarrow.parquet.read_schema(path).field(name).metadata`).",
        f"Money is `{parquet_type(MONEY)}` in 元 (yuan, to the fen): exact, and summing it gives the",
        "accepted records' totals to the fen. Each file is written in row groups of at most",
        f"{row_group_rows():,} rows (`row_group_rows`, config/publishing.toml) with min/max statistics",
        "per column, so readers skip what a filter excludes and read groups in parallel.",
        "",
    ]
    for table in TABLES:
        described = table_columns(table)
        lines += [
            f"## {table}",
            "",
            "| column | type | unit | 中文 | label | description |",
            "|---|---|---|---|---|---|",
        ]
        for name, dtype in schemas[table].items():
            column = described[name]
            lines.append(
                f"| `{name}` | {parquet_type(dtype)} | {_cell(stored_unit(column))} | {_cell(column.label)} "
                f"| {_cell(column.label_en)} | {_cell(column.description)} |"
            )
        lines.append("")
    return "\n".join(lines)


def published_schemas() -> dict[str, dict[str, pl.DataType]]:
    """The column types every published table has, from the code that builds them (no lake needed):
    one loan record resolved and profiled, the link and changes schemas."""
    from datetime import date, datetime

    from entity_resolution.pipeline import IDENTITY_COLUMNS, resolve_canonical
    from foundation.schema import LINK_SCHEMA, conform
    from pipelines.profiles.build import build_profiles

    record = conform(
        pl.LazyFrame(
            {
                "source": ["lending"],
                "source_record_id": ["L1"],
                "record_type": ["loan"],
                "updated_at": [datetime(2026, 1, 1)],
                "subject_name": ["北京示例有限公司"],
                "code_raw": ["91110000600037341L"],
                "uscc": ["91110000600037341L"],
                "code_status": ["valid"],
                "amount": [1.0],
            }
        )
    ).collect()
    resolution = resolve_canonical(record.select(IDENTITY_COLUMNS))
    entities = resolution.entities
    profiles = build_profiles(record.lazy(), resolution.links.lazy(), entities.lazy(), date(2026, 1, 1))
    return {
        "profiles": dict(profiles.schema),
        "links": dict(LINK_SCHEMA),
        "entities": dict(entities.schema),
        "changes": dict(CHANGES_SCHEMA),
    }


def write_dictionary(target: Path = DATA_DICTIONARY) -> Path:
    """(Re)generate docs/data_dictionary.md atomically."""
    from foundation.lake import atomic_path

    with atomic_path(target) as tmp:
        tmp.write_text(render_markdown(published_schemas()), "utf-8")
    return target


def row_group_rows(config: Path | None = None) -> int:
    """Rows per row group of the published Parquet files (config/publishing.toml, resolved now)."""
    config = config or config_path(PUBLISHING_FILE)
    rows = tomllib.loads(config.read_text("utf-8")).get("row_group_rows", 100_000)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise PublishError(f"{config}: row_group_rows must be a whole number of rows >= 1, not {rows!r}")
    return rows
