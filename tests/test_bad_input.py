"""A catalogue of bad input, injected into generated sources.

For every kind: the run ends (or fails) with a message naming the source and the problem, no good
row is lost, and every bad row is in quarantine with a readable reason. Row-level kinds are
injected together into one run; batch-level kinds (a whole delivery unusable) each get a run of
their own on top of a lake whose previous day was published, so the fallback can be checked.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from foundation.errors import DataQualityError, SourceUnavailableError
from pipelines import flow
from pipelines.quality import stages as quality_stages
from pipelines.sources import stages as source_stages

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

DAY = "2026-11-23"
PREVIOUS_DAY = "2026-11-22"
STAMP = "2026-11-23 12:00:00"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from credit_synthetic.generate import generate

    out = tmp_path_factory.mktemp("clean")
    # clean: the catalogue's own injections are the only bad rows, so each can be told apart
    generate(out, entities=500, seed=23, days=3, end_date=date(2026, 11, 23), faults="none")
    return out


@pytest.fixture(scope="module")
def clean_lake(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean sources run in full for DAY: the reference for 'no good row lost'."""
    lake = tmp_path_factory.mktemp("clean_lake")
    flow.run_all(str(clean), str(lake), DAY, run_id="clean")
    return lake


@pytest.fixture(scope="module")
def published_yesterday(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake where PREVIOUS_DAY was published: the last good snapshot for the fallbacks."""
    lake = tmp_path_factory.mktemp("yesterday")
    flow.run_all(str(clean), str(lake), PREVIOUS_DAY, run_id="yesterday")
    return lake


@pytest.fixture
def next_day(clean: Path, published_yesterday: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the clean sources and of yesterday's published lake, for one test to spoil."""
    src, lake = tmp_path / "sources", tmp_path / "lake"
    shutil.copytree(clean, src)
    shutil.copytree(published_yesterday, lake, symlinks=True)
    return src, lake


# ---------------------------------------------------------------- injection helpers
def _sql_row(db: Path, table: str, changes: dict[str, object], where: str = "1 = 1") -> None:
    """Insert a copy of an existing row with some values changed."""
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        row = dict(con.execute(f"SELECT * FROM {table} WHERE {where} LIMIT 1").fetchone())
        row.update(changes)
        columns = ", ".join(row)
        con.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )


def _csv_template(path: Path, encoding: str) -> dict[str, str]:
    return (
        pl.read_csv(path, encoding="utf8", infer_schema=False, n_rows=1).row(0, named=True)
        if encoding in ("utf-8", "utf-8-sig")
        else pl.read_csv(
            path.read_bytes().decode(encoding, errors="replace").encode(), infer_schema=False, n_rows=1
        ).row(0, named=True)
    )


def _csv_line(template: dict[str, str], changes: dict[str, str | None]) -> str:
    row = {**template, **changes}
    return pl.DataFrame([row], schema={k: pl.String for k in row}).write_csv(
        include_header=False, quote_style="necessary"
    )


