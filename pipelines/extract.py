"""Extraction: copy one source's changed records (as of a cutoff) into the lake's raw layer, as they are.

Raw keeps the source's own column names and values so that every later decision can be traced
back. Extraction is incremental: only rows whose watermark is at or after ``since`` (the
watermark of the last published run) and before the cutoff are copied; the source's total row
count and newest watermark are measured too, for the batch checks (volume, staleness).

A file line that cannot be read (bytes not in the declared encoding, an unterminated quote, the
wrong number of fields, broken JSON) does not stop the source: it becomes a *reject* with its line
number, raw text and reason, and ends up in quarantine. A file that is mostly unreadable, empty,
or lacks its id/watermark columns is a batch problem (``SourceFormatError``).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pipelines.errors import SourceFormatError, SourceUnavailableError
from pipelines.lake import atomic_path, write_parquet
from pipelines.sources import SourceConfig

log = logging.getLogger(__name__)
BATCH_ROWS = 250_000
#: more unreadable lines than this share means the file as a whole is wrong (encoding, format)
MAX_REJECT_SHARE = 0.5
REJECT_SCHEMA = {"line": pl.Int64(), "original": pl.String(), "reason": pl.String()}
_STAMP = "%Y-%m-%d %H:%M:%S"


@dataclass
class Extracted:
    """What one extraction saw: the delta copied, and the source as a whole."""

    rows: int  # rows copied to raw (changed in [since, cutoff))
    source_rows: int  # rows the source holds before the cutoff (for the volume check)
    newest: str | None  # the newest watermark before the cutoff (for staleness and the next run)
    columns: list[str]  # the source's columns as delivered (for schema drift)
    rejects: int = 0  # unreadable lines, kept with their reason
    since: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def extract(
    source: SourceConfig,
    sources_dir: Path,
    target: Path,
    cutoff: datetime,
    since: datetime | None = None,
    rejects_target: Path | None = None,
) -> Extracted:
    """Copy the rows changed in ``[since, cutoff)`` to ``target`` (all rows before ``cutoff`` when
    ``since`` is None); unreadable lines go to ``rejects_target``."""
    rejects_target = rejects_target or target.with_name(f"{target.stem}.rejects.parquet")
    if source.kind == "sql":
        result = _extract_sql(source, sources_dir, target, cutoff, since)
        write_parquet(pl.DataFrame(schema=REJECT_SCHEMA), rejects_target)
        return result
    return _extract_file(source, sources_dir, target, cutoff, since, rejects_target)


def _polars_type(column_type: sa.types.TypeEngine) -> pl.DataType:
    if isinstance(column_type, sa.Integer):
        return pl.Int64()
    if isinstance(column_type, sa.Float | sa.Numeric):
        return pl.Float64()
    return pl.String()


def _extract_sql(
    source: SourceConfig, sources_dir: Path, target: Path, cutoff: datetime, since: datetime | None
) -> Extracted:
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
        columns = [col.name for col in table.columns]
        for needed in (source.id_column, source.watermark):
            if needed not in table.c:
                raise SourceFormatError(source.name, f"table '{source.table}' lacks the column '{needed}'")
        mark = table.c[source.watermark]
        # a row without a readable watermark is copied every time: validation quarantines it
        before_cutoff = sa.or_(mark < cutoff.strftime(_STAMP), mark.is_(None))
        with engine.connect() as connection:
            total, newest = connection.execute(
                sa.select(sa.func.count(), sa.func.max(mark)).where(before_cutoff)
            ).one()
        changed = sa.or_(mark >= since.strftime(_STAMP), mark.is_(None)) if since else None
        condition = before_cutoff if changed is None else sa.and_(before_cutoff, changed)
        if url.get_backend_name() == "sqlite":
            # SQLite does not enforce column types: a text value in a REAL column must reach
            # validation (and quarantine) as the text it is, so everything is read as text.
            schema = {col.name: pl.String() for col in table.columns}
            selected = [sa.cast(col, sa.Text).label(col.name) for col in table.columns]
        else:
            schema = {col.name: _polars_type(col.type) for col in table.columns}
            selected = list(table.columns)
        query = sa.select(*selected).where(condition).order_by(table.c[source.id_column])
        rows = 0
        arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        with atomic_path(target) as tmp, pq.ParquetWriter(tmp, arrow_schema, compression="zstd") as writer:
            batches = pl.read_database(
                query, connection=engine, iter_batches=True, batch_size=BATCH_ROWS, schema_overrides=schema
            )
            for batch in batches:
                writer.write_table(batch.select(list(schema)).cast(schema).to_arrow().cast(arrow_schema))
                rows += batch.height
        return Extracted(
            rows=rows,
            source_rows=int(total),
            newest=None if newest is None else str(newest)[:19],
            columns=columns,
            since=None if since is None else since.strftime(_STAMP),
        )
    finally:
        engine.dispose()


def _decode(source: SourceConfig, path: Path) -> tuple[pl.Series, pl.DataFrame]:
    """The file's lines (1-based numbering kept by position) and the lines that are not valid text."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SourceUnavailableError(source.name, f"file {path} does not exist") from exc
    if not data.strip():
        raise SourceFormatError(source.name, f"{path.name} is empty")
    try:
        text = data.decode(source.encoding)
    except UnicodeDecodeError:
        text = data.decode(source.encoding, errors="replace")  # bad bytes -> U+FFFD, found per line below
    except LookupError as exc:
        raise SourceFormatError(source.name, f"unknown encoding {source.encoding!r}") from exc
    lines = pl.Series("text", text.replace("\r\n", "\n").split("\n"))
    if lines.len() and lines[-1] == "":
        lines = lines.head(lines.len() - 1)
    frame = pl.DataFrame({"line": pl.int_range(1, lines.len() + 1, eager=True), "text": lines})
    bad = frame.filter(pl.col("text").str.contains("\ufffd", literal=True))
    if bad.height > MAX_REJECT_SHARE * max(frame.height - 1, 1):
        raise SourceFormatError(
            source.name,
            f"{path.name} is not valid {source.encoding}: {bad.height:,} of {frame.height:,} lines "
            f"hold bytes that are not {source.encoding} (first at line {bad['line'][0]})",
        )
    rejects = bad.select(
        "line",
        pl.col("text").alias("original"),
        pl.lit(f"line holds bytes that are not valid {source.encoding}").alias("reason"),
    )
    return frame.filter(~pl.col("text").str.contains("\ufffd", literal=True)), rejects


