"""Tokens through the real CLI and a real `credit serve`: listed without ever showing the token,
unique names, expiry, revocation that takes effect in a running service, and refusals audited."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from serving.audit import audit_path
from serving.tokens import create_token, tokens_path
from tests.conftest import PublishedLakes
from tests.service_support import build_lake, credit, run_credit, serving

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick


@pytest.fixture(scope="module")
def deployment(published_lakes: PublishedLakes) -> dict:
    _, lake = build_lake(published_lakes, entities=400)
    with serving(lake) as base:
        yield {"lake": lake, "base": base}


def listed(lake: Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(credit("token", "list", "--json", "--lake", str(lake)))}


def test_list_shows_name_role_dates_and_hash_prefix_never_the_token(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    token = credit("token", "create", "--role", "regulator", "--name", "inspector zhao", "--lake", str(lake))
    credit("token", "create", "--role", "public", "--name", "portal", "--expires", "30", "--lake", str(lake))
    rows = listed(lake)
    assert rows["inspector zhao"]["hash_prefix"] == hashlib.sha256(token.encode()).hexdigest()[:12]
    assert rows["inspector zhao"]["role"] == "regulator" and rows["inspector zhao"]["expires"] is None
    expires = datetime.fromisoformat(rows["portal"]["expires"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)
    table = credit("token", "list", "--lake", str(lake))
    assert table.splitlines()[0].split() == ["name", "role", "created", "expires", "state", "hash_prefix"]
    assert "inspector zhao" in table and rows["portal"]["hash_prefix"] in table
    stored = tokens_path(lake).read_text("utf-8")
    for shown in (table, json.dumps(rows), stored):
        assert token not in shown and token[3:15] not in shown


def test_names_are_unique_and_expiry_is_checked(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    credit("token", "create", "--role", "regulator", "--name", "inspector zhao", "--lake", lake)
    before = tokens_path(Path(lake)).read_bytes()
    again = run_credit("token", "create", "--role", "public", "--name", "inspector zhao", "--lake", lake)
    assert again.returncode == 1 and "a token named 'inspector zhao' already exists" in again.stderr
    assert tokens_path(Path(lake)).read_bytes() == before
    dated = credit(
        "token", "create", "--role", "public", "--name", "dated", "--expires", "2099-01-31", "--lake", lake
    )
    assert dated and listed(Path(lake))["dated"]["expires"] == "2099-01-31T00:00:00+00:00"
    for wrong, said in (
        ("2020-01-01", "not in the future"),
        ("0", "at least 1 day"),
        ("soon", "number of days or a date"),
    ):
        done = run_credit(
            "token", "create", "--role", "public", "--name", "x", "--expires", wrong, "--lake", lake
        )
        assert done.returncode == 1 and said in done.stderr, (wrong, done.stderr)
    assert "x" not in listed(Path(lake))


def test_revoke_by_name_or_hash_prefix(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    credit("token", "create", "--role", "regulator", "--name", "inspector zhao", "--lake", lake)
    credit("token", "create", "--role", "public", "--name", "portal", "--lake", lake)
    assert "revoked inspector zhao" in credit("token", "revoke", "inspector zhao", "--lake", lake)
    prefix = listed(Path(lake))["portal"]["hash_prefix"]
    assert "revoked portal" in credit("token", "revoke", prefix[:8], "--lake", lake)
    assert {row["state"] for row in listed(Path(lake)).values()} == {"revoked"}
    twice = run_credit("token", "revoke", "portal", "--lake", lake)
    assert twice.returncode == 1 and "already revoked" in twice.stderr
    unknown = run_credit("token", "revoke", "nobody", "--lake", lake)
    assert unknown.returncode == 1 and "no token is named 'nobody'" in unknown.stderr
    # the holder of a revoked token may get a new one under the same name; both stay listed
    credit("token", "create", "--role", "regulator", "--name", "inspector zhao", "--lake", lake)
    states = [r["state"] for r in json.loads(credit("token", "list", "--json", "--lake", lake))]
    assert sorted(states) == ["active", "revoked", "revoked"]


def test_a_damaged_token_file_gives_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    credit("token", "create", "--role", "regulator", "--name", "inspector zhao", "--lake", str(lake))
    path = tokens_path(lake)
    path.write_text(path.read_text("utf-8")[:-20], "utf-8")
    damaged = path.read_bytes()
    for command in (
        ("token", "list"),
        ("token", "create", "--role", "public", "--name", "portal"),
        ("token", "revoke", "inspector zhao"),
    ):
        done = run_credit(*command, "--lake", str(lake))
        assert done.returncode == 1 and str(path) in done.stderr and "not valid JSON" in done.stderr, command
    assert path.read_bytes() == damaged


def test_revoked_and_expired_tokens_are_refused_by_a_running_service_and_audited(deployment: dict) -> None:
    lake, base = deployment["lake"], deployment["base"]
    revoked = credit("token", "create", "--role", "regulator", "--name", "to revoke", "--lake", str(lake))
    expiring = create_token(
        lake, "regulator", "short lived", expires=datetime.now(UTC) + timedelta(seconds=3)
    )
    for token in (revoked, expiring):
        assert (
            httpx.get(base + "/api/v1/version", headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )
    credit("token", "revoke", "to revoke", "--lake", str(lake))
    time.sleep(3.2)
    for token, said in ((revoked, "this token was revoked at"), (expiring, "this token expired at")):
        response = httpx.get(base + "/api/v1/version", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401 and said in response.json()["error"]
    entries = [json.loads(line) for line in audit_path(lake).read_text("utf-8").splitlines()]
    refused = {e["who"]: e for e in entries if e["action"] == "refused" and e["status"] == 401}
    assert "was revoked" in refused["to revoke"]["reason"] and "expired" in refused["short lived"]["reason"]
    assert refused["to revoke"]["token"] == listed(lake)["to revoke"]["hash_prefix"]
