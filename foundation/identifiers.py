"""Chinese enterprise identifiers: USCC (GB 32100), organization code (GB 11714), old registration no.

python-stdnum validates the USCC; this module adds what it lacks: the organization code and the
15-digit registration number checks, decoding a USCC, repairing formatting damage, and Polars
expressions that do the same on millions of rows without a Python loop.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl
from stdnum.cn import ric as stdnum_ric
from stdnum.cn import uscc as stdnum_uscc

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))
ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
#: how a recorded code was read; "resident_id" is a natural person's ID number, never a firm code
CODE_STATUSES = ("valid", "repaired", "org_code", "reg_no", "resident_id", "invalid", "missing")
#: GB 11643 check weights for the 17 body digits (2^(17-i) mod 11)
RESIDENT_ID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
#: the form of an 18-character resident ID: a province digit 1-8 (a USCC from the market regulator
#: starts with 9), a plausible birth date, a sequence and any check character (typos included)
RESIDENT_ID_FORM = r"^[1-8]\d{5}(18|19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\d{3}[\dX]$"
#: the old 15-digit form (before 1999): region, birth date as YYMMDD (19YY), sequence, no check digit
OLD_RESIDENT_ID_FORM = r"^[1-8]\d{5}\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\d{3}$"
AUTHORITIES = {"1": "机构编制", "5": "民政", "9": "工商", "N": "农业", "Y": "其他"}
MARKET_ENTITY_TYPES = {"1": "enterprise", "2": "individual business", "3": "farmers' cooperative"}
_ORG_VALUES = {c: i for i, c in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


# ---------------------------------------------------------------- scalar checks
def uscc_check_char(first17: str) -> str:
    return stdnum_uscc.calc_check_digit(first17)


def org_code_check_char(body8: str) -> str:
    total = sum(_ORG_VALUES[c] * w for c, w in zip(body8, ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def reg_no_check_digit(first14: str) -> str:
    """ISO 7064 MOD 11,10."""
    p = 10
    for digit in first14:
        s = (p + int(digit)) % 10 or 10
        p = (2 * s) % 11
    return str((11 - p) % 10)


def is_valid_uscc(code: str | None) -> bool:
    """GB 32100 form and check character, and a valid embedded organization code.

    stdnum insists on digits in positions 1-8, but the standard allows letters for the
    registration authority and entity type (N 农业, Y other), so the form is checked here.
    """
    if not code or len(code) != 18 or any(c not in USCC_ALPHABET for c in code) or not code[2:8].isdigit():
        return False
    return stdnum_uscc.calc_check_digit(code[:17]) == code[17] and is_valid_org_code(code[8:17])


def is_valid_org_code(code: str | None) -> bool:
    if not code:
        return False
    code = code.replace("-", "")
    if len(code) != 9 or any(c not in _ORG_VALUES for c in code[:8]):
        return False
    return org_code_check_char(code[:8]) == code[8]


def is_valid_reg_no(code: str | None) -> bool:
    return bool(code) and len(code) == 15 and code.isdigit() and reg_no_check_digit(code[:14]) == code[14]


def org_code_from_uscc(code: str) -> str:
    return code[8:17]


@dataclass(frozen=True)
class UsccInfo:
    code: str
    authority: str
    authority_label: str
    entity_type: str
    entity_type_label: str | None
    division: str
    org_code: str


def parse_uscc(code: str) -> UsccInfo:
    """Decode a valid USCC; raises ValueError naming the problem otherwise."""
    if not is_valid_uscc(code):
        raise ValueError(f"not a valid USCC: {code!r}")
    label = MARKET_ENTITY_TYPES.get(code[1]) if code[0] == "9" else None
    return UsccInfo(code, code[0], AUTHORITIES.get(code[0], "其他"), code[1], label, code[2:8], code[8:17])


@dataclass(frozen=True)
class CodeResult:
    uscc: str | None
    org_code: str | None
    reg_no: str | None
    status: str


def _clean(raw: str) -> str:
    return "".join(unicodedata.normalize("NFKC", raw).split()).upper()


def repair_code(raw: str | None) -> CodeResult:
    """Classify a code as a department wrote it, repairing only unambiguous formatting damage.

    Case, spaces, full-width characters, hyphens in organization codes, and O/I typed for 0/1 in a
    USCC (O and I never occur in one) are repaired. A single mistyped character is not: for every
    position exactly one substitute makes the check pass, so about 17 candidates always exist.
    """
    if raw is None or not raw.strip():
        return CodeResult(None, None, None, "missing")
    code = _clean(raw)
    if looks_like_resident_id(code):
        return CodeResult(None, None, None, "resident_id")
    if len(code) == 18:
        fixed = code.replace("O", "0").replace("I", "1")
        if is_valid_uscc(fixed):
            return CodeResult(fixed, fixed[8:17], None, "valid" if fixed == raw else "repaired")
    org = code.replace("-", "")
    if len(org) == 9 and is_valid_org_code(org):
        return CodeResult(None, org, None, "org_code")
    if is_valid_reg_no(code):
        return CodeResult(None, None, code, "reg_no")
    return CodeResult(None, None, None, "invalid")


def is_valid_resident_id(number: str | None) -> bool:
    """A natural person's resident ID number (GB 11643), via stdnum.cn.ric."""
    return bool(number) and stdnum_ric.is_valid(number)


