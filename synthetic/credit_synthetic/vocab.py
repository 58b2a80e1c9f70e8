"""Word lists and settings for the synthetic source systems (real division codes, realistic name parts,
fault levels, noise settings). Light to import: the command line reads it to build its help."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

# (division code, province short, prefecture short, county short). The system serves one city
# (宁波): most firms are registered in its districts; the rest come from elsewhere in China.
#: share of each source's records a department gets wrong (``credit generate --faults``): real
#: deliveries are never clean, so by default a few records in a thousand carry a fault that
#: validation quarantines (credit_synthetic.generate.spoil)
FAULT_LEVELS: dict[str, float] = {"none": 0.0, "realistic": 0.002, "heavy": 0.02}
DEFAULT_FAULTS = "realistic"
HOME_CITY = "宁波"
HOME_SHARE = 0.8
DIVISIONS: tuple[tuple[str, str, str, str], ...] = (
    ("330203", "浙江", "宁波", "海曙"),
    ("330205", "浙江", "宁波", "江北"),
    ("330206", "浙江", "宁波", "北仑"),
    ("330211", "浙江", "宁波", "镇海"),
    ("330212", "浙江", "宁波", "鄞州"),
    ("330213", "浙江", "宁波", "奉化"),
    ("330225", "浙江", "宁波", "象山"),
    ("330226", "浙江", "宁波", "宁海"),
    ("330281", "浙江", "宁波", "余姚"),
    ("330282", "浙江", "宁波", "慈溪"),
    ("330106", "浙江", "杭州", "西湖"),
    ("330108", "浙江", "杭州", "滨江"),
    ("110108", "北京", "北京", "海淀"),
    ("110105", "北京", "北京", "朝阳"),
    ("310115", "上海", "上海", "浦东"),
    ("310104", "上海", "上海", "徐汇"),
    ("440305", "广东", "深圳", "南山"),
    ("440304", "广东", "深圳", "福田"),
    ("440106", "广东", "广州", "天河"),
    ("320106", "江苏", "南京", "鼓楼"),
    ("320506", "江苏", "苏州", "吴中"),
    ("320621", "江苏", "南通", "海安"),
    ("370202", "山东", "青岛", "市南"),
    ("410185", "河南", "郑州", "登封"),
    ("410724", "河南", "新乡", "获嘉"),
    ("420106", "湖北", "武汉", "武昌"),
    ("510107", "四川", "成都", "武侯"),
    ("350503", "福建", "泉州", "丰泽"),
    ("350203", "福建", "厦门", "思明"),
    ("230502", "黑龙江", "双鸭山", "尖山"),
    ("610113", "陕西", "西安", "雁塔"),
    ("500103", "重庆", "重庆", "渝中"),
)

TRADE_CHARS = (
    "华兴星恒达通宏盛鑫源泰丰瑞祥昌隆德信诚安康富嘉汇金银宝利鼎博远创新科联合众海天宇"
    "东方南北中正明阳光辉晨晟弘毅腾飞龙凤锦绣佳美润泽浩然永久长青松柏云峰川江河湖山林"
)

# (industry words, is a manufacturer)
INDUSTRIES: tuple[tuple[str, bool], ...] = (
    ("电子科技", True),
    ("机械制造", True),
    ("食品", True),
    ("纺织", True),
    ("化工", True),
    ("塑料制品", True),
    ("五金", True),
    ("家具", True),
    ("服装", True),
    ("建材", True),
    ("汽车配件", True),
    ("医疗器械", True),
    ("包装", True),
    ("电器", True),
    ("新材料", True),
    ("生物科技", True),
    ("印刷", True),
    ("模具", True),
    ("照明", True),
    ("陶瓷", True),
    ("建筑工程", False),
    ("贸易", False),
    ("物流", False),
    ("信息技术", False),
    ("房地产开发", False),
    ("餐饮管理", False),
    ("投资管理", False),
    ("物业管理", False),
    ("广告", False),
    ("文化传媒", False),
    ("环保科技", False),
    ("教育咨询", False),
    ("旅游", False),
    ("人力资源", False),
    ("网络科技", False),
    ("供应链管理", False),
    ("装饰工程", False),
    ("农业开发", False),
    ("能源科技", False),
    ("商贸", False),
)

LEGAL_FORMS = ("有限公司", "有限责任公司", "股份有限公司")
LEGAL_FORM_WEIGHTS = (0.72, 0.18, 0.10)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国志红玉梅玲飞鹏辉斌宇浩凯健俊帆帅旭宁博文雪琳晨子轩晓东海波丹萍成林"

SHOP_TYPES = ("五金店", "便利店", "小吃店", "理发店", "服装店", "建材经营部", "汽车修理部", "日用品商行")
COOP_WORDS = ("果蔬", "茶叶", "水产", "蔬菜", "粮食", "花卉")
ROADS = ("中山路", "解放路", "人民路", "建设路", "和平路", "新华路", "文化路", "长江路", "黄河路", "科技路")

LENDERS = (
    "中国工商银行",
    "中国农业银行",
    "中国银行",
    "中国建设银行",
    "交通银行",
    "招商银行",
    "浙商银行",
    "宁波银行",
    "兴业银行",
    "中信银行",
)
LOAN_TYPES = ("流动资金贷款", "固定资产贷款", "贸易融资", "票据贴现", "项目贷款")
GUARANTEE_TYPES = ("信用", "抵押", "质押", "保证")
TAX_TYPES = ("增值税", "企业所得税", "个人所得税", "城市维护建设税", "印花税")
TAX_CASES = ("偷税", "逃避追缴欠税", "骗取出口退税", "虚开增值税专用发票")
COURTS = ("人民法院",)
PRODUCTS = (
    "电线电缆",
    "儿童玩具",
    "电动自行车",
    "食品接触材料",
    "化肥",
    "家用电器",
    "建筑用钢筋",
    "服装",
    "灯具",
    "塑料管材",
)
FAILED_ITEMS = (
    "标志和说明",
    "绝缘电阻",
    "甲醛释放量",
    "抗拉强度",
    "重金属含量",
    "能效等级",
    "耐压试验",
    "色牢度",
    "微生物指标",
    "尺寸偏差",
)
TESTING_BODIES = (
    "国家质量监督检验中心",
    "省产品质量监督检验研究院",
    "市产品质量检验所",
    "县质量技术监督检测站",
)
PLAN_LEVELS = ("国家", "省", "市", "县")
PENALTY_CATEGORIES = ("警告", "通报批评", "罚款", "没收违法所得", "吊销许可证件", "责令停产停业", "责令关闭")
PENALTY_WEIGHTS = (0.25, 0.05, 0.5, 0.1, 0.03, 0.05, 0.02)
VIOLATION_TYPES = (
    "虚假宣传",
    "无照经营",
    "未按规定公示年报",
    "销售不合格产品",
    "违反食品安全法",
    "商标侵权",
    "价格违法",
    "安全生产违法",
    "环境污染",
    "不正当竞争",
)
LEGAL_BASES = (
    "《中华人民共和国反不正当竞争法》第二十条",
    "《中华人民共和国产品质量法》第四十九条",
    "《中华人民共和国食品安全法》第一百二十四条",
    "《中华人民共和国广告法》第五十五条",
    "《中华人民共和国安全生产法》第九十九条",
)


#: how a department writes a company's name: upper bounds of the variants' shares of records (see
#: ``_names``), and which variants leave the city out (the share ``Noise.missing_regions`` moves)
NAME_VARIANT_BOUNDS = (0.45, 0.55, 0.63, 0.71, 0.75, 0.77, 0.83, 0.90, 0.93, 1.0)
REGIONLESS_NAME_VARIANTS = (1, 7)
#: how a department holds a code: upper bounds of USCC, organization code, registration number,
#: corrupted USCC and no code at all (the last share is ``Noise.missing_codes``)
CODE_VARIANT_BOUNDS = (0.78, 0.83, 0.87, 0.93, 1.0)


def share_of(bounds: tuple[float, ...], marked: tuple[int, ...]) -> float:
    """The total share of the ``marked`` bands of a mixture given by its upper ``bounds``."""
    widths = [upper - lower for lower, upper in zip((0.0, *bounds), bounds, strict=False)]
    return round(sum(widths[i] for i in marked), 9)


def _knob(default: float | bool, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Noise:
    """How hard the records are to link: the hard negatives in the firm universe and how departments
    write names and codes. The defaults are the generator's long-standing behaviour (same seed,
    same bytes as before the settings existed); ``NOISE_SETTINGS`` names the presets."""

    cross_city_reuse: float = _knob(
        0.02,
        "share of firms drawn as namesakes (trade name and industry) of a company in another division "
        "(those that land in its own city are dropped: the registry refuses the duplicate)",
    )
    regionless_namesakes: float = _knob(
        0.0,
        "share of those namesakes registered without a region in the name (the city is then "
        "stated only by the address and the code's division)",
    )
    siblings: float = _knob(
        0.02, "share of firms whose trade name differs by one character from a firm's in the same city"
    )
    branches: float = _knob(0.02, "share of firms that are branches (分公司) of another firm")
    missing_regions: float = _knob(
        share_of(NAME_VARIANT_BOUNDS, REGIONLESS_NAME_VARIANTS),
        "share of a company's records whose name is written without the city",
    )
    missing_codes: float = _knob(
        share_of(CODE_VARIANT_BOUNDS, (len(CODE_VARIANT_BOUNDS) - 1,)),
        "share of records with no code at all",
    )
    copied_details: bool = _knob(
        True,
        "namesakes and siblings keep the legal representative, address and phone of the firm "
        "they were made from (false: their own, the address in their own city)",
    )

    def __post_init__(self) -> None:
        for knob in fields(self):
            value = getattr(self, knob.name)
            if knob.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"noise knob {knob.name} must be true or false, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"noise knob {knob.name} must be a share between 0 and 1, not {value!r}")
        if self.cross_city_reuse + self.siblings + self.branches > 0.5:
            raise ValueError(
                "noise: cross_city_reuse + siblings + branches must leave at least half of the firms "
                f"original, got {self.cross_city_reuse + self.siblings + self.branches:g}"
            )


DEFAULT_NOISE = Noise()
#: named noise settings (``credit generate --noise``); knobs can be overridden one by one
NOISE_SETTINGS: dict[str, Noise] = {
    "default": DEFAULT_NOISE,
    "hard": Noise(cross_city_reuse=0.1, regionless_namesakes=0.3, siblings=0.08, copied_details=False),
    "sparse": Noise(missing_regions=0.5, missing_codes=0.4, copied_details=False),
    "hard-sparse": Noise(
        cross_city_reuse=0.1,
        regionless_namesakes=0.3,
        siblings=0.08,
        missing_regions=0.5,
        missing_codes=0.4,
        copied_details=False,
    ),
}


def noise_setting(name: str = "default", overrides: Mapping[str, str | float | bool] | None = None) -> Noise:
    """A named setting of ``NOISE_SETTINGS`` with knobs overridden (values may be written as text:
    ``{"missing_codes": "0.4", "copied_details": "false"}``)."""
    if name not in NOISE_SETTINGS:
        raise ValueError(f"unknown noise setting {name!r}: choose one of {', '.join(NOISE_SETTINGS)}")
    kinds = {knob.name: knob.type for knob in fields(Noise)}
    changes: dict[str, float | bool] = {}
    for knob, value in (overrides or {}).items():
        if knob not in kinds:
            raise ValueError(f"unknown noise knob {knob!r}: the knobs are {', '.join(kinds)}")
        if not isinstance(value, str):
            changes[knob] = value
        elif kinds[knob] == "bool":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"noise knob {knob} must be true or false, not {value!r}")
            changes[knob] = value.lower() == "true"
        else:
            try:
                changes[knob] = float(value)
            except ValueError:
                raise ValueError(
                    f"noise knob {knob} must be a share between 0 and 1, not {value!r}"
                ) from None
    return replace(NOISE_SETTINGS[name], **changes)


def noise_knobs() -> dict[str, str]:
    """Each knob's meaning (for ``--help``), from the dataclass: defined once."""
    return {knob.name: knob.metadata["help"] for knob in fields(Noise)}


def setting_name(noise: str | Noise) -> str:
    """The preset's name for the manifest ("custom" for knobs that match none)."""
    if isinstance(noise, str):
        return noise
    return next((name for name, preset in NOISE_SETTINGS.items() if preset == noise), "custom")
