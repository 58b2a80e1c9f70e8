"""The nightly resolver (the engine through entity_resolution/pipeline.py): codes, crosswalks,
near-miss codes, names, and never two valid USCCs in one firm — the cases the retired rules
resolver was tested on."""

from datetime import date, datetime

import polars as pl
import pytest

from entity_resolution.evaluate import evaluate
from entity_resolution.pipeline import IDENTITY_COLUMNS, resolve_canonical
from foundation.identifiers import is_valid_uscc, org_code_check_char, reg_no_check_digit, uscc_check_char
from pipelines import flow


def uscc(prefix: str, org_body: str) -> str:
    """A valid USCC: 8 characters of registration authority and division, then a valid org code."""
    body17 = prefix + org_body + org_code_check_char(org_body)
    return body17 + uscc_check_char(body17)


HUAXING = uscc("91330203", "MA2A1B2C")
HUAXING_STAR = uscc("91330203", "MA2A1B2D")
BEIJING = uscc("91110108", "MA0B2C3D")
REG_NO = "33020300003063" + reg_no_check_digit("33020300003063")
COLUMNS = [
    "source",
    "source_record_id",
    "subject_name",
    "code_raw",
    "uscc",
    "org_code",
    "reg_no",
    "code_status",
]


def frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=COLUMNS, orient="row").with_columns(
        legal_rep=pl.lit(None, pl.String),
        authority=pl.lit(None, pl.String),
        headcount=pl.lit(None, pl.Int64),
        score=pl.lit(None, pl.Float64),
        updated_at=pl.lit(datetime(2026, 11, 1)),
    )


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """Canonical records of 600 generated firms: the engine learns its model from data, so the
    hand-made cases below are resolved among realistic records, as they would be in the nightly."""
    from credit_synthetic.generate import generate

    root = tmp_path_factory.mktemp("resolve")
    generate(root / "sources", entities=600, seed=13, end_date=date(2026, 11, 23), faults="none")
    flow.run_all(str(root / "sources"), str(root / "lake"), "2026-11-23", run_id="background")
    return pl.read_parquet(root / "lake" / "accepted" / "2026-11-23" / "*.parquet").select(IDENTITY_COLUMNS)


