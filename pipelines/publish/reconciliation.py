"""The books: what the accepted records add up to, and whether the night's profiles and links
reconcile with them (money to the cent, counts exactly) before anything is published.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import polars as pl

from foundation.lake import Lake
from pipelines.profiles.build import money
from pipelines.sources.snapshot import accepted_records

#: profile column -> (which accepted records, which value; None counts them): the totals that the
#: published profiles must reconcile with, to the cent
RECONCILED_TOTALS: dict[str, tuple[tuple[str, ...] | None, str | None]] = {
    "record_count": (None, None),
    "lending_loans": (("loan",), None),
    "lending_amount": (("loan",), "amount"),
    "lending_balance": (("loan",), "balance"),
    "tax_arrears_balance": (("tax_arrears",), "balance"),
    "contract_cases": (("dishonest_debtor", "enforcement", "contract_default"), None),
}


def accepted_totals(lake: Lake) -> dict[str, Decimal | int]:
    """What the accepted records add up to, per reconciled profile column: counts, and money summed
    exactly as the profiles sum it (``pipelines.profiles.build.money``: each record to the fen)."""
    return accepted_figures(lake)[0]


def accepted_figures(lake: Lake) -> tuple[dict[str, Decimal | int], dict[str, Any]]:
    """(``accepted_totals``, each source's newest ``updated_at``) in one pass over the snapshots:
    publish needs both, and the snapshots are the night's largest input."""
    wanted = []
    for column, (types, value) in RECONCILED_TOTALS.items():
        if types is None:
            wanted.append(pl.len().alias(column))
            continue
        rows = pl.col("record_type").is_in(list(types))
        total = money(pl.col(value).fill_null(0)).filter(rows).sum() if value else rows.sum()
        wanted.append(total.alias(column))
    per_source = (
        accepted_records(lake)
        .group_by("source")
        .agg(*wanted, pl.col("updated_at").max())
        .sort("source")
        .collect()
    )
    totals = per_source.select(pl.col(c).sum() for c in RECONCILED_TOTALS).row(0, named=True)
    newest = dict(per_source.select("source", "updated_at").iter_rows())
    return {k: v if v is not None else 0 for k, v in totals.items()}, newest


def reconcile(
    lake: Lake,
    profiles: pl.DataFrame,
    links: pl.DataFrame,
    validation: dict[str, dict[str, Any]],
    expected: dict[str, Decimal | int] | None = None,
) -> dict[str, Any]:
    """The books: per source extracted = accepted + quarantined, one link per snapshot record, and
    the profiles' totals equal to the accepted records' (money exactly, as decimals; counts exactly;
    ``expected``: ``accepted_totals``, when the caller has them)."""
    problems = []
    for name, counts in validation.items():
        if counts["extracted"] != counts["accepted"] + counts["quarantined"]:
            problems.append(
                f"source '{name}': extracted {counts['extracted']} != accepted {counts['accepted']} "
                f"+ quarantined {counts['quarantined']}"
            )
    snapshot_records = sum(v["snapshot_records"] for v in validation.values())
    if links.height != snapshot_records:
        problems.append(f"{snapshot_records} accepted records but {links.height} links")
    expected = accepted_totals(lake) if expected is None else expected
    totals: dict[str, Any] = {}
    for column in RECONCILED_TOTALS:
        published = profiles[column].fill_null(0).sum()
        totals[column] = {
            "records": round(float(expected[column]), 2),
            "profiles": round(float(published), 2),
        }
        if expected[column] != published:
            problems.append(
                f"{column}: accepted records hold {expected[column]:,} but profiles {published:,}"
            )
    return {
        "balanced": not problems,
        "problems": problems,
        "totals": totals,
        "snapshot_records": snapshot_records,
        "links": links.height,
        "profiles": profiles.height,
    }
