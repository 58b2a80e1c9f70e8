"""The audit trail of the query service: keyed, hash-chained JSON lines, anchored outside the lake.

Three parts, because each alone can be undone by someone who can write the lake:

- ``LAKE/service/audit.jsonl``: one JSON line per entry (who, token hash prefix, client address,
  version served, what, how many results, status), appended under an exclusive ``flock`` so that
  several worker processes keep one chain. Each entry holds the previous entry's hash and its own
  HMAC-SHA256 under a secret key kept outside the lake (``[audit] key_file``, created mode 600 on
  first use), so an edited line cannot be given a matching hash without the key.
- the anchor store (``[audit] anchor_url``, any SQLAlchemy URL): after the line is written, the
  entry's (seq, hash) is INSERTed there. Behind an INSERT-only role nothing it holds can be taken
  back, so removing lines from the end, emptying or deleting the file, or rewriting it even with
  the key, leaves entries the anchor store knows and the log does not: ``verify_audit`` names them.
- refusals that cost the caller nothing (no valid token, beyond the rate limit) are tallied: the
  first from a caller in a window is written in full, the rest are counted into one summary entry,
  and callers beyond a cap per window share one counter, so a flood cannot fill the disk.

A line torn by a crash mid-write is skipped (reported here and by ``verify_audit``); the next entry
starts on a new line and continues the chain from the last complete entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.schema import CreateTable

from foundation import settings
from serving.tokens import service_dir

log = logging.getLogger(__name__)

GENESIS = "0" * 64
KEY_ENV, ANCHOR_ENV = settings.AUDIT_KEY_ENV, settings.AUDIT_ANCHOR_ENV
_TAIL_LIMIT = 1 << 20  # a log whose last MiB holds no complete entry is damaged, not torn

_metadata = sa.MetaData()
ANCHORS = sa.Table(
    "audit_anchor",
    _metadata,
    sa.Column("trail", sa.String(1024), primary_key=True, comment="the log file's absolute path"),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("anchored_at", sa.String(40), nullable=False),
)
_APPEND_ONLY_REASON = "audit anchors are append-only"


class AuditDamaged(Exception):
    """The trail cannot be continued or trusted as it is: names the file and the problem."""


class AnchorUnavailable(Exception):
    """The anchor store cannot be reached or used."""


def audit_path(lake: Path) -> Path:
    return service_dir(lake) / "audit.jsonl"


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]`` of config/service.toml; the environment overrides where the key and anchor are."""

    key_file: Path
    anchor_url: str
    tally_window_seconds: float
    tally_callers_per_window: int
    tallied_statuses: frozenset[int]

    @classmethod
    def from_sections(cls, *sections: dict[str, Any]) -> AuditSettings:
        """Later sections override earlier ones key by key (defaults first, then the user's file, then
        the environment through foundation.settings)."""
        merged: dict[str, Any] = {}
        for section in (*sections, settings.audit_overrides()):
            merged.update(section)
        missing = [f.name for f in fields(cls) if f.name not in merged]
        if missing:
            raise ValueError(f"service config: [audit] lacks {', '.join(missing)}")
        return cls(
            key_file=Path(merged["key_file"]).expanduser(),
            anchor_url=merged["anchor_url"],
            tally_window_seconds=float(merged["tally_window_seconds"]),
            tally_callers_per_window=int(merged["tally_callers_per_window"]),
            tallied_statuses=frozenset(int(s) for s in merged["tallied_statuses"]),
        )


# ------------------------------------------------------------------------------------------ key


def load_key(path: Path, create: bool) -> bytes | None:
    """The HMAC key in ``path``; created (mode 600, atomically, once even under racing workers) when
    ``create`` and absent, else None when absent. A key others could read is refused."""
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(aside, path)  # fails if another process made the key first: theirs wins
            log.warning("created the audit key %s (keep it outside the lake; back it up)", path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise AuditDamaged(f"audit key {path}: not a regular file")
    if info.st_mode & 0o077:
        raise AuditDamaged(
            f"audit key {path}: readable by others (mode {info.st_mode & 0o777:o}); chmod 600 it"
        )
    text = path.read_text("ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise AuditDamaged(f"audit key {path}: not hexadecimal") from None
    if len(key) < 32:
        raise AuditDamaged(f"audit key {path}: {len(key)} bytes, at least 32 needed")
    return key


def _canonical(entry: dict[str, Any]) -> bytes:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def entry_hash(key: bytes, entry: dict[str, Any]) -> str:
    """HMAC-SHA256 of the entry without its hash (it holds ``prev``, so this chains the entries)."""
    return hmac.new(key, _canonical(entry), hashlib.sha256).hexdigest()


def _parse_entry(line: bytes) -> dict[str, Any] | None:
    """The entry on ``line``, or None when it is not one (a torn write, junk)."""
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("seq"), int)
        or not isinstance(entry.get("hash"), str)
    ):
        return None
    return entry


