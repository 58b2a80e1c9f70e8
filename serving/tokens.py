"""Access tokens of the query service: random, shown once, stored only as SHA-256 hashes.

Tokens live in ``LAKE/service/tokens.json`` (mode 600), beside the deployment they serve: one
object per token with its hash, name, role, creation time and, optionally, when it expires and when
it was revoked. A revoked token stays in the file, so the names and hash prefixes in the audit
trail keep pointing at someone. The service re-reads the file when it changes, so a new or revoked
token takes effect in every worker process without a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from foundation.lake import atomic_path

ROLES = ("regulator", "public")
HASH_PREFIX_CHARS = 12  # what `credit token list` shows and the audit trail records of a token
MIN_REVOKE_PREFIX = 6  # a shorter hash prefix would too easily name the wrong token
NAME_RULE = re.compile(r"[\w.@\- ]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def service_dir(lake: Path) -> Path:
    return lake / "service"


def tokens_path(lake: Path) -> Path:
    return service_dir(lake) / "tokens.json"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokensDamaged(Exception):
    """``tokens.json`` cannot be trusted: names the file and what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


class TokenRefused(Exception):
    """A presented token that opens nothing; ``principal`` is its holder when the token is known."""

    def __init__(self, reason: str, principal: Principal | None = None) -> None:
        super().__init__(reason)
        self.principal = principal


@dataclass(frozen=True)
class Principal:
    """Who is asking, as far as the audit trail is concerned."""

    name: str
    role: str
    token_hash: str
    client_address: str = ""

    @property
    def regulator(self) -> bool:
        return self.role == "regulator"

    @property
    def token_prefix(self) -> str:
        return self.token_hash[:HASH_PREFIX_CHARS]


