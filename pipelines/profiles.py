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

from pipelines.divisions import divisions
from pipelines.lake import REPO_ROOT

DEFAULT_GRADING = REPO_ROOT / "config" / "grading.toml"
DEFAULT_INDUSTRIES = REPO_ROOT / "config" / "industries.toml"
FIVE_CLASS = ("正常", "关注", "次级", "可疑", "损失")
CONTENT_KEY = ("source", "record_type", "event_date", "period", "status", "category", "amount", "balance")
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


def _natural_person(entities: pl.LazyFrame) -> pl.Expr:
    """Resolution's flag for a subject identified by a resident ID (False for entity tables without it)."""
    present = "natural_person" in entities.collect_schema().names()
    return (pl.col("natural_person") if present else pl.lit(False)).alias("natural_person")


@cache
def load_grading(path: Path = DEFAULT_GRADING) -> dict[str, Any]:
    rules = tomllib.loads(Path(path).read_text("utf-8"))
    for rule in rules.get("rules", []) + rules.get("vetoes", []):
        try:
            pl.sql_expr(rule["when"])
        except Exception as exc:  # noqa: BLE001 - report which rule is broken
            raise ValueError(f"grading rule '{rule.get('id')}' in {path}: bad condition: {exc}") from exc
    return rules


@cache
def load_industries(path: Path = DEFAULT_INDUSTRIES) -> dict[str, str]:
    """keyword -> GB/T 4754 section, from config/industries.toml."""
    sections = tomllib.loads(Path(path).read_text("utf-8")).get("sections", {})
    return {word: section for section, words in sections.items() for word in words}


def industry_expr(name: pl.Expr, keywords: dict[str, str] | None = None) -> pl.Expr:
    """The industry section named by the first (longest) industry keyword in a firm's name."""
    keywords = keywords or load_industries()
    pattern = "(" + "|".join(sorted(map(re.escape, keywords), key=len, reverse=True)) + ")"
    return name.str.extract(pattern, 1).replace_strict(keywords, default=None, return_dtype=pl.String)


def _record_date() -> pl.Expr:
    return pl.coalesce(pl.col("event_date"), pl.col("updated_at").dt.date())


def _hits(records: pl.LazyFrame, rules: list[dict[str, Any]], as_of: date, kind: str) -> pl.LazyFrame:
    """Records that match each rule and are still in force on ``as_of``."""
    frames = []
    for rule in rules:
        expiry = _record_date() + pl.duration(days=int(rule.get("expires_after_days", 365)))
        if rule.get("expires_at_end_date"):
            expiry = pl.coalesce(pl.col("end_date"), expiry)
        frames.append(
            records.filter(pl.sql_expr(rule["when"]))
            .filter((expiry >= pl.lit(as_of)) & (_record_date() <= pl.lit(as_of)))
            .select(
                "entity_id",
                pl.lit(rule["id"]).alias("rule"),
                pl.lit(float(rule.get("points", 0))).alias("points"),
                pl.lit(float(rule.get("max_points", rule.get("points", 0)))).alias("max_points"),
                pl.lit(rule["reason"]).alias("reason"),
                (pl.col("source") + ":" + pl.col("source_record_id")).alias("record"),
                pl.lit(kind).alias("kind"),
            )
        )
    if not frames:
        return pl.LazyFrame(
            schema={
                "entity_id": pl.String,
                "rule": pl.String,
                "points": pl.Float64,
                "max_points": pl.Float64,
                "reason": pl.String,
                "record": pl.String,
                "kind": pl.String,
            }
        )
    return pl.concat(frames)


def grade(records: pl.LazyFrame, as_of: date, grading: dict[str, Any]) -> pl.LazyFrame:
    """Per firm: score, veto and explanation lists (each naming the record that caused it)."""
    deductions = _hits(records, grading.get("rules", []), as_of, "deduction")
    per_rule = deductions.group_by("entity_id", "rule").agg(
        pl.col("points").sum().clip(upper_bound=pl.col("max_points").first()).alias("points"),
        pl.col("reason").first(),
        pl.col("record").sort().first().alias("record"),
        pl.len().alias("records"),
    )
    scores = per_rule.group_by("entity_id").agg(
        pl.col("points").sum().alias("deducted"),
        (
            pl.col("reason")
            + " (-"
            + pl.col("points").cast(pl.Int64).cast(pl.String)
            + ", "
            + pl.col("records").cast(pl.String)
            + " record(s), e.g. "
            + pl.col("record")
            + ")"
        )
        .sort_by([pl.col("points"), pl.col("rule")], descending=[True, False])
        .head(5)
        .alias("grade_reasons"),
    )
    vetoes = (
        _hits(records, grading.get("vetoes", []), as_of, "veto")
        .group_by("entity_id")
        .agg((pl.col("reason") + " (" + pl.col("record") + ")").unique().sort().alias("veto_reasons"))
    )
    score = (pl.lit(float(grading.get("base_score", 1000))) - pl.col("deducted").fill_null(0.0)).clip(0, 1000)
    return (
        scores.join(vetoes, on="entity_id", how="full", coalesce=True)
        .with_columns(score=score.round(0).cast(pl.Int64))
        .select("entity_id", "score", "grade_reasons", "veto_reasons")
    )


def _band(grading: dict[str, Any]) -> pl.Expr:
    """Score -> grade letter by the configured minimum scores; any veto means D."""
    bands = sorted(grading["grades"], key=lambda g: -g["min_score"])
    band = pl.lit(bands[-1]["grade"])
    for entry in reversed(bands[:-1]):
        band = pl.when(pl.col("score") >= entry["min_score"]).then(pl.lit(entry["grade"])).otherwise(band)
    return pl.when(pl.col("veto_reasons").list.len() > 0).then(pl.lit("D")).otherwise(band)


