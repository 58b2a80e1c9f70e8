"""One public view: the disclosure policy (config/disclosure.toml) applied to every response.

The end-to-end test plants personal data and hidden-domain records the way departments leak them
(generated sources: 自然人 penalties with ID numbers, owners' phones and IDs written into names),
runs the real pipeline and a real `credit serve`, and asks every endpoint as the public role:
nothing planted may come back. The same requests as a regulator must find it (the corpus is real).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest

from entity_resolution.pipeline import IDENTITY_COLUMNS, resolve_canonical
from foundation.grading import NATURAL_PERSON, load_grading
from foundation.identifiers import (
    classify_codes,
    is_id_number_form,
    is_valid_resident_id,
    is_valid_uscc,
    repair_code,
)
from pipelines.profiles.build import DEDUCTION, VETO
from serving.disclosure import PolicyError, _load_policy, load_policy, mask_text
from serving.search import NameIndex
from serving.store import CodeError, _searchable, normalise_code, offered_lists
from tests.conftest import PublishedLakes
from tests.service_support import build_lake, credit, serving

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

# a valid resident ID number that also passes the USCC check (about 1 in 341 do)
ID_ALSO_USCC = "110105198001013014"

DEDUCTIONS = pl.List(DEDUCTION)
VETOES = pl.List(VETO)
PROVENANCE = pl.List(
    pl.Struct({"source": pl.String, "records": pl.Int64, "as_of": pl.Date, "stale": pl.Boolean})
)


def _digits(text: str) -> str:
    return re.sub(r"[^0-9X]", "", unicodedata.normalize("NFKC", text).upper())


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(
    "written",
    [
        "11010519491231002X",  # plain
        "110105 19491231 002X",  # spaces
        "110105-19491231-002x",  # hyphens, lower-case x
        "110105194912310021",  # wrong check character
        "１１０１０５１９４９１２３１００２Ｘ",  # full width
        "110105491231002",  # the old 15-digit form
    ],
)
def test_resident_ids_keep_only_their_first_six_digits_in_any_text(written: str) -> None:
    text = f"海曙区张三便利店（经营者身份证{written}）"
    masked = mask_text(text)
    assert masked.startswith("海曙区张三便利店（经营者身份证110105*")
    assert _digits(written)[6:] not in _digits(masked)
    assert masked.count("*") == len(_digits(written)) - 6


@pytest.mark.parametrize(
    "written", ["13800138000", "138-0013-8000", "138 0013 8000", "+8613800138000", "0086 138 0013 8000"]
)
def test_phone_numbers_are_masked_in_any_text(written: str) -> None:
    masked = mask_text(f"海曙区李四小吃店（电话{written}）")
    assert masked == "海曙区李四小吃店（电话138********）"


def test_masking_leaves_firm_codes_dates_and_amounts_alone() -> None:
    text = "91330203MA2A1B2C3X 2026-11-23 金额 1234567.89 (2022)豫0724执恢54号 L000000000012 330203000030639"
    assert mask_text(text) == text


def test_a_number_written_into_a_name_cannot_be_searched_for() -> None:
    """Name search would otherwise confirm whose phone a number is, even with the hit masked."""
    names = pl.Series(["海曙区李四小吃店 13912345678", "宁波华兴电子科技有限公司"])
    index = NameIndex.build(_searchable(names))
    assert index.search("13912345678", 5) == []
    assert [row for row, _ in index.search("李四小吃店", 5)] == [0]
    assert names[0] == "海曙区李四小吃店 13912345678"  # the profile itself is not changed


# ---------------------------------------------------------------- natural persons in the pipeline


def test_a_resident_id_is_never_taken_for_a_firm_code() -> None:
    assert is_valid_uscc(ID_ALSO_USCC) and is_valid_resident_id(ID_ALSO_USCC)
    written = [ID_ALSO_USCC, "110105 19491231 002x", "110105194912310021", "91110000600037341L"]
    classified = classify_codes(pl.LazyFrame({"code": written}), "code").collect()
    assert classified["code_status"].to_list() == ["resident_id"] * 3 + ["valid"]
    assert classified["uscc"].to_list() == [None, None, None, "91110000600037341L"]
    assert repair_code(ID_ALSO_USCC).status == "resident_id"
    with pytest.raises(CodeError, match="resident ID number"):  # a lookup says so, not "bad check"
        normalise_code(ID_ALSO_USCC)


def test_resolution_keys_a_person_by_the_id_alone() -> None:
    person, namesake = "11010519491231002X", "330203198001011234"
    raw = pl.LazyFrame(
        {
            "source": ["violations"] * 4 + ["tax"],
            "source_record_id": ["P1", "P2", "P3", "F1", "T1"],
            "subject_name": ["张伟", "张伟", "张伟", "宁波华兴电子科技有限公司", "张伟"],
            "code_raw": [person, "110105 19491231 002x", namesake, "91330203MA2A1B2C3X", None],
            "updated_at": [datetime(2026, 11, 20, tzinfo=UTC).replace(tzinfo=None)] * 5,
        }
    )
    unstated = {"legal_rep": pl.String, "authority": pl.String, "headcount": pl.Int64, "score": pl.Float64}
    records = classify_codes(
        raw.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in unstated.items()), "code_raw"
    ).collect()
    resolution = resolve_canonical(records.select(IDENTITY_COLUMNS))
    links, entities = resolution.links, resolution.entities
    by_record = dict(zip(links["source_record_id"], links["entity_id"], strict=True))
    methods = dict(zip(links["source_record_id"], links["match_method"], strict=True))
    assert by_record["P1"] == by_record["P2"] != by_record["P3"]  # same ID, however written; a namesake apart
    assert methods["P1"] == methods["P3"] == "resident_id"
    assert by_record["T1"] not in {by_record["P1"], by_record["P3"]}  # a name alone never joins a person
    persons = entities.filter(pl.col("natural_person"))["entity_id"].to_list()
    assert sorted(persons) == sorted({by_record["P1"], by_record["P3"]})
    assert not any(person in e or "19491231" in e for e in entities["entity_id"])  # the id is not the key


# ---------------------------------------------------------------- the view on frames


def _profiles() -> pl.DataFrame:
    """Three profiles in the published shape with itemised deductions and vetoes."""
    return pl.DataFrame(
        {
            "entity_id": ["92330203MA2A1B2C3X", "91330203MA2A1B2C3X", "Xp"],
            "name": ["海曙区张三便利店（电话138-0013-8000）", "宁波华兴电子科技有限公司", "李四"],
            "entity_type": ["individual business", "enterprise", NATURAL_PERSON],
            "legal_rep": ["张三", "王五", None],
            "lending_loans": [2, 1, None],
            "tax_latest_rating": ["C", "A", None],
            "record_count": [5, 3, 1],
            "source_count": [2, 2, 1],
            "quality_score": [0.9, 0.8, 0.7],
            "score": [790, 850, 970],
            "grade": ["C", "B", "A"],
            "grade_reasons": [
                [
                    "non-performing loan (次级/可疑/损失) (-150, 1 record(s), e.g. lending:L1)",
                    "tax credit rating C (-60, 1 record(s), e.g. tax:T1)",
                ],
                ["tax credit rating D (-150, 1 record(s), e.g. tax:T2)"],
                ["administrative penalty in publicity (-30, 1 record(s), e.g. violations:V9)"],
            ],
            "veto_reasons": [["on a lending list (lending:L2)"], [], []],
            "lists": [["dishonest_debtor"], [], []],
            "deductions": [
                [
                    {
                        "rule": "loan_non_performing",
                        "source": "lending",
                        "points": 150,
                        "records": ["lending:L1"],
                        "reason": "non-performing loan",
                    },
                    {
                        "rule": "tax_rating_c",
                        "source": "tax",
                        "points": 60,
                        "records": ["tax:T1"],
                        "reason": "tax credit rating C",
                    },
                ],
                [
                    {
                        "rule": "tax_rating_d",
                        "source": "tax",
                        "points": 150,
                        "records": ["tax:T2"],
                        "reason": "tax credit rating D",
                    }
                ],
                [
                    {
                        "rule": "penalty",
                        "source": "violations",
                        "points": 30,
                        "records": ["violations:V9"],
                        "reason": "penalty",
                    }
                ],
            ],
            "vetoes": [
                [
                    {
                        "list": "a lending list",
                        "source": "lending",
                        "records": ["lending:L2"],
                        "until": None,
                        "reason": "x",
                    }
                ],
                [],
                [],
            ],
            "provenance": [
                [
                    {"source": "lending", "records": 2, "as_of": None, "stale": False},
                    {"source": "tax", "records": 3, "as_of": None, "stale": False},
                ],
                [{"source": "tax", "records": 3, "as_of": None, "stale": False}],
                [{"source": "violations", "records": 1, "as_of": None, "stale": False}],
            ],
        },
        schema_overrides={"deductions": DEDUCTIONS, "vetoes": VETOES, "provenance": PROVENANCE},
    )


def test_public_view_recomputes_score_and_grade_without_the_hidden_domain() -> None:
    public = load_policy().view("public")
    shown = public.rows(_profiles())
    assert [r["entity_id"] for r in shown] == ["92330203MA2A1B2C3X", "91330203MA2A1B2C3X"]  # no person
    business, firm = shown
    bands = sorted(load_grading()["grades"], key=lambda g: -g["min_score"])
    assert business["score"] == 1000 - 60  # the loan's 150 points and its veto are gone
    assert business["grade"] == next(g["grade"] for g in bands if g["min_score"] <= 940)
    assert [d["source"] for d in business["deductions"]] == ["tax"] and business["vetoes"] == []
    assert business["grade_reasons"] == ["tax credit rating C (-60, 1 record(s), e.g. tax:T1)"]
    assert business["veto_reasons"] == [] and business["lists"] == ["dishonest_debtor"]
    assert [p["source"] for p in business["provenance"]] == ["tax"]
    assert (business["record_count"], business["source_count"]) == (3, 1)
    assert not [k for k in business if k.startswith("lending_") or k in ("legal_rep", "quality_score")]
    assert business["withheld"] == ["lending"]
    assert business["name"] == "海曙区张三便利店（电话138********）"
    assert firm["score"] == 850 and firm["grade"] == "B" and firm["lending_loans"] == 1
    assert "legal_rep" not in firm and firm["withheld"] == []
    regulator = load_policy().view("regulator").rows(_profiles())
    assert len(regulator) == 3 and regulator[0]["score"] == 790 and regulator[0]["legal_rep"] == "张三"


def test_a_firms_own_registration_number_is_not_mistaken_for_an_id() -> None:
    """330203010203006 is a valid registration number that also has the form of an old ID."""
    firm = (
        _profiles()
        .head(2)
        .tail(1)
        .with_columns(
            reg_no=pl.lit("330203010203006"), name=pl.lit("宁波华兴电子科技有限公司 330203010203006")
        )
    )
    shown = load_policy().view("public").rows(firm)[0]
    assert shown["reg_no"] == "330203010203006" and shown["name"].endswith("330203*********")


def test_without_itemised_deductions_the_score_is_withheld_not_guessed() -> None:
    public = load_policy().view("public")
    business, firm = public.rows(_profiles().drop("deductions", "vetoes"))
    assert business["score"] is None and business["grade"] is None
    assert firm["score"] == 850 and firm["grade"] == "B"


def test_the_view_is_whatever_the_policy_says(tmp_path: Path) -> None:
    """Hide tax from enterprises in a copy of the policy: fields, deductions, reasons, provenance and
    the score follow, with no code change."""
    text = Path(load_policy().path).read_text("utf-8")
    text += '\n[roles.public.entity_types."enterprise"]\nhidden_domains = ["tax"]\n'
    path = tmp_path / "disclosure.toml"
    path.write_text(text, "utf-8")
    firm = load_policy(path).view("public").rows(_profiles())[1]
    assert firm["withheld"] == ["tax"] and "tax_latest_rating" not in firm
    assert firm["deductions"] == [] and firm["grade_reasons"] == [] and firm["provenance"] == []
    assert firm["score"] == 1000 and firm["grade"] == "A" and firm["lending_loans"] == 1


def test_a_policy_naming_what_does_not_exist_is_refused(tmp_path: Path) -> None:
    good = Path(load_policy().path).read_text("utf-8")
    cases = {
        "unknown entity type 'sole trader'": good.replace('"individual business"]', '"sole trader"]'),
        "unknown domain(s) ['loans']": good.replace(
            'hidden_domains = ["lending"]', 'hidden_domains = ["loans"]'
        ),
        "role 'auditor' is not one of": good + "\n[roles.auditor]\nhidden_fields = []\n",
    }
    for problem, text in cases.items():
        path = tmp_path / "disclosure.toml"
        path.write_text(text, "utf-8")
        _load_policy.cache_clear()
        try:
            with pytest.raises(PolicyError, match=re.escape(problem)) as error:
                load_policy(path)
            assert str(path) in str(error.value)
        finally:
            _load_policy.cache_clear()


# ---------------------------------------------------------------- every endpoint, as the public


@pytest.fixture(scope="module")
def deployment(published_lakes: PublishedLakes) -> dict:
    sources, lake = build_lake(published_lakes)
    tokens = {
        role: credit("token", "create", "--role", role, "--name", f"{role} test", "--lake", str(lake))
        for role in ("public", "regulator")
    }
    with serving(lake) as base:
        yield {"sources": sources, "lake": lake, "base": base, "tokens": tokens}


def _flat(text: str) -> str:
    """Text without the spaces and hyphens people put inside numbers, upper case."""
    return re.sub(r"[\s\-\u3000]", "", text).upper()


def _corpus(deployment: dict) -> dict:
    """What was planted and must never reach the public: ID numbers and phones (as digits), the
    natural persons' entity ids, and the loans of individual businesses."""
    penalties = pl.read_csv(deployment["sources"] / "violations" / "penalties.csv", infer_schema=False)
    persons_codes = penalties.filter(pl.col("行政相对人类别") == "自然人")["统一社会信用代码"]
    texts = [*penalties["行政相对人名称"], *penalties["违法事实"], *persons_codes]
    numbers = {_flat(n) for t in texts for n in re.findall(r"[+\d][\d \-xX]{10,21}", t)}
    ids = {n for n in numbers if is_id_number_form(n)}
    phones = {n[-11:] for n in numbers if re.fullmatch(r"(\+86)?1[3-9]\d{9}", n)}
    current = deployment["lake"] / "published" / "current"
    profiles = pl.read_parquet(current / "profiles" / "*.parquet")
    links = pl.read_parquet(current / "links" / "*.parquet")
    businesses = profiles.filter(
        (pl.col("entity_type") == "individual business") & (pl.col("lending_loans") > 0)
    )
    loans = links.filter(pl.col("entity_id").is_in(businesses["entity_id"]) & (pl.col("source") == "lending"))
    leaky = links.filter(pl.col("recorded_name").str.contains("电话|身份证"))["entity_id"]
    return {
        "secrets": ids | phones,
        "persons": profiles.filter(pl.col("entity_type") == NATURAL_PERSON),
        "businesses": businesses,
        "loans": set(loans["source_record_id"]),
        "leaky": profiles.filter(pl.col("entity_id").is_in(leaky)),
        "profiles": profiles,
    }


