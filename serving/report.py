"""A firm's credit report (信用报告): one renderer for the firm page and the PDF.

The report is built from one role's view only (``serving.disclosure``): the profile, the records
behind it (``VersionStore.evidence``: date, amount, authority, number, status, end) and the
history, each already passed through ``View.rows``/``View.records``. Every label, unit and panel
is derived: column labels and units from config/profile_columns.toml (``foundation.dictionary``),
panels from the domains of config/disclosure.toml, grade bands and list labels from
config/grading.toml. The page shows the same HTML fragment the PDF prints, so the two never
disagree. The PDF is printed by a real engine: headless Chromium's print-to-PDF.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from html import escape
from pathlib import Path
from typing import Any

from foundation.dictionary import (
    Column,
    load_columns,
    load_domains,
    load_evidence_fields,
    load_record_types,
)
from foundation.grading import list_labels, profile_columns
from foundation.lake import atomic_path
from serving.disclosure import Domain, Policy, View, load_policy
from serving.store import HISTORY_COLUMNS, VersionStore

PAGES = Path(__file__).resolve().parent / "pages"
REPORT_CSS = PAGES / "static" / "report.css"
#: what the identity and summary panels show (the domain panels come from config/disclosure.toml)
IDENTITY_FIELDS = (
    "uscc",
    "org_code",
    "reg_no",
    "entity_type",
    "division_name",
    "industry",
    "legal_rep",
    "former_names",
)
SUMMARY_FIELDS = ("lists", "record_count", "source_count", "quality_score", "as_of")
#: a field shown inside another's cell, because it qualifies it (a rating means nothing without its year)
SHOWN_WITH = {"tax_latest_rating": "tax_latest_rating_year"}
#: the match evidence of each record (how it was linked), after its facts
MATCH_FIELDS = ("recorded_name", "recorded_code", "match_method", "match_confidence", "match_grade")
#: the colour of a record in the timeline: it deducts or vetoes today, or not
_MARK = {"veto": "#b22222", "deducts": "#c77c12", "none": "#7a8899"}
_GRADE_COLOUR = {"A": "#2a7a3f", "B": "#5b8c2a", "C": "#c77c12", "D": "#b22222"}


class ReportError(RuntimeError):
    """The PDF could not be printed (no Chromium, or it failed): says which and why."""


@dataclass(frozen=True)
class Panel:
    """One panel of the page: a title, the profile fields it shows, and the sources of its records."""

    key: str
    title: str
    title_en: str
    fields: tuple[str, ...]
    sources: tuple[str, ...] = ()


@cache
def _policy_domains(path: Path) -> tuple[Domain, ...]:
    raw = tomllib.loads(path.read_text("utf-8"))
    return tuple(
        Domain(name, tuple(spec["sources"]), tuple(spec.get("fields", ())), tuple(spec.get("lists", ())))
        for name, spec in raw.get("domains", {}).items()
    )


def panels(policy: Policy | None = None) -> tuple[Panel, ...]:
    """Identity, one panel per domain of the disclosure policy (its fields, in profile order), summary."""
    policy = policy or load_policy()
    titles = load_domains()
    out = [Panel("identity", "基本信息", "identity", IDENTITY_FIELDS)]
    columns = profile_columns()
    for domain in _policy_domains(policy.path):
        fields = tuple(c for c in columns if domain.matches(c) and c not in SHOWN_WITH.values())
        title = titles.get(domain.name)
        out.append(
            Panel(
                domain.name,
                title.label if title else domain.name,
                title.label_en if title else domain.name,
                fields,
                domain.sources,
            )
        )
    out.append(Panel("summary", "名单与数据质量", "lists and data quality", SUMMARY_FIELDS))
    return tuple(out)


@dataclass(frozen=True)
class FirmReport:
    """Everything a report shows, already as ``view`` sees it."""

    version: str
    role: str
    profile: dict[str, Any]
    records: list[dict[str, Any]]
    history: list[dict[str, Any]]
    view: View

    @classmethod
    def gather(cls, store: VersionStore, view: View, found: dict[str, Any]) -> FirmReport:
        """``found`` is the profile row as ``view`` sees it (``View.rows``)."""
        entity_id = found["entity_id"]
        records = view.records(store.evidence(entity_id), found.get("entity_type"))
        history = view.rows(store.history(entity_id), ("version", *HISTORY_COLUMNS))
        return cls(store.version, view.role, found, records, history, view)


def grade_fields() -> str:
    """The fields a match grade's letters stand for, in order: the resolution spec's comparisons."""
    from entity_resolution.spec import load_spec
    from foundation.settings import resolution_settings

    return "、".join(c.label for c in load_spec(resolution_settings()["spec"]).comparisons)


# ---------------------------------------------------------------- formatting
def value_text(value: Any, column: Column | None) -> str:
    """A value with its unit: money to the cent in 元, shares as %, counts with their measure word."""
    if value is None or value == []:
        return "—"
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, list):
        return "；".join(value_text(v, None) for v in value)
    unit = column.unit if column else None
    if column and column.ratio and isinstance(value, int | float):
        return f"{value * 100:.1f}%"
    if isinstance(value, float | Decimal):  # money is a decimal to the fen
        text = f"{value:,.2f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, date | datetime):
        text = value.strftime("%Y-%m-%d")
    else:
        text = (column.values or {}).get(value, str(value)) if column else str(value)
    return f"{text} {unit}" if unit else text


def _tag(name: str, body: str, **attributes: Any) -> str:
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{escape(str(v))}"'
        for key, v in attributes.items()
        if v is not None
    )
    return f"<{name}{attrs}>{body}</{name}>"


def _record_key(record: dict[str, Any]) -> str:
    return f"{record['source']}:{record['source_record_id']}"


def _counted(profile: dict[str, Any]) -> dict[str, list[tuple[str, str, date | None]]]:
    """record -> what it counts toward today: (kind 'veto' or 'deducts', text, until)."""
    lists = list_labels()
    out: dict[str, list[tuple[str, str, date | None]]] = {}
    for veto in profile.get("vetoes") or []:
        label = lists.get(veto["list"], (veto["list"],))[0]
        for record in veto["records"]:
            out.setdefault(record, []).append(("veto", f"列入{label}（否决）", veto["until"]))
    for deduction in profile.get("deductions") or []:
        for record in deduction["records"]:
            text = f"{deduction['rule']}（−{deduction['points']} 分，本规则合计）"
            out.setdefault(record, []).append(("deducts", text, deduction["until"]))
    return out


def _record_date(record: dict[str, Any]) -> date | None:
    """The record's date as the grading reads it: its date, else the first day of its year or month."""
    if record.get("event_date"):
        return record["event_date"]
    period = record.get("period") or ""
    if len(period) == 4 and period.isdigit():
        return date(int(period), 1, 1)
    if len(period) == 6 and period.isdigit():
        return date(int(period[:4]), int(period[4:]), 1)
    return None


