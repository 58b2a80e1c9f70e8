"""Rate limits of the query service, shared by all its worker processes.

``credit serve`` runs several worker processes (``[server] workers``); a limit kept in one
process's memory would let a client multiply its rate by the number of workers, since the kernel
hands its connections to whichever worker accepts first. So the token buckets live in one small
file mapped into every worker (``BucketTable``): a fixed-size open-addressing table under an
exclusive ``flock`` (plus a thread lock, as FastAPI runs the dependency in a thread pool). A
check costs a few microseconds and never touches the disk beyond the page cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import secrets
import struct
import threading
import time
from pathlib import Path
from typing import Any

#: one slot: key hash, tokens left, when last charged (CLOCK_MONOTONIC, the same in every
#: process), and the rate and burst it was charged at (to tell a refilled, forgettable bucket)
_SLOT = struct.Struct("<Qddff")
#: slot 0 holds the table's random salt, so nobody can choose keys that collide on purpose
_HEADER = struct.Struct("<8sQ")
_MAGIC = b"crbucket"
#: slots looked at for a key; beyond them the least recently charged bucket is reused
_PROBES = 16


class BucketTable:
    """Token buckets keyed by string in a memory-mapped file (or private memory without a file).

    A bucket that has refilled to its burst is the same as no bucket, so its slot is free for
    another key: the table loses nothing while fewer than ``slots`` clients are active at once.
    """

    def __init__(self, path: Path | None = None, slots: int = 1 << 16) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        if path is None:
            self._fd = -1
            self._map = mmap.mmap(-1, slots * _SLOT.size)
            _HEADER.pack_into(self._map, 0, _MAGIC, secrets.randbits(64))
        else:
            self._fd = os.open(path, os.O_RDWR)
            self._map = mmap.mmap(self._fd, os.fstat(self._fd).st_size)
        magic, self._salt = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC:
            raise ValueError(f"{path} is not a rate-limit table")
        self._slots = len(self._map) // _SLOT.size

    @staticmethod
    def create(path: Path, slots: int) -> Path:
        """Make a zeroed table file for the workers to share (done once, by the parent process)."""
        with open(path, "wb") as out:
            out.truncate(slots * _SLOT.size)
            out.write(_HEADER.pack(_MAGIC, secrets.randbits(64)))
        return path

    def _hash(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=8, key=self._salt.to_bytes(8, "little")).digest()
        return int.from_bytes(digest, "little") | 1  # 0 marks an empty slot

    def take(self, key: str, rate: float, burst: float) -> float:
        """Charge one request to ``key``'s bucket: 0.0 when admitted, else seconds until it would be."""
        wanted = self._hash(key)
        home = wanted % (self._slots - 1)
        now = time.monotonic()
        with self._thread_lock:
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                found = free = oldest = None
                oldest_at = float("inf")
                for probe in range(_PROBES):
                    offset = (1 + (home + probe) % (self._slots - 1)) * _SLOT.size
                    key_hash, tokens, last, slot_rate, slot_burst = _SLOT.unpack_from(self._map, offset)
                    if key_hash == wanted:
                        found = (offset, tokens, last)
                        break
                    if key_hash == 0 or tokens + (now - last) * slot_rate >= slot_burst:
                        free = offset if free is None else free
                    elif last < oldest_at:
                        oldest, oldest_at = offset, last
                offset, tokens, last = found or (free if free is not None else oldest, burst, now)
                tokens = min(burst, tokens + (now - last) * rate)
                wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
                _SLOT.pack_into(
                    self._map, offset, wanted, tokens - 1 if wait == 0.0 else tokens, now, rate, burst
                )
                return wait
            finally:
                if self._fd >= 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)


def client_key(host: str | None) -> str:
    """The unit an address limit applies to: an IPv4 address, or an IPv6 /64 (one subscriber's
    network: a client there can pick any of 2**64 addresses)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter:
    """Per token for requests with a valid token; per client address for the others (no token,
    or a wrong one), so guessing tokens or hammering without one is limited as well."""

    def __init__(self, settings: dict[str, Any], table: BucketTable | None = None) -> None:
        self.token_rate = float(settings["requests_per_second"])
        self.token_burst = float(settings["burst"])
        self.anonymous_rate = float(settings["anonymous_requests_per_second"])
        self.anonymous_burst = float(settings["anonymous_burst"])
        self.table = table or BucketTable()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RateLimiter:
        """From the ``[rate_limit]`` settings; ``shared_table`` (set by ``credit serve`` for its
        workers) names the file the workers share, otherwise the buckets are this process's own."""
        settings = config["rate_limit"]
        shared = settings.get("shared_table")
        return cls(settings, BucketTable(Path(shared)) if shared else None)

    def token_wait(self, token_hash: str) -> float:
        """0.0 admits a request made with this (valid) token; otherwise seconds to wait."""
        return self.table.take("token:" + token_hash, self.token_rate, self.token_burst)

    def address_wait(self, host: str | None) -> float:
        """0.0 admits a request without a valid token from this address; otherwise seconds to wait."""
        return self.table.take("address:" + client_key(host), self.anonymous_rate, self.anonymous_burst)


def retry_after(wait: float) -> str:
    """The Retry-After header value (whole seconds, at least 1) for a wait from ``RateLimiter``."""
    return str(max(1, int(wait + 0.999)))
