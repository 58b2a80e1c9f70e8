"""Profiles: per-domain summaries that reconcile, and grades whose every deduction names a record."""

import re
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from foundation.grading import GradingError, grading_path, list_labels, load_grading, profile_columns
from foundation.schema import conform
from pipelines.profiles.build import build_profiles

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
    assert tuple(profiles.columns) == profile_columns()
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
    # listed on 2025-03-01 for two years (grading.toml): the reason says since and until when
    assert "listed 2025-03-01" in b["veto_reasons"][0] and "until 2027-03-01" in b["veto_reasons"][0]
    assert b["vetoes"] == [
        {
            "list": "dishonest_debtor",
            "source": "contract",
            "records": ["contract:C1"],
            "until": date(2027, 3, 1),
            "reason": b["veto_reasons"][0],
        }
    ]
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


# ------------------------------------------------------------------ one definition of each rule


def _firm(rows: list[dict], as_of: date = AS_OF, grading: dict | None = None) -> dict:
    """The profile of one firm "F" holding ``rows`` (canonical records, updated the day before)."""
    frame = conform(
        pl.DataFrame(rows)
        .with_columns(
            updated_at=pl.lit(datetime(2026, 11, 22)),
            subject_name=pl.lit("丙"),
            code_raw=pl.lit("c"),
            code_status=pl.lit("valid"),
        )
        .lazy()
    )
    links = frame.select(
        "source", "source_record_id", pl.lit("F").alias("entity_id"), pl.lit(1.0).alias("match_confidence")
    )
    firm = pl.LazyFrame(
        {"entity_id": ["F"], "uscc": [None], "org_code": [None], "reg_no": [None], "name": ["丙"]},
        schema_overrides={"uscc": pl.String, "org_code": pl.String, "reg_no": pl.String},
    ).with_columns(former_names=pl.lit([], dtype=pl.List(pl.String)))
    return build_profiles(frame, links, firm, as_of, grading=grading).row(0, named=True)


def test_a_list_whose_end_date_passed_neither_lists_nor_vetoes() -> None:
    """The court record's end date ends the membership for the flag, the list and the veto alike
    (the veto used to ignore it: a firm vetoed for a list it was not on)."""
    removed = dict(
        source="contract",
        source_record_id="C9",
        record_type="dishonest_debtor",
        status="全部未履行",
        amount=500.0,
        event_date=date(2026, 1, 10),
        end_date=date(2026, 6, 30),
    )
    firm = _firm([removed])
    assert firm["lists"] == [] and firm["contract_dishonest"] is False
    assert firm["veto_reasons"] == [] and firm["vetoes"] == [] and firm["grade"] == "A"
    still = _firm([removed], as_of=date(2026, 6, 30))
    assert still["lists"] == ["dishonest_debtor"] and still["contract_dishonest"] is True
    assert still["grade"] == "D" and "until 2026-06-30" in still["veto_reasons"][0]


def test_performing_the_obligation_removes_the_firm_from_the_list() -> None:
    performed = dict(
        source="contract",
        source_record_id="C8",
        record_type="dishonest_debtor",
        status="已履行",
        amount=0.0,
        event_date=date(2026, 5, 1),
    )
    firm = _firm([performed])
    assert firm["lists"] == [] and firm["vetoes"] == [] and firm["grade"] == "A"


def test_only_the_latest_tax_rating_counts_and_its_year_is_named() -> None:
    """A C for 2024 followed by a B for 2025: the panel shows B (2025) and nothing deducts for the C
    (it used to: "tax credit rating C (-60)" next to a latest rating B, neither with a year)."""
    ratings = [
        dict(source="tax", source_record_id="T1", record_type="tax_rating", status="C", period="2024"),
        dict(source="tax", source_record_id="T2", record_type="tax_rating", status="B", period="2025"),
    ]
    firm = _firm(ratings)
    assert firm["tax_latest_rating"] == "B" and firm["tax_latest_rating_year"] == "2025"
    assert firm["deductions"] == [] and firm["score"] == 1000
    worse = _firm([ratings[1], {**ratings[0], "source_record_id": "T3", "period": "2025", "status": "C"}])
    (deduction,) = worse["deductions"]
    assert deduction["rule"] == "tax_rating_c" and deduction["records"] == ["tax:T3"]
    assert "tax:T3 (year 2025, until 2027-01-01)" in deduction["reason"]
    assert worse["tax_latest_rating"] == "C" and worse["score"] == 1000 - deduction["points"]