# --------------------------------------------------------------------------------------- anchor


def anchor_sql(role: str) -> str:
    """PostgreSQL set-up of the anchor store for a DBA: the table, a trigger refusing UPDATE, DELETE
    and TRUNCATE even to its owner, and a role that may only read and add anchors."""
    from sqlalchemy.dialects import postgresql

    table = ANCHORS.name
    create = str(CreateTable(ANCHORS).compile(dialect=postgresql.dialect())).strip()
    return "\n".join(
        [
            f"{create};",
            f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY_REASON}'; END $$;",
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only();",
            f"REVOKE ALL ON {table} FROM PUBLIC;",
            f'GRANT SELECT, INSERT ON {table} TO "{role}";',
            "",
        ]
    )


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database).expanduser()
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = sa.create_engine(parsed.set(database=str(database)), connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # no fsync per anchor: a crash keeps them
            cursor.close()

        return engine
    return sa.create_engine(parsed)  # a stale pooled connection fails one anchor, logged; no ping per entry


class AnchorStore:
    """Where each entry's (seq, hash) goes after its line is written; INSERT and SELECT only."""

    def __init__(self, url: str, trail: str) -> None:
        self.trail = trail
        self.shown = make_url(url).render_as_string(hide_password=True)
        try:
            self.engine = _engine(url)
            self._prepare()
        except sa.exc.SQLAlchemyError as exc:
            raise AnchorUnavailable(f"audit anchor store {self.shown}: {_first_line(exc)}") from exc
        os.register_at_fork(after_in_child=lambda: self.engine.dispose(close=False))

    def _prepare(self) -> None:
        if sa.inspect(self.engine).has_table(ANCHORS.name):
            return
        try:
            _metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.DBAPIError as exc:  # an INSERT-only role may not create it
            raise AnchorUnavailable(
                f"audit anchor store {self.shown}: table {ANCHORS.name} is missing and cannot be created "
                f"({_first_line(exc)}); have a DBA run the output of `credit audit anchor-sql --role ROLE`"
            ) from exc
        if self.engine.dialect.name == "sqlite":
            with self.engine.begin() as connection:
                for event in ("UPDATE", "DELETE"):
                    connection.exec_driver_sql(
                        f"CREATE TRIGGER IF NOT EXISTS {ANCHORS.name}_no_{event.lower()} BEFORE {event} "
                        f"ON {ANCHORS.name} BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_REASON}'); END"
                    )

    def head(self) -> tuple[int, str, str] | None:
        """The highest anchored (seq, hash, anchored_at) of this trail, or None."""
        query = (
            sa.select(ANCHORS.c.seq, ANCHORS.c.hash, ANCHORS.c.anchored_at)
            .where(ANCHORS.c.trail == self.trail)
            .order_by(ANCHORS.c.seq.desc())
            .limit(1)
        )
        try:
            with self.engine.connect() as connection:
                row = connection.execute(query).first()
        except sa.exc.SQLAlchemyError as exc:
            raise AnchorUnavailable(f"audit anchor store {self.shown}: {_first_line(exc)}") from exc
        return (int(row[0]), row[1], row[2]) if row else None

    def add(self, seq: int, digest: str, at: str) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    ANCHORS.insert().values(trail=self.trail, seq=seq, hash=digest, anchored_at=at)
                )
        except sa.exc.IntegrityError as exc:
            raise AuditDamaged(
                f"audit anchor store {self.shown} already holds entry {seq} of {self.trail}: "
                "the log lost entries it had"
            ) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise AnchorUnavailable(f"audit anchor store {self.shown}: {_first_line(exc)}") from exc

    def walk(self) -> Iterator[tuple[int, str, str]]:
        """Every anchor of this trail in order, streamed."""
        query = (
            sa.select(ANCHORS.c.seq, ANCHORS.c.hash, ANCHORS.c.anchored_at)
            .where(ANCHORS.c.trail == self.trail)
            .order_by(ANCHORS.c.seq)
        )
        try:
            with self.engine.connect() as connection:
                for row in connection.execution_options(yield_per=10_000).execute(query):
                    yield int(row[0]), row[1], row[2]
        except sa.exc.SQLAlchemyError as exc:
            raise AnchorUnavailable(f"audit anchor store {self.shown}: {_first_line(exc)}") from exc


