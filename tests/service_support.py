"""Shared set-up for the query-service tests: a published lake with two versions and a running
`credit serve` (a real uvicorn process on a free loopback port)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
DAYS = ("2026-11-22", "2026-11-23")


def build_lake(root: Path, entities: int = 1500) -> tuple[Path, Path]:
    from pipelines import stages
    from pipelines.generate import generate

    sources, lake = root / "sources", root / "lake"
    generate(sources, entities=entities, seed=17, days=2, end_date=date(2026, 11, 23))
    for day in DAYS:
        stages.run_all(str(sources), str(lake), day, run_id=f"service-{day}")
    return sources, lake


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def credit(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextmanager
def serving(lake: Path, config: Path | None = None):
    """Run `credit serve` until the block ends; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--lake", str(lake), "--port", str(port)]
    if config:
        command += ["--config", str(config)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).json().get("ok"):
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"credit serve did not start: {process.stderr.read()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
