"""Access tokens of the query service: random, shown once, stored only as SHA-256 hashes.

Tokens live in ``LAKE/service/tokens.json`` (mode 600), beside the deployment they serve; the
service re-reads the file when it changes, so a new or revoked token takes effect without a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipelines.lake import atomic_path

ROLES = ("regulator", "public")


def service_dir(lake: Path) -> Path:
    return lake / "service"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
