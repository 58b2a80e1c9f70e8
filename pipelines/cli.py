"""The ``credit`` command line: run the pipeline, evaluate linkage, export, serve.

Commands of other installed distributions join through the ``credit.commands`` entry-point group
(``credit generate`` comes with the synthetic source systems, ``credit-synthetic``).

Unix manners: results on stdout (``--json``: one JSON document and nothing else), progress bars,
logs and error messages on stderr, and the exit codes in ``EXIT_CODES`` (shown by ``credit --help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from foundation.console import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_json_option,
    emit,
    iso_date,
    key_values,
)
from foundation.lake import DEFAULT_LAKE, DEFAULT_SOURCES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once, and only when it says something (not None, False or empty),
    leaving help texts that already explain their default alone."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action) or text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Wrap each line of a description or epilog on its own, keeping the lines (the exit codes)."""
        lines = []
        for line in text.splitlines():
            hanging = " " * (len(line) - len(line.lstrip()) + (5 if line[:1] == " " else 0))
            lines.append(
                textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + hanging)
            )
        return "\n".join(lines)


class CreditParser(argparse.ArgumentParser):
    """Every ``credit`` (sub)command's parser: one help format everywhere, whichever formatter a
    module that registers commands asks for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


def installed_version() -> str:
    """This package's version from the installed distribution's metadata (pyproject.toml's, once built)."""
    from importlib import metadata

    package = (__package__ or __name__).partition(".")[0]  # "pipelines", also under `python -m`
    for distribution in metadata.packages_distributions().get(package, []):
        return f"{metadata.version(distribution)} ({distribution})"
    return "unknown (not installed: run from a checkout without `pip install`)"


class VersionAction(argparse.Action):
    """``--version``, reading the metadata only when asked (it scans the installed distributions)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the installed version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{parser.prog} {installed_version()}")  # on stdout, like argparse's own "version" action
        parser.exit()


def default_business_date(sources_dir: Path) -> str:
    """The generated data's end date when known, else yesterday."""
    manifest = sources_dir / "manifest.json"
    if manifest.exists():
        end = json.loads(manifest.read_text("utf-8")).get("end_date")
        if end:
            return str(end)
    return (date.today() - timedelta(days=1)).isoformat()


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.flow import run_all

    sources = Path(args.sources)
    business_date = args.date or default_business_date(sources)
    results = run_all(
        str(sources),
        args.lake,
        business_date,
        run_id=args.run_id,
        progress=not args.quiet,
        full_relink=args.full_relink,
    )
    published = results["publish"]
    grades = results["publish"]["grades"]
    summary = {
        "business_date": business_date,
        **published,
        "resolution": results["resolve entities"],
        "grades": grades,
    }
    emit(
        args,
        summary,
        f"published {published['version']}: {published['profiles']:,} profiles "
        f"(grades {', '.join(f'{grade} {count:,}' for grade, count in grades.items())})\n"
        f"profiles: {Path(args.lake) / 'published' / 'current' / 'profiles'}\n"
        f"report:   {published['report']}",
    )
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    import polars as pl

    from entity_resolution.evaluate import evaluate

    def read(path: str) -> pl.DataFrame:
        folder = Path(path)
        return pl.read_parquet(folder / "*.parquet" if folder.is_dir() else folder)

    truth = read(args.truth)
    links = read(args.links)
    if "record_id" in links.columns and "source_record_id" not in truth.columns:
        key: tuple[str, ...] = ("record_id",)
    else:
        key = ("source", "source_record_id")
    scores = evaluate(links, truth, key=key).as_dict()
    emit(args, scores, key_values(scores))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.profiles.export import export_profiles, select_profiles

    version_dir = Path(args.lake) / "published" / (args.version or "current")
    if not (version_dir / "profiles").is_dir():
        raise FileNotFoundError(f"no published profiles at {version_dir}")
    frame = select_profiles(
        version_dir / "profiles", grades=args.grade, lists=args.list, divisions=args.division
    )
    rows = export_profiles(frame, Path(args.out), header=args.header)
    version = version_dir.resolve().name
    emit(
        args,
        {"profiles": rows, "version": version, "out": args.out},
        f"exported {rows:,} profiles from {version} to {args.out}",
    )
    return EXIT_OK


def cmd_dictionary(args: argparse.Namespace) -> int:
    from pipelines.publish.datadict import published_schemas, render_markdown, write_dictionary

    target = Path(args.out)
    if args.check:
        fresh = render_markdown(published_schemas())
        if not target.exists() or target.read_text("utf-8") != fresh:
            print(f"{target} is stale: run `credit dictionary --out {target}`", file=sys.stderr)
            return EXIT_FAILED
        print(f"{target} is up to date")
        return EXIT_OK
    write_dictionary(target)
    print(f"wrote {target}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = CreditParser(
        prog="credit",
        description="Enterprise credit-information integration: six departmental sources in, "
        "one credit profile per firm out (Parquet). Results go to stdout (--json: JSON only), "
        "progress and messages to stderr.",
        epilog="exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log each stage's details, and show the trace of an error",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the whole pipeline in-process (the same stages as the Airflow DAG)",
        description="Extract, standardise, validate, resolve, build profiles, validate and publish one business "
        "date. Profiles appear in LAKE/published/current/profiles/.",
    )
    run.add_argument("--sources", default=str(DEFAULT_SOURCES), help="folder of the source systems")
    run.add_argument("--lake", default=str(DEFAULT_LAKE), help="lake folder (raw, staged, published, ...)")
    run.add_argument(
        "--date",
        type=iso_date,
        default=None,
        help="business date to process (default: the generated data's end date, else yesterday)",
    )
    run.add_argument("--run-id", default=None, help="run identifier recorded in the manifest")
    run.add_argument(
        "--full-relink",
        action="store_true",
        help="re-link the whole snapshot instead of only the night's changes (config/resolution.toml "
        "full_relink_weekdays does it on set weekdays)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_json_option(run)
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser(
        "evaluate",
        help="score links against the generator's truth (pairwise and B-cubed)",
    )
    ev.add_argument(
        "--links",
        required=True,
        help="Parquet file or folder with source, source_record_id, entity_id "
        "(e.g. LAKE/published/current/links)",
    )
    ev.add_argument("--truth", required=True, help="Parquet with source, source_record_id, entity_key")
    add_json_option(ev)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser(
        "export",
        help="write a slice of the published profiles to CSV or Excel",
        description="Filters combine with AND; repeat an option to allow several values (OR).",
    )
    ex.add_argument("--lake", default=str(DEFAULT_LAKE), help="lake folder holding published/")
    ex.add_argument("--out", required=True, help="target file: .csv (UTF-8 with BOM) or .xlsx")
    # the grades and lists grading.toml defines
    from foundation.grading import list_labels, load_grading

    grades = [g["grade"] for g in sorted(load_grading()["grades"], key=lambda g: -g["min_score"])]
    ex.add_argument("--grade", action="append", choices=grades, help="keep these grades")
    ex.add_argument(
        "--list",
        action="append",
        choices=list(list_labels()),
        help="keep firms on this list: "
        + "; ".join(f"{name} {zh} ({en})" for name, (zh, en) in list_labels().items()),
    )
    ex.add_argument(
        "--division",
        action="append",
        help="keep firms whose division code starts with this (e.g. 3302 for 宁波)",
    )
    ex.add_argument("--version", default=None, help="a published version instead of current")
    from pipelines.profiles.export import HEADERS

    ex.add_argument(
        "--header",
        choices=HEADERS,
        default=HEADERS[0],
        help="column headers: labels, the data dictionary's Chinese label and unit with shares in %% "
        "(贷款金额（元）), for people; names, the column names and values as published "
        "(lending_amount), for scripts",
    )
    add_json_option(ex)
    ex.set_defaults(func=cmd_export)

    from pipelines.publish.datadict import DICTIONARY_FILE

    dd = sub.add_parser(
        "dictionary",
        help="generate the data dictionary of the published tables (Markdown)",
        description="From config/profile_columns.toml, config/published_columns.toml and the "
        "published column types; --check fails (exit 1) when the file differs from what would be generated.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    dd.add_argument("--out", default=str(DICTIONARY_FILE), help="the Markdown file to write or check")
    dd.add_argument("--check", action="store_true", help="only check that --out is up to date")
    dd.set_defaults(func=cmd_dictionary)

    from entity_resolution.cli import register as register_link_commands
    from serving.cli import register as register_service_commands

    register_link_commands(sub)
    register_service_commands(sub)
    register_installed_commands(sub)
    return parser


#: the entry-point group through which other distributions add commands: ``name = "module:register"``,
#: ``register(subparsers)`` adding the command ``name``
COMMANDS_GROUP = "credit.commands"
#: commands that come with another distribution, and how to get it when it is missing
OPTIONAL_COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "write six realistic departmental source systems and their truth",
        "the synthetic source systems are not installed: `pip install -e ./synthetic` in a checkout "
        "(`make venv` does it), or install the credit-synthetic wheel next to this package",
    ),
}


def register_installed_commands(sub: argparse._SubParsersAction) -> None:
    """Add the commands installed distributions register in ``COMMANDS_GROUP``; an optional command
    none of them provides stays listed, and says how to get it."""
    from importlib.metadata import entry_points

    registered: set[str] = set()
    broken: dict[str, str] = {}  # metadata says installed, yet the code is not importable
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if entry.name in sub.choices:
            continue
        try:
            register = entry.load()
        except ImportError as exc:
            broken[entry.name] = f" ({entry.value} is registered but cannot be imported: {exc})"
            continue
        register(sub)
        registered.add(entry.name)
    for name, (purpose, remedy) in OPTIONAL_COMMANDS.items():
        if name not in registered:
            remedy += broken.get(name, "")
            missing = sub.add_parser(name, help=f"{purpose} (not installed)", description=remedy)
            missing.set_defaults(func=_not_installed(name, remedy), accepts_any_arguments=True)


def _not_installed(name: str, remedy: str) -> Any:
    def command(args: argparse.Namespace) -> int:
        print(f"credit {name}: error: {remedy}", file=sys.stderr)
        return EXIT_FAILED

    return command


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (EXIT_CODES), argparse exits 2 itself on a usage error."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_any_arguments", False):
        parser.parse_args(argv)  # exits 2, naming the arguments it does not know
    logging.basicConfig(  # to stderr: stdout holds only the result
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"credit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`credit ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - one clear line for people, the trace with -v
        if args.verbose:
            raise
        print(f"credit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
