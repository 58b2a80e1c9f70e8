"""Identifiers: published examples, property-based damage and repair, scalar and vectorised agree."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import uscc as stdnum_uscc

from foundation.identifiers import (
    USCC_ALPHABET,
    classify_codes,
    is_valid_org_code,
    is_valid_reg_no,
    is_valid_resident_id,
    is_valid_uscc,
    mask_resident_id,
    org_code_check_char,
    org_code_check_expr,
    org_code_from_uscc,
    parse_uscc,
    reg_no_check_digit,
    reg_no_check_expr,
    repair_code,
    uscc_check_char,
    uscc_check_expr,
)

VALID_USCC = [
    "91110000600037341L",
    "91330282L07196379D",
    "91230500MA1B3N1N2M",
    "11420000MB15291767",
    "9135052155323005XL",
    "91310115MA1K3BTP2B",
    "9144030071526726XG",
]
VALID_REG_NO = ["110108000000016", "330203000030639", "330200400065251"]
ORG_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # an org code inside a USCC uses the USCC alphabet


@pytest.mark.parametrize("code", VALID_USCC)
def test_published_valid_usccs(code: str) -> None:
    assert is_valid_uscc(code)
    assert uscc_check_char(code[:17]) == code[17]
    assert is_valid_org_code(org_code_from_uscc(code))


def test_published_invalid_uscc_and_its_right_check() -> None:
    assert not is_valid_uscc("91320621MA1MRHG207")
    assert uscc_check_char("91320621MA1MRHG20") == "5"


@pytest.mark.parametrize("code", VALID_REG_NO)
def test_published_registration_numbers(code: str) -> None:
    assert is_valid_reg_no(code)
    assert not is_valid_reg_no(code[:14] + str((int(code[14]) + 1) % 10))


def test_parse_uscc_decodes_authority_type_and_division() -> None:
    info = parse_uscc("91330282L07196379D")
    assert (info.authority, info.entity_type, info.entity_type_label) == ("9", "1", "enterprise")
    assert info.division == "330282" and info.org_code == "L07196379"
    with pytest.raises(ValueError, match="not a valid USCC"):
        parse_uscc("91320621MA1MRHG207")


def test_org_code_with_hyphen() -> None:
    assert is_valid_org_code("60003734-1")
    assert repair_code("60003734-1").status == "org_code"


uscc_bodies = st.tuples(
    st.sampled_from("159NY"),
    st.sampled_from("123"),
    st.text("0123456789", min_size=6, max_size=6),
    st.text(ORG_CHARS, min_size=8, max_size=8),
).map(lambda p: p[0] + p[1] + p[2] + p[3] + org_code_check_char(p[3]))


@given(uscc_bodies)
def test_generated_codes_validate_with_stdnum(first17: str) -> None:
    code = first17 + uscc_check_char(first17)
    assert is_valid_uscc(code)
    if code[:2].isdigit():  # stdnum accepts only digits in positions 1-2; GB 32100 also allows N and Y
        assert stdnum_uscc.is_valid(code)


@given(uscc_bodies, st.integers(0, 17), st.integers(1, 30))
def test_any_single_substitution_fails_the_check(first17: str, position: int, shift: int) -> None:
    code = first17 + uscc_check_char(first17)
    wrong = USCC_ALPHABET[(USCC_ALPHABET.index(code[position]) + shift) % 31]
    damaged = code[:position] + wrong + code[position + 1 :]
    assert not is_valid_uscc(damaged)
    assert repair_code(damaged).status == "invalid"


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


DAMAGE = {
    "lower case": str.lower,
    "spaces": lambda c: f" {c[:6]} {c[6:12]} {c[12:]} ",
    "O for 0": lambda c: c.replace("0", "O"),
    "I for 1": lambda c: c.replace("1", "I"),
    "full width": _full_width,
}


@settings(max_examples=60)
@given(uscc_bodies, st.sampled_from(sorted(DAMAGE)))
def test_formatting_damage_is_repaired(first17: str, damage: str) -> None:
    code = first17 + uscc_check_char(first17)
    damaged = DAMAGE[damage](code)
    result = repair_code(damaged)
    assert result.uscc == code
    assert result.status == ("valid" if damaged == code else "repaired")
    assert result.org_code == code[8:17]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            uscc_bodies,
            st.sampled_from([*sorted(DAMAGE), "none", "mistype", "org", "reg"]),
            st.integers(0, 17),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_vectorised_classification_agrees_with_scalar(cases: list[tuple[str, str, int]]) -> None:
    raws: list[str | None] = [None, "", "garbage"]
    for first17, damage, position in cases:
        code = first17 + uscc_check_char(first17)
        if damage in DAMAGE:
            raws.append(DAMAGE[damage](code))
        elif damage == "mistype":
            wrong = USCC_ALPHABET[(USCC_ALPHABET.index(code[position]) + 1) % 31]
            raws.append(code[:position] + wrong + code[position + 1 :])
        elif damage == "org":
            raws.append(code[8:16] + "-" + code[16])
        elif damage == "reg":
            raws.append(VALID_REG_NO[position % 3])
        else:
            raws.append(code)
    frame = classify_codes(pl.LazyFrame({"raw": raws}, schema={"raw": pl.String}), "raw").collect()
    for row in frame.iter_rows(named=True):
        expected = repair_code(row["raw"])
        assert (row["uscc"], row["org_code"], row["reg_no"], row["code_status"]) == (
            expected.uscc,
            expected.org_code,
            expected.reg_no,
            expected.status,
        ), row["raw"]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(uscc_bodies, min_size=1, max_size=20),
    st.lists(st.text("0123456789", min_size=14, max_size=14), min_size=1, max_size=20),
)
def test_check_expressions_match_scalar_functions(bodies: list[str], regs: list[str]) -> None:
    frame = pl.DataFrame({"first17": bodies})
    checks = frame.select(uscc_check_expr(pl.col("first17"))).to_series().to_list()
    assert checks == [uscc_check_char(b) for b in bodies]
    org = frame.select(org_code_check_expr(pl.col("first17").str.slice(8, 8))).to_series().to_list()
    assert org == [org_code_check_char(b[8:16]) for b in bodies]
    reg = pl.DataFrame({"r": regs}).select(reg_no_check_expr(pl.col("r"))).to_series().to_list()
    assert reg == [reg_no_check_digit(r) for r in regs]


def test_check_expression_rejects_characters_outside_the_alphabet() -> None:
    out = pl.DataFrame({"c": ["9111000060003734I", "911100006000373"]}).select(uscc_check_expr(pl.col("c")))
    assert out.to_series().to_list() == [None, None]


def test_resident_id_numbers_are_checked_and_masked() -> None:
    assert is_valid_resident_id("11010519491231002X")
    assert not is_valid_resident_id("110105194912310021")
    assert mask_resident_id("330222199001011234") == "330222************"
    assert mask_resident_id(None) is None
