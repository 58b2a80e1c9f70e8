"""The regulator web pages in real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from entity_resolution.spec import load_spec
from foundation.dictionary import load_columns, load_domains
from foundation.grading import list_labels, load_grading
from foundation.settings import resolution_settings
from serving.report import grade_fields
from tests.conftest import PublishedLakes, skip_or_fail
from tests.service_support import build_lake, credit, first_page, serving

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick


@pytest.fixture(autouse=True)
def close_pages(browser):  # noqa: ANN001 - Playwright browser
    """Each test's pages closed after it: their kept-alive connections count against the service's
    connections per client address ([limits] connections_per_client), as a real visitor's would."""
    yield
    for context in list(browser.contexts):
        context.close()


@pytest.fixture(scope="module")
def site(published_lakes: PublishedLakes, screenshots: Path) -> dict:
    sources, lake = build_lake(published_lakes, entities=800)
    shots = screenshots
    regulator = credit(
        "token", "create", "--role", "regulator", "--name", "inspector li", "--lake", str(lake)
    )
    public = credit("token", "create", "--role", "public", "--name", "citizen", "--lake", str(lake))
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    with serving(lake) as base:
        yield {
            "base": base,
            "regulator": regulator,
            "public": public,
            "profiles": profiles,
            "lake": lake,
            "shots": shots,
        }


def sign_in(page, base: str, token: str, path: str = "/search") -> None:  # noqa: ANN001 - Playwright page
    page.goto(base + path)
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")


def test_search_then_profile_page_with_panels_grade_history_and_evidence(browser, site: dict) -> None:  # noqa: ANN001
    firm = (
        site["profiles"]
        .filter(pl.col("uscc").is_not_null())
        .sort("record_count", descending=True)
        .row(0, named=True)
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, site["base"], site["regulator"])
    # as a person would type it: without the legal form, in traditional characters
    import opencc

    from entity_resolution.names import to_simplified  # noqa: F401 - same library the service uses

    typed = opencc.OpenCC("s2t").convert(firm["name"].replace("有限公司", ""))
    page.fill("#q", typed)
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results li a")
    first = page.locator("#results li a").first
    assert first.inner_text() == firm["name"]
    first.click()
    page.wait_for_selector("#evidence tbody tr")
    assert page.inner_text("#name") == firm["name"]
    assert page.inner_text("#grade") == firm["grade"]
    assert page.locator(".panel").count() >= 8
    panels = page.inner_text("#panels")
    assert all(f"{d.label} {d.label_en}" in panels for d in load_domains().values())
    assert page.locator("#reasons li").count() >= 1
    assert page.locator("#history svg .history-point").count() == 2  # two published versions
    assert page.locator("#evidence tbody tr").count() == firm["record_count"]
    letters = len(load_spec(resolution_settings()["spec"]).comparisons)  # one per comparison of the spec
    grades = page.locator("#evidence tbody tr td:last-child").all_inner_texts()
    assert grades and all(len(g) == letters for g in grades), grades
    assert grade_fields() in page.inner_text("#evidence")
    assert errors == []
    page.screenshot(path=str(site["shots"] / "firm-page-search.png"), full_page=True)


def test_firm_page_names_every_reason_and_the_rating_year(browser, site: dict) -> None:  # noqa: ANN001
    """Each veto and deduction with its records, dates and end; the tax rating with its year."""
    firm = (
        site["profiles"]
        .filter(pl.col("tax_latest_rating").is_not_null())
        .sort(
            pl.col("vetoes").list.len() + pl.col("deductions").list.len(),
            "entity_id",
            descending=[True, False],
        )
        .row(0, named=True)
    )
    assert firm["vetoes"] or firm["deductions"]
    page = browser.new_page()
    sign_in(page, site["base"], site["regulator"], f"/firm/{firm['entity_id']}")
    page.wait_for_selector("#reasons li")
    assert page.locator("#reasons li").all_inner_texts() == firm["veto_reasons"] + firm["grade_reasons"]
    for entry in firm["vetoes"] + firm["deductions"]:
        shown = page.inner_text("#reasons")
        assert all(record in shown for record in entry["records"])
        assert f"until {entry['until']:%Y-%m-%d}" in shown
    rating = page.inner_text("#panels .field-tax_latest_rating")
    assert firm["tax_latest_rating"] in rating and firm["tax_latest_rating_year"] in rating


def test_code_lookup_and_lists_from_the_search_page(browser, site: dict) -> None:  # noqa: ANN001
    firm = site["profiles"].filter(pl.col("org_code").is_not_null()).row(0, named=True)
    page = browser.new_page()
    sign_in(page, site["base"], site["regulator"])
    page.fill("#q", firm["org_code"][:8] + "-" + firm["org_code"][8])
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results li a")
    assert page.locator("#results li a").first.inner_text() == firm["name"]
    page.select_option("#list", "grade_d")
    page.click("#list-form button[type=submit]")
    page.wait_for_selector("#list-results li")
    expected = site["profiles"].filter(pl.col("grade") == "D").height
    assert f"{expected:,}" in page.inner_text("#list-total")


