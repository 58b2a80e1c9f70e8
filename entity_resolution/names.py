"""Chinese enterprise-name normalisation, vectorised over unique names.

A full name is [region][trade name][industry][legal form]; departments drop or bracket the
region, swap legal forms, use full-width or traditional characters and stray spaces. The
normalised ``core`` (trade name + industry) is what two spellings of one firm share, while
``branch`` keeps a branch (分公司) apart from its head office, and ``region_codes`` lets a
region written in the name be checked against a code's division.
"""

from __future__ import annotations

import re
from functools import cache

import opencc
import polars as pl

from entity_resolution.internals.distinct import distinct_rows
from foundation.divisions import divisions, short_name

LEGAL_FORMS = (
    "股份有限公司",
    "有限责任公司",
    "集团有限公司",
    "有限公司",
    "股份公司",
    "专业合作社",
    "合作社",
    "公司",
)
BRANCH_SUFFIXES = ("分公司", "分厂", "分店", "营业部", "分所", "办事处")
_PUNCTUATION = r"[\s·.,，。、:：;；\-_—\"'“”‘’《》<>*#]"


def to_simplified(names: pl.Series) -> pl.Series:
    """Traditional -> simplified with OpenCC, converting all names in one call (one per name is 20x slower)."""
    if names.len() == 0:
        return names
    converter = opencc.OpenCC("t2s")
    joined = "\n".join(names.fill_null("").str.replace_all("\n", " ").to_list())
    return pl.Series(names.name, converter.convert(joined).split("\n"), dtype=pl.String)


@cache
def _region_tables() -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """Leading-region names (provinces, prefectures) and counties with the code prefixes they mean."""
    top: dict[str, set[str]] = {}
    county: dict[str, set[str]] = {}
    for code, division in divisions().items():
        if code.endswith("0000"):
            names, prefix, table = [division.province], code[:2], top
        elif code.endswith("00"):
            names, prefix, table = [division.prefecture], code[:4], top
        else:
            names, prefix, table = [division.county], code, county
        for name in names:
            if not name or name in ("市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"):
                continue
            for form in {name, short_name(name)}:
                if len(form) >= 2:
                    table.setdefault(form, set()).add(prefix)
    tops = pl.DataFrame({"token": list(top), "codes": [sorted(v) for v in top.values()]})
    counties = pl.DataFrame({"token": list(county), "codes": [sorted(v) for v in county.values()]})
    pattern = "^((?:" + "|".join(sorted(map(re.escape, top), key=len, reverse=True)) + ")+)"
    return tops, counties, pattern


def region_codes(token: str) -> list[str]:
    """Division code prefixes a region name can mean (宁波 -> ['3302'])."""
    tops, counties, _ = _region_tables()
    for table in (tops, counties):
        hit = table.filter(pl.col("token") == token)
        if hit.height:
            return hit["codes"][0].to_list()
    return []


def normalise_names(names: pl.Series) -> pl.DataFrame:
    """Normalise names; returns one row per input: name, core, branch, name_key, legal_form, region_codes."""
    tops, counties, pattern = _region_tables()
    # each distinct name once; "_i" (its place) keys the joins below, cheaper than the name itself
    rows, place = distinct_rows(names)
    unique = pl.DataFrame({"name": names.gather(rows)}).with_row_index("_i")
    text = to_simplified(unique["name"].str.normalize("NFKC"))
    frame = unique.with_columns(
        text=text.str.replace_all(_PUNCTUATION, "")
        .str.replace_all("[［【〔]", "(")
        .str.replace_all("[］】〕]", ")")
    )
    # Bracketed parts: a region written in brackets is a hint, not part of the name.
    frame = frame.with_columns(
        bracketed=pl.col("text")
        .str.extract_all(r"\(([^)]*)\)")
        .list.eval(pl.element().str.strip_chars("()")),
        text=pl.col("text").str.replace_all(r"\([^)]*\)", ""),
    )
    branch_re = "(" + "|".join(BRANCH_SUFFIXES) + ")$"
    legal_re = "(" + "|".join(LEGAL_FORMS) + ")"
    frame = frame.with_columns(
        is_branch=pl.col("text").str.contains(branch_re),
        # head part up to and including a legal form, then the branch part (…有限公司海曙分公司)
        head=pl.when(pl.col("text").str.contains(branch_re))
        .then(pl.col("text").str.extract(rf"^(.*?{legal_re})", 1).fill_null(pl.col("text")))
        .otherwise(pl.col("text")),
    ).with_columns(
        branch=pl.when(pl.col("is_branch"))
        .then(pl.col("text").str.slice(pl.col("head").str.len_chars()))
        .otherwise(pl.lit("")),
        legal_form=pl.col("head").str.extract(legal_re + "$", 1),
        body=pl.col("head").str.replace(legal_re + "$", ""),
    )
    # Leading region tokens: provinces and prefectures, then a county of the same prefecture.
    frame = frame.with_columns(lead=pl.col("body").str.extract(pattern, 1).fill_null(""))
    frame = (
        frame.with_columns(
            rest=pl.col("body").str.slice(pl.col("lead").str.len_chars()),
        )
        .with_columns(
            # keep at least a two-character trade name and something after it
            lead=pl.when(pl.col("rest").str.len_chars() >= 3).then(pl.col("lead")).otherwise(pl.lit("")),
        )
        .with_columns(rest=pl.col("body").str.slice(pl.col("lead").str.len_chars()))
    )
    frame = _strip_county(frame, tops, counties)
    # region codes per distinct (leading regions, bracketed parts, county codes): a few thousand,
    # not one per name
    regions = frame.select(pl.struct("lead_tokens", "bracketed", "county_codes").alias("regions"))["regions"]
    rows, region_place = distinct_rows(regions)
    frame = frame.with_columns(
        _region_codes(regions.gather(rows).struct.unnest(), tops, counties).gather(region_place)
    )
    frame = frame.with_columns(
        core=pl.col("rest"),
        name_key=pl.col("rest")
        + pl.when(pl.col("is_branch")).then("#" + pl.col("branch")).otherwise(pl.lit("")),
    )
    out = frame.sort("_i").select("core", "branch", "is_branch", "name_key", "legal_form", "region_codes")
    return out.select(pl.all().gather(place)).insert_column(0, names.alias("name"))


