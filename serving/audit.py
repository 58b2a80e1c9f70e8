"""The audit trail of regulator queries: append-only, hash-chained JSON lines.

Every regulator query is appended to ``LAKE/service/audit.jsonl``: who, when, what, how many
results. The service only ever opens it in append mode, under an exclusive lock, and chains each
entry to the previous one by hash, so an edited, removed or reordered line is detected by
``verify_audit`` (``credit audit verify``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.tokens import Principal, service_dir

GENESIS = "0" * 64


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
