"""Extraction: copy one source's records (as of a cutoff) into the lake's raw layer, as they are.

Raw keeps the source's own column names and values so that every later decision can be traced
back; SQL sources stream in batches so a large table never sits in memory whole.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pipelines.errors import SourceFormatError, SourceUnavailableError
from pipelines.lake import atomic_path
from pipelines.sources import SourceConfig

log = logging.getLogger(__name__)
BATCH_ROWS = 250_000


def extract(source: SourceConfig, sources_dir: Path, target: Path, cutoff: datetime) -> int:
    """Write the rows whose watermark is before ``cutoff`` to ``target``; return the row count."""
    if source.kind == "sql":
        return _extract_sql(source, sources_dir, target, cutoff)
    return _extract_file(source, sources_dir, target, cutoff)


def _polars_type(column_type: sa.types.TypeEngine) -> pl.DataType:
    if isinstance(column_type, sa.Integer):
        return pl.Int64()
    if isinstance(column_type, sa.Float | sa.Numeric):
        return pl.Float64()
    return pl.String()


def _extract_sql(source: SourceConfig, sources_dir: Path, target: Path, cutoff: datetime) -> int:
    url = make_url(source.resolved_url(sources_dir))
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise SourceUnavailableError(source.name, f"database file {url.database} does not exist")
    engine = sa.create_engine(url)
    try:
        try:
            table = sa.Table(source.table, sa.MetaData(), autoload_with=engine)
        except sa.exc.NoSuchTableError as exc:
            raise SourceUnavailableError(
                source.name, f"table '{source.table}' not found at {url.render_as_string(hide_password=True)}"
            ) from exc
        except sa.exc.OperationalError as exc:
            raise SourceUnavailableError(source.name, f"cannot connect: {exc.orig}") from exc
        if source.watermark not in table.c:
            raise SourceFormatError(source.name, f"watermark column '{source.watermark}' is missing")
        schema = {col.name: _polars_type(col.type) for col in table.columns}
        query = (
            sa.select(table)
            .where(table.c[source.watermark] < cutoff.strftime("%Y-%m-%d %H:%M:%S"))
            .order_by(table.c[source.id_column])
        )
        rows = 0
        arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        with atomic_path(target) as tmp, pq.ParquetWriter(tmp, arrow_schema, compression="zstd") as writer:
            batches = pl.read_database(
                query, connection=engine, iter_batches=True, batch_size=BATCH_ROWS, schema_overrides=schema
            )
            for batch in batches:
                writer.write_table(batch.select(list(schema)).cast(schema).to_arrow().cast(arrow_schema))
                rows += batch.height
        return rows
    finally:
        engine.dispose()


def _read_text(source: SourceConfig, path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SourceUnavailableError(source.name, f"file {path} does not exist") from exc
    try:
        return data.decode(source.encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceFormatError(
            source.name, f"{path.name} is not valid {source.encoding} (line {line}, byte {exc.start}: {exc.reason})"
        ) from exc


def _extract_file(source: SourceConfig, sources_dir: Path, target: Path, cutoff: datetime) -> int:
    path = source.file_path(sources_dir)
    text = _read_text(source, path)
    if not text.strip():
        raise SourceFormatError(source.name, f"{path.name} is empty")
    try:
        if source.format == "csv":
            frame = pl.read_csv(io.StringIO(text), infer_schema=False, quote_char='"')
        elif source.format == "jsonl":
            frame = pl.read_ndjson(io.StringIO(text), infer_schema_length=None)
        else:
            raise SourceFormatError(source.name, f"unknown file format {source.format!r}")
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError) as exc:
        raise SourceFormatError(source.name, f"{path.name} cannot be parsed as {source.format}: {exc}") from exc
    for column in (source.id_column, source.watermark):
        if column not in frame.columns:
            raise SourceFormatError(source.name, f"{path.name} lacks the column '{column}'")
    stamp = pl.col(source.watermark).cast(pl.String).str.to_datetime(strict=False)
    # A row whose watermark cannot be read is kept: validation quarantines it with a reason.
    frame = frame.filter(stamp.is_null() | (stamp < cutoff)).sort(source.id_column)
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="zstd")
    return frame.height
