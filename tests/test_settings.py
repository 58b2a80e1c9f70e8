"""Every setting is resolved when it is asked for, never when a module is imported: a process that
points a setting elsewhere after importing the code (a test, a long-running server, an Airflow
worker) sees the new file at the next call."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from foundation import grading as grading_module
from foundation import settings

# imported before any override is set, as a long-running process has them
from pipelines.profiles import build as profiles
from pipelines.profiles import stages as profile_stages
from pipelines.publish import versions as publish
from serving import app, disclosure, server, store

REPO = Path(__file__).resolve().parent.parent
#: the names whose call reads a setting (an environment variable or a settings file)
SETTINGS_READERS = frozenset(
    {
        "environ",
        "getenv",
        "config_path",
        "expectation_dirs",
        "airflow_lake",
        "airflow_sources",
        "resolution_settings",
        "nightly_settings",
        "load_sources",
        "load_grading",
        "load_industries",
        "list_labels",
        "profile_columns",
        "load_policy",
        "load_config",
        "load_settings",
        "load_columns",
        "load_domains",
    }
)
#: module-level reads that are right where they are, and why
IMPORT_TIME_READS = {
    # GX reads this when it is imported: it must be set before, and it is a write, not a read
    ("pipelines/quality/suites.py", "environ"),
}


def own_copy(tmp_path: Path, name: str, old: str = "", new: str = "") -> Path:
    """A deployment's own copy of config/<name>, with ``old`` replaced by ``new``."""
    text = settings.config_path(name).read_text("utf-8")
    assert old in text, f"{name} no longer holds {old!r}"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1), "utf-8")
    return path


def point(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv(settings.config_env(path.name), str(path))


def test_publishing_settings_are_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (publish.retention_days(), publish.row_group_rows())
    own = tmp_path / "publishing.toml"
    own.write_text(f"retention_days = {before[0] + 3}\nrow_group_rows = {before[1] + 7}\n", "utf-8")
    point(monkeypatch, own)
    assert (publish.retention_days(), publish.row_group_rows()) == (before[0] + 3, before[1] + 7)


def test_grading_and_industries_are_read_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    basis_before = profile_stages._profile_basis("2026-11-23", frozenset())
    grading = own_copy(tmp_path, "grading.toml", 'label = "失信被执行人"', 'label = "失信被执行人（本地）"')
    industries = tmp_path / "industries.toml"
    industries.write_text('[sections]\n"Z 测试" = ["测试词"]\n', "utf-8")
    point(monkeypatch, grading)
    point(monkeypatch, industries)
    assert grading_module.grading_path() == grading and profiles.industries_path() == industries
    assert grading_module.list_labels()["dishonest_debtor"][0] == "失信被执行人（本地）"
    assert profiles.load_industries() == {"测试词": "Z 测试"}
    # what depends on them: the basis of incremental profiles, the lists the service offers
    assert profile_stages._profile_basis("2026-11-23", frozenset())["rules"] != basis_before["rules"]
    assert store.offered_lists()["dishonest_debtor"][0] == "失信被执行人（本地）"


def test_a_renamed_list_flag_changes_the_profile_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = grading_module.profile_columns()
    flag = next(e["flag"] for e in grading_module.load_grading()["lists"] if "flag" in e)
    point(monkeypatch, own_copy(tmp_path, "grading.toml", f'flag = "{flag}"', f'flag = "{flag}_local"'))
    after = grading_module.profile_columns()
    assert flag in before and flag not in after and f"{flag}_local" in after


def test_service_settings_are_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = app.load_config()["limits"]["max_query_chars"]
    service = own_copy(
        tmp_path, "service.toml", f"max_query_chars = {limit}", f"max_query_chars = {limit + 11}"
    )
    point(monkeypatch, service)
    assert app.load_config()["limits"]["max_query_chars"] == limit + 11
    assert server.load_settings()["limits"]["max_query_chars"] == limit + 11


def test_the_disclosure_policy_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert disclosure.load_policy().path == settings.config_path(disclosure.POLICY_FILE)
    policy = own_copy(tmp_path, disclosure.POLICY_FILE)
    point(monkeypatch, policy)
    assert disclosure.load_policy().path == policy
    # and its views grade with the grading the settings name now, not the one first asked for
    grading = own_copy(tmp_path, "grading.toml", 'label = "失信被执行人"', 'label = "失信被执行人（本地）"')
    point(monkeypatch, grading)
    lists = {e["id"]: e["label"] for e in disclosure.load_policy().view("public").grading["lists"]}
    assert lists["dishonest_debtor"] == "失信被执行人（本地）"


def test_the_airflow_folders_are_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.AIRFLOW_SOURCES_ENV, str(tmp_path / "sources"))
    monkeypatch.setenv(settings.AIRFLOW_LAKE_ENV, str(tmp_path / "lake"))
    assert settings.airflow_sources() == tmp_path / "sources"
    assert settings.airflow_lake() == tmp_path / "lake"
    monkeypatch.delenv(settings.AIRFLOW_SOURCES_ENV)
    assert settings.airflow_sources() == settings.REPO_ROOT / settings.DEFAULT_SOURCES


def _import_time_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, name) of every settings read that runs when the module is imported: module and class
    bodies, decorators and default arguments; not function bodies, which run when called."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for part in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
                if part is not None:
                    visit(part)
            return
        if isinstance(node, ast.Lambda):
            return
        name = (
            node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        )
        if name in SETTINGS_READERS:
            found.append((node.lineno, name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in tree.body:
        if not isinstance(statement, ast.Import | ast.ImportFrom):
            visit(statement)
    return found


def test_no_module_reads_a_setting_when_it_is_imported() -> None:
    """The DAG file is left out: Airflow builds the DAG by running it, so its reads happen at each
    parse, which is when they should."""
    offenders = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for folder in ("pipelines", "serving", "entity_resolution", "plugins")
        for path in sorted((REPO / folder).rglob("*.py"))
        for line, name in _import_time_reads(ast.parse(path.read_text("utf-8")))
        if (str(path.relative_to(REPO)), name) not in IMPORT_TIME_READS
    ]
    assert offenders == [], "read settings when asked for them, through foundation.settings"


def test_the_import_time_check_finds_what_it_looks_for() -> None:
    tree = ast.parse(
        "import os\n"
        "A = config_path('x.toml')\n"
        "def f(p=os.environ.get('X')):\n"
        "    return config_path('y.toml')\n"
        "class C:\n"
        "    B = load_grading()\n"
    )
    assert _import_time_reads(tree) == [(2, "config_path"), (3, "environ"), (6, "load_grading")]
