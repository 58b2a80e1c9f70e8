"""Synthetic departmental source systems that look like the real ones (docs/source_systems.md).

Everything is vectorised (numpy draws, Polars string composition): a firm universe first, then
each source draws its records per firm, writes names the way departments mangle them and codes
the way they hold them. The truth (which firm each record belongs to) goes to ``truth/`` and is
never read by the pipeline. Same settings and seed, same bytes.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import opencc
import polars as pl
import sqlalchemy as sa
from tqdm import tqdm

from credit_synthetic import vocab as V
from foundation.identifiers import (
    USCC_ALPHABET,
    org_code_check_expr,
    reg_no_check_expr,
    resident_id_check_expr,
    uscc_check_expr,
)

SQL_SOURCES = {
    "lending": ("lending/lending.db", "loans", "loan_id"),
    "social_insurance": ("social_insurance/social_insurance.db", "contributions", "record_id"),
    "tax": ("tax/tax.db", "tax_records", "record_id"),
}
FULL_WIDTH = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}
#: share of administrative penalties whose subject is a natural person (自然人), not a firm
NATURAL_PERSON_SHARE = 0.03
#: share of an individual business's penalty records whose name carries the owner's phone or ID
LEAKED_CONTACT_SHARE = 0.15
FAULT_LEVELS = V.FAULT_LEVELS
NOISE_SETTINGS = V.NOISE_SETTINGS
Noise = V.Noise
noise_setting = V.noise_setting
noise_knobs = V.noise_knobs


def _moved_bounds(bounds: tuple[float, ...], marked: tuple[int, ...], share: float) -> list[float]:
    """``bounds`` with the marked bands' total share set to ``share`` and the other bands scaled to
    fill the rest; at the bounds' own share exactly the same bounds (so the default bytes stay)."""
    default = V.share_of(bounds, marked)
    grow = share / default if default else 1.0
    shrink = (1 - share) / (1 - default)
    moved, grown, shrunk, lower = [], 0.0, 0.0, 0.0
    for i, upper in enumerate(bounds):
        if i in marked:
            grown += upper - lower
        else:
            shrunk += upper - lower
        moved.append(upper + grown * (grow - 1) + shrunk * (shrink - 1))
        lower = upper
    return moved


def _hard_negative_count(firms: int, share: float) -> int:
    return max(1, int(firms * share)) if share > 0 else 0


class _Draw:
    """Named random streams: each part of the data draws from its own generator, so adding a column
    to one source does not shift every other source's values."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, name: str) -> np.random.Generator:
        key = int.from_bytes(name.encode(), "little") % (2**63)
        return np.random.default_rng([self.seed, key])


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _masked(mask: np.ndarray, values: Any) -> pl.Series:
    """``values`` where ``mask`` holds, else null (typed: numpy's where with None makes objects)."""
    return pl.select(pl.when(pl.Series(np.asarray(mask, dtype=bool))).then(pl.Series(values))).to_series()


def _pick(rng: np.random.Generator, options: tuple | list, n: int, p: tuple | None = None) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.choice(len(options), size=n, p=p)]


