"""The one-page HTML run report: what a data engineer looks at first after a night's run.

Self-contained (inline SVG bar charts, no scripts, nothing fetched): records per source,
quarantine by reason, how records were matched, the grade distribution, changes against the
previous version, held-back batches and the books. Written to ``LAKE/reports/<date>/report.html``
next to ``summary.json`` and linked, with the GX Data Docs, from the publish task's log.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.lake import Lake, atomic_path

_COLOURS = ("#2f6fb0", "#3a9d5d", "#d0793a", "#8e5bb5", "#c44e52", "#7f7f7f")


def _bars(title: str, rows: list[tuple[str, float]], unit: str = "", colour: str = _COLOURS[0]) -> str:
    """A horizontal bar chart as inline SVG (label, value) -> one bar each."""
    if not rows:
        return f"<section><h2>{html.escape(title)}</h2><p class='none'>nothing to show</p></section>"
    top = max(v for _, v in rows) or 1
    height = 24 * len(rows) + 8
    bars = []
    for i, (label, value) in enumerate(rows):
        width = 420 * value / top
        y = 4 + 24 * i
        bars.append(
            f"<text x='0' y='{y + 15}' class='label'>{html.escape(label[:60])}</text>"
            f"<rect x='330' y='{y}' width='{width:.1f}' height='18' fill='{colour}'><title>{html.escape(label)}: "
            f"{value:,.0f}{unit}</title></rect>"
            f"<text x='{336 + width:.1f}' y='{y + 15}' class='value'>{value:,.0f}{unit}</text>"
        )
    return (
        f"<section><h2>{html.escape(title)}</h2><svg role='img' aria-label='{html.escape(title)}' "
        f"width='860' height='{height}'>{''.join(bars)}</svg></section>"
    )


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<section><h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table></section>"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8")) if path.exists() else {}


def _quarantine_reasons(lake: Lake, sources: list[str]) -> list[tuple[str, float]]:
    paths = [lake.quarantine(s) for s in sources if lake.quarantine(s).exists()]
    if not paths:
        return []
    reasons = (
        pl.concat([pl.scan_parquet(p).select("source", "reason") for p in paths])
        # "loan amount is negative (amount=-5)" -> one bar per kind of problem, not per value
        .with_columns(pl.col("reason").str.split("; ").list.first().str.replace(r" \([^()]*\)$", ""))
        .group_by("source", "reason")
        .len()
        .sort("len", descending=True)
        .head(15)
        .collect()
    )
    return [(f"{s}: {r}", float(n)) for s, r, n in reasons.iter_rows()]


def build_run_report(lake_dir: str | Path, business_date: str) -> Path:
    """Write the run report for one business date from what the stages left behind."""
    lake = Lake(Path(lake_dir), business_date)
    summary = _read_json(lake.reports / "summary.json")
    validation_dir = lake.reports / "validation"
    reports = {p.stem: _read_json(p) for p in sorted(validation_dir.glob("*.json"))}
    batches = {p.stem: _read_json(p) for p in sorted((lake.reports / "batch").glob("*.json"))}
    sources = sorted(set(reports) | set(batches))
    sections = []

    status = "published" if summary.get("published") else "NOT published"
    books = summary.get("books", {})
    version = summary.get("version", "-")
    sections.append(
        f"<p class='status {'ok' if summary.get('published') else 'bad'}'>Business date {business_date}: "
        f"<b>{status}</b>; version {html.escape(str(version))}; run {html.escape(str(summary.get('run_id', '-')))}; "
        f"books {'balance' if books.get('balanced') else 'DO NOT balance'}.</p>"
    )
    problems = [[name, "; ".join(b.get("problems", []))] for name, b in batches.items() if b.get("problems")]
    problems += [["books", p] for p in books.get("problems", [])]
    if problems:
        sections.append(_table("Held back or failed", ["where", "problem"], problems))
    rows = [
        [
            name,
            r.get("extracted"),
            r.get("accepted"),
            r.get("quarantined"),
            r.get("snapshot_records"),
            "stale (last good snapshot)" if r.get("stale") else "fresh",
            r.get("newest") or "",
        ]
        for name, r in reports.items()
    ]
    sections.append(
        _table(
            "Sources",
            ["source", "extracted", "accepted", "quarantined", "snapshot", "state", "newest change"],
            rows,
        )
    )
    sections.append(
        _bars(
            "Records accepted per source (snapshot)",
            [(n, float(r.get("snapshot_records") or 0)) for n, r in reports.items()],
        )
    )
    sections.append(
        _bars("Quarantine by reason (this run)", _quarantine_reasons(lake, sources), colour=_COLOURS[4])
    )

    links = lake.work / "links.parquet"
    if links.exists():
        methods = pl.scan_parquet(links).group_by("match_method").len().sort("len", descending=True).collect()
        total = methods["len"].sum() or 1
        sections.append(
            _bars(
                "How records were matched (% of records)",
                [(m, 100 * n / total) for m, n in methods.iter_rows()],
                unit=" %",
                colour=_COLOURS[1],
            )
        )
    profiles = lake.work / "profiles.parquet"
    if profiles.exists():
        grades = pl.scan_parquet(profiles).group_by("grade").len().sort("grade").collect()
        sections.append(
            _bars("Grade distribution", [(g, float(n)) for g, n in grades.iter_rows()], colour=_COLOURS[3])
        )
    changes_dir = Path(summary["path"]) / "changes" if summary.get("path") else None
    if changes_dir and changes_dir.exists():
        changes = (
            pl.scan_parquet(changes_dir / "*.parquet")
            .group_by("change")
            .len()
            .sort("len", descending=True)
            .collect()
        )
        previous = _read_json(Path(summary["path"]) / "manifest.json").get("previous_version") or "none"
        sections.append(
            _bars(
                f"Changes against the previous version ({previous})",
                [(c, float(n)) for c, n in changes.iter_rows()],
                colour=_COLOURS[2],
            )
        )
    if books.get("totals"):
        sections.append(
            _table(
                "Reconciliation: accepted records against published profiles",
                ["total", "accepted records", "profiles"],
                [[k, f"{v['records']:,.2f}", f"{v['profiles']:,.2f}"] for k, v in books["totals"].items()],
            )
        )
    docs = lake.reports / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    if docs.exists():
        sections.append(
            f"<p><a href='{html.escape(docs.relative_to(lake.reports).as_posix())}'>"
            "Great Expectations Data Docs for this run</a> (every suite, every result)</p>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>credit run {business_date}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 900px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.status.ok {{ color: #2a7a3f; }} .status.bad {{ color: #b22; }} .none {{ color: #777; }}
svg text.label {{ font-size: 12px; }} svg text.value {{ font-size: 12px; fill: #333; }}
</style></head>
<body><h1>Nightly credit run, business date {business_date}</h1>
{"".join(sections)}
</body></html>
"""
    target = lake.reports / "report.html"
    with atomic_path(target) as tmp:
        tmp.write_text(page, "utf-8")
    return target
