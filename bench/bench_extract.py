"""Benchmark: the file-source extraction (read, parse, check, write raw) on a generated set.

    .venv/bin/credit generate --entities 100000 --seed 7 --out /tmp/src100k
    .venv/bin/python bench/bench_extract.py --sources /tmp/src100k [--repeat 3] [--copies 1]

``--copies N`` repeats each file's records N times (under new ids) to measure a larger delivery.
Prints, per file source, the best of ``--repeat`` runs: records, seconds and records per second.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from pipelines.sources.extract import extract
from pipelines.sources.registry import load_sources


def _enlarge(path: Path, copies: int, encoding: str, header: bool) -> None:
    """The file's records repeated ``copies`` times (bytes only: ids repeat, parsing cost is real)."""
    data = path.read_bytes()
    if copies <= 1:
        return
    head, _, body = data.partition(b"\n") if header else (b"", b"", data)
    path.write_bytes((head + b"\n" if header else b"") + body * copies)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", type=Path, required=True, help="a folder made by `credit generate`")
    parser.add_argument("--repeat", type=int, default=3, help="runs per source (the best is reported)")
    parser.add_argument("--copies", type=int, default=1, help="repeat each file's records this many times")
    args = parser.parse_args()
    cutoff = datetime(2100, 1, 1)
    total_rows, total_seconds = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for source in (s for s in load_sources().values() if s.kind == "file"):
            copy = work / "sources" / source.path
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.file_path(args.sources), copy)
            _enlarge(copy, args.copies, source.encoding, source.format == "csv")
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                result = extract(source, work / "sources", work / f"{source.name}.parquet", cutoff)
                best = min(best, time.perf_counter() - start)
            records = result.rows + result.rejects
            total_rows, total_seconds = total_rows + records, total_seconds + best
            print(
                f"{source.name:<16} {records:>10,} records {best:8.2f} s {records / best:>12,.0f} records/s"
            )
    print(
        f"{'file sources':<16} {total_rows:>10,} records {total_seconds:8.2f} s {total_rows / total_seconds:>12,.0f} records/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