def _date_text(record: dict[str, Any]) -> str:
    if record.get("event_date"):
        return record["event_date"].strftime("%Y-%m-%d")
    period = record.get("period") or ""
    if len(period) == 4:
        return f"{period} 年度"
    if len(period) == 6:
        return f"{period[:4]}-{period[4:]}"
    return "—"


# ---------------------------------------------------------------- the parts of the report
def _grade_section(report: FirmReport) -> str:
    """The grade as the arithmetic that makes it: base − each deduction = score → band, or veto → D."""
    profile, grading = report.profile, report.view.grading
    lists = list_labels(grading)
    base = int(grading.get("base_score", 1000))
    bands = sorted(grading["grades"], key=lambda g: -g["min_score"])
    grade, score = profile.get("grade"), profile.get("score")
    head = _tag("span", escape(grade or "—"), id="grade", class_=f"grade grade-{grade}")
    head += " " + _tag(
        "span", escape(f"信用分 {score} / {base}" if score is not None else "信用分 不公开"), id="score"
    )
    rows = [
        _tag("tr", _tag("td", "基础分 base score") + _tag("td", "") + _tag("td", f"{base}", class_="num"))
    ]
    deductions = sorted(profile.get("deductions") or [], key=lambda d: -d["points"])
    # what each rule or list deducts for, as config/grading.toml words it
    reasons = {r["id"]: r["reason"] for r in grading.get("rules", [])}
    reasons |= {e["id"]: f"列入{e['label']} {e['label_en']}" for e in grading.get("lists", [])}
    for deduction in deductions:
        records = "、".join(deduction["records"])
        rows.append(
            _tag(
                "tr",
                _tag(
                    "td",
                    escape(reasons.get(deduction["rule"], deduction["rule"]))
                    + _tag("div", escape(f"{deduction['rule']} · {records}"), class_="sub"),
                )
                + _tag("td", escape(f"至 {value_text(deduction['until'], None)}"))
                + _tag("td", f"−{deduction['points']}", class_="num"),
                class_="deduction",
            )
        )
    total = sum(d["points"] for d in deductions)
    arithmetic = f"{base} − {total} = {base - total}" if deductions else f"{base}"
    if base - total < 0:
        arithmetic += " → 0（不低于 0）"
    band = next((b for b in bands if score is not None and score >= b["min_score"]), None)
    explained = []
    if score is None:
        explained.append("信用分不公开 (withheld for this visitor)")
    else:
        band_text = f"{band['grade']}（≥ {band['min_score']}）" if band else "—"
        explained.append(f"{arithmetic} 分 → {band_text}")
    for veto in profile.get("vetoes") or []:
        label = lists.get(veto["list"], (veto["list"], veto["list"]))[0]
        explained.append(
            f"否决 veto：列入{label}（{'、'.join(veto['records'])}，至 {value_text(veto['until'], None)}）→ {bands[-1]['grade']}"
        )
    reasons = [*(profile.get("veto_reasons") or []), *(profile.get("grade_reasons") or [])]
    reason_items = "".join(_tag("li", escape(r)) for r in reasons) or _tag("li", "无扣分 no deductions")
    return (
        _tag("h2", "信用等级 Grade")
        + _tag("div", head, id="grade-box")
        + _tag("table", "".join(rows), id="arithmetic")
        + "".join(_tag("p", escape(line), class_="arithmetic") for line in explained)
        + _tag("h3", "扣分与否决原因 Reasons")
        + _tag("ul", reason_items, id="reasons")
    )


