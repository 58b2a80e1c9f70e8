"""A declarative Fellegi-Sunter linkage engine: any tabular records, driven by a TOML spec.

Steps, all vectorised (Polars joins for blocking, rapidfuzz ``cpdist`` for pair similarities,
numpy for the model):

1. normalise the input columns into fields (spec ``[[normalise]]``) and collapse identical records
   into *signatures*, so ten monthly records of one employer are compared once;
2. exact keys (``[exact]``): signatures that share a valid code form one node (known matches);
3. blocking rules (``[[blocking]]``, united) give candidate pairs between nodes, never two nodes
   whose ``cannot_link_on`` values differ;
4. comparisons (``[[compare]]``) put each pair on a level per field;
5. the model: u from random pairs, m from the known matches (``m_from_known_matches``: pairs of
   signatures sharing a valid code) and EM on the candidates for the rest; a pair's match
   probability follows from its levels' weights;
6. clustering: pairs above the link threshold are joined strongest first, refusing any join that
   would put two different ``cannot_link_on`` values (two valid USCCs) or two different branches in
   one entity — also through chains; steward decisions become must-link and cannot-link;
7. pairs between the review and link thresholds are returned for the review queue.

Every record gets its entity, a confidence (0-1) and a match grade: one letter per comparison,
comparing the record with its entity's representative (A same, B similar, F different, Z missing).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import opencc
import polars as pl
from rapidfuzz import distance
from rapidfuzz.process import cpdist

from entity_resolution.spec import BlockKey, Comparison, Spec

log = logging.getLogger(__name__)
NULL_LEVEL = -1


@dataclass
class Linkage:
    links: pl.DataFrame  # record_id, entity_id, match_confidence, match_grade
    pairs: pl.DataFrame  # scored candidate pairs (signature ids, levels, probability)
    review: pl.DataFrame  # pairs between the review and link thresholds, with both records
    model: dict[str, Any]  # m, u, lambda per comparison level
    stats: dict[str, Any] = field(default_factory=dict)
    assignments: pl.DataFrame | None = None  # record id -> signature, node (for blocking diagnostics)


# ---------------------------------------------------------------------------------- normalise
def _text(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.String).str.normalize("NFKC").str.replace_all(r"\s+", "").str.to_lowercase()


def _simplified(values: pl.Series) -> pl.Series:
    if values.len() == 0:
        return values
    converter = opencc.OpenCC("t2s")
    unique = values.unique().drop_nulls()
    if unique.len() == 0:
        return values
    joined = converter.convert("\n".join(unique.str.replace_all("\n", " ").to_list())).split("\n")
    mapping = dict(zip(unique.to_list(), joined, strict=True))
    return values.replace_strict(mapping, default=None, return_dtype=pl.String)


def _tokens(values: pl.Series) -> pl.Series:
    import rjieba

    unique = values.unique().drop_nulls().to_list()
    mapping = {v: sorted(set(rjieba.cut(v))) for v in unique}
    return values.replace_strict(mapping, default=None, return_dtype=pl.List(pl.String))


def normalise(frame: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """The spec's normalisers applied to the input (new columns added, inputs kept)."""
    from entity_resolution.names import normalise_names
    from pipelines.identifiers import classify_codes

    for step in spec.normalise:
        kind = step["kind"]
        if kind == "company_name":
            column, out = step["column"], step.get("out", step["column"])
            names = normalise_names(frame[column].cast(pl.String))
            region = names["region_codes"].list.first().str.slice(0, 4)
            frame = frame.with_columns(
                names["core"].alias(f"{out}_core"),
                names["name_key"].alias(f"{out}_key"),
                names["branch"].fill_null("").alias(f"{out}_branch"),
                names["is_branch"].fill_null(False).alias(f"{out}_is_branch"),
                names["legal_form"].alias(f"{out}_legal_form"),
                region.alias(f"{out}_region"),
            ).with_columns(_tokens(names["core"]).alias(f"{out}_tokens"))
        elif kind == "codes":
            # every configured column is classified (a department may put any code in any column)
            sources = [
                step[t] for t in ("uscc", "org_code", "reg_no") if step.get(t) and step[t] in frame.columns
            ]
            found: dict[str, list[pl.Series]] = {"uscc": [], "org_code": [], "reg_no": []}
            for source in sources:
                codes = classify_codes(
                    frame.select(pl.col(source).cast(pl.String).alias("c")).lazy(), "c"
                ).collect()
                for target in found:
                    found[target].append(codes[target])
            frame = frame.with_columns(
                (pl.coalesce(values) if values else pl.lit(None, pl.String)).alias(target)
                for target, values in ((t, [pl.lit(v) for v in vs]) for t, vs in found.items())
            ).with_columns(pl.col("uscc").str.slice(2, 4).alias("uscc_division"))
        elif kind == "text":
            column, out = step["column"], step.get("out", step["column"])
            if column not in frame.columns:
                frame = frame.with_columns(pl.lit(None, pl.String).alias(out))
            else:
                text = frame.select(_text(pl.col(column)).alias("t"))["t"]
                frame = frame.with_columns(_simplified(text).replace("", None).alias(out))
            if step.get("tokens"):
                frame = frame.with_columns(_tokens(frame[out]).alias(f"{out}_tokens"))
        elif kind == "digits":
            column, out = step["column"], step.get("out", step["column"])
            value = (
                pl.col(column).cast(pl.String).str.replace_all(r"\D", "")
                if column in frame.columns
                else pl.lit(None)
            )
            frame = frame.with_columns(value.cast(pl.String).replace("", None).alias(out))
        elif kind == "date":
            column, out = step["column"], step.get("out", step["column"])
            value = (
                pl.col(column).cast(pl.String).str.to_date(strict=False)
                if column in frame.columns
                else pl.lit(None, pl.Date)
            )
            frame = frame.with_columns(value.alias(out))
        elif kind == "coalesce":
            present = [pl.col(c) for c in step["columns"] if c in frame.columns]
            frame = frame.with_columns(pl.coalesce(present).alias(step["out"]))
    return frame


