"""The review queue: pairs the model is unsure of, for a data steward to decide.

``write_review`` puts the pairs between the review and link thresholds, with their evidence (one
record of each side, the level of every comparison, the probability), in
``REVIEW_DIR/pairs-<run>.parquet``. A steward answers in a decision file (CSV or Parquet with
``record_id_l, record_id_r, decision`` = match | no_match); ``read_decisions`` turns it into the
must-link and cannot-link lists that the next run obeys.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from foundation.lake import write_parquet

DECISIONS = ("match", "no_match")


def write_review(review: pl.DataFrame, folder: Path, run: str) -> Path:
    target = folder / f"pairs-{run}.parquet"
    # (ties in the order given: the same file every run)
    write_parquet(review.sort("probability", descending=True, maintain_order=True), target)
    return target


def read_decisions(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(must_link, cannot_link) from a steward's decision file; a bad line is named, not skipped."""
    frame = pl.read_csv(path, infer_schema=False) if path.suffix.lower() == ".csv" else pl.read_parquet(path)
    missing = {"record_id_l", "record_id_r", "decision"} - set(frame.columns)
    if missing:
        raise ValueError(f"decision file {path}: missing columns {sorted(missing)}")
    frame = frame.with_row_index("line", offset=2).with_columns(
        pl.col("decision").str.strip_chars().str.to_lowercase()
    )
    bad = frame.filter(
        ~pl.col("decision").is_in(DECISIONS)
        | pl.col("record_id_l").is_null()
        | pl.col("record_id_r").is_null()
    )
    if bad.height:
        line, value = bad.select("line", "decision").row(0)
        raise ValueError(
            f"decision file {path}, line {line}: decision must be one of {DECISIONS} with both "
            f"record ids (got {value!r})"
        )
    pairs = {
        d: list(frame.filter(pl.col("decision") == d).select("record_id_l", "record_id_r").iter_rows())
        for d in DECISIONS
    }
    return pairs["match"], pairs["no_match"]
