"""Connection-level guards of ``credit serve``: the HTTP protocol every worker speaks.

uvicorn alone lets one client starve everyone: it has no deadline for a request's headers, so
half-sent requests (slowloris) stay open for ever and fill ``limit_concurrency`` (503 to all), and
its default parser, httptools, has no header size limit (a 150 MB header is read to the end).
``GuardedH11Protocol`` is uvicorn's h11 protocol (whose ``h11_max_incomplete_event_size`` bounds
the request line and headers) with three more rules:

- a client address may hold at most ``[limits] connections_per_client`` connections in one
  worker process (so in all at most workers x that); more are closed at once;
- a request's line and headers must arrive within ``[limits] header_timeout_seconds`` of the
  connection opening or of the first byte of the request (else 408 and the connection closes);
- more than ``[limits] max_header_bytes`` of them gets 431 and the connection closes, before h11
  parses them (h11's own limit, the same number, stays as the backstop);
- a request whose body the application did not read closes its connection afterwards (a body
  trickled behind a finished response would otherwise keep a connection for ever).

``InFlightCap`` (ASGI middleware) bounds the API requests of one client in progress at once.

Connections from ``[server] trusted_proxies`` are exempt from the per-address cap: there the
proxy, which sees the clients, enforces it (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.limits import client_key

log = logging.getLogger(__name__)
_TIMEOUT_REPLY = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE_REPLY = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


class TrustedProxies:
    """Addresses and networks (``10.0.0.0/8``) whose X-Forwarded-For is believed."""

    def __init__(self, entries: list[str]) -> None:
        self.networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]

    def __contains__(self, host: object) -> bool:
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class ConnectionRules:
    """The guard's settings plus this worker's count of open connections per client address."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.per_client = int(config["limits"]["connections_per_client"])
        self.header_timeout = float(config["limits"]["header_timeout_seconds"])
        self.trusted = TrustedProxies(list(config["server"]["trusted_proxies"]))
        self.open: Counter[str] = Counter()

    def claim(self, key: str) -> bool:
        """Count a new connection of client ``key``; False when it already holds its share."""
        if self.open[key] >= self.per_client:
            return False
        self.open[key] += 1
        return True

    def release(self, key: str) -> None:
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


@functools.cache
def worker_rules() -> ConnectionRules:
    """This worker's rules, built from the settings ``credit serve`` handed to its workers."""
    from serving.server import worker_settings

    return ConnectionRules(worker_settings()["config"])


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a per-address connection cap and a header deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = worker_rules()
        self.counted_as: str | None = None
        self.header_deadline: asyncio.TimerHandle | None = None
        self.header_bytes = 0  # of the request being received
        self.header_tail = b""  # its last bytes so far

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if host not in self.guard.trusted:  # a trusted proxy carries many clients: it caps them itself
            key = client_key(host)
            if not self.guard.claim(key):
                log.debug("refused a connection from %s: it holds its share of connections", self.client)
                transport.abort()
                return
            self.counted_as = key
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        if self.counted_as is not None:
            self.guard.release(self.counted_as)
            self.counted_as = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            if self.header_deadline is None:
                self._arm_header_deadline()  # the first bytes of the next request on a kept-alive connection
            self.header_bytes += len(data)
            ended = b"\r\n\r\n" in self.header_tail + data  # (the end may straddle two reads)
            self.header_tail = data[-3:]
            if self.header_bytes > self.config.h11_max_incomplete_event_size and not ended:
                # refused before h11 sees it: h11 would refuse too (400), with a warning logged per attack
                log.debug("refused a request from %s: headers over %d bytes", self.client, self.header_bytes)
                self._close_with(_TOO_LARGE_REPLY)
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()  # headers complete (or refused with 400)
            self.header_bytes, self.header_tail = 0, b""

    def on_response_complete(self) -> None:
        if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            self.transport.close()  # a body nobody will read: do not let it trickle in for ever
            return
        super().on_response_complete()
        if (
            self.conn.their_state is h11.IDLE
            and self.conn.trailing_data[0]
            and not self.transport.is_closing()
        ):
            self._arm_header_deadline()  # part of the next request came in while this one was answered

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self.header_deadline = self.loop.call_later(self.guard.header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            log.debug("closed a connection from %s: no complete request headers in time", self.client)
            self._close_with(_TIMEOUT_REPLY)

    def _close_with(self, reply: bytes) -> None:
        self._disarm_header_deadline()
        self.transport.write(reply)
        self.transport.close()


class InFlightCap:
    """ASGI middleware: at most ``per_client`` API requests of one client address in progress in
    this worker; the excess is refused at once with 429 rather than queued ahead of everyone else.
    (Pages and static files are cheap and a browser fetches several at once: not counted.)

    This is what keeps a flood fair: the rate limit bounds how much a client gets over a second,
    this bounds how much of the worker's thread pool it holds at any moment (so another client's
    lookup waits behind at most ``per_client`` of its requests, not hundreds). It runs inside
    uvicorn's proxy-headers middleware, so behind a trusted proxy the address is the real client's.
    """

    def __init__(self, app: Any, per_client: int) -> None:
        self.app = app
        self.per_client = per_client
        self.busy: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        key = client_key(scope["client"][0] if scope.get("client") else None)
        if self.busy[key] >= self.per_client:
            await _refuse(
                send, 429, b'{"error":"too many requests in flight; wait for answers","status":429}'
            )
            return None
        self.busy[key] += 1
        answered = False

        def release() -> None:
            nonlocal answered
            if not answered:
                answered = True
                self.busy[key] -= 1
                if self.busy[key] <= 0:
                    del self.busy[key]

        async def send_counted(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()  # answered: the client may send its next request before the app unwinds
            await send(message)

        try:
            return await self.app(scope, receive, send_counted)
        finally:
            release()


async def _refuse(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
