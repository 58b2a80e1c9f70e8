"""bench/bench_pipeline.py's own guard: one benchmark per work directory. Two runs on one directory
share the stage worker's output files and the kept lakes, so the second would break the first's
stages (a run on 2026-11-28 failed so, its stage's output read as another's) and each would time
the other's load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_pipeline import LOCK_FILE, ROOT, hold_workdir


def test_a_second_benchmark_on_one_work_directory_is_refused(tmp_path: Path) -> None:
    held = hold_workdir(tmp_path)
    try:
        with pytest.raises(SystemExit, match=f"another benchmark is running in {tmp_path}"):
            hold_workdir(tmp_path)
        # from another process, as a second benchmark starts: refused before it touches anything
        second = subprocess.run(
            [sys.executable, "bench/bench_pipeline.py", "--workdir", str(tmp_path), "--entities", "10"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert "another benchmark is running in" in second.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
    finally:
        held.close()
    # the first run gone (its process ended, however), the directory is free again
    hold_workdir(tmp_path).close()