def _requests(corpus: dict) -> list[tuple[str, dict[str, str]]]:
    """Every endpoint the public role can reach (pages, API, errors), for every planted entity."""
    asks: list[tuple[str, dict[str, str]]] = [
        (path, {})
        for path in ("/api/v1/version", "/api/v1/runs", "/openapi.json", "/docs", "/search", "/runs")
    ]
    firms = pl.concat([corpus["persons"], corpus["businesses"], corpus["leaky"]], how="vertical_relaxed")
    for firm in firms.iter_rows(named=True):
        for code in filter(None, (firm["entity_id"], firm["uscc"], firm["org_code"], firm["reg_no"])):
            asks += [
                (f"/api/v1/profiles/{code}{tail}", {}) for tail in ("", "/evidence", "/history", "/report")
            ]
        asks += [(f"/firm/{firm['entity_id']}", {}), ("/api/v1/search", {"q": firm["name"][:40]})]
    for secret in sorted(corpus["secrets"]):
        asks += [
            (f"/api/v1/profiles/{secret[:18]}", {}),
            ("/api/v1/search", {"q": secret}),
            ("/api/v1/lists/grade_d", {"division": secret}),
        ]
    for name in offered_lists():
        asks += [(f"/api/v1/lists/{name}", {"size": "200", "page": str(page)}) for page in (1, 2, 3)]
    return asks


