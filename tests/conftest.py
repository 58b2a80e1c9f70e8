"""Shared test set-up: Airflow points at this repository, with examples off and a migrated SQLite DB."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
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
#: the pytest-xdist worker this process is (gw0, gw1, ...), or None without xdist
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
#: Airflow's metadata database: with xdist each worker has its own (SQLite takes one writer at a time,
#: and two workers' DAG runs would otherwise share one), beside airflow.db and git-ignored like it
AIRFLOW_DB = REPO / (f"airflow.db-{XDIST_WORKER}" if XDIST_WORKER else "airflow.db")
if XDIST_WORKER:
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{AIRFLOW_DB}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs `--dist loadfile`: a module's tests on one worker, so
    that its module-scoped fixtures are built once) the modules marked `waits` are handed out first
    (their wait then overlaps the other workers' CPU work), then the modules by how many of their
    tests are marked slow, most first, so that the workers finish about together rather than one
    running a long module alone at the end. A plain `pytest` keeps the usual order."""
    if not XDIST_WORKER:
        return
    waits = {item.module.__name__ for item in items if item.get_closest_marker("waits")}
    slow = Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    # stable: a module's tests stay together and in their order
    items.sort(
        key=lambda item: (
            item.module.__name__ not in waits,
            -slow[item.module.__name__],
            item.module.__name__,
        )
    )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The metadata database `dag.test()` records runs in (created or upgraded once per session)."""
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        pytest.fail(f"airflow db migrate failed:\n{done.stderr[-3000:]}")
    return AIRFLOW_DB


@pytest.fixture(scope="session", autouse=True)
def audit_secrets_outside_the_lake(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The audit key and anchor store of every `credit` the tests start live in a session folder, not
    in the home directory config/service.toml points at (the environment overrides it; CI may too)."""
    folder = tmp_path_factory.mktemp("audit-secrets")
    os.environ.setdefault("CREDIT_AUDIT_KEY_FILE", str(folder / "audit.key"))
    os.environ.setdefault("CREDIT_AUDIT_ANCHOR_URL", f"sqlite:///{folder / 'audit-anchor.sqlite'}")


POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def run_probe(program: str) -> tuple[dict, str]:
    """Run a Python ``program`` in a fresh interpreter at the repository root (as Airflow's
    components run: AIRFLOW_HOME the repository); (the JSON its last output line holds, all it
    wrote: Airflow logs to standard output, a worker's preload to standard error).
    For what must start from a clean process: an executor forking its workers, a worker's imports."""
    probe = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_HOME": str(REPO)},
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout.strip().splitlines()[-1]), probe.stdout + probe.stderr


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


# ---------------------------------------------------------------- generated sources and published lakes

#: the business date every generated data set ends on unless a test says otherwise
END_DATE = date(2026, 11, 23)


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this pytest run sees: the run's base folder, or with pytest-xdist
    the folder above the workers' own (each worker has a base folder of its own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (a file) against the other xdist workers."""
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _settings_in_force() -> dict[str, str]:
    """The environment overrides that change what a run publishes: part of a cached build's key."""
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("CREDIT_") and k.endswith(("_CONFIG", "_DIR"))
    }


