"""The canonical record schema every source is standardised to.

One schema for all six sources keeps validation, resolution and profile building generic: the
identity part (who the record is about) is the same everywhere, and the fact part uses a small
set of typed slots whose meaning depends on ``record_type`` (see ``RECORD_TYPES``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

import polars as pl

#: record_type -> (source, what the fact slots mean)
RECORD_TYPES: dict[str, tuple[str, str]] = {
    "loan": (
        "lending",
        "amount=loan amount, balance, overdue_days, overdue_amount, status=five-class, category=loan type, end_date=due date",
    ),
    "tax_rating": ("tax", "status=rating A/B/M/C/D, score=rating score, period=rating year"),
    "tax_arrears": ("tax", "balance=arrears balance, category=tax type"),
    "tax_major_violation": ("tax", "category=case nature, detail=facts, event_date=listing date"),
    "dishonest_debtor": (
        "contract",
        "amount=unperformed amount, status=performance, detail=case number, category=court, event_date=publication date",
    ),
    "enforcement": (
        "contract",
        "amount=unperformed amount, status=performance, detail=case number, category=court, event_date=publication date",
    ),
    "contract_default": (
        "contract",
        "amount=unperformed amount, status=performance, detail=case number, category=reporter, event_date=publication date",
    ),
    "spot_check": (
        "product_quality",
        "status=合格/不合格/拒检, category=plan level, detail=failed items, flag=recalled",
    ),
    "si_contribution": (
        "social_insurance",
        "headcount=insured (pension), amount=amount due, balance=arrears, overdue_days=months in arrears, period=YYYYMM",
    ),
    "penalty": (
        "violations",
        "category=penalty category, amount=fine in 元, end_date=publicity end, detail=violation type",
    ),
    "abnormal_operation": ("violations", "event_date=listing date, end_date=publicity end"),
    "serious_dishonesty": ("violations", "event_date=listing date, end_date=publicity end"),
}

CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    # provenance
    "source": pl.String(),
    "source_record_id": pl.String(),
    "record_type": pl.String(),
    "updated_at": pl.Datetime("us"),
    # identity, as the department holds it and as repaired
    "subject_name": pl.String(),
    "code_raw": pl.String(),
    "uscc": pl.String(),  # valid (possibly repaired) USCC, else null
    "org_code": pl.String(),  # valid organization code (from the USCC or given), else null
    "reg_no": pl.String(),  # valid 15-digit registration number, else null
    "code_status": pl.String(),  # see identifiers.CODE_STATUSES
    "legal_rep": pl.String(),
    # facts
    "event_date": pl.Date(),
    "end_date": pl.Date(),
    "period": pl.String(),
    "status": pl.String(),
    "category": pl.String(),
    "detail": pl.String(),
    "amount": pl.Float64(),
    "balance": pl.Float64(),
    "overdue_amount": pl.Float64(),
    "overdue_days": pl.Int64(),
    "headcount": pl.Int64(),
    "score": pl.Float64(),
    "flag": pl.Boolean(),
    # who decided or reported the fact: lender, court, testing body, penalty authority (else null)
    "authority": pl.String(),
    # fields whose source value could not be read as the canonical type ("amount='12,3x'; ...")
    "parse_errors": pl.String(),
}

CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL_SCHEMA)

#: the range of every number column, in canonical units (元, days, persons): a value outside it is
#: quarantined by the standardised suites, which derive their range checks from here. A source
#: narrows or widens a column in config/sources.toml (``[sources.<name>.ranges] score = [0, 100]``);
#: a bound left out is open. Ten trillion 元 is beyond any single record.
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "amount": (0, 1e13),
    "balance": (0, 1e13),
    "overdue_amount": (0, 1e13),
    "overdue_days": (0, 36_600),
    "headcount": (0, 10_000_000),
    "score": (0, 1e9),
}
#: the dates a record may carry: outside them a date is a typo or a placeholder (0001-01-01,
#: 9999-12-31) and standardisation reports it as unreadable
DATE_RANGE: tuple[date, date] = (date(1900, 1, 1), date(2199, 12, 31))

#: a number as departments write it, as text: optional sign, digits (ASCII or full-width 全角)
#: either plain or with thousands separators in groups of three, optional decimals and exponent.
#: ``1,5`` is not a number (a decimal comma? fifteen?) and neither are ``NaN`` or ``inf``.
#: Standardisation reads numbers with it and the raw suites check type drift with it.
_DIGIT, _SIGN, _POINT, _GROUP, _EXP = "[0-9０-９]", "[+\\-＋－]", "[.．]", "[,，]", "[eEｅＥ]"
NUMBER_TEXT = (
    rf"^\s*{_SIGN}?(?:(?:{_DIGIT}{{1,3}}(?:{_GROUP}{_DIGIT}{{3}})+|{_DIGIT}+)(?:{_POINT}{_DIGIT}*)?"
    rf"|{_POINT}{_DIGIT}+)(?:{_EXP}{_SIGN}?{_DIGIT}+)?\s*$"
)
#: full-width characters of NUMBER_TEXT and their ASCII reading
FULL_WIDTH_NUMBER = dict(zip("０１２３４５６７８９．＋－ｅＥ", "0123456789.+-eE", strict=True))
NUMBER_GROUP_SEPARATORS = (",", "，")


def number_ranges(
    columns: Iterable[str], overrides: dict[str, Any] | None = None, source: str = ""
) -> dict[str, tuple[float | None, float | None]]:
    """The range of each of ``columns`` that is a number: the source's own (``overrides``, from its
    ``ranges`` table) where given, else NUMBER_RANGES."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(NUMBER_RANGES))
    if unknown:
        raise ValueError(f"source '{source}': ranges given for {unknown}, which are not number columns")
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for column in columns:
        if column not in NUMBER_RANGES:
            continue
        given = overrides.get(column, NUMBER_RANGES[column])
        if not isinstance(given, list | tuple) or len(given) != 2:
            raise ValueError(f"source '{source}': the range of '{column}' must be [low, high], not {given!r}")
        low, high = (None if bound is None or bound == "" else float(bound) for bound in given)
        if low is not None and high is not None and low > high:
            raise ValueError(f"source '{source}': the range of '{column}' is empty ({low} > {high})")
        ranges[column] = (low, high)
    return ranges


LINK_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "source_record_id": pl.String(),
    "entity_id": pl.String(),
    "match_confidence": pl.Float64(),
    "match_method": pl.String(),
    # evidence, from the records and the engine's comparisons (entity_resolution/pipeline.py)
    "recorded_name": pl.String(),
    "recorded_code": pl.String(),
    "match_grade": pl.String(),  # one letter per comparison of the resolution spec
}


def conform(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add missing canonical columns as nulls, cast and order them."""
    present = set(frame.collect_schema().names())
    return frame.select(
        [
            (pl.col(name) if name in present else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in CANONICAL_SCHEMA.items()
        ]
    )
