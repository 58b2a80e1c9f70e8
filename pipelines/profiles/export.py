"""`credit export`: a slice of the published profiles as CSV or Excel, for people who want a file.

List columns (reasons, former names, lists) are joined into readable text; nested provenance is
written as JSON text, so every cell opens in a spreadsheet.

Headers are for the reader: by default (``labels``) each column is headed by its label and unit
from the data dictionary (config/profile_columns.toml, ``foundation.dictionary``), 贷款金额（元）,
and shares 0-1 are shown as percentages; ``names`` keeps the column names and values as published
(lending_amount), for scripts.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from foundation.dictionary import Column, load_columns
from foundation.grading import list_labels
from foundation.lake import atomic_path

#: --header: the data dictionary's labels and units (for people), or the column names (for scripts)
HEADERS = ("labels", "names")


def select_profiles(
    profiles_dir: Path,
    grades: list[str] | None = None,
    lists: list[str] | None = None,
    divisions: list[str] | None = None,
) -> pl.DataFrame:
    """Profiles filtered by grade, list membership (any of) and division prefix (any of)."""
    frame = pl.scan_parquet(profiles_dir / "*.parquet")
    if grades:
        frame = frame.filter(pl.col("grade").is_in(grades))
    if lists:
        known = tuple(list_labels())  # the lists the grading the settings name defines
        unknown = sorted(set(lists) - set(known))
        if unknown:
            raise ValueError(f"unknown list(s) {unknown}; known: {', '.join(known)}")
        frame = frame.filter(pl.col("lists").list.eval(pl.element().is_in(lists)).list.any())
    if divisions:
        frame = frame.filter(pl.any_horizontal([pl.col("division").str.starts_with(d) for d in divisions]))
    return frame.sort("entity_id").collect()


def flatten(frame: pl.DataFrame) -> pl.DataFrame:
    """Lists become '; '-joined text and structs JSON text, so CSV and Excel can hold them."""
    columns = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.List) and dtype.inner == pl.String:
            columns.append(pl.col(name).list.join("; "))
        elif isinstance(dtype, pl.List | pl.Struct):
            # JSON of the value itself: encode {"name": value} and keep the value part
            encoded = pl.struct(pl.col(name)).struct.json_encode()
            columns.append(encoded.str.replace(r'^\{"[^"]*":(.*)\}$', "$1").alias(name))
        else:
            columns.append(pl.col(name))
    return frame.select(columns)


def money_formats(frame: pl.DataFrame) -> dict[str, str]:
    """Excel number formats for the decimal (money, 元) columns: thousands and every fen shown, so a
    cell reads as its exact value; CSV writes the decimal's digits as they are ("1234.50")."""
    return {
        name: "#,##0." + "0" * dtype.scale
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Decimal) and dtype.scale
    }


def header_label(column: Column) -> str:
    """贷款金额（元）: the column's label and unit (a share 0-1 is shown in %)."""
    unit = "%" if column.ratio else column.unit
    return f"{column.label}（{unit}）" if unit else column.label


def for_people(frame: pl.DataFrame, columns: dict[str, Column] | None = None) -> pl.DataFrame:
    """Headers from the data dictionary, shares as percentages; a column the dictionary does not
    describe keeps its name."""
    columns = load_columns() if columns is None else columns
    shares = [n for n in frame.columns if n in columns and columns[n].ratio]
    headers = {n: header_label(columns[n]) if n in columns else n for n in frame.columns}
    clashes = sorted(h for h in set(headers.values()) if list(headers.values()).count(h) > 1)
    if clashes:
        raise ValueError(f"config/profile_columns.toml: columns share the header(s) {clashes}")
    return frame.with_columns((pl.col(n) * 100).round(2) for n in shares).rename(headers)


def export_profiles(frame: pl.DataFrame, target: Path, header: str = "labels") -> int:
    """Write ``frame`` to ``target`` (.csv, UTF-8 with BOM for Excel, or .xlsx) atomically, headed
    as ``header`` (one of HEADERS) says."""
    if header not in HEADERS:
        raise ValueError(f"unknown header {header!r}; expected one of {', '.join(HEADERS)}")
    flat = flatten(frame)
    if header == "labels":
        flat = for_people(flat)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise ValueError(f"export target must end in .csv or .xlsx, not {target.name!r}")
    with atomic_path(target) as tmp:
        if suffix == ".csv":
            flat.write_csv(tmp, include_bom=True)
        else:
            flat.write_excel(tmp, worksheet="profiles", autofit=True, column_formats=money_formats(flat))
    return flat.height