def _records_table(records: list[dict[str, Any]], counted: dict[str, list], with_match: bool) -> str:
    fields = load_evidence_fields()
    types = load_record_types()
    head = (
        (["来源 source"] if with_match else [])
        + ["记录 record"]
        + [f"{f['label']}（{f['unit']}）" if f.get("unit") else f["label"] for f in fields.values()]
    )
    head.append("计入 counts toward")
    if with_match:
        head += ["登记名称", "登记代码", "匹配方式", "置信度", "匹配等级 match"]
    rows = []
    for record in records:
        cells = ([record["source"]] if with_match else []) + [record["source_record_id"]]
        for name, field in fields.items():
            value = record.get(name)
            if name == "record_type":
                cells.append(types.get(value, {}).get("label", value) if value else "—")
            elif name == "event_date":
                cells.append(_date_text(record))
            else:
                unit_free = Column(name, field["label"], field["label_en"], field["description"])
                cells.append(value_text(value, unit_free))
        toward = counted.get(_record_key(record), [])
        cells.append("；".join(f"{text} 至 {value_text(until, None)}" for _, text, until in toward) or "—")
        if with_match:
            cells += [value_text(record.get(k), None) for k in MATCH_FIELDS]
        row_class = "counts" if toward else None
        names = (["source"] if with_match else []) + ["source_record_id", *fields, "counts"]
        names += list(MATCH_FIELDS) if with_match else []
        row = "".join(_tag("td", escape(c), class_=f"f-{n}") for c, n in zip(cells, names, strict=True))
        rows.append(_tag("tr", row, class_=row_class))
    return _tag(
        "table",
        _tag("thead", _tag("tr", "".join(_tag("th", escape(h)) for h in head)))
        + _tag("tbody", "".join(rows)),
        class_="records",
    )


