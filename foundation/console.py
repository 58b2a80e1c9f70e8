"""What every ``credit`` command shares on the console: the exit codes, ``--json``, how a result is
printed, and the argument types. Here, below the command line, so that the commands of
``entity_resolution`` and ``serving`` use them without importing ``pipelines.cli``, which imports
them to register their commands.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import date
from typing import Any

#: every exit status ``credit`` uses, and what it means (the --help epilog and the README show these)
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "the command failed; stderr says why in one line (-v for the trace): bad input, a missing file, "
    "a run stopped by a data-quality failure",
    2: "usage error (an unknown option, a bad or missing value); `credit audit verify`: the audit trail "
    "is not intact",
    130: "interrupted (Ctrl-C)",
}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = EXIT_CODES
JSON_HELP = "print the result as one JSON document on stdout (progress and messages go to stderr)"


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` flag of a command that prints a result."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def emit(args: argparse.Namespace, document: Any, text: str) -> None:
    """Print a command's result: ``document`` as JSON with --json, else ``text`` for people."""
    if getattr(args, "json", False):
        print(json.dumps(document, ensure_ascii=False, indent=2, default=_json_value))
    else:
        print(text)


def _json_value(value: Any) -> str:
    """Dates and times in ISO 8601 (what scripts parse), anything else as its text (paths)."""
    return value.isoformat() if isinstance(value, date) else str(value)


def key_values(mapping: Mapping[str, Any]) -> str:
    """Aligned ``key  value`` lines of a flat mapping, for people."""
    width = max((len(key) for key in mapping), default=0)
    return "\n".join(f"{key.ljust(width)}  {_number(value)}" for key, value in mapping.items())


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