def test_run_status_page_for_data_engineers(browser, site: dict) -> None:  # noqa: ANN001
    page = browser.new_page()
    sign_in(page, site["base"], site["regulator"], "/runs")
    page.wait_for_selector("#runs .panel table")
    text = page.inner_text("#runs")
    assert "2026-11-23" in text and "2026-11-22" in text and "books balance" in text
    assert page.locator("#runs .panel").count() == 2
    assert "lending" in text and "quarantined" in text


def test_public_visitors_see_the_masked_profile(browser, site: dict) -> None:  # noqa: ANN001
    firm = site["profiles"].filter(pl.col("legal_rep").is_not_null()).row(0, named=True)
    page = browser.new_page()
    sign_in(page, site["base"], site["public"], f"/firm/{firm['entity_id']}")
    page.wait_for_selector("#panels .panel")
    assert firm["legal_rep"] not in page.inner_text("body")
    page.goto(site["base"] + "/search")
    page.check("#by-rep")
    page.fill("#q", firm["legal_rep"])
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#error:not(:empty)")  # no wait_for_function: the CSP forbids eval
    assert "regulators only" in page.inner_text("#error")


def test_without_a_token_the_page_asks_for_one(browser, site: dict) -> None:  # noqa: ANN001
    page = browser.new_page()
    page.goto(site["base"] + "/search")
    assert page.is_visible("#login") and not page.is_visible("#app")
    page.fill("#token", "cr_wrong")
    # the page's first call (the list pickers) gets a 401, which sends the visitor back to sign in
    with page.expect_response(lambda r: r.url.endswith("/api/v1/lists") and r.status == 401):
        page.click("#login button[type=submit]")
    page.wait_for_selector("#login:not([hidden])")
    assert not page.is_visible("#app")
    # a firm page likewise: its report is refused and no firm is shown
    page.goto(site["base"] + "/firm/X0000000000000000")
    page.fill("#token", "cr_wrong")
    with page.expect_response(lambda r: "/report?format=html" in r.url and r.status == 401):
        page.click("#login button[type=submit]")
    page.wait_for_selector("#login:not([hidden])")
    assert not page.is_visible("#app") and page.locator("#report .credit-report").count() == 0


def test_public_page_of_an_individual_business_shows_no_loans(browser, site: dict) -> None:  # noqa: ANN001
    """The lending panel says "not public" and the evidence table below it lists no loan either."""
    links = pl.read_parquet(site["lake"] / "published" / "current" / "links" / "*.parquet")
    firm = (
        site["profiles"]
        .filter((pl.col("entity_type") == "individual business") & (pl.col("lending_loans") > 0))
        .row(0, named=True)
    )
    loans = links.filter((pl.col("entity_id") == firm["entity_id"]) & (pl.col("source") == "lending"))
    page = browser.new_page()
    sign_in(page, site["base"], site["public"], f"/firm/{firm['entity_id']}")
    page.wait_for_selector("#evidence tbody tr")
    lending = page.locator(".panel[data-domain=lending]")
    assert "不公开 not public" in lending.inner_text()
    sources = page.locator("#evidence tbody tr td:nth-child(1)").all_inner_texts()
    page.screenshot(path=str(site["shots"] / "firm-page-public-individual-business.png"), full_page=True)
    assert sources and "lending" not in sources
    assert len(sources) == firm["record_count"] - loans.height
    body = page.inner_text("body")
    assert loans.height and not [r for r in loans["source_record_id"] if r in body]
    assert "lending:" not in body and "loan" not in body
    regulator = browser.new_page()
    sign_in(regulator, site["base"], site["regulator"], f"/firm/{firm['entity_id']}")
    regulator.wait_for_selector("#evidence tbody tr")
    assert regulator.locator("#evidence tbody tr").count() == firm["record_count"]


