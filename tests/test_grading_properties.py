"""No profile contradicts itself, over generated data of several seeds and several grading days.

Every list a reason cites is in `lists` and every list in `lists` is cited; flags agree with
`lists`; every veto gives the lowest grade; the score is the base score minus every listed
deduction; every reason names each of its records with the record's date and until when it
counts; every record a reason names belongs to the firm; a rating rule cites the rating the tax
panel shows. Each check reads config/grading.toml, never a copy of it.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from credit_synthetic.generate import generate
from foundation.grading import list_labels, load_grading
from pipelines import flow, night
from pipelines.profiles.build import build_profiles
from pipelines.sources import snapshot

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

SEEDS = (13, 29, 71)
BUSINESS_DATE = date(2026, 11, 20)
#: grading days: the night itself, and later nights when many listings and deductions have ended
LATER = (timedelta(days=200), timedelta(days=700))
DATED = r"^(listed )?(\d{4}-\d{2}-\d{2}|year \d{4}|period \d{4}-\d{2}|updated \d{4}-\d{2}-\d{2})"


@pytest.fixture(scope="module", params=SEEDS, ids=lambda seed: f"seed{seed}")
def lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated sources through the whole pipeline to a published version."""
    root = tmp_path_factory.mktemp(f"seed{request.param}")
    generate(root / "sources", entities=900, seed=request.param, days=2, end_date=BUSINESS_DATE)
    flow.run_all(str(root / "sources"), str(root / "lake"), BUSINESS_DATE.isoformat(), run_id="props")
    return root / "lake"


def contradictions(profiles: pl.DataFrame, links: pl.DataFrame, records: pl.DataFrame) -> pl.DataFrame:
    """(entity_id, problem) for every way a profile disagrees with itself or with its records."""
    grading = load_grading()
    labels = list_labels()
    bands = sorted(grading["grades"], key=lambda g: -g["min_score"])
    lowest = bands[-1]["grade"]
    band = pl.lit(lowest)
    for entry in reversed(bands[:-1]):
        band = pl.when(pl.col("score") >= entry["min_score"]).then(pl.lit(entry["grade"])).otherwise(band)
    all_reasons = pl.concat_list("veto_reasons", "grade_reasons").list.join("\n")
    cited = pl.concat_list(
        pl.col("vetoes").list.eval(pl.element().struct.field("list")),
        pl.col("deductions").list.eval(
            pl.element().struct.field("rule").filter(pl.element().struct.field("rule").is_in(list(labels)))
        ),
    )
    deducted = pl.col("deductions").list.eval(pl.element().struct.field("points")).list.sum()
    checks: dict[str, pl.Expr] = {
        "a list in `lists` is not cited, or one cited is not in `lists`": pl.col("lists").list.sort()
        != cited.list.unique().list.sort(),
        "a veto without the lowest grade": (pl.col("vetoes").list.len() > 0) & (pl.col("grade") != lowest),
        "a grade that is neither the score's band nor a veto": (pl.col("vetoes").list.len() == 0)
        & (pl.col("grade") != band),
        "score is not base minus the listed deductions": pl.col("score")
        != pl.max_horizontal(pl.lit(0), pl.lit(int(grading["base_score"])) - deducted.fill_null(0)),
        "grade_reasons differ from the deductions' reasons": pl.col("grade_reasons")
        != pl.col("deductions").list.eval(pl.element().struct.field("reason")),
        "veto_reasons differ from the vetoes' reasons": pl.col("veto_reasons")
        != pl.col("vetoes").list.eval(pl.element().struct.field("reason")),
        "a deduction of no points": pl.col("deductions")
        .list.eval(pl.element().struct.field("points") <= 0)
        .list.any(),
    }
    for entry in grading["lists"]:
        on = pl.col("lists").list.contains(entry["id"])
        checks[f"{entry['id']}: a reason names the list iff the firm is on it"] = (
            all_reasons.str.contains(entry["label"], literal=True) != on
        )
        if "flag" in entry:
            checks[f"{entry['id']}: flag {entry['flag']} disagrees with `lists`"] = (
                pl.col(entry["flag"]) != on
            )
    whole = profiles.select(
        "entity_id", *(expr.fill_null(True).alias(problem) for problem, expr in checks.items())
    ).unpivot(index="entity_id", variable_name="problem", value_name="broken")
    problems = [whole.filter("broken").select("entity_id", "problem")]

    # each cited record: named in its reason with its date, in force, and linked to this firm
    entries = pl.concat(
        [
            profiles.select("entity_id", "as_of", pl.col(column).alias("entry"))
            .explode("entry")
            .drop_nulls("entry")
            .unnest("entry")
            .select("entity_id", "as_of", pl.col(key).alias("id"), "records", "until", "reason")
            for column, key in (("deductions", "rule"), ("vetoes", "list"))
        ]
    )
    cited_records = entries.explode("records").rename({"records": "record"})
    # what follows "<record> (" in the reason: the record's date, then (for a rule) until when
    shown = pl.col("reason").str.split(pl.col("record") + " (").list.get(1, null_on_oob=True)
    problems.append(
        cited_records.filter(~shown.str.contains(DATED).fill_null(False)).select(
            "entity_id",
            pl.format("{}: record {} is not named with its date", "id", "record").alias("problem"),
        )
    )
    untils = entries.with_columns(
        shown=pl.col("reason")
        .str.extract_all(r"until (\d{4}-\d{2}-\d{2})")
        .list.eval(pl.element().str.slice(6).str.to_date())
    )
    problems.append(
        untils.filter(
            (pl.col("shown").list.len() == 0)
            | (pl.col("shown").list.min() < pl.col("as_of"))
            | (pl.col("shown").list.max() != pl.col("until"))
            | (pl.col("until") < pl.col("as_of"))
        ).select(
            "entity_id", pl.format("{}: until is missing, past, or not the entry's", "id").alias("problem")
        )
    )
    owner = links.select(
        (pl.col("source") + ":" + pl.col("source_record_id")).alias("record"),
        pl.col("entity_id").alias("owner"),
    )
    problems.append(
        cited_records.join(owner, on="record", how="left")
        .filter(pl.col("owner").is_null() | (pl.col("owner") != pl.col("entity_id")))
        .select("entity_id", pl.format("{}: record {} is not this firm's", "id", "record").alias("problem"))
    )
    # a rule that reads only the latest record of its type cites the record the panel shows
    latest_rules = [rule["id"] for rule in grading["rules"] if rule.get("latest_only")]
    shown = records.select(
        (pl.col("source") + ":" + pl.col("source_record_id")).alias("record"),
        "record_type",
        "status",
        "period",
    )
    problems.append(
        cited_records.filter(pl.col("id").is_in(latest_rules))
        .join(shown, on="record")
        .join(profiles.select("entity_id", "tax_latest_rating", "tax_latest_rating_year"), on="entity_id")
        .filter(
            (pl.col("record_type") == "tax_rating")
            & (
                (pl.col("status") != pl.col("tax_latest_rating"))
                | (pl.col("period") != pl.col("tax_latest_rating_year"))
            )
        )
        .select(
            "entity_id",
            pl.format("{}: cites {}, not the rating the panel shows", "id", "record").alias("problem"),
        )
    )
    return pl.concat(problems).unique().sort("entity_id", "problem")


