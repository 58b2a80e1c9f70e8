"""Publishing: complete versions only, atomic switch of `current`, manifests that are checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from foundation.errors import PublishError
from pipelines.publish.versions import current_version, prune_versions, publish_version, verify_version


def frames(n: int) -> dict[str, pl.DataFrame]:
    ids = [f"E{i:03d}" for i in range(n)]
    return {
        "profiles": pl.DataFrame({"entity_id": ids, "grade": ["A"] * n, "score": [950] * n}),
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


def deduction(rule: str, *records: str) -> dict:
    return {
        "rule": rule,
        "source": records[0].split(":")[0],
        "points": 10,
        "records": list(records),
        "reason": rule,
    }


def veto(name: str, *records: str) -> dict:
    return {"list": name, "source": records[0].split(":")[0], "records": list(records), "reason": name}


def test_changes_name_grade_moves_new_records_and_merges(tmp_path: Path) -> None:
    before = {
        "profiles": pl.DataFrame(
            {
                "entity_id": ["A", "B", "C", "X"],
                "grade": ["A", "B", "A", "A"],
                "score": [950, 800, 990, 900],
                "deductions": [
                    [deduction("tax_rating_c", "tax:T1")],
                    [deduction("loan_special_mention", "lending:2")],
                    [],
                    [],
                ],
                "vetoes": [[], [], [], [veto("serious_dishonesty", "violations:7")]],
            }
        ),
        "links": pl.DataFrame(
            {
                "source": ["lending"] * 5,
                "source_record_id": ["1", "2", "3", "4", "5"],
                "entity_id": ["A", "B", "C", "X", "X"],
            }
        ),
        "entities": pl.DataFrame({"entity_id": ["A", "B", "C", "X"]}),
    }
    after = {
        "profiles": pl.DataFrame(
            {
                "entity_id": ["A", "B", "C", "D"],
                "grade": ["A", "D", "A", "A"],
                "score": [950, 500, 990, 1000],
                "deductions": [
                    [],
                    [
                        deduction("loan_special_mention", "lending:2", "lending:8"),
                        deduction("penalty", "violations:9"),
                    ],
                    [],
                    [],
                ],
                "vetoes": [[], [], [], [veto("serious_dishonesty", "violations:7")]],
            }
        ),
        "links": pl.DataFrame(
            {
                "source": ["lending"] * 5,
                "source_record_id": ["1", "2", "4", "5", "6"],
                "entity_id": ["A", "B", "C", "C", "D"],
            }
        ),
        "entities": pl.DataFrame({"entity_id": ["A", "B", "C", "D"]}),
    }
    publish_version(tmp_path, "2026-11-22", "run-1", before, {})
    result = publish_version(tmp_path, "2026-11-23", "run-2", after, {})
    changes = pl.read_parquet(Path(result["path"]) / "changes" / "*.parquet")
    rows = {
        (r["entity_id"], r["change"], r["detail"], r["related_entity_id"])
        for r in changes.iter_rows(named=True)
    }
    assert ("B", "grade_changed", "B -> D (score 800 -> 500)", None) in rows
    assert ("D", "new_firm", "grade A", None) in rows
    assert ("X", "firm_gone", "was grade A", None) in rows
    assert ("D", "new_record", "lending:6", None) in rows
    assert ("C", "record_gone", "lending:3", None) in rows
    assert ("C", "renumbered_from", "2 record(s)", "X") in rows  # X's records now belong to C
    assert ("A", "reason_expired", "tax_rating_c: tax:T1", None) in rows
    assert ("B", "reason_added", "penalty: violations:9", None) in rows
    # a second record under a rule already in force is one change, not the whole reason again
    assert ("B", "reason_added", "loan_special_mention: lending:8", None) in rows
    assert not any(r[1] == "reason_expired" and r[0] == "B" for r in rows)
    manifest = json.loads((Path(result["path"]) / "manifest.json").read_text("utf-8"))
    assert manifest["previous_version"].startswith("2026-11-22_") and manifest["counts"]["changes"] == len(
        rows
    )


def test_old_versions_are_pruned_but_never_current(tmp_path: Path) -> None:
    old = publish_version(tmp_path, "2026-09-01", "run-0", frames(2), {})
    mid = publish_version(tmp_path, "2026-11-01", "run-1", frames(2), {})
    new = publish_version(tmp_path, "2026-11-23", "run-2", frames(2), {})
    assert mid["pruned"] == [old["version"]]  # retention_days = 30 in config/publishing.toml
    assert new["pruned"] == []
    assert (tmp_path / mid["version"]).is_dir() and not (tmp_path / old["version"]).exists()
    assert prune_versions(tmp_path, "2027-06-01", keep_days=1) == [mid["version"]]
    assert current_version(tmp_path) == new["version"] and (tmp_path / new["version"]).is_dir()


STREAMED_WRITE = """
import sys
from pathlib import Path
import polars as pl
from foundation.lake import write_parquet
folder = Path(sys.argv[1])
joined = pl.scan_parquet(folder / "now.parquet").join(
    pl.scan_parquet(folder / "before.parquet"), on="record_id", how="left", maintain_order="left"
)
write_parquet(joined, Path(sys.argv[2]))
"""


def test_a_streamed_write_gives_the_same_bytes_whatever_the_threads(tmp_path: Path) -> None:
    """The registry's members are streamed from a join; with the engine's morsels as row groups
    their bytes changed from run to run (the content did not)."""
    ids = pl.int_range(600_000, eager=True).cast(pl.String).str.zfill(7)
    pl.DataFrame({"record_id": ids, "entity_id": ids.str.slice(0, 5)}).write_parquet(tmp_path / "now.parquet")
    before = pl.DataFrame({"record_id": ids[::3], "first_seen": ["2026-11-01"] * len(ids[::3])})
    before.write_parquet(tmp_path / "before.parquet")
    written = []
    for threads in (1, 2, 4):
        target = tmp_path / f"members-{threads}.parquet"
        subprocess.run(
            [sys.executable, "-c", STREAMED_WRITE, str(tmp_path), str(target)],
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "POLARS_MAX_THREADS": str(threads)},
        )
        written.append(target.read_bytes())
    assert pl.read_parquet(tmp_path / "members-1.parquet").height == 600_000
    assert written[0] == written[1] == written[2]
