"""Airflow plugin: the credit_nightly run reports and Data Docs at /credit-nightly/reports/ in the
API server, for users allowed to read the DAG's runs (serving/run_reports.py)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from serving.run_reports import URL_PREFIX, LazyApp


class CreditRunReports(AirflowPlugin):
    name = "credit_run_reports"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "credit_nightly run reports"}]
