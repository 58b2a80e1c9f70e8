"""Build one credit profile per resolved firm from the accepted records and their links.

Every figure is an aggregation over canonical records, so the totals reconcile with what
validation accepted; the grade comes from the declarative rules in config/grading.toml.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from foundation.divisions import divisions
from foundation.grading import (
    ENTITY_TYPES,
    NATURAL_PERSON,
    check_grading,
    load_grading,
    profile_columns,
)
from foundation.settings import config_path

INDUSTRIES_FILE = "industries.toml"
FIVE_CLASS = ("正常", "关注", "次级", "可疑", "损失")
CONTENT_KEY = ("source", "record_type", "event_date", "period", "status", "category", "amount", "balance")


def _natural_person(entities: pl.LazyFrame) -> pl.Expr:
    """Resolution's flag for a subject identified by a resident ID (False for entity tables without it)."""
    present = "natural_person" in entities.collect_schema().names()
    return (pl.col("natural_person") if present else pl.lit(False)).alias("natural_person")


def industries_path() -> Path:
    """config/industries.toml, or CREDIT_INDUSTRIES_CONFIG's file (resolved at call time)."""
    return config_path(INDUSTRIES_FILE)


def load_industries(path: Path | None = None) -> dict[str, str]:
    """keyword -> GB/T 4754 section, from ``path``, else the industries file the settings name now."""
    return _load_industries(Path(path) if path else industries_path())


@cache
def _load_industries(path: Path) -> dict[str, str]:
    sections = tomllib.loads(Path(path).read_text("utf-8")).get("sections", {})
    return {word: section for section, words in sections.items() for word in words}


def industry_expr(name: pl.Expr, keywords: dict[str, str] | None = None) -> pl.Expr:
    """The industry section named by the first (longest) industry keyword in a firm's name."""
    keywords = keywords or load_industries()
    pattern = "(" + "|".join(sorted(map(re.escape, keywords), key=len, reverse=True)) + ")"
    return name.str.extract(pattern, 1).replace_strict(keywords, default=None, return_dtype=pl.String)


#: one entry of a profile's `deductions` and of its `vetoes` (the public view recomputes from these)
DEDUCTION = pl.Struct(
    {
        "rule": pl.String,
        "source": pl.String,
        "points": pl.Int64,
        "records": pl.List(pl.String),
        "until": pl.Date,
        "reason": pl.String,
    }
)
VETO = pl.Struct(
    {
        "list": pl.String,
        "source": pl.String,
        "records": pl.List(pl.String),
        "until": pl.Date,
        "reason": pl.String,
    }
)
#: the grading columns a firm without any list, deduction or veto gets, and their empty values
_EMPTY = {
    "deductions": pl.lit([], dtype=pl.List(DEDUCTION)),
    "vetoes": pl.lit([], dtype=pl.List(VETO)),
    "grade_reasons": pl.lit([], dtype=pl.List(pl.String)),
    "veto_reasons": pl.lit([], dtype=pl.List(pl.String)),
    "lists": pl.lit([], dtype=pl.List(pl.String)),
}


def _period_start() -> pl.Expr:
    """The first day of a 'YYYY' or 'YYYYMM' period (a rating year, a contribution month), else null.

    The start, not the end: this month's contribution record already exists and already counts.
    """
    period = pl.col("period")
    padded = pl.when(period.str.len_chars() == 4).then(period + "0101").otherwise(period + "01")
    return padded.str.to_date("%Y%m%d", strict=False)


def _dated_text() -> pl.Expr:
    """How a reason shows a record's date: the date, else its rating year or month, else its update."""
    period = pl.col("period")
    return (
        pl.when(pl.col("event_date").is_not_null())
        .then(pl.col("event_date").dt.to_string("%Y-%m-%d"))
        .when(_period_start().is_not_null() & (period.str.len_chars() == 4))
        .then(pl.lit("year ") + period)
        .when(_period_start().is_not_null())
        .then(pl.lit("period ") + period.str.slice(0, 4) + "-" + period.str.slice(4, 2))
        .otherwise(pl.lit("updated ") + pl.col("updated_at").dt.date().dt.to_string("%Y-%m-%d"))
    )


