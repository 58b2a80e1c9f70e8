"""Response models of the query API, for its OpenAPI description (``/openapi.json``, ``/docs``).

The handlers still answer with msgspec-encoded bytes (``serving.app.FastJSON``); these models only
document what those bytes hold. Nothing is restated here: a profile's fields and types come from
the code that builds profiles (``pipelines.profiles.build.build_profiles`` run on empty inputs, so a new
column or list flag in config/grading.toml shows up by itself), the evidence fields from
``foundation.schema.LINK_SCHEMA``, the summary and history fields from ``serving.store``, and which
fields a caller may not get from the disclosure policy (config/disclosure.toml): every field some
role's view can withhold is optional, so the public role's masked view is a valid instance too.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from functools import cache
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, create_model

from foundation.schema import CANONICAL_SCHEMA, LINK_SCHEMA
from pipelines.profiles.build import build_profiles
from serving.disclosure import WITHHELD, Policy
from serving.store import HISTORY_COLUMNS, SUMMARY_COLUMNS

#: the columns of resolution's entity table that build_profiles reads
_ENTITY_INPUT = {
    "entity_id": pl.String(),
    "uscc": pl.String(),
    "org_code": pl.String(),
    "reg_no": pl.String(),
    "name": pl.String(),
    "former_names": pl.List(pl.String()),
}
#: fields every visible profile row has, whatever the role (the row's identity)
_ALWAYS = ("entity_id", "entity_type")


@cache
def profile_schema() -> pl.Schema:
    """The published profile's columns and types, from the code that builds them."""
    empty = build_profiles(
        pl.LazyFrame(schema=CANONICAL_SCHEMA),
        pl.LazyFrame(schema=LINK_SCHEMA),
        pl.LazyFrame(schema=_ENTITY_INPUT),
        dt.date(2000, 1, 1),
    )
    return empty.schema


def _python_type(dtype: pl.DataType, name: str) -> Any:
    """The JSON-schema-bearing Python type of a Polars type (structs become nested models)."""
    if dtype.is_integer():
        return int
    if dtype.is_float():
        return float
    if isinstance(dtype, pl.Decimal):
        return Decimal  # money: sent as a JSON number with its exact digits
    if dtype == pl.Boolean:
        return bool
    if dtype == pl.Date:
        return dt.date
    if dtype == pl.Datetime:
        return dt.datetime
    if isinstance(dtype, pl.List):
        return list[_python_type(dtype.inner, name)]  # type: ignore[misc]
    if isinstance(dtype, pl.Struct):
        fields = {f.name: (_python_type(f.dtype, f.name) | None, None) for f in dtype.fields}
        return create_model(name.title().replace("_", ""), **fields)  # type: ignore[call-overload]
    return str


def withholdable(policy: Policy) -> frozenset[str]:
    """Profile fields some role's view may drop from a response, so they cannot be required: asked of
    each view itself, with every domain it may withhold withheld."""
    columns = profile_schema().names()
    out: set[str] = set()
    for view in policy.views.values():
        every_hidden = tuple(dict.fromkeys(d.name for hidden in view.hidden.values() for d in hidden))
        out |= view._withheld_keys(columns, every_hidden)  # noqa: SLF001 - the view's own rule
    return frozenset(out)


def _row_model(name: str, columns: tuple[str, ...], optional: frozenset[str], doc: str) -> type[BaseModel]:
    """A model of response rows holding ``columns`` of the profile (plus ``withheld``)."""
    schema = profile_schema()
    fields: dict[str, Any] = {}
    for column in columns:
        kind = _python_type(schema[column], column) if column in schema else str
        if column in _ALWAYS and column not in optional:
            fields[column] = (kind, ...)
        else:  # null in the data, or withheld from some role
            fields[column] = (kind | None, None)
    fields[WITHHELD] = (
        list[str],
        Field(default_factory=list, description="domains withheld from this row for the caller's role"),
    )
    model = create_model(name, __config__=ConfigDict(extra="allow"), **fields)  # type: ignore[call-overload]
    model.__doc__ = doc
    return model


class ApiModels:
    """Every response model of the API, built once per disclosure policy."""

    def __init__(self, policy: Policy) -> None:
        optional = withholdable(policy)
        columns = tuple(profile_schema().names())
        self.profile_row = _row_model(
            "Profile", columns, optional, "A firm's unified credit profile as the caller's role may see it."
        )
        self.summary_row = _row_model(
            "FirmSummary", SUMMARY_COLUMNS, optional, "What a list row or search hit shows of a firm."
        )
        self.search_hit = create_model(
            "SearchHit",
            __base__=self.summary_row,
            match_score=(float, Field(ge=0, le=100, description="name similarity, 0-100")),
        )
        self.history_row = create_model(
            "HistoryEntry",
            __base__=_row_model("HistoryFields", HISTORY_COLUMNS, optional, "The firm in one kept version."),
            version=(str, ...),
        )
        link_fields = {c: (_python_type(t, c) | None, None) for c, t in LINK_SCHEMA.items()}
        self.evidence_record = create_model("EvidenceRecord", **link_fields)  # type: ignore[call-overload]

        self.version = create_model(
            "VersionInfo",
            version=(str, ...),
            business_date=(str | None, None),
            counts=(dict[str, int] | None, None),
            profiles=(int, Field(description="profiles the caller's role may see")),
        )
        self.profile = create_model("ProfileResponse", version=(str, ...), profile=(self.profile_row, ...))
        self.evidence = create_model(
            "EvidenceResponse",
            version=(str, ...),
            entity_id=(str, ...),
            records=(list[self.evidence_record], ...),  # type: ignore[name-defined]
        )
        self.history = create_model(
            "HistoryResponse",
            entity_id=(str, ...),
            versions=(list[self.history_row], ...),  # type: ignore[name-defined]
        )
        self.search = create_model(
            "SearchResponse",
            version=(str, ...),
            query=(str, Field(description="the query as understood, personal data masked")),
            hits=(list[self.search_hit], ...),  # type: ignore[name-defined]
        )
        self.legal_rep = create_model(
            "LegalRepresentativeResponse",
            version=(str, ...),
            hits=(list[self.summary_row], ...),  # type: ignore[name-defined]
        )
        self.listing = create_model(
            "ListPage",
            version=(str, ...),
            list=(str, ...),
            total=(int, ...),
            page=(int, ...),
            size=(int, ...),
            firms=(list[self.summary_row], ...),  # type: ignore[name-defined]
        )


class ListEntry(BaseModel):
    name: str
    label: str
    label_en: str


class ListCatalogue(BaseModel):
    """The lists and grades one can filter by (from config/grading.toml)."""

    lists: list[ListEntry]
    grades: list[str]


class SourceCounts(BaseModel):
    """One source's reconciliation in a nightly run (LAKE/reports/<date>/summary.json)."""

    extracted: int | None = None
    accepted: int | None = None
    quarantined: int | None = None
    snapshot_records: int | None = None
    stale: bool | None = None
    problems: list[str] | None = None


#: what a run summary shows of each source: the fields of ``SourceCounts``
SOURCE_COUNT_FIELDS = tuple(SourceCounts.model_fields)


class RunSummary(BaseModel):
    business_date: str | None = None
    published: bool | None = None
    version: str | None = None
    run_id: str | None = None
    books_balanced: bool | None = None
    sources: dict[str, SourceCounts]


class RunsResponse(BaseModel):
    serving: str = Field(description="the version being served")
    runs: list[RunSummary]


class ApiError(BaseModel):
    """Every refusal: what is wrong (personal data masked) and the HTTP status."""

    error: str
    status: int
