"""A full re-link's preparation streams the snapshot: ``prepare_canonical`` takes a lazy scan, writes
the firms' and persons' files first and the engine's normalising chunks read their own rows of the
firms' file; what it writes is what an eager input gives. The engine takes the registry's anchors as
a frame (no Python string per record) with the result a dict gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from entity_resolution import engine
from entity_resolution.internals import blocking
from entity_resolution.pipeline import IDENTITY_COLUMNS, enterprise_inputs, prepare_canonical
from entity_resolution.spec import load_spec
from pipelines.night import night_lake
from pipelines.sources.snapshot import accepted_records

DAY = "2026-11-23"


@pytest.fixture(scope="module")
def snapshot(published_lakes) -> pl.LazyFrame:  # noqa: ANN001 - the conftest factory
    """A published night's accepted records, as the stage reads them (a lazy scan)."""
    _, lake = published_lakes.lake(300, 5)
    return accepted_records(night_lake(lake, DAY)).select(IDENTITY_COLUMNS)


def _contents(folder: Path) -> dict[str, object]:
    """Every file under ``folder`` by what it holds (Parquet as frames, JSON without timings)."""
    out: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".parquet":
            out[name] = pl.read_parquet(path)
        elif path.suffix == ".npy":
            out[name] = np.load(path)
        else:
            payload = json.loads(path.read_text("utf-8"))
            if isinstance(payload, dict):
                payload.pop("clock", None)
            out[name] = payload
    return out


def test_a_lazy_snapshot_is_read_a_chunk_at_a_time_and_prepares_what_an_eager_one_does(
    snapshot: pl.LazyFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks: list[object] = []
    normalise_chunk = blocking._normalise_chunk  # noqa: SLF001

    def seen(chunk, *args):  # noqa: ANN001, ANN002, ANN202
        chunks.append(chunk)
        return normalise_chunk(chunk, *args)

    monkeypatch.setattr(blocking, "_normalise_chunk", seen)
    for kind, records in (("lazy", snapshot), ("eager", snapshot.collect())):
        (tmp_path / kind / "registry").mkdir(parents=True)
        prepare_canonical(records, "enterprise", tmp_path / kind / "registry", None, tmp_path / kind / "work")
    # each chunk is a plan reading its rows of the firms' file, never the records themselves
    assert len(chunks) == 2
    for chunk in chunks:
        assert isinstance(chunk, pl.LazyFrame)
        plan = chunk.explain()
        assert "firms.parquet" in plan and "DF [" not in plan, plan
    lazy, eager = _contents(tmp_path / "lazy" / "work"), _contents(tmp_path / "eager" / "work")
    assert lazy.keys() == eager.keys() >= {"firms.parquet", "persons.parquet", "engine/records.parquet"}
    for name, value in lazy.items():
        if isinstance(value, pl.DataFrame):
            assert_frame_equal(value, eager[name])
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, eager[name]), name
        else:
            assert value == eager[name], name
    firms = lazy["firms.parquet"]
    assert isinstance(firms, pl.DataFrame)
    persons = snapshot.filter(pl.col("code_status") == "resident_id").select(pl.len()).collect().item()
    assert firms.height + persons == snapshot.select(pl.len()).collect().item()


@pytest.mark.parametrize("fixed", [False, True], ids=["full", "incremental"])
def test_anchors_as_a_frame_give_what_a_dict_gives(
    snapshot: pl.LazyFrame, tmp_path: Path, fixed: bool
) -> None:
    spec = load_spec("enterprise")
    records = snapshot.filter(pl.col("code_status") != "resident_id").select(*enterprise_inputs()).collect()
    first = engine.link(records, spec, keep_pairs=False)
    # a registry's members: every other record with the entity it held, in a fixed order
    members = (
        first.links.select("record_id", pl.col("entity_id").alias("anchor"))
        .gather_every(2)
        .sort("anchor", "record_id", descending=[True, False])
    )
    as_dict = dict(zip(members["record_id"].to_list(), members["anchor"].to_list(), strict=True))
    results = [
        engine.link(
            records, spec, anchors=anchors, fixed_anchors=fixed, keep_pairs=False, work_dir=tmp_path / name
        )
        for name, anchors in (("dict", as_dict), ("frame", members))
    ]
    assert_frame_equal(results[0].links, results[1].links)
    assert_frame_equal(
        pl.read_parquet(tmp_path / "dict" / "anchors.parquet"),
        pl.read_parquet(tmp_path / "frame" / "anchors.parquet"),
    )
    # the anchors name the entities: the known ids are kept
    kept = results[1].links.join(members, on="record_id").filter(pl.col("entity_id") == pl.col("anchor"))
    assert kept.height > members.height // 2


def test_a_record_id_given_twice_is_refused_by_name(snapshot: pl.LazyFrame) -> None:
    records = snapshot.head(50).filter(pl.col("code_status") != "resident_id").select(*enterprise_inputs())
    twice = pl.concat([records, records.slice(7, 1)])
    name = records.slice(7, 1).collect()["record_id"][0]
    with pytest.raises(ValueError, match="must be unique") as error:
        engine.link(twice, load_spec("enterprise"))
    assert repr(name) in str(error.value)
    assert engine._duplicated_id(records, "record_id") is None  # noqa: SLF001