def with_record_dates(records: pl.LazyFrame) -> pl.LazyFrame:
    """Add each record's date (``_date``) and whether it is its firm's latest of its type (``_latest``).

    Lists, deductions and panels all read these two columns, so a rating the tax panel shows as
    the latest is the one a rating rule deducts for, and no older one.
    """
    dated = records.with_columns(
        _date=pl.coalesce(pl.col("event_date"), _period_start(), pl.col("updated_at").dt.date())
    )
    newest = (
        pl.col("source_record_id")
        .sort_by("_date", "updated_at", "source_record_id")
        .last()
        .over("entity_id", "record_type")
    )
    return dated.with_columns(_latest=pl.col("source_record_id") == newest)


def _entries(grading: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, entry) for every list, then every rule, in the file's order (the display order)."""
    return [("list", e) for e in grading.get("lists", [])] + [("rule", e) for e in grading.get("rules", [])]


def _membership_windows(records: pl.LazyFrame, grading: dict[str, Any]) -> pl.LazyFrame:
    """Every (firm, list or rule, record) with the days it counts, from ``_date`` to ``until``:
    the one place this is decided (``memberships`` picks a day, ``valid_until`` the next change).

    ``records`` come from ``with_record_dates``. A record counts from its date until its own end
    date (``expires_at_end_date``) or ``expires_after_days`` later, unless ``removed_when`` holds or
    (``latest_only``) a newer record of its type replaced it.
    """
    frames = []
    for order, (kind, entry) in enumerate(_entries(grading)):
        until = pl.col("_date") + pl.duration(days=int(entry.get("expires_after_days", 365)))
        if entry.get("expires_at_end_date"):
            until = pl.coalesce(pl.col("end_date"), until)
        condition = pl.sql_expr(entry["when"]).fill_null(False)
        if entry.get("removed_when"):
            condition &= ~pl.sql_expr(entry["removed_when"]).fill_null(False)
        if entry.get("latest_only"):
            condition &= pl.col("_latest")
        label = f"on the {entry['label_en']} ({entry['label']})" if kind == "list" else entry["reason"]
        points = int(entry.get("points", 0))
        frames.append(
            records.filter(condition).select(
                "entity_id",
                pl.lit(entry["id"]).alias("id"),
                pl.lit(order, dtype=pl.Int32).alias("order"),
                pl.lit(kind == "list").alias("is_list"),
                pl.lit(bool(entry.get("veto", False))).alias("veto"),
                pl.lit(points, dtype=pl.Int64).alias("points"),
                pl.lit(int(entry.get("max_points", points)), dtype=pl.Int64).alias("max_points"),
                pl.lit(label).alias("label"),
                "source",
                (pl.col("source") + ":" + pl.col("source_record_id")).alias("record"),
                (pl.lit("listed " if kind == "list" else "") + _dated_text()).alias("dated"),
                "_date",
                until.alias("until"),
            )
        )
    schema = {
        "entity_id": pl.String,
        "id": pl.String,
        "order": pl.Int32,
        "is_list": pl.Boolean,
        "veto": pl.Boolean,
        "points": pl.Int64,
        "max_points": pl.Int64,
        "label": pl.String,
        "source": pl.String,
        "record": pl.String,
        "dated": pl.String,
        "_date": pl.Date,
        "until": pl.Date,
    }
    return pl.concat(frames) if frames else pl.LazyFrame(schema=schema)


def memberships(records: pl.LazyFrame, as_of: date, grading: dict[str, Any]) -> pl.LazyFrame:
    """Every (firm, list or rule, record) in force on ``as_of`` (``_membership_windows``)."""
    windows = _membership_windows(records, grading)
    return windows.filter((pl.col("_date") <= as_of) & (pl.col("until") >= as_of)).drop("_date")


