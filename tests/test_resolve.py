"""Entity resolution: codes first, names next, and never two valid USCCs in one firm."""

from datetime import datetime

import polars as pl

from entity_resolution.evaluate import evaluate
from entity_resolution.resolve import resolve
from pipelines.identifiers import uscc_check_char


def uscc(body17: str) -> str:
    return body17 + uscc_check_char(body17)


HUAXING = uscc("91330203MA2A1B2C3")
HUAXING_STAR = uscc("91330203MA2A1B2C4")
BEIJING = uscc("91110108MA0B2C3D4")
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
        updated_at=pl.lit(datetime(2026, 11, 1))
    )


def entity_of(links: pl.DataFrame, record_id: str) -> str:
    return links.filter(pl.col("source_record_id") == record_id)["entity_id"].item()


def test_codes_names_and_hard_negatives() -> None:
    typo = HUAXING[:5] + ("1" if HUAXING[5] != "1" else "2") + HUAXING[6:]
    records = frame(
        [
            ("lending", "1", "宁波海曙华兴电子科技有限公司", HUAXING, HUAXING, HUAXING[8:17], None, "valid"),
            ("lending", "2", "华兴电子科技（宁波）有限公司", None, None, None, None, "missing"),
            ("tax", "3", "華興電子科技有限責任公司", HUAXING[8:17], None, HUAXING[8:17], None, "org_code"),
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
            ("contract", "5", "华兴电子科技", typo, None, None, None, "invalid"),
            ("violations", "6", "北京华兴电子科技有限公司", BEIJING, BEIJING, BEIJING[8:17], None, "valid"),
            ("violations", "7", "华兴电子科技(北京)有限公司", None, None, None, None, "missing"),
            ("violations", "8", "宁波华兴电子科技有限公司海曙分公司", None, None, None, None, "missing"),
            ("tax", "9", "宁波华星电子科技有限公司", None, None, None, "330203000030639", "reg_no"),
            (
                "tax",
                "10",
                "宁波华星电子科技有限公司",
                HUAXING_STAR,
                HUAXING_STAR,
                HUAXING_STAR[8:17],
                "330203000030639",
                "valid",
            ),
        ]
    )
    links, entities = resolve(records)
    assert links.height == records.height
    for rid in ("1", "2", "3", "5"):
        assert entity_of(links, rid) == HUAXING, rid
    assert entity_of(links, "4") == HUAXING_STAR
    assert entity_of(links, "9") == HUAXING_STAR  # old registration number cross-walked
    assert entity_of(links, "6") == entity_of(links, "7") == BEIJING  # region in brackets decides
    assert entity_of(links, "8") not in (HUAXING, HUAXING_STAR)  # a branch is not its head office
    methods = dict(zip(links["source_record_id"], links["match_method"], strict=True))
    assert methods["3"] == "org_code" and methods["5"] == "code_near+name" and methods["9"] == "reg_no"
    # no entity holds two different valid USCCs
    per_entity = (
        records.join(links, on=["source", "source_record_id"])
        .filter(pl.col("uscc").is_not_null())
        .group_by("entity_id")
        .agg(pl.col("uscc").n_unique())
    )
    assert per_entity["uscc"].max() == 1
    assert entities.filter(pl.col("entity_id") == HUAXING)["name"].item() == "宁波海曙华兴电子科技有限公司"


def test_ambiguous_name_is_not_guessed() -> None:
    a, b = uscc("91330203MA2A1B2C5"), uscc("91330203MA2A1B2C6")
    records = frame(
        [
            ("lending", "1", "宁波华兴电子科技有限公司", a, a, a[8:17], None, "valid"),
            ("lending", "2", "宁波华星电子科技有限公司", b, b, b[8:17], None, "valid"),
            ("lending", "3", "华杏电子科技有限公司", None, None, None, None, "missing"),
        ]
    )
    links, _ = resolve(records)
    assert entity_of(links, "3") not in (a, b)


def test_ids_are_deterministic() -> None:
    records = frame(
        [
            ("lending", str(i), f"宁波{name}电子科技有限公司", None, None, None, None, "missing")
            for i, name in enumerate(["华兴", "恒达", "华兴"])
        ]
    )
    first, _ = resolve(records)
    second, _ = resolve(records.reverse())
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
