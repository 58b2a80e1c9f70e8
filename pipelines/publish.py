"""Publication: a complete, self-checking version directory, then an atomic switch of ``current``.

A version is written under a hidden staging name, renamed into place, checked against its own
manifest, and only then does the ``current`` symlink move to it (``os.replace`` of a symlink is
atomic), so a reader sees yesterday's complete version or today's, never a mixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.errors import PublishError
from pipelines.lake import write_json

PROFILE_ROW_GROUP = 50_000
DATASETS = ("profiles", "links", "entities")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_name(business_date: str, run_id: str) -> str:
    """Versions sort by business date; the run id hash tells re-runs of one date apart."""
    return f"{business_date}_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"


def publish_version(
    published_root: Path,
    business_date: str,
    run_id: str,
    frames: dict[str, pl.DataFrame],
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write ``frames`` (profiles, links, entities) as a new version and make it ``current``."""
    missing = [name for name in DATASETS if name not in frames]
    if missing:
        raise PublishError(f"version for {business_date} lacks datasets {missing}; nothing published")
    version = version_name(business_date, run_id)
    published_root.mkdir(parents=True, exist_ok=True)
    # A version directory is never rewritten in place (`current` may point at it): a re-publish of
    # the same run gets the next free suffix.
    suffix = 1
    while (published_root / (version if suffix == 1 else f"{version}-{suffix}")).exists():
        suffix += 1
    if suffix > 1:
        version = f"{version}-{suffix}"
    staging = published_root / f".staging-{version}"
    if staging.exists():
        shutil.rmtree(staging)
    files: dict[str, dict[str, Any]] = {}
    for name in DATASETS:
        target = staging / name / "part-00000.parquet"
        target.parent.mkdir(parents=True)
        frames[name].write_parquet(target, compression="zstd", row_group_size=PROFILE_ROW_GROUP, statistics=True)
        files[f"{name}/{target.name}"] = {"rows": frames[name].height, "sha256": file_sha256(target)}
    manifest = {
        "version": version,
        "business_date": business_date,
        "run_id": run_id,
        "files": files,
        "counts": {name: frames[name].height for name in DATASETS},
        **metadata,
    }
    write_json(manifest, staging / "manifest.json")
    final = published_root / version
    os.replace(staging, final)
    verify_version(final)
    _switch_current(published_root, version)
    return {"version": version, "path": str(final), "profiles": frames["profiles"].height}


def verify_version(version_dir: Path) -> dict[str, Any]:
    """Refuse a version whose files do not match its manifest (missing, extra rows, changed bytes)."""
    manifest_path = version_dir / "manifest.json"
    if not manifest_path.exists():
        raise PublishError(f"{version_dir} has no manifest.json")
    manifest = json.loads(manifest_path.read_text("utf-8"))
    for relative, expected in manifest["files"].items():
        path = version_dir / relative
        if not path.exists():
            raise PublishError(f"{version_dir.name}: {relative} is missing")
        if file_sha256(path) != expected["sha256"]:
            raise PublishError(f"{version_dir.name}: {relative} does not match its manifest checksum")
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        if rows != expected["rows"]:
            raise PublishError(f"{version_dir.name}: {relative} has {rows} rows, manifest says {expected['rows']}")
    return manifest


def _switch_current(published_root: Path, version: str) -> None:
    link = published_root / "current"
    tmp = published_root / f".current-{version}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version, target_is_directory=True)
    os.replace(tmp, link)


def current_version(published_root: Path) -> str | None:
    link = published_root / "current"
    return os.readlink(link) if link.is_symlink() else None
