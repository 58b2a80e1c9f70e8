"""The offline Data Docs site and the run report: two real nights through the pipeline, rendered,
then opened in real headless Chromium with every network request recorded."""

from __future__ import annotations

import html
import json
import re
import sqlite3
from datetime import date
from pathlib import Path

import pytest

from foundation.lake import SITE_DIR
from pipelines import flow

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

REPO = Path(__file__).resolve().parent.parent
NIGHTS = ("2026-11-22", "2026-11-23")
#: anything a page would fetch from elsewhere: an absolute or protocol-relative URL in an attribute or CSS
EXTERNAL = re.compile(
    r"""(?:src|href|action)\s*=\s*['"]?\s*(?:[a-z][a-z0-9+.-]*:)?//|url\(\s*['"]?(?:https?:)?//|@import""",
    re.I,
)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate

    sources = tmp_path_factory.mktemp("docs-sources")
    generate(sources, entities=500, seed=29, days=2, end_date=date(2026, 11, 23), faults="none")
    lake = tmp_path_factory.mktemp("docs-lake")
    flow.run_all(str(sources), str(lake), NIGHTS[0], run_id=f"night {NIGHTS[0]}")
    # the second night a bank delivers a loan with a negative amount: one failed expectation
    with sqlite3.connect(sources / "lending" / "lending.db") as con:
        con.row_factory = sqlite3.Row
        row = dict(con.execute("SELECT * FROM loans LIMIT 1").fetchone())
        row.update(loan_id="BAD-NEG", amount=-500.0, updated_at=f"{NIGHTS[1]} 12:00:00")
        con.execute(
            f"INSERT INTO loans ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )
    flow.run_all(str(sources), str(lake), NIGHTS[1], run_id=f"night {NIGHTS[1]}")
    return lake


def site(lake: Path) -> Path:
    return lake / "reports" / SITE_DIR


def test_one_site_lists_every_nights_validations_newest_first(lake: Path) -> None:
    index = (site(lake) / "index.html").read_text("utf-8")
    headings = re.findall(r"<h2 id='night-([0-9-]+)'>", index)
    assert headings == sorted(NIGHTS, reverse=True)
    for night in NIGHTS:
        pages = sorted((site(lake) / night).glob("*.html"))
        assert len(pages) >= 13, night  # six raw, six standardised suites and the profiles suite
        for page in pages:
            assert f"href='{night}/{page.name}'" in index


def test_every_expectation_is_shown_with_its_reason(lake: Path) -> None:
    for suite in ("lending.standardised", "violations.raw", "profiles"):
        spec = json.loads((REPO / "expectations" / f"{suite}.json").read_text("utf-8"))
        reasons = [e["meta"]["reason"] for e in spec["expectations"]]
        (page,) = (site(lake) / NIGHTS[1]).glob(f"{suite}__*.html")
        text = page.read_text("utf-8")
        # one row per expectation (the file's and those derived when the suite is loaded), each with
        # its reason in the second cell
        rows = re.findall(r"<tr><td><span class='(?:ok|bad)'>[^<]*</span></td><td>([^<]*)</td>", text)
        assert len(rows) >= len(reasons) and all(rows), (suite, rows)
        for reason in reasons:
            assert html.escape(reason) in text, (suite, reason)
    # the failed one says so, with its reason and the value that broke it, in its row
    (lending,) = (site(lake) / NIGHTS[1]).glob("lending.standardised__*.html")
    failed = re.findall(
        r"<tr><td><span class='bad'>FAILED</span></td><td>([^<]*)</td>.*?</tr>", lending.read_text("utf-8")
    )
    # the amount's range is derived from schema.NUMBER_RANGES when the suite is loaded
    assert len(failed) == 1 and failed[0].startswith("amount outside its range"), failed
    assert "1 unexpected" in lending.read_text("utf-8") and "-500.0" in lending.read_text("utf-8")
    index = (site(lake) / "index.html").read_text("utf-8")
    assert f"Night {NIGHTS[1]}: 13 validations, 1 failed" in index


def test_nothing_references_an_external_url(lake: Path) -> None:
    pages = [*site(lake).rglob("*.html"), *(lake / "reports").glob("*/report.html")]
    assert len(pages) >= 2 * 13 + 1 + 2
    offenders = {p.name: EXTERNAL.findall(p.read_text("utf-8")) for p in pages}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_pages_render_offline_in_chromium(lake: Path, browser, screenshots: Path) -> None:  # noqa: ANN001
    """Styled and complete with nothing but the files: every request the pages make is a file://
    one. The screenshots stay in tests/artifacts/screenshots (conftest.py)."""
    shots = screenshots
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    report = lake / "reports" / NIGHTS[1] / "report.html"
    page.goto(report.as_uri())
    assert "published" in page.inner_text(".status")
    page.screenshot(path=str(shots / "run-report.png"), full_page=True)
    page.click("text=Data Docs")
    page.wait_for_url(re.compile(r".*/data-docs/index\.html#night-2026-11-23$"))
    assert page.eval_on_selector("table", "t => getComputedStyle(t).borderCollapse") == "collapse"
    assert page.locator("h2").all_inner_texts()[:2] == [
        f"Night {NIGHTS[1]}: 13 validations, 1 failed",
        f"Night {NIGHTS[0]}: 13 validations",
    ]
    page.screenshot(path=str(shots / "data-docs-index.png"), full_page=True)
    page.click("text=lending.standardised >> nth=0")
    assert "why this is expected (meta.reason)" in page.inner_text("th >> nth=1")
    page.screenshot(path=str(shots / "data-docs-lending-standardised.png"), full_page=True)
    assert requests and all(url.startswith("file://") for url in requests), requests