# ---------------------------------------------------------------------------------- helpers
def _key_expr(key: BlockKey) -> pl.Expr:
    expr = pl.col(key.column).cast(pl.String)
    if key.start is None and key.stop is None:
        return expr
    if key.start is not None and key.start < 0:
        return expr.str.slice(key.start)
    return expr.str.slice(key.start or 0, key.stop)


def _compared_columns(spec: Spec) -> list[str]:
    return list(dict.fromkeys(c.column for c in spec.comparisons))


def _levels(comparison: Comparison, left: pl.Series, right: pl.Series) -> np.ndarray:
    """The level of each pair for one comparison (NULL_LEVEL where either side is missing)."""
    null = (left.is_null() | right.is_null()).to_numpy()
    if comparison.method == "token_jaccard":
        null |= (left.list.len().fill_null(0) == 0).to_numpy() | (
            right.list.len().fill_null(0) == 0
        ).to_numpy()
        frame = pl.DataFrame({"l": left, "r": right})
        inter = frame.select(pl.col("l").list.set_intersection(pl.col("r")).list.len()).to_series().to_numpy()
        union = frame.select(pl.col("l").list.set_union(pl.col("r")).list.len()).to_series().to_numpy()
        score = np.divide(inter, union, out=np.zeros(len(inter), dtype=float), where=union > 0)
        higher_is_better = True
    elif comparison.method == "exact":
        score = (left == right).fill_null(False).to_numpy().astype(float)
        higher_is_better = True
    elif comparison.method in ("numeric", "date_days"):
        l_values = left.cast(pl.Int64 if comparison.method == "date_days" else pl.Float64)
        r_values = right.cast(pl.Int64 if comparison.method == "date_days" else pl.Float64)
        score = (l_values - r_values).abs().cast(pl.Float64).fill_null(math.inf).to_numpy()
        higher_is_better = False
    else:
        a = left.cast(pl.String).fill_null("").to_list()
        b = right.cast(pl.String).fill_null("").to_list()
        if comparison.method == "levenshtein":
            score = cpdist(a, b, scorer=distance.Levenshtein.distance, workers=-1).astype(float)
            higher_is_better = False
        else:
            score = cpdist(a, b, scorer=distance.JaroWinkler.similarity, workers=-1)
            higher_is_better = True
    level = np.zeros(len(score), dtype=np.int8)
    for threshold in sorted(comparison.thresholds, reverse=not higher_is_better):
        met = score >= threshold - 1e-9 if higher_is_better else score <= threshold + 1e-9
        level = np.where(met, level + 1, level)
    if comparison.method == "exact":
        level = np.where(score >= 1, comparison.levels - 1, 0).astype(np.int8)
    return np.where(null, NULL_LEVEL, level).astype(np.int8)


