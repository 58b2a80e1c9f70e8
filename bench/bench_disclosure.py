"""Benchmark: what the public view costs the query service.

Builds (or reads) a published lake, repeats its profiles to about a million rows, adds itemised
deductions in the shape profiles will carry, and times

1. the per-role gates a version computes once at load (visibility, grade, score, lists);
2. one profile and a 200-row list page through the public view, for enterprises and for
   individual businesses (whose lending domain is withheld and whose score is recomputed).

    .venv/bin/python bench/bench_disclosure.py [--lake bench/out/lake-20000] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

from serving.disclosure import load_policy
from serving.store import _gates


def _timed(repeat: int, work: callable) -> float:
    """Mean milliseconds of ``work``."""
    started = time.perf_counter()
    for _ in range(repeat):
        work()
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, help="a lake with a published version (else one is built)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    lake = args.lake
    if lake is None:
        from credit_synthetic.generate import generate
        from pipelines import flow

        root = Path(tempfile.mkdtemp(prefix="bench-disclosure-"))
        generate(root / "sources", entities=3000, seed=7, end_date=date(2026, 11, 23))
        flow.run_all(str(root / "sources"), str(root / "lake"), "2026-11-23", run_id="bench")
        lake = root / "lake"
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    big = pl.concat([profiles] * max(1, args.rows // profiles.height)).rechunk()
    views = load_policy().views.values()
    seconds = _timed(1, lambda: _gates(big, views)) / 1000
    print(f"gates at load for {big.height:,} profiles: {seconds:.2f} s")
    public = load_policy().view("public")
    for entity_type in ("enterprise", "individual business"):
        rows = profiles.filter(pl.col("entity_type") == entity_type)
        one, page = rows.head(1), pl.concat([rows] * (200 // rows.height + 1)).head(200)
        print(
            f"{entity_type}: one profile {_timed(200, lambda one=one: public.rows(one)):.2f} ms, "
            f"a 200-row page {_timed(20, lambda page=page: public.rows(page)):.1f} ms"
        )


if __name__ == "__main__":
    main()