def _csv_rows(source: SourceConfig, path: Path, lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse CSV lines whose quotes balance and whose field count matches the header."""
    header, body = lines.head(1), lines.slice(1)
    if header.is_empty():
        raise SourceFormatError(source.name, f"{path.name} has no header line")
    names = pl.read_csv(io.StringIO(header["text"][0]), has_header=False, infer_schema=False).row(0)
    unquoted = pl.col("text").str.replace_all(r'"[^"]*"', "")
    checked = body.with_columns(
        quotes=pl.col("text").str.count_matches('"', literal=True),
        fields=unquoted.str.count_matches(",", literal=True) + 1,
    ).with_columns(
        reason=pl.when(pl.col("quotes") % 2 == 1)
        .then(pl.lit("unterminated quoted field (line truncated?)"))
        .when(pl.col("text").str.strip_chars() == "")
        .then(pl.lit("empty line"))
        .when(pl.col("fields") != len(names))
        .then(pl.format("{} fields where the header has {}", pl.col("fields"), pl.lit(len(names))))
    )
    rejects = checked.filter(pl.col("reason").is_not_null()).select(
        "line", pl.col("text").alias("original"), "reason"
    )
    good = checked.filter(pl.col("reason").is_null())
    if good.is_empty():
        return pl.DataFrame(schema={n: pl.String for n in names}), rejects
    text = header["text"][0] + "\n" + "\n".join(good["text"].to_list()) + "\n"
    frame = pl.read_csv(io.StringIO(text), infer_schema=False, quote_char='"')
    return frame.with_columns(good["line"].alias("_line")), rejects


def _jsonl_rows(source: SourceConfig, path: Path, lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    lines = lines.filter(pl.col("text").str.strip_chars() != "")
    try:
        frame = pl.read_ndjson(io.StringIO("\n".join(lines["text"].to_list())), infer_schema_length=None)
        return frame.with_columns(lines["line"].alias("_line")), pl.DataFrame(schema=REJECT_SCHEMA)
    except (pl.exceptions.PolarsError, RuntimeError):
        pass
    # Slow path, only when some line is broken: find the broken lines one by one.
    good: list[int] = []
    rejected: list[tuple[int, str, str]] = []
    for number, text in lines.iter_rows():
        try:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("a JSON object was expected")
            good.append(number)
        except ValueError as exc:
            rejected.append((number, text, f"not a JSON object: {exc}"))
    rejects = pl.DataFrame(rejected, schema=REJECT_SCHEMA, orient="row")
    kept = lines.filter(pl.col("line").is_in(good))
    try:
        frame = pl.read_ndjson(io.StringIO("\n".join(kept["text"].to_list())), infer_schema_length=None)
    except (pl.exceptions.PolarsError, RuntimeError):
        # values of mixed types across lines: read every field as text, standardisation casts
        rows = [
            {
                k: None if v is None else (v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
                for k, v in json.loads(t).items()
            }
            for t in kept["text"].to_list()
        ]
        frame = pl.DataFrame(rows, infer_schema_length=None)
    return frame.with_columns(kept["line"].alias("_line")), rejects


def _extract_file(
    source: SourceConfig,
    sources_dir: Path,
    target: Path,
    cutoff: datetime,
    since: datetime | None,
    rejects_target: Path,
) -> Extracted:
    path = source.file_path(sources_dir)
    lines, rejects = _decode(source, path)
    if source.format == "csv":
        frame, bad = _csv_rows(source, path, lines)
    elif source.format == "jsonl":
        frame, bad = _jsonl_rows(source, path, lines)
    else:
        raise SourceFormatError(source.name, f"unknown file format {source.format!r}")
    rejects = pl.concat([rejects, bad]).sort("line")
    body_lines = lines.height - (1 if source.format == "csv" else 0) + rejects.height - bad.height
    if rejects.height > MAX_REJECT_SHARE * max(body_lines, 1):
        raise SourceFormatError(
            source.name,
            f"{path.name} cannot be read as {source.format}: {rejects.height:,} "
            f"of {body_lines:,} lines are broken (line {rejects['line'][0]}: "
            f"{rejects['reason'][0]})",
        )
    for column in (source.id_column, source.watermark):
        if column not in frame.columns:
            raise SourceFormatError(source.name, f"{path.name} lacks the column '{column}'")
    stamp = pl.col(source.watermark).cast(pl.String).str.strip_chars().str.to_datetime(strict=False)
    # A row whose watermark cannot be read is kept: validation quarantines it with a reason.
    before = frame.filter(stamp.is_null() | (stamp < cutoff))
    newest = before.select(stamp.max()).item()
    delta = before if since is None else before.filter(stamp.is_null() | (stamp >= since))
    write_parquet(delta.sort(source.id_column, "_line").drop("_line"), target)
    write_parquet(rejects, rejects_target)
    if rejects.height:
        log.warning(
            "source %s: %d unreadable lines in %s (first: line %d, %s)",
            source.name,
            rejects.height,
            path.name,
            rejects["line"][0],
            rejects["reason"][0],
        )
    return Extracted(
        rows=delta.height,
        source_rows=before.height,
        rejects=rejects.height,
        newest=None if newest is None else newest.strftime(_STAMP),
        columns=[c for c in frame.columns if c != "_line"],
        since=None if since is None else since.strftime(_STAMP),
    )
