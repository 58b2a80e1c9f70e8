"""The column dictionary: label, unit and description of each profile column, from one file.

config/profile_columns.toml is the one place a profile column is described; the Parquet schema
metadata, the firm page and the credit report read it through ``load_columns`` so that a label
or unit is never restated. The list flag columns are derived from the lists of
config/grading.toml (their label is the list's own), so a list added there is described at once.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from foundation.grading import load_grading
from foundation.schema import CANONICAL_SCHEMA, RECORD_TYPES
from foundation.settings import config_path

#: the dictionary's file name under config/ (CREDIT_PROFILE_COLUMNS_CONFIG points elsewhere)
COLUMNS_FILE = "profile_columns.toml"
_COLUMN_KEYS = {"label", "label_en", "unit", "ratio", "description", "domain", "values"}
_DOMAIN_KEYS = {"label", "label_en"}
_RECORD_TYPE_KEYS = {"label", "label_en", "reference"}
_EVIDENCE_KEYS = {"label", "label_en", "unit", "description"}


class DictionaryError(ValueError):
    """config/profile_columns.toml that cannot describe the profile: names file, column, problem."""


@dataclass(frozen=True)
class Column:
    """What one profile column is, in the words a page or a report shows."""

    name: str
    label: str
    label_en: str
    description: str
    unit: str | None = None
    ratio: bool = False  # a share 0-1, shown as a percentage
    domain: str | None = None  # a source domain of config/disclosure.toml
    values: dict[str, str] | None = None  # a coded value -> the words a page shows for it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DomainLabel:
    """The title of a source domain's panel."""

    name: str
    label: str
    label_en: str


def _checked(table: dict[str, Any], allowed: set[str], required: tuple[str, ...], where: str) -> None:
    """Known keys, required text present and non-empty, ``ratio`` a boolean."""
    if not isinstance(table, dict):
        raise DictionaryError(f"{where}: must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DictionaryError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = [key for key in required if not (isinstance(table.get(key), str) and table[key].strip())]
    if missing:
        raise DictionaryError(f"{where}: missing or empty {missing}")
    if not isinstance(table.get("ratio", False), bool):
        raise DictionaryError(f"{where}: ratio must be true or false")


def _flag_columns(grading: dict[str, Any]) -> dict[str, Column]:
    """One true/false column per list of the grading that names a ``flag``."""
    return {
        entry["flag"]: Column(
            name=entry["flag"],
            label=f"列入{entry['label']}",
            label_en=f"on the {entry['label_en']}",
            description=(
                f"True while one of the firm's records puts it on the {entry['label_en']} "
                f"({entry['label']}; list {entry['id']} of config/grading.toml)."
            ),
        )
        for entry in grading.get("lists", [])
        if "flag" in entry
    }


def _resolve(path: Path | None) -> Path:
    """``path``, else config/profile_columns.toml (or the file CREDIT_PROFILE_COLUMNS_CONFIG names)."""
    return Path(path) if path else config_path(COLUMNS_FILE)


@cache
def _parse(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DictionaryError(f"{path}: cannot read the column dictionary: {exc}") from exc


def load_columns(path: Path | None = None, grading: dict[str, Any] | None = None) -> dict[str, Column]:
    """Column name -> ``Column``, in the file's order, then the list flags of the grading."""
    path = _resolve(path)
    raw = _parse(path)
    flags = _flag_columns(grading if grading is not None else load_grading())
    columns: dict[str, Column] = {}
    for name, table in raw.get("columns", {}).items():
        where = f"{path}: [columns.{name}]"
        _checked(table, _COLUMN_KEYS, ("label", "label_en", "description"), where)
        if name in flags:
            raise DictionaryError(f"{where}: a list flag column is described by its list in grading.toml")
        if table.get("ratio") and table.get("unit", "%") != "%":
            raise DictionaryError(f"{where}: a ratio is shown in %, not {table['unit']!r}")
        columns[name] = Column(name=name, **table)
    domains = load_domains(path)
    unknown = sorted({c.domain for c in columns.values() if c.domain and c.domain not in domains})
    if unknown:
        raise DictionaryError(f"{path}: domain(s) {unknown} have no [domains.X] label")
    return {**columns, **flags}


def load_domains(path: Path | None = None) -> dict[str, DomainLabel]:
    """Source domain -> its panel title, in the file's order."""
    path = _resolve(path)
    out = {}
    for name, table in _parse(path).get("domains", {}).items():
        _checked(table, _DOMAIN_KEYS, ("label", "label_en"), f"{path}: [domains.{name}]")
        out[name] = DomainLabel(name=name, **table)
    return out


def coverage(columns: dict[str, Column], profile_columns: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(profile columns the dictionary lacks, dictionary entries the profile does not have)."""
    return (
        [c for c in profile_columns if c not in columns],
        [c for c in columns if c not in profile_columns],
    )


def load_record_types(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Record type -> {label, label_en, reference}: one entry per type of foundation/schema.py."""
    path = _resolve(path)
    out = {}
    for name, table in _parse(path).get("record_types", {}).items():
        where = f"{path}: [record_types.{name}]"
        _checked(table, _RECORD_TYPE_KEYS, ("label", "label_en"), where)
        if name not in RECORD_TYPES:
            raise DictionaryError(f"{where}: not a record type of foundation/schema.py")
        if table.get("reference", "detail") not in CANONICAL_SCHEMA:
            raise DictionaryError(f"{where}: reference {table['reference']!r} is not a canonical column")
        out[name] = {"reference": "source_record_id", **table}
    return out


def load_evidence_fields(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Evidence field -> {label, label_en, unit?, description}, in the order the evidence shows them."""
    path = _resolve(path)
    out = {}
    for name, table in _parse(path).get("evidence", {}).items():
        where = f"{path}: [evidence.{name}]"
        _checked(table, _EVIDENCE_KEYS, ("label", "label_en", "description"), where)
        if name not in CANONICAL_SCHEMA and name != "reference":
            raise DictionaryError(f"{where}: not a canonical column (foundation/schema.py) nor reference")
        out[name] = dict(table)
    return out


def reference_expr(path: Path | None = None) -> pl.Expr:
    """``reference``: each record's decision, case or report number (its type's ``reference``
    column, else the source's own record id)."""
    path = _resolve(path)
    out = pl.col("source_record_id")
    for name, entry in load_record_types(path).items():
        if entry["reference"] != "source_record_id":
            column = pl.col(entry["reference"]).cast(pl.String)
            out = pl.when(pl.col("record_type") == name).then(column.fill_null(out)).otherwise(out)
    return out.alias("reference")