def test_firm_page_labels_units_records_and_the_grade_arithmetic(browser, site: dict) -> None:  # noqa: ANN001
    """Chinese labels with units from config/profile_columns.toml, each panel's records with their
    date, authority and number from the accepted records, and the grade as 1000 − deductions = score."""
    firm = (
        site["profiles"]
        .filter(
            pl.col("uscc").is_not_null()
            & (pl.col("entity_type") == "enterprise")
            & (pl.col("vetoes").list.len() == 0)
            & (pl.col("lending_amount") > 0)
        )
        .sort(pl.col("deductions").list.len(), "entity_id", descending=[True, False])
        .row(0, named=True)
    )
    page = browser.new_page()
    sign_in(page, site["base"], site["regulator"], f"/firm/{firm['entity_id']}")
    page.wait_for_selector("#evidence tbody tr")
    columns = load_columns()
    panels = page.inner_text("#panels")
    assert columns["lending_overdue_principal"].label in panels and "lending_overdue_principal" not in panels
    amount = page.inner_text(".field-lending_amount")
    assert amount == f"{firm['lending_amount']:,.2f} 元"
    assert page.inner_text(".field-si_headcount").endswith(" 人") or firm["si_headcount"] is None
    total = sum(d["points"] for d in firm["deductions"])
    band = next(
        g["grade"]
        for g in sorted(load_grading()["grades"], key=lambda g: -g["min_score"])
        if firm["score"] >= g["min_score"]
    )
    assert f"1000 − {total} = {firm['score']} 分 → {band}" in page.inner_text(".credit-report")
    assert band == firm["grade"]
    assert page.locator("#arithmetic tr.deduction").count() == len(firm["deductions"])
    # every deducting record is in its domain's panel with the facts of its accepted record
    business_date = json.loads((site["lake"] / "published" / "current" / "manifest.json").read_text())[
        "business_date"
    ]
    for deduction in firm["deductions"]:
        for record in deduction["records"]:
            source, record_id = record.split(":", 1)
            accepted = pl.read_parquet(site["lake"] / "accepted" / business_date / f"{source}.parquet")
            fact = accepted.filter(pl.col("source_record_id") == record_id).row(0, named=True)
            row = page.locator(f".panel tr.counts:has(td:text-is('{record_id}'))")
            assert row.count() == 1, record
            text = row.inner_text()
            assert deduction["rule"] in text and f"{deduction['until']:%Y-%m-%d}" in text
            if fact["event_date"]:
                assert f"{fact['event_date']:%Y-%m-%d}" in text
            if fact["authority"]:
                assert fact["authority"] in text
            if fact["amount"]:
                assert f"{fact['amount']:,.2f}" in text
    # the timeline: a grade per kept version, a mark per dated record
    assert page.locator("#history svg .history-point").count() == 2
    assert page.locator("#history svg .record-mark").count() >= len(
        {r for d in firm["deductions"] for r in d["records"]}
    )
    # every label of the timeline lies inside the chart (the last date was cut at the edge) and no
    # two axis labels overlap
    boxes = page.eval_on_selector_all(
        "#history svg text", "ts => ts.map(t => { const b = t.getBBox(); return [b.x, b.y, b.width] })"
    )
    width = float(page.get_attribute("#history svg", "width"))
    assert all(x >= 0 and x + w <= width for x, _, w in boxes), (boxes, width)
    axis = sorted((x, x + w) for x, y, w in boxes if y == max(b[1] for b in boxes))
    assert all(right < left for (_, right), (left, _) in zip(axis, axis[1:], strict=False)), axis
    # the page does not scroll sideways: the evidence table scrolls inside its own box
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(site["shots"] / "firm-page-regulator.png"), full_page=True)


def test_a_veto_shows_as_veto_to_the_lowest_grade(browser, site: dict) -> None:  # noqa: ANN001
    firm = site["profiles"].filter(pl.col("vetoes").list.len() > 0).sort("entity_id").row(0, named=True)
    page = browser.new_page()
    sign_in(page, site["base"], site["regulator"], f"/firm/{firm['entity_id']}")
    page.wait_for_selector("#arithmetic")
    text = page.inner_text(".credit-report")
    labels = list_labels()
    for veto in firm["vetoes"]:
        assert f"否决 veto：列入{labels[veto['list']][0]}" in text
        assert f"至 {veto['until']:%Y-%m-%d}）→ {firm['grade']}" in text
    assert page.inner_text("#grade") == firm["grade"] == "D"


def test_pdf_report_from_the_page_is_printed_and_audited(browser, site: dict) -> None:  # noqa: ANN001
    if not shutil.which("pdftotext") or not shutil.which("pdftoppm"):
        skip_or_fail("poppler-utils is not installed (scripts/install-chromium.sh installs it)")
    firm = (
        site["profiles"]
        .filter(pl.col("uscc").is_not_null())
        .sort("record_count", descending=True)
        .row(0, named=True)
    )
    page = browser.new_page(accept_downloads=True)
    sign_in(page, site["base"], site["regulator"], f"/firm/{firm['entity_id']}")
    page.wait_for_selector("#evidence tbody tr")
    with page.expect_download(timeout=60_000) as download:
        page.click("#report-pdf")
    pdf = site["shots"] / "report-from-page.pdf"
    download.value.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF-")
    text = " ".join(
        subprocess.run(
            ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert firm["name"] in text and "监管版" in text and f"信用分 {firm['score']} / 1000" in text
    first_page(pdf, pdf.with_suffix(".png"))
    assert pdf.with_suffix(".png").stat().st_size > 20_000
    audit = [json.loads(line) for line in (site["lake"] / "service" / "audit.jsonl").read_text().splitlines()]
    asked = [e for e in audit if e.get("action") == "report" and e["query"].get("format") == "pdf"]
    assert asked and asked[-1]["who"] == "inspector li" and asked[-1]["query"]["code"] == firm["entity_id"]
