"""Benchmark: a well-behaved client's lookups while the query service is under attack (loopback).

Starts `credit serve` with the repository's settings (config/service.toml: its workers and
limits) over a published lake, then, each attacker in its own process and from its own loopback
address (Linux routes all of 127/8 to the loopback interface):

- 127.0.0.2 slowloris: keeps up to --slowloris connections open, each with half a request whose
  header grows by a byte a second (a dropped one is opened again --slowloris-reopen s later);
- 127.0.0.3 oversized header: sends a request whose header is --header-mb MB, again and again;
- 127.0.0.4 flood: one token, --flood-rate name searches a second, sent without waiting;

while the well-behaved client (127.0.0.1, its own token) looks firms up by code, --rate a second
on one kept-alive connection. It first runs alone (baseline), then for --seconds under all three
attacks. Prints its p50/p95/p99 and errors in both phases, what each attacker achieved, and the
machine's load average (the figures are only as quiet as the machine).

    .venv/bin/python bench/bench_service_attacks.py --lake bench/out/lake-1000000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.service_support import build_lake, free_port  # noqa: E402

WELL_BEHAVED, SLOWLORIS, BIG_HEADER, FLOOD = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def lookups(base: str, token: str, codes: list[str], rate: float, seconds: float) -> dict:
    """Sequential lookups, ``rate`` a second, on one kept-alive connection: latencies and errors."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    rng = random.Random(5)
    transport = httpx.HTTPTransport(local_address=WELL_BEHAVED)
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, transport=transport, timeout=10
    ) as http:
        next_at = time.perf_counter()
        deadline = next_at + seconds
        while next_at < deadline:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += 1 / rate
            started = time.perf_counter()
            try:
                status = http.get(f"/api/v1/profiles/{rng.choice(codes)}").status_code
                if status != 200:
                    errors[str(status)] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - started)
    return {"latencies": latencies, "errors": dict(errors)}


