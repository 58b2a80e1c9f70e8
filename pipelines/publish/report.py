"""The one-page HTML run report: what a data engineer looks at first after a night's run.

Self-contained (inline SVG bar charts, no scripts, nothing fetched): records per source,
quarantine by reason, how records were matched, the grade distribution, changes against the
previous version, held-back batches and the books. Written to ``LAKE/reports/<date>/report.html``
next to ``summary.json`` and linked, with the offline Data Docs, from the publish task's log.

Every run writes it, failed or not. The DAG keeps a run record (``run.json``: run id, state, the
state of every task, and each failed task's stage, source and error): ``start_run`` replaces the
previous attempt's page with a "running" one the moment a run starts, ``record_failure`` is called
by the failure callback, and ``finish_run`` (the DAG's last task, which runs whatever failed)
writes the final page. Files another run of the same date left behind are shown only when they
carry this run's id, so an earlier night's "published" is never read as this one's.
"""

from __future__ import annotations

import html
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from foundation.dictionary import load_columns
from foundation.lake import Lake, atomic_path, write_json
from pipelines.night import PROFILES_DIR
from pipelines.quality.data_docs import build_site, site_index
from pipelines.sources.registry import load_sources

RUN_RECORD = "run.json"
FAILURES_DIR = "failures"
#: what each stage records for the next ones: an earlier run's copies are dropped when a run starts
STAGE_RECORDS = ("extract", "batch", "validation", FAILURES_DIR)
#: Airflow task states that mean the task did not do its work (in the order the report lists them)
NOT_DONE = ("failed", "upstream_failed", "skipped", "removed")

_COLOURS = ("#2f6fb0", "#3a9d5d", "#d0793a", "#8e5bb5", "#c44e52", "#7f7f7f")


#: the label column of a bar chart (px) and the width of one character of its 12px labels: a label
#: that would run into its bar is put on a line of its own above the bar instead
_LABEL_WIDTH, _CHAR_WIDTH, _WIDE_CHAR_WIDTH = 320, 6.8, 12.5


def _text_width(text: str) -> float:
    return sum(_WIDE_CHAR_WIDTH if ord(c) > 0x2E80 else _CHAR_WIDTH for c in text)


def _bars(title: str, rows: list[tuple[str, float]], unit: str = "", colour: str = _COLOURS[0]) -> str:
    """A horizontal bar chart as inline SVG (label, value) -> one bar each."""
    if not rows:
        return f"<section><h2>{html.escape(title)}</h2><p class='none'>nothing to show</p></section>"
    top = max(v for _, v in rows) or 1
    stacked = max(_text_width(label) for label, _ in rows) > _LABEL_WIDTH
    bar_x, step = (0, 40) if stacked else (_LABEL_WIDTH + 10, 24)
    height = step * len(rows) + 8
    bars = []
    for i, (label, value) in enumerate(rows):
        width = (760 if stacked else 420) * value / top
        y = 4 + step * i + (16 if stacked else 0)
        label_y = y - 4 if stacked else y + 15
        bars.append(
            f"<text x='0' y='{label_y}' class='label'>{html.escape(label[:120])}</text>"
            f"<rect x='{bar_x}' y='{y}' width='{width:.1f}' height='18' fill='{colour}'><title>"
            f"{html.escape(label)}: {value:,.0f}{unit}</title></rect>"
            f"<text x='{bar_x + 6 + width:.1f}' y='{y + 15}' class='value'>{value:,.0f}{unit}</text>"
        )
    return (
        f"<section><h2>{html.escape(title)}</h2><svg role='img' aria-label='{html.escape(title)}' "
        f"width='860' height='{height}'>{''.join(bars)}</svg></section>"
    )


