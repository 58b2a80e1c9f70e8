"""The query service over HTTP: a real `credit serve` process, real tokens, the published lake."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import httpx
import polars as pl
import pytest

from entity_resolution.spec import load_spec
from foundation import settings
from foundation.grading import profile_columns
from pipelines import flow
from pipelines.sources.registry import source_names
from serving.app import audit_settings, load_config
from serving.audit import verify_audit
from serving.disclosure import mask_text
from serving.models import ApiError
from tests.conftest import PublishedLakes
from tests.service_support import DAYS, build_lake, credit, serving

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick


@pytest.fixture(scope="module")
def deployment(published_lakes: PublishedLakes) -> dict:
    sources, lake = build_lake(published_lakes)
    regulator = credit(
        "token", "create", "--role", "regulator", "--name", "inspector wang", "--lake", str(lake)
    )
    public = credit("token", "create", "--role", "public", "--name", "portal", "--lake", str(lake))
    with serving(lake) as base:
        yield {
            "sources": sources,
            "lake": lake,
            "base": base,
            "regulator": {"Authorization": f"Bearer {regulator}"},
            "public": {"Authorization": f"Bearer {public}"},
        }


@pytest.fixture(scope="module")
def profiles(deployment: dict) -> pl.DataFrame:
    return pl.read_parquet(deployment["lake"] / "published" / "current" / "profiles" / "*.parquet")


def get(deployment: dict, path: str, role: str | None = "regulator", **params: object) -> httpx.Response:
    headers = deployment[role] if role else {}
    return httpx.get(deployment["base"] + path, headers=headers, params=params, timeout=30)


def test_tokens_are_required_and_stored_only_as_hashes(deployment: dict) -> None:
    assert get(deployment, "/api/v1/version", role=None).status_code == 401
    bad = httpx.get(deployment["base"] + "/api/v1/version", headers={"Authorization": "Bearer cr_nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    stored = (deployment["lake"] / "service" / "tokens.json").read_text("utf-8")
    token = deployment["regulator"]["Authorization"].split()[1]
    assert token not in stored and len(json.loads(stored)) == 2
    assert oct((deployment["lake"] / "service" / "tokens.json").stat().st_mode)[-3:] == "600"


def test_lookup_by_every_code_and_spelling(deployment: dict, profiles: pl.DataFrame) -> None:
    firm = profiles.filter(pl.col("uscc").is_not_null() & pl.col("reg_no").is_not_null()).row(0, named=True)
    spellings = [
        firm["uscc"],
        firm["uscc"].lower(),
        " ".join([firm["uscc"][:8], firm["uscc"][8:]]),
        firm["uscc"].translate(str.maketrans("0123456789", "０１２３４５６７８９")),
        firm["org_code"],
        firm["org_code"][:8] + "-" + firm["org_code"][8],
        firm["reg_no"],
    ]
    for code in spellings:
        response = get(deployment, f"/api/v1/profiles/{code}")
        assert response.status_code == 200, (code, response.text)
        assert response.json()["profile"]["entity_id"] == firm["entity_id"]


def test_malformed_and_unknown_codes_get_clear_4xx(deployment: dict) -> None:
    uscc = "91330200MA2AXXXXX"  # 17 characters
    response = get(deployment, f"/api/v1/profiles/{uscc}")
    assert response.status_code == 400 and "malformed code" in response.json()["error"]
    wrong_check = "913302001440000000"
    assert get(deployment, f"/api/v1/profiles/{wrong_check}").status_code == 400
    from foundation.identifiers import is_valid_uscc, org_code_check_char, uscc_check_char

    org = "MA2A0000" + org_code_check_char("MA2A0000")
    valid_unknown = "91330200" + org + uscc_check_char("91330200" + org)
    assert is_valid_uscc(valid_unknown)
    response = get(deployment, f"/api/v1/profiles/{valid_unknown}")
    assert response.status_code == 404 and "no firm" in response.json()["error"]
    for hostile in ("..%2F..%2Fetc%2Fpasswd", "%00", "x" * 41, "' OR 1=1 --"):
        assert (
            400
            <= httpx.get(
                deployment["base"] + "/api/v1/profiles/" + hostile, headers=deployment["regulator"]
            ).status_code
            < 500
        ), hostile
    assert httpx.get(deployment["base"] + "/static/../../pipelines/cli.py").status_code == 404
    assert httpx.get(deployment["base"] + "/static/%2e%2e/%2e%2e/config/service.toml").status_code == 404


def test_name_search_finds_firms_as_departments_wrote_them(deployment: dict) -> None:
    links = pl.read_parquet(deployment["lake"] / "published" / "current" / "links" / "*.parquet")
    names = dict(
        pl.read_parquet(deployment["lake"] / "published" / "current" / "profiles" / "*.parquet")
        .select("entity_id", "name")
        .iter_rows()
    )
    variants = (
        links.filter(pl.col("entity_id").str.len_chars() == 18)
        .filter(pl.col("recorded_name") != pl.col("entity_id").replace_strict(names, default=None))
        .unique("entity_id", keep="first")
        .sort("entity_id")
        .head(40)
    )
    found = 0
    for entity_id, written in variants.select("entity_id", "recorded_name").iter_rows():
        hits = get(deployment, "/api/v1/search", q=written, limit=5).json()["hits"]
        scores = [h["match_score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 100 for s in scores)
        found += entity_id in [h["entity_id"] for h in hits[:3]]
    assert found >= 0.9 * variants.height, f"only {found} of {variants.height} variants found in the top 3"


def test_hostile_queries_are_refused(deployment: dict) -> None:
    for q in ("<script>alert(1)</script>", "a\x00b", "华" * 500, "   "):
        response = get(deployment, "/api/v1/search", q=q)
        assert 400 <= response.status_code < 500, (q[:20], response.status_code)
    assert get(deployment, "/api/v1/search", q="'; DROP TABLE profiles; --").status_code in (200, 400)
    assert get(deployment, "/api/v1/lists/everyone").status_code == 422
    assert get(deployment, "/api/v1/lists/grade_d", division="33; rm").status_code == 422


def test_legal_representative_search_is_for_regulators(deployment: dict, profiles: pl.DataFrame) -> None:
    rep = profiles.filter(pl.col("legal_rep").is_not_null())["legal_rep"][0]
    hits = get(deployment, "/api/v1/search/legal-representative", name=rep).json()["hits"]
    assert hits and all(h["legal_rep"] == rep for h in hits)
    assert get(deployment, "/api/v1/search/legal-representative", role="public", name=rep).status_code == 403


def test_lists_filter_and_paginate(deployment: dict, profiles: pl.DataFrame) -> None:
    expected = profiles.filter((pl.col("grade") == "D") & pl.col("division").str.starts_with("3302"))
    first = get(deployment, "/api/v1/lists/grade_d", division="3302", size=5).json()
    assert first["total"] == expected.height > 5
    second = get(deployment, "/api/v1/lists/grade_d", division="3302", size=5, page=2).json()
    ids = [f["entity_id"] for f in first["firms"]] + [f["entity_id"] for f in second["firms"]]
    assert len(set(ids)) == 10 and set(ids) <= set(expected["entity_id"])
    dishonest = get(deployment, "/api/v1/lists/dishonest_debtor", industry="制造业", size=200).json()
    assert all("dishonest_debtor" in f["lists"] and "制造业" in f["industry"] for f in dishonest["firms"])
    assert get(deployment, "/api/v1/lists/grade_d", size=10_000).json()["size"] == 200  # capped


def test_the_list_catalogue_comes_from_the_grading_config(deployment: dict) -> None:
    from foundation.grading import list_labels, load_grading

    catalogue = get(deployment, "/api/v1/lists").json()
    names = [entry["name"] for entry in catalogue["lists"]]
    assert names[:-1] == list(list_labels()) and names[-1] == "grade_d"
    assert catalogue["grades"] == [g["grade"] for g in load_grading()["grades"]]
    for entry in catalogue["lists"][:-1]:
        assert (entry["label"], entry["label_en"]) == list_labels()[entry["name"]]
        assert get(deployment, f"/api/v1/lists/{entry['name']}", size=1).status_code == 200


def test_evidence_and_history(deployment: dict, profiles: pl.DataFrame) -> None:
    firm = (
        profiles.filter(pl.col("uscc").is_not_null()).sort("record_count", descending=True).row(0, named=True)
    )
    evidence = get(deployment, f"/api/v1/profiles/{firm['uscc']}/evidence").json()["records"]
    assert len(evidence) == firm["record_count"]
    # one letter per comparison of the resolution spec
    letters = len(load_spec(settings.resolution_settings()["spec"]).comparisons)
    assert all(len(r["match_grade"]) == letters and set(r["match_grade"]) <= set("ABFZ") for r in evidence)
    assert all(0 < r["match_confidence"] <= 1 for r in evidence)
    history = get(deployment, f"/api/v1/profiles/{firm['uscc']}/history").json()["versions"]
    assert [str(v["as_of"]) for v in history] == list(DAYS)


def test_runs_report_their_quality(deployment: dict) -> None:
    runs = get(deployment, "/api/v1/runs").json()["runs"]
    assert [r["business_date"] for r in runs] == list(reversed(DAYS))
    assert all(r["published"] and r["books_balanced"] for r in runs)
    assert set(runs[0]["sources"]) == set(source_names())  # the registry, config/sources.toml


def test_public_sees_the_masked_view(deployment: dict, profiles: pl.DataFrame) -> None:
    firm = profiles.filter(pl.col("legal_rep").is_not_null()).row(0, named=True)
    public = get(deployment, f"/api/v1/profiles/{firm['entity_id']}", role="public").json()["profile"]
    full = get(deployment, f"/api/v1/profiles/{firm['entity_id']}").json()["profile"]
    assert "legal_rep" not in public and full["legal_rep"] == firm["legal_rep"]
    individual = profiles.filter(pl.col("entity_type") == "individual business")
    if individual.height:
        shown = get(deployment, f"/api/v1/profiles/{individual['entity_id'][0]}", role="public").json()[
            "profile"
        ]
        assert not [k for k in shown if k.startswith("lending_")]
    masked = mask_text("法定代表人身份证 11010519491231002X 电话 13812345678")
    assert masked == "法定代表人身份证 110105************ 电话 138********"


def test_regulator_queries_are_audited_in_a_chain_that_detects_edits(
    deployment: dict, tmp_path: Path
) -> None:
    get(deployment, "/api/v1/search", q="华兴")
    get(deployment, "/api/v1/search", role="public", q="华兴")
    log = deployment["lake"] / "service" / "audit.jsonl"
    entries = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
    answered = [e for e in entries if e["action"] != "refused"]  # refusals are recorded for every role
    assert answered and {e["role"] for e in answered} == {"regulator"}
    last = [e for e in entries if e["action"] == "search"][-1]
    assert last["who"] == "inspector wang" and last["query"]["q"] == "华兴" and last["results"] >= 0
    settings = audit_settings(load_config())
    assert verify_audit(log, settings).intact
    assert credit("audit", "verify", "--lake", str(deployment["lake"])).startswith('{"intact": true')
    copy = tmp_path / "audit.jsonl"
    lines = log.read_text("utf-8").splitlines()
    edited = next(i for i, line in enumerate(lines) if '"results": ' in line)
    copy.write_text(
        "\n".join(
            [*lines[:edited], lines[edited].replace('"results": ', '"results": 9'), *lines[edited + 1 :]]
        )
        + "\n"
    )
    assert not verify_audit(copy, settings).intact
    copy.write_text("\n".join(lines[1:]) + "\n")
    assert not verify_audit(copy, settings).intact


def test_rate_limits_per_token(deployment: dict, tmp_path: Path) -> None:
    config = tmp_path / "service.toml"
    config.write_text("[rate_limit]\nrequests_per_second = 1\nburst = 3\n", "utf-8")
    with serving(deployment["lake"], config) as base:
        codes = [
            httpx.get(base + "/api/v1/version", headers=deployment["public"]).status_code for _ in range(6)
        ]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        # another caller is not slowed by the first one
        assert httpx.get(base + "/api/v1/version", headers=deployment["regulator"]).status_code == 200


def test_openapi_documents_the_api(deployment: dict) -> None:
    spec = httpx.get(deployment["base"] + "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a token from `credit token create`",
    }
    schemas = spec["components"]["schemas"]
    api = {path: ops for path, ops in spec["paths"].items() if path.startswith("/api/")}
    served = {route.path for route in create_app_routes(deployment) if route.path.startswith("/api/")}
    assert set(api) == served and len(api) >= 9
    for path, operations in api.items():
        for method, operation in operations.items():
            assert operation["security"] == [{"bearer": []}], (path, method)
            answers = operation["responses"]["200"]["content"]
            assert answers and all(answer.get("schema") for answer in answers.values()), (path, answers)
            if "application/json" in answers:  # a typed body, not "any object"
                name = answers["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                assert schemas[name]["properties"], (path, name)
            assert operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ApiError"
            )
    profile = schemas["Profile"]
    # the public role never gets legal_rep or an individual business's lending: not required
    assert {"legal_rep", "lending_amount", "quality_score"}.isdisjoint(profile.get("required", []))
    assert {"entity_id", "entity_type"} <= set(profile["required"])
    assert set(profile_columns()) <= set(profile["properties"])
    assert httpx.get(deployment["base"] + "/docs").status_code == 200


def test_before_anything_is_published_the_profile_model_holds_the_identity(tmp_path: Path) -> None:
    """The profile model is the served version's schema; with no version yet the app still starts and
    documents what every profile has (the service never imports the code that builds profiles)."""
    from serving.app import create_app

    app = create_app(tmp_path / "lake", watch=False)
    profile = app.openapi()["components"]["schemas"]["Profile"]
    assert set(profile["properties"]) == {"entity_id", "entity_type", "withheld"}
    assert set(profile["required"]) == {"entity_id", "entity_type"}


def create_app_routes(deployment: dict) -> list:
    """The routes of an app built like the served one (over the same lake)."""
    from serving.app import create_app

    return create_app(deployment["lake"], watch=False).routes


def test_every_answer_fits_its_documented_model(deployment: dict, profiles: pl.DataFrame) -> None:
    """The models in /openapi.json describe what the fast encoder really sends, for both roles."""
    from serving.disclosure import load_policy
    from serving.models import ApiModels, ListCatalogue, RunsResponse

    models = ApiModels(load_policy(), profiles.schema)
    individual = profiles.filter(pl.col("entity_type") == "individual business")
    firm = (individual if individual.height else profiles).row(0, named=True)
    code = firm["entity_id"]
    rep = profiles.filter(pl.col("legal_rep").is_not_null())["legal_rep"][0]
    asked = [
        ("/api/v1/version", {}, models.version),
        (f"/api/v1/profiles/{code}", {}, models.profile),
        (f"/api/v1/profiles/{code}/evidence", {}, models.evidence),
        (f"/api/v1/profiles/{code}/history", {}, models.history),
        ("/api/v1/search", {"q": firm["name"]}, models.search),
        ("/api/v1/lists", {}, ListCatalogue),
        ("/api/v1/lists/grade_d", {"size": 50}, models.listing),
        ("/api/v1/runs", {}, RunsResponse),
    ]
    for role in ("regulator", "public"):
        for path, params, model in asked:
            response = get(deployment, path, role=role, **params)
            assert response.status_code == 200, (role, path, response.text[:300])
            model.model_validate(response.json(), strict=False)
    hits = get(deployment, "/api/v1/search/legal-representative", name=rep).json()
    models.legal_rep.model_validate(hits)
    public = get(deployment, f"/api/v1/profiles/{code}", role="public").json()["profile"]
    assert "legal_rep" not in public  # the optional fields really are left out for the public
    refused = get(deployment, "/api/v1/version", role=None).json()
    ApiError.model_validate(refused)


def test_a_new_version_is_served_without_a_restart_or_failed_queries(
    deployment: dict, profiles: pl.DataFrame, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(deployment["lake"], lake, symlinks=True)
    token = credit("token", "create", "--role", "regulator", "--name", "reload test", "--lake", str(lake))
    headers = {"Authorization": f"Bearer {token}"}
    uscc = profiles.filter(pl.col("uscc").is_not_null())["uscc"][0]
    config = tmp_path / "service.toml"  # four busy clients on one token: no rate limit in this test
    config.write_text("[rate_limit]\nrequests_per_second = 100000\nburst = 100000\n", "utf-8")
    with serving(lake, config) as base:
        before = httpx.get(base + "/api/v1/version", headers=headers).json()["version"]
        failures: list[str] = []
        seen: set[str] = set()
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                while not stop.is_set():
                    response = client.get(f"/api/v1/profiles/{uscc}")
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        seen.add(response.json()["version"])

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        flow.run_all(str(deployment["sources"]), str(lake), DAYS[-1], run_id="republish")  # a new version
        after = (lake / "published" / "current").resolve().name
        import time

        deadline = time.monotonic() + 30
        while after not in seen and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join()
    assert after != before and {before, after} <= seen
    assert failures == []


def test_docs_work_offline_in_a_browser(deployment: dict, browser, tmp_path: Path) -> None:  # noqa: ANN001
    """/docs in headless Chromium with every request outside the service blocked: Swagger UI comes
    from the service itself, runs under its content security policy, lists every operation, and
    "Authorize" with a token makes "Try it out" answer 200."""
    base = deployment["base"]
    page = browser.new_page()
    outside: list[str] = []
    problems: list[str] = []

    def only_the_service(route) -> None:  # noqa: ANN001 - Playwright route
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(base + "/docs")
    page.wait_for_selector(".opblock-summary-path")
    shown = set(page.locator(".opblock-summary-path").evaluate_all("els => els.map(e => e.dataset.path)"))
    spec = httpx.get(base + "/openapi.json").json()
    assert shown == set(spec["paths"])
    assert "Enterprise credit profiles" in page.inner_text(".info .title")

    page.click("button.authorize")
    page.fill(".modal-ux input[type=text]", deployment["regulator"]["Authorization"].split()[1])
    page.click(".modal-ux button.modal-btn.auth.authorize")
    page.click(".modal-ux button.btn-done")
    page.click('.opblock-summary-path[data-path="/api/v1/version"]')
    page.click(".try-out__btn")
    page.click(".execute")
    status = page.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip() == "200"
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
    assert outside == [] and problems == [], (outside, problems)
