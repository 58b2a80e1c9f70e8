"""Tokens, roles, rate limits, masking and the audit trail of the query service.

- Tokens are random, shown once by ``credit token create`` and stored only as SHA-256 hashes in
  ``LAKE/service/tokens.json`` (mode 600), beside the deployment they serve; the service re-reads
  the file when it changes, so a new or revoked token takes effect without a restart.
- The public role gets the public view (``mask_for_public``): no personal information, ID numbers
  cut to their first six digits, lending details of individual businesses removed.
- Every regulator query is appended to ``LAKE/service/audit.jsonl``: who, when, what, how many
  results. The service only ever opens it in append mode, under an exclusive lock, and chains each
  entry to the previous one by hash, so an edited, removed or reordered line is detected by
  ``verify_audit`` (``credit audit verify``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.identifiers import is_valid_resident_id, mask_resident_id
from pipelines.lake import atomic_path

ROLES = ("regulator", "public")
GENESIS = "0" * 64


def service_dir(lake: Path) -> Path:
    return lake / "service"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------- tokens
def create_token(lake: Path, role: str, name: str) -> str:
    """A new token for ``name`` with ``role``; only its hash is stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if not re.fullmatch(r"[\w.@\- ]{1,64}", name):
        raise ValueError("name: 1-64 letters, digits, spaces or . @ - _")
    token = "cr_" + secrets.token_urlsafe(32)
    path = service_dir(lake) / "tokens.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = json.loads(path.read_text("utf-8")) if path.exists() else []
        entries.append(
            {
                "sha256": _hash(token),
                "name": name,
                "role": role,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(entries, ensure_ascii=False, indent=1), "utf-8")
            os.chmod(tmp, 0o600)
    os.chmod(path, 0o600)
    return token


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    token_hash: str

    @property
    def regulator(self) -> bool:
        return self.role == "regulator"


class TokenBook:
    """The deployment's tokens, re-read whenever the file changes."""

    def __init__(self, lake: Path) -> None:
        self.path = service_dir(lake) / "tokens.json"
        self._stamp: tuple[int, int] | None = None
        self._by_hash: dict[str, Principal] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._by_hash, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            entries = json.loads(self.path.read_text("utf-8"))
            self._by_hash = {e["sha256"]: Principal(e["name"], e["role"], e["sha256"]) for e in entries}
            self._stamp = stamp

    def authenticate(self, token: str) -> Principal | None:
        if not token or len(token) > 200:
            return None
        with self._lock:
            self._refresh()
            found = self._by_hash.get(_hash(token))
        # constant-time comparison of the digest we found against the presented one
        return found if found and secrets.compare_digest(found.token_hash, _hash(token)) else None


# ---------------------------------------------------------------- rate limits
class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1, now)
            return True


# ---------------------------------------------------------------- masking
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
#: never shown to the public (personal information of natural persons)
PUBLIC_HIDDEN = ("legal_rep",)
#: a loan to an individual business owner is personal financial information
INDIVIDUAL_BUSINESS_HIDDEN_PREFIXES = ("lending_",)


def _mask_text(text: str) -> str:
    text = _ID_NUMBER.sub(
        lambda m: mask_resident_id(m.group(0)) if is_valid_resident_id(m.group(0)) else m.group(0), text
    )
    return _PHONE.sub(lambda m: m.group(0)[:3] + "********", text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, list):
        return [_mask_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    return value


def mask_for_public(profile: dict[str, Any]) -> dict[str, Any]:
    """The public view of a profile (or of any record dict)."""
    individual = profile.get("entity_type") == "individual business"
    out = {}
    for key, value in profile.items():
        if key in PUBLIC_HIDDEN:
            continue
        if individual and key.startswith(INDIVIDUAL_BUSINESS_HIDDEN_PREFIXES):
            continue
        if individual and key in ("grade_reasons", "veto_reasons") and isinstance(value, list):
            value = [r for r in value if "lending:" not in r]
        out[key] = _mask_value(value)
    return out


# ---------------------------------------------------------------- audit trail
def _entry_hash(previous: str, entry: dict[str, Any]) -> str:
    body = json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((previous + body).encode()).hexdigest()


class AuditLog:
    """Append-only, hash-chained JSON lines; safe across threads and processes."""

    def __init__(self, lake: Path) -> None:
        self.path = service_dir(lake) / "audit.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _last_hash(self, fd: int) -> tuple[str, int]:
        size = os.fstat(fd).st_size
        if size == 0:
            return GENESIS, 0
        with open(self.path, "rb") as handle:
            handle.seek(max(0, size - 65536))
            last = handle.read().rstrip(b"\n").split(b"\n")[-1]
        entry = json.loads(last)
        return entry["hash"], entry["seq"]

    def append(self, who: Principal, action: str, query: dict[str, Any], results: int, status: int) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                previous, seq = self._last_hash(fd)
                entry = {
                    "seq": seq + 1,
                    "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "who": who.name,
                    "role": who.role,
                    "action": action,
                    "query": query,
                    "results": results,
                    "status": status,
                    "prev": previous,
                }
                entry["hash"] = _entry_hash(previous, entry)
                os.write(fd, (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode())
            finally:
                os.close(fd)


def verify_audit(path: Path) -> tuple[bool, int, str]:
    """(intact, entries, problem): walks the hash chain from the first line."""
    if not path.exists():
        return True, 0, ""
    previous, count = GENESIS, 0
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return False, count, f"line {number} is not JSON"
        claimed = entry.pop("hash", None)
        if entry.get("prev") != previous or entry.get("seq") != number:
            return (
                False,
                count,
                f"line {number} does not follow line {number - 1} (removed or reordered lines)",
            )
        if _entry_hash(previous, entry) != claimed:
            return False, count, f"line {number} was altered"
        previous, count = claimed, count + 1
    return True, count, ""