def _cell(value: Any) -> str:
    """A table cell's text: counts with thousands separators, as the charts show them."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<section><h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table></section>"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8")) if path.exists() else {}


def quarantine_reasons(lake: Lake, sources: list[str]) -> list[tuple[str, float]]:
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def split_task_id(task_id: str) -> tuple[str, str | None]:
    """'contract.extract' -> ('extract', 'contract'); 'publish' -> ('publish', None); a mapped
    task's item as Airflow's task states name it: 'contract.extract_2' -> ('extract', 'contract')."""
    group, _, stage = task_id.rpartition(".")
    name, _, index = stage.rpartition("_")
    return (name if name and index.isdigit() else stage), group or None


def start_run(lake_dir: str | Path, business_date: str, run_id: str) -> Path:
    """A run begins: record it and replace any earlier page for the date with a "running" one.
    A new run id also drops what an earlier attempt's stages recorded (the same run id is a cleared
    task being re-run: what the run's other tasks recorded still holds)."""
    lake = Lake(Path(lake_dir), business_date)
    earlier = _read_json(lake.reports / RUN_RECORD)
    if earlier.get("run_id") != run_id:
        for folder in STAGE_RECORDS:
            if folder != FAILURES_DIR:
                shutil.rmtree(lake.reports / folder, ignore_errors=True)
        # a failure of this run recorded before its record was started (`plan` failing) stays
        for failure in (lake.reports / FAILURES_DIR).glob("*.json"):
            if _read_json(failure).get("run_id") != run_id:
                failure.unlink()
        (lake.reports / "summary.json").unlink(missing_ok=True)
    write_json({"run_id": run_id, "state": "running", "started": _now()}, lake.reports / RUN_RECORD)
    return build_run_report(lake.root, business_date)


def record_failure(
    lake_dir: str | Path, business_date: str, run_id: str, task_id: str, error: BaseException | str
) -> None:
    """Keep what failed, where and why, for the run report (called by the DAG's failure callbacks)."""
    stage, source = split_task_id(task_id)
    write_json(
        {
            "run_id": run_id,
            "task_id": task_id,
            "stage": stage,
            "source": source,
            "error": error if isinstance(error, str) else f"{type(error).__name__}: {error}",
            "at": _now(),
        },
        Lake(Path(lake_dir), business_date).reports / FAILURES_DIR / f"{task_id}.json",
    )


def finish_run(
    lake_dir: str | Path,
    business_date: str,
    run_id: str,
    task_states: dict[str, str],
    reason: str | None = None,
) -> Path:
    """The run is over (its last task runs whatever failed): record every task's state and write
    the final report and the Data Docs site. ``reason`` says why Airflow failed the run as a whole
    (a timed-out run fails with no failed task)."""
    lake = Lake(Path(lake_dir), business_date)
    failed = sorted(t for t, s in task_states.items() if s in ("failed", "upstream_failed"))
    if _read_json(lake.reports / RUN_RECORD).get("run_id") != run_id:
        start_run(lake_dir, business_date, run_id)  # `plan` failed before it could
    record = _read_json(lake.reports / RUN_RECORD)
    record.update(
        run_id=run_id,
        state="failed" if failed or reason else "success",
        finished=_now(),
        tasks=dict(sorted(task_states.items())),
    )
    if reason:
        record["reason"] = reason
    write_json(record, lake.reports / RUN_RECORD)
    build_site(lake.root / "reports")
    return build_run_report(lake.root, business_date)


def finish_failed_run(
    lake_dir: str | Path,
    business_date: str,
    run_id: str,
    task_states: dict[str, str],
    reason: str,
    stopped: dict[str, str] | None = None,
) -> Path:
    """Airflow failed the run (the DAG's failure callback): make sure its report says so.

    The `report` task did not run, or did not finish, when the run hit its timeout (Airflow skips
    what is unfinished): then this writes the final report. A report the `report` task already
    finished for this run only gains the reason. ``stopped`` is {task id: why} for the tasks the run's end cut short."""
    lake = Lake(Path(lake_dir), business_date)
    record = _read_json(lake.reports / RUN_RECORD)
    if record.get("run_id") == run_id and record.get("state") in ("failed", "success") and not stopped:
        record.update(state="failed", reason=reason)
        write_json(record, lake.reports / RUN_RECORD)
        return build_run_report(lake.root, business_date)
    for task_id, why in (stopped or {}).items():
        record_failure(lake_dir, business_date, run_id, task_id, why)
    return finish_run(lake_dir, business_date, run_id, task_states, reason=reason)


