"""`credit report CODE --out F.pdf`: the credit report printed by real headless Chromium, read back
with poppler (pdftotext for its words, pdftoppm for how its first page looks)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from foundation.dictionary import load_columns
from tests.conftest import PublishedLakes, skip_or_fail
from tests.service_support import build_lake, credit, first_page, run_credit

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

TOOLS = ("chromium", "pdftotext", "pdftoppm")


@pytest.fixture(scope="module")
def lake(published_lakes: PublishedLakes, screenshots: Path) -> dict:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        skip_or_fail(
            f"{missing} not installed (scripts/install-chromium.sh installs chromium and poppler-utils)"
        )
    _, lake = build_lake(published_lakes, entities=400)
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    shots = screenshots
    return {"lake": lake, "profiles": profiles, "shots": shots}


def pdf_text(pdf: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout


def test_regulator_report_shows_the_grade_arithmetic_units_and_records(lake: dict) -> None:
    firm = (
        lake["profiles"]
        .filter(pl.col("uscc").is_not_null() & (pl.col("deductions").list.len() >= 2))
        .sort(pl.col("deductions").list.len(), "entity_id", descending=[True, False])
        .row(0, named=True)
    )
    token = credit(
        "token", "create", "--role", "regulator", "--name", "report inspector", "--lake", str(lake["lake"])
    )
    out = lake["shots"] / "regulator.pdf"
    said = credit("report", firm["uscc"], "--out", str(out), "--lake", str(lake["lake"]), "--token", token)
    assert "regulator view" in said and out.stat().st_size > 10_000
    assert out.read_bytes().startswith(b"%PDF-")
    text = pdf_text(out)
    flat = " ".join(text.split())
    assert firm["name"] in flat and "信用报告" in flat
    # the grade as the arithmetic that makes it
    total = sum(d["points"] for d in firm["deductions"])
    assert f"1000 − {total} = {1000 - total}" in flat and f"→ {firm['grade']}" in flat
    for deduction in firm["deductions"]:
        assert f"−{deduction['points']}" in flat
    # Chinese labels with units, from the column dictionary
    columns = load_columns()
    for name in ("lending_amount", "si_headcount", "violations_fines_12m"):
        assert columns[name].label in flat
    assert "lending_overdue_principal" not in flat and "元" in flat
    # each deducting record with its date and number, from the accepted canonical records
    business_date = json.loads((lake["lake"] / "published" / "current" / "manifest.json").read_text())[
        "business_date"
    ]
    for record in firm["deductions"][0]["records"]:
        source, record_id = record.split(":", 1)
        accepted = pl.read_parquet(lake["lake"] / "accepted" / business_date / f"{source}.parquet")
        row = accepted.filter(pl.col("source_record_id") == record_id).row(0, named=True)
        assert record_id in flat
        if row["event_date"]:
            assert f"{row['event_date']:%Y-%m-%d}" in flat
    if firm["legal_rep"]:
        assert firm["legal_rep"] in flat
    # a regulator's report is audited like a query to the service
    entries = [
        json.loads(line) for line in (lake["lake"] / "service" / "audit.jsonl").read_text().splitlines()
    ]
    assert any(
        e["action"] == "report" and e["who"] == "report inspector" and e["query"]["code"] == firm["uscc"]
        for e in entries
    )
    pixels = first_page(out, lake["shots"] / "regulator-page-1.png")
    ink = (pixels < 128).mean()
    assert 0.01 < ink < 0.5, f"the first page looks empty or black ({ink:.3f} dark)"


def test_public_report_is_the_public_view(lake: dict) -> None:
    """An individual business's loans, and its legal representative, are not in the public report."""
    firm = (
        lake["profiles"]
        .filter(
            (pl.col("entity_type") == "individual business")
            & (pl.col("lending_loans") > 0)
            & pl.col("legal_rep").is_not_null()
        )
        .row(0, named=True)
    )
    links = pl.read_parquet(lake["lake"] / "published" / "current" / "links" / "*.parquet")
    loans = links.filter((pl.col("entity_id") == firm["entity_id"]) & (pl.col("source") == "lending"))
    out = lake["shots"] / "public.pdf"
    said = credit("report", firm["uscc"] or firm["entity_id"], "--out", str(out), "--lake", str(lake["lake"]))
    assert "public view" in said
    flat = " ".join(pdf_text(out).split())
    assert firm["name"] in flat and "公开版" in flat
    assert loans.height and not [r for r in loans["source_record_id"] if r in flat]
    assert not re.search(r"lending:\S", flat)
    assert "不公开" in flat  # the lending panel says so
    first_page(out, lake["shots"] / "public-page-1.png")
    # a legal representative is a natural person's name: not in a public report
    enterprise = (
        lake["profiles"]
        .filter(
            pl.col("legal_rep").is_not_null()
            & (pl.col("entity_type") == "enterprise")
            & ~pl.col("name").str.contains(pl.col("legal_rep"), literal=True)
        )
        .row(0, named=True)
    )
    out = lake["shots"] / "public-enterprise.pdf"
    credit(
        "report",
        enterprise["uscc"] or enterprise["entity_id"],
        "--out",
        str(out),
        "--lake",
        str(lake["lake"]),
    )
    assert enterprise["name"] in pdf_text(out) and enterprise["legal_rep"] not in pdf_text(out)


def test_bad_code_and_unknown_firm_get_a_clear_error(lake: dict, tmp_path: Path) -> None:
    out = tmp_path / "x.pdf"
    bad = run_credit("report", "91330200ABC", "--out", str(out), "--lake", str(lake["lake"]))
    assert bad.returncode != 0 and "USCC" in bad.stderr and not out.exists()
    person = lake["profiles"].filter(pl.col("entity_type") == "natural person")
    if person.height:  # never public, so not found for the public report
        gone = run_credit("report", person["entity_id"][0], "--out", str(out), "--lake", str(lake["lake"]))
        assert gone.returncode != 0 and "no firm" in gone.stderr and not out.exists()
