"""`make run`: generate a demo dataset if none exists, run the real DAG for its last nights, print
what each night did.

The data is generated as departments send it (``credit_synthetic.generate``: a few bad records in every
source, and a bad court delivery on the last day), over two days, so the two nightly runs show
quarantine by reason, a held-back batch carried forward and books that still balance. The DAG runs
through `airflow dags test`, the same code path as a scheduled run, with the repository as
AIRFLOW_HOME and the SQLite metadata database beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from credit_synthetic.generate import generate
from foundation.lake import REPO_ROOT, Lake
from pipelines.cli import default_business_date
from pipelines.publish.report import quarantine_reasons


def _airflow(*args: str) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(REPO_ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    subprocess.run([str(airflow), *args], check=True, env=env, cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=2, help="days of data, one nightly run per day")
    args = parser.parse_args(argv)

    if not (args.sources / "manifest.json").exists():
        print(f"generating {args.entities} firms over {args.days} days into {args.sources} ...", flush=True)
        generate(args.sources, entities=args.entities, seed=args.seed, days=args.days, progress=True)
    manifest = json.loads((args.sources / "manifest.json").read_text("utf-8"))
    last = date.fromisoformat(default_business_date(args.sources))
    nights = [last - timedelta(days=back) for back in reversed(range(int(manifest.get("days", 1))))]
    _airflow("db", "migrate")
    for night in nights:
        business_date = night.isoformat()
        conf = {"sources_dir": str(args.sources), "lake_dir": str(args.lake), "business_date": business_date}
        _airflow(
            "dags",
            "test",
            "credit_nightly",
            (night + timedelta(days=1)).isoformat(),
            "--conf",
            json.dumps(conf),
        )
        _print_night(args.lake, business_date)

    current = args.lake / "published" / "current"
    grades = (
        pl.scan_parquet(current / "profiles" / "*.parquet").group_by("grade").len().sort("grade").collect()
    )
    print("grades          " + ", ".join(f"{g}={n:,}" for g, n in grades.iter_rows()))
    print(f"published at    {current}/profiles/  (links in {current}/links/)")
    return 0


def _print_night(lake: Path, business_date: str) -> None:
    """One night: per source what was extracted, accepted, quarantined or held back; the
    quarantine by reason as the run's report groups it; the books."""
    summary = json.loads((lake / "reports" / business_date / "summary.json").read_text("utf-8"))
    print(f"\n== credit_nightly {business_date}: version {summary['version']} ==")
    for name, counts in summary["sources"].items():
        held = "  HELD BACK, last good snapshot carried forward" if counts.get("stale") else ""
        print(
            f"  {name:<17} extracted {counts['extracted']:>9,}  accepted {counts['accepted']:>9,}"
            f"  quarantined {counts['quarantined']:>7,}{held}"
        )
        for problem in (counts.get("problems") or [])[:1]:
            print(f"  {'':<17} {problem}")
    reasons = quarantine_reasons(Lake(lake, business_date), list(summary["sources"]))
    if reasons:
        print("quarantine by reason")
        for reason, count in reasons:
            print(f"  {count:>7,.0f}  {reason}")
    books = summary["books"]
    print(
        f"books           {'balanced' if books.get('balanced') else 'NOT balanced: ' + str(books.get('problems'))}"
    )
    print(
        f"profiles        {summary['profiles']:,}   report: {lake / 'reports' / business_date / 'report.html'}"
    )


if __name__ == "__main__":
    sys.exit(main())
