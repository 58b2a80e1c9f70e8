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

from foundation.dictionary import reference_expr
from foundation.grading import list_labels, load_grading
from foundation.identifiers import repair_code
from foundation.schema import CANONICAL_SCHEMA
from serving.disclosure import View, load_policy, mask_text
from serving.search import NameIndex

log = logging.getLogger(__name__)
ENTITY_ID = re.compile(r"X[0-9a-f]{16}")
VERSION_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_[0-9a-f]{10}(-\d+)?$")


def grades() -> tuple[str, ...]:
    """The grades of config/grading.toml (or CREDIT_GRADING_CONFIG's, resolved now), best first."""
    return tuple(g["grade"] for g in sorted(load_grading()["grades"], key=lambda g: -g["min_score"]))


def _lowest_grade_list() -> tuple[str, str]:
    """(list name, grade) of the list of the firms in the lowest grade: ("grade_d", "D")."""
    lowest = grades()[-1]
    return f"grade_{lowest.lower()}", lowest


def offered_lists() -> dict[str, tuple[str, str]]:
    """List name in the API -> (Chinese label, English label): every list the grading defines, and
    the firms in the lowest grade; as the pages and the API offer them."""
    name, lowest = _lowest_grade_list()
    return {**list_labels(), name: (f"{lowest} 级", f"grade {lowest}")}


def list_condition(name: str) -> pl.Expr:
    """The profile condition of the list ``name`` (one of ``offered_lists()``)."""
    if name in list_labels():
        return pl.col("lists").list.contains(name)
    lowest_name, lowest = _lowest_grade_list()
    if name == lowest_name:
        return pl.col("grade") == lowest
    raise KeyError(name)


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
#: what the history shows of each kept version
HISTORY_COLUMNS = ("score", "grade", "record_count", "lists", "grade_reasons", "as_of")
#: the canonical fact columns the evidence shows of each linked record
RECORD_FACTS = {
    c: CANONICAL_SCHEMA[c]
    for c in (
        "record_type",
        "event_date",
        "end_date",
        "period",
        "status",
        "category",
        "detail",
        "amount",
        "balance",
        "overdue_days",
        "headcount",
        "authority",
    )
}
_KEYS = {"source": pl.String(), "source_record_id": pl.String()}
#: what a view needs, beyond the columns it shows, to decide and recompute (read when present)
VIEW_INPUTS = ("entity_type", "deductions", "vetoes", "veto_reasons", "provenance")
#: what a role's lists and search filter on, as that role sees it
GATED = ("grade", "score", "lists")


