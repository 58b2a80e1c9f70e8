"""The query service stays available under attack: a real `credit serve` (two worker processes)
on loopback, attacked with real sockets from other loopback addresses (127.0.0.2, .3, ...: Linux
routes all of 127/8 to the loopback interface), while a well-behaved client on 127.0.0.1 keeps
working. Every attack is bounded in connections, bytes and seconds."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.limits import BucketTable
from tests.conftest import PublishedLakes
from tests.service_support import REPO, build_lake, credit, free_port, serving

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

HEADER_TIMEOUT = 2.0
ANONYMOUS_BURST = 5
TOKEN_BURST = 20
IN_FLIGHT = 4
#: one well-behaved client per test, each with its own token (and so its own rate allowance)
WELL_BEHAVED = ("slowloris", "header", "anonymous", "flood", "crowd")
PROXY, NOT_A_PROXY = "127.0.0.6", "127.0.0.7"
SETTINGS = f"""
[server]
workers = 2
trusted_proxies = ["{PROXY}"]

[rate_limit]
requests_per_second = 5
burst = {TOKEN_BURST}
anonymous_requests_per_second = 0.01
anonymous_burst = {ANONYMOUS_BURST}

[limits]
header_timeout_seconds = {HEADER_TIMEOUT}
requests_in_flight_per_client = {IN_FLIGHT}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, published_lakes: PublishedLakes) -> dict:
    root = tmp_path_factory.mktemp("availability")
    _, lake = build_lake(published_lakes, entities=400)  # the attacks need a lake, not many firms
    tokens = {
        name: credit("token", "create", "--role", "public", "--name", name, "--lake", str(lake))
        for name in ("flooder", "shared", "behind-attacker", "impatient", *WELL_BEHAVED)
    }
    config = root / "service.toml"
    config.write_text(SETTINGS, "utf-8")
    with serving(lake, config) as base:
        yield {"base": base, "tokens": tokens, "port": int(base.rsplit(":", 1)[1]), "lake": lake}


def client(
    service: dict, token: str | None = None, source: str = "127.0.0.1", **kwargs: object
) -> httpx.Client:
    """An HTTP client whose connections come from loopback address ``source``."""
    headers = {"Authorization": f"Bearer {service['tokens'][token]}"} if token else {}
    return httpx.Client(
        base_url=service["base"],
        headers=headers,
        transport=httpx.HTTPTransport(local_address=source),
        timeout=5,
        **kwargs,
    )


def well_behaved_lookups(service: dict, count: int, during: str) -> list[int]:
    """Statuses of ``count`` sequential requests of the well-behaved client of test ``during``."""
    with client(service, during) as http:
        return [http.get("/api/v1/version").status_code for _ in range(count)]


def test_slowloris_neither_locks_others_out_nor_holds_connections(service: dict) -> None:
    attackers: list[socket.socket] = []
    try:
        for _ in range(300):  # each sends half a request and then nothing
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", service["port"]))
                sock.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            except OSError:
                sock.close()  # refused at once: the address holds its share
                continue
            attackers.append(sock)
        assert well_behaved_lookups(service, 20, "slowloris") == [200] * 20
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        still_open = []
        for sock in attackers:  # the server must have closed every half-sent request by its deadline
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                while sock.recv(4096):
                    pass
            except TimeoutError:
                still_open.append(sock)
            except OSError:
                pass
        assert not still_open, f"{len(still_open)} half-sent requests still held open"
    finally:
        for sock in attackers:
            sock.close()


