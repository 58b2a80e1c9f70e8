"""The regulator web pages in real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import skip_or_fail
from tests.service_support import build_lake, credit, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        skip_or_fail("Chromium is not installed (scripts/install-chromium.sh installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sources, lake = build_lake(tmp_path_factory.mktemp("pages"), entities=800)
    regulator = credit(
        "token", "create", "--role", "regulator", "--name", "inspector li", "--lake", str(lake)
    )
    public = credit("token", "create", "--role", "public", "--name", "citizen", "--lake", str(lake))
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    with serving(lake) as base:
        yield {"base": base, "regulator": regulator, "public": public, "profiles": profiles, "lake": lake}


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
    assert "信贷 Lending" in page.inner_text("#panels") and "税务 Tax" in page.inner_text("#panels")
    assert page.locator("#reasons li").count() >= 1
    assert page.locator("#history svg .history-point").count() == 2  # two published versions
    assert page.locator("#evidence tbody tr").count() == firm["record_count"]
    assert all(len(g) == 3 for g in page.locator("#evidence tbody tr td:nth-child(7)").all_inner_texts())
    assert errors == []
    page.screenshot(path=str(site["lake"] / "firm-page.png"), full_page=True)


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
    page.click("#login button[type=submit]")
    # the page's first call (the list catalogue) gets a 401, which sends the visitor back to sign in
    page.wait_for_selector("#login:not([hidden])")
    assert not page.is_visible("#app")


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
    lending = page.locator(".panel", has_text="信贷 Lending")
    assert "不公开 not public" in lending.inner_text()
    sources = page.locator("#evidence tbody tr td:nth-child(1)").all_inner_texts()
    assert sources and "lending" not in sources
    assert len(sources) == firm["record_count"] - loans.height
    body = page.inner_text("body")
    assert loans.height and not [r for r in loans["source_record_id"] if r in body]
    assert "lending:" not in body and "loan" not in body
    regulator = browser.new_page()
    sign_in(regulator, site["base"], site["regulator"], f"/firm/{firm['entity_id']}")
    regulator.wait_for_selector("#evidence tbody tr")
    assert regulator.locator("#evidence tbody tr").count() == firm["record_count"]