def looks_like_resident_id(code: str | None) -> bool:
    """A natural person's ID number as written (check character not required: a mistyped ID is still
    a person's); a code that is also a valid USCC only when its own check passes as an ID."""
    if not code:
        return False
    compact = _clean(code).replace("-", "")
    if len(compact) != 18 or not is_id_number_form(compact):
        return False
    return is_valid_resident_id(compact) or not is_valid_uscc(compact)


def is_id_number_form(compact: str) -> bool:
    """An 18- or 15-digit resident ID number's form with a real birth date, whatever its check
    character (what masking must catch: a mistyped ID is still a person's)."""
    if re.fullmatch(RESIDENT_ID_FORM, compact):
        born = compact[6:14]
    elif re.fullmatch(OLD_RESIDENT_ID_FORM, compact):
        born = "19" + compact[6:12]
    else:
        return False
    try:
        date(int(born[:4]), int(born[4:6]), int(born[6:]))
    except ValueError:
        return False
    return True


def mask_resident_id(number: str | None) -> str | None:
    """Show only the first six digits (the division), as the penalty-publicity rules require."""
    if not number:
        return number
    compact = "".join(stdnum_ric.compact(number).split())
    return compact[:6] + "*" * (len(compact) - 6)


# ---------------------------------------------------------------- vectorised (Polars) checks
def _char_values(expr: pl.Expr, length: int, alphabet: dict[str, int]) -> list[pl.Expr]:
    return [
        expr.str.slice(i, 1).replace_strict(alphabet, default=None, return_dtype=pl.Int64)
        for i in range(length)
    ]


def resident_id_check_expr(first17: pl.Expr) -> pl.Expr:
    """The GB 11643 check character ('0'-'9' or 'X') for 17-digit strings; null when not digits."""
    digits = [first17.str.slice(i, 1).cast(pl.Int64, strict=False) for i in range(17)]
    total = pl.sum_horizontal([d * w for d, w in zip(digits, RESIDENT_ID_WEIGHTS, strict=True)])
    check = (12 - total % 11) % 11
    text = pl.when(check == 10).then(pl.lit("X")).otherwise(check.cast(pl.String))
    bad = pl.any_horizontal([d.is_null() for d in digits]) | (first17.str.len_chars() != 17)
    return pl.when(bad).then(None).otherwise(text)


