"""Publishing: complete versions only, atomic switch of `current`, manifests that are checked."""

import os
from pathlib import Path

import polars as pl
import pytest

from pipelines.errors import PublishError
from pipelines.publish import current_version, publish_version, verify_version


def frames(n: int) -> dict[str, pl.DataFrame]:
    ids = [f"E{i:03d}" for i in range(n)]
    return {
        "profiles": pl.DataFrame({"entity_id": ids, "grade": ["A"] * n}),
        "links": pl.DataFrame({"source": ["lending"] * n, "source_record_id": ids, "entity_id": ids}),
        "entities": pl.DataFrame({"entity_id": ids}),
    }


def test_publish_switches_current_to_a_complete_version(tmp_path: Path) -> None:
    first = publish_version(tmp_path, "2026-11-22", "run-1", frames(3), {})
    assert current_version(tmp_path) == first["version"]
    second = publish_version(tmp_path, "2026-11-23", "run-2", frames(5), {})
    assert current_version(tmp_path) == second["version"]
    assert (tmp_path / "current").is_symlink()
    profiles = pl.read_parquet(tmp_path / "current" / "profiles" / "*.parquet")
    assert profiles.height == 5
    assert (tmp_path / first["version"]).is_dir()  # the previous version stays readable
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_incomplete_version_is_refused_and_current_kept(tmp_path: Path) -> None:
    first = publish_version(tmp_path, "2026-11-22", "run-1", frames(3), {})
    partial = frames(4)
    del partial["links"]
    with pytest.raises(PublishError, match="lacks datasets"):
        publish_version(tmp_path, "2026-11-23", "run-2", partial, {})
    assert current_version(tmp_path) == first["version"]


def test_verify_refuses_a_version_that_does_not_match_its_manifest(tmp_path: Path) -> None:
    result = publish_version(tmp_path, "2026-11-22", "run-1", frames(3), {})
    version = Path(result["path"])
    assert verify_version(version)["counts"]["profiles"] == 3
    pl.DataFrame({"entity_id": ["tampered"]}).write_parquet(version / "entities" / "part-00000.parquet")
    with pytest.raises(PublishError, match="checksum"):
        verify_version(version)
    other = Path(publish_version(tmp_path, "2026-11-23", "run-2", frames(3), {})["path"])
    os.remove(other / "links" / "part-00000.parquet")
    with pytest.raises(PublishError, match="links/part-00000.parquet is missing"):
        verify_version(other)


def test_same_run_republished_gives_identical_files(tmp_path: Path) -> None:
    a = publish_version(tmp_path / "a", "2026-11-23", "run-1", frames(4), {})
    b = publish_version(tmp_path / "b", "2026-11-23", "run-1", frames(4), {})
    assert a["version"] == b["version"]
    for name in ("profiles", "links", "entities"):
        left = (Path(a["path"]) / name / "part-00000.parquet").read_bytes()
        right = (Path(b["path"]) / name / "part-00000.parquet").read_bytes()
        assert left == right


def test_republishing_a_run_never_rewrites_the_current_version(tmp_path: Path) -> None:
    first = publish_version(tmp_path, "2026-11-23", "run-1", frames(3), {})
    before = (Path(first["path"]) / "profiles" / "part-00000.parquet").read_bytes()
    again = publish_version(tmp_path, "2026-11-23", "run-1", frames(3), {})
    assert again["version"] == first["version"] + "-2"
    assert current_version(tmp_path) == again["version"]
    assert (Path(first["path"]) / "profiles" / "part-00000.parquet").read_bytes() == before