def resolve(background: pl.DataFrame, records: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Links and entities of the hand-made ``records`` resolved together with the background."""
    records = records.select(IDENTITY_COLUMNS)
    resolution = resolve_canonical(pl.concat([background, records], how="vertical_relaxed"))
    ours = records.select("source", "source_record_id")
    return (
        resolution.links.join(ours, on=["source", "source_record_id"], how="semi"),
        resolution.entities,
    )


def entity_of(links: pl.DataFrame, record_id: str) -> str:
    return links.filter(pl.col("source_record_id") == record_id)["entity_id"].item()


def test_codes_names_and_hard_negatives(background: pl.DataFrame) -> None:
    typo = HUAXING[:5] + ("1" if HUAXING[5] != "1" else "2") + HUAXING[6:]
    assert all(map(is_valid_uscc, (HUAXING, HUAXING_STAR, BEIJING))) and not is_valid_uscc(typo)
    records = frame(
        [
            (
                "zz_lending",
                "1",
                "宁波海曙华兴电子科技有限公司",
                HUAXING,
                HUAXING,
                HUAXING[8:17],
                None,
                "valid",
            ),
            ("zz_lending", "2", "华兴电子科技（宁波）有限公司", None, None, None, None, "missing"),
            ("zz_tax", "3", "華興電子科技有限責任公司", HUAXING[8:17], None, HUAXING[8:17], None, "org_code"),
            (
                "tax",
                "4",
                "宁波华星电子科技有限公司",
                HUAXING_STAR,
                HUAXING_STAR,
                HUAXING_STAR[8:17],
                None,
                "valid",
            ),
            ("zz_contract", "5", "华兴电子科技", typo, None, None, None, "invalid"),
            (
                "zz_violations",
                "6",
                "北京华兴电子科技有限公司",
                BEIJING,
                BEIJING,
                BEIJING[8:17],
                None,
                "valid",
            ),
            ("zz_violations", "7", "华兴电子科技(北京)有限公司", None, None, None, None, "missing"),
            ("zz_violations", "8", "宁波华兴电子科技有限公司海曙分公司", None, None, None, None, "missing"),
            ("zz_tax", "9", "宁波华星电子科技有限公司", None, None, None, REG_NO, "reg_no"),
            (
                "zz_tax",
                "10",
                "宁波华星电子科技有限公司",
                HUAXING_STAR,
                HUAXING_STAR,
                HUAXING_STAR[8:17],
                REG_NO,
                "valid",
            ),
        ]
    )
    links, entities = resolve(background, records)
    assert links.height == records.height
    for rid in ("1", "2", "3", "5"):
        assert entity_of(links, rid) == HUAXING, rid
    assert entity_of(links, "4") == HUAXING_STAR
    assert entity_of(links, "9") == HUAXING_STAR  # old registration number cross-walked
    assert entity_of(links, "6") == entity_of(links, "7") == BEIJING  # region in brackets decides
    assert entity_of(links, "8") not in (HUAXING, HUAXING_STAR)  # a branch is not its head office
    methods = dict(zip(links["source_record_id"], links["match_method"], strict=True))
    assert methods["1"] == methods["4"] == methods["6"] == "uscc"
    assert methods["3"] == methods["9"] == "code_crosswalk"  # organization code, old registration number
    assert methods["2"] == methods["5"] == methods["7"] == "fellegi_sunter"  # name (and near-miss code)
    assert methods["8"] == "own_entity"
    # no entity holds two different valid USCCs
    per_entity = (
        records.join(links, on=["source", "source_record_id"])
        .filter(pl.col("uscc").is_not_null())
        .group_by("entity_id")
        .agg(pl.col("uscc").n_unique())
    )
    assert per_entity["uscc"].max() == 1
    assert entities.filter(pl.col("entity_id") == HUAXING)["name"].item() == "宁波海曙华兴电子科技有限公司"


def test_ambiguous_name_is_not_guessed(background: pl.DataFrame) -> None:
    a, b = uscc("91330203", "MA2A1B2E"), uscc("91330203", "MA2A1B2F")
    records = frame(
        [
            ("zz_lending", "1", "宁波华兴电子科技有限公司", a, a, a[8:17], None, "valid"),
            ("zz_lending", "2", "宁波华星电子科技有限公司", b, b, b[8:17], None, "valid"),
            ("zz_lending", "3", "华杏电子科技有限公司", None, None, None, None, "missing"),
        ]
    )
    links, _ = resolve(background, records)
    assert entity_of(links, "3") not in (a, b)


def test_ids_are_deterministic(background: pl.DataFrame) -> None:
    records = frame(
        [
            ("zz_lending", str(i), f"宁波{name}电子科技有限公司", None, None, None, None, "missing")
            for i, name in enumerate(["华兴", "恒达", "华兴"])
        ]
    )
    first, _ = resolve(background, records)
    second, _ = resolve(background.reverse(), records.reverse())
    assert first.equals(second)
    assert entity_of(first, "0") == entity_of(first, "2") != entity_of(first, "1")


def test_evaluate_counts_pairs() -> None:
    truth = pl.DataFrame(
        {"source": ["s"] * 4, "source_record_id": ["1", "2", "3", "4"], "entity_key": ["A", "A", "B", "B"]}
    )
    perfect = truth.rename({"entity_key": "entity_id"})
    assert evaluate(perfect, truth).pairwise_f1 == 1.0
    split = perfect.with_columns(entity_id=pl.Series(["A", "X", "B", "B"]))
    scores = evaluate(split, truth)
    assert scores.pairwise_precision == 1.0 and scores.pairwise_recall == 0.5
    assert scores.firms_with_exactly_one_profile == 0.5


def _previous_and_new(seed: int, records: int, changed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A previous version's links in KEYS order, and a night's rows in no order: some of them
    replacing previous rows, some new (one of a source the previous version lacks)."""
    import random

    rng = random.Random(seed)
    keys = ["source", "source_record_id"]
    ids = [f"{rng.randrange(10**6):07d}" for _ in range(records)]
    previous = (
        pl.DataFrame({"source": [rng.choice("abcd") for _ in ids], "source_record_id": ids})
        .unique(keys)
        .with_columns(entity_id=pl.lit("old"))
        .sort(keys)
    )
    added = pl.DataFrame({"source": ["e", "a", "b"], "source_record_id": ["1", "0000000", "9999999"]})
    new = pl.concat(
        [
            previous.sample(changed, seed=3).with_columns(entity_id=pl.lit("new")),
            added.with_columns(entity_id=pl.lit("new")),
        ]
    ).sample(fraction=1.0, shuffle=True, seed=1)
    return previous, new


def test_an_incremental_nights_rows_are_merged_into_the_previous_order() -> None:
    """An incremental night merges its few links into the previous version's (sorted) rather than
    sorting all of them again: the same rows in the same order as replacing and sorting, and a
    previous table out of order is sorted."""
    from entity_resolution.pipeline import _upserted

    keys = ["source", "source_record_id"]
    previous, new = _previous_and_new(5, 3000, 200)
    expected = pl.concat([previous.join(new.select(keys), on=keys, how="anti"), new]).sort(keys)
    assert _upserted(previous, new, keys).equals(expected)
    assert _upserted(previous.reverse(), new, keys).equals(expected)
    by_id = previous.unique("source_record_id").sort("source_record_id")
    one = new.unique("source_record_id")
    assert _upserted(by_id, one, ["source_record_id"]).equals(
        pl.concat([by_id.join(one, on="source_record_id", how="anti"), one]).sort("source_record_id")
    )


def test_an_incremental_night_s_links_stream_from_the_previous_version(tmp_path) -> None:  # noqa: ANN001
    """The night's links are a plan over the previous version's file (many row groups), streamed
    into the new one: the same rows in the same order as ``_upserted`` in memory; a previous file
    out of order is read and sorted."""
    from entity_resolution.pipeline import _upserted, _upserted_stream

    keys = ["source", "source_record_id"]
    previous, new = _previous_and_new(9, 5000, 300)
    expected = _upserted(previous, new, keys)
    for name, table in (
        ("sorted", previous),
        ("shuffled", previous.sample(fraction=1.0, shuffle=True, seed=1)),
    ):
        path = tmp_path / f"{name}.parquet"
        table.write_parquet(path, row_group_size=64)
        out = tmp_path / f"{name}-out.parquet"
        _upserted_stream(pl.scan_parquet(path), new, keys).sink_parquet(out)
        assert pl.read_parquet(out).equals(expected), name