def _assert_consistent(profiles: pl.DataFrame, links: pl.DataFrame, records: pl.DataFrame) -> None:
    found = contradictions(profiles, links, records)
    summary = found.group_by("problem").agg(pl.len(), pl.col("entity_id").first()).sort("problem")
    assert found.is_empty(), f"{found.height} contradictions:\n" + "\n".join(
        f"  {n} x {problem} (e.g. {firm})" for problem, n, firm in summary.iter_rows()
    )


def test_published_profiles_never_contradict_themselves(lake: Path) -> None:
    version = lake / "published" / "current"
    profiles = pl.read_parquet(version / "profiles" / "*.parquet")
    links = pl.read_parquet(version / "links" / "*.parquet")
    records = snapshot.accepted_records(night.night_lake(str(lake), BUSINESS_DATE.isoformat())).collect()
    # the data must exercise what is checked: vetoes, list deductions and many-rule firms
    assert (profiles["vetoes"].list.len() > 0).sum() >= 3
    assert profiles["lists"].list.contains("abnormal_operation").sum() >= 3
    assert profiles["deductions"].list.len().max() >= 3
    _assert_consistent(profiles, links, records)


@pytest.mark.parametrize("later", LATER, ids=lambda d: f"+{d.days}d")
def test_profiles_graded_on_later_days_never_contradict_themselves(lake: Path, later: timedelta) -> None:
    """Graded later, listings and deductions run out on their own days; still no contradiction."""
    work = night.night_lake(str(lake), BUSINESS_DATE.isoformat())
    records = snapshot.accepted_records(work).collect()
    links = pl.read_parquet(work.work / "links.parquet")
    profiles = build_profiles(
        records.lazy(),
        links.lazy(),
        pl.scan_parquet(work.work / "entities.parquet"),
        as_of=BUSINESS_DATE + later,
    )
    published = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    # time passed: some firms came off a list they were on
    assert profiles["lists"].list.len().sum() < published["lists"].list.len().sum()
    _assert_consistent(profiles, links, records)
