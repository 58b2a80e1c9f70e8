"""Shared test set-up: Airflow points at this repository, with examples off and a migrated SQLite DB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# CI machines vary in speed: property tests check behaviour, not time.
settings.register_profile("ci", deadline=None)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
# Before anything imports airflow: AIRFLOW_HOME is the repository (airflow.cfg, dags/ and airflow.db).
os.environ["AIRFLOW_HOME"] = str(REPO)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database `dag.test()` records runs in (created or upgraded once per session)."""
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        pytest.fail(f"airflow db migrate failed:\n{done.stderr[-3000:]}")
    return REPO / "airflow.db"


@pytest.fixture(scope="session", autouse=True)
def audit_secrets_outside_the_lake(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The audit key and anchor store of every `credit` the tests start live in a session folder, not
    in the home directory config/service.toml points at (the environment overrides it; CI may too)."""
    folder = tmp_path_factory.mktemp("audit-secrets")
    os.environ.setdefault("CREDIT_AUDIT_KEY_FILE", str(folder / "audit.key"))
    os.environ.setdefault("CREDIT_AUDIT_ANCHOR_URL", f"sqlite:///{folder / 'audit-anchor.sqlite'}")


POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose server is missing, with the reason; in CI (CREDIT_REQUIRE_SERVICES=1, set by
    .ci/run after installing the servers) a missing server is a failure instead."""
    if os.environ.get("CREDIT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> str:
    """A reachable PostgreSQL server, or a skip that says why (CI always has one)."""
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        skip_or_fail(f"no PostgreSQL server on 127.0.0.1:5432 ({exc.orig})")
    finally:
        engine.dispose()
    return POSTGRES_URL


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: where the tests leave the screenshots of the pages people look at (git-ignored), to be looked at
SCREENSHOTS = REPO / "tests" / "artifacts" / "screenshots"


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The screenshot folder: tests/artifacts/screenshots, or the one CREDIT_SCREENSHOTS names."""
    folder = Path(os.environ.get("CREDIT_SCREENSHOTS") or SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots under {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201 - a Playwright Browser
    """Debian's Chromium, headless, driven by Playwright (which downloads nothing of its own)."""
    if not Path(CHROMIUM).exists():
        skip_or_fail("Chromium is not installed (scripts/install-chromium.sh installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()
