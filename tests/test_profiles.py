"""Profiles: per-domain summaries that reconcile, and grades whose every deduction names a record."""

from datetime import date, datetime

import polars as pl

from pipelines.profiles import PROFILE_COLUMNS, build_profiles, load_grading
from pipelines.schema import conform

AS_OF = date(2026, 11, 23)


def records() -> pl.LazyFrame:
    rows = [
        # firm A: a clean borrower with two loans, one special-mention
        dict(
            source="lending",
            source_record_id="L1",
            record_type="loan",
            status="正常",
            amount=100.0,
            balance=60.0,
            overdue_amount=0.0,
            event_date=date(2026, 1, 5),
        ),
        dict(
            source="lending",
            source_record_id="L2",
            record_type="loan",
            status="关注",
            amount=50.0,
            balance=50.0,
            overdue_amount=10.0,
            overdue_days=20,
            event_date=date(2026, 6, 1),
        ),
        dict(source="tax", source_record_id="T1", record_type="tax_rating", status="B", period="2024"),
        dict(source="tax", source_record_id="T2", record_type="tax_rating", status="A", period="2025"),
        # firm B: a dishonest debtor (veto) and an expired penalty
        dict(
            source="contract",
            source_record_id="C1",
            record_type="dishonest_debtor",
            status="全部未履行",
            amount=3000.0,
            event_date=date(2025, 3, 1),
        ),
        dict(
            source="violations",
            source_record_id="V1",
            record_type="penalty",
            category="罚款",
            amount=20000.0,
            event_date=date(2024, 1, 1),
            end_date=date(2024, 7, 1),
        ),
        dict(
            source="product_quality",
            source_record_id="P1",
            record_type="spot_check",
            status="不合格",
            event_date=date(2026, 5, 1),
        ),
    ]
    frame = pl.DataFrame(rows).with_columns(
        updated_at=pl.lit(datetime(2026, 11, 20)),
        subject_name=pl.lit("x"),
        code_raw=pl.lit("c"),
        code_status=pl.lit("valid"),
    )
    return conform(frame.lazy())


def links() -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "source": ["lending", "lending", "tax", "tax", "contract", "violations", "product_quality"],
            "source_record_id": ["L1", "L2", "T1", "T2", "C1", "V1", "P1"],
            "entity_id": ["A", "A", "A", "A", "B", "B", "B"],
            "match_confidence": [1.0] * 7,
        }
    )


def entities() -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "entity_id": ["A", "B"],
            "uscc": ["91330203MA2A1B2C3X", None],
            "org_code": [None, None],
            "reg_no": [None, None],
            "name": ["甲", "乙"],
            "former_names": [[], []],
        },
        schema_overrides={"former_names": pl.List(pl.String)},
    )


def test_profile_summaries_and_grades() -> None:
    profiles = build_profiles(records(), links(), entities(), AS_OF)
    assert tuple(profiles.columns) == PROFILE_COLUMNS
    a = profiles.filter(pl.col("entity_id") == "A").row(0, named=True)
    b = profiles.filter(pl.col("entity_id") == "B").row(0, named=True)
    assert (
        a["lending_loans"] == 2 and a["lending_balance"] == 110.0 and a["lending_overdue_principal"] == 10.0
    )
    assert a["lending_worst_class"] == "关注"
    assert a["tax_latest_rating"] == "A" and a["tax_latest_rating_year"] == "2025"
    assert a["score"] == 1000 - 40 and a["grade"] == "A"
    assert a["grade_reasons"][0].startswith("loan classified 关注") and "lending:L2" in a["grade_reasons"][0]
    assert a["entity_type"] == "enterprise" and a["division"] == "330203" and "宁波" in a["division_name"]
    assert b["contract_dishonest"] is True and b["lists"] == ["dishonest_debtor"]
    assert b["grade"] == "D" and "contract:C1" in b["veto_reasons"][0]
    # the penalty's publicity ended in 2024: it no longer costs points
    assert not any("penalty" in reason for reason in b["grade_reasons"])
    assert b["quality_checks_36m"] == 1 and b["quality_fail_rate"] == 1.0
    assert b["record_count"] == 3 and b["source_count"] == 3
    assert {p["source"] for p in b["provenance"]} == {"contract", "violations", "product_quality"}
    assert 0 <= b["quality_score"] <= 1
    assert a["quality_uniqueness"] == 1.0 and b["quality_uniqueness"] == 1.0


def test_double_reported_facts_lower_uniqueness() -> None:
    doubled = pl.concat(
        [
            records(),
            records()
            .filter(pl.col("source_record_id") == "L1")
            .with_columns(source_record_id=pl.lit("L1-again")),
        ]
    )
    more_links = pl.concat(
        [
            links(),
            pl.LazyFrame(
                {
                    "source": ["lending"],
                    "source_record_id": ["L1-again"],
                    "entity_id": ["A"],
                    "match_confidence": [1.0],
                }
            ),
        ]
    )
    a = (
        build_profiles(doubled, more_links, entities(), AS_OF)
        .filter(pl.col("entity_id") == "A")
        .row(0, named=True)
    )
    assert a["quality_uniqueness"] == 0.6  # 2 of 5 records report the same loan
    assert a["quality_score"] < 1


def test_rules_are_read_from_the_declarative_file() -> None:
    grading = load_grading()
    assert {g["grade"] for g in grading["grades"]} == {"A", "B", "C", "D"}
    relaxed = {**grading, "rules": [r for r in grading["rules"] if r["id"] != "loan_special_mention"]}
    profiles = build_profiles(records(), links(), entities(), AS_OF, grading=relaxed)
    assert profiles.filter(pl.col("entity_id") == "A")["score"].item() == 1000
