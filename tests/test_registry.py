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


def test_a_night_s_representatives_are_stored_with_their_keys_in_one_write(tmp_path: Path) -> None:
    """``update(..., keys_of=...)`` keys tonight's representatives before it writes them: the same
    file as an update followed by ``key_representatives`` (a second read and write of them all)."""
    from entity_resolution.pipeline import blocking_keys
    from entity_resolution.spec import load_spec

    spec = load_spec("enterprise")
    keys_of = lambda reps: blocking_keys(reps, spec)  # noqa: E731
    names = ["宁波华兴电子科技有限公司", "杭州明远贸易有限公司", "温州东升鞋业有限公司"]

    def records(ids: range, night: str) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "record_id": [f"tax:{n:04d}" for n in ids],
                "name": [names[n % 3] + ("" if night == "n1" else "分公司" * (n % 2)) for n in ids],
                "uscc": [None] * len(ids),
                "legal_rep": [f"张{n % 5}" for n in ids],
            }
        )

    first, second = records(range(30), "n1"), records(range(20, 40), "n2")

    def links(frame: pl.DataFrame, prefix: str) -> pl.DataFrame:
        entity = pl.lit(prefix) + (pl.int_range(pl.len()) % 4).cast(pl.String)
        return frame.select("record_id", entity.alias("entity_id"))

    folders = {}
    for way in ("one write", "keyed after"):
        registry = Registry(tmp_path / way)
        registry.update(links(first, "E"), first, "n1")
        registry.key_representatives(keys_of)
        members = registry.members()
        if way == "one write":
            registry.update(links(second, "N"), second, "n2", partial=True, members=members, keys_of=keys_of)
        else:
            registry.update(links(second, "N"), second, "n2", partial=True)
            registry.key_representatives(keys_of)
        folders[way] = registry
    one, after = (pl.read_parquet(r.representatives_path) for r in folders.values())
    assert one["block_keys"].null_count() == 0 and one.height > 0
    assert one.equals(after)
    assert one.filter(pl.col("entity_id").str.starts_with("N")).height > 0  # (tonight's firms')
    assert folders["one write"].members().equals(folders["keyed after"].members())


def _representatives_in_memory(
    stored: pl.DataFrame, records: pl.DataFrame, now: pl.DataFrame, previous: pl.DataFrame
) -> pl.DataFrame:
    """An incremental night's representatives as the rule says, all in memory: the stored ones whose
    record did not change follow their record's entity; the entities that gained, lost or changed
    records choose theirs again from what they hold; sorted by entity and record."""
    from entity_resolution.registry import representatives_of

    tonight = records.join(now, on="record_id")
    kept = (
        stored.join(tonight.select("record_id"), on="record_id", how="anti")
        .join(now, on="record_id", how="left", suffix="_now")
        .with_columns(pl.coalesce("entity_id_now", "entity_id").alias("entity_id"))
        .drop("entity_id_now")
    )
    both = pl.concat([kept, tonight.select(kept.columns)])
    affected = pl.concat([now["entity_id"], previous.join(now, on="record_id", how="semi")["entity_id"]])
    again = pl.col("entity_id").is_in(affected.implode())
    return pl.concat([both.filter(~again), representatives_of(both.filter(again))]).sort(
        "entity_id", "record_id"
    )


def test_a_night_streams_the_stored_representatives_and_merges_the_chosen_in_order(tmp_path: Path) -> None:
    """A partial update streams the stored representatives (many row groups here) and merges the
    entities chosen again into them: the file is the one the rule gives in memory, in entity and
    record order; a stored file out of that order is sorted rather than merged wrongly."""
    names = ["华兴电子", "明远贸易", "东升鞋业", "恒通物流", "金桥建材"]

    def records(ids: range, night: str) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "record_id": [f"tax:{n:05d}" for n in ids],
                "name": [f"{names[n % 5]}{n % 7}{night}有限公司" for n in ids],
                "uscc": [None] * len(ids),
                "legal_rep": [f"张{n % 3}" for n in ids],
            }
        )

    first = records(range(4000), "甲")
    first_links = first.select(
        "record_id", (pl.lit("E") + (pl.int_range(pl.len()) % 300).cast(pl.String)).alias("entity_id")
    )
    # tonight: some stored records change, some are new, and one entity is renamed (X -> a USCC)
    second = records(range(3900, 4200), "乙")
    second_links = second.select(
        "record_id", (pl.lit("E") + (pl.int_range(pl.len()) % 7).cast(pl.String)).alias("entity_id")
    )
    for shuffled in (False, True):
        registry = Registry(tmp_path / f"shuffled-{shuffled}")
        registry.update(first_links, first, "n1")
        stored = pl.read_parquet(registry.representatives_path)
        assert stored.height > 500
        (stored.sample(fraction=1.0, shuffle=True, seed=2) if shuffled else stored).write_parquet(
            registry.representatives_path, row_group_size=50
        )
        previous = registry.members()
        renamed = previous.filter(pl.col("entity_id") == "E11").with_columns(
            entity_id=pl.lit("91330000MA2AAAAA1X")
        )
        now = pl.concat(
            [
                second_links,
                renamed.select("record_id", "entity_id").join(second_links, on="record_id", how="anti"),
            ]
        )
        expected = _representatives_in_memory(stored, second, now, previous)
        registry.update(now, second, "n2", partial=True, members=previous)
        written = pl.read_parquet(registry.representatives_path)
        assert written.equals(expected.select(written.columns))
        assert written.filter(pl.col("entity_id") == "91330000MA2AAAAA1X").height > 0
        assert written.filter(pl.col("entity_id") == "E11").height == 0
