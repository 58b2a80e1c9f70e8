"""The audit trail against a real `credit serve`, the real CLI, real files and a real anchor store:
nothing can be removed, emptied, deleted or rewritten unnoticed; refusals, addresses and versions
are recorded without letting a flood fill the disk; a torn line or a damaged file never turns into
a bare 500, and a damaged file stops `credit serve` at start with a message naming it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from serving.app import audit_settings, load_config
from serving.audit import ANCHOR_ENV, KEY_ENV, AuditLog, audit_path, entry_hash, load_key
from serving.tokens import tokens_path
from tests.conftest import PublishedLakes
from tests.service_support import build_lake, credit, free_port, run_credit, serving

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, published_lakes: PublishedLakes) -> dict:
    root = tmp_path_factory.mktemp("audit")
    _, lake = build_lake(published_lakes, entities=400)
    regulator = credit(
        "token", "create", "--role", "regulator", "--name", "inspector li", "--lake", str(lake)
    )
    public = credit("token", "create", "--role", "public", "--name", "portal", "--lake", str(lake))
    service_log = root / "serve.log"
    with serving(lake, log=service_log) as base:
        yield {
            "root": root,
            "lake": lake,
            "base": base,
            "log": service_log,
            "regulator": {"Authorization": f"Bearer {regulator}"},
            "public": {"Authorization": f"Bearer {public}"},
        }


def ask(deployment: dict, path: str, role: str | None = "regulator", **params: object) -> httpx.Response:
    headers = deployment[role] if role else {}
    return httpx.get(deployment["base"] + path, headers=headers, params=params, timeout=30)


def entries(lake: Path) -> list[dict]:
    """The complete entries of the lake's log (a torn line is skipped)."""
    out: list[dict] = []
    if not audit_path(lake).exists():
        return out
    for line in audit_path(lake).read_text("utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def verify(lake: Path) -> tuple[int, dict]:
    done = run_credit("audit", "verify", "--lake", str(lake))
    return done.returncode, json.loads(done.stdout)


def test_queries_and_refusals_are_recorded_with_address_and_version(deployment: dict) -> None:
    lake = deployment["lake"]
    before = len(entries(lake))
    assert ask(deployment, "/api/v1/version").status_code == 200
    assert ask(deployment, "/api/v1/profiles/123").status_code == 400
    assert (
        ask(deployment, "/api/v1/search/legal-representative", role="public", name="张三").status_code == 403
    )
    assert ask(deployment, "/api/v1/lists/everyone").status_code == 422
    assert ask(deployment, "/api/v1/version", role=None).status_code == 401
    new = entries(lake)[before:]
    served = (lake / "published" / "current").resolve().name
    tokens = {
        t["name"]: t["hash_prefix"]
        for t in json.loads(credit("token", "list", "--json", "--lake", str(lake)))
    }
    by_status = {e["status"]: e for e in new}
    assert set(by_status) == {200, 400, 403, 422, 401}
    assert all(e["address"] == "127.0.0.1" and e["version"] == served for e in new)
    assert by_status[200]["action"] == "version" and by_status[200]["token"] == tokens["inspector li"]
    assert by_status[400]["query"] == {"code": "123"} and "malformed code" in by_status[400]["reason"]
    assert by_status[403]["who"] == "portal" and by_status[403]["token"] == tokens["portal"]
    assert by_status[422]["route"] == "/api/v1/lists/{name}" and by_status[422]["query"] == {
        "name": "everyone"
    }
    assert by_status[401]["who"] is None and by_status[401]["action"] == "refused"
    assert verify(lake)[0] == 0


def test_a_flood_of_refusals_is_tallied_not_itemised(deployment: dict, tmp_path: Path) -> None:
    callers = 3  # itemised per window; one window for the whole test
    config = tmp_path / "service.toml"
    config.write_text(
        # guesses are let through to their 401 here (the per-address limit has its own test)
        "[rate_limit]\nrequests_per_second = 1\nburst = 2\n"
        "anonymous_requests_per_second = 1000\nanonymous_burst = 1000\n"
        # the tally is kept per worker process (the bound below is per worker): one worker here
        "[server]\nworkers = 1\n"
        f"[audit]\ntally_window_seconds = 300\ntally_callers_per_window = {callers}\n",
        "utf-8",
    )
    lake = deployment["lake"]
    with serving(lake, config) as base:
        before = len(entries(lake))
        sent = 0
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer cr_guessed"}) as client:
            for _ in range(150):
                assert client.get("/api/v1/version").status_code == 401
                sent += 1
        with httpx.Client(base_url=base, headers=deployment["public"]) as client:
            limited = [client.get("/api/v1/version").status_code for _ in range(40)].count(429)
        for last_byte in range(2, 8):  # more callers than a window itemises: counted together
            transport = httpx.HTTPTransport(local_address=f"127.0.0.{last_byte}")
            with httpx.Client(base_url=base, transport=transport) as client:
                assert client.get("/api/v1/version").status_code == 401
                sent += 1
    # the window's summaries are written when the service shuts down
    new = [e for e in entries(lake)[before:] if e["action"] == "refused"]
    assert limited >= 30

    def accounted(kept: list[dict]) -> int:
        """Refusals the entries stand for: one itemised per caller, the rest counted in a summary."""
        return sum(e.get("repeats", 1) for e in kept)

    assert len(new) <= 2 * callers + 1, f"{len(new)} entries for {sent + limited} refusals"
    assert accounted([e for e in new if e.get("status") == 401 or e["address"] == "*"]) == sent
    assert accounted([e for e in new if e.get("status") == 429]) == limited
    assert [e["address"] for e in new if "repeats" not in e] == ["127.0.0.1", "127.0.0.1", "127.0.0.2"]
    assert verify(lake)[0] == 0


@pytest.mark.parametrize("damage", ["last lines removed", "cut mid-line", "emptied", "deleted"])
def test_lost_entries_are_detected_and_stop_regulator_queries(deployment: dict, damage: str) -> None:
    lake, log = deployment["lake"], audit_path(deployment["lake"])
    for _ in range(3):
        assert ask(deployment, "/api/v1/version").status_code == 200
    original = log.read_bytes()
    last = json.loads(original.splitlines()[-1])["seq"]
    if damage == "last lines removed":
        log.write_bytes(b"".join(original.splitlines(keepends=True)[:-2]))
        expected = f"entries {last - 1}..{last} are missing"
    elif damage == "cut mid-line":
        log.write_bytes(original[:-40])
        expected = f"entry {last} is missing"
    elif damage == "emptied":
        log.write_bytes(b"")
        expected = f"entries 1..{last} are missing: the log is empty"
    else:
        log.unlink()
        expected = f"does not exist, but the anchor store holds entries 1..{last}"
    try:
        status, report = verify(lake)
        assert status == 2 and not report["intact"]
        assert expected in report["problem"], report
        refused = ask(deployment, "/api/v1/version")
        assert refused.status_code == 503 and "audit trail cannot be written" in refused.json()["error"]
        assert ask(deployment, "/api/v1/version", role="public").status_code == 200
    finally:
        log.write_bytes(original)
    assert ask(deployment, "/api/v1/version").status_code == 200
    status, report = verify(lake)
    assert status == 0 and report["intact"], report


def _rechain(lines: list[bytes], edited: int, digest) -> bytes:  # noqa: ANN001 - a hash function
    """The log with line ``edited`` altered and every hash from there on recomputed by ``digest``."""
    out, previous = [line + b"\n" for line in lines[:edited]], json.loads(lines[edited])["prev"]
    for number, raw in enumerate(lines[edited:], start=edited):
        entry = json.loads(raw)
        if number == edited:
            entry["status"] = 299
        entry["prev"] = previous
        entry["hash"] = digest({k: v for k, v in entry.items() if k != "hash"})
        previous = entry["hash"]
        out.append(json.dumps(entry, ensure_ascii=False, sort_keys=True).encode() + b"\n")
    return b"".join(out)


def test_a_rewritten_chain_is_detected_with_or_without_the_key(deployment: dict) -> None:
    lake, log = deployment["lake"], audit_path(deployment["lake"])
    for _ in range(3):
        assert ask(deployment, "/api/v1/version").status_code == 200
    original = log.read_bytes()
    lines = original.splitlines()
    edited = len(lines) - 3

    def unkeyed(body: dict) -> str:  # the chain as it was before: plain SHA-256, recomputable by anyone
        text = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256((body["prev"] + text).encode()).hexdigest()

    key = load_key(Path(os.environ[KEY_ENV]), create=False)
    try:
        log.write_bytes(_rechain(lines, edited, unkeyed))
        status, report = verify(lake)
        assert (
            status == 2 and f"line {edited + 1} " in report["problem"] and "keyed hash" in report["problem"]
        )
        log.write_bytes(_rechain(lines, edited, lambda body: entry_hash(key, body)))  # with a stolen key
        status, report = verify(lake)
        assert status == 2 and "not the entry the anchor store recorded" in report["problem"], report
        assert f"line {edited + 1} " in report["problem"]
    finally:
        log.write_bytes(original)
    assert verify(lake)[0] == 0


def test_a_torn_last_line_is_reported_and_the_chain_continues_after_it(deployment: dict) -> None:
    lake, log = deployment["lake"], audit_path(deployment["lake"])
    assert ask(deployment, "/api/v1/version").status_code == 200
    with open(log, "ab") as handle:  # what a crash in the middle of a write leaves
        handle.write(b'{"action": "profile", "address": "127.0.0.1", "at": "2026-11')
    torn_line = len(log.read_bytes().splitlines())
    for _ in range(2):
        assert ask(deployment, "/api/v1/version").status_code == 200
    status, report = verify(lake)
    assert status == 0 and report["intact"], report
    assert any(note.startswith(f"line {torn_line} ") and "torn" in note for note in report["notes"]), report
    after = log.read_bytes().splitlines()[torn_line:]
    assert len(after) == 2 and all(json.loads(line)["action"] == "version" for line in after)
    deadline = time.monotonic() + 5
    while "not a complete entry" not in deployment["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "new entries continue the chain" in deployment["log"].read_text()


def test_a_damaged_token_file_while_running_gives_a_clear_503(deployment: dict) -> None:
    path = tokens_path(deployment["lake"])
    original = path.read_bytes()
    try:
        path.write_text('[{"sha256": "abc", ', "utf-8")
        response = ask(deployment, "/api/v1/version")
        assert response.status_code == 503
        assert (
            "tokens.json is damaged" in response.json()["error"]
            and "not valid JSON" in response.json()["error"]
        )
    finally:
        path.write_bytes(original)
    assert ask(deployment, "/api/v1/version").status_code == 200


@pytest.fixture
def spare_lake(deployment: dict, tmp_path: Path) -> Path:
    """A copy of the deployment's lake with its own (empty) audit trail."""
    lake = tmp_path / "lake"
    shutil.copytree(deployment["lake"], lake, symlinks=True, ignore=shutil.ignore_patterns("audit.jsonl"))
    return lake


def refuses_to_start(lake: Path) -> str:
    done = run_credit("serve", "--lake", str(lake), "--port", str(free_port()), timeout=60)
    assert done.returncode != 0, "credit serve started"
    return done.stderr


def test_serve_refuses_to_start_on_a_damaged_token_file(spare_lake: Path) -> None:
    path = tokens_path(spare_lake)
    path.write_text('[{"sha256": "' + "0" * 64 + '", "name": "x", "role": "admin", "created": "2026-01-01"}]')
    said = refuses_to_start(spare_lake)
    assert str(path) in said and "role 'admin' is not one of regulator, public" in said
    path.write_text("{not json")
    said = refuses_to_start(spare_lake)
    assert str(path) in said and "not valid JSON" in said


def test_serve_refuses_to_start_on_a_damaged_audit_trail(
    spare_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = AuditLog(spare_lake, audit_settings(load_config()))
    for number in range(5):
        trail.append({"action": "test", "number": number})
    log = audit_path(spare_lake)
    whole = log.read_bytes()
    log.write_bytes(b"".join(whole.splitlines(keepends=True)[:3]))
    said = refuses_to_start(spare_lake)
    assert str(log) in said and "entries 4..5 are missing" in said
    log.write_bytes(whole.replace(b'"number": 4', b'"number": 7'))
    said = refuses_to_start(spare_lake)
    assert str(log) in said and "last entry (5) does not match its keyed hash" in said
    log.write_bytes(whole)
    loose = spare_lake.parent / "loose.key"
    loose.write_text(secrets.token_hex(32))
    loose.chmod(0o644)
    monkeypatch.setenv(KEY_ENV, str(loose))
    said = refuses_to_start(spare_lake)
    assert str(loose) in said and "chmod 600" in said
    monkeypatch.setenv(KEY_ENV, str(spare_lake.parent / "absent.key"))
    said = refuses_to_start(spare_lake)
    assert "absent.key is missing" in said and "restore the key" in said


def test_the_key_is_created_outside_the_lake_mode_600_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "secrets" / "audit.key"
    monkeypatch.setenv(KEY_ENV, str(key_file))
    lake = tmp_path / "lake"
    trail = AuditLog(lake, audit_settings(load_config()))
    assert oct(key_file.stat().st_mode)[-3:] == "600" and len(load_key(key_file, create=False) or b"") == 32
    entry = trail.append({"action": "test"})
    assert entry["hash"] == entry_hash(load_key(key_file, create=False) or b"", entry)
    assert oct(audit_path(lake).stat().st_mode)[-3:] == "600"


def _append_many(lake: str, count: int, writer: int) -> None:
    trail = AuditLog(Path(lake), audit_settings(load_config()))
    for number in range(count):
        trail.append({"action": "test", "writer": writer, "number": number})


@dataclass(frozen=True)
class PostgresAnchor:
    url: str  # as the INSERT-only role
    schema: str
    role: str


@pytest.fixture
def postgres_anchor(postgres_url: str) -> Iterator[PostgresAnchor]:
    """An anchor store set up as in production: `credit audit anchor-sql` run by the DBA in its own
    schema, and a role that may only SELECT and INSERT; yields that role's URL."""
    suffix = secrets.token_hex(4)
    schema, role = f"audit_test_{suffix}", f"credit_audit_{suffix}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        connection.exec_driver_sql(f"ALTER ROLE {role} SET search_path = {schema}")
        connection.exec_driver_sql(f"SET search_path = {schema}")
        connection.exec_driver_sql(credit("audit", "anchor-sql", "--role", role))
    try:
        url = sa.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
        yield PostgresAnchor(url, schema, role)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_concurrent_writers_in_several_processes_keep_one_chain(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if store == "postgres":
        monkeypatch.setenv(ANCHOR_ENV, request.getfixturevalue("postgres_anchor").url)
    lake, writers, each = tmp_path / "lake", 4, 60
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_many, args=(str(lake), each, w)) for w in range(writers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    status, report = verify(lake)
    assert status == 0 and report["entries"] == report["anchored"] == writers * each, report
    written = [(e["writer"], e["number"]) for e in entries(lake)]
    assert sorted(written) == [(w, n) for w in range(writers) for n in range(each)]


def test_the_postgres_anchor_role_can_only_add(
    postgres_anchor: PostgresAnchor, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ANCHOR_ENV, postgres_anchor.url)
    lake = tmp_path / "lake"
    _append_many(str(lake), 3, 0)
    role = sa.create_engine(postgres_anchor.url)
    for statement in (
        "DELETE FROM audit_anchor",
        "UPDATE audit_anchor SET hash = 'x'",
        "TRUNCATE audit_anchor",
    ):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), role.begin() as connection:
            connection.exec_driver_sql(statement)
    role.dispose()
    owner = sa.create_engine(postgres_url)  # even the table's owner: the trigger refuses
    schema = postgres_anchor.schema
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), owner.begin() as connection:
        connection.exec_driver_sql(f"DELETE FROM {schema}.audit_anchor")
    owner.dispose()
    audit_path(lake).write_bytes(b"".join(audit_path(lake).read_bytes().splitlines(keepends=True)[:1]))
    status, report = verify(lake)
    assert status == 2 and "entries 2..3 are missing" in report["problem"]


def test_entries_written_while_the_anchor_store_refuses_are_noted_then_covered(
    postgres_anchor: PostgresAnchor, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ANCHOR_ENV, postgres_anchor.url)
    lake = tmp_path / "lake"
    trail = AuditLog(lake, audit_settings(load_config()))
    trail.append({"action": "test", "number": 0})
    table, role = f"{postgres_anchor.schema}.audit_anchor", postgres_anchor.role
    admin = sa.create_engine(postgres_url)
    with admin.begin() as connection:  # the store stops taking anchors: queries go on, unanchored
        connection.exec_driver_sql(f"REVOKE INSERT ON {table} FROM {role}")
    trail.append({"action": "test", "number": 1})
    trail.append({"action": "test", "number": 2})
    status, report = verify(lake)
    assert status == 0 and report["entries"] == 3 and report["anchored"] == 1
    assert any("entries 2..3 are not anchored yet" in note for note in report["notes"]), report
    with admin.begin() as connection:
        connection.exec_driver_sql(f"GRANT INSERT ON {table} TO {role}")
    admin.dispose()
    trail.append({"action": "test", "number": 3})  # anchored again: it vouches for 2 and 3 through the chain
    status, report = verify(lake)
    assert status == 0 and report["anchored"] == 4 and report["notes"] == [], report