def _missing(first: int, last: int) -> str:
    return f"entry {first} is missing" if first == last else f"entries {first}..{last} are missing"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


# ------------------------------------------------------------------------------------------ log


@dataclass
class Tail:
    """The end of the log: its last complete entry and any bytes after it that are not one."""

    entry: dict[str, Any] | None
    junk_offset: int  # where the bytes after the last entry start (== size when there are none)
    size: int

    @property
    def seq(self) -> int:
        return int(self.entry["seq"]) if self.entry else 0

    @property
    def hash(self) -> str:
        return str(self.entry["hash"]) if self.entry else GENESIS


def read_tail(fd: int, path: Path) -> Tail:
    """Reads backwards from the end of the file until a complete entry turns up."""
    size = os.fstat(fd).st_size
    block, start, data = 4096, size, b""
    while start > 0:
        step = min(block, start)
        start -= step
        data = os.pread(fd, step, start) + data
        lines = data.split(b"\n")
        first_whole = 0 if start == 0 else 1  # the first piece may be the end of an earlier line
        offset = size
        for index in range(len(lines) - 1, first_whole - 1, -1):
            offset -= len(lines[index]) + (1 if index < len(lines) - 1 else 0)
            if not lines[index].strip():
                continue
            entry = _parse_entry(lines[index])
            if entry is not None:
                return Tail(entry, min(size, offset + len(lines[index]) + 1), size)
        if size - start >= _TAIL_LIMIT:
            raise AuditDamaged(f"{path}: no complete entry in its last {size - start} bytes")
        block *= 2
    return Tail(None, 0, size)


class AuditLog:
    """The trail of one lake: append entries, check that the file and the anchor store agree."""

    def __init__(self, lake: Path, settings: AuditSettings) -> None:
        self.path = audit_path(lake)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.anchor = AnchorStore(settings.anchor_url, str(self.path.resolve()))
        self._lock = threading.Lock()
        self._torn_reported: set[tuple[int, int]] = set()
        self.key = b""
        self.check(settings.key_file)

    def check(self, key_file: Path) -> Tail:
        """At start: the key, the log's last entry and the anchor store's head must agree."""
        head = self.anchor.head()
        if self.path.exists() and not self.path.is_file():
            raise AuditDamaged(f"{self.path}: not a regular file")
        key = load_key(key_file, create=False)
        tail = Tail(None, 0, 0)
        if self.path.exists():
            with self._open() as fd:
                tail = read_tail(fd, self.path)
                if tail.junk_offset < tail.size:
                    self._report_torn(fd, tail)
        if key is None:
            if tail.entry is not None or head is not None:
                raise AuditDamaged(
                    f"audit key {key_file} is missing, but the trail {self.path} already holds entries keyed "
                    "with it; restore the key (a new one would break the chain)"
                )
            key = load_key(key_file, create=True)
        self.key = key or b""
        self._check_tail(tail, head)
        return tail

    def _open(self) -> _Descriptor:
        return _Descriptor(self.path)

    def _check_tail(self, tail: Tail, head: tuple[int, str, str] | None) -> None:
        if tail.entry is not None and entry_hash(self.key, tail.entry) != tail.hash:
            raise AuditDamaged(
                f"{self.path}: its last entry ({tail.seq}) does not match its keyed hash: altered, "
                "or written with another key"
            )
        if head is None:
            return
        seq, digest, at = head
        if tail.seq < seq:
            have = f"ends at entry {tail.seq}" if tail.entry else "holds no entry (emptied or deleted)"
            raise AuditDamaged(
                f"{self.path} {have}, but the anchor store {self.anchor.shown} holds entries up to {seq} "
                f"(anchored {at}): {_missing(tail.seq + 1, seq)}; restore the file, "
                "then run `credit audit verify`"
            )
        if tail.seq == seq and tail.hash != digest:
            raise AuditDamaged(
                f"{self.path}: entry {seq} is not the one the anchor store {self.anchor.shown} recorded "
                f"at {at}: the log was rewritten"
            )

    def _report_torn(self, fd: int, tail: Tail) -> None:
        mark = (os.fstat(fd).st_ino, tail.junk_offset)
        if mark not in self._torn_reported:
            self._torn_reported.add(mark)
            log.warning(
                "%s: %d bytes at offset %d are not a complete entry (a write torn by a crash?); "
                "new entries continue the chain after entry %d",
                self.path,
                tail.size - tail.junk_offset,
                tail.junk_offset,
                tail.seq,
            )

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Write one entry after the last complete one and anchor it; returns the entry.

        Raises AuditDamaged when the file no longer agrees with the anchor store (lines lost) or
        its last entry was altered. An unreachable anchor store is logged and the entry kept: the
        next anchored entry vouches for it through the chain."""
        with self._lock:
            for _ in range(5):  # the file may be replaced (restored) while we wait for the lock
                with self._open() as fd:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time across processes
                    if self._is_current(fd):
                        return self._append_locked(fd, fields)
            raise AuditDamaged(f"{self.path}: replaced again and again while appending")

    def _is_current(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == self.path.stat().st_ino
        except FileNotFoundError:
            return False

    def _append_locked(self, fd: int, fields: dict[str, Any]) -> dict[str, Any]:
        """The read-tail, check, write, anchor sequence, under the exclusive lock."""
        tail = read_tail(fd, self.path)
        try:
            head = self.anchor.head()
        except AnchorUnavailable as exc:
            log.error("%s; writing the entry unanchored", exc)
            head = None
        self._check_tail(tail, head)
        if tail.junk_offset < tail.size:
            self._report_torn(fd, tail)
        torn_end = tail.size > 0 and os.pread(fd, 1, tail.size - 1) != b"\n"
        entry = {
            **fields,
            "seq": tail.seq + 1,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "prev": tail.hash,
        }
        entry["hash"] = entry_hash(self.key, entry)
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
        _write_all(fd, (("\n" if torn_end else "") + line).encode())
        try:
            self.anchor.add(entry["seq"], entry["hash"], entry["at"])
        except AnchorUnavailable as exc:
            log.error("%s; entry %d stays unanchored until the next one is anchored", exc, entry["seq"])
        return entry


class _Descriptor:
    """The log opened for reading and appending (created mode 600), closed on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> int:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditDamaged(f"{self.path}: cannot be opened ({exc.strerror})") from exc
        return self.fd

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