def test_an_oversized_header_is_cut_off_and_others_are_served(service: dict) -> None:
    sent, cut = 0, threading.Event()

    def attack() -> None:  # a header of up to 150 MB, for at most 20 s
        nonlocal sent
        chunk = b"a" * (1 << 20)
        with socket.socket() as sock:
            sock.bind(("127.0.0.3", 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", service["port"]))
            sock.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nX-Big: ")
            stop = time.monotonic() + 20
            try:
                while sent < 150 * len(chunk) and time.monotonic() < stop:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                cut.set()

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        assert well_behaved_lookups(service, 20, "header") == [200] * 20
    finally:
        attacker.join()
    assert cut.is_set(), f"the server read {sent / 2**20:.0f} MB of one header without cutting it off"
    assert sent < 20 * 2**20  # what the socket buffers took before the server's refusal arrived


def test_requests_without_a_valid_token_are_rate_limited_per_address(service: dict) -> None:
    with client(service, source="127.0.0.4") as http:
        statuses = [
            http.get(
                "/api/v1/version",
                headers={"Authorization": f"Bearer cr_guess{n}", "X-Forwarded-For": f"198.51.100.{n}"},
            ).status_code
            for n in range(3 * ANONYMOUS_BURST)
        ]
        assert statuses == [401] * ANONYMOUS_BURST + [429] * (2 * ANONYMOUS_BURST)
        # the address is limited for guessing, not locked out: a valid token still works
        assert (
            http.get(
                "/api/v1/version", headers={"Authorization": _bearer(service, "behind-attacker")}
            ).status_code
            == 200
        )
    with client(service, source="127.0.0.5") as http:  # another address has its own allowance
        assert http.get("/api/v1/version").status_code == 401
    assert well_behaved_lookups(service, 5, "anonymous") == [200] * 5


def _bearer(service: dict, name: str) -> str:
    return f"Bearer {service['tokens'][name]}"


def test_x_forwarded_for_is_believed_only_from_trusted_proxies(service: dict) -> None:
    with client(service, source=PROXY) as http:  # each forwarded client has its own allowance
        statuses = {
            http.get("/api/v1/version", headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code
            for n in range(3 * ANONYMOUS_BURST)
        }
        assert statuses == {401}
    with client(service, source=NOT_A_PROXY) as http:  # a client naming others is still itself
        statuses_spoofed = [
            http.get("/api/v1/version", headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code
            for n in range(3 * ANONYMOUS_BURST)
        ]
        assert statuses_spoofed.count(429) == 2 * ANONYMOUS_BURST


def test_a_token_rate_limit_holds_across_worker_processes(service: dict) -> None:
    async def burst() -> list[int]:
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each: both workers answer
        async with httpx.AsyncClient(
            base_url=service["base"],
            headers={"Authorization": _bearer(service, "shared")},
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.9", limits=limits),
            timeout=10,
        ) as http:
            answers = []
            for _ in range(3 * TOKEN_BURST):
                answers.append((await http.get("/api/v1/version")).status_code)
            return answers

    started = time.monotonic()
    statuses = asyncio.run(burst())
    refilled = int((time.monotonic() - started) * 5) + 1  # requests_per_second = 5
    assert statuses.count(200) <= TOKEN_BURST + refilled
    assert statuses.count(429) >= 2 * TOKEN_BURST - refilled


def _take_all(path: str, tries: int, admitted: multiprocessing.Queue) -> None:
    table = BucketTable(Path(path))
    admitted.put(sum(table.take("token:x", 1e-6, 10) == 0.0 for _ in range(tries)))


def test_buckets_are_shared_by_processes(tmp_path: Path) -> None:
    path = BucketTable.create(tmp_path / "buckets", 1024)
    context = multiprocessing.get_context("spawn")
    admitted: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_take_all, args=(str(path), 10, admitted)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert sum(admitted.get(timeout=5) for _ in workers) == 10


def test_a_flooding_token_neither_queues_ahead_of_others_nor_errs_them(service: dict) -> None:
    async def flood() -> list[int | str]:
        """200 requests a second for 3 s, sent without waiting for answers."""
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(
            base_url=service["base"],
            headers={"Authorization": _bearer(service, "flooder")},
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.8", limits=limits),
            timeout=10,
        ) as http:

            async def one() -> int | str:
                try:
                    return (
                        await http.get("/api/v1/search", params={"q": "有限公司", "limit": 100})
                    ).status_code
                except httpx.HTTPError as exc:
                    return type(exc).__name__

            pending = []
            for _ in range(600):
                pending.append(asyncio.create_task(one()))
                await asyncio.sleep(1 / 200)
            return await asyncio.gather(*pending)

    flooded: list[int | str] = []
    flooder = threading.Thread(target=lambda: flooded.extend(asyncio.run(flood())))
    started = time.monotonic()
    flooder.start()
    try:
        time.sleep(0.5)
        behaved = well_behaved_lookups(service, 15, "flood")
    finally:
        flooder.join()
    allowance = TOKEN_BURST + int((time.monotonic() - started) * 5) + 1  # requests_per_second = 5
    assert behaved == [200] * 15
    answered = [s for s in flooded if isinstance(s, int)]
    assert answered.count(200) <= allowance  # its rate, not the flood's
    assert answered.count(429) >= len(answered) - allowance


def test_a_client_cannot_queue_a_crowd_of_requests_ahead_of_others(service: dict) -> None:
    async def all_at_once() -> list[str]:
        """24 requests sent together (within the token's burst): the excess over the per-client
        share in progress is refused at once, not queued in front of other clients."""
        async with httpx.AsyncClient(
            base_url=service["base"],
            headers={"Authorization": _bearer(service, "impatient")},
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.10"),
            timeout=10,
        ) as http:

            async def one() -> str:
                try:
                    answer = await http.get("/api/v1/search", params={"q": "有限公司", "limit": 100})
                except httpx.HTTPError as exc:
                    return type(exc).__name__
                return "in flight" if "in flight" in answer.text else str(answer.status_code)

            return await asyncio.gather(*(one() for _ in range(TOKEN_BURST + 4)))

    outcomes = asyncio.run(all_at_once())
    assert "in flight" in outcomes
    assert outcomes.count("200") <= 2 * IN_FLIGHT * 2  # two workers; a few finish before the rest arrive
    assert well_behaved_lookups(service, 5, "crowd") == [200] * 5


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (whatever it sends first)."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def test_a_kept_alive_connection_cannot_trickle_its_next_request(service: dict) -> None:
    with socket.create_connection(("127.0.0.1", service["port"]), source_address=("127.0.0.11", 0)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and the rest never comes
        assert _closed_by_server(sock, HEADER_TIMEOUT + 3)


def test_an_unread_request_body_does_not_hold_the_connection(service: dict) -> None:
    with socket.create_connection(("127.0.0.1", service["port"]), source_address=("127.0.0.12", 0)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nabc")
        assert _closed_by_server(sock, HEADER_TIMEOUT + 3)


def test_settings_come_from_the_repository_file_a_deployment_file_and_overrides(tmp_path: Path) -> None:
    from serving.server import SERVICE_FILE, load_settings

    defaults = load_settings()
    deployment = tmp_path / "service.toml"
    deployment.write_text("[server]\nworkers = 4\n[limits]\nheader_timeout_seconds = 3\n", "utf-8")
    settings = load_settings(deployment, {"server": {"workers": 6, "trusted_proxies": None}})
    assert settings["server"]["workers"] == 6  # the command line wins
    assert settings["limits"]["header_timeout_seconds"] == 3  # then the deployment's file
    assert settings["limits"]["max_header_bytes"] == defaults["limits"]["max_header_bytes"]
    assert settings["server"]["trusted_proxies"] == defaults["server"]["trusted_proxies"]  # unset: default
    assert SERVICE_FILE == "service.toml"


def test_headers_over_the_cap_are_refused_with_431(service: dict) -> None:
    with socket.create_connection(("127.0.0.1", service["port"]), source_address=("127.0.0.13", 0)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        assert sock.recv(65536).startswith(b"HTTP/1.1 431 ")
        assert _closed_by_server(sock, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stopped_service_leaves_no_state_behind(service: dict, tmp_path: Path, workers: int) -> None:
    lake = service["lake"]
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--lake", str(lake), "--port", str(port)]
    process = subprocess.Popen([*command, "--workers", str(workers)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while not _healthy(f"http://127.0.0.1:{port}") and time.monotonic() < deadline:
            assert process.poll() is None
            time.sleep(0.2)
        assert any(tmp_path.glob("credit-serve-*"))  # the shared rate-limit table and settings
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert not any(tmp_path.glob("credit-serve-*"))


def _healthy(base: str) -> bool:
    try:
        return bool(httpx.get(base + "/healthz", timeout=2).json().get("ok"))
    except httpx.HTTPError:
        return False