def resident_id_expr(compact: pl.Expr) -> pl.Expr:
    """The resident-ID form (``RESIDENT_ID_FORM`` and a real birth date) on codes already cleaned
    (upper case, no spaces or hyphens); the check character is not required."""
    born = compact.str.slice(6, 8).str.to_date("%Y%m%d", strict=False)
    form = compact.str.contains(RESIDENT_ID_FORM) & born.is_not_null()
    return form.fill_null(False)


def uscc_check_expr(first17: pl.Expr) -> pl.Expr:
    """The USCC check character for 17-character strings; null when a character is not allowed."""
    values = {c: i for i, c in enumerate(USCC_ALPHABET)}
    parts = _char_values(first17, 17, values)
    total = pl.sum_horizontal([v * w for v, w in zip(parts, USCC_WEIGHTS, strict=True)])
    any_bad = pl.any_horizontal([v.is_null() for v in parts]) | (first17.str.len_chars() != 17)
    index = (31 - total % 31) % 31
    checks = {i: c for i, c in enumerate(USCC_ALPHABET)}
    return pl.when(any_bad).then(None).otherwise(index.replace_strict(checks, return_dtype=pl.String))


def org_code_check_expr(body8: pl.Expr) -> pl.Expr:
    """The organization-code check character ('0'-'9' or 'X') for 8-character bodies."""
    parts = _char_values(body8, 8, _ORG_VALUES)
    total = pl.sum_horizontal([v * w for v, w in zip(parts, ORG_WEIGHTS, strict=True)])
    any_bad = pl.any_horizontal([v.is_null() for v in parts]) | (body8.str.len_chars() != 8)
    check = 11 - total % 11
    text = (
        pl.when(check == 10)
        .then(pl.lit("X"))
        .when(check == 11)
        .then(pl.lit("0"))
        .otherwise(check.cast(pl.String))
    )
    return pl.when(any_bad).then(None).otherwise(text)


def reg_no_check_expr(first14: pl.Expr) -> pl.Expr:
    """The ISO 7064 MOD 11,10 check digit for 14-digit strings."""
    p = pl.lit(10, dtype=pl.Int64)
    digits = [first14.str.slice(i, 1).cast(pl.Int64, strict=False) for i in range(14)]
    for d in digits:
        # (p + d) mod 10 with 0 read as 10, written so that p appears once (p is never 0, so p + d >= 1):
        # referencing p twice per step would double the expression tree 14 times.
        s = (p + d - 1) % 10 + 1
        p = (2 * s) % 11
    bad = pl.any_horizontal([d.is_null() for d in digits]) | (first14.str.len_chars() != 14)
    return pl.when(bad).then(None).otherwise(((11 - p) % 10).cast(pl.String))


def _fullwidth_to_ascii(expr: pl.Expr) -> pl.Expr:
    full = [chr(c) for c in range(0xFF01, 0xFF5F)] + ["\u3000"]
    half = [chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)] + [" "]
    return expr.str.replace_many(full, half)


def compact_code_expr(raw: pl.Expr) -> pl.Expr:
    """A code as written, without formatting: half width, no spaces or hyphens, upper case."""
    return _fullwidth_to_ascii(raw).str.replace_all(r"[\s\-]", "").str.to_uppercase()


def classify_codes(frame: pl.LazyFrame, column: str) -> pl.LazyFrame:
    """Vectorised ``repair_code``: adds uscc, org_code, reg_no and code_status for ``column``.

    Each distinct code is classified once (a firm's code recurs across its records), then joined back.
    """
    codes = frame.select(pl.col(column).cast(pl.String).alias("_code")).unique()
    classified = _classify_unique(codes, "_code")
    return frame.with_columns(pl.col(column).cast(pl.String)).join(
        classified, left_on=column, right_on="_code", how="left", nulls_equal=True, maintain_order="left"
    )


