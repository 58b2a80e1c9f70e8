"""Where the settings files and expectation suites are: the one place every module asks.

The repository keeps them in its top-level ``config/`` and ``expectations/`` folders; the wheel
carries the same folders inside the package (``foundation/config``, ``foundation/expectations``,
mapped in pyproject.toml), because an installed package has no checkout around it. The bundled
copy wins when it exists, so the code works the same from a checkout and from an installed wheel.
A deployment points any one file elsewhere with an environment variable (read at call time):
``CREDIT_<NAME>_CONFIG`` for ``config/<name>.toml`` (``CREDIT_SOURCES_CONFIG``,
``CREDIT_DISCLOSURE_CONFIG``, ...) and ``CREDIT_EXPECTATIONS_DIR`` for suites of its own, looked
up before the bundled ones. Every module asks these functions when it needs a setting, never when it
is imported (tests/test_settings.py checks), so an override set later in the process still counts.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
#: the checkout's root (meaningful only when running from a checkout, e.g. for the demo's AIRFLOW_HOME)
REPO_ROOT = PACKAGE_DIR.parent
#: what the wheel bundles from the checkout's top level, and where it puts it inside the package
BUNDLED_FOLDERS = ("config", "expectations")
EXPECTATIONS_ENV = "CREDIT_EXPECTATIONS_DIR"
#: relative on purpose: `credit` works in the current folder, from a checkout or an installed wheel
DEFAULT_SOURCES = Path("data") / "sources"
DEFAULT_LAKE = Path("data") / "lake"
#: the lake the Airflow deployment's DAG writes by default and its run-report pages serve
AIRFLOW_LAKE_ENV = "CREDIT_LAKE"
#: the sources folder the Airflow deployment's DAG reads by default
AIRFLOW_SOURCES_ENV = "CREDIT_SOURCES"
#: the audit trail's HMAC key file and anchor database, when a deployment keeps them elsewhere
#: than config/service.toml's [audit] says
AUDIT_KEY_ENV = "CREDIT_AUDIT_KEY_FILE"
AUDIT_ANCHOR_ENV = "CREDIT_AUDIT_ANCHOR_URL"


def bundled_folder(name: str) -> Path:
    """The folder ``name`` (one of BUNDLED_FOLDERS) inside the installed package, else the checkout's."""
    if name not in BUNDLED_FOLDERS:
        raise ValueError(f"unknown settings folder {name!r}; expected one of {', '.join(BUNDLED_FOLDERS)}")
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else REPO_ROOT / name


CONFIG_DIR = bundled_folder("config")
EXPECTATIONS_DIR = bundled_folder("expectations")


def config_env(file_name: str) -> str:
    """The environment variable that overrides ``config/<file_name>``: sources.toml -> CREDIT_SOURCES_CONFIG."""
    return f"CREDIT_{Path(file_name).stem.upper()}_CONFIG"


def config_path(file_name: str) -> Path:
    """``config/<file_name>``, or the file its environment variable names."""
    variable = config_env(file_name)
    override = os.environ.get(variable)
    if not override:
        return CONFIG_DIR / file_name
    if not Path(override).is_file():
        raise FileNotFoundError(f"{variable}={override}: no such settings file")
    return Path(override)


def airflow_lake() -> Path:
    """The Airflow deployment's lake: CREDIT_LAKE, else the checkout's data/lake (read at call time)."""
    return Path(os.environ.get(AIRFLOW_LAKE_ENV) or REPO_ROOT / DEFAULT_LAKE)


def airflow_sources() -> Path:
    """The Airflow deployment's sources: CREDIT_SOURCES, else the checkout's data/sources (read at call time)."""
    return Path(os.environ.get(AIRFLOW_SOURCES_ENV) or REPO_ROOT / DEFAULT_SOURCES)


def audit_overrides() -> dict[str, str]:
    """The audit settings the environment overrides now (``key_file``, ``anchor_url``; read at call time)."""
    found = {"key_file": os.environ.get(AUDIT_KEY_ENV), "anchor_url": os.environ.get(AUDIT_ANCHOR_ENV)}
    return {key: value for key, value in found.items() if value}


def expectation_dirs(bundled: Path = EXPECTATIONS_DIR) -> list[Path]:
    """Folders searched for a suite, in order: the deployment's own (CREDIT_EXPECTATIONS_DIR), then ours."""
    extra = os.environ.get(EXPECTATIONS_ENV)
    if not extra:
        return [bundled]
    if not Path(extra).is_dir():
        raise FileNotFoundError(f"{EXPECTATIONS_ENV}={extra}: no such folder of expectation suites")
    return [Path(extra), bundled]


def resolution_settings() -> dict[str, Any]:
    """config/resolution.toml (CREDIT_RESOLUTION_CONFIG points a deployment at its own)."""
    path = config_path("resolution.toml")
    settings = tomllib.loads(path.read_text("utf-8"))
    if settings.get("engine", "fellegi_sunter") != "fellegi_sunter":
        raise ValueError(
            f"{path}: engine = {settings['engine']!r}: the rules resolver is retired; the engine is "
            f"'fellegi_sunter' (tune it through its spec)"
        )
    days = settings.get("full_relink_weekdays", [])
    if not all(isinstance(d, int) and 1 <= d <= 7 for d in days):
        raise ValueError(f"{path}: full_relink_weekdays must list ISO weekdays 1 (Monday) to 7 (Sunday)")
    return settings
