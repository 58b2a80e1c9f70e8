"""The column dictionary describes exactly the profile's columns, with domains the disclosure policy agrees on."""

import tomllib
from pathlib import Path

import polars as pl
import pytest

from foundation.dictionary import (
    DictionaryError,
    coverage,
    load_columns,
    load_domains,
    load_evidence_fields,
    load_record_types,
    reference_expr,
)
from foundation.grading import load_grading, profile_columns
from foundation.schema import RECORD_TYPES
from foundation.settings import config_path
from serving.disclosure import POLICY_FILE, Domain


def test_every_profile_column_is_described_and_nothing_else():
    missing, unknown = coverage(load_columns(), profile_columns())
    assert missing == [], f"profile columns without an entry in config/profile_columns.toml: {missing}"
    assert unknown == [], f"config/profile_columns.toml describes columns the profile lacks: {unknown}"
    for column in load_columns().values():
        assert column.label and column.label_en and column.description, column.name


def test_list_flags_take_their_label_from_grading():
    columns = load_columns()
    for entry in load_grading()["lists"]:
        assert entry["label"] in columns[entry["flag"]].label


def test_domains_agree_with_the_disclosure_policy():
    """A column the dictionary puts in a domain is a field of that domain in config/disclosure.toml
    and the other way round (list flags aside: they follow their list), and every domain has a title."""
    policy = tomllib.loads(config_path(POLICY_FILE).read_text("utf-8"))["domains"]
    domains = {name: Domain(name, (), tuple(spec["fields"]), ()) for name, spec in policy.items()}
    assert set(load_domains()) == set(domains)
    flags = {entry["flag"] for entry in load_grading()["lists"]}
    for column in load_columns().values():
        matching = [name for name, domain in domains.items() if domain.matches(column.name)]
        if column.name not in flags:
            assert matching == ([column.domain] if column.domain else []), column.name


def test_units_and_ratios():
    columns = load_columns()
    assert columns["lending_overdue_principal"].unit == "元"
    assert columns["si_headcount"].unit == "人"
    assert columns["si_arrears_months"].unit == "月"
    assert columns["quality_fail_rate"].ratio and columns["quality_fail_rate"].unit == "%"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[columns.x]\nlabel = "x"\nlabel_en = "x"\n', "missing or empty ['description']"),
        ('[columns.x]\nlabel = "x"\nlabel_en = "x"\ndescription = "d"\ncolour = 1\n', "unknown key"),
        ('[columns.x]\nlabel = "x"\nlabel_en = "x"\ndescription = "d"\ndomain = "nowhere"\n', "nowhere"),
        ('[columns.x]\nlabel = "x"\nlabel_en = "x"\ndescription = "d"\nratio = true\nunit = "元"\n', "ratio"),
        ("[columns.x\n", "cannot read"),
    ],
)
def test_a_broken_dictionary_names_its_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "columns.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(DictionaryError, match="columns") as caught:
        load_columns(path)
    assert problem in str(caught.value)


def test_every_record_type_is_named_and_evidence_fields_exist():
    assert set(load_record_types()) == set(RECORD_TYPES)
    fields = load_evidence_fields()
    assert {"event_date", "authority", "reference", "amount", "status", "end_date"} <= set(fields)
    assert fields["amount"]["unit"] == "元"


def test_reference_is_the_case_number_for_court_records_and_the_record_id_otherwise():
    frame = pl.DataFrame(
        {
            "record_type": ["dishonest_debtor", "penalty", "enforcement"],
            "source_record_id": ["C1", "市监罚〔2026〕1号", "C3"],
            "detail": ["(2022)豫0724执恢54号", "违法广告", None],
        }
    )
    assert frame.select(reference_expr())["reference"].to_list() == [
        "(2022)豫0724执恢54号",
        "市监罚〔2026〕1号",
        "C3",
    ]


def test_every_entity_type_the_profiles_make_has_words_for_the_pages():
    from foundation.grading import ENTITY_TYPES, NATURAL_PERSON
    from serving.report import value_text

    column = load_columns()["entity_type"]
    made = {*ENTITY_TYPES.values(), NATURAL_PERSON, "other"}
    assert made <= set(column.values or {}), made - set(column.values or {})
    assert value_text("individual business", column) == "个体工商户"
