"""The entity registry's files after a night (entity_resolution/registry.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from entity_resolution.registry import Registry


def test_a_partial_registry_update_merges_the_night_s_members_in_record_id_order(tmp_path: Path) -> None:
    """An incremental night's members are merged into the kept ones, not sorted whole again: the
    table is the one a sort gives, each record's first night kept and tonight's last night set."""
    registry = Registry(tmp_path / "registry")
    ids = [f"lending:{n:05d}" for n in range(0, 3000, 3)]
    registry.record_members(
        pl.DataFrame({"record_id": ids, "entity_id": [f"E{n % 40}" for n in range(1000)]}), "n1"
    )
    # tonight: some records move, some are new (between and after the known ids)
    tonight = pl.DataFrame(
        {
            "record_id": [
                "lending:00003",
                "lending:00004",
                "lending:02998",
                "lending:09999",
                "lending:00000",
            ],
            "entity_id": ["E7", "E7", "E1", "E2", "E3"],
        }
    )
    registry.record_members(tonight, "n2", partial=True)
    members = registry.members()
    assert members["record_id"].is_sorted() and members.height == 1000 + 3
    assert members["record_id"].to_list() == sorted(set(ids) | set(tonight["record_id"]))
    seen = dict(
        zip(members["record_id"], zip(members["first_seen"], members["last_seen"], strict=True), strict=True)
    )
    assert seen["lending:00003"] == ("n1", "n2") and seen["lending:00004"] == ("n2", "n2")
    assert seen["lending:00006"] == ("n1", "n1")
    moved = dict(zip(members["record_id"], members["entity_id"], strict=True))
    assert moved["lending:00000"] == "E3" and moved["lending:00006"] == "E2"
