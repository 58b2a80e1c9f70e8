"""Unix manners of `credit`: complete help with each default shown once, --version from the installed
metadata, documented exit codes, and --json output that is JSON alone (messages go to stderr)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from foundation.console import EXIT_CODES, EXIT_FAILED, EXIT_OK, EXIT_USAGE, JSON_HELP
from pipelines.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def credit(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line in a separate process, so stdout and stderr are the real streams."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def parsers(
    parser: argparse.ArgumentParser, path: str = "credit"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command's parser, with the command line that reaches it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def test_every_command_and_option_has_help_and_shows_its_default_once() -> None:
    root = build_parser()
    commands = list(parsers(root))
    assert len(commands) > 10  # generate, run, ..., token create, audit verify: the walk reaches them
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"`{path} {choice.dest}` has no help line"
                continue
            assert action.help and action.help.strip(), (
                f"`{path} {'/'.join(action.option_strings)}` has no help"
            )
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, path
        # one option's help paragraph never mentions its default twice
        for paragraph in re.split(r"\n  (?=-)", text):
            assert paragraph.count("default") <= 1, f"`{path}`: {paragraph}"


def test_help_states_defaults_that_matter() -> None:
    text = dict(parsers(build_parser()))["credit generate"].format_help()
    assert "(default: 20000)" in text and "(default: yesterday)" in text
    assert "(default: None)" not in text


def test_version_comes_from_the_installed_metadata(tmp_path: Path) -> None:
    done = credit("--version", cwd=tmp_path)
    assert done.returncode == EXIT_OK and not done.stderr
    (distribution,) = set(metadata.packages_distributions()["pipelines"])
    assert done.stdout.strip() == f"credit {metadata.version(distribution)} ({distribution})"


def test_help_epilog_lists_every_exit_code(tmp_path: Path) -> None:
    text = credit("--help", cwd=tmp_path).stdout
    epilog = text.split("exit codes:", 1)[1]
    listed = [int(code) for code in re.findall(r"^\s+(\d+)\s", epilog, re.MULTILINE)]
    assert listed == list(EXIT_CODES)


def test_json_is_alone_on_stdout_and_progress_goes_to_stderr(tmp_path: Path) -> None:
    done = credit(
        "generate",
        "--entities",
        "30",
        "--seed",
        "11",
        "--end-date",
        "2026-11-23",
        "--out",
        "src",
        "--json",
        cwd=tmp_path,
        env={"TQDM_DISABLE": "0"},  # progress bars on, as for a person at a terminal
    )
    assert done.returncode == EXIT_OK, done.stderr
    manifest = json.loads(done.stdout)  # nothing else on stdout
    assert manifest["entities"] == 30 and manifest["end_date"] == "2026-11-23"
    assert "it/s" in done.stderr or "%" in done.stderr  # the progress went to stderr
    assert (tmp_path / "src" / "manifest.json").exists()  # relative to where it runs


def test_people_get_a_summary_line(tmp_path: Path) -> None:
    done = credit(
        "generate", "--entities", "30", "--seed", "11", "--end-date", "2026-11-23", "-q", cwd=tmp_path
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.startswith("generated 30 firms") and len(done.stdout.splitlines()) == 1
    assert (tmp_path / "data" / "sources" / "manifest.json").exists()  # the default, in the working folder


def test_failure_and_usage_exit_codes(tmp_path: Path) -> None:
    failed = credit("run", "--sources", "nowhere", "--lake", "lake", "-q", "--json", cwd=tmp_path)
    assert failed.returncode == EXIT_FAILED
    assert failed.stdout == ""  # a failed command prints no result a script could take for one
    assert failed.stderr.startswith("credit run: error: ") and len(failed.stderr.splitlines()) == 1
    usage = credit("run", "--date", "23/11/2026", cwd=tmp_path)
    assert usage.returncode == EXIT_USAGE and "not a date" in usage.stderr and usage.stdout == ""


def test_json_flag_is_offered_by_each_command_that_prints_a_result() -> None:
    commands = dict(parsers(build_parser()))
    for path in (
        "credit generate",
        "credit run",
        "credit evaluate",
        "credit export",
        "credit link",
        "credit token create",
        "credit token revoke",
    ):
        assert any(a.help == JSON_HELP for a in commands[path]._actions), path


@pytest.mark.parametrize("code", list(EXIT_CODES))
def test_readme_documents_each_exit_code(code: int) -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    section = readme.split("Exit codes", 1)[1].split("\n## ", 1)[0]
    assert re.search(rf"^\| `{code}` \|", section, re.MULTILINE), f"README's exit codes lack {code}"


def test_settings_are_found_in_one_place_with_their_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation import settings

    for path in sorted(settings.CONFIG_DIR.glob("*.toml")):
        assert settings.config_path(path.name) == path
        own = tmp_path / path.name
        monkeypatch.setenv(settings.config_env(path.name), str(own))
        with pytest.raises(FileNotFoundError, match=settings.config_env(path.name)):
            settings.config_path(path.name)  # a mistyped override is an error, not a silent default
        own.write_text("", "utf-8")
        assert settings.config_path(path.name) == own
    # the names the README and existing deployments use
    assert settings.config_env("sources.toml") == "CREDIT_SOURCES_CONFIG"
    assert settings.config_env("disclosure.toml") == "CREDIT_DISCLOSURE_CONFIG"
    assert settings.config_env("resolution.toml") == "CREDIT_RESOLUTION_CONFIG"
    monkeypatch.setenv(settings.EXPECTATIONS_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=settings.EXPECTATIONS_ENV):
        settings.expectation_dirs()
    monkeypatch.setenv(settings.EXPECTATIONS_ENV, str(tmp_path))
    assert settings.expectation_dirs() == [tmp_path, settings.EXPECTATIONS_DIR]
    with pytest.raises(ValueError, match="unknown settings folder"):
        settings.bundled_folder("data")


def test_no_module_but_settings_builds_a_path_to_config_or_expectations() -> None:
    joins = re.compile(r"""(/\s*|Path\(\s*)["'](config|expectations)["'/]""")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("foundation", "pipelines", "serving", "entity_resolution", "dags")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != "settings.py"
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if joins.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == [], "ask foundation.settings for settings paths"


def test_token_commands_answer_in_json(tmp_path: Path) -> None:
    from datetime import datetime

    created = credit(
        "token",
        "create",
        "--role",
        "public",
        "--name",
        "portal",
        "--expires",
        "30",
        "--lake",
        "lake",
        "--json",
        cwd=tmp_path,
    )
    assert created.returncode == EXIT_OK, created.stderr
    document = json.loads(created.stdout)
    assert document["token"].startswith("cr_") and document["role"] == "public"
    assert datetime.fromisoformat(document["expires"]) > datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    revoked = json.loads(credit("token", "revoke", "portal", "--lake", "lake", "--json", cwd=tmp_path).stdout)
    assert revoked["name"] == "portal" and datetime.fromisoformat(revoked["revoked"])


def test_settings_import_only_the_standard_library() -> None:
    """The DAG file asks foundation.settings where the source registry is while Airflow parses it."""
    import ast

    tree = ast.parse((REPO / "foundation" / "settings.py").read_text("utf-8"))
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).partition(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