def grade(records: pl.LazyFrame, as_of: date, grading: dict[str, Any]) -> pl.LazyFrame:
    """Per firm, everything the grade rests on, derived from ``memberships`` alone.

    ``deductions`` and ``vetoes`` (structured, one entry per rule or list), their display texts
    ``grade_reasons`` and ``veto_reasons`` (every one, each naming its records, their dates and
    until when they count), ``lists``, the list flags and rule counts, and the score:
    ``base_score - sum(deductions.points)``, floored at 0.
    """
    until_text = pl.col("until").dt.to_string("%Y-%m-%d")
    per_entry = (
        memberships(records, as_of, grading)
        .group_by("entity_id", "id")
        .agg(
            pl.col("order", "is_list", "veto", "label", "max_points").first(),
            pl.col("source").unique().sort().str.join(","),
            pl.col("points").sum().alias("raw_points"),
            pl.col("record").sort().alias("records"),
            # a list's reason says until when once; a rule's records each count until their own day
            pl.concat_str(
                "record",
                pl.lit(" ("),
                "dated",
                pl.when("is_list").then(pl.lit("")).otherwise(pl.lit(", until ") + until_text),
                pl.lit(")"),
            )
            .sort_by("record")
            .str.join("; ")
            .alias("details"),
            pl.col("until").max(),
            pl.len().alias("in_force"),
        )
        .with_columns(points=pl.min_horizontal("raw_points", "max_points"))
        .with_columns(
            reason=pl.concat_str(
                "label",
                pl.when(pl.col("points") > 0)
                .then(pl.lit(" (-") + pl.col("points").cast(pl.String) + ")")
                .otherwise(pl.lit("")),
                pl.when("is_list").then(pl.lit(" until ") + until_text).otherwise(pl.lit("")),
                pl.lit(": "),
                "details",
            )
        )
        # within a firm: the largest deduction first, ties in the file's order
        .sort("entity_id", "points", "order", descending=[False, True, False])
    )
    deducts, vetoes, listed = pl.col("points") > 0, pl.col("veto"), pl.col("is_list")
    counts = [
        pl.col("in_force").filter(pl.col("id") == entry["id"]).sum().alias(entry["count"])
        for entry in grading.get("rules", [])
        if "count" in entry
    ]
    per_firm = per_entry.group_by("entity_id").agg(
        pl.struct(pl.col("id").alias("rule"), "source", "points", "records", "until", "reason")
        .filter(deducts)
        .alias("deductions"),
        pl.struct(pl.col("id").alias("list"), "source", "records", "until", "reason")
        .filter(vetoes)
        .sort_by(pl.col("order").filter(vetoes))
        .alias("vetoes"),
        pl.col("reason").filter(deducts).alias("grade_reasons"),
        pl.col("reason").filter(vetoes).sort_by(pl.col("order").filter(vetoes)).alias("veto_reasons"),
        pl.col("id").filter(listed).sort_by(pl.col("order").filter(listed)).alias("lists"),
        pl.col("points").filter(deducts).sum().alias("deducted"),
        *counts,
    )
    base = int(grading.get("base_score", 1000))
    flags = [
        pl.col("lists").list.contains(entry["id"]).alias(entry["flag"])
        for entry in grading.get("lists", [])
        if "flag" in entry
    ]
    return (
        per_firm.with_columns(
            score=(pl.lit(base) - pl.col("deducted")).clip(lower_bound=0).cast(pl.Int64),
        )
        .drop("deducted")
        .with_columns(flags)
    )


def _band(grading: dict[str, Any]) -> pl.Expr:
    """Score -> grade letter by the configured minimum scores; any veto means the lowest grade."""
    bands = sorted(grading["grades"], key=lambda g: -g["min_score"])
    band = pl.lit(bands[-1]["grade"])
    for entry in reversed(bands[:-1]):
        band = pl.when(pl.col("score") >= entry["min_score"]).then(pl.lit(entry["grade"])).otherwise(band)
    return pl.when(pl.col("vetoes").list.len() > 0).then(pl.lit(bands[-1]["grade"])).otherwise(band)


