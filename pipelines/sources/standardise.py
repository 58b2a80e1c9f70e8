"""Standardisation: map a source's raw rows onto the canonical schema, declaratively.

The mapping comes from config/sources.toml. A value that cannot be read as its canonical type is
not silently nulled: the field is named in ``parse_errors`` so validation quarantines the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from foundation.errors import SourceFormatError
from foundation.identifiers import classify_codes, reg_no_check_expr
from foundation.lake import write_parquet
from foundation.schema import (
    CANONICAL_SCHEMA,
    DATE_RANGE,
    FULL_WIDTH_NUMBER,
    NUMBER_GROUP_SEPARATORS,
    NUMBER_TEXT,
    conform,
)
from pipelines.sources.registry import SourceConfig

_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%Y年%m月%d日")
_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y-%m-%d")
_TRUE = ("true", "1", "yes", "y", "是", "t")
_FALSE = ("false", "0", "no", "n", "否", "f")
IDENTITY_EXTRAS = ("reg_no_extra",)
#: the prefix of a target's computed value beside the raw columns (no source column starts so)
_COMPUTED = "\x00computed:"


def _source_expr(spec: Any, columns: pl.Schema, source: str, target: str) -> pl.Expr:
    """One mapping entry of config/sources.toml as a Polars expression."""

    def col(name: str) -> pl.Expr:
        if name not in columns:
            raise SourceFormatError(source, f"column '{name}' (mapped to '{target}') is missing")
        return pl.col(name)

    if isinstance(spec, str):
        return col(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"source '{source}': mapping for '{target}' must be a string or a table")
    if "const" in spec:
        return pl.lit(spec["const"])
    if "coalesce" in spec:
        return pl.coalesce([col(c).cast(pl.String) for c in spec["coalesce"]])
    expr = col(spec["column"])
    if "map" in spec:
        expr = expr.cast(pl.String).replace({str(k): v for k, v in spec["map"].items()})
    if "scale" in spec:
        expr = _to_float(expr) * float(spec["scale"])
    if "join" in spec:
        if isinstance(columns[spec["column"]], pl.List | pl.Null):
            # a delivery whose lists are all empty has no element type: they are lists of text
            expr = expr.cast(pl.List(pl.String)).list.join(spec["join"])
        else:  # lists and text mixed across JSON lines arrive as text: kept as delivered
            expr = expr.cast(pl.String)
    if "format" in spec:
        expr = expr.cast(pl.String).str.strptime(CANONICAL_SCHEMA[target], spec["format"], strict=False)
    return expr


def _is_valid_reg_no(expr: pl.Expr) -> pl.Expr:
    return expr.str.contains(r"^\d{15}$") & (
        reg_no_check_expr(expr.str.slice(0, 14)) == expr.str.slice(14, 1)
    )


def _finite(value: pl.Expr) -> pl.Expr:
    """NaN and ±infinity are no amounts: they become null, so the field is reported unreadable."""
    return pl.when(value.is_finite()).then(value)


def _to_float(expr: pl.Expr) -> pl.Expr:
    """A number written as schema.NUMBER_TEXT says (full-width digits, thousands separators),
    finite; anything else is null (and reported by the caller)."""
    text = expr.cast(pl.String).str.strip_chars()
    ascii_text = text.str.replace_many(list(FULL_WIDTH_NUMBER), list(FULL_WIDTH_NUMBER.values()))
    ungrouped = ascii_text.str.replace_many(
        list(NUMBER_GROUP_SEPARATORS), [""] * len(NUMBER_GROUP_SEPARATORS)
    )
    value = ungrouped.cast(pl.Float64, strict=False)
    return _finite(pl.when(text.str.contains(NUMBER_TEXT)).then(value))


def _in_date_range(value: pl.Expr) -> pl.Expr:
    low, high = DATE_RANGE
    return pl.when(value.cast(pl.Date).is_between(low, high)).then(value)


def _to_canonical(expr: pl.Expr, dtype: pl.DataType, source_dtype: pl.DataType | None) -> pl.Expr:
    """Cast leniently: unreadable values (not finite, not whole, a date outside
    schema.DATE_RANGE) become null and are reported by the caller."""
    if source_dtype is not None and source_dtype == dtype:
        if dtype == pl.Float64():
            return _finite(expr)
        return _in_date_range(expr) if dtype in (pl.Date(), pl.Datetime("us")) else expr
    text = expr.cast(pl.String).str.strip_chars()
    if dtype == pl.Date():
        return _in_date_range(pl.coalesce([text.str.to_date(f, strict=False) for f in _DATE_FORMATS]))
    if dtype == pl.Datetime("us"):
        return _in_date_range(
            pl.coalesce([text.str.to_datetime(f, strict=False, time_unit="us") for f in _DATETIME_FORMATS])
        )
    if dtype == pl.Float64():
        return _to_float(expr)
    if dtype == pl.Int64():
        number = _to_float(expr)  # a count or a number of days is whole
        return pl.when(number == number.floor()).then(number.cast(pl.Int64, strict=False))
    if dtype == pl.Boolean():
        lowered = text.str.to_lowercase()
        return (
            pl.when(lowered.is_in(_TRUE)).then(True).when(lowered.is_in(_FALSE)).then(False).otherwise(None)
        )
    return text if dtype == pl.String() else expr.cast(dtype, strict=False)


def standardise_frame(raw: pl.LazyFrame, source: SourceConfig) -> pl.LazyFrame:
    """Raw rows of one source -> canonical rows (lazy)."""
    raw_schema = raw.collect_schema()
    columns = set(raw_schema.names())
    for needed in (source.id_column, source.watermark):
        if needed not in columns:
            raise SourceFormatError(source.name, f"column '{needed}' is missing from the raw data")
    mapping = {
        "source_record_id": source.id_column,
        "updated_at": source.watermark,
        **source.mapping,
    }
    values: dict[str, pl.Expr] = {}  # each target's value, computed once (in a first projection)
    errors: list[pl.Expr] = []  # over the computed values: recomputing them cost as much again
    for target, spec in mapping.items():
        if target in IDENTITY_EXTRAS:
            values[target] = _source_expr(spec, raw_schema, source.name, target).cast(pl.String)
            continue
        if target not in CANONICAL_SCHEMA:
            raise ValueError(f"source '{source.name}': '{target}' is not a canonical column")
        given = _source_expr(spec, raw_schema, source.name, target)
        dtype = CANONICAL_SCHEMA[target]
        source_dtype = raw_schema.get(spec) if isinstance(spec, str) else None
        values[target] = _to_canonical(given, dtype, source_dtype)
        value = pl.col(_COMPUTED + target)
        if dtype != pl.String():
            # the value as delivered: a scaled number that cannot be read is null after scaling
            delivered = pl.col(spec["column"]) if isinstance(spec, dict) and "scale" in spec else given
            shown = delivered.cast(pl.String)
            errors.append(
                pl.when(shown.is_not_null() & (shown.str.strip_chars() != "") & value.is_null())
                .then(pl.lit(f"{target}=") + shown.str.slice(0, 40))
                .otherwise(None)
            )
    frame = raw.with_columns(**{_COMPUTED + target: value for target, value in values.items()}).select(
        **{target: pl.col(_COMPUTED + target) for target in values},
        _errors=pl.concat_str(errors, separator="; ", ignore_nulls=True),
    )
    frame = classify_codes(frame.drop("uscc", "org_code", "reg_no", "code_status", strict=False), "code_raw")
    frame = frame.with_columns(
        pl.lit(source.name).alias("source"),
        pl.col("source_record_id").cast(pl.String),
        pl.col("subject_name").cast(pl.String).str.strip_chars(),
        pl.when(pl.col("_errors") != "").then(pl.col("_errors")).otherwise(None).alias("parse_errors"),
    )
    if "reg_no_extra" in values:
        extra = pl.col("reg_no_extra").str.strip_chars()
        frame = frame.with_columns(
            pl.coalesce(pl.col("reg_no"), pl.when(_is_valid_reg_no(extra)).then(extra)).alias("reg_no")
        )
    return conform(frame)


def standardise(source: SourceConfig, raw_path: Path, target: Path) -> int:
    """Standardise one source's raw Parquet into ``target``; return the row count."""
    return write_parquet(standardise_frame(pl.scan_parquet(raw_path), source).collect(), target)
