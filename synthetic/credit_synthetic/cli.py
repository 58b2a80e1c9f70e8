"""``credit generate``: registered with the ``credit`` command line through the ``credit.commands``
entry-point group (synthetic/pyproject.toml), so the command exists wherever this package is
installed and nowhere else."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from datetime import date
from pathlib import Path

from credit_synthetic.vocab import DEFAULT_FAULTS, FAULT_LEVELS, NOISE_SETTINGS, noise_knobs, noise_setting
from foundation.console import EXIT_OK, add_json_option, emit, iso_date, positive_int
from foundation.lake import DEFAULT_SOURCES


def _faults(text: str) -> str:
    """``--faults``: checked here so a typo is a usage error, not a traceback."""
    from credit_synthetic.generate import fault_share

    try:
        fault_share(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _noise_override(text: str) -> tuple[str, str]:
    """``--noise-set KNOB=VALUE``: the knob and value checked here so a typo is a usage error."""
    knob, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KNOB=VALUE, got {text!r}")
    try:
        noise_setting("default", {knob.strip(): value.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return knob.strip(), value.strip()


def _knob_value(value: float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def _noise_help() -> tuple[str, str]:
    """The presets and knobs for ``credit generate --help``, from credit_synthetic.vocab (defined once)."""
    default = asdict(NOISE_SETTINGS["default"])
    presets = "; ".join(
        f"{name} (the generator as it always was; used without --noise)"
        if name == "default"
        else f"{name} ("
        + ", ".join(f"{k}={_knob_value(v)}" for k, v in asdict(preset).items() if v != default[k])
        + ")"
        for name, preset in NOISE_SETTINGS.items()
    )
    knobs = "; ".join(
        f"{knob} ({_knob_value(default[knob])}): {text}" for knob, text in noise_knobs().items()
    )
    return presets.replace("%", "%%"), knobs.replace("%", "%%")


def cmd_generate(args: argparse.Namespace) -> int:
    from credit_synthetic.generate import generate

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
        noise=noise_setting(args.noise, dict(args.noise_set)) if args.noise_set else args.noise,
    )
    rows = ", ".join(f"{source} {count:,}" for source, count in manifest["rows"].items())
    emit(
        args,
        manifest,
        f"generated {manifest['entities']:,} firms, {manifest['records']:,} records in {args.out} "
        f"(end date {manifest['end_date']}): {rows}; "
        f"{sum(n for kinds in manifest['faults'].values() for n in kinds.values()):,} bad records ({args.faults}); "
        f"noise {manifest['noise']['setting']}",
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``generate`` to the ``credit`` command line (the ``credit.commands`` entry point)."""
    gen = sub.add_parser(
        "generate",
        help="write six realistic departmental source systems and their truth",
        description="Write lending and social-insurance databases (SQLAlchemy; SQLite files by default), a tax "
        "database, GBK court CSV, product-quality JSON Lines and 双公示 penalty CSV, plus DIR/truth/.",
    )
    gen.add_argument("--entities", type=positive_int, default=20_000, help="number of firms in the universe")
    gen.add_argument("--seed", type=int, default=7, help="random seed; same seed and settings, same data")
    gen.add_argument("--out", default=str(DEFAULT_SOURCES), help="folder to write the source systems into")
    gen.add_argument(
        "--days",
        type=positive_int,
        default=1,
        help="spread updated_at over this many days ending at --end-date (new firms, renames, "
        "changed balances appear day by day for incremental runs)",
    )
    gen.add_argument("--end-date", type=iso_date, default=None, help="last day of data (default: yesterday)")
    gen.add_argument("--lending-url", help="SQLAlchemy URL for the lending database instead of a SQLite file")
    gen.add_argument("--social-insurance-url", help="SQLAlchemy URL for the social-insurance database")
    gen.add_argument("--tax-url", help="SQLAlchemy URL for the tax database")
    gen.add_argument(
        "--faults",
        type=_faults,
        default=DEFAULT_FAULTS,
        help="bad records departments send, as validation quarantines them: "
        + ", ".join(
            f"{name} ({share * 100:g}%% of each source's records)" for name, share in FAULT_LEVELS.items()
        )
        + ", or a share between 0 and 1; none for clean data",
    )
    presets, knobs = _noise_help()
    gen.add_argument(
        "--noise",
        choices=list(NOISE_SETTINGS),
        default="default",
        metavar="SETTING",
        help=f"how hard the records are to link (hard negatives, missing regions and codes): {presets}",
    )
    gen.add_argument(
        "--noise-set",
        type=_noise_override,
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help=f"override one knob of --noise (repeatable), e.g. --noise hard --noise-set missing_codes=0.4. "
        f"Shares are between 0 and 1; in brackets the value in the default setting: {knobs}",
    )
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_json_option(gen)
    gen.set_defaults(func=cmd_generate)
