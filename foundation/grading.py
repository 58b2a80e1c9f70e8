"""The grading definition (config/grading.toml): its reading and checking, the lists' labels, the
entity types, and the profile's columns it adds. The one reader of the file, below the stage that
grades (``pipelines.profiles.build``) and the service that shows grades and lists (``serving``).
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from foundation.schema import CANONICAL_SCHEMA
from foundation.settings import config_path

GRADING_FILE = "grading.toml"

ENTITY_TYPES = {
    "91": "enterprise",
    "92": "individual business",
    "93": "farmers' cooperative",
    "11": "government body",
    "51": "social organization",
    "52": "private non-enterprise unit",
    "53": "foundation",
    "Y1": "other",
}
#: the entity type of a subject identified by a resident ID number (自然人), never a firm
NATURAL_PERSON = "natural person"

#: what a [[lists]] or [[rules]] entry of config/grading.toml may hold (anything else is a typo)
_COMMON_KEYS = {
    "id",
    "when",
    "removed_when",
    "latest_only",
    "expires_after_days",
    "expires_at_end_date",
    "points",
    "max_points",
}
_LIST_KEYS = _COMMON_KEYS | {"label", "label_en", "veto", "flag"}
_RULE_KEYS = _COMMON_KEYS | {"reason", "count"}


class GradingError(ValueError):
    """config/grading.toml (or a grading given in code) that cannot grade: names file, entry, problem."""


def _check_entry(entry: dict[str, Any], section: str, allowed: set[str], origin: str) -> None:
    """One [[lists]] or [[rules]] entry: known keys, sound numbers, conditions that compile."""
    name = f"{origin}: [[{section}]] '{entry.get('id', '?')}'"
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise GradingError(f"{name}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    required = ("id", "when", "label", "label_en") if section == "lists" else ("id", "when", "reason")
    missing = [key for key in required if not entry.get(key)]
    if missing:
        raise GradingError(f"{name}: missing {missing}")
    points, cap = entry.get("points", 0), entry.get("max_points", entry.get("points", 0))
    days = entry.get("expires_after_days", 365)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (points, cap, days)):
        raise GradingError(f"{name}: points, max_points and expires_after_days must be whole numbers >= 0")
    flags = [
        key
        for key in ("veto", "latest_only", "expires_at_end_date")
        if not isinstance(entry.get(key, False), bool)
    ]
    if flags:
        raise GradingError(f"{name}: {flags} must be true or false")
    if cap < points:
        raise GradingError(f"{name}: max_points {cap} is below points {points}")
    if section == "rules" and points == 0:
        raise GradingError(f"{name}: a rule must deduct points (a list may veto instead)")
    if section == "lists" and points == 0 and not entry.get("veto"):
        raise GradingError(f"{name}: a list must either veto or deduct points")
    column = entry.get("flag") or entry.get("count")
    if column in BASE_COLUMNS:
        raise GradingError(f"{name}: column {column!r} would overwrite the profile's own column")
    empty = pl.DataFrame(schema=CANONICAL_SCHEMA)
    for key in ("when", "removed_when"):
        if key in entry:
            try:
                empty.filter(pl.sql_expr(entry[key]))
            except Exception as exc:  # noqa: BLE001 - any parse or column error: say which entry
                raise GradingError(f"{name}: bad condition {key} = {entry[key]!r}: {exc}") from exc


def check_grading(grading: dict[str, Any], origin: str = "grading") -> dict[str, Any]:
    """Refuse a grading whose entries are malformed, clash, or add columns the profile already has."""
    grades = grading.get("grades") or []
    if not grades or not all({"grade", "min_score"} <= set(g) for g in grades):
        raise GradingError(f"{origin}: [[grades]] must list each grade with its min_score")
    for section, allowed in (("lists", _LIST_KEYS), ("rules", _RULE_KEYS)):
        for entry in grading.get(section, []):
            _check_entry(entry, section, allowed, origin)
    ids = [e["id"] for e in grading.get("lists", []) + grading.get("rules", [])]
    derived = [e["flag"] for e in grading.get("lists", []) if "flag" in e]
    derived += [e["count"] for e in grading.get("rules", []) if "count" in e]
    for what, names in (("id", ids), ("flag/count column", derived)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise GradingError(f"{origin}: {what} used more than once: {twice}")
    return grading


def grading_path() -> Path:
    """config/grading.toml, or CREDIT_GRADING_CONFIG's file (resolved at call time)."""
    return config_path(GRADING_FILE)


def load_grading(path: Path | None = None) -> dict[str, Any]:
    """The grading definition at ``path``, else the one the settings name now; every consumer derives
    from this one file."""
    return _load_grading(Path(path) if path else grading_path())


@cache
def _load_grading(path: Path) -> dict[str, Any]:
    """Read and check one grading file, once per path."""
    try:
        grading = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GradingError(f"{path}: cannot read the grading rules: {exc}") from exc
    return check_grading(grading, str(path))


def list_labels(grading: dict[str, Any] | None = None) -> dict[str, tuple[str, str]]:
    """list id -> (Chinese label, English label), in the order grading.toml defines them."""
    grading = grading or load_grading()
    return {entry["id"]: (entry["label"], entry["label_en"]) for entry in grading.get("lists", [])}


#: the profile's columns but for the list flags and rule counts config/grading.toml names
BASE_COLUMNS = (
    "entity_id",
    "uscc",
    "org_code",
    "reg_no",
    "name",
    "former_names",
    "entity_type",
    "division",
    "division_name",
    "industry",
    "legal_rep",
    "record_count",
    "source_count",
    "min_match_confidence",
    "lending_loans",
    "lending_amount",
    "lending_balance",
    "lending_overdue_principal",
    "lending_worst_class",
    "tax_latest_rating",
    "tax_latest_rating_year",
    "tax_arrears_balance",
    "contract_cases",
    "contract_unperformed_amount",
    "quality_checks_36m",
    "quality_failures_36m",
    "quality_fail_rate",
    "quality_recalls",
    "si_headcount",
    "si_arrears_months",
    "si_arrears_amount",
    "violations_penalties_12m",
    "violations_fines_12m",
    "lists",
    "score",
    "grade",
    "grade_reasons",
    "veto_reasons",
    "deductions",
    "vetoes",
    "quality_score",
    "quality_completeness",
    "quality_validity",
    "quality_consistency",
    "quality_timeliness",
    "quality_uniqueness",
    "provenance",
    "as_of",
)


def profile_columns(grading: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The profile's columns: the list flags and rule counts the grading (by default the one the
    settings name now) names go before ``lists``."""
    grading = grading if grading is not None else load_grading()
    derived = [e["flag"] for e in grading.get("lists", []) if "flag" in e]
    derived += [e["count"] for e in grading.get("rules", []) if "count" in e]
    at = BASE_COLUMNS.index("lists")
    return (*BASE_COLUMNS[:at], *derived, *BASE_COLUMNS[at:])