@dataclass(frozen=True)
class Gate:
    """One role's visibility and grade, score and lists for every profile of a version, computed
    once at load by the same ``View.restrict`` that shapes each response."""

    visible: np.ndarray
    columns: pl.DataFrame


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
    if result.status == "resident_id":
        raise CodeError("that is a resident ID number (a natural person's), not a firm's code")
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
    gates: dict[str, Gate] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, lake: Path, version_dir: Path, views: tuple[View, ...] | None = None) -> VersionStore:
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
            names=NameIndex.build(_searchable(profiles["name"])),
            legal_reps=legal_reps,
            gates=_gates(profiles, load_policy().views.values() if views is None else views),
        )
        log.info(
            "loaded version %s: %d profiles in %.1f s",
            store.version,
            profiles.height,
            time.perf_counter() - started,
        )
        return store

    def visible_count(self, view: View) -> int:
        """How many profiles ``view`` may see."""
        gate = self.gates.get(view.role)
        return self.profiles.height if gate is None else int(gate.visible.sum())

    # ------------------------------------------------------------------ lookups
    def find(self, raw_code: str, view: View) -> pl.DataFrame | None:
        """The profile (one row) a code names, if ``view`` may see it."""
        kind, code = normalise_code(raw_code)
        row = self.by_code.get(code)
        gate = self.gates.get(view.role)
        if row is None or (gate is not None and not gate.visible[row]):
            return None
        return self.profiles[row : row + 1]

    def rows(self, rows: list[int] | np.ndarray) -> pl.DataFrame:
        return self.profiles[list(map(int, rows))]

    def search(self, query: str, limit: int, view: View) -> pl.DataFrame:
        gate = self.gates.get(view.role)
        hits = self.names.search(query, limit, allowed=None if gate is None else gate.visible)
        found = self.rows([row for row, _ in hits])
        return found.with_columns(pl.Series("match_score", [round(score, 1) for _, score in hits]))

    def by_legal_rep(self, name: str, limit: int) -> pl.DataFrame:
        rows = self.legal_reps.get(name.strip())
        return self.rows(rows[:limit] if rows is not None else [])

    def listing(
        self,
        name: str,
        division: str | None,
        industry: str | None,
        grade: str | None,
        offset: int,
        size: int,
        view: View,
    ) -> tuple[int, pl.DataFrame]:
        """A page of a list as ``view`` sees it: its grade and list memberships, its firms only."""
        condition = list_condition(name)
        if division:
            condition &= pl.col("division").str.starts_with(division)
        if industry:
            condition &= pl.col("industry").str.contains(industry, literal=True)
        if grade:
            condition &= pl.col("grade") == grade
        seen = self.profiles
        gate = self.gates.get(view.role)
        if gate is not None:  # the role's grade and lists in place of the published ones (no copy)
            seen = seen.with_columns(gate.columns)
            condition &= pl.lit(pl.Series(gate.visible))
        matched = np.flatnonzero(seen.select(condition.fill_null(False)).to_series().to_numpy())
        return len(matched), self.rows(matched[offset : offset + size])

    def evidence(self, entity_id: str) -> pl.DataFrame:
        """Each record linked to the firm: how it was matched, and the fact it records (date, amount,
        authority, number, status, end) from the accepted canonical record of this version's date."""
        links = pl.scan_parquet(self.path / "links" / "*.parquet").filter(pl.col("entity_id") == entity_id)
        links = links.sort("source", "source_record_id").collect()
        return links.join(self._record_facts(links), on=["source", "source_record_id"], how="left")

    def _record_facts(self, links: pl.DataFrame) -> pl.DataFrame:
        """The accepted records behind ``links`` (``RECORD_FACTS`` and ``reference``), read from
        LAKE/accepted/<business date>/<source>.parquet; a source whose snapshot is gone gives none."""
        accepted = self.lake / "accepted" / str(self.manifest.get("business_date"))
        frames = []
        for source, ids in links.group_by("source").agg("source_record_id").iter_rows():
            path = accepted / f"{source}.parquet"
            if not path.is_file():
                continue
            scan = pl.scan_parquet(path)
            present = scan.collect_schema().names()
            frames.append(
                scan.filter(pl.col("source_record_id").is_in(ids))
                .select(
                    "source",
                    "source_record_id",
                    *(
                        (pl.col(c) if c in present else pl.lit(None, dtype)).alias(c)
                        for c, dtype in RECORD_FACTS.items()
                    ),
                )
                .collect()
            )
        facts = pl.concat(frames) if frames else pl.DataFrame(schema={**_KEYS, **RECORD_FACTS})
        return facts.with_columns(reference_expr())

    def history(self, entity_id: str) -> pl.DataFrame:
        """The firm in every published version still kept (oldest first), with what a view needs."""
        out = []
        for version_dir in sorted(
            p
            for p in (self.lake / "published").iterdir()
            if VERSION_NAME.match(p.name) and (p / "profiles").is_dir()
        ):
            try:
                scan = pl.scan_parquet(version_dir / "profiles" / "*.parquet")
                present = scan.collect_schema().names()
                wanted = [c for c in (*HISTORY_COLUMNS, *VIEW_INPUTS) if c in present]
                row = scan.filter(pl.col("entity_id") == entity_id).select(wanted).collect()
            except (OSError, pl.exceptions.PolarsError):  # pruned while we read: skip it
                continue
            if row.height:
                out.append(row.select(pl.lit(version_dir.name).alias("version"), pl.all()))
        return (
            pl.concat(out, how="diagonal_relaxed") if out else pl.DataFrame(schema={"entity_type": pl.String})
        )


def _searchable(names: pl.Series) -> pl.Series:
    """Names as the search index holds them: an ID or phone number a department wrote into a name is
    masked, so a search by the number cannot tell whose it is. Only names holding a run of digits go
    through the masker (a handful per version)."""
    suspect = names.str.contains(r"[0-9０-９]{3}").fill_null(False)
    masked = names.filter(suspect).map_elements(mask_text, return_dtype=pl.String)
    return names.clone().scatter(suspect.arg_true(), masked) if masked.len() else names


def _gates(profiles: pl.DataFrame, views: Any) -> dict[str, Gate]:
    """Per role that removes or recomputes anything: who it may see and the grade, score and lists it sees."""
    gates = {}
    inputs = profiles.select([c for c in (*GATED, *VIEW_INPUTS) if c in profiles.columns])
    for view in views:
        if not view.restricts:
            continue
        seen = view.restrict(inputs)
        visible = inputs.select(view.visible()).to_series().to_numpy()
        gates[view.role] = Gate(visible=visible, columns=seen.select([c for c in GATED if c in seen.columns]))
    return gates
