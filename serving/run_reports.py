"""The nightly run reports over http, inside the Airflow API server, behind Airflow's own login.

The `credit_nightly` DAG's "Run report" button has to open the report from the Airflow UI: a
``file://`` link is refused by browsers on an http page, and the people who look at a night's run
are the people logged in to Airflow. So the reports and the Data Docs site under ``LAKE/reports``
are served by a FastAPI app that ``plugins/credit_run_reports.py`` mounts in the Airflow API
server at ``URL_PREFIX``. Airflow does not authenticate plugin apps (a mounted app inherits none of
the core API's dependencies), so every route here requires what reading the DAG's runs requires:
``requires_access_dag("GET", DagAccessEntity.RUN)`` on `credit_nightly`, which takes the UI's
session cookie or an ``Authorization: Bearer`` JWT and asks Airflow's auth manager.

The URLs mirror the lake's folders (``reports/<date>/report.html``, ``reports/data-docs/...``), so
the relative links between a report and the Data Docs work over http as they do on disk. Only
those pages are served: a date must be a real ISO date and a Data Docs path must stay inside the
site, or the answer is 404.
"""

from __future__ import annotations

import html
import re
from datetime import date
from pathlib import Path
from typing import Any

from foundation.lake import SITE_DIR
from foundation.settings import airflow_lake

DAG_ID = "credit_nightly"
#: where the app is mounted in the Airflow API server
URL_PREFIX = "/credit-nightly"
REPORT_PAGE = "report.html"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: the pages are static HTML with inline CSS and SVG: nothing else may load or run
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
)


def report_path(business_date: str) -> str:
    """A night's report, relative to the Airflow API server's root."""
    return f"{URL_PREFIX}/reports/{business_date}/{REPORT_PAGE}"


def report_url(business_date: str, base_url: str | None) -> str:
    """The link the Airflow UI opens: absolute under ``[api] base_url`` when that is set, else
    relative to the API server the UI came from."""
    return f"{base_url.rstrip('/')}{report_path(business_date)}" if base_url else report_path(business_date)


def business_date_or_none(text: str) -> str | None:
    """``text`` when it is a real calendar date written YYYY-MM-DD (never a path), else None."""
    if not _DATE.fullmatch(text):
        return None
    try:
        date.fromisoformat(text)
    except ValueError:
        return None
    return text


def create_app(lake: Path | None = None) -> Any:
    """The FastAPI app serving ``lake``'s reports (default: the lake the DAG writes by default)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    reports = (lake or airflow_lake()).resolve() / "reports"
    app = FastAPI(
        title="credit_nightly run reports",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def page(path: Path) -> FileResponse:
        if not path.is_file():
            raise HTTPException(404, "no such report")
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @app.get("/reports/{business_date}/report.html")
    def run_report(business_date: str) -> FileResponse:
        night = business_date_or_none(business_date)
        if night is None:
            raise HTTPException(404, "not a business date (YYYY-MM-DD)")
        return page(reports / night / REPORT_PAGE)

    @app.get(f"/reports/{SITE_DIR}/{{page_path:path}}")
    def data_docs(page_path: str) -> FileResponse:
        site = reports / SITE_DIR
        target = (site / page_path).resolve()
        if not target.is_relative_to(site) or target.suffix != ".html":
            raise HTTPException(404, "no such page")
        return page(target)

    @app.get("/reports/", response_class=HTMLResponse)
    def nights() -> HTMLResponse:
        """Every night that has a report, newest first, and the Data Docs."""
        dates = sorted(
            (p.parent.name for p in reports.glob(f"*/{REPORT_PAGE}") if business_date_or_none(p.parent.name)),
            reverse=True,
        )
        items = "".join(
            f"<li><a href='{html.escape(d)}/{REPORT_PAGE}'>{html.escape(d)}</a></li>" for d in dates
        )
        body = f"<ul>{items}</ul>" if dates else "<p>No run has written a report yet.</p>"
        return HTMLResponse(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>credit_nightly run reports"
            "</title><style>body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 900px; }"
            f"</style></head><body><h1>credit_nightly run reports</h1>{body}"
            f"<p><a href='{SITE_DIR}/index.html'>Data Docs</a>: every night's validations</p></body></html>",
            headers=_HEADERS,
        )

    return app


class LazyApp:
    """``create_app()``, built on the first request. Airflow imports the plugins folder in every
    process that loads plugins, task processes included; they should not pay for FastAPI and
    Airflow's API security modules (seconds per task) for an app only the API server serves."""

    def __init__(self, lake: Path | None = None) -> None:
        self.lake = lake
        self.app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.app is None:
            self.app = create_app(self.lake)
        await self.app(scope, receive, send)


_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
