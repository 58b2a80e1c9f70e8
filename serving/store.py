"""One published version, loaded for queries: profiles in memory with a code index and a name index.

A ``VersionStore`` is immutable once built. The service builds the next one aside when
``published/current`` moves and swaps a single reference, so a query in flight keeps the version
it started with and never fails because of a publish.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.identifiers import repair_code
from pipelines.profiles import list_labels, load_grading
from serving.search import NameIndex

log = logging.getLogger(__name__)
ENTITY_ID = re.compile(r"X[0-9a-f]{16}")
VERSION_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_[0-9a-f]{10}(-\d+)?$")
#: list name in the API -> the profile condition: every list config/grading.toml defines, and the
#: firms in the lowest grade
LOWEST_GRADE = min(load_grading()["grades"], key=lambda g: g["min_score"])["grade"]
LISTS: dict[str, pl.Expr] = {
    **{name: pl.col("lists").list.contains(name) for name in list_labels()},
    f"grade_{LOWEST_GRADE.lower()}": pl.col("grade") == LOWEST_GRADE,
}


#: what a search hit or a list row shows (the full profile is one lookup away)
SUMMARY_COLUMNS = (
    "entity_id",
    "name",
    "uscc",
    "org_code",
    "reg_no",
    "entity_type",
    "division",
    "division_name",
    "industry",
    "legal_rep",
    "grade",
    "score",
    "lists",
    "as_of",
)


class CodeError(ValueError):
    """A code that is not a USCC, organization code or registration number in any spelling."""


def normalise_code(raw: str) -> tuple[str, str]:
    """(kind, code) for a code as a person types it (spaces, hyphens, full width, O for 0 repaired)."""
    if len(raw) > 40:
        raise CodeError("a code has at most 18 characters")
    result = repair_code(raw)
    if result.uscc:
        return "uscc", result.uscc
    if result.org_code:
        return "org_code", result.org_code
    if result.reg_no:
        return "reg_no", result.reg_no
    cleaned = re.sub(r"[\s\-]", "", raw).upper()
    if re.fullmatch(r"[0-9A-Z]{18}|[0-9A-Z]{9}|[0-9]{15}", cleaned):
        raise CodeError(
            f"'{cleaned}' fails its check character: not a valid USCC, organization code or "
            f"registration number"
        )
    if ENTITY_ID.fullmatch(raw):
        return "entity_id", raw  # a firm without a valid USCC (a hashed id from resolution)
    raise CodeError("not a USCC (18 characters), organization code (9) or registration number (15)")


@dataclass
class VersionStore:
    """Everything a query needs from one published version."""

    lake: Path
    version: str
    path: Path
    manifest: dict[str, Any]
    profiles: pl.DataFrame
    by_code: dict[str, int]
    names: NameIndex
    legal_reps: dict[str, np.ndarray]
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, lake: Path, version_dir: Path) -> VersionStore:
        started = time.perf_counter()
        manifest = json.loads((version_dir / "manifest.json").read_text("utf-8"))
        # one chunk per column: gathering a few rows from many chunks costs milliseconds
        profiles = pl.read_parquet(version_dir / "profiles" / "*.parquet").rechunk()
        by_code: dict[str, int] = {}
        rows = np.arange(profiles.height)
        for column in ("reg_no", "org_code", "uscc", "entity_id"):  # later columns win on a clash
            values = profiles[column]
            mask = values.is_not_null().to_numpy()
            by_code.update(zip(values.filter(pl.Series(mask)).to_list(), rows[mask].tolist(), strict=True))
        reps = (
            profiles.select(pl.col("legal_rep"), pl.int_range(pl.len(), dtype=pl.Int32).alias("row"))
            .drop_nulls("legal_rep")
            .group_by("legal_rep")
            .agg("row")
        )
        legal_reps = {rep: np.asarray(ids, dtype=np.int32) for rep, ids in reps.iter_rows()}
        store = cls(
            lake=lake,
            version=version_dir.name,
            path=version_dir,
            manifest=manifest,
            profiles=profiles,
            by_code=by_code,
            names=NameIndex.build(profiles["name"]),
            legal_reps=legal_reps,
        )
        log.info(
            "loaded version %s: %d profiles in %.1f s",
            store.version,
            profiles.height,
            time.perf_counter() - started,
        )
        return store

    # ------------------------------------------------------------------ lookups
    def find(self, raw_code: str) -> dict[str, Any] | None:
        kind, code = normalise_code(raw_code)
        row = self.by_code.get(code)
        return None if row is None else self.profiles.row(row, named=True)

    def rows(self, rows: list[int] | np.ndarray, summary: bool = False) -> list[dict[str, Any]]:
        if not len(rows):
            return []
        picked = self.profiles[list(map(int, rows))]
        return (picked.select(SUMMARY_COLUMNS) if summary else picked).to_dicts()

    def search(self, query: str, limit: int) -> list[dict[str, Any]]:
        hits = self.names.search(query, limit)
        found = self.rows([row for row, _ in hits], summary=True)
        return [
            {**profile, "match_score": round(score, 1)}
            for profile, (_, score) in zip(found, hits, strict=True)
        ]

    def by_legal_rep(self, name: str, limit: int) -> list[dict[str, Any]]:
        rows = self.legal_reps.get(name.strip())
        return self.rows(rows[:limit], summary=True) if rows is not None else []

    def listing(
        self, name: str, division: str | None, industry: str | None, grade: str | None, offset: int, size: int
    ) -> tuple[int, list[dict[str, Any]]]:
        condition = LISTS[name]
        if division:
            condition &= pl.col("division").str.starts_with(division)
        if industry:
            condition &= pl.col("industry").str.contains(industry, literal=True)
        if grade:
            condition &= pl.col("grade") == grade
        matched = self.profiles.filter(condition)
        return matched.height, matched.slice(offset, size).select(SUMMARY_COLUMNS).to_dicts()

    def evidence(self, entity_id: str) -> list[dict[str, Any]]:
        links = pl.scan_parquet(self.path / "links" / "*.parquet").filter(pl.col("entity_id") == entity_id)
        return links.sort("source", "source_record_id").collect().to_dicts()

    def history(self, entity_id: str) -> list[dict[str, Any]]:
        """The firm in every published version still kept (oldest first)."""
        out = []
        for version_dir in sorted(
            p
            for p in (self.lake / "published").iterdir()
            if VERSION_NAME.match(p.name) and (p / "profiles").is_dir()
        ):
            try:
                row = (
                    pl.scan_parquet(version_dir / "profiles" / "*.parquet")
                    .filter(pl.col("entity_id") == entity_id)
                    .select("score", "grade", "record_count", "lists", "grade_reasons", "as_of")
                    .collect()
                )
            except (OSError, pl.exceptions.PolarsError):  # pruned while we read: skip it
                continue
            if row.height:
                out.append({"version": version_dir.name, **row.row(0, named=True)})
        return out