def _run_sections(lake: Lake, run: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The page's head: this run's state, and for a failed run which task failed, where and why."""
    run_id = html.escape(str(run.get("run_id") or summary.get("run_id") or "-"))
    books = summary.get("books", {})
    if run.get("state") == "running":
        return [
            f"<p class='status running'>Run <b>{run_id}</b> started {html.escape(str(run.get('started')))} "
            "and is still <b>running</b>: nothing below is final.</p>"
        ]
    published = bool(summary.get("published"))
    state = run.get("state") or ("success" if published else "failed")
    finished = f" at {html.escape(str(run['finished']))}" if run.get("finished") else ""
    if run.get("reason"):
        finished += f" ({html.escape(str(run['reason']))})"
    sections = [
        f"<p class='status {'ok' if published else 'bad'}'>Business date {lake.business_date}: "
        f"<b>{'published' if published else 'NOT published'}</b>; run <b>{run_id}</b> {html.escape(state)}"
        f"{finished}; "
        f"version {html.escape(str(summary.get('version', '-')))}; "
        f"books {'balance' if books.get('balanced') else 'DO NOT balance' if books else 'not reached'}.</p>"
    ]
    tasks: dict[str, str] = run.get("tasks") or {}
    failures = {
        f["task_id"]: f
        for f in (_read_json(p) for p in sorted((lake.reports / FAILURES_DIR).glob("*.json")))
        # a task that failed and then succeeded on a retry or a re-run is no failure of this run
        if f.get("run_id") == run.get("run_id") and tasks.get(f.get("task_id")) != "success"
    }
    failed = sorted(set(failures) | {t for t, s in tasks.items() if s == "failed"})
    if failed:
        rows = []
        for task_id in failed:
            stage, source = split_task_id(task_id)
            rows.append(
                [task_id, stage, source or "(all sources)", failures.get(task_id, {}).get("error", "")]
            )
        sections.append(_table("What failed", ["task", "stage", "source", "error"], rows))
    not_done = [[t, s] for s in NOT_DONE[1:] for t, state in sorted(tasks.items()) if state == s]
    if not_done:
        sections.append(_table("Tasks that did not run their work", ["task", "state"], not_done))
    return sections


def build_run_report(lake_dir: str | Path, business_date: str) -> Path:
    """Write the run report for one business date from what the stages left behind."""
    lake = Lake(Path(lake_dir), business_date)
    run = _read_json(lake.reports / RUN_RECORD)
    summary = _read_json(lake.reports / "summary.json")
    if run and summary.get("run_id") != run.get("run_id"):
        summary = {}  # another run's (an earlier attempt at this date): not this run's outcome
    validation_dir = lake.reports / "validation"
    reports = {p.stem: _read_json(p) for p in sorted(validation_dir.glob("*.json"))}
    batches = {p.stem: _read_json(p) for p in sorted((lake.reports / "batch").glob("*.json"))}
    sources = sorted(set(reports) | set(batches))
    books = summary.get("books", {})
    sections = _run_sections(lake, run, summary)
    problems = [[name, "; ".join(b.get("problems", []))] for name, b in batches.items() if b.get("problems")]
    problems += [["books", p] for p in books.get("problems", [])]
    if problems:
        sections.append(_table("Held back or failed", ["where", "problem"], problems))
    # every registered source gets its row, one whose chain stopped early too
    reports = {name: reports.get(name, {}) for name in sorted(set(reports) | set(load_sources()))}
    rows = [
        [
            name,
            r.get("extracted", ""),
            r.get("accepted", ""),
            r.get("quarantined", ""),
            r.get("snapshot_records", ""),
            "not validated in this run"
            if not r
            else "stale (last good snapshot)"
            if r.get("stale")
            else "fresh",
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
        _bars("Quarantine by reason (this run)", quarantine_reasons(lake, sources), colour=_COLOURS[4])
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
    profiles = lake.work / PROFILES_DIR  # the night's profile shards
    if any(profiles.glob("*.parquet")):
        grades = pl.scan_parquet(profiles / "*.parquet").group_by("grade").len().sort("grade").collect()
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
        columns = load_columns()  # a total is named after the profile column it sums: its unit

        def amount(name: str, value: float) -> str:
            unit = columns[name].unit if name in columns else None
            return f"{value:,.2f}" if unit == "元" or not float(value).is_integer() else f"{value:,.0f}"

        sections.append(
            _table(
                "Reconciliation: accepted records against published profiles",
                ["total", "unit", "accepted records", "profiles"],
                [
                    [
                        k,
                        columns[k].unit if k in columns else "",
                        amount(k, v["records"]),
                        amount(k, v["profiles"]),
                    ]
                    for k, v in books["totals"].items()
                ],
            )
        )
    docs = site_index(lake.root / "reports")
    if docs.exists():
        sections.append(
            f"<p><a href='../{html.escape(docs.relative_to(lake.root / 'reports').as_posix())}"
            f"#night-{business_date}'>Data Docs</a>: every suite's results, this night and every earlier one, "
            "each expectation with its reason</p>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>credit run {business_date}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 900px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.status.ok {{ color: #2a7a3f; }} .status.bad {{ color: #b22; }} .status.running {{ color: #a60; }} .none {{ color: #777; }}
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
