"""One offline Data Docs site for every night's Great Expectations validation results.

GX's own Data Docs pages load Bootstrap, jQuery, Vega and Font Awesome from CDNs, and the
installed ``great_expectations`` package ships none of them (only its own CSS, fonts and images),
so they cannot be vendored: offline the pages are unstyled, and GX's index lists no validation
results. This module renders the validation results GX stores (``<gx project>/uncommitted/
validations/**.json``, one project per night under ``LAKE/reports/<date>/gx``) into plain static
HTML with inline CSS and nothing fetched: an index listing each night's validations, newest first,
and one page per validation showing every expectation with its ``meta.reason`` and what was found.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.lake import SITE_DIR, atomic_path

#: where, under a night's GX project root, GX keeps its validation results
RESULTS_DIR = Path("gx") / "uncommitted" / "validations"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; } td, th { border: 1px solid #ccc; padding: 3px 8px;
text-align: left; vertical-align: top; } th { background: #f3f3f3; }
.ok { color: #2a7a3f; font-weight: 600; } .bad { color: #b22; font-weight: 600; }
code { font-size: 12px; } .muted { color: #666; }
"""


@dataclass(frozen=True)
class StoredResult:
    """One stored GX validation result of one night."""

    night: str
    path: Path
    result: dict[str, Any]

    @property
    def suite(self) -> str:
        return str(self.result.get("suite_name") or self.path.parts[-4])

    @property
    def run_time(self) -> str:
        run_id = self.result.get("meta", {}).get("run_id") or {}
        return str(run_id.get("run_time") or self.path.parts[-2])

    @property
    def page(self) -> str:
        """The result's page, relative to the site root (stable: night, suite and run time)."""
        stamp = "".join(c if c.isalnum() else "-" for c in self.run_time)
        return f"{self.night}/{self.suite}__{stamp}.html"


def site_index(reports_root: Path) -> Path:
    """The site's index page for a lake's ``reports`` folder."""
    return reports_root / SITE_DIR / "index.html"


def stored_results(reports_root: Path) -> list[StoredResult]:
    """Every stored validation result of every night, newest night first, then suite and time."""
    found = [
        StoredResult(night=path.relative_to(reports_root).parts[0], path=path, result=_load(path))
        for path in reports_root.glob(f"*/gx/{RESULTS_DIR.as_posix()}/**/*.json")
    ]
    found.sort(key=lambda r: (r.night, r.suite, r.run_time))
    found.sort(key=lambda r: r.night, reverse=True)  # stable: suites and times stay ascending
    return found


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable GX validation result {path}: {exc}") from exc


def _page(title: str, body: str, depth: int) -> str:
    home = (
        f'<p class="muted"><a href="{"../" * depth}index.html">Data Docs: every night</a></p>'
        if depth
        else ""
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{home}"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _verdict(success: Any) -> str:
    return "<span class='ok'>passed</span>" if success else "<span class='bad'>FAILED</span>"


def _columns(kwargs: dict[str, Any]) -> str:
    names = [kwargs[k] for k in ("column", "column_A", "column_B") if kwargs.get(k)]
    names += list(kwargs.get("column_list") or [])
    where = f" where {kwargs['row_condition']}" if kwargs.get("row_condition") else ""
    return ", ".join(str(n) for n in names) + where


def _found(outcome: dict[str, Any]) -> str:
    """What the expectation found: unexpected rows and examples, or the observed value, or the error."""
    exception = outcome.get("exception_info") or {}
    if exception.get("raised_exception"):
        return f"error: {exception.get('exception_message')}"
    result = outcome.get("result") or {}
    if "unexpected_count" in result:
        found = f"{result['unexpected_count']:,} unexpected"
        if result.get("unexpected_percent") is not None:
            found += f" ({result['unexpected_percent']:.3g} %)"
        examples = result.get("partial_unexpected_list") or []
        if examples:
            found += "; e.g. " + ", ".join(
                json.dumps(v, ensure_ascii=False, default=str) for v in examples[:5]
            )
        return found
    if "observed_value" in result:
        observed = json.dumps(result["observed_value"], ensure_ascii=False, default=str)
        return "observed " + (observed if len(observed) <= 300 else observed[:300] + " … (shortened)")
    return ""


def _result_page(stored: StoredResult) -> str:
    statistics = stored.result.get("statistics") or {}
    rows = []
    for outcome in stored.result.get("results") or []:
        config = outcome.get("expectation_config") or {}
        kwargs = {k: v for k, v in (config.get("kwargs") or {}).items() if k not in ("batch_id",)}
        reason = (config.get("meta") or {}).get("reason", "")
        rows.append(
            "<tr>"
            f"<td>{_verdict(outcome.get('success'))}</td>"
            f"<td>{html.escape(reason)}</td>"
            f"<td><code>{html.escape(str(config.get('type', '')))}</code></td>"
            f"<td>{html.escape(_columns(kwargs))}</td>"
            f"<td>{html.escape(_found(outcome))}</td>"
            "</tr>"
        )
    body = (
        f"<p>Night {html.escape(stored.night)}, validated {html.escape(stored.run_time)}: "
        f"{_verdict(stored.result.get('success'))}; {statistics.get('successful_expectations', '?')} of "
        f"{statistics.get('evaluated_expectations', '?')} expectations met.</p>"
        "<table><tr><th>verdict</th><th>why this is expected (meta.reason)</th><th>expectation</th>"
        f"<th>columns</th><th>found</th></tr>{''.join(rows)}</table>"
    )
    return _page(f"{stored.suite}: {stored.night}", body, depth=1)


def _index_page(results: list[StoredResult]) -> str:
    nights: dict[str, list[StoredResult]] = {}
    for stored in results:
        nights.setdefault(stored.night, []).append(stored)
    sections = []
    for night, validations in nights.items():
        failed = sum(not v.result.get("success") for v in validations)
        rows = "".join(
            "<tr>"
            f"<td><a href='{html.escape(v.page)}'>{html.escape(v.suite)}</a></td>"
            f"<td>{html.escape(v.run_time)}</td><td>{_verdict(v.result.get('success'))}</td>"
            f"<td>{(v.result.get('statistics') or {}).get('successful_expectations', '?')} / "
            f"{(v.result.get('statistics') or {}).get('evaluated_expectations', '?')}</td>"
            "</tr>"
            for v in validations
        )
        sections.append(
            f"<h2 id='night-{html.escape(night)}'>Night {html.escape(night)}: {len(validations)} validations"
            f"{f', {failed} failed' if failed else ''}</h2>"
            "<table><tr><th>suite</th><th>validated at</th><th>verdict</th><th>expectations met</th></tr>"
            f"{rows}</table>"
        )
    body = "".join(sections) or "<p class='muted'>no validation results stored yet</p>"
    return _page("Data quality: every night's validations", body, depth=0)


def build_site(reports_root: Path) -> Path:
    """Write the pages of results not yet rendered and the index; every page is written aside, then
    renamed."""
    results = stored_results(reports_root)
    site = reports_root / SITE_DIR
    for stored in results:
        target = site / stored.page
        if target.exists():  # a stored result never changes: its page is written once
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_text(_result_page(stored), "utf-8")
    index = site_index(reports_root)
    index.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(index) as tmp:
        tmp.write_text(_index_page(results), "utf-8")
    return index
