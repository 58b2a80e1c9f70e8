"""The entity registry's commit: the registry the night's resolution kept aside (LAKE/work/<date>/
registry) becomes the published night's (LAKE/registry/<date>/), once its version is live."""

from __future__ import annotations

import os
import shutil

from foundation.lake import Lake, replace_dir, write_json
from pipelines.night import PROFILE_BASIS, PROFILE_VALID_UNTIL, REGISTRY_DIR, REGISTRY_VERSION_FILE


def link_or_copy(source: str, target: str) -> None:
    """``copy_function`` for the registry's folders: its files are only ever replaced whole (atomic
    writes), never written in place, so a hard link (no bytes copied) is as good as a copy; a copy
    where the file system refuses one."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def commit_registry(lake: Lake, version: str) -> None:
    """Publish the night's registry beside the version it belongs to (no registry: nothing to do)."""
    if not (lake.work / "registry").is_dir():
        return
    staging = lake.root / REGISTRY_DIR / f".{lake.business_date}.new"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(lake.work / "registry", staging, copy_function=link_or_copy)
    for name in (PROFILE_VALID_UNTIL, PROFILE_BASIS):  # what tomorrow's profiles build on
        if (lake.work / name).exists():
            shutil.copyfile(lake.work / name, staging / name)
    write_json({"version": version}, staging / REGISTRY_VERSION_FILE)
    replace_dir(staging, lake.root / REGISTRY_DIR / lake.business_date)