def _region_codes(regions: pl.DataFrame, tops: pl.DataFrame, counties: pl.DataFrame) -> pl.Series:
    """Per row of ``lead_tokens``, ``bracketed`` and ``county_codes`` lists, the sorted distinct
    division codes its region names mean (null when none): a leading region is a province or
    prefecture (西安 is also a county of 辽源), a bracketed one either, the county after a leading
    region already has its codes."""
    token_codes = pl.concat([tops, counties]).explode("codes").unique()
    regions = regions.with_row_index("_r")
    # (list.unique on a million short lists is slow in Polars 2; exploding and joining is not)
    lead = regions.select("_r", pl.col("lead_tokens").alias("token")).explode("token").drop_nulls("token")
    bracketed = regions.select("_r", pl.col("bracketed").alias("token")).explode("token").drop_nulls("token")
    exploded = (
        pl.concat(
            [
                lead.join(tops.explode("codes"), on="token", how="inner").select("_r", "codes"),
                bracketed.join(token_codes, on="token", how="inner").select("_r", "codes"),
                regions.select("_r", pl.col("county_codes").alias("codes"))
                .explode("codes")
                .drop_nulls("codes"),
            ]
        )
        .unique(["_r", "codes"])
        .group_by("_r")
        .agg(pl.col("codes").sort().alias("region_codes"))
    )
    return regions.join(exploded, on="_r", how="left", maintain_order="left")["region_codes"]


def _strip_county(frame: pl.DataFrame, tops: pl.DataFrame, counties: pl.DataFrame) -> pl.DataFrame:
    """Remove a county name right after the leading region when it lies in that region (宁波海曙)."""
    lead_codes = (
        frame.select("_i", "lead")
        .filter(pl.col("lead") != "")
        .with_columns(lead_tokens=pl.col("lead").str.extract_all(_region_tables()[2][4:-3]))
    )
    # only a name with a leading region can have a county after it, leaving a 3-character rest
    led = frame.filter(pl.col("lead") != "").select("_i", "rest", rest_length=pl.col("rest").str.len_chars())
    candidates = [
        led.filter(pl.col("rest_length") - length >= 3).select(
            "_i", "rest", token=pl.col("rest").str.slice(0, length), length=pl.lit(length)
        )
        for length in (2, 3, 4, 5)
    ]
    found = (
        pl.concat(candidates)
        .join(counties, on="token", how="inner")
        .join(lead_codes.explode("lead_tokens").join(tops, left_on="lead_tokens", right_on="token"), on="_i")
        .explode("codes")
        .explode("codes_right")
        .filter(pl.col("codes").str.starts_with(pl.col("codes_right")))
        .filter(pl.col("rest").str.len_chars() - pl.col("length") >= 3)
        .filter(pl.col("length") == pl.col("length").max().over("_i"))
        # the county's codes inside the leading region only (南山 is in 深圳 and in 鹤岗)
        .group_by("_i")
        .agg(pl.col("length").first(), pl.col("codes").unique().sort().alias("county_codes"))
    )
    frame = frame.join(lead_codes.select("_i", "lead_tokens"), on="_i", how="left").join(
        found, on="_i", how="left"
    )
    return frame.with_columns(
        rest=pl.col("rest").str.slice(pl.col("length").fill_null(0)),
        lead_tokens=pl.col("lead_tokens").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        county_codes=pl.col("county_codes").fill_null(pl.lit([], dtype=pl.List(pl.String))),
    ).drop("length")


def place_divisions(texts: pl.Series) -> pl.Series:
    """Per text (an authority: 中国银行宁波分行, 宁波海曙区人民法院, 宁波市市场监督管理局), the division
    (4 digits, 2 for a province) of the last province or prefecture it names (a county name may
    mean places in several provinces), null when it names none. The last, because a bank may carry
    a city in its own name (宁波银行杭州分行 is a branch in 杭州)."""
    tops, _, _ = _region_tables()
    # a name several divisions carried: the smallest code (重庆 is 50, not the 5102 it was before 1997)
    codes = tops.select("token", pl.col("codes").list.min().str.slice(0, 4))
    pattern = "|".join(sorted(map(re.escape, codes["token"].to_list()), key=len, reverse=True))
    rows, place = distinct_rows(texts)
    unique = pl.DataFrame({"text": to_simplified(texts.gather(rows).cast(pl.String).str.normalize("NFKC"))})
    last = unique.select(pl.col("text").str.extract_all(pattern).list.last().alias("token"))
    found = last.join(codes, on="token", how="left", maintain_order="left")["codes"]
    return found.gather(place).alias(texts.name)