def _panel(panel: Panel, report: FirmReport, columns: dict[str, Column], counted: dict[str, list]) -> str:
    profile = report.profile
    withheld = panel.key in (profile.get("withheld") or [])
    items = []
    if not withheld:
        for name in panel.fields:
            if name not in profile:
                continue
            column = columns.get(name)
            label = column.label if column else name
            if name == "lists":
                labels = list_labels(report.view.grading)
                text = "；".join(labels.get(v, (v,))[0] for v in profile[name]) or "无"
            else:
                text = value_text(profile[name], column)
            qualifier = SHOWN_WITH.get(name)
            if qualifier and profile.get(qualifier) and profile.get(name):
                text += f"（{profile[qualifier]} {columns[qualifier].label if qualifier in columns else ''}）"
            title = f"{column.label_en}: {column.description}" if column else None
            items.append(
                _tag("dt", escape(label), title=title) + _tag("dd", escape(text), class_=f"field-{name}")
            )
    if not items:
        items.append(_tag("dt", "—") + _tag("dd", "不公开 not public" if withheld else "无 none"))
    body = _tag("h3", escape(f"{panel.title} {panel.title_en}")) + _tag("dl", "".join(items))
    records = [r for r in report.records if r["source"] in panel.sources]
    if records and not withheld:
        body += _records_table(records, counted, with_match=False)
    return _tag("section", body, class_="panel", data_domain=panel.key)


def timeline_svg(report: FirmReport) -> str:
    """The firm's records (one lane per domain) and its grade in every kept version, on one time axis."""
    lanes = [p for p in panels() if p.sources and p.key not in (report.profile.get("withheld") or [])]
    counted = _counted(report.profile)
    dated = [(r, _record_date(r)) for r in report.records]
    dated = [(r, d) for r, d in dated if d is not None]
    versions = [v for v in report.history if v.get("as_of")]
    days = [d for _, d in dated] + [v["as_of"] for v in versions]
    if not days:
        return _tag("p", "无记录 no dated records")
    start, end = min(days), max(days)
    if start == end:
        start -= timedelta(days=30)
    width, left, right, lane_height = 760, 110, 20, 22
    height = 40 + lane_height * (len(lanes) + 1) + 24

    def x(day: date) -> float:
        return round(left + (day - start).days / (end - start).days * (width - left - right), 1)

    parts = []
    for index, lane in enumerate(["等级 grade", *(f"{p.title}" for p in lanes)]):
        y = 30 + lane_height * index
        parts.append(_tag("text", escape(lane), x=4, y=y + 4))
        parts.append(_tag("line", "", x1=left, x2=width - right, y1=y, y2=y, stroke="#ddd"))
    for version in versions:
        grade = version.get("grade") or "?"
        cx = x(version["as_of"])
        title = _tag("title", escape(f"{version['version']}: {grade} {version.get('score')}"))
        parts.append(
            _tag(
                "circle",
                title,
                cx=cx,
                cy=30,
                r=7,
                fill=_GRADE_COLOUR.get(grade, "#888"),
                class_="history-point",
            )
        )
        parts.append(
            _tag("text", escape(grade), x=cx, y=34, fill="#fff", text_anchor="middle", class_="grade-mark")
        )
    for index, lane in enumerate(lanes, start=1):
        y = 30 + lane_height * index
        for record, day in dated:
            if record["source"] not in lane.sources:
                continue
            kinds = {kind for kind, _, _ in counted.get(_record_key(record), [])}
            kind = "veto" if "veto" in kinds else "deducts" if kinds else "none"
            title = _tag("title", escape(f"{_record_key(record)} {_date_text(record)}"))
            parts.append(
                _tag(
                    "rect",
                    title,
                    x=x(day) - 3,
                    y=y - 6,
                    width=6,
                    height=12,
                    fill=_MARK[kind],
                    class_="record-mark",
                )
            )
    axis_y = height - 14
    # the first and last day as year-month, aligned inwards so that neither is cut at the edge; a
    # year between them only where it does not run into them
    parts.append(_tag("text", start.strftime("%Y-%m"), x=x(start), y=axis_y, text_anchor="start"))
    parts.append(_tag("text", end.strftime("%Y-%m"), x=x(end), y=axis_y, text_anchor="end"))
    for year in range(start.year + 1, end.year + 1):
        tick = x(date(year, 1, 1))
        if tick - x(start) > 70 and x(end) - tick > 70:
            parts.append(_tag("text", str(year), x=tick, y=axis_y, text_anchor="middle"))
    return _tag(
        "svg",
        "".join(parts),
        xmlns="http://www.w3.org/2000/svg",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
        aria_label="timeline of records and grades",
    )


