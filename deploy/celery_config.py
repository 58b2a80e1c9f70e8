"""The Celery app's settings for the deployment (deploy/celery.env's
AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS names ``CELERY_CONFIG``): Airflow's defaults, plus the
modules a worker imports once at start, before it forks its pool (Celery's ``imports``), so that
every task process it forks starts with them (``pipelines.flow.preload``).

The scheduler imports this module too (to send tasks): it holds only the settings."""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG: dict[str, Any] = {**DEFAULT_CELERY_CONFIG, "imports": ("deploy.worker_preload",)}