def _rfc_line(template: dict[str, str], changes: dict[str, str | None], end: str = "\n") -> str:
    """One record as RFC 4180 writes it (fields quoted when they hold commas, quotes or line
    breaks), ended by ``end``."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(
        ["" if v is None else v for v in {**template, **changes}.values()]
    )
    return buffer.getvalue()[: -len("\r\n")] + end


def _line_of(path: Path, encoding: str, marker: str) -> int:
    """The number of the first line after the header holding ``marker``, counting every line
    break (LF, CRLF, a lone CR) as an editor does."""
    lines = re.split(r"\r\n|\r|\n", path.read_bytes().decode(encoding, errors="replace"))
    return next(number for number, text in enumerate(lines, start=1) if number > 1 and marker in text)


def _append(path: Path, text: str | bytes, encoding: str) -> None:
    data = text if isinstance(text, bytes) else text.encode(encoding.replace("-sig", ""))
    with path.open("ab") as handle:
        handle.write(data)


# ---------------------------------------------------------------- row-level kinds
#: (kind, source, record id or line marker, words the quarantine reason must contain)
ROW_KINDS: list[tuple[str, str, str, str]] = [
    ("negative amount", "lending", "BAD-NEG", "amount outside its range [0, "),
    ("text in a numeric column", "lending", "BAD-TYPE", "value could not be read"),
    ("unknown five-class value", "lending", "BAD-5CLASS", "five-class classification not recognised"),
    ("five-class inconsistent with overdue days", "lending", "BAD-CONSIST", "five-class inconsistent"),
    ("date in the future", "lending", "BAD-FUTURE", "in the future) (event_date=2030-01-01)"),
    ("empty name", "tax", "BAD-EMPTY", "name is empty"),
    ("SQL-like text in a name", "tax", "BAD-SQL", "SQL-like"),
    ("score out of range", "tax", "BAD-SCORE", "score outside its range [0, 100] (score=250"),
    ("missing update time", "social_insurance", "BAD-NOSTAMP", "update time is missing"),
    ("negative headcount", "social_insurance", "BAD-HEAD", "headcount outside its range [0, "),
    ("markup in a name", "contract", "BAD-MARKUP", "markup"),
    ("null record id", "contract", "", "record id is missing"),
    ("unknown performance status", "contract", "BAD-PERF", "performance status not recognised"),
    ("conflicting versions of one record", "violations", "BAD-VERSION", "duplicate record id"),
    ("fine without amount", "violations", "BAD-NOFINE", "without a fine amount"),
    (
        "fine contradicting the penalty category",
        "violations",
        "BAD-WARNFINE",
        "contradicts the penalty category",
    ),
    ("unknown penalty category", "violations", "BAD-CATEGORY", "penalty category not recognised"),
    ("unreadable date", "violations", "BAD-DATE", "value could not be read"),
    (
        "invalid characters in a code",
        "product_quality",
        "BAD-CODE",
        "identifier holds characters no code has",
    ),
    ("wrong type in JSON", "product_quality", "BAD-BOOL", "value could not be read"),
    ("unknown spot-check result", "product_quality", "BAD-RESULT", "spot-check result not recognised"),
    # what departments really send
    ("NaN as an amount", "lending", "BAD-NAN", "value could not be read (parse_errors=amount=NaN)"),
    ("inf as an amount", "lending", "BAD-INFTEXT", "value could not be read (parse_errors=amount=inf)"),
    ("amount beyond its range", "lending", "BAD-HUGEAMT", "amount outside its range [0, "),
    (
        "a fine of 1e400 (infinity)",
        "violations",
        "BAD-INF",
        "value could not be read (parse_errors=amount=1e400)",
    ),
    ("negative fine", "violations", "BAD-NEGFINE", "amount outside its range [0, "),
    ("decimal comma, not thousands separators", "contract", "BAD-DECCOMMA", "(parse_errors=amount=1,5)"),
    ("date out of range", "contract", "BAD-YEAR1", "(parse_errors=event_date=0001-01-01)"),
    ("fractional headcount", "social_insurance", "BAD-FRAC", "(parse_errors=headcount=12.5)"),
]
#: kinds that never become records: whole lines the extraction cannot read
#: (kind, source, text on the line, words the reason must contain)
LINE_KINDS: list[tuple[str, str, str, str]] = [
    ("truncated line with an unterminated quote", "contract", "BAD-TRUNC", "unterminated quoted field"),
    ("line with an extra field", "contract", "BAD-EXTRA", "fields where the header has 13"),
    ("line in the wrong encoding", "contract", "BAD-LATIN", "not valid gbk"),
    ("broken JSON line", "product_quality", '"BAD-JSON"', "not a readable JSON object"),
    ("line with a missing field", "violations", "BAD-SHORT", "2 fields where the header has 16"),
    # what departments really send
    ("NUL bytes in a line", "contract", "BAD-NUL", "holds NUL bytes"),
    ("a quote inside an unquoted field", "violations", "BAD-STRAY", "malformed quoting"),
    (
        "the header line again mid-file (files joined)",
        "violations",
        "处罚机关统一社会信用代码",
        "the header line again",
    ),
    ("over-long field", "violations", "BAD-HUGE", "field '行政相对人名称' holds more than 10000 characters"),
    (
        "a JSON number beyond any float (1e400)",
        "product_quality",
        "BAD-JSON-INF",
        "not a readable JSON object",
    ),
    ("NaN in JSON", "product_quality", "BAD-JSON-NAN", "not a readable JSON object"),
    ("a truncated last line", "violations", "BAD-TRUNCEND", "unterminated quoted field"),
]
#: records that are valid however odd they look: (source, record id, canonical column, value read)
GOOD_ODDITIES: list[tuple[str, str, str, object]] = [
    ("contract", "RFC-NEWLINE", "detail", '(2024)浙0203执1号,\r\n"补充" 第二行'),
    ("contract", "RFC-CR", "amount", 1234567.5),
    ("contract", "RFC-FULLWIDTH", "amount", 123.5),
    ("violations", "RFC-BOM", "amount", 12_345_000.0),
    ("violations", "RFC-MULTILINE", "detail", "未按规定\n公示"),
    ("product_quality", "RFC-CRLF", "status", "合格"),
    ("product_quality", "RFC-JSONBOM", "status", "合格"),
]


def _inject_row_kinds(src: Path) -> None:
    lending, tax, si = (
        src / "lending" / "lending.db",
        src / "tax" / "tax.db",
        src / "social_insurance" / "social_insurance.db",
    )
    stamp = {"updated_at": STAMP}
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-NEG", "amount": -500.0})
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-TYPE", "amount": "12,3x"})
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-5CLASS", "five_class": "很好"})
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-CONSIST", "five_class": "正常", "overdue_days": 200})
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-FUTURE", "start_date": "2030-01-01"})
    _sql_row(tax, "tax_records", {**stamp, "record_id": "BAD-EMPTY", "taxpayer_name": "  "})
    _sql_row(
        tax,
        "tax_records",
        {**stamp, "record_id": "BAD-SQL", "taxpayer_name": "华兴公司'; DROP TABLE tax_records;--"},
    )
    _sql_row(
        tax,
        "tax_records",
        {**stamp, "record_id": "BAD-SCORE", "rating_score": 250},
        where="record_kind = 'rating'",
    )
    _sql_row(si, "contributions", {"updated_at": None, "record_id": "BAD-NOSTAMP"})
    _sql_row(si, "contributions", {**stamp, "record_id": "BAD-HEAD", "insured_pension": -3})

    contract = src / "contract" / "enforcement.csv"
    template = _csv_template(contract, "gbk")
    lines = [
        _csv_line(
            template,
            {
                "记录编号": "BAD-MARKUP",
                "更新时间": STAMP,
                "被执行人名称": "<script>alert(1)</script>宁波华兴有限公司",
            },
        ),
        _csv_line(template, {"记录编号": None, "更新时间": STAMP}),
        _csv_line(template, {"记录编号": "BAD-PERF", "更新时间": STAMP, "履行情况": "看心情"}),
    ]
    _append(contract, "".join(lines), "gbk")
    # lines that cannot be read at all
    _append(contract, '"BAD-TRUNC,(2024)浙0203执1号,宁波市海曙区人民法院\n', "gbk")
    _append(contract, _csv_line(template, {"记录编号": "BAD-EXTRA"}).rstrip("\n") + ",surplus\n", "gbk")
    _append(contract, b"BAD-LATIN,caf\xe9\n", "gbk")

    violations = src / "violations" / "penalties.csv"
    template = _csv_template(violations, "utf-8-sig")
    lines = [
        _csv_line(
            template,
            {
                "行政处罚决定书文号": "BAD-VERSION",
                "更新时间": "2026-11-23 08:00:00",
                "数据类别": "行政处罚",
                "处罚类别": "罚款",
                "罚款金额（万元）": "1",
            },
        ),
        _csv_line(
            template,
            {
                "行政处罚决定书文号": "BAD-VERSION",
                "更新时间": "2026-11-23 09:00:00",
                "数据类别": "行政处罚",
                "处罚类别": "罚款",
                "罚款金额（万元）": "2",
            },
        ),
        _csv_line(
            template,
            {
                "行政处罚决定书文号": "BAD-NOFINE",
                "更新时间": STAMP,
                "数据类别": "行政处罚",
                "处罚类别": "罚款",
                "罚款金额（万元）": None,
            },
        ),
        _csv_line(
            template,
            {
                "行政处罚决定书文号": "BAD-WARNFINE",
                "更新时间": STAMP,
                "数据类别": "行政处罚",
                "处罚类别": "警告",
                "罚款金额（万元）": "3",
            },
        ),
        _csv_line(
            template,
            {
                "行政处罚决定书文号": "BAD-CATEGORY",
                "更新时间": STAMP,
                "数据类别": "行政处罚",
                "处罚类别": "打板子",
            },
        ),
        _csv_line(
            template,
            {
                "行政处罚决定书文号": "BAD-HUGE",
                "更新时间": STAMP,
                "行政相对人名称": "宁波" + "华" * 100_000 + "有限公司",
            },
        ),
        _csv_line(
            template, {"行政处罚决定书文号": "BAD-DATE", "更新时间": STAMP, "处罚决定日期": "2026-13-45"}
        ),
    ]
    _append(violations, "".join(lines) + "BAD-SHORT,2026-11-23 12:00:00\n", "utf-8")

    quality = src / "product_quality" / "spot_checks.jsonl"
    template = json.loads(quality.read_text("utf-8").splitlines()[0])
    rows = [
        {**template, "report_no": "BAD-CODE", "updated_at": STAMP, "enterprise_code": "9133#$%^&*()"},
        {**template, "report_no": "BAD-BOOL", "updated_at": STAMP, "recalled": "maybe"},
        {**template, "report_no": "BAD-RESULT", "updated_at": STAMP, "result": "还行"},
    ]
    _append(
        quality,
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        + '{"report_no": "BAD-JSON", "updated_at": \n',
        "utf-8",
    )


def _inject_department_kinds(src: Path) -> None:
    """What departments really send: odd but valid records (quoted line breaks, CR and CRLF
    endings, byte-order marks mid-file, thousands separators, full-width digits) and broken ones."""
    lending = src / "lending" / "lending.db"
    stamp = {"updated_at": STAMP}
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-NAN", "amount": "NaN"})
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-INFTEXT", "amount": "inf"})
    _sql_row(lending, "loans", {**stamp, "loan_id": "BAD-HUGEAMT", "amount": 1e20})
    _sql_row(
        src / "social_insurance" / "social_insurance.db",
        "contributions",
        {**stamp, "record_id": "BAD-FRAC", "insured_pension": 12.5},
    )

    contract = src / "contract" / "enforcement.csv"
    row = {**_csv_template(contract, "gbk"), "更新时间": STAMP}
    lines = [
        _rfc_line(row, {"记录编号": "BAD-DECCOMMA", "未履行金额": "1,5"}),
        _rfc_line(row, {"记录编号": "BAD-YEAR1", "发布日期": "0001-01-01"}),
        _rfc_line(row, {"记录编号": "RFC-NEWLINE", "案号": '(2024)浙0203执1号,\r\n"补充" 第二行'}),
        _rfc_line(row, {"记录编号": "RFC-CR", "未履行金额": "1,234,567.5"}, end="\r"),
        _rfc_line(row, {"记录编号": "RFC-FULLWIDTH", "未履行金额": "１２３．５"}, end="\r\n"),
        _rfc_line(row, {"记录编号": "BAD-NUL", "法定代表人": "王\x00\x00"}),
    ]
    _append(contract, "".join(lines), "gbk")

    violations = src / "violations" / "penalties.csv"
    header = violations.read_bytes().decode("utf-8-sig").splitlines()[0]
    row = {**_csv_template(violations, "utf-8-sig"), "更新时间": STAMP, "数据类别": "行政处罚"}
    fine = {"处罚类别": "罚款"}
    lines = [
        _rfc_line(row, {**fine, "行政处罚决定书文号": "BAD-INF", "罚款金额（万元）": "1e400"}),
        _rfc_line(row, {**fine, "行政处罚决定书文号": "BAD-NEGFINE", "罚款金额（万元）": "-3"}),
        "\ufeff" + _rfc_line(row, {**fine, "行政处罚决定书文号": "RFC-BOM", "罚款金额（万元）": "1,234.5"}),
        _rfc_line(row, {"行政处罚决定书文号": "RFC-MULTILINE", "违法行为类型": "未按规定\n公示"}, end="\r\n"),
        _rfc_line(row, {"行政处罚决定书文号": "BAD-STRAY", "法定代表人": "PLACEHOLDER"}).replace(
            "PLACEHOLDER", 'x"y"z'
        ),
        header + "\n",
        'BAD-TRUNCEND,行政处罚,"法人及非法人',  # the delivery was cut off: no closing quote, no line end
    ]
    _append(violations, "".join(lines), "utf-8")

    quality = src / "product_quality" / "spot_checks.jsonl"
    row = {**json.loads(quality.read_text("utf-8").splitlines()[0]), "updated_at": STAMP, "result": "合格"}
    good = row | {"failed_items": []}
    _append(
        quality,
        json.dumps(good | {"report_no": "RFC-CRLF"}, ensure_ascii=False)
        + "\r\n\ufeff"
        + json.dumps(good | {"report_no": "RFC-JSONBOM"})
        + "\n"
        + json.dumps(row | {"report_no": "BAD-JSON-INF"})[:-1]
        + ', "sample_size": 1e400}\n'
        + json.dumps(row | {"report_no": "BAD-JSON-NAN"})[:-1]
        + ', "sample_size": NaN}\n',
        "utf-8",
    )


@pytest.fixture(scope="module")
def dirty_run(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    src = tmp_path_factory.mktemp("dirty") / "sources"
    shutil.copytree(clean, src)
    _inject_row_kinds(src)
    _inject_department_kinds(src)
    lake = src.parent / "lake"
    results = flow.run_all(str(src), str(lake), DAY, run_id="dirty")
    return lake, results


def _source_file(lake: Path, source: str) -> tuple[Path, str]:
    from pipelines.sources.registry import load_sources

    config = load_sources()[source]
    return config.file_path(lake.parent / "sources"), config.encoding


def _quarantine(lake: Path, source: str) -> pl.DataFrame:
    return pl.read_parquet(lake / "quarantine" / source / f"{DAY}.parquet")


def _accepted(lake: Path, source: str) -> pl.DataFrame:
    return pl.read_parquet(lake / "accepted" / DAY / f"{source}.parquet")


def test_the_catalogue_has_at_least_twenty_kinds() -> None:
    kinds = [k for k, *_ in ROW_KINDS] + [k for k, *_ in LINE_KINDS] + [k for k, *_ in BATCH_KINDS]
    assert len(set(kinds)) == len(kinds) >= 45


@pytest.mark.parametrize(("kind", "source", "record_id", "reason"), ROW_KINDS, ids=[k[0] for k in ROW_KINDS])
def test_bad_rows_are_quarantined_with_their_reason(
    dirty_run: tuple[Path, dict], kind: str, source: str, record_id: str, reason: str
) -> None:
    lake, _ = dirty_run
    quarantined = _quarantine(lake, source)
    rows = quarantined.filter(
        pl.col("source_record_id").is_null() if not record_id else pl.col("source_record_id") == record_id
    )
    assert rows.height >= 1, f"{kind}: no quarantined row in {source}"
    assert rows["reason"].str.contains(reason, literal=True).any(), (kind, rows["reason"].to_list())
    assert rows["original"].is_not_null().all(), "the original values are kept"
    assert (rows["failed_expectations"].list.len() >= 1).all()
    accepted_ids = _accepted(lake, source)["source_record_id"]
    if kind == "conflicting versions of one record":  # the latest version wins, the older one is held
        assert accepted_ids.is_in([record_id]).sum() == 1
        kept = _accepted(lake, source).filter(pl.col("source_record_id") == record_id)
        assert kept["amount"].item() == 20_000.0  # 2 万元, the 09:00 version
    else:
        assert not accepted_ids.is_in([record_id]).any()


@pytest.mark.parametrize(("kind", "source", "marker", "reason"), LINE_KINDS, ids=[k[0] for k in LINE_KINDS])
def test_unreadable_lines_are_quarantined_with_line_number(
    dirty_run: tuple[Path, dict], kind: str, source: str, marker: str, reason: str
) -> None:
    """Each broken line is quarantined alone, with its reason and the number an editor shows for it
    (records spanning lines and CR-only line ends before it included)."""
    lake, _ = dirty_run
    lines = _quarantine(lake, source).filter(pl.col("stage") == "extract")
    hits = lines.filter(pl.col("original").str.contains(marker, literal=True))
    assert hits.height == 1, (kind, lines.select("line", "reason").rows())
    assert reason in hits["reason"].item(), (kind, hits["reason"].item())
    path, encoding = _source_file(lake, source)
    assert hits["line"].item() == _line_of(path, encoding, marker)
    assert source in hits["source"].item()


@pytest.mark.parametrize(
    ("source", "record_id", "column", "value"), GOOD_ODDITIES, ids=[g[1] for g in GOOD_ODDITIES]
)
def test_odd_but_valid_records_are_read_as_the_format_says(
    dirty_run: tuple[Path, dict], source: str, record_id: str, column: str, value: object
) -> None:
    """Quoted commas, quotes and line breaks (RFC 4180), CR and CRLF line ends, a byte-order mark
    mid-file, thousands separators and full-width digits are data, not damage."""
    lake, _ = dirty_run
    accepted = _accepted(lake, source).filter(pl.col("source_record_id") == record_id)
    assert accepted.height == 1, _quarantine(lake, source).select("line", "source_record_id", "reason").rows()
    assert accepted[column].item() == value


def test_no_number_in_a_profile_is_infinite(dirty_run: tuple[Path, dict]) -> None:
    """A fine of 1e400 is quarantined, not summed into a profile as infinity."""
    lake, _ = dirty_run
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    floats = [c for c, t in profiles.schema.items() if t == pl.Float64]
    assert floats and profiles.select(pl.all_horizontal(pl.col(floats).fill_null(0).is_finite()).all()).item()


def test_no_good_row_is_lost_and_the_books_balance(dirty_run: tuple[Path, dict], clean_lake: Path) -> None:
    lake, results = dirty_run
    summary = json.loads((lake / "reports" / DAY / "summary.json").read_text("utf-8"))
    assert summary["published"] and summary["books"]["balanced"]
    for source, counts in summary["sources"].items():
        assert counts["extracted"] == counts["accepted"] + counts["quarantined"], source
        good = set(_accepted(clean_lake, source)["source_record_id"])
        now = set(_accepted(lake, source)["source_record_id"])
        assert good <= now, f"{source}: good rows lost: {sorted(good - now)[:5]}"
    injected = len(ROW_KINDS) + len(LINE_KINDS)
    assert sum(c["quarantined"] for c in summary["sources"].values()) >= injected


def test_hostile_text_is_stored_as_data_not_run(dirty_run: tuple[Path, dict], clean: Path) -> None:
    lake, _ = dirty_run
    with sqlite3.connect(clean / "tax" / "tax.db") as con:  # the SQL-like name did nothing
        assert con.execute("SELECT count(*) FROM tax_records").fetchone()[0] > 0
    row = _quarantine(lake, "tax").filter(pl.col("source_record_id") == "BAD-SQL")
    assert "DROP TABLE" in row["subject_name"].item()


# ---------------------------------------------------------------- batch-level kinds
def _rewrite_csv(path: Path, encoding: str, change) -> None:  # noqa: ANN001 - a small test helper
    text = path.read_bytes().decode(encoding)
    path.write_bytes(
        change(text).encode(encoding.replace("-sig", "") if encoding != "utf-8-sig" else encoding)
    )


def _wrong_encoding(src: Path) -> None:
    path = src / "contract" / "enforcement.csv"
    path.write_bytes(path.read_bytes().decode("gbk").encode("utf-8"))


def _empty_file(src: Path) -> None:
    (src / "product_quality" / "spot_checks.jsonl").write_bytes(b"")


def _duplicate_header(src: Path) -> None:
    _rewrite_csv(
        src / "violations" / "penalties.csv",
        "utf-8-sig",
        lambda t: t.replace("违法行为类型", "法定代表人", 1),
    )


def _renamed_column(src: Path) -> None:
    _rewrite_csv(
        src / "violations" / "penalties.csv",
        "utf-8-sig",
        lambda t: t.replace("罚款金额（万元）", "罚款金额", 1),
    )


def _volume_drop(src: Path) -> None:
    with sqlite3.connect(src / "tax" / "tax.db") as con:
        con.execute("DELETE FROM tax_records WHERE rowid % 10 < 7")


def _stale(src: Path) -> None:
    path = src / "violations" / "penalties.csv"
    frame = pl.read_csv(path, infer_schema=False)
    path.write_bytes(
        frame.with_columns(pl.lit("2026-10-01 09:00:00").alias("更新时间")).write_csv().encode("utf-8-sig")
    )


def _mistyped_column(src: Path) -> None:
    with sqlite3.connect(src / "social_insurance" / "social_insurance.db") as con:
        con.execute("UPDATE contributions SET amount_due = 'n/a'")


#: (kind, source, injection, words the held-back reason must contain)
BATCH_KINDS = [
    ("whole file in the wrong encoding", "contract", _wrong_encoding, "not valid gbk"),
    ("empty file", "product_quality", _empty_file, "is empty"),
    ("renamed column (schema drift)", "violations", _renamed_column, "schema drift"),
    (
        "a column named twice in the header",
        "violations",
        _duplicate_header,
        "columns named twice: ['法定代表人']",
    ),
    ("volume drop of more than half", "tax", _volume_drop, "volume dropped"),
    ("stale data", "violations", _stale, "stale data"),
    ("a numeric column that holds text (type drift)", "social_insurance", _mistyped_column, "type drift"),
]


def _source_stages(src: Path, lake: Path, source: str) -> dict:
    source_stages.extract_source(source, str(src), str(lake), DAY)
    for shard in source_stages.check_source(source, str(lake), DAY)["shards"]:
        quality_stages.standardise_source(source, str(lake), DAY, shard=shard)
    return quality_stages.validate_source(source, str(lake), DAY)


@pytest.mark.parametrize(("kind", "source", "inject", "reason"), BATCH_KINDS, ids=[k[0] for k in BATCH_KINDS])
def test_a_bad_batch_falls_back_to_the_last_good_snapshot(
    next_day: tuple[Path, Path],
    published_yesterday: Path,
    kind: str,
    source: str,
    inject,  # noqa: ANN001
    reason: str,
) -> None:
    src, lake = next_day
    inject(src)
    result = _source_stages(src, lake, source)
    batch = json.loads((lake / "reports" / DAY / "batch" / f"{source}.json").read_text("utf-8"))
    assert not batch["ok"] and any(reason in p for p in batch["problems"]), batch["problems"]
    assert result["stale"] and result["accepted"] == 0
    assert result["extracted"] == result["quarantined"]
    previous = pl.read_parquet(published_yesterday / "accepted" / PREVIOUS_DAY / f"{source}.parquet")
    assert _accepted(lake, source).equals(previous), "the last good snapshot is carried forward unchanged"
    if result["quarantined"]:
        held = _quarantine(lake, source)
        assert held["reason"].str.contains(reason, literal=True).all() or held["stage"].eq("extract").any()


def test_a_good_batch_with_an_extra_column_is_promoted(
    next_day: tuple[Path, Path],
) -> None:
    src, lake = next_day
    path = src / "product_quality" / "spot_checks.jsonl"
    rows = [
        json.loads(line) | {"inspector_note": "新增字段"} for line in path.read_text("utf-8").splitlines()
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    result = _source_stages(src, lake, "product_quality")
    assert not result["stale"] and result["quarantined"] == 0
    assert result["snapshot_records"] == len(rows)


def test_a_fallback_publishes_with_the_affected_profiles_marked_stale(
    next_day: tuple[Path, Path],
) -> None:
    src, lake = next_day
    _renamed_column(src)
    flow.run_all(str(src), str(lake), DAY, run_id="fallback")
    summary = json.loads((lake / "reports" / DAY / "summary.json").read_text("utf-8"))
    assert summary["published"] and summary["sources"]["violations"]["stale"]
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet")
    provenance = profiles.select("entity_id", "provenance").explode("provenance").unnest("provenance")
    assert provenance.filter(pl.col("source") == "violations")["stale"].all()
    assert not provenance.filter(pl.col("source") != "violations")["stale"].any()
    # the watermark of the held-back source did not move: tomorrow pulls what today skipped
    state = json.loads((lake / "state" / "watermarks.json").read_text("utf-8"))
    assert state["violations"][DAY]["newest"] == state["violations"][PREVIOUS_DAY]["newest"]
    assert state["lending"][DAY]["newest"] > state["lending"][PREVIOUS_DAY]["newest"]


def test_a_critical_source_with_a_bad_batch_stops_the_run(
    next_day: tuple[Path, Path],
) -> None:
    src, lake = next_day
    with sqlite3.connect(src / "lending" / "lending.db") as con:
        con.execute("ALTER TABLE loans RENAME COLUMN five_class TO risk_class")
    source_stages.extract_source("lending", str(src), str(lake), DAY)
    with pytest.raises(DataQualityError, match=r"source 'lending' batch held back: schema drift.*critical"):
        source_stages.check_source("lending", str(lake), DAY)


def test_a_critical_source_failing_its_raw_suite_stops_the_run(
    next_day: tuple[Path, Path],
) -> None:
    """Type drift is judged by the raw suite (run by the first standardise shard): validate holds
    the batch back, its report says why, and a critical source stops the run instead of falling back."""
    src, lake = next_day
    with sqlite3.connect(src / "lending" / "lending.db") as con:
        con.execute("UPDATE loans SET amount = 'n/a'")
    source_stages.extract_source("lending", str(src), str(lake), DAY)
    checked = source_stages.check_source("lending", str(lake), DAY)
    assert checked["ok"] and checked["shards"] == [0]  # columns, volume and age are fine
    assert quality_stages.standardise_source("lending", str(lake), DAY)["raw_suite_problems"]
    with pytest.raises(DataQualityError, match=r"source 'lending' batch held back: .*type drift.*critical"):
        quality_stages.validate_source("lending", str(lake), DAY)
    batch = json.loads((lake / "reports" / DAY / "batch" / "lending.json").read_text("utf-8"))
    assert not batch["ok"] and any("type drift" in p for p in batch["problems"])
    assert not (lake / "accepted" / DAY / "lending.parquet").exists()


def test_a_missing_table_names_the_source_and_table(clean: Path, tmp_path: Path) -> None:
    src = tmp_path / "sources"
    shutil.copytree(clean, src)
    with sqlite3.connect(src / "social_insurance" / "social_insurance.db") as con:
        con.execute("DROP TABLE contributions")
    with pytest.raises(SourceUnavailableError, match=r"social_insurance.*table 'contributions' not found"):
        source_stages.extract_source("social_insurance", str(src), str(tmp_path / "lake"), DAY)


def test_a_first_run_without_a_good_snapshot_cannot_fall_back(clean: Path, tmp_path: Path) -> None:
    src, lake = tmp_path / "sources", tmp_path / "lake"
    shutil.copytree(clean, src)
    _empty_file(src)
    source_stages.extract_source("product_quality", str(src), str(lake), DAY)
    source_stages.check_source("product_quality", str(lake), DAY)
    with pytest.raises(DataQualityError, match=r"product_quality.*is empty.*no earlier good snapshot"):
        quality_stages.validate_source("product_quality", str(lake), DAY)
