"""The pipeline's stages on small generated sources, in-process (the DAG calls the same functions)."""

import json
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from entity_resolution.evaluate import evaluate
from foundation.errors import SourceUnavailableError
from foundation.schema import CANONICAL_COLUMNS
from pipelines import flow
from pipelines.cli import main as credit
from pipelines.sources import stages as source_stages
from pipelines.sources.registry import source_names

BUSINESS_DATE = "2026-11-23"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate

    out = tmp_path_factory.mktemp("sources")
    generate(out, entities=1500, seed=5, days=3, end_date=date(2026, 11, 23))
    return out


@pytest.fixture(scope="module")
def lake(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("lake")
    flow.run_all(str(sources), str(lake), BUSINESS_DATE, run_id="test-run")
    return lake


def test_every_source_is_extracted_standardised_and_balanced(lake: Path) -> None:
    summary = json.loads((lake / "reports" / BUSINESS_DATE / "summary.json").read_text("utf-8"))
    assert set(summary["sources"]) == set(source_names())  # the registry, config/sources.toml
    for name, counts in summary["sources"].items():
        assert counts["extracted"] > 0, name
        assert counts["extracted"] == counts["accepted"] + counts["quarantined"], name
        staged = pl.read_parquet(lake / "staged" / BUSINESS_DATE / f"{name}.parquet")
        assert tuple(staged.columns) == CANONICAL_COLUMNS
        assert staged["source"].unique().to_list() == [name]


def test_profiles_match_the_truth(lake: Path, sources: Path) -> None:
    links = pl.read_parquet(lake / "published" / "current" / "links" / "*.parquet")
    truth = pl.read_parquet(sources / "truth" / "records.parquet")
    scores = evaluate(links, truth)
    assert scores.firms_with_exactly_one_profile >= 0.95, scores
    assert scores.pairwise_precision >= 0.98, scores
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    assert profiles["entity_id"].is_unique().all()
    assert profiles["record_count"].sum() == links.height
    assert set(profiles["grade"].unique()) <= {"A", "B", "C", "D"}


def test_no_entity_holds_two_valid_usccs(lake: Path) -> None:
    links = pl.read_parquet(lake / "published" / "current" / "links" / "*.parquet")
    accepted = pl.concat(
        [pl.read_parquet(p) for p in (lake / "accepted" / BUSINESS_DATE).glob("*.parquet")],
        how="vertical_relaxed",
    )
    per_entity = (
        accepted.join(links, on=["source", "source_record_id"])
        .filter(pl.col("uscc").is_not_null())
        .group_by("entity_id")
        .agg(pl.col("uscc").n_unique())
    )
    assert per_entity["uscc"].max() == 1


def test_rerunning_a_date_gives_identical_profiles(lake: Path, sources: Path, tmp_path: Path) -> None:
    again = tmp_path / "lake"
    flow.run_all(str(sources), str(again), BUSINESS_DATE, run_id="another-run")
    for name in ("profiles", "links", "entities"):
        first = pl.read_parquet(lake / "published" / "current" / name / "*.parquet")
        second = pl.read_parquet(again / "published" / "current" / name / "*.parquet")
        assert first.equals(second), name


def test_earlier_business_date_sees_fewer_records(sources: Path, tmp_path: Path) -> None:
    full = source_stages.extract_source("lending", str(sources), str(tmp_path), BUSINESS_DATE)["rows"]
    earlier = source_stages.extract_source("lending", str(sources), str(tmp_path), "2026-11-21")["rows"]
    assert 0 < earlier < full


def test_missing_source_names_the_source(sources: Path, tmp_path: Path) -> None:
    broken = tmp_path / "sources"
    shutil.copytree(sources, broken)
    (broken / "contract" / "enforcement.csv").unlink()
    with pytest.raises(SourceUnavailableError, match="contract"):
        source_stages.extract_source("contract", str(broken), str(tmp_path / "lake"), BUSINESS_DATE)
    (broken / "lending" / "lending.db").unlink()
    with pytest.raises(SourceUnavailableError, match="lending"):
        source_stages.extract_source("lending", str(broken), str(tmp_path / "lake"), BUSINESS_DATE)


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("generate", "run", "evaluate"):
        with pytest.raises(SystemExit):
            credit([command, "--help"])
        text = capsys.readouterr().out
        assert "--" in text and "help" in text
    with pytest.raises(SystemExit):
        credit(["generate", "--help"])
    text = capsys.readouterr().out
    for option in ("--entities", "--seed", "--out", "--days", "--end-date", "--lending-url"):
        assert option in text


def test_cli_run_and_evaluate(sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = tmp_path / "lake"
    assert credit(["run", "--sources", str(sources), "--lake", str(lake), "--date", BUSINESS_DATE, "-q"]) == 0
    out = capsys.readouterr().out
    assert "published/current/profiles" in out
    assert (
        credit(
            [
                "evaluate",
                "--links",
                str(lake / "published" / "current" / "links"),
                "--truth",
                str(sources / "truth" / "records.parquet"),
            ]
        )
        == 0
    )
    assert "pairwise_f1" in capsys.readouterr().out
    assert credit(["run", "--sources", str(tmp_path / "nowhere"), "--lake", str(lake), "-q"]) == 1
    assert "lending" in capsys.readouterr().err


def test_cli_export_slices_to_csv_and_excel(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    expected = profiles.filter((pl.col("grade") == "D") & pl.col("division").str.starts_with("3302"))
    target = tmp_path / "d.csv"
    slice_options = ["--grade", "D", "--division", "3302", "--header", "names"]
    assert credit(["export", "--lake", str(lake), "--out", str(target), *slice_options]) == 0
    exported = pl.read_csv(target, infer_schema=False)
    assert exported.height == expected.height > 0
    assert sorted(exported["entity_id"]) == sorted(expected["entity_id"])
    assert exported["grade_reasons"].str.contains(" until ").any()  # lists are readable text
    assert exported["deductions"].str.starts_with('[{"rule":').any()  # nested columns are JSON text
    xlsx = tmp_path / "lists.xlsx"
    assert credit(["export", "--lake", str(lake), "--out", str(xlsx), "--list", "dishonest_debtor"]) == 0
    assert xlsx.read_bytes()[:2] == b"PK"  # an Office Open XML workbook
    assert credit(["export", "--lake", str(lake), "--out", str(tmp_path / "x.txt")]) == 1
    assert ".csv or .xlsx" in capsys.readouterr().err


def test_export_headers_are_the_data_dictionarys_labels_unless_names_are_asked_for(
    lake: Path, tmp_path: Path
) -> None:
    """By default a person gets 贷款金额（元） and shares in %; a script asks for --header names."""
    import zipfile

    from foundation.dictionary import load_columns

    columns = load_columns()
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet").sort("entity_id")
    labelled, named = tmp_path / "labels.csv", tmp_path / "names.csv"
    assert credit(["export", "--lake", str(lake), "--out", str(labelled)]) == 0
    assert credit(["export", "--lake", str(lake), "--out", str(named), "--header", "names"]) == 0
    by_label = pl.read_csv(labelled, infer_schema=False)
    by_name = pl.read_csv(named, infer_schema=False)
    assert by_name.columns == profiles.columns  # what scripts read, as before
    # the same columns in the same order, each headed by its label and unit from the dictionary
    expected = []
    for name in profiles.columns:
        column = columns[name]
        unit = "%" if column.ratio else column.unit
        expected.append(f"{column.label}（{unit}）" if unit else column.label)
    assert by_label.columns == expected
    assert {"主体标识", "统一社会信用代码", "贷款金额（元）", "参保人数（人）", "欠缴月数（月）"} <= set(
        by_label.columns
    )
    assert by_label["主体标识"].to_list() == by_name["entity_id"].to_list()
    assert by_label["贷款金额（元）"].to_list() == by_name["lending_amount"].to_list()  # money as published
    # a share 0-1 is shown as a percentage under its "%" header
    share = next(n for n in profiles.columns if columns[n].ratio)
    as_published = by_name[share].cast(pl.Float64)
    in_percent = by_label[f"{columns[share].label}（%）"].cast(pl.Float64)
    assert ((in_percent - as_published * 100).abs().fill_null(0) < 0.006).all()
    assert (as_published.fill_null(0) <= 1).all() and (in_percent.fill_null(0) > 1).any()
    # the workbook's header row too
    xlsx = tmp_path / "labels.xlsx"
    assert credit(["export", "--lake", str(lake), "--out", str(xlsx), "--grade", "D"]) == 0
    with zipfile.ZipFile(xlsx) as book:
        cells = book.read("xl/sharedStrings.xml").decode("utf-8")
    assert "贷款金额（元）" in cells and "lending_amount" not in cells


def test_each_run_leaves_a_report_and_data_docs(lake: Path) -> None:
    reports = lake / "reports" / BUSINESS_DATE
    page = (reports / "report.html").read_text("utf-8")
    for heading in (
        "Records accepted per source",
        "Quarantine by reason",
        "How records were matched",
        "Grade distribution",
        "Changes against the previous version",
        "Reconciliation",
    ):
        assert heading in page, heading
    assert page.count("<svg") >= 3 and "<script" not in page  # empty charts say "nothing to show"
    assert "run <b>test-run</b> success" in page and "<b>published</b>" in page
    docs = lake / "reports" / "data-docs" / "index.html"
    assert f"../data-docs/index.html#night-{BUSINESS_DATE}" in page
    index = docs.read_text("utf-8")
    for suite in ("lending.raw", "lending.standardised", "violations.standardised", "profiles"):
        assert suite in index, suite
    validations = list((docs.parent / BUSINESS_DATE).glob("*.html"))
    assert len(validations) >= 13  # six raw + six standardised suites + the profiles suite


def test_a_new_run_replaces_the_report_at_once_and_a_failed_one_says_where(
    lake: Path, tmp_path: Path
) -> None:
    """The moment a run starts, the date's page says "running" (the earlier attempt's "published" is
    gone); when it ends failed, the page names the failed task, its stage, source and error."""
    from pipelines.publish import report

    copy = tmp_path / "lake"
    shutil.copytree(lake / "reports", copy / "reports")
    assert "<b>published</b>" in (copy / "reports" / BUSINESS_DATE / "report.html").read_text("utf-8")
    page = report.start_run(copy, BUSINESS_DATE, "night-2").read_text("utf-8")
    assert "<b>night-2</b>" in page and "still <b>running</b>" in page
    assert "published" not in page and "test-run" not in page
    assert not (copy / "reports" / BUSINESS_DATE / "summary.json").exists()
    report.record_failure(
        copy, BUSINESS_DATE, "night-2", "tax.validate", ValueError("tax rating 'Z' unknown")
    )
    report.record_failure(copy, BUSINESS_DATE, "an-earlier-run", "lending.extract", OSError("gone"))
    states = {"tax.extract": "success", "tax.validate": "failed", "publish": "upstream_failed"}
    page = report.finish_run(copy, BUSINESS_DATE, "night-2", states).read_text("utf-8")
    assert "<b>NOT published</b>; run <b>night-2</b> failed" in page
    assert (
        "<tr><td>tax.validate</td><td>validate</td><td>tax</td><td>ValueError: tax rating &#x27;Z&#x27; unknown"
        in page
    )
    assert "lending.extract" not in page  # another run's failure record
    assert "<tr><td>publish</td><td>upstream_failed</td></tr>" in page
    run = json.loads((copy / "reports" / BUSINESS_DATE / "run.json").read_text("utf-8"))
    assert run["state"] == "failed" and run["tasks"] == dict(sorted(states.items()))
