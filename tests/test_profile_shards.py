"""Profiles built per shard of entities and gathered by publish: the published versions are the same
bytes whatever the shard count, a shard re-run changes nothing, and an incremental night still
builds only the profiles it must."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from foundation.errors import DataQualityError
from foundation.settings import config_path
from pipelines import night as night_files
from pipelines.profiles import stages as profile_stages
from pipelines.publish import stages as publish_stages
from pipelines.publish.versions import verify_version

pytestmark = pytest.mark.slow  # two lakes of two nights each: left out by make test-quick

FIRMS = 1200
NIGHTS = ("2026-11-22", "2026-11-23")
PARTS = (night_files.PROFILES_DIR, night_files.PROFILE_VALID_UNTIL_DIR, night_files.BUILT_PROFILES)


@pytest.fixture(scope="module")
def lakes(published_lakes, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The same two nights (a full one, then an incremental one with a source held back) published
    with the configured shard size (one shard at this size) and with shards of a fifth of the firms."""
    one = published_lakes.lake(FIRMS, 5, days=2, nights=NIGHTS)[1]
    config = tmp_path_factory.mktemp("nightly") / "nightly.toml"
    text = config_path("nightly.toml").read_text("utf-8")
    config.write_text(
        text.replace("profile_shard_entities = ", f"profile_shard_entities = {FIRMS // 5}  # was ", 1),
        "utf-8",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CREDIT_NIGHTLY_CONFIG", str(config))
        several = published_lakes.lake(FIRMS, 5, days=2, nights=NIGHTS)[1]
        yield {1: one, 5: several}


def _plan(lake: Path, day: str) -> dict:
    return json.loads((lake / "work" / day / night_files.PROFILE_PLAN).read_text("utf-8"))


def _versions(lake: Path) -> dict[str, dict]:
    """Each night's published manifest, verified against its files (per-file SHA-256)."""
    out = {}
    for day in NIGHTS:
        pointer = json.loads((lake / "registry" / day / night_files.REGISTRY_VERSION_FILE).read_text("utf-8"))
        out[day] = verify_version(lake / "published" / pointer["version"])
    return out


def test_the_shard_count_comes_from_the_setting_and_the_data(lakes: dict[int, Path]) -> None:
    """A full night cuts all its entities into shards; an incremental one cuts the entities it
    rebuilds (each shard reads the whole links file and snapshots: fewer shards, fewer passes)."""
    full, incremental = NIGHTS
    for shards, lake in lakes.items():
        work = lake / "work" / full
        entities = pl.read_parquet(work / "entities.parquet").height
        assert len(_plan(lake, full)["starts"]) == shards
        sizes = _part_sizes(work / night_files.PROFILES_DIR)
        assert len(sizes) == shards and sum(sizes) == entities and max(sizes) - min(sizes) <= 1
        work = lake / "work" / incremental
        every = pl.read_parquet(work / "entities.parquet")["entity_id"]
        entities = every.len()
        wanted = pl.read_parquet(work / night_files.PROFILES_TO_REBUILD)
        assert 0 < wanted.height < entities
        # cut where the entities to build fall, not where all do (the configured size is above the
        # firms: one shard)
        size = FIRMS // 5 if shards == 5 else 10**9
        starts = _plan(lake, incremental)["starts"]
        assert starts == profile_stages.shard_starts(wanted["entity_id"], size)
        if shards > 1:
            assert starts != profile_stages.shard_starts(every, size)
        count = len(starts)
        assert count == -(-wanted.height // size)
        sizes = _part_sizes(work / night_files.PROFILES_DIR)
        assert len(sizes) == count and sum(sizes) == entities  # every profile, built or carried over
        to_build = [wanted.filter(profile_stages.in_shard(starts, shard)).height for shard in range(count)]
        assert max(to_build) - min(to_build) <= 1
    assert (
        _plan(lakes[1], NIGHTS[0])["mode"] == "full" and _plan(lakes[1], NIGHTS[1])["mode"] == "incremental"
    )


def _part_sizes(folder: Path) -> list[int]:
    """Rows per part, the parts named in shard order (part-00000, part-00001, ...)."""
    parts = sorted(folder.glob("*.parquet"))
    assert [p.name for p in parts] == [f"part-{s:05d}.parquet" for s in range(len(parts))]
    return [pl.scan_parquet(p).select(pl.len()).collect().item() for p in parts]


def test_published_versions_are_the_same_bytes_whatever_the_shard_count(lakes: dict[int, Path]) -> None:
    one, several = _versions(lakes[1]), _versions(lakes[5])
    for day in NIGHTS:
        assert one[day]["files"] == several[day]["files"], day  # every file's rows and SHA-256
        assert one[day]["counts"]["profiles"] > 0
        # what the next night builds on: each profile's valid-until, gathered in shard order
        registry = [lake / "registry" / day / night_files.PROFILE_VALID_UNTIL for lake in lakes.values()]
        assert registry[0].read_bytes() == registry[1].read_bytes()
        reports = [
            json.loads((lake / "reports" / day / "profiles.json").read_text("utf-8"))
            for lake in lakes.values()
        ]
        assert reports[0]["grades"] == reports[1]["grades"] and reports[1]["shards"] == 5
        assert reports[0]["built"] == reports[1]["built"]


def test_each_shard_holds_a_contiguous_sorted_range(lakes: dict[int, Path]) -> None:
    day = NIGHTS[-1]
    parts = sorted((lakes[5] / "work" / day / night_files.PROFILES_DIR).glob("*.parquet"))
    ids = [pl.read_parquet(p, columns=["entity_id"])["entity_id"] for p in parts]
    assert all(part.is_sorted() for part in ids)
    assert all(left[-1] < right[0] for left, right in zip(ids, ids[1:], strict=False))
    starts = _plan(lakes[5], day)["starts"]
    assert [part[0] for part in ids[1:]] == starts[1:]


def test_an_incremental_night_builds_only_the_profiles_it_must_in_every_shard(lakes: dict[int, Path]) -> None:
    day = NIGHTS[-1]
    work = {shards: lake / "work" / day for shards, lake in lakes.items()}
    wanted = pl.read_parquet(work[5] / night_files.PROFILES_TO_REBUILD)
    built = {
        shards: pl.read_parquet(folder / night_files.BUILT_PROFILES / "*.parquet").sort("entity_id")
        for shards, folder in work.items()
    }
    assert built[1].equals(built[5])  # the same rows built, cut differently
    assert set(built[5]["entity_id"]) <= set(wanted["entity_id"])
    profiles = (
        pl.scan_parquet(work[5] / night_files.PROFILES_DIR / "*.parquet").select(pl.len()).collect().item()
    )
    assert 0 < built[5].height < profiles
    per_shard = _part_sizes(work[5] / night_files.BUILT_PROFILES)
    assert len(per_shard) == len(_plan(lakes[5], day)["starts"]) and sum(per_shard) == built[5].height


def test_a_shard_re_run_writes_the_same_files(lakes: dict[int, Path], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(lakes[5], lake, symlinks=True)
    day = NIGHTS[-1]
    before = {folder: _bytes(lake / "work" / day / folder) for folder in PARTS}
    again = profile_stages.build_profiles(str(lake), day, shard=2)
    assert again["shard"] == 2 and again["mode"] == "incremental" and 0 < again["built"] <= again["profiles"]
    assert {folder: _bytes(lake / "work" / day / folder) for folder in PARTS} == before
    with pytest.raises(ValueError, match="no profile shard 5"):
        profile_stages.build_profiles(str(lake), day, shard=5)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def test_the_gather_refuses_a_missing_shard_and_a_profile_in_two_shards(
    lakes: dict[int, Path], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(lakes[5], lake, symlinks=True)
    day = NIGHTS[-1]
    profiles = lake / "work" / day / night_files.PROFILES_DIR
    assert publish_stages.validate_profiles(str(lake), day)["profiles"] == sum(
        pl.read_parquet(p).height for p in profiles.glob("*.parquet")
    )
    moved = night_files.part_path(profiles, 3).rename(tmp_path / "part-3.parquet")
    with pytest.raises(FileNotFoundError, match=r"profile shards \[3\]"):
        publish_stages.validate_profiles(str(lake), day)
    # a profile of shard 2 written into shard 3 as well
    third = pl.read_parquet(moved)
    stray = pl.read_parquet(night_files.part_path(profiles, 2)).tail(1)
    pl.concat([stray, third]).write_parquet(night_files.part_path(profiles, 3))
    with pytest.raises(DataQualityError, match="more than one profile"):
        publish_stages.validate_profiles(str(lake), day)


def test_plan_cuts_ids_into_near_equal_contiguous_ranges() -> None:
    ids = pl.Series([f"E{i:05d}" for i in range(23)]).shuffle(seed=1)
    starts = profile_stages.shard_starts(ids, 5)
    assert len(starts) == 5  # ceil(23 / 5)
    frame = pl.DataFrame({"entity_id": ids})
    sizes = [frame.filter(profile_stages.in_shard(starts, s)).height for s in range(5)]
    assert sum(sizes) == 23 and max(sizes) - min(sizes) <= 1
    assert profile_stages.shard_starts(ids, 23) == ["E00000"]  # one shard when all fit
    assert profile_stages.shard_starts(pl.Series([], dtype=pl.String), 5) == [""]  # one empty shard
    assert frame.filter(profile_stages.in_shard([""], 0)).height == 23


def test_the_shard_size_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "nightly.toml"
    monkeypatch.setenv("CREDIT_NIGHTLY_CONFIG", str(own))
    for body, error in (
        ("[mapping]\nprofile_shard_entities = 0\n", ValueError),
        ('[mapping]\nprofile_shard_entities = "many"\n', ValueError),
        ("[retry]\nretries = 1\n", KeyError),
    ):
        own.write_text(body, "utf-8")
        with pytest.raises(error, match="profile_shard_entities"):
            profile_stages.profile_shard_entities()
    own.write_text("[mapping]\nprofile_shard_entities = 7\n", "utf-8")
    assert profile_stages.profile_shard_entities() == 7