def _fill_grading(grading: dict[str, Any]) -> list[pl.Expr]:
    """A firm with no list, deduction or veto: empty lists, false flags, zero counts, the base score."""
    return [
        *(pl.col(name).fill_null(empty) for name, empty in _EMPTY.items()),
        *(pl.col(e["flag"]).fill_null(False) for e in grading.get("lists", []) if "flag" in e),
        *(pl.col(e["count"]).fill_null(0).cast(pl.Int64) for e in grading.get("rules", []) if "count" in e),
        pl.col("score").fill_null(int(grading.get("base_score", 1000))),
    ]


#: money as published: 元 to the fen, exact (Parquet DECIMAL(18, 2), up to 10^16 元 per firm)
MONEY = pl.Decimal(18, 2)
#: a record's amount and a firm's running total before the published cast (room for any sum)
_MONEY_WIDE = pl.Decimal(38, 2)


def money(amount: pl.Expr) -> pl.Expr:
    """A record's amount in 元 (a float, as standardised) as an exact decimal to the fen: its sums
    are exact and the same bytes on every run, and the books add the accepted records the same way."""
    return amount.cast(_MONEY_WIDE)


def narrow_money(profiles: pl.DataFrame) -> pl.DataFrame:
    """The summed money columns in the published ``MONEY`` type; a firm's total that does not fit
    is an error naming the column and the firm (a source's amount in the wrong unit, say)."""
    limit = 10 ** (MONEY.precision - MONEY.scale)
    wide = [name for name, dtype in profiles.schema.items() if isinstance(dtype, pl.Decimal)]
    for name in wide:
        beyond = profiles.filter(pl.col(name).abs() >= limit)
        if beyond.height:
            firm = beyond.row(0, named=True)
            raise ValueError(
                f"profile column {name!r} of firm {firm['entity_id']} holds {firm[name]} 元, beyond "
                f"the published decimal({MONEY.precision}, {MONEY.scale}); {beyond.height} firm(s) "
                f"affected: check the unit of that source's amounts (config/sources.toml scale)"
            )
    return profiles.with_columns(pl.col(wide).cast(MONEY))


#: the trailing windows profile figures count records in: name -> (record types, months). A figure
#: changes on the day a record leaves its window, so ``valid_until`` derives from these as well.
WINDOWS: dict[str, tuple[tuple[str, ...], int]] = {
    "quality_36m": (("spot_check",), 36),
    "violations_12m": (("penalty",), 12),
}


def window_days(window: str) -> int:
    """A window's length in days (months of 30.44 days)."""
    return round(WINDOWS[window][1] * 30.44)


def _in_window(window: str, as_of: date) -> pl.Expr:
    """The record is of the window's types and dated within it on ``as_of``."""
    types, _ = WINDOWS[window]
    return pl.col("record_type").is_in(list(types)) & (
        pl.col("_date") > pl.lit(as_of - timedelta(days=window_days(window)))
    )


def _linked_records(records: pl.LazyFrame, links: pl.LazyFrame) -> pl.LazyFrame:
    """The accepted records with their firm, duplicate flag, date and latest flag (what both the
    profile and its ``valid_until`` read)."""
    recs = records.join(
        links.select("source", "source_record_id", "entity_id", "match_confidence"),
        on=["source", "source_record_id"],
        how="inner",
    ).with_columns(
        # the same fact reported twice under different record ids (double reporting)
        _duplicate=pl.len().over("entity_id", *CONTENT_KEY) > 1,
    )
    return with_record_dates(recs)


def valid_until(recs: pl.LazyFrame, as_of: date, grading: dict[str, Any]) -> pl.LazyFrame:
    """Per firm, the last day its profile built on ``as_of`` stays the same but for ``as_of``
    itself (null: no date changes it), from the same rules the profile applies: a list or rule
    membership starts on its record's ``_date`` and ends the day after ``until``
    (``_membership_windows``); a record leaves a trailing window (``WINDOWS``) its length after its
    date. ``recs`` come from ``_linked_records``. Anything else in a profile changes only with its
    records, or with the sources held back (``stale``), which the caller compares."""
    windows = _membership_windows(recs, grading).select(
        "entity_id", pl.concat_list(pl.col("_date"), pl.col("until") + pl.duration(days=1)).alias("day")
    )
    leaving = [
        recs.filter(pl.col("record_type").is_in(list(types))).select(
            "entity_id", pl.concat_list(pl.col("_date") + pl.duration(days=window_days(name))).alias("day")
        )
        for name, (types, _) in WINDOWS.items()
    ]
    changes = pl.concat([windows, *leaving]).explode("day").filter(pl.col("day") > pl.lit(as_of))
    return (
        recs.select("entity_id")
        .unique()
        .join(
            changes.group_by("entity_id").agg(
                (pl.col("day").min() - pl.duration(days=1)).alias("valid_until")
            ),
            on="entity_id",
            how="left",
        )
        .sort("entity_id")
    )