def _base31(values: np.ndarray, width: int) -> pl.Series:
    """Integers -> fixed-width strings over the USCC alphabet (vectorised digit by digit)."""
    alphabet = np.asarray(list(USCC_ALPHABET), dtype=object)
    digits = [alphabet[(values // 31**i) % 31] for i in reversed(range(width))]
    return (
        pl.DataFrame({str(i): d.astype(str) for i, d in enumerate(digits)})
        .select(pl.concat_str(pl.all()))
        .to_series()
    )


def _traditional(values: list[str]) -> dict[str, str]:
    converter = opencc.OpenCC("s2t")
    converted = converter.convert("\n".join(values)).split("\n")
    return dict(zip(values, converted, strict=True))


_EPOCH = date(1970, 1, 1).toordinal()


def _ordinal_dates(ordinals: pl.Series | pl.Expr) -> pl.Series | pl.Expr:
    """Proleptic Gregorian ordinals (``date.toordinal()``) as Polars dates."""
    return pl.from_epoch((ordinals - _EPOCH) * 86400, "s").dt.date()


def _given_names(rng: np.random.Generator, n: int) -> np.ndarray:
    """Chinese given names: one character, or two for 60% of people."""
    return _pick(rng, list(V.GIVEN), n) + np.where(rng.random(n) < 0.6, _pick(rng, list(V.GIVEN), n), "")


def _mobile_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """The ten digits after a mobile number's leading 1 (the second digit 3-9), as integers."""
    return rng.integers(3, 10, n) * 10**9 + rng.integers(0, 10**9, n)


def _divisions() -> pl.DataFrame:
    """The division table of ``V.DIVISIONS``, a row per division in its order."""
    return pl.DataFrame(
        [dict(zip(("division", "province", "city", "county"), d, strict=True)) for d in V.DIVISIONS]
    )


# --------------------------------------------------------------------------- the firm universe
def build_firms(n: int, draw: _Draw, end: date, days: int, noise: Noise = V.DEFAULT_NOISE) -> pl.DataFrame:
    rng = draw("firms")
    base = int(n * 1.25) + 50
    home = np.asarray([d[2] == V.HOME_CITY for d in V.DIVISIONS])
    weights = np.where(home, V.HOME_SHARE / home.sum(), (1 - V.HOME_SHARE) / (~home).sum())
    division_idx = rng.choice(len(V.DIVISIONS), size=base, p=weights)
    industry_idx = rng.integers(0, len(V.INDUSTRIES), base)
    chars = np.asarray(list(V.TRADE_CHARS), dtype=object)
    three = rng.random(base) < 0.65  # two-character trade names run out within one city
    trade = chars[rng.integers(0, len(chars), base)] + chars[rng.integers(0, len(chars), base)]
    trade = np.where(three, trade + chars[rng.integers(0, len(chars), base)], trade)
    frame = (
        pl.DataFrame(
            {
                "division_idx": division_idx,
                "industry_idx": industry_idx,
                "trade_name": trade.astype(str),
            }
        )
        .with_columns(
            city=pl.col("division_idx").replace_strict(dict(enumerate(d[2] for d in V.DIVISIONS))),
            valid=pl.col("trade_name").str.slice(0, 1) != pl.col("trade_name").str.slice(1, 1),
        )
        .filter("valid")
    )
    # one trade name per industry per city: the registry refuses duplicates there
    # the hard negatives added below (shares of ``noise``) make up the rest of the n firms
    extra = sum(_hard_negative_count(n, s) for s in (noise.branches, noise.siblings, noise.cross_city_reuse))
    frame = frame.unique(["city", "trade_name", "industry_idx"], keep="first", maintain_order=True).head(
        n - extra
    )
    n = frame.height
    rng2 = draw("firm-attributes")
    kind = rng2.choice(3, size=n, p=(0.94, 0.05, 0.01))  # enterprise, individual business, cooperative
    founded_days = rng2.integers(0, (end - date(1995, 1, 1)).days - 30, n)
    founded = np.array([date(1995, 1, 1).toordinal()], dtype=np.int64) + founded_days
    if days > 1:  # some firms are founded inside the window, for incremental runs to pick up
        new = rng2.random(n) < 0.01
        founded = np.where(new, end.toordinal() - rng2.integers(0, days, n), founded)
    divisions = _divisions().with_row_index("division_idx")
    industries = pl.DataFrame(
        {"industry": [i[0] for i in V.INDUSTRIES], "manufacturer": [i[1] for i in V.INDUSTRIES]}
    ).with_row_index("industry_idx")
    frame = (
        frame.with_columns(pl.col("division_idx").cast(pl.UInt32), pl.col("industry_idx").cast(pl.UInt32))
        .drop("city", "valid")
        .join(divisions, on="division_idx", how="left", maintain_order="left")
        .join(industries, on="industry_idx", how="left", maintain_order="left")
        .with_columns(
            kind=pl.Series(kind),
            founded=pl.Series(founded, dtype=pl.Int64),
            legal_form=pl.Series(_pick(rng2, V.LEGAL_FORMS, n, V.LEGAL_FORM_WEIGHTS).astype(str)),
            region_style=pl.Series(rng2.choice(3, size=n, p=(0.55, 0.3, 0.15))),
            surname=pl.Series(_pick(rng2, list(V.SURNAMES), n).astype(str)),
            given=pl.Series(_given_names(rng2, n).astype(str)),
            shop=pl.Series(_pick(rng2, V.SHOP_TYPES, n).astype(str)),
            coop=pl.Series(_pick(rng2, V.COOP_WORDS, n).astype(str)),
            road=pl.Series(_pick(rng2, V.ROADS, n).astype(str)),
            number=pl.Series(rng2.integers(1, 999, n)),
            phone=pl.Series(_mobile_numbers(rng2, n)),
        )
        .with_columns(founded=_ordinal_dates(pl.col("founded")))
    )
    region = (
        pl.when(pl.col("region_style") == 0)
        .then(pl.col("city"))
        .when(pl.col("region_style") == 1)
        .then(pl.col("city") + pl.col("county"))
        .otherwise(pl.col("province") + pl.col("city"))
    )
    frame = frame.with_columns(
        region=region,
        legal_rep=pl.col("surname") + pl.col("given"),
        name=pl.when(pl.col("kind") == 1)
        .then(pl.col("county") + "区" + pl.col("surname") + pl.col("given") + pl.col("shop"))
        .when(pl.col("kind") == 2)
        .then(region + pl.col("trade_name") + pl.col("coop") + "专业合作社")
        .otherwise(region + pl.col("trade_name") + pl.col("industry") + pl.col("legal_form")),
        address=_address(pl.col("road"), pl.col("number")),
        phone=_phone(pl.col("phone")),
        legal_form=pl.when(pl.col("kind") == 0).then(pl.col("legal_form")),
    ).drop("surname", "given", "shop", "coop", "road", "number", "region_style")
    frame = frame.with_columns(
        entity_key=pl.format("F{}", pl.int_range(pl.len()).cast(pl.String).str.zfill(8)),
        branch_of=pl.lit(None, dtype=pl.String),
    )
    frame = _add_hard_negatives(frame, draw, noise)
    frame = _add_codes(frame, draw, end)
    return _add_renames(frame, draw, end, days)


def _address(road: pl.Expr, number: pl.Expr) -> pl.Expr:
    """A registered address in the firm's own province, city and county."""
    return (
        pl.col("province")
        + "省"
        + pl.col("city")
        + "市"
        + pl.col("county")
        + "区"
        + road
        + number.cast(pl.String)
        + "号"
    )


def _phone(number: pl.Expr) -> pl.Expr:
    return pl.lit("1") + number.cast(pl.String).str.zfill(10)


def _own_details(firms: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """``firms`` with a legal representative, address (in their own city) and phone of their own."""
    n = firms.height
    given = _given_names(rng, n)
    return firms.with_columns(
        legal_rep=pl.Series((_pick(rng, list(V.SURNAMES), n) + given).astype(str), dtype=pl.String),
        address=_address(
            pl.Series(_pick(rng, V.ROADS, n).astype(str), dtype=pl.String), pl.Series(rng.integers(1, 999, n))
        ),
        phone=_phone(pl.Series(_mobile_numbers(rng, n))),
    )


def _add_hard_negatives(firms: pl.DataFrame, draw: _Draw, noise: Noise) -> pl.DataFrame:
    """Branches, one-character siblings in the same city and namesakes in another city (their shares
    and whether they copy the legal representative, address and phone: ``noise``)."""
    rng = draw("hard-negatives")
    enterprises = firms.filter(pl.col("kind") == 0)
    n = firms.height
    k = _hard_negative_count(n, noise.branches)
    heads = enterprises.sample(n=min(k, enterprises.height), seed=int(rng.integers(1 << 31)))
    branch_county = pl.Series(_pick(rng, [d[3] for d in V.DIVISIONS], heads.height).astype(str))
    branches = heads.with_columns(
        branch_of=pl.col("entity_key"),
        name=pl.col("name") + branch_county + "分公司",
        legal_rep=pl.col("legal_rep").str.slice(0, 1) + "建国",
    )
    chars = np.asarray(list(V.TRADE_CHARS), dtype=object)
    k = _hard_negative_count(n, noise.siblings)
    sib_src = enterprises.sample(n=min(k, enterprises.height), seed=int(rng.integers(1 << 31)))
    new_char = pl.Series(_pick(rng, chars, sib_src.height).astype(str))
    siblings = sib_src.with_columns(
        trade_name=pl.col("trade_name").str.slice(0, 1) + new_char + pl.col("trade_name").str.slice(2),
    ).with_columns(name=pl.col("region") + pl.col("trade_name") + pl.col("industry") + pl.col("legal_form"))
    k = _hard_negative_count(n, noise.cross_city_reuse)
    other_src = enterprises.sample(n=min(k, enterprises.height), seed=int(rng.integers(1 << 31)))
    other_div = rng.integers(0, len(V.DIVISIONS), other_src.height)
    divisions = _divisions()
    moved = (
        other_src.drop("division", "province", "city", "county")
        .with_columns(_d=pl.Series(other_div).cast(pl.UInt32))
        .join(divisions.with_row_index("_d"), on="_d", how="left", maintain_order="left")
        .drop("_d")
    )
    # a namesake registered without a region: only its address and code's division say where it is
    regionless = rng.random(moved.height) < noise.regionless_namesakes if noise.regionless_namesakes else None
    moved = (
        moved.with_columns(
            region=pl.col("city")
            if regionless is None
            else pl.when(pl.Series(regionless)).then(pl.lit("")).otherwise(pl.col("city"))
        )
        .with_columns(
            name=pl.col("region") + pl.col("trade_name") + pl.col("industry") + pl.col("legal_form")
        )
        .select(firms.columns)
    )
    siblings = siblings.select(firms.columns)
    if not noise.copied_details:
        details = draw("hard-negative-details")
        siblings, moved = _own_details(siblings, details), _own_details(moved, details)
    extra = pl.concat([branches, siblings, moved], how="vertical_relaxed")
    extra = extra.with_columns(
        entity_key=pl.format("F{}", (pl.int_range(pl.len()) + n).cast(pl.String).str.zfill(8)),
    )
    combined = pl.concat([firms, extra], how="vertical_relaxed")
    # the registry never holds two identical names (nor one trade name twice per city and industry)
    combined = combined.unique("name", keep="first", maintain_order=True)
    core_key = pl.when(pl.col("branch_of").is_null()).then(
        pl.col("city") + pl.col("trade_name") + pl.col("industry")
    )
    return combined.filter(core_key.is_null() | core_key.is_first_distinct())


def _add_codes(firms: pl.DataFrame, draw: _Draw, end: date) -> pl.DataFrame:
    rng = draw("codes")
    n = firms.height
    new_style = (firms["founded"] >= date(2015, 10, 1)).to_numpy()
    numbers = rng.choice(31**6, size=n, replace=False)
    old_numbers = rng.choice(10**8, size=n, replace=False)
    body_new = "MA" + _base31(numbers, 6)
    body_old = pl.Series(old_numbers).cast(pl.String).str.zfill(8)
    body = pl.Series(np.where(new_style, body_new.to_numpy(), body_old.to_numpy()).astype(str))
    type_char = firms["kind"].replace_strict({0: "1", 1: "2", 2: "3"}, return_dtype=pl.String)
    seq = rng.choice(10**7, size=n, replace=False)
    codes = pl.DataFrame(
        {
            "body": body,
            "type": type_char,
            "division": firms["division"],
            "seq": pl.Series(seq).cast(pl.String).str.zfill(7),
            "dom": pl.Series(rng.integers(0, 4, n)).cast(pl.String),
        }
    )
    codes = codes.with_columns(org_code=pl.col("body") + org_code_check_expr(pl.col("body")))
    codes = codes.with_columns(first17=pl.lit("9") + pl.col("type") + pl.col("division") + pl.col("org_code"))
    codes = codes.with_columns(
        uscc=pl.col("first17") + uscc_check_expr(pl.col("first17")),
        reg14=pl.col("division") + pl.col("dom") + pl.col("seq"),
    )
    codes = codes.with_columns(reg_no=pl.col("reg14") + reg_no_check_expr(pl.col("reg14")))
    has_reg = ~new_style & (rng.random(n) < 0.85)
    return firms.with_columns(
        uscc=codes["uscc"],
        org_code=codes["org_code"],
        reg_no=_masked(has_reg, codes["reg_no"]),
    )


def _add_renames(firms: pl.DataFrame, draw: _Draw, end: date, days: int) -> pl.DataFrame:
    rng = draw("renames")
    n = firms.height
    renamed = (
        (rng.random(n) < 0.03) & (firms["kind"] == 0).to_numpy() & firms["branch_of"].is_null().to_numpy()
    )
    chars = np.asarray(list(V.TRADE_CHARS), dtype=object)
    old_trade = (_pick(rng, chars, n) + _pick(rng, chars, n)).astype(str)
    back = rng.integers(30, 1000, n)
    if days > 1:
        back = np.where(rng.random(n) < 0.3, rng.integers(0, days, n), back)
    rename_day = end.toordinal() - back
    return firms.with_columns(
        former_name=pl.when(pl.Series(renamed)).then(
            pl.col("region") + pl.Series(old_trade) + pl.col("industry") + pl.col("legal_form")
        ),
        renamed_on=pl.when(pl.Series(renamed)).then(_ordinal_dates(pl.Series(rename_day))),
    )


# --------------------------------------------------------------------------- records
def _records(firms: pl.DataFrame, counts: np.ndarray) -> pl.DataFrame:
    """One row per record: the firm's attributes repeated ``counts`` times."""
    idx = np.repeat(np.arange(firms.height), counts)
    return firms[idx]


def _updated_at(
    rng: np.random.Generator, n: int, end: date, days: int, earliest: pl.Series | None
) -> pl.Series:
    offset_days = rng.integers(0, days, n)
    seconds = rng.integers(6 * 3600, 22 * 3600, n)
    day = np.asarray(end.toordinal() - offset_days, dtype=np.int64)
    if earliest is not None:
        floor = earliest.to_physical().to_numpy().astype(np.int64) + _EPOCH
        day = np.maximum(day, floor)
    stamp = (day - _EPOCH) * 86400 + seconds
    return pl.from_epoch(pl.Series(stamp), "s").dt.strftime("%Y-%m-%d %H:%M:%S")


def _dates_before(
    rng: np.random.Generator, n: int, end: date, max_days_back: int, min_days_back: int = 0
) -> pl.Series:
    back = rng.integers(min_days_back, max_days_back, n)
    return _ordinal_dates(pl.Series(end.toordinal() - back))


def _names(
    recs: pl.DataFrame,
    rng: np.random.Generator,
    trad: dict[str, str],
    when: pl.Series,
    noise: Noise = V.DEFAULT_NOISE,
) -> pl.Series:
    """How a department writes the firm's name on one record (a company's variants in the shares of
    ``V.NAME_VARIANT_BOUNDS``, with ``noise.missing_regions`` of them leaving the city out)."""
    n = recs.height
    r = rng.random(n)
    full_width_brackets = rng.random(n) < 0.5
    lb = np.where(full_width_brackets, "（", "(")
    rb = np.where(full_width_brackets, "）", ")")
    other_form = recs["legal_form"].replace_strict(
        {"有限公司": "有限责任公司", "有限责任公司": "有限公司", "股份有限公司": "股份公司"}, default=None
    )
    chars = np.asarray(list(V.TRADE_CHARS), dtype=object)
    typo_char = pl.Series(_pick(rng, chars, n).astype(str))
    frame = recs.select(
        "name",
        "former_name",
        "renamed_on",
        "region",
        "trade_name",
        "industry",
        "legal_form",
        "city",
        "kind",
        "branch_of",
    ).with_columns(
        r=pl.Series(r),
        lb=pl.Series(lb),
        rb=pl.Series(rb),
        other_form=other_form,
        typo=typo_char,
        when=when,
    )
    plain = (pl.col("kind") != 0) | pl.col("branch_of").is_not_null()
    core = pl.col("trade_name") + pl.col("industry")

    def t(col: str) -> pl.Expr:
        return pl.col(col).replace_strict(trad, default=pl.col(col))

    # in the order of V.NAME_VARIANT_BOUNDS
    company_variants = (
        pl.col("name"),
        core + pl.col("legal_form"),
        core + pl.col("lb") + pl.col("city") + pl.col("rb") + pl.col("legal_form"),
        pl.col("region") + core + pl.col("other_form").fill_null(pl.col("legal_form")),
        pl.col("region") + " " + core + " " + pl.col("legal_form"),
        pl.col("name").str.replace_many(list(FULL_WIDTH), list(FULL_WIDTH.values())) + "　",
        t("region") + t("trade_name") + t("industry") + t("legal_form"),
        core,
        pl.col("region")
        + pl.col("trade_name").str.slice(0, 1)
        + pl.col("typo")
        + pl.col("trade_name").str.slice(2)
        + pl.col("industry")
        + pl.col("legal_form"),
        pl.col("name"),
    )
    bounds = _moved_bounds(V.NAME_VARIANT_BOUNDS, V.REGIONLESS_NAME_VARIANTS, noise.missing_regions)
    variant = (
        pl.when(pl.col("former_name").is_not_null() & (pl.col("when") < pl.col("renamed_on")))
        .then(pl.col("former_name"))
        .when(plain & (pl.col("r") < 0.93))
        .then(pl.col("name"))
        .when(plain)
        .then(t("name"))
    )
    for upper, written in zip(bounds[:-1], company_variants[:-1], strict=True):
        variant = variant.when(pl.col("r") < upper).then(written)
    variant = variant.otherwise(company_variants[-1])
    return frame.select(variant).to_series()


def _codes(recs: pl.DataFrame, rng: np.random.Generator, noise: Noise = V.DEFAULT_NOISE) -> pl.Series:
    """How a department holds the firm's code on one record (docs/source_systems.md for the mix;
    ``V.CODE_VARIANT_BOUNDS``, with ``noise.missing_codes`` of the records holding none)."""
    n = recs.height
    r = rng.random(n)
    sub = rng.integers(0, 5, n)
    pos = rng.integers(0, 18, n)
    alphabet = np.asarray(list(USCC_ALPHABET), dtype=object)
    shift = rng.integers(1, 31, n)
    frame = recs.select("uscc", "org_code", "reg_no").with_columns(
        r=pl.Series(r),
        sub=pl.Series(sub),
        pos=pl.Series(pos),
        shift=pl.Series(shift),
        dash=pl.Series(rng.random(n) < 0.5),
    )
    # one mistyped character: the character at pos moved along the alphabet (always fails the check)
    values = {c: i for i, c in enumerate(USCC_ALPHABET)}
    at = pl.col("uscc").str.slice(pl.col("pos"), 1).replace_strict(values, return_dtype=pl.Int64)
    wrong = ((at + pl.col("shift")) % 31).replace_strict(
        dict(enumerate(alphabet.tolist())), return_dtype=pl.String
    )
    mistyped = (
        pl.col("uscc").str.slice(0, pl.col("pos")) + wrong + pl.col("uscc").str.slice(pl.col("pos") + 1)
    )
    corrupted = (
        pl.when(pl.col("sub") == 0)
        .then(pl.col("uscc").str.to_lowercase())
        .when(pl.col("sub") == 1)
        .then(
            pl.col("uscc").str.slice(0, 6)
            + " "
            + pl.col("uscc").str.slice(6, 6)
            + " "
            + pl.col("uscc").str.slice(12)
        )
        .when(pl.col("sub") == 2)
        .then(pl.col("uscc").str.replace_all("0", "O"))
        .when(pl.col("sub") == 3)
        .then(pl.col("uscc").str.replace_many(list(FULL_WIDTH), list(FULL_WIDTH.values())))
        .otherwise(mistyped)
    )
    org = pl.when(pl.col("dash")).then(
        pl.col("org_code").str.slice(0, 8) + "-" + pl.col("org_code").str.slice(8)
    )
    uscc, org_code, reg_no, damaged, _ = _moved_bounds(
        V.CODE_VARIANT_BOUNDS, (len(V.CODE_VARIANT_BOUNDS) - 1,), noise.missing_codes
    )
    code = (
        pl.when(pl.col("r") < uscc)
        .then(pl.col("uscc"))
        .when(pl.col("r") < org_code)
        .then(org.otherwise(pl.col("org_code")))
        .when(pl.col("r") < reg_no)
        .then(pl.col("reg_no").fill_null(pl.col("uscc")))
        .when(pl.col("r") < damaged)
        .then(corrupted)
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return frame.select(code).to_series()


def _ids(prefix: str, n: int, width: int = 12) -> pl.Series:
    return pl.select(pl.format(prefix + "{}", pl.int_range(n).cast(pl.String).str.zfill(width))).to_series()


def _firm_weights(firms: pl.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """A latent 'risk' per firm so that a firm's bad records come together (grades spread out)."""
    return rng.beta(0.6, 6.0, firms.height)


@dataclass(frozen=True)
class World:
    """What every source draws its records from: the firms and their latent risk, the traditional
    spellings of their names, the last day and the number of days of data, the noise setting and
    the named random streams."""

    firms: pl.DataFrame
    draw: _Draw
    end: date
    days: int
    trad: dict[str, str]
    risk: np.ndarray
    noise: Noise = V.DEFAULT_NOISE

    def records(self, rng: np.random.Generator, *parts: tuple[np.ndarray, dict[str, Any]]) -> SourceRecords:
        """One source's records: for each part, every firm repeated its ``counts`` times with the
        part's own columns (a constant, or a value per record); a source with one kind of record has
        one part, without columns."""
        frames = [
            _records(self.firms, counts).with_columns(
                **{k: pl.lit(v) if isinstance(v, str) else pl.Series(v) for k, v in columns.items()}
            )
            for counts, columns in parts
        ]
        risk = np.concatenate([np.repeat(self.risk, counts) for counts, _ in parts])
        return SourceRecords(self, rng, pl.concat(frames, how="diagonal_relaxed"), risk)


@dataclass
class SourceRecords:
    """A source's records being drawn, from the source's own random stream. The draws happen in
    the order the source's generator calls these methods, and that order fixes the bytes."""

    world: World
    rng: np.random.Generator
    recs: pl.DataFrame
    #: the latent risk of each record's firm
    risk: np.ndarray
    updated: pl.Series | None = None

    @property
    def n(self) -> int:
        return self.recs.height

    def updated_at(self) -> pl.Series:
        """When each record last changed (within the window of days, never before its firm was
        founded); the names drawn after this follow renames by it."""
        self.updated = _updated_at(self.rng, self.n, self.world.end, self.world.days, self.recs["founded"])
        return self.updated

    def names(self) -> pl.Series:
        """How the department writes each record's firm name (as of the record's update)."""
        if self.updated is None:
            raise RuntimeError("draw updated_at() before names(): a name depends on when it was written")
        when = self.updated.str.to_date("%Y-%m-%d %H:%M:%S")
        return _names(self.recs, self.rng, self.world.trad, when, self.world.noise)

    def codes(self) -> pl.Series:
        """How the department holds each record's firm code."""
        return _codes(self.recs, self.rng, self.world.noise)

    def pick(self, options: tuple | list, p: tuple | None = None) -> np.ndarray:
        """One of ``options`` per record, as text."""
        return _pick(self.rng, options, self.n, p).astype(str)

    def dates_before(self, max_days_back: int, min_days_back: int = 0) -> pl.Series:
        return _dates_before(self.rng, self.n, self.world.end, max_days_back, min_days_back)

    def frame(self, columns: dict[str, Any]) -> pl.DataFrame:
        """The source's table, with each record's firm (``entity_key``, for the truth)."""
        return pl.DataFrame(columns).with_columns(entity_key=self.recs["entity_key"])


def gen_lending(world: World) -> pl.DataFrame:
    rng = world.draw("lending")
    firms = world.firms
    borrows = rng.random(firms.height) < np.where(firms["kind"].to_numpy() == 1, 0.25, 0.62)
    loans = world.records(rng, (np.where(borrows, rng.integers(1, 6, firms.height), 0), {}))
    n, recs = loans.n, loans.recs
    start = loans.dates_before(1800, 20)
    term = rng.choice([180, 365, 730, 1095, 1825], size=n)
    amount = np.round(rng.lognormal(13.5, 1.2, n) / 1000) * 1000
    overdue_days = np.where(
        rng.random(n) < loans.risk * 1.5, rng.choice([15, 45, 100, 200, 300, 400], size=n), 0
    )
    five = np.select(
        [overdue_days > 360, overdue_days > 270, overdue_days > 90, overdue_days > 0, rng.random(n) < 0.03],
        ["损失", "可疑", "次级", "关注", "关注"],
        default="正常",
    )
    balance = np.round(amount * rng.uniform(0.05, 1.0, n), 2)
    overdue_principal = np.where(overdue_days > 0, np.round(balance * rng.uniform(0.1, 1.0, n), 2), 0.0)
    updated = loans.updated_at()
    return loans.frame(
        {
            "loan_id": _ids("L", n),
            "borrower_code": loans.codes(),
            "borrower_name": loans.names(),
            "borrower_type": np.where(recs["kind"].to_numpy() == 1, "individual_business", "enterprise"),
            "lender": loans.pick(V.LENDERS) + recs["city"].to_numpy().astype(str) + "分行",
            "contract_no": _ids("HT", n, 10),
            "loan_type": loans.pick(V.LOAN_TYPES),
            "guarantee_type": loans.pick(V.GUARANTEE_TYPES),
            "amount": amount,
            "balance": balance,
            "start_date": start.dt.strftime("%Y-%m-%d"),
            "due_date": (start + pl.Series(term).cast(pl.Duration("ms")) * 86_400_000).dt.strftime(
                "%Y-%m-%d"
            ),
            "five_class": five,
            "overdue_days": overdue_days.astype(np.int64),
            "overdue_principal": overdue_principal,
            "updated_at": updated,
        }
    )


def gen_social_insurance(world: World) -> pl.DataFrame:
    rng = world.draw("social_insurance")
    firms, end = world.firms, world.end
    insured = rng.random(firms.height) < 0.7
    counts = np.where(insured, 6, 0)
    months = world.records(rng, (counts, {}))
    n = months.n
    month_back = np.tile(np.arange(6), int(insured.sum()))
    total = end.year * 12 + (end.month - 1) - month_back
    period = pl.Series((total // 12) * 100 + total % 12 + 1).cast(pl.String)
    heads = np.repeat(np.maximum(1, rng.lognormal(2.5, 1.1, firms.height).astype(np.int64)), counts)
    base = np.round(np.repeat(rng.uniform(3500, 12000, firms.height), counts), 2)
    due = np.round(heads * base * 0.3, 2)
    in_arrears = np.repeat(rng.random(firms.height), counts) < months.risk * 0.25
    paid = np.where(in_arrears & (month_back < 3), np.round(due * rng.uniform(0, 0.8, n), 2), due)
    arrears = np.round(due - paid, 2)
    arrears_months = np.where(arrears > 0, 3 - month_back, 0)
    updated = months.updated_at()
    return months.frame(
        {
            "record_id": _ids("S", n),
            "unit_code": months.codes(),
            "unit_name": months.names(),
            "period": period,
            "insured_pension": heads,
            "insured_medical": heads,
            "insured_unemployment": np.maximum(0, heads - rng.integers(0, 2, n)),
            "insured_injury": heads,
            "contribution_base": base,
            "amount_due": due,
            "amount_paid": paid,
            "arrears_principal": arrears,
            "arrears_months": arrears_months.astype(np.int64),
            "updated_at": updated,
        }
    )


def gen_tax(world: World) -> pl.DataFrame:
    rng = world.draw("tax")
    h, end, risk = world.firms.height, world.end, world.risk
    rated = rng.random(h) < 0.92
    rating_counts = np.where(rated, 3, 0)
    arrears_counts = np.where(rng.random(h) < risk * 0.35, rng.integers(1, 3, h), 0)
    major_counts = np.where(rng.random(h) < risk * 0.02, 1, 0)
    rating_years = np.tile(np.arange(end.year - 3, end.year), int(rated.sum()))
    taxes = world.records(
        rng,
        (rating_counts, {"record_kind": "rating", "rating_year": rating_years}),
        (arrears_counts, {"record_kind": "arrears"}),
        (major_counts, {"record_kind": "major_violation"}),
    )
    n, recs = taxes.n, taxes.recs
    kind = recs["record_kind"].to_numpy()
    score = np.clip(rng.normal(88 - taxes.risk * 120, 8, n), 0, 100).round(1)
    rating = np.select([score >= 90, score >= 70, score >= 40], ["A", "B", "C"], default="D")
    rating = np.where(rng.random(n) < 0.04, "M", rating)
    updated = taxes.updated_at()
    listed = taxes.dates_before(1000).dt.strftime("%Y-%m-%d")
    is_rating, is_arrears, is_major = kind == "rating", kind == "arrears", kind == "major_violation"
    case = taxes.pick(V.TAX_CASES)
    return taxes.frame(
        {
            "record_id": _ids("T", n),
            "taxpayer_id": taxes.codes(),
            "old_reg_no": _masked(rng.random(n) < 0.7, recs["reg_no"]),
            "taxpayer_name": taxes.names(),
            "record_kind": kind,
            "rating_year": _masked(is_rating, recs["rating_year"].fill_null(0)).cast(pl.Int64),
            "rating": _masked(is_rating, rating),
            "rating_score": _masked(is_rating & (rating != "M"), score).cast(pl.Float64),
            "tax_type": _masked(is_arrears, taxes.pick(V.TAX_TYPES)),
            "arrears_balance": _masked(is_arrears, np.round(rng.lognormal(10, 1.3, n), 2)).cast(pl.Float64),
            "case_nature": _masked(is_major, case),
            "case_facts": _masked(is_major, np.char.add(np.char.add("经查，该单位", case), "，涉案金额较大")),
            "listed_date": _masked(is_major, listed),
            "updated_at": updated,
        }
    )


def gen_contract(world: World) -> pl.DataFrame:
    rng = world.draw("contract")
    h = world.firms.height
    cases = world.records(
        rng, (np.where(rng.random(h) < 0.02 + world.risk * 0.25, rng.integers(1, 4, h), 0), {})
    )
    n, recs = cases.n, cases.recs
    kind = rng.choice(3, size=n, p=(0.3, 0.55, 0.15))
    record_type = np.asarray(["失信被执行人", "被执行人", "合同违约"], dtype=object)[kind]
    performance = np.where(
        kind == 0,
        _pick(rng, ("全部未履行", "部分未履行"), n, (0.7, 0.3)),
        _pick(rng, ("全部未履行", "部分未履行", "已履行"), n, (0.4, 0.3, 0.3)),
    )
    filed = cases.dates_before(1500, 30)
    year = filed.dt.year().cast(pl.String)
    county_code = recs["division"].str.slice(0, 2) + recs["division"].str.slice(4, 2)
    case_no = (
        "("
        + year
        + ")"
        + recs["province"].str.slice(0, 1)
        + county_code
        + "执"
        + pl.Series(np.where(rng.random(n) < 0.2, "恢", ""))
        + pl.Series(rng.integers(1, 3000, n)).cast(pl.String)
        + "号"
    )
    updated = cases.updated_at()
    amount = np.round(rng.lognormal(11, 1.4, n), 2)
    unperformed = np.where(
        performance == "已履行", 0.0, np.where(performance == "部分未履行", np.round(amount * 0.5, 2), amount)
    )
    return cases.frame(
        {
            "记录编号": _ids("C", n),
            "案号": case_no,
            "执行法院": recs["city"] + recs["county"] + "区人民法院",
            "立案日期": filed.dt.strftime("%Y-%m-%d"),
            "被执行人名称": cases.names(),
            "统一社会信用代码": cases.codes(),
            "法定代表人": recs["legal_rep"],
            "执行依据确定的义务": pl.Series(np.where(kind == 2, "支付合同欠款", "给付申请执行人款项")),
            "履行情况": performance.astype(str),
            "未履行金额": pl.Series(unperformed).round(2).cast(pl.String),
            "发布日期": (filed + timedelta(days=30)).dt.strftime("%Y-%m-%d"),
            "记录类型": record_type.astype(str),
            "更新时间": updated,
        }
    )


def gen_product_quality(world: World) -> pl.DataFrame:
    rng = world.draw("product_quality")
    firms = world.firms
    manufacturer = firms["manufacturer"].fill_null(False).to_numpy() & (firms["kind"].to_numpy() == 0)
    checks = world.records(
        rng,
        (np.where(manufacturer & (rng.random(firms.height) < 0.45), rng.integers(1, 5, firms.height), 0), {}),
    )
    n = checks.n
    r = rng.random(n)
    result = np.where(r < 0.015, "拒检", np.where(r < 0.06 + checks.risk * 0.5, "不合格", "合格"))
    items = rng.integers(0, len(V.FAILED_ITEMS), (n, 2))
    failed = pl.Series(
        [[V.FAILED_ITEMS[a]] if res == "不合格" else [] for a, res in zip(items[:, 0], result, strict=True)]
    )
    updated = checks.updated_at()
    return checks.frame(
        {
            "report_no": _ids("Q", n),
            "plan_level": checks.pick(V.PLAN_LEVELS, (0.2, 0.35, 0.3, 0.15)),
            "testing_body": checks.pick(V.TESTING_BODIES),
            "enterprise_name": checks.names(),
            "enterprise_code": checks.codes(),
            "product": checks.pick(V.PRODUCTS),
            "model": pl.Series(rng.integers(100, 9999, n)).cast(pl.String).str.replace(r"^", "XH-"),
            "batch": pl.Series(rng.integers(10**7, 10**8, n)).cast(pl.String),
            "check_date": checks.dates_before(1400, 1).dt.strftime("%Y-%m-%d"),
            "result": result.astype(str),
            "failed_items": failed,
            "rectified": pl.Series(np.where(result == "合格", True, rng.random(n) < 0.7)),
            "recalled": pl.Series((result == "不合格") & (rng.random(n) < 0.1)),
            "updated_at": updated,
        }
    )


def gen_violations(world: World) -> pl.DataFrame:
    rng = world.draw("violations")
    h, risk = world.firms.height, world.risk
    penalty_counts = np.where(rng.random(h) < 0.05 + risk * 0.4, rng.integers(1, 3, h), 0)
    abnormal_counts = np.where(rng.random(h) < 0.01 + risk * 0.15, 1, 0)
    serious_counts = np.where(rng.random(h) < risk * 0.02, 1, 0)
    cases = world.records(
        rng,
        (penalty_counts, {"数据类别": "行政处罚"}),
        (abnormal_counts, {"数据类别": "经营异常名录"}),
        (serious_counts, {"数据类别": "严重违法失信名单"}),
    )
    n, recs = cases.n, cases.recs
    is_penalty = (recs["数据类别"] == "行政处罚").to_numpy()
    category = cases.pick(V.PENALTY_CATEGORIES, V.PENALTY_WEIGHTS)
    fined = np.isin(category, ["罚款", "没收违法所得"])
    decided = cases.dates_before(1000, 1)
    serious = np.isin(category, ["吊销许可证件", "责令停产停业", "责令关闭"])
    publicity = np.where(serious | ~is_penalty, rng.integers(183, 1095, n), rng.integers(90, 365, n))
    updated = cases.updated_at()
    year = decided.dt.year().cast(pl.String)
    decision_no = recs["city"].str.slice(0, 1) + "市监处罚〔" + year + "〕" + _ids("", n, 8) + "号"
    blank = pl.lit(None, dtype=pl.String)
    frame = cases.frame(
        {
            "行政处罚决定书文号": decision_no,
            "数据类别": recs["数据类别"],
            "行政相对人类别": pl.Series(
                np.where(recs["kind"].to_numpy() == 1, "个体工商户", "法人及非法人组织")
            ),
            "行政相对人名称": cases.names(),
            "统一社会信用代码": cases.codes(),
            "法定代表人": recs["legal_rep"],
            "违法行为类型": cases.pick(V.VIOLATION_TYPES),
            "违法事实": pl.Series(
                np.where(is_penalty, "经查，当事人存在违法行为，事实清楚，证据确凿", "通过登记的住所无法联系")
            ),
            "处罚依据": cases.pick(V.LEGAL_BASES),
            "处罚类别": _masked(is_penalty, category),
            "罚款金额（万元）": _masked(is_penalty & fined, np.round(rng.lognormal(0.5, 1.2, n), 2))
            .cast(pl.Float64)
            .cast(pl.String),
            "处罚决定日期": decided.dt.strftime("%Y-%m-%d"),
            "公示截止期": (decided + pl.Series(publicity).cast(pl.Duration("ms")) * 86_400_000).dt.strftime(
                "%Y-%m-%d"
            ),
            "处罚机关": recs["city"] + "市市场监督管理局",
            "处罚机关统一社会信用代码": "11" + recs["division"] + "MB0000000X",
            "更新时间": updated,
        }
    )
    frame = frame.with_columns(
        pl.when(pl.col("数据类别") == "行政处罚")
        .then(pl.col("违法行为类型"))
        .otherwise(blank)
        .alias("违法行为类型"),
    )
    frame = _leak_owner_contacts(frame, world.draw, world.firms)
    frame = pl.concat(
        [frame, _natural_person_penalties(frame, world.draw, world.end, world.days)], how="vertical"
    )
    # decision numbers are the record id: make them unique
    return frame.unique("行政处罚决定书文号", keep="first", maintain_order=True)


def _people(rng: np.random.Generator, n: int) -> pl.DataFrame:
    """Natural persons: name, resident ID (GB 11643, valid check character), its old 15-digit form
    and a mobile phone number."""
    region = _pick(rng, [d[0] for d in V.DIVISIONS], n).astype(str)
    born = _ordinal_dates(pl.Series(date(1950, 1, 1).toordinal() + rng.integers(0, 50 * 365, n)))
    seq = pl.Series(rng.integers(0, 1000, n)).cast(pl.String).str.zfill(3)
    first17 = pl.Series(region) + born.dt.strftime("%Y%m%d") + seq
    phone = pl.Series(_mobile_numbers(rng, n)).cast(pl.String).str.zfill(10)
    given = _given_names(rng, n)
    return pl.select(
        name=pl.Series((_pick(rng, list(V.SURNAMES), n) + given).astype(str)),
        resident_id=first17 + resident_id_check_expr(first17),
        old_id=pl.Series(region) + born.dt.strftime("%y%m%d") + seq,
        phone="1" + phone,
    )


def _as_written(rng: np.random.Generator, people: pl.DataFrame) -> pl.DataFrame:
    """How a department writes a person's ID and phone: spaced, hyphenated, lower-case x, a
    mistyped check character; 138-0013-8000, +86 prefixes, spaces."""
    n = people.height
    pid, phone = pl.col("resident_id"), pl.col("phone")
    wrong = ((pid.str.slice(17, 1).replace("X", "10").cast(pl.Int64) + 1) % 10).cast(pl.String)
    return people.with_columns(r_id=pl.Series(rng.random(n)), r_phone=pl.Series(rng.random(n))).select(
        "name",
        "resident_id",
        "old_id",
        "phone",
        id_written=pl.when(pl.col("r_id") < 0.55)
        .then(pid)
        .when(pl.col("r_id") < 0.7)
        .then(pid.str.slice(0, 6) + " " + pid.str.slice(6, 8) + " " + pid.str.slice(14))
        .when(pl.col("r_id") < 0.8)
        .then(pid.str.slice(0, 6) + "-" + pid.str.slice(6, 8) + "-" + pid.str.slice(14))
        .when(pl.col("r_id") < 0.9)
        .then(pid.str.to_lowercase().str.slice(0, 17) + pid.str.slice(17).str.replace("X", "x"))
        .otherwise(pid.str.slice(0, 17) + wrong),
        phone_written=pl.when(pl.col("r_phone") < 0.3)
        .then(phone.str.slice(0, 3) + "-" + phone.str.slice(3, 4) + "-" + phone.str.slice(7))
        .when(pl.col("r_phone") < 0.55)
        .then("+86" + phone)
        .when(pl.col("r_phone") < 0.75)
        .then(phone.str.slice(0, 3) + " " + phone.str.slice(3, 4) + " " + phone.str.slice(7))
        .otherwise(phone),
    )


def _natural_person_penalties(frame: pl.DataFrame, draw: _Draw, end: date, days: int) -> pl.DataFrame:
    """Penalties against natural persons (自然人) as a 双公示 file holds them: the person's name, the
    ID number in the code column (departments reuse it), and personal data in the facts."""
    rng = draw("violations-natural-persons")
    penalties = frame.filter(pl.col("数据类别") == "行政处罚")
    persons = max(1, int(penalties.height * NATURAL_PERSON_SHARE))
    people = _as_written(rng, _people(rng, persons))
    repeat = np.where(rng.random(persons) < 0.2, 2, 1)  # some people are penalised twice
    rows = people[np.repeat(np.arange(persons), repeat)]
    n = rows.height
    template = penalties[rng.integers(0, penalties.height, n)]
    updated = _updated_at(rng, n, end, days, None)
    name_with_id = rng.random(n) < 0.1  # the ID typed into the name field as well
    year = template["处罚决定日期"].str.slice(0, 4)
    return template.with_columns(
        行政处罚决定书文号=template["处罚机关"].str.slice(0, 1)
        + "市监处罚〔"
        + year
        + "〕"
        + _ids("P", n, 8)
        + "号",
        行政相对人类别=pl.lit("自然人"),
        行政相对人名称=pl.when(pl.Series(name_with_id))
        .then(rows["name"] + "（身份证号" + rows["id_written"] + "）")
        .otherwise(rows["name"]),
        统一社会信用代码=rows["id_written"],
        法定代表人=pl.lit(None, dtype=pl.String),
        违法事实="经查，当事人"
        + rows["name"]
        + "（身份证号"
        + rows["id_written"]
        + "，联系电话"
        + rows["phone_written"]
        + "）存在违法行为",
        更新时间=updated,
        entity_key="P" + pl.Series(np.repeat(np.arange(persons), repeat)).cast(pl.String).str.zfill(8),
    )


def _leak_owner_contacts(frame: pl.DataFrame, draw: _Draw, firms: pl.DataFrame) -> pl.DataFrame:
    """Departments write an individual business owner's phone or ID into the subject's name."""
    rng = draw("violations-leaked-contacts")
    owners = frame.select("entity_key").join(
        firms.select("entity_key", "kind", "legal_rep"), on="entity_key", how="left", maintain_order="left"
    )
    n = frame.height
    people = _as_written(rng, _people(rng, n))
    leak = (owners["kind"] == 1).to_numpy() & (rng.random(n) < LEAKED_CONTACT_SHARE)
    kind = rng.random(n)
    contact = (
        pl.when(pl.Series(kind < 0.6))
        .then("电话" + people["phone_written"])
        .when(pl.Series(kind < 0.8))
        .then("身份证" + people["id_written"])
        .otherwise("身份证" + people["old_id"])
    )
    return frame.with_columns(
        行政相对人名称=pl.when(pl.Series(leak))
        .then(pl.col("行政相对人名称") + "（经营者" + owners["legal_rep"] + " " + contact + "）")
        .otherwise(pl.col("行政相对人名称"))
    )


# --------------------------------------------------------------------------- bad records
class Fault:
    """One kind of bad record a department sends: where it can happen and what it changes.

    Every kind is one the source's standardised suite (expectations/) quarantines with a reason;
    tests/test_bad_input.py has the same kinds injected by hand."""

    def __init__(self, kind: str, changes: dict[str, pl.Expr], applies: pl.Expr | None = None) -> None:
        self.kind, self.changes, self.applies = kind, changes, applies


def _faults(end: date) -> dict[str, tuple[Fault, ...]]:
    """The kinds of bad record per source (``end``: the last day of data, for dates after it)."""
    future = (end + timedelta(days=400)).isoformat()
    fined = pl.col("处罚类别").is_in(["罚款", "没收违法所得"]) & pl.col("罚款金额（万元）").is_not_null()
    date_typo = pl.col("处罚决定日期").str.slice(0, 5) + "13" + pl.col("处罚决定日期").str.slice(7)
    return {
        "lending": (
            Fault("negative loan amount", {"amount": -pl.col("amount")}),
            Fault(
                "five-class inconsistent with overdue days",
                {"five_class": pl.lit("正常"), "overdue_days": pl.lit(200, dtype=pl.Int64)},
            ),
            Fault("unknown five-class value", {"five_class": pl.lit("未分类")}),
            Fault("start date in the future", {"start_date": pl.lit(future)}),
        ),
        "tax": (
            Fault("empty name", {"taxpayer_name": pl.lit("  ")}),
            Fault(
                "rating score out of range",
                {"rating_score": pl.col("rating_score") * 10},
                pl.col("rating_score") > 10,
            ),
        ),
        "contract": (
            Fault("unknown performance status", {"履行情况": pl.lit("执行中")}),
            Fault("markup in a name", {"被执行人名称": "<b>" + pl.col("被执行人名称") + "</b>"}),
        ),
        "product_quality": (
            Fault("unknown spot-check result", {"result": pl.lit("基本合格")}),
            Fault(
                "invalid characters in a code",
                {"enterprise_code": pl.col("enterprise_code").str.slice(0, 17) + "*"},
                pl.col("enterprise_code").is_not_null(),
            ),
        ),
        "social_insurance": (
            Fault("negative headcount", {"insured_pension": -pl.col("insured_pension")}),
            Fault("missing update time", {"updated_at": pl.lit(None, dtype=pl.String)}),
        ),
        "violations": (
            Fault("fine without an amount", {"罚款金额（万元）": pl.lit(None, dtype=pl.String)}, fined),
            Fault("warning with a fine", {"处罚类别": pl.lit("警告")}, fined),
            Fault("unknown penalty category", {"处罚类别": pl.lit("罚金")}, pl.col("数据类别") == "行政处罚"),
            Fault("unreadable decision date", {"处罚决定日期": date_typo}),
        ),
    }


def fault_share(faults: str | float) -> float:
    """``--faults``: a level of ``FAULT_LEVELS`` or a share of records between 0 and 1."""
    if isinstance(faults, str) and faults in FAULT_LEVELS:
        return FAULT_LEVELS[faults]
    try:
        share = float(faults)
    except ValueError:
        raise ValueError(
            f"faults must be one of {', '.join(FAULT_LEVELS)} or a share between 0 and 1, not {faults!r}"
        ) from None
    if not 0 <= share <= 1:
        raise ValueError(f"a share of faulty records must be between 0 and 1, not {share}")
    return share


def spoil(
    frame: pl.DataFrame, source: str, share: float, draw: _Draw, end: date
) -> tuple[pl.DataFrame, dict]:
    """About ``share`` of ``frame``'s records with one fault each (drawn by seed from the source's own
    stream); returns the frame and how many records got each kind of fault."""
    kinds = _faults(end)[source]
    if share <= 0 or frame.height == 0:
        return frame, {}
    rng = draw(f"faults-{source}")
    chosen = np.where(rng.random(frame.height) < share, rng.integers(0, len(kinds), frame.height), -1)
    frame = frame.with_columns(_fault=pl.Series(chosen, dtype=pl.Int64))
    hit = [
        (pl.col("_fault") == i) & (f.applies if f.applies is not None else pl.lit(True))
        for i, f in enumerate(kinds)
    ]
    frame = frame.with_columns(
        [pl.when(h).then(i).otherwise(None).alias(f"_hit{i}") for i, h in enumerate(hit)]
    )
    changed: dict[str, pl.Expr] = {}
    for i, fault in enumerate(kinds):
        for column, value in fault.changes.items():
            base = changed.get(column, pl.col(column))
            changed[column] = pl.when(pl.col(f"_hit{i}").is_not_null()).then(value).otherwise(base)
    counts = {f.kind: int(frame[f"_hit{i}"].is_not_null().sum()) for i, f in enumerate(kinds)}
    dtypes = frame.schema
    frame = frame.with_columns([e.cast(dtypes[c]).alias(c) for c, e in changed.items()])
    return frame.drop("_fault", *(f"_hit{i}" for i in range(len(kinds)))), {
        k: n for k, n in counts.items() if n
    }


#: the odd bad delivery (with faults on and data over two days or more): on the last day the court
#: system's export writes the unit into part of the unperformed amounts ("12345.00元"). A nightly
#: run of that day sees it in more of its batch than the raw suite's ``mostly`` tolerates and holds
#: the batch back (type drift); a full run over every day sees it in few enough rows to quarantine
#: them one by one ("value could not be read").
BAD_DELIVERY = ("contract", "未履行金额", "更新时间")


def _tolerated_share(source: str, column: str) -> float:
    """The share of a batch's values the raw suite lets fail for ``column`` (1 - its ``mostly``)."""
    from pipelines.quality.suites import read_suite  # the suite the pipeline will run (and where it looks)

    suite = read_suite(f"{source}.raw")
    mostly = [
        e["kwargs"]["mostly"]
        for e in suite["expectations"]
        if e["kwargs"].get("column") == column and "mostly" in e["kwargs"]
    ]
    return 1 - min(mostly)


def bad_delivery(frame: pl.DataFrame, draw: _Draw, end: date) -> tuple[pl.DataFrame, int]:
    """The last day's records of ``BAD_DELIVERY``'s source with its column spoiled in 1.5 times the
    share the raw suite tolerates: held back by that night's run, yet (with two days or more of
    data) under the tolerance of a full run. Returns the frame and the records spoiled."""
    source, column, stamp = BAD_DELIVERY
    last_day = np.flatnonzero(frame[stamp].str.starts_with(end.isoformat()).fill_null(False).to_numpy())
    # an exact count, not a coin per row: small batches must land on the same side of the tolerance
    count = min(last_day.size, math.ceil(1.5 * _tolerated_share(source, column) * last_day.size))
    rows = draw(f"bad-delivery-{source}").choice(last_day, size=count, replace=False)
    spoilt = np.zeros(frame.height, dtype=bool)
    spoilt[rows] = True
    unit = pl.when(pl.Series(spoilt)).then(pl.col(column) + "元").otherwise(pl.col(column))
    return frame.with_columns(unit.alias(column)), count


GENERATORS: dict[str, tuple[Callable[[World], pl.DataFrame], str]] = {
    "lending": (gen_lending, "loan_id"),
    "tax": (gen_tax, "record_id"),
    "contract": (gen_contract, "记录编号"),
    "product_quality": (gen_product_quality, "report_no"),
    "social_insurance": (gen_social_insurance, "record_id"),
    "violations": (gen_violations, "行政处罚决定书文号"),
}


# --------------------------------------------------------------------------- writers
def _sql_type(dtype: pl.DataType) -> sa.types.TypeEngine:
    if dtype.is_integer():
        return sa.Integer()
    if dtype.is_float():
        return sa.Float()
    return sa.Text()


def write_sql_table(frame: pl.DataFrame, url: str, table_name: str, key: str) -> None:
    """Create the table through SQLAlchemy, then bulk-load it (executemany on SQLite, COPY on PostgreSQL)."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        table = sa.Table(
            table_name,
            metadata,
            *[
                sa.Column(name, _sql_type(dtype), primary_key=(name == key), nullable=(name != key))
                for name, dtype in frame.schema.items()
            ],
        )
        with engine.begin() as connection:
            table.drop(connection, checkfirst=True)
            table.create(connection)
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if engine.dialect.name == "postgresql":
                buffer = io.StringIO()
                frame.write_csv(buffer, include_header=False, null_value="\\N", quote_style="necessary")
                buffer.seek(0)
                cursor.copy_expert(
                    f"COPY {table_name} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')",
                    buffer,
                )
            else:
                placeholders = ", ".join(["?"] * frame.width)
                for chunk in frame.iter_slices(200_000):
                    cursor.executemany(f"INSERT INTO {table_name} VALUES ({placeholders})", chunk.rows())
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def _write_file(frame: pl.DataFrame, target: Path, fmt: str, encoding: str) -> None:
    def write(tmp: Path) -> None:
        if fmt == "jsonl":
            frame.write_ndjson(tmp)
            return
        text = frame.write_csv(quote_style="necessary")
        data = text.encode(encoding)
        tmp.write_bytes(data)

    _atomic_write(target, write)


def generate(
    out_dir: Path,
    entities: int,
    seed: int,
    days: int = 1,
    end_date: date | None = None,
    db_urls: Mapping[str, str] | None = None,
    progress: bool = False,
    faults: str | float = V.DEFAULT_FAULTS,
    noise: str | Noise = "default",
) -> dict[str, Any]:
    """Write the six source systems, the truth and a manifest into ``out_dir``; return the manifest.

    ``faults`` (a level of ``FAULT_LEVELS`` or a share) spoils that share of every source's records
    the way departments do, and with ``days`` > 1 the last day's court delivery is a bad one
    (``BAD_DELIVERY``); the manifest counts them per source and kind. ``"none"`` is clean.
    ``noise`` (a name of ``NOISE_SETTINGS`` or a ``Noise``) sets how hard the records are to link."""
    if entities < 1 or days < 1:
        raise ValueError("entities and days must be at least 1")
    share = fault_share(faults)
    setting = V.noise_setting(noise) if isinstance(noise, str) else noise
    out_dir = Path(out_dir)
    end = end_date or (date.today() - timedelta(days=1))
    draw = _Draw(seed)
    db_urls = dict(db_urls or {})
    steps = tqdm(total=2 + len(GENERATORS), desc="generate", unit="step", disable=not progress)
    firms = build_firms(entities, draw, end, days, setting)
    risk = _firm_weights(firms, draw("risk"))
    vocab = sorted(
        {*V.TRADE_CHARS, *(i[0] for i in V.INDUSTRIES), *V.LEGAL_FORMS}
        | set(firms["region"].unique())
        | set(firms["trade_name"].unique())
        | set(firms["name"].unique())
    )
    world = World(firms, draw, end, days, _traditional(vocab), risk, setting)
    steps.update()
    truth_parts = []
    rows: dict[str, int] = {}
    spoiled: dict[str, dict[str, int]] = {}
    for source, (make, key) in GENERATORS.items():
        steps.set_postfix_str(source)
        frame, spoiled[source] = spoil(make(world), source, share, draw, end)
        if source == BAD_DELIVERY[0] and share > 0 and days > 1:
            frame, late = bad_delivery(frame, draw, end)
            spoiled[source][f"{BAD_DELIVERY[1]} written with its unit (the {end} delivery)"] = late
        truth_parts.append(
            frame.select(pl.lit(source).alias("source"), pl.col(key).alias("source_record_id"), "entity_key")
        )
        frame = frame.drop("entity_key")
        rows[source] = frame.height
        if source in SQL_SOURCES:
            path, table, table_key = SQL_SOURCES[source]
            url = db_urls.get(source)
            if url is None:
                db_path = out_dir / path
                db_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = db_path.with_name(f".{db_path.name}.tmp")
                tmp.unlink(missing_ok=True)
                write_sql_table(frame, f"sqlite:///{tmp}", table, table_key)
                os.replace(tmp, db_path)
            else:
                write_sql_table(frame, url, table, table_key)
        elif source == "contract":
            _write_file(frame, out_dir / "contract" / "enforcement.csv", "csv", "gbk")
        elif source == "product_quality":
            _write_file(frame, out_dir / "product_quality" / "spot_checks.jsonl", "jsonl", "utf-8")
        else:
            _write_file(frame, out_dir / "violations" / "penalties.csv", "csv", "utf-8-sig")
        steps.update()
    truth_dir = out_dir / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    truth = pl.concat(truth_parts).sort("source", "source_record_id")
    _atomic_write(truth_dir / "records.parquet", lambda p: truth.write_parquet(p))
    firm_columns = [
        "entity_key",
        "uscc",
        "org_code",
        "reg_no",
        "name",
        "former_name",
        "renamed_on",
        "division",
        "city",
        "trade_name",
        "industry",
        "legal_form",
        "kind",
        "branch_of",
        "legal_rep",
        "address",
        "phone",
        "founded",
    ]
    universe = (
        firms.select(firm_columns)
        .with_columns(
            entity_type=pl.col("kind").replace_strict(
                {0: "enterprise", 1: "individual_business", 2: "cooperative"}, return_dtype=pl.String
            )
        )
        .drop("kind")
    )
    _atomic_write(truth_dir / "firms.parquet", lambda p: universe.write_parquet(p))
    steps.update()
    steps.close()
    manifest = {
        "entities": firms.height,
        "requested_entities": entities,
        "seed": seed,
        "days": days,
        "end_date": end.isoformat(),
        "rows": rows,
        "records": sum(rows.values()),
        "fault_share": share,
        "faults": spoiled,
        "noise": {"setting": V.setting_name(noise), **asdict(setting)},
        "db_urls": {
            k: sa.engine.make_url(v).render_as_string(hide_password=True) for k, v in db_urls.items()
        },
        "generated_by": "credit_synthetic",
    }
    _atomic_write(
        out_dir / "manifest.json",
        lambda p: p.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True), "utf-8"),
    )
    return manifest


__all__ = [
    "FAULT_LEVELS",
    "NOISE_SETTINGS",
    "Noise",
    "fault_share",
    "generate",
    "build_firms",
    "World",
    "noise_setting",
    "spoil",
    "write_sql_table",
]
