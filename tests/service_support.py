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
import numpy as np

from tests.conftest import PublishedLakes

REPO = Path(__file__).resolve().parent.parent
DAYS = ("2026-11-22", "2026-11-23")


def build_lake(lakes: PublishedLakes, entities: int = 1500) -> tuple[Path, Path]:
    """A copy of generated sources and of the lake published from them over two nights (so the
    service has a version before the current one): (sources, lake)."""
    return lakes.lake(entities, seed=17, days=2, end_date=date(2026, 11, 23), nights=DAYS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_credit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `credit` command line, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def credit(*args: str) -> str:
    done = run_credit(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextmanager
def serving(lake: Path, config: Path | None = None, log: Path | None = None):
    """Run `credit serve` until the block ends; yields its base URL. With ``log``, the service's
    own log (stderr) goes to that file, for tests that check what it reports."""
    port = free_port()
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--lake", str(lake), "--port", str(port)]
    if config:
        command += ["--config", str(config)]
    stderr = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded CI machine starts it slowly
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).json().get("ok"):
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:  # too slow: stopped, so that what it said can be read to the end
                    process.kill()
                    process.wait(10)
                said = log.read_text() if log else process.stderr.read()
                raise RuntimeError(f"credit serve did not start: {said[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            stderr.close()


def first_page(pdf: Path, png: Path) -> np.ndarray:
    """The PDF's first page as a PNG (kept for people to look at) and as grey pixels (for the test)."""
    subprocess.run(
        [
            "pdftoppm",
            "-f",
            "1",
            "-l",
            "1",
            "-r",
            "80",
            "-png",
            "-singlefile",
            str(pdf),
            str(png.with_suffix("")),
        ],
        check=True,
    )
    grey = subprocess.run(
        ["pdftoppm", "-f", "1", "-l", "1", "-r", "40", "-gray", "-singlefile", str(pdf)],
        capture_output=True,
        check=True,
    ).stdout
    # PGM: "P5\n<width> <height>\n255\n" then one byte per pixel
    header = grey.split(b"\n", 3)
    width, height = map(int, header[1].split())
    return np.frombuffer(header[3], dtype=np.uint8)[: width * height].reshape(height, width)