def _compare(sig: pl.DataFrame, pairs: pl.DataFrame, spec: Spec) -> np.ndarray:
    """Levels, one column per comparison, for pairs (l, r) of signature rows."""
    columns = _compared_columns(spec)
    left = sig.select(columns)[pairs["l"].to_numpy()]
    right = sig.select(columns)[pairs["r"].to_numpy()]
    return (
        np.column_stack([_levels(c, left[c.column], right[c.column]) for c in spec.comparisons])
        if len(pairs)
        else np.zeros((0, len(spec.comparisons)), dtype=np.int8)
    )


def _frequencies(levels: np.ndarray, spec: Spec, smoothing: float = 1.0) -> list[np.ndarray]:
    """Per comparison, the share of pairs on each level (index 0 = null level, then 0..n)."""
    out = []
    for j, comparison in enumerate(spec.comparisons):
        counts = np.bincount(levels[:, j].astype(np.int64) + 1, minlength=comparison.levels + 1).astype(float)
        counts[1:] += smoothing  # never a zero probability for a real level
        counts[0] += smoothing
        out.append(counts / counts.sum())
    return out


def _weights(levels: np.ndarray, m: list[np.ndarray], u: list[np.ndarray]) -> np.ndarray:
    total = np.zeros(len(levels))
    for j in range(levels.shape[1]):
        index = levels[:, j].astype(np.int64) + 1
        w = np.log2(m[j] / u[j])
        w[0] = 0.0  # a missing value is no evidence either way
        total += w[index]
    return total


def _probability(weights: np.ndarray, prior: float) -> np.ndarray:
    odds = weights + math.log2(prior / (1 - prior))
    return 1.0 / (1.0 + np.exp2(-np.clip(odds, -60, 60)))