#: what each timeline colour means
_MARK_LABELS = {"veto": "否决 veto", "deducts": "扣分 deducts", "none": "其他记录 other records"}


def _legend() -> str:
    """The timeline's key, drawn with the colours the timeline uses."""
    parts, x = [], 0
    for kind, colour in _MARK.items():
        parts.append(_tag("rect", "", x=x, y=3, width=6, height=12, fill=colour))
        parts.append(_tag("text", escape(_MARK_LABELS[kind]), x=x + 10, y=14))
        x += 170
    parts.append(_tag("circle", "", cx=x + 6, cy=9, r=6, fill=_GRADE_COLOUR["A"]))
    parts.append(_tag("text", "各版本等级 grade per version", x=x + 16, y=14))
    return _tag(
        "svg", "".join(parts), xmlns="http://www.w3.org/2000/svg", width=x + 200, height=18, class_="legend"
    )


def fragment(report: FirmReport) -> str:
    """The report's body: what the firm page shows and the PDF prints."""
    profile = report.profile
    columns = load_columns()
    counted = _counted(profile)
    identity = f"{profile.get('uscc') or profile['entity_id']} · {report.version}"
    who = "监管版 regulator's view" if report.role == "regulator" else "公开版 public view"
    out = [
        _tag("h1", escape(profile["name"]), id="name"),
        _tag(
            "p",
            escape(f"{identity} · {who} · 数据日期 as of {value_text(profile.get('as_of'), None)}"),
            class_="meta",
        ),
        _grade_section(report),
        _tag("h2", "分项信息 Panels"),
        _tag(
            "div",
            "".join(_panel(p, report, columns, counted) for p in panels()),
            id="panels",
            class_="panels",
        ),
        _tag("h2", "时间线 Timeline"),
        _tag("div", timeline_svg(report), id="history"),
        _legend(),
        _tag(
            "div",
            _tag("h2", "关联记录 Linked records (evidence)")
            + _records_table(report.records, counted, with_match=True)
            + _tag(
                "p",
                f"匹配等级 match grade: {grade_fields()} — A 相同 same, B 相似 similar, F 不同 different, "
                "Z 缺失 missing.",
                class_="hint",
            ),
            id="evidence",
        ),
    ]
    return _tag("article", "".join(out), class_="credit-report")


def document(report: FirmReport) -> str:
    """A whole HTML document (the report's own CSS inline) for printing."""
    title = f"{report.profile['name']} 信用报告"
    css = REPORT_CSS.read_text("utf-8")
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{css}</style></head><body>"
        f'<header class="report-head">企业信用报告 Credit report · {escape(report.version)}</header>'
        f"{fragment(report)}</body></html>"
    )


# ---------------------------------------------------------------- printing
def chromium_path() -> str:
    """``CREDIT_CHROMIUM``, else the chromium on PATH (scripts/install-chromium.sh installs Debian's)."""
    found = os.environ.get("CREDIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        raise ReportError(
            "no Chromium to print the PDF: install it (scripts/install-chromium.sh) or set CREDIT_CHROMIUM"
        )
    return found


def print_pdf(html: str, timeout: float = 90) -> bytes:
    """The HTML printed to PDF by headless Chromium (A4, no browser header or footer)."""
    chromium = chromium_path()
    with tempfile.TemporaryDirectory(prefix="credit-report-") as tmp:
        page, pdf = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        page.write_text(html, "utf-8")
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-pdf-header-footer",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--print-to-pdf={pdf}",
            page.as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ReportError(f"Chromium did not print the report within {timeout:.0f} s") from exc
        if not pdf.is_file() or pdf.stat().st_size == 0:
            raise ReportError(f"Chromium printed no PDF (exit {done.returncode}): {done.stderr[-500:]}")
        return pdf.read_bytes()


def write_report(data: bytes, out: Path) -> None:
    """Write aside, then rename (``atomic_path``): a reader never sees half a report."""
    with atomic_path(out) as aside:
        aside.write_bytes(data)