# ------------------------------------------------------------------------------------ refusals


@dataclass
class _Tally:
    first: dict[str, Any]
    repeats: int = 0
    since: str = ""
    until: str = ""


class RefusalTally:
    """Refusals recorded once per caller and window, then counted (see the module docstring).

    Bounded: at most ``2 × callers_per_window + 1`` entries per window and process."""

    def __init__(self, audit: AuditLog, window_seconds: float, callers_per_window: int) -> None:
        self.audit = audit
        self.window = window_seconds
        self.cap = callers_per_window
        self._lock = threading.Lock()
        self._callers: dict[tuple[Any, ...], _Tally] = {}
        self._overflow = 0
        self._overflow_span = ("", "")
        self._opened = time.monotonic()
        self._stop = threading.Event()
        self._thread_pid = 0

    def _ensure_flusher(self) -> None:
        if self._thread_pid != os.getpid():  # one flusher per process, also after a fork
            self._thread_pid = os.getpid()
            threading.Thread(target=self._flush_periodically, daemon=True, name="audit-tally").start()

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.window):
            self.flush(due_only=True)

    def note(self, fields: dict[str, Any]) -> None:
        """Record ``fields`` if it is this caller's first refusal of the window, else count it."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        caller = (fields.get("status"), fields.get("address"), fields.get("token"))
        with self._lock:
            self._ensure_flusher()
            known = self._callers.get(caller)
            if known is not None:
                known.repeats += 1
                known.since, known.until = known.since or now, now
                return
            if len(self._callers) >= self.cap:
                self._overflow += 1
                self._overflow_span = (self._overflow_span[0] or now, now)
                return
            self._callers[caller] = _Tally(fields)
        self.audit.append(fields)

    def flush(self, due_only: bool = False) -> None:
        """Write the window's summaries and open a new window (if it is over, with ``due_only``)."""
        with self._lock:
            if due_only and time.monotonic() - self._opened < self.window:
                return
            callers, overflow, span = self._callers, self._overflow, self._overflow_span
            self._callers, self._overflow, self._overflow_span = {}, 0, ("", "")
            self._opened = time.monotonic()
        summaries = [
            {**tally.first, "repeats": tally.repeats, "since": tally.since, "until": tally.until}
            for tally in callers.values()
            if tally.repeats
        ]
        if overflow:
            summaries.append(
                {
                    "action": "refused",
                    "address": "*",
                    "repeats": overflow,
                    "since": span[0],
                    "until": span[1],
                    "reason": f"refusals of more than {self.cap} callers in one window: counted, not itemised",
                }
            )
        for summary in summaries:
            try:
                self.audit.append(summary)
            except (AuditDamaged, OSError) as exc:
                log.error("could not record %d tallied refusals: %s", summary["repeats"], exc)

    def close(self) -> None:
        self._stop.set()
        self.flush()