def build_profiles(
    records: pl.LazyFrame,
    links: pl.LazyFrame,
    entities: pl.LazyFrame,
    as_of: date,
    stale_sources: frozenset[str] = frozenset(),
    grading: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Aggregate linked records into one row per firm (sorted by entity_id).

    Money is summed as decimals (``money``: each record to the fen, then exact addition), so the
    published figures are exact, add up to the accepted records' totals and are the same bytes on
    every run (float addition in a parallel group-by is not associative).
    """
    return build_profiles_valid_until(records, links, entities, as_of, stale_sources, grading)[0]


def build_profiles_valid_until(
    records: pl.LazyFrame,
    links: pl.LazyFrame,
    entities: pl.LazyFrame,
    as_of: date,
    stale_sources: frozenset[str] = frozenset(),
    grading: dict[str, Any] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``build_profiles`` and each profile's ``valid_until`` (entity_id, valid_until), in one pass
    over the records: what a later night needs to rebuild only the profiles that changed."""
    grading = check_grading(grading) if grading is not None else load_grading()
    # once: a dozen aggregations below read them (each would scan and join the records again)
    recs = _linked_records(records, links).collect().lazy()
    day = pl.lit(as_of)
    rtype = pl.col("record_type")
    class_rank = pl.col("status").replace_strict(
        {c: i for i, c in enumerate(FIVE_CLASS)}, default=None, return_dtype=pl.Int8
    )
    loans = rtype == "loan"
    ratings = rtype == "tax_rating"
    contract = rtype.is_in(["dishonest_debtor", "enforcement", "contract_default"])
    checks = _in_window("quality_36m", as_of)
    si = rtype == "si_contribution"
    latest_si_period = pl.col("period").filter(si).max()
    penalties_12m = _in_window("violations_12m", as_of)
    latest_rating = ratings & pl.col("_latest")

    summary = recs.group_by("entity_id").agg(
        pl.len().alias("record_count"),
        pl.col("source").n_unique().alias("source_count"),
        # the legal representative most records name (ties: the first in order)
        pl.col("legal_rep").drop_nulls().mode().sort().first().alias("legal_rep"),
        # lending
        loans.sum().cast(pl.Int64).alias("lending_loans"),
        money(pl.col("amount").filter(loans)).sum().alias("lending_amount"),
        money(pl.col("balance").filter(loans)).sum().alias("lending_balance"),
        money(pl.col("overdue_amount").filter(loans)).sum().alias("lending_overdue_principal"),
        class_rank.filter(loans).max().alias("_worst_class"),
        # tax
        # the rating the tax-rating rules read (with_record_dates: the latest rating year)
        pl.col("status").filter(latest_rating).first().alias("tax_latest_rating"),
        pl.col("period").filter(latest_rating).first().alias("tax_latest_rating_year"),
        money(pl.col("balance").filter(rtype == "tax_arrears")).sum().alias("tax_arrears_balance"),
        # contract performance
        contract.sum().cast(pl.Int64).alias("contract_cases"),
        money(pl.col("amount").filter(contract & (pl.col("status") != "已履行")))
        .sum()
        .alias("contract_unperformed_amount"),
        # product quality
        checks.sum().cast(pl.Int64).alias("quality_checks_36m"),
        (checks & pl.col("status").is_in(["不合格", "拒检"]))
        .sum()
        .cast(pl.Int64)
        .alias("quality_failures_36m"),
        (pl.col("flag").fill_null(False) & (rtype == "spot_check"))
        .sum()
        .cast(pl.Int64)
        .alias("quality_recalls"),
        # social insurance (latest period)
        pl.col("headcount").filter(si & (pl.col("period") == latest_si_period)).sum().alias("si_headcount"),
        pl.col("overdue_days")
        .filter(si & (pl.col("period") == latest_si_period))
        .max()
        .alias("si_arrears_months"),
        money(pl.col("balance").filter(si & (pl.col("period") == latest_si_period)))
        .sum()
        .alias("si_arrears_amount"),
        # violations
        penalties_12m.sum().cast(pl.Int64).alias("violations_penalties_12m"),
        money(pl.col("amount").filter(penalties_12m)).sum().alias("violations_fines_12m"),
        # data quality parts
        pl.col("code_raw").is_not_null().mean().round(6).alias("_completeness"),
        pl.col("code_status")
        .is_in(["valid", "repaired", "org_code", "reg_no"])
        .mean()
        .round(6)
        .alias("_validity"),
        pl.col("match_confidence").mean().round(6).alias("_consistency"),
        (~pl.col("_duplicate")).mean().round(6).alias("_uniqueness"),
        pl.col("match_confidence").min().alias("min_match_confidence"),
    )
    provenance = (
        recs.group_by("entity_id", "source")
        .agg(pl.len().alias("records"), pl.col("updated_at").max().dt.date().alias("as_of"))
        .with_columns(stale=pl.col("source").is_in(list(stale_sources)))
        .sort("entity_id", "source")
        .group_by("entity_id", maintain_order=True)
        .agg(pl.struct("source", "records", "as_of", "stale").alias("provenance"))
    )
    grades = grade(recs, as_of, grading)
    division_names = pl.DataFrame(
        {"division": list(divisions()), "division_name": [d.label for d in divisions().values()]}
    ).lazy()
    profile = (
        entities.select(
            "entity_id", "uscc", "org_code", "reg_no", "name", "former_names", _natural_person(entities)
        )
        .join(summary, on="entity_id", how="inner")
        .join(provenance, on="entity_id", how="left")
        .join(grades, on="entity_id", how="left")
        .with_columns(
            _fill_grading(grading),
            entity_type=pl.when(pl.col("natural_person"))
            .then(pl.lit(NATURAL_PERSON))
            .otherwise(pl.col("uscc").str.slice(0, 2).replace_strict(ENTITY_TYPES, default="other")),
            division=pl.col("uscc").str.slice(2, 6),
            industry=industry_expr(pl.col("name")),
            lending_worst_class=pl.col("_worst_class").replace_strict(
                dict(enumerate(FIVE_CLASS)), default=None, return_dtype=pl.String
            ),
            quality_fail_rate=pl.when(pl.col("quality_checks_36m") > 0).then(
                pl.col("quality_failures_36m") / pl.col("quality_checks_36m")
            ),
            timeliness=pl.col("provenance").list.eval(pl.element().struct.field("stale").not_()).list.mean(),
        )
        .join(division_names, on="division", how="left")
    )
    profile = profile.with_columns(
        grade=_band(grading),
        quality_score=pl.mean_horizontal(
            "_completeness", "_validity", "_consistency", "timeliness", "_uniqueness"
        ).round(4),
        quality_completeness=pl.col("_completeness").round(4),
        quality_validity=pl.col("_validity").round(4),
        quality_consistency=pl.col("_consistency").round(4),
        quality_timeliness=pl.col("timeliness").round(4),
        quality_uniqueness=pl.col("_uniqueness").round(4),
        as_of=day,
    )
    profiles, expiry = pl.collect_all(
        [profile.select(profile_columns(grading)).sort("entity_id"), valid_until(recs, as_of, grading)]
    )
    return narrow_money(profiles), expiry.join(profiles.select("entity_id"), on="entity_id", how="semi")


def grade_counts(profiles: pl.DataFrame) -> dict[str, int]:
    """Profiles per grade, by grade (what the command line shows of a night)."""
    return dict(profiles.group_by("grade").len().sort("grade").iter_rows())