async def _slowloris(port: int, connections: int, seconds: float, reopen: float) -> dict:
    opened = refused = closed_by_server = 0
    deadline = time.monotonic() + seconds

    async def hold() -> None:
        nonlocal opened, refused, closed_by_server
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(SLOWLORIS, 0))
                writer.write(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                await writer.drain()
                opened += 1
                while time.monotonic() < deadline:
                    try:
                        if await asyncio.wait_for(reader.read(4096), 1.0) == b"":
                            closed_by_server += 1
                            break
                    except TimeoutError:
                        writer.write(b"a")
                        await writer.drain()
                writer.close()
            except OSError:
                refused += 1
            await asyncio.sleep(reopen)  # like slowloris tools, which re-open dropped sockets each round

    await asyncio.gather(*(hold() for _ in range(connections)))
    return {"opened": opened, "closed by the server": closed_by_server, "refused or reset": refused}


def slowloris(
    port: int, connections: int, seconds: float, reopen: float, results: multiprocessing.Queue
) -> None:
    results.put(("slowloris", asyncio.run(_slowloris(port, connections, seconds, reopen))))


def big_header(port: int, megabytes: int, seconds: float, results: multiprocessing.Queue) -> None:
    chunk = b"a" * (1 << 20)
    attempts, sent_mb, cut_after = 0, [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent, started = 0, time.monotonic()
        with socket.socket() as sock:
            sock.bind((BIG_HEADER, 0))
            sock.settimeout(10)
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while sent < megabytes and time.monotonic() < deadline:
                    sock.sendall(chunk)
                    sent += 1
            except OSError:
                cut_after.append(time.monotonic() - started)
        attempts += 1
        sent_mb.append(sent)
    return results.put(
        (
            "oversized header",
            {
                "attempts": attempts,
                "cut off": len(cut_after),
                "MB sent per attempt (max)": max(sent_mb, default=0),
                "seconds to cut off (max)": round(max(cut_after, default=float("nan")), 3),
            },
        )
    )


async def _flood(base: str, token: str, rate: float, seconds: float) -> dict:
    statuses: Counter[str] = Counter()
    transport = httpx.AsyncHTTPTransport(local_address=FLOOD, limits=httpx.Limits(max_connections=200))
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, transport=transport, timeout=30
    ) as http:

        async def one() -> None:
            try:
                answer = await http.get("/api/v1/search", params={"q": "科技有限公司", "limit": 20})
                statuses[str(answer.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

        pending = []
        deadline = time.monotonic() + seconds
        next_at = time.monotonic()
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1 / rate
            pending.append(asyncio.create_task(one()))
        await asyncio.gather(*pending)
    elapsed = time.monotonic() - deadline + seconds
    return {"sent": len(pending), "seconds": round(elapsed, 1), **dict(statuses)}


def flood(base: str, token: str, rate: float, seconds: float, results: multiprocessing.Queue) -> None:
    results.put(("flood", asyncio.run(_flood(base, token, rate, seconds))))


def service_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``credit serve`` and its worker processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _descendants(pid: int) -> list[int]:
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def worker_memory_mb(pid: int) -> list[float]:
    """Resident memory of each process of ``credit serve`` (the supervisor first), in MB."""
    sizes = []
    for proc in [pid, *_descendants(pid)]:
        status = Path(f"/proc/{proc}/status").read_text()
        sizes.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
    return sizes


def _niced(niceness: int, target: Any, arguments: tuple) -> None:
    """Run an attacker at a lower CPU priority: on loopback the attackers share the service's cores,
    which remote attackers would not (0 gives them the same priority as the service)."""
    os.nice(niceness)
    target(*arguments)


def report(name: str, result: dict) -> None:
    ms = [v * 1000 for v in result["latencies"]]
    print(
        f"{name:<34}{len(ms):>7,}{statistics.median(ms):>9.1f}{percentile(ms, 0.95):>9.1f}"
        f"{percentile(ms, 0.99):>9.1f}{max(ms):>9.1f}   errors: {result['errors'] or 0}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lake", type=Path, help="a lake with published/current (default: build a small one)"
    )
    parser.add_argument(
        "--entities", type=int, default=20_000, help="firms to generate when --lake is not given"
    )
    parser.add_argument("--seconds", type=float, default=60, help="length of the attack phase")
    parser.add_argument("--baseline-seconds", type=float, default=15)
    parser.add_argument("--rate", type=float, default=20, help="the well-behaved client's lookups a second")
    parser.add_argument("--slowloris", type=int, default=300, help="slowloris connections")
    parser.add_argument("--header-mb", type=int, default=150, help="size of the oversized header")
    parser.add_argument(
        "--flood-rate", type=float, default=200, help="the flooding token's requests a second"
    )
    parser.add_argument(
        "--slowloris-reopen",
        type=float,
        default=1.0,
        help="seconds before re-opening a dropped slowloris socket",
    )
    parser.add_argument(
        "--attackers-nice",
        type=int,
        default=10,
        help="CPU niceness of the attacking processes (they stand for remote machines; 0: equal to the service)",
    )
    parser.add_argument(
        "--attacks",
        default="slowloris,header,flood",
        help="which attacks to run at once (comma-separated): slowloris, header, flood",
    )
    args = parser.parse_args()

    lake = args.lake
    if lake is None:
        lake = ROOT / "bench" / "out" / f"attacks-{args.entities}" / "lake"
        if not (lake / "published" / "current").exists():
            build_lake(lake.parent, entities=args.entities)

    def token(name: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "token", "create", "--role", "public", "--name", name]
            + ["--lake", str(lake)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    behaved_token, flood_token = token("bench well-behaved"), token("bench flooder")
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet", columns=["uscc"])
    usccs = profiles["uscc"].drop_nulls()
    codes = usccs.sample(min(5000, usccs.len()), seed=3).to_list()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--lake", str(lake), "--port", str(port)], cwd=ROOT
    )
    try:
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).json().get("ok"):
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
            if server.poll() is not None:
                raise SystemExit("credit serve exited")
        time.sleep(5)  # every worker loaded (the first answers /healthz while the others may still load)
        print(f"lake: {lake} ({profiles.height:,} profiles); credit serve with config/service.toml")
        print(f"load average before: {os.getloadavg()}")
        print(f"{'':<34}{'n':>7}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}   (ms)")
        cpu = service_cpu_seconds(server.pid)
        report("well-behaved, alone", lookups(base, behaved_token, codes, args.rate, args.baseline_seconds))
        print(
            f"  service CPU: {(service_cpu_seconds(server.pid) - cpu) / args.baseline_seconds:.2f} s a second"
        )

        results: multiprocessing.Queue = multiprocessing.Queue()
        chosen = {
            "slowloris": (slowloris, (port, args.slowloris, args.seconds, args.slowloris_reopen, results)),
            "header": (big_header, (port, args.header_mb, args.seconds, results)),
            "flood": (flood, (base, flood_token, args.flood_rate, args.seconds, results)),
        }
        attackers = [
            multiprocessing.Process(target=_niced, args=(args.attackers_nice, target, arguments))
            for name, (target, arguments) in chosen.items()
            if name in args.attacks.split(",")
        ]
        for attacker in attackers:
            attacker.start()
        time.sleep(2)  # the attacks in full swing
        cpu, started = service_cpu_seconds(server.pid), time.monotonic()
        under_attack = lookups(base, behaved_token, codes, args.rate, args.seconds - 4)
        cpu_rate = (service_cpu_seconds(server.pid) - cpu) / (time.monotonic() - started)
        load = os.getloadavg()
        report(f"well-behaved, under {args.attacks}", under_attack)
        print(f"  service CPU: {cpu_rate:.2f} s a second")
        for _ in attackers:
            name, outcome = results.get(timeout=args.seconds + 120)
            print(f"  {name}: {outcome}")
        for attacker in attackers:
            attacker.join()
        print(f"load average during the attack: {load}; attackers at niceness {args.attackers_nice}")
        print("service memory (RSS, MB; supervisor, then workers and helpers):", end=" ")
        print(", ".join(f"{mb:.0f}" for mb in worker_memory_mb(server.pid)))
        p95 = percentile(under_attack["latencies"], 0.95) * 1000
        verdict = "met" if p95 < 50 and not under_attack["errors"] else "NOT met"
        print(f"goal (p95 < 50 ms and no error under attack): {verdict} (p95 {p95:.1f} ms)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
