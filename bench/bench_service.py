"""Benchmark: the query service under load on loopback.

Starts `credit serve` over a published lake (1M profiles: point --lake at a lake built by
`bench/bench_pipeline.py --entities 1000000 --keep`, or let --entities build one), then

1. latency: one client, sequential requests: lookups by code (USCC, organization code, old
   registration number, as typed) and name searches (the names as departments wrote them);
2. load: 50 concurrent clients (asyncio + httpx) for 60 seconds, 80 % lookups and 20 % searches,
   first paced (each client one request a second, like people at screens), then back to back
   (saturation: the service's throughput, and that nothing fails);

and prints p50/p95/p99 per kind, throughput, errors and the service's memory (peak RSS).

    .venv/bin/python bench/bench_service.py --lake bench/out/lake-1000000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.service_support import free_port  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<22}{len(ms):>8,}{statistics.median(ms):>9.1f}{percentile(ms, 0.95):>9.1f}"
        f"{percentile(ms, 0.99):>9.1f}  ms (n, p50, p95, p99)"
    )


def memory_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def workload(lake: Path, seed: int) -> tuple[list[str], list[str]]:
    current = lake / "published" / "current"
    profiles = pl.read_parquet(current / "profiles" / "*.parquet", columns=["uscc", "org_code", "reg_no"])
    rng = random.Random(seed)
    sample = profiles.sample(20_000, seed=seed)
    codes: list[str] = []
    for uscc, org, reg in sample.iter_rows():
        kind = rng.random()
        if org and kind < 0.2:
            codes.append(org[:8] + "-" + org[8])
        elif reg and kind < 0.3:
            codes.append(reg)
        elif uscc:
            codes.append(uscc.lower() if kind > 0.9 else uscc)
    names = (
        pl.scan_parquet(current / "links" / "*.parquet")
        .select("recorded_name")
        .head(2_000_000)
        .unique()
        .collect()
        .sample(5_000, seed=seed)["recorded_name"]
        .drop_nulls()
        .to_list()
    )
    return codes, names


async def load(
    base: str,
    token: str,
    codes: list[str],
    names: list[str],
    clients: int,
    seconds: float,
    seed: int,
    interval: float = 0.0,
) -> dict:
    """``clients`` concurrent clients for ``seconds``; each sends its next request as soon as the last
    one is answered (interval 0: as hard as the service allows) or every ``interval`` seconds."""
    latencies: dict[str, list[float]] = {"lookup": [], "search": []}
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(seed + number)
        next_at = time.perf_counter() + rng.random() * interval
        while time.perf_counter() < deadline:
            if interval:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
            if rng.random() < 0.8:
                kind, path, params = "lookup", f"/api/v1/profiles/{rng.choice(codes)}", None
            else:
                kind, path, params = "search", "/api/v1/search", {"q": rng.choice(names), "limit": 10}
            started = time.perf_counter()
            try:
                response = await http.get(path, params=params)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {path}")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__} {path}")
            latencies[kind].append(time.perf_counter() - started)

    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30, limits=limits
    ) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(n, http) for n in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", type=Path, help="a lake with published/current (default: build one)")
    parser.add_argument(
        "--entities", type=int, default=1_000_000, help="firms to generate when --lake is not given"
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between one client's requests in the paced phase (a person at a screen)",
    )
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    lake = args.lake
    if lake is None:
        workdir = ROOT / "bench" / "out"
        sources, lake = workdir / f"sources-{args.entities}", workdir / f"lake-{args.entities}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "generate",
                "--entities",
                str(args.entities),
                "--out",
                str(sources),
                "-q",
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "run",
                "--sources",
                str(sources),
                "--lake",
                str(lake),
                "-q",
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    token = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "token",
            "create",
            "--role",
            "regulator",
            "--name",
            f"load generator {time.strftime('%Y%m%dT%H%M%S')}",  # names are unique: one per run
            "--lake",
            str(lake),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    config = ROOT / "bench" / "out" / "service-bench.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    # the benchmark measures one worker process, not the limits: all its clients share one token and
    # one address, which the per-token and per-address limits would (rightly) slow down
    config.write_text(
        "[server]\nworkers = 1\n[rate_limit]\nrequests_per_second = 1000000\nburst = 1000000\n"
        "[limits]\nconnections_per_client = 1000\nrequests_in_flight_per_client = 1000\n",
        "utf-8",
    )
    codes, names = workload(lake, args.seed)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--lake",
            str(lake),
            "--port",
            str(port),
            "--config",
            str(config),
            "--limit-concurrency",
            "1000",
        ],
        cwd=ROOT,
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
        ready = time.perf_counter() - started
        headers = {"Authorization": f"Bearer {token}"}
        profiles = httpx.get(base + "/api/v1/version", headers=headers).json()["profiles"]
        sequential: dict[str, list[float]] = {"lookup": [], "search": []}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            for kind, items, count in (("lookup", codes, 3000), ("search", names, 1000)):
                for item in items[:count]:
                    t0 = time.perf_counter()
                    response = (
                        http.get(f"/api/v1/profiles/{item}")
                        if kind == "lookup"
                        else http.get("/api/v1/search", params={"q": item, "limit": 10})
                    )
                    sequential[kind].append(time.perf_counter() - t0)
                    assert response.status_code in (200, 404), response.text
        paced = asyncio.run(
            load(base, token, codes, names, args.clients, args.seconds, args.seed, interval=args.interval)
        )
        result = asyncio.run(load(base, token, codes, names, args.clients, args.seconds, args.seed + 1))
        rss, peak = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    total = sum(len(v) for v in result["latencies"].values())
    print(f"\nquery service benchmark: {profiles:,} profiles, 2 cores, loopback\n")
    print(f"service ready (load + indexes) in {ready:.1f} s; memory now {rss:,.0f} MB, peak {peak:,.0f} MB\n")
    print("one client, sequential")
    print(summary("lookup by code", sequential["lookup"]))
    print(summary("name search", sequential["search"]))
    paced_total = sum(len(v) for v in paced["latencies"].values())
    print(
        f"\n{args.clients} concurrent clients, each sending a request every {args.interval} s, for "
        f"{paced['elapsed']:.0f} s: {paced_total:,} requests ({paced_total / paced['elapsed']:,.0f}/s), "
        f"errors: {len(paced['errors'])}"
    )
    print(summary("lookup by code", paced["latencies"]["lookup"]))
    print(summary("name search", paced["latencies"]["search"]))
    print(
        f"\n{args.clients} concurrent clients, back to back (saturation), for {result['elapsed']:.0f} s: "
        f"{total:,} requests ({total / result['elapsed']:,.0f}/s), errors: {len(result['errors'])}"
    )
    print(summary("lookup by code", result["latencies"]["lookup"]))
    print(summary("name search", result["latencies"]["search"]))
    errors = paced["errors"] + result["errors"]
    if errors:
        print("first errors:", errors[:5])
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
