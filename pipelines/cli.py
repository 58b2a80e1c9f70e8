"""The ``credit`` command line: generate source systems, run the pipeline, evaluate linkage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import date, timedelta
from pathlib import Path

from pipelines._vocab import FAULT_LEVELS
from pipelines.lake import DEFAULT_LAKE, DEFAULT_SOURCES


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _faults(text: str) -> str:
    """``--faults``: checked here so a typo is a usage error, not a traceback."""
    from pipelines.generate import fault_share

    try:
        fault_share(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def default_business_date(sources_dir: Path) -> str:
    """The generated data's end date when known, else yesterday."""
    manifest = sources_dir / "manifest.json"
    if manifest.exists():
        end = json.loads(manifest.read_text("utf-8")).get("end_date")
        if end:
            return str(end)
    return (date.today() - timedelta(days=1)).isoformat()


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.generate import generate

    urls = {
        name: url
        for name, url in (
            ("lending", args.lending_url),
            ("social_insurance", args.social_insurance_url),
            ("tax", args.tax_url),
        )
        if url
    }
    manifest = generate(
        Path(args.out),
        entities=args.entities,
        seed=args.seed,
        days=args.days,
        end_date=date.fromisoformat(args.end_date) if args.end_date else None,
        db_urls=urls or None,
        progress=not args.quiet,
        faults=args.faults,
    )
    print(json.dumps(manifest, ensure_ascii=False, indent=2, default=str))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.stages import run_all

    sources = Path(args.sources)
    business_date = args.date or default_business_date(sources)
    results = run_all(str(sources), args.lake, business_date, run_id=args.run_id, progress=not args.quiet)
    published = results["publish"]
    print(
        json.dumps(
            {
                "business_date": business_date,
                **published,
                "resolution": results["resolve entities"],
                "grades": results["build profiles"]["grades"],
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    print(f"profiles: {Path(args.lake) / 'published' / 'current' / 'profiles'}")
    return 0


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
    scores = evaluate(links, truth, key=key)
    print(json.dumps(scores.as_dict(), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.export import export_profiles, select_profiles

    version_dir = Path(args.lake) / "published" / (args.version or "current")
    if not (version_dir / "profiles").is_dir():
        raise FileNotFoundError(f"no published profiles at {version_dir}")
    frame = select_profiles(
        version_dir / "profiles", grades=args.grade, lists=args.list, divisions=args.division
    )
    rows = export_profiles(frame, Path(args.out))
    print(f"exported {rows:,} profiles from {version_dir.resolve().name} to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credit",
        description="Enterprise credit-information integration: six departmental sources in, "
        "one credit profile per firm out (Parquet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage's details")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="write six realistic departmental source systems and their truth",
        description="Write lending and social-insurance databases (SQLAlchemy; SQLite files by default), a tax "
        "database, GBK court CSV, product-quality JSON Lines and 双公示 penalty CSV, plus DIR/truth/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("--entities", type=_positive, default=20_000, help="number of firms in the universe")
    gen.add_argument("--seed", type=int, default=7, help="random seed; same seed and settings, same data")
    gen.add_argument("--out", default=str(DEFAULT_SOURCES), help="folder to write the source systems into")
    gen.add_argument(
        "--days",
        type=_positive,
        default=1,
        help="spread updated_at over this many days ending at --end-date (new firms, renames, "
        "changed balances appear day by day for incremental runs)",
    )
    gen.add_argument("--end-date", type=_date, default=None, help="last day of data (default: yesterday)")
    gen.add_argument("--lending-url", help="SQLAlchemy URL for the lending database instead of a SQLite file")
    gen.add_argument("--social-insurance-url", help="SQLAlchemy URL for the social-insurance database")
    gen.add_argument("--tax-url", help="SQLAlchemy URL for the tax database")
    gen.add_argument(
        "--faults",
        type=_faults,
        default="default",
        help="bad records departments send, as validation quarantines them: "
        + ", ".join(
            f"{name} ({share * 100:g}%% of each source's records)" for name, share in FAULT_LEVELS.items()
        )
        + ", or a share between 0 and 1; none for clean data",
    )
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    gen.set_defaults(func=cmd_generate)

    run = sub.add_parser(
        "run",
        help="run the whole pipeline in-process (the same stages as the Airflow DAG)",
        description="Extract, standardise, validate, resolve, build profiles, validate and publish one business "
        "date. Profiles appear in LAKE/published/current/profiles/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--sources", default=str(DEFAULT_SOURCES), help="folder of the source systems")
    run.add_argument("--lake", default=str(DEFAULT_LAKE), help="lake folder (raw, staged, published, ...)")
    run.add_argument(
        "--date",
        type=_date,
        default=None,
        help="business date to process (default: the generated data's end date, else yesterday)",
    )
    run.add_argument("--run-id", default=None, help="run identifier recorded in the manifest")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser(
        "evaluate",
        help="score links against the generator's truth (pairwise and B-cubed)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument(
        "--links",
        required=True,
        help="Parquet file or folder with source, source_record_id, entity_id "
        "(e.g. LAKE/published/current/links)",
    )
    ev.add_argument("--truth", required=True, help="Parquet with source, source_record_id, entity_key")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser(
        "export",
        help="write a slice of the published profiles to CSV or Excel",
        description="Filters combine with AND; repeat an option to allow several values (OR).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ex.add_argument("--lake", default=str(DEFAULT_LAKE), help="lake folder holding published/")
    ex.add_argument("--out", required=True, help="target file: .csv (UTF-8 with BOM) or .xlsx")
    from pipelines.profiles import list_labels, load_grading  # the grades and lists grading.toml defines

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
    ex.set_defaults(func=cmd_export)

    from entity_resolution.cli import register as register_link_commands
    from serving.cli import register as register_service_commands

    register_link_commands(sub)
    register_service_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - one clear line for people, the trace with -v
        if args.verbose:
            raise
        print(f"credit {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