@dataclass
class PublishedLakes:
    """Generated sources and lakes published from them, each built once per test run and shared by
    every module (and xdist worker) that asks for the same one; a caller gets its own copy, free to
    change. Building is the expensive part (generate, then the whole pipeline per night); a copy is
    a few megabytes."""

    cache: Path
    scratch: pytest.TempPathFactory

    def _built(self, kind: str, key: dict, build: Callable[[Path], None]) -> Path:
        """The cached folder for ``key``, built by ``build`` by the first process that asks for it while
        the others wait. Built in place (a lake's reports name their own absolute paths), and marked
        done afterwards: a build that failed half-way is started again, not shared."""
        name = (
            f"{kind}-"
            + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        )
        target, done = self.cache / name, self.cache / f"{name}.done"
        with _exclusive(self.cache / f"{name}.lock"):
            if not done.exists():
                shutil.rmtree(target, ignore_errors=True)
                build(target)
                done.write_text(json.dumps(key, default=str))
        return target

    def _copy(self, built: Path, label: str) -> Path:
        copy = self.scratch.mktemp(label)
        shutil.copytree(built, copy, symlinks=True, dirs_exist_ok=True)
        return copy

    def _sources(self, entities: int, seed: int, days: int, faults: str, end_date: date) -> Path:
        from credit_synthetic.generate import generate

        key = {"entities": entities, "seed": seed, "days": days, "faults": faults, "end": end_date}
        return self._built(
            "sources",
            key,
            lambda out: generate(
                out, entities=entities, seed=seed, days=days, end_date=end_date, faults=faults
            ),
        )

    def sources(
        self, entities: int, seed: int, *, days: int = 1, faults: str = "realistic", end_date: date = END_DATE
    ) -> Path:
        """A copy of ``credit generate``'s six source systems (and truth) for these arguments."""
        return self._copy(self._sources(entities, seed, days, faults, end_date), "sources")

    def lake(
        self,
        entities: int,
        seed: int,
        *,
        days: int = 1,
        faults: str = "realistic",
        end_date: date = END_DATE,
        nights: Sequence[str] | None = None,
    ) -> tuple[Path, Path]:
        """Copies of generated sources and of the lake ``credit run`` published from them, night by
        night (``nights``: business dates, by default the last day only): (sources, lake)."""
        nights = tuple(nights or (end_date.isoformat(),))
        generated = self._sources(entities, seed, days, faults, end_date)

        def publish(out: Path) -> None:
            from pipelines import flow

            # built beside copies of the sources, so that the paths a run records stay under one root
            shutil.copytree(generated, out / "sources")
            for night in nights:
                flow.run_all(str(out / "sources"), str(out / "lake"), night, run_id=f"night {night}")

        key = {
            "entities": entities,
            "seed": seed,
            "days": days,
            "faults": faults,
            "end": end_date,
            "nights": nights,
            "settings": _settings_in_force(),
        }
        copy = self._copy(self._built("lake", key, publish), "published")
        return copy / "sources", copy / "lake"


@pytest.fixture(scope="session")
def published_lakes(tmp_path_factory: pytest.TempPathFactory) -> PublishedLakes:
    """The factory of generated sources and published lakes shared across modules (see PublishedLakes)."""
    cache = _shared_root(tmp_path_factory) / "published-lakes"
    cache.mkdir(exist_ok=True)
    return PublishedLakes(cache, tmp_path_factory)


def mapping_settings(
    folder: Path, *, extract_shard_rows: int, partition_signatures: int, profile_shard_entities: int
) -> dict[str, str]:
    """Copies of config/sources.toml, resolution.toml and nightly.toml that cut the night into
    this many rows per extract shard, signatures per resolution partition and entities per profile
    shard; the environment that points the pipeline at them. What is published must not change."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = (REPO / "config" / "sources.toml").read_text("utf-8")
    sources, replaced = re.subn(
        r"^extract_shard_rows = .*$", f"extract_shard_rows = {extract_shard_rows}", sources, flags=re.M
    )
    nightly = (REPO / "config" / "nightly.toml").read_text("utf-8")
    nightly, replaced_too = re.subn(
        r"^profile_shard_entities = .*$",
        f"profile_shard_entities = {profile_shard_entities}",
        nightly,
        flags=re.M,
    )
    assert replaced == replaced_too == 1, "the mapping settings moved: update tests/conftest.py"
    # a top-level key: first, before any table
    resolution = f"partition_signatures = {partition_signatures}\n" + (
        REPO / "config" / "resolution.toml"
    ).read_text("utf-8")
    env = {}
    for name, text in (("sources", sources), ("nightly", nightly), ("resolution", resolution)):
        (folder / f"{name}.toml").write_text(text, "utf-8")
        env[f"CREDIT_{name.upper()}_CONFIG"] = str(folder / f"{name}.toml")
    return env