def _stable_id(members: list[str]) -> str:
    return "X" + hashlib.sha1(min(members).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- the engine
def link(
    records: pl.DataFrame,
    spec: Spec,
    must_link: list[tuple[str, str]] | None = None,
    cannot_link: list[tuple[str, str]] | None = None,
    anchors: dict[str, str] | None = None,
    seed: int = 7,
    fixed_anchors: bool = False,
) -> Linkage:
    """Link ``records`` (the spec's id column plus its input columns) into entities.

    ``must_link`` / ``cannot_link`` are record-id pairs (steward decisions); ``anchors`` maps record
    ids to entity ids they already hold (the registry), so known entities keep their ids. With
    ``fixed_anchors`` (an incremental run) the anchored entities are taken as they are: their
    records stay together and two of them never merge; only the other records are placed.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    rid = spec.id_column
    if records[rid].is_duplicated().any():
        raise ValueError(f"record ids in '{rid}' must be unique")
    frame = normalise(records, spec)
    timings["normalise"] = time.perf_counter() - started

    # 1. signatures: identical values on everything that matters are compared once
    fields = list(
        dict.fromkeys(
            [
                *_compared_columns(spec),
                *spec.exact_keys,
                *([spec.cannot_link_on] if spec.cannot_link_on else []),
                *spec.cannot_link_unless_equal,
                *(k.column for rule in spec.blocking for k in rule),
            ]
        )
    )
    fields = [f for f in fields if f in frame.columns]
    per_record = frame.select(rid, *fields).with_columns(pl.struct(fields).hash(seed=0).alias("_h"))
    sig = per_record.unique("_h", keep="first").sort(rid).with_row_index("sig")
    per_record = per_record.select(rid, "_h").join(sig.select("_h", "sig"), on="_h").drop("_h")
    n = sig.height
    timings["signatures"] = time.perf_counter() - started

    # 2. nodes: signatures sharing an exact key (a valid code) are one node
    node = np.arange(n, dtype=np.int64)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    key_edges = []
    for key in spec.exact_keys:
        if key not in sig.columns:
            continue
        groups = (
            sig.filter(pl.col(key).is_not_null()).group_by(key).agg(pl.col("sig").min().alias("root"), "sig")
        )
        edges = groups.explode("sig").filter(pl.col("sig") != pl.col("root"))
        key_edges.append(edges.select(pl.col("root").alias("a"), pl.col("sig").alias("b")))
    bad = spec.cannot_link_on
    value_of: dict[int, str | None] = {}
    if bad and bad in sig.columns:
        value_of = {
            i: v for i, v in zip(sig["sig"].to_list(), sig[bad].to_list(), strict=True) if v is not None
        }
    component_value: dict[int, str | None] = dict(value_of)
    if key_edges:
        for a, b in pl.concat(key_edges).iter_rows():
            ra, rb = find(a), find(b)
            if ra == rb:
                continue
            va, vb = component_value.get(ra), component_value.get(rb)
            if va and vb and va != vb:  # an org code shared by two different USCCs: keep them apart
                continue
            parent[rb] = ra
            component_value[ra] = va or vb
    node = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    sig = sig.with_columns(pl.Series("node", node))
    timings["exact"] = time.perf_counter() - started

    # 3. blocking: candidate pairs between different nodes
    candidate_parts = []
    for rule in spec.blocking:
        if not all(k.column in sig.columns for k in rule):
            continue
        keys = sig.select(
            "sig", "node", *[_key_expr(k).alias(f"k{i}") for i, k in enumerate(rule)]
        ).drop_nulls()
        keys = keys.filter(pl.all_horizontal(pl.col(f"k{i}") != "" for i in range(len(rule))))
        names = [f"k{i}" for i in range(len(rule))]
        sizes = keys.group_by(names).len()
        keys = keys.join(sizes.filter(pl.col("len") <= spec.max_block_size).drop("len"), on=names)
        pairs = (
            keys.join(keys, on=names, suffix="_r")
            .filter((pl.col("sig") < pl.col("sig_r")) & (pl.col("node") != pl.col("node_r")))
            .select(pl.col("sig").alias("l"), pl.col("sig_r").alias("r"))
        )
        candidate_parts.append(pairs)
    candidates = (
        pl.concat(candidate_parts).unique()
        if candidate_parts
        else pl.DataFrame(schema={"l": pl.UInt32, "r": pl.UInt32})
    )
    if bad and bad in sig.columns:  # two different USCCs are never candidates
        values = sig.select("sig", pl.col(bad).alias("v"))
        candidates = (
            candidates.join(values, left_on="l", right_on="sig", how="left")
            .join(values, left_on="r", right_on="sig", how="left", suffix="_r")
            .filter(pl.col("v").is_null() | pl.col("v_r").is_null() | (pl.col("v") == pl.col("v_r")))
            .select("l", "r")
        )
    for column in spec.cannot_link_unless_equal:
        if column in sig.columns:
            values = sig.select("sig", pl.col(column).alias("v"))
            candidates = (
                candidates.join(values, left_on="l", right_on="sig", how="left")
                .join(values, left_on="r", right_on="sig", how="left", suffix="_r")
                .filter(pl.col("v").eq_missing(pl.col("v_r")))
                .select("l", "r")
            )
    candidates = candidates.sort("l", "r")
    timings["blocking"] = time.perf_counter() - started

    # 4-5. comparisons and the model
    rng = np.random.default_rng(seed)
    levels = _compare(sig, candidates, spec)
    random_pairs = pl.DataFrame(
        {"l": rng.integers(0, n, spec.u_sample_pairs), "r": rng.integers(0, n, spec.u_sample_pairs)}
    ).filter(pl.col("l") != pl.col("r"))
    u = _frequencies(_compare(sig, random_pairs, spec), spec)
    # known matches: pairs of different signatures inside one node
    members = sig.group_by("node").agg("sig").filter(pl.col("sig").list.len() > 1)
    known = (
        members.with_columns(pl.col("sig").list.sample(2, seed=seed).alias("pair"))
        .select(pl.col("pair").list.get(0).alias("l"), pl.col("pair").list.get(1).alias("r"))
        .head(spec.m_sample_pairs)
    )
    known_levels = _compare(sig, known, spec)
    m = (
        _frequencies(known_levels, spec)
        if len(known_levels)
        else [np.full(c.levels + 1, 1 / (c.levels + 1)) for c in spec.comparisons]
    )
    for j, comparison in enumerate(spec.comparisons):  # m of unsupervised comparisons: start from a guess
        if comparison.name not in spec.m_from_known_matches:
            guess = np.linspace(0.05, 1.0, comparison.levels) ** 3
            m[j] = np.concatenate([[m[j][0]], guess / guess.sum() * (1 - m[j][0])])
    prior = 0.1
    fixed = [c.name in spec.m_from_known_matches for c in spec.comparisons]
    for _ in range(spec.em_iterations if len(levels) else 0):
        p = _probability(_weights(levels, m, u), prior)
        prior = float(np.clip(p.mean(), 1e-6, 1 - 1e-6))
        for j, comparison in enumerate(spec.comparisons):
            if fixed[j]:
                continue
            index = levels[:, j].astype(np.int64) + 1
            mass = np.bincount(index, weights=p, minlength=comparison.levels + 1) + 0.5
            m[j] = mass / mass.sum()
    probability = _probability(_weights(levels, m, u), prior) if len(levels) else np.zeros(0)
    scored = candidates.with_columns(pl.Series("probability", probability))
    timings["model"] = time.perf_counter() - started

    # 6. clustering with constraints (strongest evidence first)
    rid_to_sig = dict(zip(per_record[rid].to_list(), per_record["sig"].to_list(), strict=True))
    forced = [
        (rid_to_sig[a], rid_to_sig[b]) for a, b in (must_link or []) if a in rid_to_sig and b in rid_to_sig
    ]
    forbidden = {
        frozenset((rid_to_sig[a], rid_to_sig[b]))
        for a, b in (cannot_link or [])
        if a in rid_to_sig and b in rid_to_sig
    }
    branch_of: dict[int, Any] = {}
    for column in spec.cannot_link_unless_equal:
        if column in sig.columns:
            branch_of = dict(zip(sig["sig"].to_list(), sig[column].to_list(), strict=True))
    component_branch = {find(i): branch_of.get(i) for i in range(n)} if branch_of else {}
    separated: dict[int, set[int]] = {}  # root -> roots it must never join (steward cannot-link)
    for pair in forbidden:
        a, b = tuple(pair)
        separated.setdefault(find(a), set()).add(find(b))
        separated.setdefault(find(b), set()).add(find(a))

    def join(a: int, b: int, force: bool = False) -> bool:
        ra, rb = find(a), find(b)
        if ra == rb:
            return True
        va, vb = component_value.get(ra), component_value.get(rb)
        if not force:
            if va and vb and va != vb:
                return False
            if branch_of and component_branch.get(ra) != component_branch.get(rb):
                return False
            if rb in separated.get(ra, set()):
                return False
        if component_anchor:
            aa, ab = component_anchor.get(ra), component_anchor.get(rb)
            if aa and ab and aa != ab:
                return False
            component_anchor[ra] = aa or ab
        parent[rb] = ra
        component_value[ra] = va or vb
        if branch_of:
            component_branch[ra] = component_branch.get(ra)
        separated.setdefault(ra, set()).update(find(x) for x in separated.pop(rb, set()))
        for other in separated.get(ra, set()):
            separated.setdefault(other, set()).add(ra)
        return True

    anchor_of: dict[int, str] = {}
    if fixed_anchors and anchors:
        for record, entity in anchors.items():
            if record in rid_to_sig:
                anchor_of.setdefault(rid_to_sig[record], entity)
        first_of: dict[str, int] = {}
        for signature, entity in sorted(anchor_of.items()):
            if entity in first_of:
                forced.append((first_of[entity], signature))
            else:
                first_of[entity] = signature
    component_anchor = {find(i): a for i, a in anchor_of.items()}
    for a, b in forced:
        join(a, b, force=True)
    linked = scored.filter(pl.col("probability") >= spec.link_threshold).sort(
        ["probability", "l", "r"], descending=[True, False, False]
    )
    accepted = [join(a, b) for a, b in zip(linked["l"].to_list(), linked["r"].to_list(), strict=True)]
    root = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    sig = sig.with_columns(pl.Series("root", root))
    timings["cluster"] = time.perf_counter() - started

    # entity ids: the cannot-link value (the USCC) when there is one, an anchor's id, else a stable hash
    records_per_root = per_record.join(sig.select("sig", "root"), on="sig")
    naming = records_per_root.group_by("root").agg(pl.col(rid).alias("members"))
    value_col = pl.col(bad) if bad and bad in sig.columns else pl.lit(None, pl.String)
    root_value = sig.group_by("root").agg(value_col.drop_nulls().first().alias("value"))
    anchor_ids = {}
    if anchors:
        anchored = records_per_root.filter(pl.col(rid).is_in(list(anchors))).with_columns(
            pl.col(rid).replace_strict(anchors, return_dtype=pl.String).alias("anchor")
        )
        # an id goes to the one cluster that holds most of its records (the others are splits)
        votes = anchored.group_by("root", "anchor").len().sort(["len", "root"], descending=[True, False])
        claimed: set[str] = set()
        for root_id, anchor, _ in votes.iter_rows():
            if root_id not in anchor_ids and anchor not in claimed:
                anchor_ids[root_id] = anchor
                claimed.add(anchor)
    naming = naming.join(root_value, on="root", how="left")
    entity_of = {
        r: (value or anchor_ids.get(r) or _stable_id(members))
        for r, members, value in naming.select("root", "members", "value").iter_rows()
    }
    sig = sig.with_columns(
        pl.col("root").replace_strict(entity_of, return_dtype=pl.String).alias("entity_id")
    )

    # confidence: 1 for exact keys and singletons; else the strongest accepted pair touching the signature
    strongest = (
        pl.concat(
            [
                linked.filter(pl.Series(accepted)).select(pl.col("l").alias("sig"), "probability"),
                linked.filter(pl.Series(accepted)).select(pl.col("r").alias("sig"), "probability"),
            ]
        )
        .group_by("sig")
        .agg(pl.col("probability").max())
        if len(linked)
        else pl.DataFrame(schema={"sig": pl.UInt32, "probability": pl.Float64})
    )
    coded = sig.join(sig.group_by("node").len(), on="node").filter(pl.col("len") > 1)["sig"]
    sig = sig.join(strongest, on="sig", how="left").with_columns(
        pl.when(pl.col("sig").is_in(coded.implode()))
        .then(1.0)
        .otherwise(pl.col("probability").fill_null(1.0))
        .round(4)
        .alias("match_confidence")
    )
    grades = _grades(sig, spec)
    links = (
        per_record.join(sig.select("sig", "entity_id", "match_confidence"), on="sig")
        .join(grades, on="sig")
        .select(rid, "entity_id", "match_confidence", "match_grade")
        .sort(rid)
    )
    review = scored.filter(
        (pl.col("probability") >= spec.review_threshold) & (pl.col("probability") < spec.link_threshold)
    )
    review_pairs = _review_pairs(
        review,
        levels[(probability >= spec.review_threshold) & (probability < spec.link_threshold)],
        sig,
        per_record,
        spec,
    )
    timings["total"] = time.perf_counter() - started
    stats = {
        "records": records.height,
        "signatures": n,
        "candidate_pairs": len(candidates),
        "linked_pairs": int(sum(accepted)),
        "refused_by_constraints": int(len(accepted) - sum(accepted)),
        "review_pairs": review.height,
        "entities": links["entity_id"].n_unique(),
        "lambda": prior,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    model = {
        c.name: {
            "m": m[j].round(5).tolist(),
            "u": u[j].round(5).tolist(),
            "levels": ["null", *range(c.levels)],
        }
        for j, c in enumerate(spec.comparisons)
    }
    log.info("linked %s", stats)
    assignments = per_record.join(sig.select("sig", "node"), on="sig")
    return Linkage(
        links=links,
        pairs=scored,
        review=review_pairs,
        model={"lambda": prior, **model},
        stats=stats,
        assignments=assignments,
    )


def _grades(sig: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """Each signature against its entity's representative (the entity's most common signature)."""
    representative = sig.sort("sig").group_by("entity_id").agg(pl.col("sig").first().alias("rep"))
    pairs = (
        sig.select(pl.col("sig").alias("l"), "entity_id")
        .join(representative, on="entity_id")
        .select("l", pl.col("rep").alias("r"))
    )
    levels = _compare(sig, pairs, spec)
    letters = []
    for j, comparison in enumerate(spec.comparisons):
        top = comparison.levels - 1
        column = levels[:, j]
        letters.append(
            np.where(column == NULL_LEVEL, "Z", np.where(column == top, "A", np.where(column == 0, "F", "B")))
        )
    grade = ["".join(chars) for chars in zip(*letters, strict=True)] if letters else []
    return pairs.select(pl.col("l").alias("sig")).with_columns(
        pl.Series("match_grade", grade, dtype=pl.String)
    )


def _review_pairs(
    review: pl.DataFrame, levels: np.ndarray, sig: pl.DataFrame, per_record: pl.DataFrame, spec: Spec
) -> pl.DataFrame:
    """Review-queue rows: one example record on each side, the levels and the probability."""
    rid = spec.id_column
    example = per_record.group_by("sig").agg(pl.col(rid).min().alias("record"))
    shown = [c for c in _compared_columns(spec) if sig.schema.get(c) != pl.List(pl.String)]
    left = sig.select("sig", *shown).join(example, on="sig")
    out = review.join(left, left_on="l", right_on="sig", how="left").join(
        left, left_on="r", right_on="sig", how="left", suffix="_r"
    )
    out = out.rename({"record": f"{rid}_l", "record_r": f"{rid}_r"}).rename({c: f"{c}_l" for c in shown})
    for j, comparison in enumerate(spec.comparisons):
        out = out.with_columns(
            pl.Series(f"level_{comparison.name}", levels[:, j] if len(levels) else [], dtype=pl.Int8)
        )
    return out.drop("l", "r")
