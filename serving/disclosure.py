"""What each role may see: the one layer every response of the query service passes through.

The policy is declarative, in config/disclosure.toml: the fields a role never sees, whether it gets
personal data masked, and per entity type whether the entity is shown at all and which domains
(groups of sources with their profile fields and lists) are hidden. Everything here is derived
from that file, from the grading rules (config/grading.toml, for recomputing a score and grade
without the hidden records) and from the record types of foundation/schema.py.

Two halves: ``View.restrict`` works on Polars frames (a whole version when the service loads it,
so lists and search see the same grade and membership a lookup shows; a handful of rows per
response otherwise), and ``View.rows``/``View.records`` turn response rows into dicts with the
withheld keys dropped and personal data masked in every text value (``mask_text``).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from foundation.grading import ENTITY_TYPES, NATURAL_PERSON, grading_path, load_grading
from foundation.identifiers import is_id_number_form
from foundation.schema import RECORD_TYPES
from foundation.settings import config_path

POLICY_FILE = "disclosure.toml"
#: the entity types a policy may name (foundation/grading.py ENTITY_TYPES)
KNOWN_ENTITY_TYPES = frozenset(ENTITY_TYPES.values()) | {NATURAL_PERSON, "other"}
#: the key each response row carries: the domains withheld from it (the pages show them as not public)
WITHHELD = "withheld"

# ---------------------------------------------------------------- masking personal data in text
_ALNUM = "0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
_SEP = "[ \\-\u3000\uff0d]?"
_DIGIT = "[0-9\uff10-\uff19]"
#: an ID number as people write it: 15 or 18 digits (the last may be X), single spaces or hyphens
#: between any of them, full-width or not; whether it really is one is decided on its digits
_ID_CANDIDATE = re.compile(
    rf"(?<![{_ALNUM}])[1-8\uff11-\uff18](?:{_SEP}{_DIGIT}){{13,16}}{_SEP}[0-9Xx\uff10-\uff19\uff38\uff58](?![{_ALNUM}])"
)
#: a mainland mobile number, with or without +86 / 0086 / 86, spaces or hyphens between digits
_MOBILE = re.compile(
    rf"(?<![0-9\uff10-\uff19])(?:(?:[+\uff0b]|00)?86{_SEP})?([1\uff11][3-9\uff13-\uff19](?:{_SEP}{_DIGIT}){{9}})(?![0-9\uff10-\uff19])"
)
#: a landline with its area code: 0574-87654321
_LANDLINE = re.compile(r"(?<![0-9])(0\d{2,3})[ \-](\d{7,8})(?![0-9])", re.ASCII)
_STRIP = str.maketrans("", "", " -\u3000\uff0d")


def _compact(text: str) -> str:
    """Digits and X only, half width, upper case."""
    half = "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else c for c in text)
    return half.translate(_STRIP).upper()


def _mask_id(match: re.Match[str]) -> str:
    compact = _compact(match.group(0))
    if not is_id_number_form(compact):
        return match.group(0)
    return compact[:6] + "*" * (len(compact) - 6)


def _mask_mobile(match: re.Match[str]) -> str:
    return _compact(match.group(1))[:3] + "*" * 8


def mask_text(text: str) -> str:
    """Personal data in free text masked: a resident ID (18 or 15 digits, any check character, any
    spacing) keeps its first 6 digits, a mobile number its first 3, a landline its area code."""
    text = _ID_CANDIDATE.sub(_mask_id, text)
    text = _MOBILE.sub(_mask_mobile, text)
    return _LANDLINE.sub(lambda m: m.group(1) + "-" + "*" * len(m.group(2)), text)


def mask_value(value: Any) -> Any:
    """``mask_text`` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- the policy
class PolicyError(ValueError):
    """A disclosure policy that names something that does not exist."""


@dataclass(frozen=True)
class Domain:
    name: str
    sources: tuple[str, ...]
    fields: tuple[str, ...]  # profile field names or fnmatch patterns
    lists: tuple[str, ...]

    def matches(self, column: str) -> bool:
        return any(fnmatch.fnmatchcase(column, pattern) for pattern in self.fields)


def _rule_sources(rule: dict[str, Any]) -> set[str]:
    """The sources whose record types a grading rule's condition names."""
    named = set(re.findall(r"'([a-z_]+)'", rule.get("when", "")))
    return {RECORD_TYPES[t][0] for t in named if t in RECORD_TYPES}