def _bodies(deployment: dict, asks: list[tuple[str, dict[str, str]]], role: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {deployment['tokens'][role]}"}
    with httpx.Client(base_url=deployment["base"], headers=headers, timeout=30) as client:
        return {f"{path}?{params}": client.get(path, params=params).text for path, params in asks}


def _leaks(corpus: dict, bodies: dict[str, str]) -> set[str]:
    persons = set(corpus["persons"]["entity_id"])
    leaks = set()
    for ask, body in bodies.items():
        flat = _flat(body)
        leaks |= {f"{ask}: {s}" for s in corpus["secrets"] if s in flat}
        leaks |= {f"{ask}: loan {r}" for r in corpus["loans"] if r in body}
        leaks |= {f"{ask}: person {p}" for p in persons if p in body}
    return leaks


def test_planted_personal_data_and_hidden_records_never_reach_the_public(deployment: dict) -> None:
    corpus = _corpus(deployment)
    assert corpus["persons"].height and corpus["businesses"].height and corpus["leaky"].height
    assert len(corpus["secrets"]) >= 10 and corpus["loans"]
    asks = _requests(corpus)
    assert _leaks(corpus, _bodies(deployment, asks, "public")) == set()
    # the corpus is real: the same requests as a regulator do find it
    seen = _leaks(corpus, _bodies(deployment, asks, "regulator"))
    assert {kind for leak in seen for kind in ("loan", "person") if f": {kind} " in leak} == {
        "loan",
        "person",
    }
    assert any(leak.endswith(": " + s) for leak in seen for s in corpus["secrets"])


def test_public_profiles_of_individual_businesses_hide_lending_everywhere(deployment: dict) -> None:
    corpus = _corpus(deployment)
    headers = {"Authorization": f"Bearer {deployment['tokens']['public']}"}
    with httpx.Client(base_url=deployment["base"], headers=headers, timeout=30) as client:
        for firm in corpus["businesses"].head(10).iter_rows(named=True):
            profile = client.get(f"/api/v1/profiles/{firm['uscc']}").json()["profile"]
            assert profile["withheld"] == ["lending"]
            assert not [k for k in profile if k.startswith("lending_")]
            assert all(p["source"] != "lending" for p in profile["provenance"])
            assert not [
                r for r in profile["grade_reasons"] + profile["veto_reasons"] if "lending" in r or "loan" in r
            ]
            if "deductions" in profile:  # the score is the visible deductions' and nothing else
                assert profile["score"] == max(0, 1000 - sum(d["points"] for d in profile["deductions"]))
            else:
                assert profile["score"] is None and profile["grade"] is None
            records = client.get(f"/api/v1/profiles/{firm['uscc']}/evidence").json()["records"]
            assert records and all(r["source"] != "lending" for r in records)
            assert len(records) == sum(p["records"] for p in profile["provenance"]) == profile["record_count"]
            versions = client.get(f"/api/v1/profiles/{firm['uscc']}/history").json()["versions"]
            for version in versions:
                assert not [r for r in version["grade_reasons"] if "lending" in r or "loan" in r]
                if "deductions" not in profile:  # nothing to recompute from: withheld
                    assert version["score"] is None and version["grade"] is None
            if "deductions" in profile:  # history shows the same recomputed score as the profile
                assert (versions[-1]["score"], versions[-1]["grade"]) == (profile["score"], profile["grade"])
        for person in corpus["persons"].iter_rows(named=True):
            assert client.get(f"/api/v1/profiles/{person['entity_id']}").status_code == 404
            hits = client.get("/api/v1/search", params={"q": person["name"]}).json()["hits"]
            assert person["entity_id"] not in {h["entity_id"] for h in hits}
        grade_d = client.get("/api/v1/lists/grade_d", params={"size": 200}).json()
    profiles = corpus["profiles"]
    published_d = profiles.filter(
        (pl.col("grade") == "D") & ~pl.col("entity_type").is_in([NATURAL_PERSON, "individual business"])
    )
    if "deductions" not in profiles.columns:  # individual businesses have no public grade to list
        assert grade_d["total"] == published_d.height
    assert grade_d["total"] >= published_d.height
    assert not {f["entity_id"] for f in grade_d["firms"]} & set(corpus["persons"]["entity_id"])
