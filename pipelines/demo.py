"""`make run`: generate a demo dataset if none exists, run the real DAG once, print a summary.

The DAG runs through `airflow dags test`, the same code path as a scheduled run, with the
repository as AIRFLOW_HOME and the SQLite metadata database beside it.
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

from pipelines.cli import default_business_date
from pipelines.lake import REPO_ROOT


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
    args = parser.parse_args(argv)

    if not (args.sources / "manifest.json").exists():
        from pipelines.generate import generate

        print(f"generating {args.entities} firms into {args.sources} ...", flush=True)
        generate(args.sources, entities=args.entities, seed=args.seed, progress=True)
    business_date = default_business_date(args.sources)
    logical_date = (date.fromisoformat(business_date) + timedelta(days=1)).isoformat()
    conf = {"sources_dir": str(args.sources), "lake_dir": str(args.lake), "business_date": business_date}
    _airflow("db", "migrate")
    _airflow("dags", "test", "credit_nightly", logical_date, "--conf", json.dumps(conf))

    summary = json.loads((args.lake / "reports" / business_date / "summary.json").read_text("utf-8"))
    current = args.lake / "published" / "current"
    profiles = pl.scan_parquet(current / "profiles" / "*.parquet")
    grades = profiles.group_by("grade").len().sort("grade").collect()
    print("\n== credit_nightly finished ==")
    print(f"business date   {business_date}   version {summary['version']}")
    for name, counts in summary["sources"].items():
        print(
            f"  {name:<17} extracted {counts['extracted']:>9,}  accepted {counts['accepted']:>9,}"
            f"  quarantined {counts['quarantined']:>7,}"
        )
    print(
        f"profiles        {summary['profiles']:,}  grades "
        + ", ".join(f"{g}={n:,}" for g, n in grades.iter_rows())
    )
    print(f"published at    {current}/profiles/  (links in {current}/links/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