# -------------------------------------------------------------------------------------- verify


@dataclass
class AuditReport:
    """What ``credit audit verify`` prints: intact only when nothing is missing or altered."""

    log: str
    anchor_store: str
    entries: int = 0
    anchored: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "entries": self.entries,
            "anchored": self.anchored,
            "problem": self.problems[0] if self.problems else "",
            "problems": self.problems,
            "notes": self.notes,
            "log": self.log,
            "anchor_store": self.anchor_store,
        }


def verify_audit(path: Path, settings: AuditSettings) -> AuditReport:
    """Walk the chain from the first line, check every keyed hash, and compare each entry with the
    anchor store's record of it (both streamed in seq order, so a long trail needs little memory)."""
    report = AuditReport(str(path), make_url(settings.anchor_url).render_as_string(hide_password=True))
    try:
        key = load_key(settings.key_file, create=False)
        anchor = AnchorStore(settings.anchor_url, str(path.resolve()))
        head = anchor.head()
    except (AuditDamaged, AnchorUnavailable) as exc:
        report.problems.append(str(exc))
        return report
    report.anchored, last_anchored_at = (head[0], head[2]) if head else (0, "")
    if not path.exists():
        if head:
            report.problems.append(
                f"{path} does not exist, but the anchor store holds entries 1..{report.anchored} "
                f"(the last anchored {last_anchored_at}): all of them are missing"
            )
        return report
    if key is None and path.stat().st_size:
        report.problems.append(
            f"audit key {settings.key_file} is missing: the keyed hashes cannot be checked"
        )
        return report
    with closing(anchor.walk()) as anchors, open(path, "rb") as handle:
        last = _walk_chain(handle, key or b"", anchors, report)
    if report.problems:
        return report
    if report.anchored > last:
        where = "the log is empty" if last == 0 else f"the log ends at entry {last}"
        report.problems.append(
            f"{_missing(last + 1, report.anchored)}: {where}, but the anchor store holds them "
            f"(the last anchored {last_anchored_at})"
        )
    elif last > report.anchored:
        report.notes.append(
            f"entries {report.anchored + 1}..{last} are not anchored yet (a crash between writing and anchoring, "
            "or the anchor store was unreachable): keyed, but their removal could go unnoticed"
        )
    return report


def _walk_chain(
    handle: BinaryIO, key: bytes, anchors: Iterator[tuple[int, str, str]], report: AuditReport
) -> int:
    """Checks each line against the chain, its keyed hash and its anchor; returns the last entry's seq
    (the first problem ends the walk: everything after it is suspect anyway)."""
    previous, expected = GENESIS, 1
    pending = next(anchors, None)
    for number, raw in enumerate(handle, start=1):
        line = raw.rstrip(b"\n")
        entry = _parse_entry(line)
        if entry is None:
            report.notes.append(
                f"line {number} ({len(line)} bytes) is not a complete entry (a write torn by a crash?): "
                "skipped; the chain continues across it"
            )
            continue
        seq = entry["seq"]
        if seq != expected or entry.get("prev") != previous:
            lost = _missing(expected, seq - 1) if seq > expected else "lines were reordered or repeated"
            report.problems.append(f"line {number} holds entry {seq} where entry {expected} belongs: {lost}")
            return expected - 1
        if not hmac.compare_digest(entry_hash(key, entry), entry["hash"]):
            report.problems.append(
                f"line {number} (entry {seq}) does not match its keyed hash: altered, or rewritten without the key"
            )
            return expected - 1
        while pending is not None and pending[0] < seq:
            pending = next(anchors, None)
        if pending is not None and pending[0] == seq and pending[1] != entry["hash"]:
            report.problems.append(
                f"line {number} (entry {seq}) is not the entry the anchor store recorded at {pending[2]}: "
                "the log was rewritten from there on"
            )
            return expected - 1
        previous, expected = entry["hash"], seq + 1
        report.entries += 1
    return expected - 1