def build_profiles(
    records: pl.LazyFrame,
    links: pl.LazyFrame,
    entities: pl.LazyFrame,
    as_of: date,
    stale_sources: frozenset[str] = frozenset(),
    grading: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Aggregate linked records into one row per firm (sorted by entity_id).

    Money sums are rounded to the cent: float addition in a parallel group-by is not associative,
    and the same inputs must give the same published bytes.
    """
    grading = grading or load_grading()
    recs = records.join(
        links.select("source", "source_record_id", "entity_id", "match_confidence"),
        on=["source", "source_record_id"],
        how="inner",
    ).with_columns(
        # the same fact reported twice under different record ids (double reporting)
        _duplicate=pl.len().over("entity_id", *CONTENT_KEY) > 1,
    )
    day = pl.lit(as_of)
    rtype = pl.col("record_type")
    in_months = lambda months: _record_date() > pl.lit(as_of - timedelta(days=round(months * 30.44)))  # noqa: E731
    class_rank = pl.col("status").replace_strict(
        {c: i for i, c in enumerate(FIVE_CLASS)}, default=None, return_dtype=pl.Int8
    )
    loans = rtype == "loan"
    ratings = rtype == "tax_rating"
    contract = rtype.is_in(["dishonest_debtor", "enforcement", "contract_default"])
    checks = (rtype == "spot_check") & in_months(36)
    si = rtype == "si_contribution"
    latest_si_period = pl.col("period").filter(si).max()
    penalties_12m = (rtype == "penalty") & in_months(12)
    serious = pl.col("category").is_in(["吊销许可证件", "责令停产停业", "责令关闭"])

    def on_list(kind: pl.Expr, days: int = 1095) -> pl.Expr:
        end = pl.coalesce(pl.col("end_date"), _record_date() + pl.duration(days=days))
        return (kind & (end >= day)).any()

    summary = recs.group_by("entity_id").agg(
        pl.len().alias("record_count"),
        pl.col("source").n_unique().alias("source_count"),
        # the legal representative most records name (ties: the first in order)
        pl.col("legal_rep").drop_nulls().mode().sort().first().alias("legal_rep"),
        # lending
        loans.sum().cast(pl.Int64).alias("lending_loans"),
        pl.col("amount").filter(loans).sum().round(2).alias("lending_amount"),
        pl.col("balance").filter(loans).sum().round(2).alias("lending_balance"),
        pl.col("overdue_amount").filter(loans).sum().round(2).alias("lending_overdue_principal"),
        class_rank.filter(loans).max().alias("_worst_class"),
        # tax
        pl.col("status")
        .filter(ratings)
        .sort_by(pl.col("period").filter(ratings))
        .last()
        .alias("tax_latest_rating"),
        pl.col("period").filter(ratings).max().alias("tax_latest_rating_year"),
        pl.col("balance").filter(rtype == "tax_arrears").sum().round(2).alias("tax_arrears_balance"),
        on_list(rtype == "tax_major_violation").alias("tax_major_violation"),
        # contract performance
        contract.sum().cast(pl.Int64).alias("contract_cases"),
        on_list((rtype == "dishonest_debtor") & (pl.col("status") != "已履行"), 1825).alias(
            "contract_dishonest"
        ),
        pl.col("amount")
        .filter(contract & (pl.col("status") != "已履行"))
        .sum()
        .round(2)
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
        pl.col("balance")
        .filter(si & (pl.col("period") == latest_si_period))
        .sum()
        .round(2)
        .alias("si_arrears_amount"),
        # violations
        penalties_12m.sum().cast(pl.Int64).alias("violations_penalties_12m"),
        pl.col("amount").filter(penalties_12m).sum().round(2).alias("violations_fines_12m"),
        ((rtype == "penalty") & serious & (pl.col("end_date") >= day))
        .sum()
        .cast(pl.Int64)
        .alias("violations_serious_in_force"),
        on_list(rtype == "abnormal_operation").alias("on_abnormal_list"),
        on_list(rtype == "serious_dishonesty").alias("on_serious_dishonesty_list"),
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
            score=pl.col("score").fill_null(int(grading.get("base_score", 1000))),
            grade_reasons=pl.col("grade_reasons").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            veto_reasons=pl.col("veto_reasons").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            timeliness=pl.col("provenance").list.eval(pl.element().struct.field("stale").not_()).list.mean(),
        )
        .join(division_names, on="division", how="left")
    )
    profile = profile.with_columns(
        grade=_band(grading),
        lists=pl.concat_list(
            pl.when(pl.col("on_serious_dishonesty_list"))
            .then(pl.lit(["serious_dishonesty"]))
            .otherwise(pl.lit([])),
            pl.when(pl.col("contract_dishonest")).then(pl.lit(["dishonest_debtor"])).otherwise(pl.lit([])),
            pl.when(pl.col("tax_major_violation"))
            .then(pl.lit(["major_tax_violation"]))
            .otherwise(pl.lit([])),
            pl.when(pl.col("on_abnormal_list")).then(pl.lit(["abnormal_operation"])).otherwise(pl.lit([])),
        ).cast(pl.List(pl.String)),
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
    return profile.select(PROFILE_COLUMNS).sort("entity_id").collect()


PROFILE_COLUMNS = (
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
    "tax_major_violation",
    "contract_cases",
    "contract_dishonest",
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
    "violations_serious_in_force",
    "on_abnormal_list",
    "on_serious_dishonesty_list",
    "lists",
    "score",
    "grade",
    "grade_reasons",
    "veto_reasons",
    "quality_score",
    "quality_completeness",
    "quality_validity",
    "quality_consistency",
    "quality_timeliness",
    "quality_uniqueness",
    "provenance",
    "as_of",
)
