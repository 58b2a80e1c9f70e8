"""The "Run report" button's target: a real `airflow api-server` with plugins/credit_run_reports.py
serving a real night's report and Data Docs over http, only to users Airflow lets read the DAG's
runs, and nothing outside the reports."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from tests.service_support import free_port

REPO = Path(__file__).resolve().parent.parent
NIGHT = "2026-11-23"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate
    from pipelines import flow

    sources = tmp_path_factory.mktemp("reports-sources")
    generate(sources, entities=300, seed=5, days=1, end_date=date(2026, 11, 23))
    lake = tmp_path_factory.mktemp("reports-lake")
    flow.run_all(str(sources), str(lake), NIGHT, run_id=f"night {NIGHT}")
    # something that is no report, beside the reports: it must never be served
    (lake / "reports" / "secret.html").write_text("<p>not a report</p>")
    return lake


@pytest.fixture(scope="module")
def airflow_api(lake: Path, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`airflow api-server` on a free port with this lake as the deployment's (CREDIT_LAKE), and a
    user whose password the test knows."""
    folder = tmp_path_factory.mktemp("api-server")
    password = secrets.token_urlsafe(12)
    passwords = folder / "passwords.json"
    passwords.write_text(json.dumps({"admin": password}))
    port = free_port()
    env = {
        **os.environ,
        "CREDIT_LAKE": str(lake),
        "AIRFLOW_HOME": str(REPO),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "PYTHONPATH": str(REPO),
    }
    airflow = Path(sys.executable).with_name("airflow")
    log = open(folder / "api-server.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [str(airflow), "api-server", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"airflow api-server did not start: {(folder / 'api-server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        assert token.status_code == 201, token.text
        yield {"base": base, "token": token.json()["access_token"]}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def report_link() -> str:
    from serving.run_reports import report_url

    return report_url(NIGHT, None)


def test_the_report_opens_for_a_logged_in_user_and_for_no_one_else(airflow_api: dict, lake: Path) -> None:
    base, token = airflow_api["base"], airflow_api["token"]
    url = base + report_link()
    assert report_link() == f"/credit-nightly/reports/{NIGHT}/report.html"
    # the UI's session cookie, as a browser that logged in to Airflow sends it
    page = httpx.get(url, cookies={"_token": token}, timeout=30)
    assert page.status_code == 200, page.text
    assert page.text == (lake / "reports" / NIGHT / "report.html").read_text("utf-8")
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # a script's bearer token works too
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    # no credentials, or a forged one: refused
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, cookies={"_token": token[:-4] + "AAAA"}, timeout=30).status_code in (401, 403)
    # the Data Docs the report links to (relative link ../data-docs/index.html) open the same way
    docs = httpx.get(
        f"{base}/credit-nightly/reports/data-docs/index.html", cookies={"_token": token}, timeout=30
    )
    assert docs.status_code == 200 and f"Night {NIGHT}" in docs.text
    assert httpx.get(f"{base}/credit-nightly/reports/data-docs/index.html", timeout=30).status_code == 401
    listing = httpx.get(f"{base}/credit-nightly/reports/", cookies={"_token": token}, timeout=30)
    assert listing.status_code == 200 and f"href='{NIGHT}/report.html'" in listing.text


@pytest.mark.parametrize(
    "path",
    [
        "/credit-nightly/reports/..%2Fsecret.html/report.html",  # an encoded separator in the date
        "/credit-nightly/reports/%2E%2E/report.html",  # the parent folder as the date
        "/credit-nightly/reports/2026-13-45/report.html",  # shaped like a date, but none
        "/credit-nightly/reports/2026-11-20/report.html",  # a night without a report
        "/credit-nightly/reports/data-docs/..%2Fsecret.html",  # out of the Data Docs site
        "/credit-nightly/reports/data-docs/%2E%2E/%2E%2E/reports/secret.html",
        "/credit-nightly/reports/data-docs/../secret.html",
        "/credit-nightly/reports/secret.html",  # no route serves anything else
    ],
)
def test_nothing_but_the_reports_is_served(airflow_api: dict, path: str) -> None:
    response = httpx.get(airflow_api["base"] + path, cookies={"_token": airflow_api["token"]}, timeout=30)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert "not a report" not in response.text


def test_the_report_renders_in_chromium_from_the_airflow_server(
    airflow_api: dict, browser, screenshots: Path
) -> None:  # noqa: ANN001
    """What the button opens, in a browser holding Airflow's session cookie: styled (the page's own
    CSS passes its content security policy), charts drawn, and the Data Docs link works."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_cookies([{"name": "_token", "value": airflow_api["token"], "url": airflow_api["base"]}])
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if message.type == "error" else None)
    page.goto(airflow_api["base"] + report_link())
    assert "published" in page.inner_text(".status")
    assert page.eval_on_selector("table", "t => getComputedStyle(t).borderCollapse") == "collapse"
    assert page.locator("svg rect").count() > 5
    # no label of a chart runs into a bar (a long quarantine reason did)
    overlapping = page.evaluate(
        """() => [...document.querySelectorAll('svg')].flatMap(svg => {
            const bars = [...svg.querySelectorAll('rect')].map(r => r.getBBox());
            return [...svg.querySelectorAll('text.label')].filter(t => {
                const b = t.getBBox();
                return bars.some(r => b.x < r.x + r.width && r.x < b.x + b.width
                                      && b.y < r.y + r.height && r.y < b.y + b.height);
            }).map(t => t.textContent);
        })"""
    )
    assert overlapping == []
    page.screenshot(path=str(screenshots / "run-report-from-airflow.png"), full_page=True)
    page.click("text=Data Docs")
    page.wait_for_url(f"{airflow_api['base']}/credit-nightly/reports/data-docs/index.html#night-{NIGHT}")
    assert f"Night {NIGHT}" in page.inner_text("h2 >> nth=0")
    assert blocked == []
    context.close()


def test_the_run_report_button_in_the_airflow_ui_opens_the_report(
    airflow_api: dict, lake: Path, tmp_path: Path, browser, screenshots: Path
) -> None:  # noqa: ANN001
    """A run in the metadata database the API server reads (its `plan` run for real, the rest only
    marked done): in the Airflow UI, logged in, `plan`'s page has the **Run report** button, and
    clicking it opens that night's report. The UI renders only http(s) or same-origin links (a
    `file://` one is dropped), so this is the button a user sees."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from airflow.dag_processing.dagbag import DagBag

    night = "2026-11-22"  # a night of its own: `plan` replaces its report with a "running" one
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["credit_nightly"]
    run = dag.test(
        logical_date=datetime(2026, 11, 23, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai")),
        run_conf={"sources_dir": str(tmp_path), "lake_dir": str(lake), "business_date": night},
        mark_success_pattern=r"(?!plan$).*",
    )
    base = airflow_api["base"]
    links = httpx.get(
        f"{base}/api/v2/dags/credit_nightly/dagRuns/{run.run_id}/taskInstances/plan/links",
        headers={"Authorization": f"Bearer {airflow_api['token']}"},
        timeout=30,
    )
    assert links.status_code == 200, links.text
    assert links.json()["extra_links"]["Run report"] == f"/credit-nightly/reports/{night}/report.html"
    # a browser somewhere on UTC: the UI shows UTC until its user picks Asia/Shanghai (README)
    context = browser.new_context(viewport={"width": 1300, "height": 900}, timezone_id="UTC")
    context.add_cookies([{"name": "_token", "value": airflow_api["token"], "url": base}])
    page = context.new_page()
    page.goto(f"{base}/dags/credit_nightly/runs/{run.run_id}/tasks/plan/details")
    button = page.get_by_role("link", name="Run report")  # under "Extra Links" of the Details tab
    button.wait_for(timeout=60_000)
    # the time zone: the clock button in the navigation bar (it shows the offset) opens "Select Timezone"
    page.get_by_role("button", name="+00:00").click()
    page.get_by_role("combobox").fill("Asia/Shanghai")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="+08:00").wait_for(timeout=10_000)
    page.screenshot(path=str(screenshots / "airflow-task-run-report-button.png"), full_page=True)
    button.click()
    page.wait_for_url(f"{base}/credit-nightly/reports/{night}/report.html", timeout=60_000)
    assert f"Run {run.run_id} started" in page.inner_text(".status")
    context.close()
