"""Watermarks: what each source's last *published* run saw, so the next run pulls only changes.

``LAKE/state/watermarks.json`` holds, per source and business date, the newest watermark seen, the
source's row count and the accepted snapshot that run published. Entries are written by the
publish stage only after the version is live, so a run that fails leaves the watermarks where they
were. A run for date D builds on the latest entry *before* D; re-running D therefore starts from
the same base and gives the same result, with no duplicates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from foundation.lake import write_json


@dataclass(frozen=True)
class Watermark:
    business_date: str
    newest: str | None  # newest watermark value seen before that date's cutoff
    source_rows: int  # rows the source held then (the volume check's reference)
    snapshot: Path  # the accepted snapshot published that day (the last good data)
    stale: bool = False  # that day's data was itself a fallback

    def since(self) -> datetime | None:
        return datetime.fromisoformat(self.newest) if self.newest else None


def state_file(lake_root: Path) -> Path:
    return lake_root / "state" / "watermarks.json"


def _load(lake_root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    path = state_file(lake_root)
    return json.loads(path.read_text("utf-8")) if path.exists() else {}


def previous(lake_root: Path, source: str, business_date: str) -> Watermark | None:
    """The latest published state of ``source`` strictly before ``business_date`` whose snapshot
    still exists (None: nothing published yet, pull everything)."""
    entries = _load(lake_root).get(source, {})
    for day in sorted(entries, reverse=True):
        if day >= business_date:
            continue
        entry = entries[day]
        snapshot = lake_root / entry["snapshot"]
        if snapshot.exists():
            return Watermark(
                day,
                entry.get("newest"),
                int(entry.get("source_rows", 0)),
                snapshot,
                bool(entry.get("stale", False)),
            )
    return None


def record(lake_root: Path, business_date: str, sources: dict[str, dict[str, Any]]) -> None:
    """Advance the watermarks after a successful publish (one atomic write for all sources)."""
    state = _load(lake_root)
    for name, entry in sources.items():
        snapshot = Path(entry["snapshot"])
        state.setdefault(name, {})[business_date] = {
            "newest": entry.get("newest"),
            "source_rows": int(entry.get("source_rows", 0)),
            "snapshot": str(snapshot.relative_to(lake_root) if snapshot.is_absolute() else snapshot),
            "stale": bool(entry.get("stale", False)),
        }
    write_json(state, state_file(lake_root))