@dataclass(frozen=True)
class View:
    """One role's view of profiles and records."""

    role: str
    hidden_fields: frozenset[str]
    mask: bool
    unseen_types: frozenset[str]
    hidden: dict[str, tuple[Domain, ...]]  # entity type -> its hidden domains
    across_domains: tuple[str, ...]
    grading: dict[str, Any] = field(repr=False)
    firm_codes: frozenset[str] = frozenset()

    @property
    def restricts(self) -> bool:
        """Whether this view removes rows or recomputes anything (else rows pass unchanged)."""
        return bool(self.unseen_types or self.hidden)

    # ------------------------------------------------------------ frames
    def visible(self) -> pl.Expr:
        """The rows this role may see at all (by entity type)."""
        return ~pl.col("entity_type").is_in(sorted(self.unseen_types)).fill_null(False)

    def profiles(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Profiles (any subset of columns with ``entity_type``) as this role sees them."""
        if "entity_type" not in frame.columns:
            raise PolicyError("the public view needs each profile's entity_type to decide what to show")
        present = set(frame["entity_type"].unique().to_list())
        if self.unseen_types & present:
            frame = frame.filter(self.visible())
        if not present & set(self.hidden):  # nothing to withhold: skip building the expressions (~2 ms)
            return frame.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias(WITHHELD))
        return self.restrict(frame, present)

    def restrict(self, frame: pl.DataFrame, types: set[str] | None = None) -> pl.DataFrame:
        """Hidden-domain content withheld, score and grade recomputed, ``withheld`` added (no row
        removed); ``types``, when given, are the only entity types the frame holds."""
        empty = pl.lit([], dtype=pl.List(pl.String))
        hidden = {t: d for t, d in self.hidden.items() if types is None or t in types}
        if not hidden or "entity_type" not in frame.columns:
            return frame.with_columns(empty.alias(WITHHELD))
        columns = frame.columns
        withheld: pl.Expr = empty
        for entity_type, domains in hidden.items():
            names = pl.lit([d.name for d in domains], dtype=pl.List(pl.String))
            withheld = pl.when(pl.col("entity_type") == entity_type).then(names).otherwise(withheld)
        frame = frame.with_columns(withheld.alias(WITHHELD))
        hidden_row = pl.col(WITHHELD).list.len() > 0

        def per_type(column: str, keep: Any) -> pl.Expr:
            """``column`` with, for each entity type, only the elements ``keep(domains)`` accepts."""
            out = pl.col(column)
            for entity_type, domains in hidden.items():
                kept = pl.col(column).list.eval(pl.element().filter(keep(domains)))
                out = pl.when(pl.col("entity_type") == entity_type).then(kept).otherwise(out)
            return out.alias(column)

        def by_source(domains: tuple[Domain, ...]) -> pl.Expr:
            sources = sorted({s for d in domains for s in d.sources})
            return ~pl.element().struct.field("source").is_in(sources)

        def by_reason(domains: tuple[Domain, ...]) -> pl.Expr:
            return ~pl.element().str.contains(self._reason_pattern(domains))

        def by_list(domains: tuple[Domain, ...]) -> pl.Expr:
            return ~pl.element().is_in(sorted({name for d in domains for name in d.lists}))

        filtered: list[pl.Expr] = []
        for column in ("deductions", "vetoes", "provenance"):
            if column in columns:
                filtered.append(per_type(column, by_source))
        for column in ("grade_reasons", "veto_reasons"):
            if column in columns:
                filtered.append(per_type(column, by_reason))
        if "lists" in columns:
            filtered.append(per_type("lists", by_list))
        all_hidden = {d.name: d for domains in hidden.values() for d in domains}
        for column in columns:
            in_domains = [name for name, d in all_hidden.items() if d.matches(column)]
            if in_domains:
                hide = pl.any_horizontal([pl.col(WITHHELD).list.contains(name) for name in in_domains])
                filtered.append(pl.when(hide).then(None).otherwise(pl.col(column)).alias(column))
            elif any(fnmatch.fnmatchcase(column, p) for p in self.across_domains):
                filtered.append(pl.when(hidden_row).then(None).otherwise(pl.col(column)).alias(column))
        frame = frame.with_columns(filtered)
        return frame.with_columns(self._recounted(frame.schema, hidden_row))

    def _recounted(self, schema: pl.Schema, hidden_row: pl.Expr) -> list[pl.Expr]:
        """Score, grade and record counts from what is left visible, for rows with hidden domains."""
        out = []
        base = int(self.grading.get("base_score", 1000))
        if "score" in schema:
            if "deductions" in schema:
                points = pl.col("deductions").list.eval(pl.element().struct.field("points")).list.sum()
                score = (pl.lit(base) - points.fill_null(0)).clip(0, base)
            else:  # no itemised deductions to recompute from: withheld rather than guessed
                score = pl.lit(None)
            visible_score = pl.when(hidden_row).then(score).otherwise(pl.col("score"))
            out.append(visible_score.cast(schema["score"]).alias("score"))
            if "grade" in schema:
                if "vetoes" in schema:
                    vetoed = pl.col("vetoes").list.len() > 0
                elif "veto_reasons" in schema:
                    vetoed = pl.col("veto_reasons").list.len() > 0
                else:
                    vetoed = pl.lit(False)
                bands = sorted(self.grading["grades"], key=lambda g: -g["min_score"])
                band: pl.Expr = pl.lit(None, dtype=pl.String)
                for entry in reversed(bands):
                    band = pl.when(score >= entry["min_score"]).then(pl.lit(entry["grade"])).otherwise(band)
                graded = pl.when(score.is_null()).then(None).when(vetoed).then(pl.lit("D")).otherwise(band)
                out.append(pl.when(hidden_row).then(graded).otherwise(pl.col("grade")).alias("grade"))
        if "provenance" in schema:
            records = pl.col("provenance").list.eval(pl.element().struct.field("records")).list.sum()
            counts = {"record_count": records, "source_count": pl.col("provenance").list.len()}
            for column, value in counts.items():
                if column in schema:
                    recounted = pl.when(hidden_row).then(value).otherwise(pl.col(column))
                    out.append(recounted.cast(schema[column]).alias(column))
        return out

    def _reason_pattern(self, domains: tuple[Domain, ...]) -> str:
        """Text of a grade or veto reason caused by a hidden domain: it names a hidden source's
        record ("lending:L…") or is the reason of a grading rule about a hidden source's records."""
        sources = {s for d in domains for s in d.sources}
        reasons = [
            rule["reason"]
            for rule in self.grading.get("rules", []) + self.grading.get("vetoes", [])
            if _rule_sources(rule) & sources and rule.get("reason")
        ]
        named = r"(?:^|[^A-Za-z0-9_])(?:" + "|".join(map(re.escape, sorted(sources))) + "):"
        return "|".join([named, *map(re.escape, reasons)])

    # ------------------------------------------------------------ response rows
    def rows(self, frame: pl.DataFrame, fields: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Response rows: the view applied, withheld keys dropped, personal data masked.

        ``fields`` projects each row afterwards (search hits and list rows show a summary)."""
        shown = self.profiles(frame)
        dropped: dict[tuple[str, ...], frozenset[str]] = {}
        out = []
        for row in shown.to_dicts():
            withheld = tuple(row[WITHHELD])
            if withheld not in dropped:
                dropped[withheld] = self._withheld_keys(row.keys(), withheld)
            keep = dropped[withheld]
            keys = [*(fields or row.keys()), WITHHELD] if fields else row.keys()
            picked = {k: row[k] for k in dict.fromkeys(keys) if k in row and k not in keep}
            out.append(self._masked(picked))
        return out

    def _masked(self, row: dict[str, Any]) -> dict[str, Any]:
        if not self.mask:
            return row
        return {k: v if k in self.firm_codes else mask_value(v) for k, v in row.items()}

    def _withheld_keys(self, keys: Any, withheld: tuple[str, ...]) -> frozenset[str]:
        domains = [d for domains in self.hidden.values() for d in domains if d.name in withheld]
        gone = {k for k in keys if any(d.matches(k) for d in domains)}
        if withheld:
            gone |= {k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in self.across_domains)}
        return frozenset(gone | self.hidden_fields)

    def records(self, records: pl.DataFrame, entity_type: str | None) -> list[dict[str, Any]]:
        """Linked records of one entity (evidence) as this role sees them."""
        if entity_type in self.unseen_types:
            return []
        hidden_sources = sorted({s for d in self.hidden.get(entity_type or "", ()) for s in d.sources})
        if hidden_sources:
            records = records.filter(~pl.col("source").is_in(hidden_sources))
        rows = [{k: v for k, v in row.items() if k not in self.hidden_fields} for row in records.to_dicts()]
        return mask_value(rows) if self.mask else rows

    def text(self, text: str) -> str:
        return mask_text(text) if self.mask else text

    def value(self, value: Any) -> Any:
        """Any other response content (run summaries, messages) with personal data masked for this role."""
        return mask_value(value) if self.mask else value

    def describe(self) -> str:
        """One sentence on what this role does not see (for the API description)."""
        parts = []
        if self.hidden_fields:
            parts.append("no " + ", ".join(sorted(self.hidden_fields)))
        if self.mask:
            parts.append("ID numbers cut to their first 6 digits and phone numbers masked")
        for entity_type in sorted(self.unseen_types):
            parts.append(f"no entity of type '{entity_type}' at all")
        for entity_type, domains in sorted(self.hidden.items()):
            names = ", ".join(d.name for d in domains)
            parts.append(
                f"for entity type '{entity_type}': no {names} (score and grade recomputed without it)"
            )
        return f"The {self.role} role sees " + ("; ".join(parts) if parts else "everything") + "."


@dataclass(frozen=True)
class Policy:
    """Every role's view, from config/disclosure.toml."""

    views: dict[str, View]
    path: Path

    def view(self, role: str) -> View:
        try:
            return self.views[role]
        except KeyError:
            raise PolicyError(f"{self.path}: no disclosure policy for role '{role}'") from None

    def describe(self) -> str:
        return " ".join(view.describe() for view in self.views.values())


def load_policy(path: Path | None = None, grading: Path | None = None) -> Policy:
    """The policy at ``path``, else ``CREDIT_DISCLOSURE_CONFIG``, else config/disclosure.toml; checked
    against the grading at ``grading``, else the one the settings name (both resolved at call time)."""
    return _load_policy(Path(path or config_path(POLICY_FILE)), Path(grading) if grading else grading_path())


@cache
def _load_policy(path: Path, grading: Path) -> Policy:
    """Read and check the policy: every domain, field list, entity type and role it names must exist."""
    from serving.tokens import ROLES

    raw = tomllib.loads(Path(path).read_text("utf-8"))
    rules = load_grading(grading)
    domains: dict[str, Domain] = {}
    for name, spec in raw.get("domains", {}).items():
        if not spec.get("sources"):
            raise PolicyError(f"{path}: domain '{name}' names no sources")
        domains[name] = Domain(
            name, tuple(spec["sources"]), tuple(spec.get("fields", ())), tuple(spec.get("lists", ()))
        )
    across = tuple(raw.get("across_domains", {}).get("fields", ()))
    views = {}
    for role, spec in raw.get("roles", {}).items():
        if role not in ROLES:
            raise PolicyError(f"{path}: role '{role}' is not one of {ROLES}")
        unseen, hidden = set(), {}
        for entity_type, rule in spec.get("entity_types", {}).items():
            if entity_type not in KNOWN_ENTITY_TYPES:
                raise PolicyError(
                    f"{path}: role '{role}': unknown entity type '{entity_type}' "
                    f"(known: {', '.join(sorted(KNOWN_ENTITY_TYPES))})"
                )
            if not rule.get("shown", True):
                unseen.add(entity_type)
            names = rule.get("hidden_domains", [])
            unknown = [n for n in names if n not in domains]
            if unknown:
                raise PolicyError(f"{path}: role '{role}', {entity_type}: unknown domain(s) {unknown}")
            if names:
                hidden[entity_type] = tuple(domains[n] for n in names)
        views[role] = View(
            role=role,
            hidden_fields=frozenset(spec.get("hidden_fields", ())),
            mask=bool(spec.get("mask_personal_data", True)),
            unseen_types=frozenset(unseen),
            hidden=hidden,
            across_domains=across,
            grading=rules,
            firm_codes=frozenset(raw.get("masking", {}).get("firm_code_fields", ())),
        )
    missing = [r for r in ROLES if r not in views]
    if missing:
        raise PolicyError(f"{path}: no policy for role(s) {missing}")
    return Policy(views, Path(path))