@dataclass(frozen=True)
class TokenEntry:
    """One line of ``tokens.json``."""

    sha256: str
    name: str
    role: str
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None

    @property
    def prefix(self) -> str:
        return self.sha256[:HASH_PREFIX_CHARS]

    def state(self, now: datetime) -> str:
        """``revoked``, ``expired`` or ``active`` at ``now``."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.sha256)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sha256": self.sha256,
            "name": self.name,
            "role": self.role,
            "created": self.created.isoformat(timespec="seconds"),
        }
        if self.expires is not None:
            out["expires"] = self.expires.isoformat(timespec="seconds")
        if self.revoked is not None:
            out["revoked"] = self.revoked.isoformat(timespec="seconds")
        return out


def _when(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{field} is not a date-time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field} {value!r} is not an ISO date-time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{field} {value!r} has no time zone")
    return moment


def _entry(item: Any) -> TokenEntry:
    if not isinstance(item, dict):
        raise ValueError("is not an object")
    missing = [key for key in ("sha256", "name", "role", "created") if key not in item]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    if not isinstance(item["sha256"], str) or not _SHA256.fullmatch(item["sha256"]):
        raise ValueError("sha256 is not 64 lower-case hexadecimal digits")
    if not isinstance(item["name"], str) or not item["name"]:
        raise ValueError("name is empty")
    if item["role"] not in ROLES:
        raise ValueError(f"role {item['role']!r} is not one of {', '.join(ROLES)}")
    return TokenEntry(
        sha256=item["sha256"],
        name=item["name"],
        role=item["role"],
        created=_when(item["created"], "created"),
        expires=_when(item["expires"], "expires") if item.get("expires") is not None else None,
        revoked=_when(item["revoked"], "revoked") if item.get("revoked") is not None else None,
    )


def read_tokens(path: Path) -> list[TokenEntry]:
    """Every token in ``path`` (none when it does not exist); TokensDamaged says what is wrong."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise TokensDamaged(path, f"not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise TokensDamaged(path, f"cannot be read ({exc.strerror})") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokensDamaged(
            path, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc
    if not isinstance(raw, list):
        raise TokensDamaged(path, "not a JSON list of tokens")
    entries: list[TokenEntry] = []
    seen: dict[str, int] = {}
    for number, item in enumerate(raw, start=1):
        try:
            entry = _entry(item)
        except ValueError as exc:
            name = item.get("name") if isinstance(item, dict) else None
            raise TokensDamaged(path, f"token {number}{f' ({name!r})' if name else ''} {exc}") from exc
        if entry.sha256 in seen:
            raise TokensDamaged(path, f"token {number} repeats the hash of token {seen[entry.sha256]}")
        seen[entry.sha256] = number
        entries.append(entry)
    return entries


@contextmanager
def _locked_tokens(lake: Path) -> Iterator[tuple[Path, list[TokenEntry]]]:
    """The token file's entries, held under an exclusive lock while the caller changes them."""
    path = tokens_path(lake)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path, read_tokens(path)


def _write_tokens(path: Path, entries: list[TokenEntry]) -> None:
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(json.dumps([e.to_json() for e in entries], ensure_ascii=False, indent=1), "utf-8")


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """``--expires``: a number of days from now, or a date (the token stops working at 00:00 UTC of it)."""
    now = now or datetime.now(UTC)
    if text.strip().isdigit():
        days = int(text)
        if days < 1:
            raise ValueError(f"--expires {text}: give at least 1 day")
        return now + timedelta(days=days)
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--expires {text!r}: give a number of days or a date (YYYY-MM-DD)") from None
    moment = datetime.combine(day, time(0, 0), tzinfo=UTC)
    if moment <= now:
        raise ValueError(f"--expires {text}: that date is not in the future")
    return moment


def create_token(
    lake: Path, role: str, name: str, expires: datetime | None = None, now: datetime | None = None
) -> str:
    """A new token for ``name`` with ``role``; only its hash is stored. A name belongs to one token in
    force at a time (a revoked or expired token's holder may get a new one under the same name)."""
    now = now or datetime.now(UTC)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if not NAME_RULE.fullmatch(name):
        raise ValueError("name: 1-64 letters, digits, spaces or . @ - _")
    if expires is not None and expires <= now:
        raise ValueError(f"expiry {expires.isoformat()} is not in the future")
    token = "cr_" + secrets.token_urlsafe(32)
    with _locked_tokens(lake) as (path, entries):
        taken = [e for e in entries if e.name == name and e.state(now) == "active"]
        if taken:
            raise ValueError(
                f"a token named {name!r} already exists (hash {taken[0].prefix}); "
                "revoke it first or choose another name"
            )
        entries.append(TokenEntry(_hash(token), name, role, now.replace(microsecond=0), expires))
        _write_tokens(path, entries)
    return token


def list_tokens(lake: Path) -> list[TokenEntry]:
    return read_tokens(tokens_path(lake))


def revoke_token(lake: Path, name_or_prefix: str, now: datetime | None = None) -> TokenEntry:
    """Revoke the one unrevoked token with this name or hash prefix; refuses an ambiguous choice."""
    now = now or datetime.now(UTC)
    wanted = name_or_prefix.strip()
    prefix = (
        wanted.lower() if len(wanted) >= MIN_REVOKE_PREFIX and re.fullmatch(r"[0-9a-fA-F]+", wanted) else None
    )

    def named(entry: TokenEntry) -> bool:
        return entry.name == wanted or (prefix is not None and entry.sha256.startswith(prefix))

    with _locked_tokens(lake) as (path, entries):
        matches = [i for i, e in enumerate(entries) if named(e) and e.revoked is None]
        if not matches:
            gone = [e for e in entries if named(e)]
            if gone:
                raise ValueError(
                    f"token {wanted!r} was already revoked at {gone[-1].revoked:%Y-%m-%d %H:%M:%S} UTC"
                )
            raise ValueError(
                f"no token is named {wanted!r} or has a hash starting with it "
                f"(at least {MIN_REVOKE_PREFIX} hexadecimal digits); see `credit token list`"
            )
        if len(matches) > 1:
            which = ", ".join(f"{entries[i].name} ({entries[i].prefix})" for i in matches)
            raise ValueError(f"{wanted!r} names {len(matches)} tokens: {which}; give more of the hash")
        index = matches[0]
        entries[index] = replace(entries[index], revoked=now.replace(microsecond=0))
        _write_tokens(path, entries)
        return entries[index]


class TokenBook:
    """The deployment's tokens, re-read whenever the file changes (a new inode, time or size)."""

    def __init__(self, lake: Path) -> None:
        self.path = tokens_path(lake)
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, TokenEntry] = {}
        self._lock = threading.Lock()
        self._refresh()  # a damaged file stops `credit serve` here, before it listens

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._by_hash, self._stamp = {}, None
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            entries = read_tokens(self.path)  # raises TokensDamaged: never serve from a half-read file
            self._by_hash = {e.sha256: e for e in entries}
            self._stamp = stamp

    def authenticate(self, token: str, now: datetime | None = None) -> Principal:
        """The token's holder; TokenRefused (unknown, expired, revoked) or TokensDamaged otherwise."""
        if not token or len(token) > 200:
            raise TokenRefused("a valid bearer token is required")
        digest = _hash(token)
        with self._lock:
            self._refresh()
            found = self._by_hash.get(digest)
        # constant-time comparison of the digest we found against the presented one
        if found is None or not secrets.compare_digest(found.sha256, digest):
            raise TokenRefused("a valid bearer token is required")
        state = found.state(now or datetime.now(UTC))
        if state == "revoked":
            raise TokenRefused(
                f"this token was revoked at {found.revoked:%Y-%m-%d %H:%M:%S} UTC", found.principal()
            )
        if state == "expired":
            raise TokenRefused(
                f"this token expired at {found.expires:%Y-%m-%d %H:%M:%S} UTC", found.principal()
            )
        return found.principal()
