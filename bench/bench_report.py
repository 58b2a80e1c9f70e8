"""Benchmark: what the firm page's credit report costs, through a real `credit serve`.

Times the report as the page fetches it (``format=html``: the profile, its records from the
accepted snapshot, the history, rendered) and printed (``format=pdf``: headless Chromium), as a
regulator (so every request is also audited).

    .venv/bin/python bench/bench_report.py --lake /path/to/lake [--html 60] [--pdf 6]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx
import polars as pl

from tests.service_support import credit, serving


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", required=True, help="a lake with a published version")
    parser.add_argument("--html", type=int, default=60, help="HTML reports to fetch")
    parser.add_argument("--pdf", type=int, default=6, help="PDF reports to print")
    args = parser.parse_args()
    lake = Path(args.lake)
    token = credit(
        "token", "create", "--role", "regulator", "--name", f"bench {time.time()}", "--lake", str(lake)
    )
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    codes = profiles.filter(pl.col("uscc").is_not_null())["uscc"].to_list()
    headers = {"Authorization": f"Bearer {token}"}
    with serving(lake) as base, httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        for kind, count in (("html", args.html), ("pdf", args.pdf)):  # one keep-alive connection, as a page
            times = []
            for code in codes[:count]:
                started = time.perf_counter()
                answer = client.get(f"/api/v1/profiles/{code}/report", params={"format": kind})
                times.append(time.perf_counter() - started)
                answer.raise_for_status()
            times.sort()
            print(
                f"{kind}: {len(times)} reports, p50 {1000 * statistics.median(times):.0f} ms, "
                f"max {1000 * times[-1]:.0f} ms"
            )


if __name__ == "__main__":
    main()
