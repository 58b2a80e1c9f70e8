"""Killing the publisher at any moment leaves `current` on a complete, verifiable version."""

from __future__ import annotations

import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipelines.publish.versions import current_version, verify_version

REPO = Path(__file__).resolve().parent.parent
PUBLISH_FOREVER = """
import sys
import polars as pl
from pipelines.publish.versions import publish_version
root, start = sys.argv[1], int(sys.argv[2])
n = 200_000
for i in range(start, start + 1000):
    ids = pl.int_range(n, eager=True).cast(pl.String) + f"-{i}"
    frames = {
        "profiles": pl.DataFrame({"entity_id": ids, "grade": ["A"] * n, "score": [900 + i % 100] * n}),
        "links": pl.DataFrame({"source": ["lending"] * n, "source_record_id": ids, "entity_id": ids}),
        "entities": pl.DataFrame({"entity_id": ids}),
    }
    day = f"2026-11-{1 + i % 28:02d}"
    publish_version(__import__("pathlib").Path(root), day, f"run-{i}", frames, {})
    print(i, flush=True)
"""


def next_publish(process: subprocess.Popen) -> None:
    """Wait until the publisher says it switched `current` once more (at most two minutes)."""
    ready, _, _ = select.select([process.stdout], [], [], 120)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        raise AssertionError(f"the publisher stopped or hung: {process.communicate()[1][-2000:]}")


def test_sigkill_during_publishing_never_exposes_a_partial_version(tmp_path: Path) -> None:
    rng = random.Random(20141770)
    seen_versions = set()
    for attempt in range(8):
        process = subprocess.Popen(
            [sys.executable, "-c", PUBLISH_FOREVER, str(tmp_path), str(attempt * 1000)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # one publish timed on this machine as loaded now, so the kill lands at a random moment inside
        # a later one however slow the machine is (a fixed sleep once ended every try before a switch)
        next_publish(process)
        switched = time.monotonic()
        next_publish(process)
        one_publish = time.monotonic() - switched
        time.sleep(rng.uniform(0.0, 1.5 * one_publish))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        link = tmp_path / "current"
        assert link.exists(), "current vanished after it had been published"
        version = current_version(tmp_path)
        manifest = verify_version(tmp_path / version)  # raises on any partial or mismatched file
        assert manifest["counts"]["profiles"] == 200_000
        seen_versions.add(version)
    assert len(seen_versions) >= 2, "the publisher never got far enough to switch versions"
    # the next publish clears what the killed ones left behind
    finish = subprocess.run(
        [sys.executable, "-c", PUBLISH_FOREVER.replace("start + 1000", "start + 1"), str(tmp_path), "9000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert not list(tmp_path.glob(".staging-*")) and not list(tmp_path.glob(".current-*"))
    verify_version(tmp_path / current_version(tmp_path))