def test_every_deduction_is_listed_with_its_records_dates_and_end() -> None:
    """Seven rules deduct: all seven are listed (not just the top five), and they add up to the score."""
    rows = [
        dict(
            source="lending",
            source_record_id="L1",
            record_type="loan",
            status="关注",
            event_date=date(2026, 3, 1),
        ),
        dict(
            source="lending",
            source_record_id="L2",
            record_type="loan",
            status="次级",
            event_date=date(2025, 2, 1),
        ),
        dict(source="tax", source_record_id="T1", record_type="tax_arrears", balance=10.0),
        dict(
            source="contract",
            source_record_id="C1",
            record_type="enforcement",
            status="部分未履行",
            event_date=date(2026, 2, 2),
        ),
        dict(
            source="product_quality",
            source_record_id="P1",
            record_type="spot_check",
            status="拒检",
            event_date=date(2026, 4, 4),
        ),
        *(
            dict(
                source="social_insurance",
                source_record_id=f"S{month}",
                record_type="si_contribution",
                period=f"2026{month:02d}",
                balance=100.0,
            )
            for month in range(1, 11)
        ),
        dict(
            source="violations",
            source_record_id="V1",
            record_type="penalty",
            category="责令停产停业",
            event_date=date(2026, 1, 5),
            end_date=date(2027, 1, 5),
        ),
    ]
    firm = _firm(rows)
    rules = [d["rule"] for d in firm["deductions"]]
    assert len(rules) == 8 and len(firm["grade_reasons"]) == 8
    assert firm["score"] == 1000 - sum(d["points"] for d in firm["deductions"])
    assert firm["grade_reasons"] == [d["reason"] for d in firm["deductions"]]
    points = [d["points"] for d in firm["deductions"]]
    assert points == sorted(points, reverse=True)
    si = next(d for d in firm["deductions"] if d["rule"] == "social_insurance_arrears")
    assert si["points"] == 60 and len(si["records"]) == 10  # capped, yet every record is named
    assert "social_insurance:S10 (period 2026-10, until 2027-10-01)" in si["reason"]
    penalty = next(d for d in firm["deductions"] if d["rule"] == "penalty_serious")
    assert penalty["reason"].startswith("serious administrative penalty")
    assert "violations:V1 (2026-01-05, until 2027-01-05)" in penalty["reason"]
    assert firm["violations_serious_in_force"] == 1
    for deduction in firm["deductions"]:
        assert all(record in deduction["reason"] for record in deduction["records"])
        assert re.search(
            r"\((\d{4}-\d{2}-\d{2}|year \d{4}|period \d{4}-\d{2}|updated [-\d]+), until", deduction["reason"]
        )


def test_a_list_that_deducts_instead_of_vetoing() -> None:
    abnormal = dict(
        source="violations",
        source_record_id="A1",
        record_type="abnormal_operation",
        event_date=date(2026, 2, 1),
        end_date=date(2027, 2, 1),
    )
    firm = _firm([abnormal])
    assert firm["lists"] == ["abnormal_operation"] and firm["on_abnormal_list"] is True
    assert firm["vetoes"] == [] and firm["score"] == 900 and firm["grade"] == "A"
    (deduction,) = firm["deductions"]
    assert deduction["rule"] == "abnormal_operation" and deduction["until"] == date(2027, 2, 1)
    assert "经营异常名录" in deduction["reason"] and "until 2027-02-01" in deduction["reason"]
    assert firm["score"] == 1000 - deduction["points"]


def test_a_new_list_in_the_config_reaches_flags_lists_vetoes_and_grade() -> None:
    """Nothing but grading.toml knows the lists: a list added there is graded like the others."""
    grading = load_grading()
    extra = {
        "id": "big_fine",
        "label": "大额罚款",
        "label_en": "large-fine list",
        "when": "record_type = 'penalty' AND amount >= 1000000",
        "expires_after_days": 365,
        "veto": True,
        "flag": "on_big_fine_list",
    }
    fine = dict(
        source="violations",
        source_record_id="V7",
        record_type="penalty",
        category="罚款",
        amount=2_000_000.0,
        event_date=date(2026, 9, 1),
    )
    firm = _firm([fine], grading={**grading, "lists": [*grading["lists"], extra]})
    assert firm["lists"] == ["big_fine"] and firm["on_big_fine_list"] is True and firm["grade"] == "D"
    assert firm["vetoes"][0]["list"] == "big_fine" and "大额罚款" in firm["veto_reasons"][0]


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        ("expires_after_days = 1095\n", "expires_after_day = 30\n", "unknown key(s) ['expires_after_day']"),
        (
            "when = \"record_type = 'serious_dishonesty'\"",
            "when = \"record_typ = 'x'\"",
            "bad condition when",
        ),
        (
            "veto = true\n",
            "veto = true\npoints = 200\nmax_points = 100\n",
            "max_points 100 is below points 200",
        ),
        (
            'flag = "on_serious_dishonesty_list"',
            'flag = "score"',
            "column 'score' would overwrite the profile's own column",
        ),
    ],
)
def test_a_broken_grading_file_is_refused_naming_file_entry_and_problem(
    tmp_path: Path, line: str, replacement: str, message: str
) -> None:
    path = tmp_path / "grading.toml"
    path.write_text(grading_path().read_text("utf-8").replace(line, replacement, 1), "utf-8")
    with pytest.raises(GradingError) as caught:
        load_grading(path)
    text = str(caught.value)
    assert str(path) in text and "[[lists]] 'serious_dishonesty'" in text and message in text


def test_every_place_that_offers_lists_offers_the_configured_ones() -> None:
    from pipelines.cli import build_parser
    from serving.store import list_condition, offered_lists

    configured = list(list_labels())
    offered = offered_lists()
    assert configured == [name for name in offered if name != "grade_d"]
    assert str(list_condition("grade_d")) == str(pl.col("grade") == "D")
    export = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions if a.dest == "list"
    )
    assert list(export.choices) == configured
    # the search page's pickers are filled from the API, which derives them from the same config
    page = (Path(__file__).resolve().parent.parent / "serving" / "pages" / "search.html").read_text("utf-8")
    assert re.search(r'<select id="list"></select>', page), "the list picker must not restate the lists"
    for name in configured:
        assert offered[name] == list_labels()[name]
        assert str(list_condition(name)) == str(pl.col("lists").list.contains(name))
