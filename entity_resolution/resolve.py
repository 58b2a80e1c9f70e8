"""Resolve source records to firms: exact on codes first, then names, then fuzzy names.

The order follows the strength of the evidence. A valid USCC is the firm (and two different valid
USCCs are never merged). Organization codes are embedded in USCCs and old registration numbers
are cross-walked from records that carry both, so both join exactly. Name-only and badly coded
records then join on the normalised name (checked against the region written in the name and
the code's division), on a near-miss code confirmed by the name, and last on a fuzzy name that
must beat every other candidate clearly. What is left becomes a new firm keyed by its name.
Every link says how it was made (``match_method``) and how sure it is (``match_confidence``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import polars as pl
from rapidfuzz import distance, fuzz, process

from entity_resolution.names import normalise_names
from pipelines.identifiers import compact_code_expr

log = logging.getLogger(__name__)

IDENTITY_COLUMNS = (
    "source",
    "source_record_id",
    "subject_name",
    "code_raw",
    "uscc",
    "org_code",
    "reg_no",
    "code_status",
    "updated_at",
)
# Records with the same name and code get the same decision: resolve each distinct signature once.
SIGNATURE = ("subject_name", "code_raw", "uscc", "org_code", "reg_no", "code_status")


@dataclass(frozen=True)
class ResolutionSettings:
    """Thresholds users tune (entity_resolution/specs hold the declarative version later)."""

    fuzzy_min_score: float = 90.0
    fuzzy_margin: float = 4.0
    code_near_max_edits: int = 1
    code_near_min_name_score: float = 60.0
    max_block_size: int = 2_000


CONFIDENCE = {
    "uscc": 1.0,
    "uscc_repaired": 0.98,
    "resident_id": 1.0,
    "org_code": 0.97,
    "reg_no": 0.95,
    "code_near+name": 0.92,
    "name_exact": 0.9,
    "name_exact+region": 0.88,
    "name_fuzzy": 0.8,
    "name_only_cluster": 0.6,
    "code_only_cluster": 0.7,
}


def _stable_id(prefix: str, value: pl.Expr) -> pl.Expr:
    """A deterministic id for a firm without a valid USCC: a SHA-1 of its key, stable across versions
    of the libraries (Polars' own hash is not), computed once per distinct key."""
    return value.map_batches(
        lambda keys: (
            keys.unique()
            .to_frame("k")
            .with_columns(
                h=pl.col("k").map_elements(
                    lambda k: prefix + hashlib.sha1(k.encode()).hexdigest()[:16], return_dtype=pl.String
                )
            )
            .pipe(lambda t: keys.to_frame("k").join(t, on="k", how="left", maintain_order="left")["h"])
        ),
        return_dtype=pl.String,
    )


def person_entity_id() -> pl.Expr:
    """A natural person's entity id: a hash of the ID number as written, compacted (never the number)."""
    return _stable_id("X", pl.lit("P") + compact_code_expr(pl.col("code_raw")))


def _tag(frame: pl.DataFrame, method: str) -> pl.DataFrame:
    return frame.with_columns(
        match_method=pl.lit(method), match_confidence=pl.lit(CONFIDENCE[method], dtype=pl.Float64)
    )


def resolve(
    records: pl.DataFrame, settings: ResolutionSettings | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Link records (IDENTITY_COLUMNS) to firms; return (links, entities)."""
    settings = settings or ResolutionSettings()
    records = records.with_columns(pl.col(c).cast(pl.String) for c in IDENTITY_COLUMNS if c != "updated_at")
    signatures = (
        records.with_row_index("_rec")
        .group_by(SIGNATURE)
        .agg(pl.len().alias("n"), pl.col("updated_at").max(), pl.col("_rec").alias("_members"))
        .sort(SIGNATURE, nulls_last=True)
    )
    clock = time.perf_counter()

    def phase(label: str, count: int) -> None:
        nonlocal clock
        log.info("resolve: %s: %d (%.1f s)", label, count, time.perf_counter() - clock)
        clock = time.perf_counter()

    phase("distinct name/code signatures", signatures.height)
    keys = records.select("source", "source_record_id")
    del records  # the signatures hold everything else; frees memory when the caller passed its only reference
    names = normalise_names(signatures["subject_name"]).drop("name")
    members = signatures.select("_members").with_row_index("_row")
    recs = pl.concat([signatures.drop("_members"), names], how="horizontal").with_row_index("_row")
    del signatures, names

    # 1. Valid USCCs are the firm.
    anchored = recs.filter(pl.col("uscc").is_not_null()).with_columns(entity_id=pl.col("uscc"))
    links = [
        _tag(anchored.filter(pl.col("code_status") == "valid"), "uscc"),
        _tag(anchored.filter(pl.col("code_status") != "valid"), "uscc_repaired"),
    ]
    rest = recs.filter(pl.col("uscc").is_null())

    # A natural person's ID number is the person: never a firm, never matched to one by name.
    persons = rest.filter(pl.col("code_status") == "resident_id").with_columns(entity_id=person_entity_id())
    rest = rest.filter(pl.col("code_status") != "resident_id")

    # 2. Organization codes are embedded in USCCs; old registration numbers are cross-walked.
    org_index = anchored.select("org_code", "uscc").unique()
    reg_index = (
        anchored.filter(pl.col("reg_no").is_not_null())
        .select("reg_no", "uscc")
        .unique()
        .filter(pl.col("reg_no").count().over("reg_no") == 1)
    )
    by_org = rest.filter(pl.col("org_code").is_not_null()).join(
        org_index, on="org_code", how="inner", suffix="_x"
    )
    links.append(_tag(by_org.with_columns(entity_id=pl.col("uscc_x")).drop("uscc_x"), "org_code"))
    rest = rest.join(by_org.select("_row"), on="_row", how="anti")
    by_reg = rest.filter(pl.col("reg_no").is_not_null()).join(
        reg_index, on="reg_no", how="inner", suffix="_x"
    )
    links.append(_tag(by_reg.with_columns(entity_id=pl.col("uscc_x")).drop("uscc_x"), "reg_no"))
    rest = rest.join(by_reg.select("_row"), on="_row", how="anti")

    # The known firms and the name keys they were seen under.
    phase("linked by codes", sum(f.height for f in links))
    coded = pl.concat(
        [f.select(*_LINK_COLUMNS, "name_key", "is_branch", "core", "n") for f in links],
        how="vertical_relaxed",
    )
    known = _known_names(coded)
    del coded
    links = [f.select(_LINK_COLUMNS) for f in links]

    # 3. A code one or two typos away from a known USCC, confirmed by the name.
    near = _near_code_links(rest, known, settings)
    links.append(near.select(_LINK_COLUMNS))
    phase("linked by near-miss code", near.height)
    rest = rest.join(near.select("_row"), on="_row", how="anti")

    # 4. Exact normalised name, disambiguated by region and branch.
    exact = _exact_name_links(rest, known)
    links.append(exact.select(_LINK_COLUMNS))
    phase("linked by exact name", exact.height)
    rest = rest.join(exact.select("_row"), on="_row", how="anti")

    # 5. Fuzzy name within blocks, only when one candidate clearly wins.
    fuzzy = _fuzzy_name_links(rest, known, settings)
    links.append(fuzzy.select(_LINK_COLUMNS))
    phase("linked by fuzzy name", fuzzy.height)
    rest = rest.join(fuzzy.select("_row"), on="_row", how="anti")

    # 6. Left-overs form firms of their own: by code if they have one, else by name and region.
    region = pl.col("region_codes").list.first().fill_null("").str.slice(0, 4)
    cluster_key = pl.coalesce(
        pl.lit("O") + pl.col("org_code"),
        pl.lit("R") + pl.col("reg_no"),
        pl.lit("N") + pl.col("name_key").fill_null(pl.col("subject_name")) + "|" + region,
    )
    leftover = rest.with_columns(entity_id=_stable_id("X", cluster_key))
    links.append(_tag(persons, "resident_id"))
    links.append(
        _tag(
            leftover.filter(pl.col("org_code").is_not_null() | pl.col("reg_no").is_not_null()),
            "code_only_cluster",
        )
    )
    links.append(
        _tag(leftover.filter(pl.col("org_code").is_null() & pl.col("reg_no").is_null()), "name_only_cluster")
    )

    linked = pl.concat([f.select(_LINK_COLUMNS) for f in links if f.height], how="vertical_relaxed")
    linked = recs.drop("branch", "region_codes", "name_key").join(linked, on="_row", how="left")
    missing = linked.filter(pl.col("entity_id").is_null()).height
    if missing:
        raise AssertionError(f"entity resolution lost {missing} records")
    # back from signatures to records through the member lists (an integer gather, no string join)
    decided = (
        members.join(linked.select("_row", "entity_id", "match_confidence", "match_method"), on="_row")
        .explode("_members")
        .sort("_members")
    )
    per_record = pl.concat([keys, decided.drop("_row", "_members")], how="horizontal")
    link_table = per_record.select(
        "source", "source_record_id", "entity_id", "match_confidence", "match_method"
    ).sort("source", "source_record_id")
    return link_table, _entities(linked, per_record)


_LINK_COLUMNS = ("_row", "entity_id", "match_method", "match_confidence")


def _known_names(coded: pl.DataFrame) -> pl.DataFrame:
    """Firms with a USCC: one row per (entity, name key) with the firm's division."""
    return (
        coded.filter(pl.col("name_key").is_not_null())
        .group_by("entity_id", "name_key")
        .agg(pl.col("n").sum().alias("seen"), pl.col("is_branch").first(), pl.col("core").first())
        .with_columns(division=pl.col("entity_id").str.slice(2, 6))
    )


def _exact_name_links(rest: pl.DataFrame, known: pl.DataFrame) -> pl.DataFrame:
    candidates = rest.filter(pl.col("name_key").is_not_null()).join(
        known.select("entity_id", "name_key", "division"), on="name_key", how="inner"
    )
    candidates = candidates.with_columns(_fits(candidates["region_codes"], candidates["division"])).filter(
        "fits"
    )
    counts = candidates.group_by("_row").agg(pl.col("entity_id").n_unique().alias("n"))
    chosen = candidates.join(counts.filter(pl.col("n") == 1), on="_row").unique("_row", keep="first")
    with_region = chosen.filter(pl.col("region_codes").list.len() > 0)
    without = chosen.filter(pl.col("region_codes").is_null() | (pl.col("region_codes").list.len() == 0))
    return pl.concat(
        [_tag(with_region, "name_exact+region"), _tag(without, "name_exact")], how="vertical_relaxed"
    )


def _fits(codes: pl.Series, divisions: pl.Series) -> pl.Series:
    """True where the name names no region or one that contains the firm's division (vectorised)."""
    frame = pl.DataFrame({"codes": codes, "division": divisions}).with_row_index("i")
    exploded = frame.explode("codes")
    ok = (
        exploded.group_by("i")
        .agg(
            (
                pl.col("codes").is_null() | pl.col("division").str.starts_with(pl.col("codes").fill_null(""))
            ).any()
        )
        .sort("i")
    )
    return ok["codes"].alias("fits")


def _near_code_links(rest: pl.DataFrame, known: pl.DataFrame, settings: ResolutionSettings) -> pl.DataFrame:
    """Records with an 18-character code that fails its check: look for a USCC one edit away."""
    cleaned = pl.col("code_raw").str.to_uppercase().str.replace_all(r"[\s\-]", "")
    probes = rest.with_columns(code=cleaned).filter(pl.col("code").str.len_chars() == 18)
    if probes.height == 0:
        return _tag(rest.clear().with_columns(entity_id=pl.lit("")), "code_near+name")
    targets = known.select("entity_id", "core").unique(maintain_order=True)
    # One wrong character leaves two of the code's three six-character parts intact: block on each pair.
    parts = {
        "p12": lambda c: c.str.slice(0, 12),
        "p13": lambda c: c.str.slice(0, 6) + c.str.slice(12, 6),
        "p23": lambda c: c.str.slice(6, 12),
    }
    probe_cols = probes.select("_row", "code", "core")
    pairs = pl.concat(
        [
            probe_cols.with_columns(block=key(pl.col("code"))).join(
                targets.with_columns(block=key(pl.col("entity_id"))), on="block"
            )
            for key in parts.values()
        ],
        how="vertical_relaxed",
    ).unique(["_row", "entity_id", "core_right"])
    if pairs.height == 0:
        return _tag(rest.clear().with_columns(entity_id=pl.lit("")), "code_near+name")
    edits = process.cpdist(
        pairs["code"].to_list(),
        pairs["entity_id"].to_list(),
        scorer=distance.Levenshtein.distance,
        workers=-1,
    )
    name_score = process.cpdist(
        pairs["core"].fill_null("").to_list(),
        pairs["core_right"].fill_null("").to_list(),
        scorer=fuzz.ratio,
        workers=-1,
    )
    # an entity seen under several names: its best-matching name counts
    best = (
        pairs.select("_row", "entity_id")
        .with_columns(edits=pl.Series(edits), name_score=pl.Series(name_score))
        .group_by("_row", "entity_id")
        .agg(pl.col("edits").min(), pl.col("name_score").max())
        .filter(
            (pl.col("edits") <= settings.code_near_max_edits)
            & (pl.col("name_score") >= settings.code_near_min_name_score)
        )
    )
    pairs = probes.join(best.select("_row", "entity_id"), on="_row")
    unique_hits = pairs.filter(pl.col("entity_id").n_unique().over("_row") == 1).unique("_row")
    return _tag(unique_hits, "code_near+name")


def _fuzzy_name_links(rest: pl.DataFrame, known: pl.DataFrame, settings: ResolutionSettings) -> pl.DataFrame:
    """Fuzzy core-name match within blocks: (first character + last four) and (second and third
    characters + last four), so a typo in the trade name still meets its firm in one block."""
    probes = rest.filter(pl.col("core").str.len_chars() >= 3)
    empty = _tag(rest.clear().with_columns(entity_id=pl.lit("")), "name_fuzzy")
    if probes.height == 0:
        return empty
    # each firm's most used name (ties: the smallest) stands for it: typo variants seen on its own
    # records would otherwise multiply the pairs
    targets = (
        known.sort(["entity_id", "seen", "core"], descending=[False, True, False])
        .unique("entity_id", keep="first", maintain_order=True)
        .select("entity_id", "core", "is_branch", "division")
    )
    blocks = []
    tail = pl.col("core").str.slice(-4, 4)
    for block in (pl.col("core").str.slice(0, 1) + "|" + tail, pl.col("core").str.slice(1, 2) + "|" + tail):
        target_blocks = targets.with_columns(block=block)
        small = target_blocks.group_by("block").len().filter(pl.col("len") <= settings.max_block_size)
        blocks.append(
            probes.select("_row", "core", "is_branch", "region_codes")
            .with_columns(block=block)
            .join(small.select("block"), on="block")
            .join(target_blocks, on="block", suffix="_t")
        )
    pairs = pl.concat(blocks, how="vertical_relaxed").unique(["_row", "entity_id", "core_t"])
    pairs = pairs.filter(
        (pl.col("is_branch") == pl.col("is_branch_t"))
        & ((pl.col("core").str.len_chars() - pl.col("core_t").str.len_chars()).abs() <= 2)
    )
    if pairs.height == 0:
        return empty
    scores = process.cpdist(pairs["core"].to_list(), pairs["core_t"].to_list(), scorer=fuzz.ratio, workers=-1)
    pairs = pairs.with_columns(score=pl.Series(scores, dtype=pl.Float64))
    pairs = pairs.with_columns(_fits(pairs["region_codes"], pairs["division"])).filter("fits")
    # one score per candidate firm (its best-matching name), then the best two firms per record
    pairs = pairs.group_by("_row", "entity_id").agg(pl.col("score").max())
    ranked = (
        pairs.sort(["_row", "score", "entity_id"], descending=[False, True, False])
        .group_by("_row", maintain_order=True)
        .agg(
            pl.col("entity_id").first(),
            pl.col("score").first().alias("best"),
            pl.col("score").get(1, null_on_oob=True).alias("second"),
        )
    )
    winners = ranked.filter(
        (pl.col("best") >= settings.fuzzy_min_score)
        & (pl.col("second").is_null() | (pl.col("best") - pl.col("second") >= settings.fuzzy_margin))
    )
    hits = probes.join(winners.select("_row", "entity_id", "best"), on="_row")
    return _tag(hits, "name_fuzzy").with_columns(
        match_confidence=(pl.col("best") / 100.0 * CONFIDENCE["name_fuzzy"]).round(3)
    )


def _entities(linked: pl.DataFrame, per_record: pl.DataFrame) -> pl.DataFrame:
    """One row per firm: its codes and its most used full name (latest wins ties)."""
    valid_named = linked.filter(pl.col("subject_name").is_not_null())
    name_rank = (
        valid_named.group_by("entity_id", "subject_name")
        .agg(
            pl.col("n").sum().alias("n"),
            pl.col("updated_at").max().alias("last"),
            pl.col("core").first(),
            # prefer a full legal name seen on a record with a valid code
            (
                pl.col("code_status").is_in(["valid", "repaired"]).any().cast(pl.Int8)
                + pl.col("legal_form").is_not_null().any().cast(pl.Int8)
            ).alias("pref"),
        )
        .sort(["entity_id", "pref", "n", "last", "subject_name"], descending=[False, True, True, True, False])
    )
    primary = name_rank.group_by("entity_id", maintain_order=True).agg(
        pl.col("subject_name").first().alias("name"),
        pl.col("core").first().alias("primary_core"),
    )
    # Former names: genuinely different names (another core), not spelling variants.
    former = (
        name_rank.join(primary, on="entity_id")
        .filter(
            pl.col("core").is_not_null() & (pl.col("core") != pl.col("primary_core")) & (pl.col("n") >= 2)
        )
        .group_by("entity_id")
        .agg(pl.col("subject_name").sort().head(3).alias("former_names"))
    )
    codes = (
        linked.group_by("entity_id")
        .agg(
            pl.col("uscc").drop_nulls().first(),
            pl.col("org_code").drop_nulls().mode().sort().first(),
            pl.col("reg_no").drop_nulls().mode().sort().first(),
            pl.col("match_confidence").min().alias("min_match_confidence"),
            # identified by a resident ID number: a natural person (自然人), not a firm
            (pl.col("code_status") == "resident_id").any().alias("natural_person"),
        )
        .join(
            per_record.group_by("entity_id").agg(
                pl.len().alias("record_count"), pl.col("source").n_unique().alias("source_count")
            ),
            on="entity_id",
        )
    )
    return (
        codes.join(primary.drop("primary_core"), on="entity_id", how="left")
        .join(former, on="entity_id", how="left")
        .with_columns(pl.col("former_names").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .sort("entity_id")
    )
