"""Administrative divisions (GB/T 2260) from python-stdnum's table, for decoding and name matching.

python-stdnum ships the division table it uses for resident ID numbers; reusing it avoids keeping
our own copy of ~3,000 names. Historical entries (``[-2010]崇文区``) keep their current-less names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import stdnum.cn.ric

_LINE = re.compile(r'^(\s*)(\d+) \w+="([^"]*)"')
_HISTORY = re.compile(r"^\[[^\]]*\]")
_SUFFIXES = ("特别行政区", "自治区", "自治州", "自治县", "新区", "省", "市", "区", "县", "盟", "旗")


@dataclass(frozen=True)
class Division:
    code: str
    province: str
    prefecture: str
    county: str

    @property
    def label(self) -> str:
        parts = [self.province]
        for part in (self.prefecture, self.county):
            if part and part not in parts and part not in ("市辖区", "县"):
                parts.append(part)
        return "".join(parts)


@cache
def divisions() -> dict[str, Division]:
    """All six-digit division codes with their province, prefecture and county names."""
    path = Path(stdnum.cn.ric.__file__).with_name("loc.dat")
    names: dict[str, str] = {}
    province = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        indent, digits, name = match.groups()
        # "A,[1983-1992]B,[1993-]C" lists renames: the last one is the current name.
        name = _HISTORY.sub("", name.split(",")[-1])
        if not indent:
            province = digits
            names[province + "0000"] = name
        else:
            names[province + digits] = name
    table: dict[str, Division] = {}
    for code, name in names.items():
        prefecture = names.get(code[:4] + "00", "") if code[4:] != "00" else name
        if code[2:] == "0000":
            prefecture = ""
        table[code] = Division(
            code, names.get(code[:2] + "0000", ""), prefecture, name if code[4:] != "00" else ""
        )
    return table


def short_name(name: str) -> str:
    """宁波市 -> 宁波, 海曙区 -> 海曙: the form firms use inside their names."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) - len(suffix) >= 2:
            return name[: -len(suffix)]
    return name


@cache
def region_names() -> tuple[str, ...]:
    """Every province, prefecture and county name in full and short form, longest first."""
    found: set[str] = set()
    for division in divisions().values():
        for name in (division.province, division.prefecture, division.county):
            if name and name not in ("市辖区", "县", "省直辖县级行政区划"):
                found.add(name)
                found.add(short_name(name))
    return tuple(sorted((n for n in found if len(n) >= 2), key=lambda n: (-len(n), n)))


def division_label(code: str | None) -> str | None:
    """Readable name of a division code, falling back to its prefecture or province."""
    if not code:
        return None
    table = divisions()
    for candidate in (code, code[:4] + "00", code[:2] + "0000"):
        if candidate in table:
            return table[candidate].label
    return None
