"""`credit link`: link any tabular records with a spec (see entity_resolution/specs/)."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import date
from pathlib import Path

from entity_resolution.spec import LINK_TYPES
from foundation.console import add_json_option, emit, key_values


def read_inputs(paths: list[str], source_column: str | None = None):  # noqa: ANN201 - a Polars frame
    """The --input files as one frame; with ``source_column`` (a link-only spec) each record says
    which input it came from (0, 1)."""
    import polars as pl

    frames = []
    for index, path in enumerate(paths):
        folder = Path(path)
        frame = pl.read_parquet(folder / "*.parquet" if folder.is_dir() else folder)
        if source_column:
            frame = frame.with_columns(pl.lit(str(index)).alias(source_column))
        frames.append(frame)
    return pl.concat(frames, how="diagonal_relaxed")


def cmd_link(args: argparse.Namespace) -> int:
    import polars as pl

    from entity_resolution.engine import link
    from entity_resolution.registry import KEYED_COLUMNS, Registry
    from entity_resolution.review import read_decisions, write_review
    from entity_resolution.spec import load_spec
    from foundation.lake import write_parquet

    spec = load_spec(args.spec)
    if args.link_type:
        spec = dataclasses.replace(spec, link_type=args.link_type)
    if spec.link_only and len(args.input) != 2:
        raise SystemExit(
            f"spec {spec.name!r} is link_only: give exactly two --input files, not {len(args.input)}"
        )
    records = read_inputs(args.input, spec.source_column if spec.link_only else None)
    must, cannot = read_decisions(Path(args.decisions)) if args.decisions else ([], [])
    registry = Registry(Path(args.registry)) if args.registry else None
    anchors = registry.anchors() if registry else None
    to_link = records
    if registry and args.incremental:
        reps = registry.representatives()
        if reps is not None:
            known = set(anchors or {})
            fresh = records.filter(~pl.col(spec.id_column).is_in(list(known)))
            reps = reps.rename({"record_id": spec.id_column}).drop("entity_id", *KEYED_COLUMNS, strict=False)
            to_link = pl.concat(
                [fresh, reps.filter(~pl.col(spec.id_column).is_in(fresh[spec.id_column].implode()))],
                how="diagonal_relaxed",
            )
    result = link(
        to_link,
        spec,
        must_link=must,
        cannot_link=cannot,
        anchors=anchors,
        fixed_anchors=bool(registry and args.incremental),
    )
    links = result.links.filter(pl.col(spec.id_column).is_in(records[spec.id_column].implode()))
    changes = None
    run = args.run or date.today().isoformat()
    if registry:
        changes = registry.update(links, records, run, id_column=spec.id_column, partial=args.incremental)
    if registry and args.incremental:  # records seen before keep the entity the registry holds
        missing = records.select(spec.id_column).join(
            links.select(spec.id_column), on=spec.id_column, how="anti"
        )
        held = registry.members().rename({"record_id": spec.id_column}).join(missing, on=spec.id_column)
        held = held.select(
            spec.id_column,
            pl.col("entity_id").map_elements(registry.resolve_id, return_dtype=pl.String),
            pl.lit(1.0).alias("match_confidence"),
            pl.lit(None, pl.String).alias("match_grade"),
            pl.lit(None, pl.String).alias("match_rule"),
        )
        links = pl.concat([links, held], how="vertical_relaxed").sort(spec.id_column)
    write_parquet(links, Path(args.out))
    review_path = write_review(result.review, Path(args.review), run) if args.review else None
    summary = {
        **result.stats,
        "out": args.out,
        "review": str(review_path) if review_path else None,
        "registry_changes": changes.height if changes is not None else None,
    }
    emit(args, summary, key_values({key: value for key, value in summary.items() if value is not None}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "link",
        help="link records into entities with a declarative spec (Fellegi-Sunter, EM)",
        description="Writes record_id, entity_id, match_confidence (0-1) and match_grade (one letter per "
        "comparison: A same, B similar, F different, Z missing).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--spec", required=True, help="a spec TOML, or the name of one in entity_resolution/specs"
    )
    parser.add_argument("--input", action="append", required=True, help="Parquet file or folder (repeatable)")
    parser.add_argument("--out", required=True, help="the links Parquet file to write")
    parser.add_argument(
        "--link-type",
        choices=LINK_TYPES,
        help="override the spec's link_type: link_only links two --input files, each record to at most "
        "one record of the other",
    )
    parser.add_argument("--registry", help="folder of the stable-id registry (ids survive across runs)")
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="link only records the registry has not seen, against its representatives",
    )
    parser.add_argument("--review", help="folder for the review queue (pairs between the thresholds)")
    parser.add_argument("--decisions", help="a steward's decision file (record_id_l, record_id_r, decision)")
    parser.add_argument("--run", help="run label for the registry history and review file (default: today)")
    add_json_option(parser)
    parser.set_defaults(func=cmd_link)