def classify_values(codes: pl.Series) -> pl.DataFrame:
    """``classify_codes`` of each value of ``codes``, in order (uscc, org_code, reg_no, code_status):
    for a caller that has made its values distinct already."""
    return _classify_unique(codes.cast(pl.String).to_frame("_code").lazy(), "_code").collect().drop("_code")


def _char_matrix(values: pl.Series, width: int) -> np.ndarray:
    """The first ``width`` characters of each value as a (rows, width) byte matrix: a character
    beyond ASCII reads as byte 0 (no code alphabet holds it), a short value is padded with 0."""
    fixed = (
        values.fill_null("")
        .str.replace_all(r"[^\x01-\x7f]", "\x00")
        .str.slice(0, width)
        .str.pad_end(width, "\x00")
    )
    if fixed.len() == 0:
        return np.zeros((0, width), dtype=np.uint8)
    joined = fixed.str.join("").item().encode("ascii")
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, width)


def _byte_table(alphabet: str) -> np.ndarray:
    """Byte -> value in ``alphabet`` (-1 for a byte not in it)."""
    table = np.full(256, -1, dtype=np.int64)
    table[[ord(c) for c in alphabet]] = np.arange(len(alphabet))
    return table


_USCC_VALUE = _byte_table(USCC_ALPHABET)
_ORG_VALUE = _byte_table("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGIT_VALUE = _byte_table("0123456789")
_USCC_CHECK_BYTES = np.frombuffer(USCC_ALPHABET.encode(), dtype=np.uint8)
_ORG_CHECK_BYTES = np.frombuffer(b"0123456789X0", dtype=np.uint8)  # 11 - sum mod 11: 10 is X, 11 is 0
_RESIDENT_CHECK_BYTES = np.frombuffer(b"0123456789X", dtype=np.uint8)


def _org_check_ok(chars: np.ndarray) -> np.ndarray:
    """Rows of 9 bytes that are an 8-character organization-code body and its check character."""
    values = _ORG_VALUE[chars[:, :8]]
    check = 11 - (values @ np.array(ORG_WEIGHTS)) % 11
    return (values >= 0).all(axis=1) & (_ORG_CHECK_BYTES[check] == chars[:, 8])


def _uscc_ok(fixed: pl.Series) -> pl.Series:
    """18 characters of the USCC alphabet, digits in positions 3-8, the check character and the
    embedded organization code's check character right (``uscc_check_expr``, vectorised)."""
    chars = _char_matrix(fixed, 18)
    values = _USCC_VALUE[chars[:, :17]]
    check = (31 - (values @ np.array(USCC_WEIGHTS)) % 31) % 31
    ok = (
        (fixed.str.len_chars() == 18).fill_null(False).to_numpy()
        & (values >= 0).all(axis=1)
        & (_DIGIT_VALUE[chars[:, 2:8]] >= 0).all(axis=1)
        & (_USCC_CHECK_BYTES[check] == chars[:, 17])
        & _org_check_ok(chars[:, 8:17])
    )
    return pl.Series(fixed.name, ok)


def _org_code_ok(org: pl.Series) -> pl.Series:
    """An organization code: 9 characters with the right check character."""
    ok = (org.str.len_chars() == 9).fill_null(False).to_numpy() & _org_check_ok(_char_matrix(org, 9))
    return pl.Series(org.name, ok)


def _reg_no_ok(cleaned: pl.Series) -> pl.Series:
    """15 digits whose last is the ISO 7064 MOD 11,10 check digit of the others."""
    digits = _DIGIT_VALUE[_char_matrix(cleaned, 15)]
    p = np.full(len(digits), 10, dtype=np.int64)
    for position in range(14):
        p = 2 * ((p + digits[:, position] - 1) % 10 + 1) % 11
    ok = (
        (cleaned.str.len_chars() == 15).fill_null(False).to_numpy()
        & (digits >= 0).all(axis=1)
        & ((11 - p) % 10 == digits[:, 14])
    )
    return pl.Series(cleaned.name, ok)


def _resident_check_ok(compact: pl.Series) -> pl.Series:
    """The 18th character is the GB 11643 check character of 17 leading digits."""
    chars = _char_matrix(compact, 18)
    digits = _DIGIT_VALUE[chars[:, :17]]
    check = (12 - (digits @ np.array(RESIDENT_ID_WEIGHTS)) % 11) % 11
    ok = (digits >= 0).all(axis=1) & (_RESIDENT_CHECK_BYTES[check] == chars[:, 17])
    return pl.Series(compact.name, ok)


def _classify_unique(frame: pl.LazyFrame, column: str) -> pl.LazyFrame:
    """Built in steps of named columns (one nested expression re-using the cleaned code in every
    check makes Polars' planner slow down badly); the check characters are computed with numpy on
    byte matrices of the codes, many times faster than an expression per character position."""
    raw = pl.col(column)

    def check(function: Callable[[pl.Series], pl.Series], source: str) -> pl.Expr:
        return pl.col(source).map_batches(function, return_dtype=pl.Boolean, is_elementwise=True)

    steps = (
        frame.with_columns(
            _cleaned=_fullwidth_to_ascii(raw).str.replace_all(r"\s", "").str.to_uppercase(),
            _missing=raw.is_null() | (raw.str.strip_chars() == ""),
        )
        .with_columns(
            _fixed=pl.col("_cleaned").str.replace_all("O", "0").str.replace_all("I", "1"),
            _org=pl.col("_cleaned").str.replace_all("-", ""),
        )
        .with_columns(
            _uscc_ok=check(_uscc_ok, "_fixed") & ~pl.col("_missing"),
            _org_ok=check(_org_code_ok, "_org") & ~pl.col("_missing"),
            _reg_ok=check(_reg_no_ok, "_cleaned") & ~pl.col("_missing"),
            _person_form=resident_id_expr(pl.col("_org")),
            _person_check=check(_resident_check_ok, "_org"),
        )
        .with_columns(
            # a person's ID is never read as a firm code: it wins over a USCC whose check it also
            # passes by chance (about 1 in 341), and a mistyped one is still a person's
            _person=(
                pl.col("_person_form") & (pl.col("_person_check") | ~pl.col("_uscc_ok")) & ~pl.col("_missing")
            ).fill_null(False)
        )
        .with_columns(
            _uscc_ok=pl.col("_uscc_ok") & ~pl.col("_person"),
            _org_ok=pl.col("_org_ok") & ~pl.col("_person"),
            _reg_ok=pl.col("_reg_ok") & ~pl.col("_person"),
        )
    )
    return steps.with_columns(
        uscc=pl.when(pl.col("_uscc_ok")).then(pl.col("_fixed")),
        org_code=pl.when(pl.col("_uscc_ok"))
        .then(pl.col("_fixed").str.slice(8, 9))
        .when(pl.col("_org_ok"))
        .then(pl.col("_org")),
        reg_no=pl.when(~pl.col("_uscc_ok") & ~pl.col("_org_ok") & pl.col("_reg_ok")).then(pl.col("_cleaned")),
        code_status=pl.when(pl.col("_missing"))
        .then(pl.lit("missing"))
        .when(pl.col("_person"))
        .then(pl.lit("resident_id"))
        .when(pl.col("_uscc_ok") & (pl.col("_fixed") == raw))
        .then(pl.lit("valid"))
        .when(pl.col("_uscc_ok"))
        .then(pl.lit("repaired"))
        .when(pl.col("_org_ok"))
        .then(pl.lit("org_code"))
        .when(pl.col("_reg_ok"))
        .then(pl.lit("reg_no"))
        .otherwise(pl.lit("invalid")),
    ).drop(
        "_cleaned",
        "_missing",
        "_fixed",
        "_org",
        "_uscc_ok",
        "_org_ok",
        "_reg_ok",
        "_person_form",
        "_person_check",
        "_person",
    )
