"""Name normalisation: variants of one firm share a key; hard negatives do not."""

import polars as pl
import pytest

from entity_resolution.names import normalise_names, region_codes, to_simplified


def keys(*names: str) -> list[str]:
    return normalise_names(pl.Series(names))["name_key"].to_list()


@pytest.mark.parametrize(
    "variant",
    [
        "宁波海曙华兴电子科技有限公司",
        "宁波华兴电子科技有限公司",
        "华兴电子科技（宁波）有限公司",
        "华兴电子科技(宁波)有限责任公司",
        "華興電子科技（寧波）有限公司",
        "华兴 电子科技 有限公司",
        "ＡＢ华兴电子科技有限公司".replace("ＡＢ", ""),
        "浙江省宁波市华兴电子科技股份有限公司",
        "华兴电子科技",
    ],
)
def test_variants_share_the_key(variant: str) -> None:
    assert keys(variant) == ["华兴电子科技"]


def test_branch_keeps_its_own_key() -> None:
    head, branch = keys("宁波华兴电子科技有限公司", "宁波华兴电子科技有限公司海曙分公司")
    assert head == "华兴电子科技"
    assert branch == "华兴电子科技#海曙分公司"


def test_one_character_apart_stays_apart() -> None:
    a, b = keys("宁波华兴电子科技有限公司", "宁波华星电子科技有限公司")
    assert a != b


def test_trade_name_that_is_a_county_name_is_not_stripped() -> None:
    # 华安 is a county in Fujian; without a leading city it is the trade name.
    assert keys("华安电子科技有限公司") == ["华安电子科技"]


def test_region_hints_are_division_prefixes() -> None:
    frame = normalise_names(
        pl.Series(["宁波海曙华兴电子科技有限公司", "华兴电子科技（北京）有限公司", "华兴电子科技"])
    )
    codes = frame["region_codes"].to_list()
    assert "3302" in codes[0] and "330203" in codes[0]
    assert any(c.startswith("11") for c in codes[1])
    assert codes[2] is None
    assert "3302" in region_codes("宁波")


def test_an_authority_places_a_record_at_the_last_province_or_city_it_names() -> None:
    from entity_resolution.names import place_divisions

    authorities = pl.Series(
        [
            "中国银行宁波分行",
            "宁波银行杭州分行",  # a bank named after a city: its branch is in 杭州
            "宁波海曙区人民法院",
            "新乡市市场监督管理局",  # 新乡 is also a county: the prefecture is meant
            "中国工商银行重庆分行",
            "国家质量监督检验中心",
            None,
        ]
    )
    assert place_divisions(authorities).to_list() == ["3302", "3301", "3302", "4107", "50", None, None]


def test_legal_form_and_nulls() -> None:
    frame = normalise_names(pl.Series(["华兴电子科技有限责任公司", None]))
    assert frame["legal_form"].to_list() == ["有限责任公司", None]
    assert frame.height == 2


def test_to_simplified_keeps_order_and_length() -> None:
    out = to_simplified(pl.Series(["華興", "宁波", "臺灣銀行"]))
    assert out.to_list() == ["华兴", "宁波", "台湾银行"]
