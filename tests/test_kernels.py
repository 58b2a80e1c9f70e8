"""The engine's kernels work on distinct values and distinct value pairs: the results must be those
of working on every record and every pair (the speed-ups may not change a single level)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import rjieba

from entity_resolution.internals.compare import PairComparer, compare_pairs, levels_of
from entity_resolution.internals.distinct import distinct_rows
from entity_resolution.internals.normalise import _tokens
from entity_resolution.spec import Comparison, load_spec

ENTERPRISE = load_spec("enterprise")
NUMERIC = (
    Comparison("amount", "amount", "numeric", (0.0, 10.0)),
    Comparison("born", "born", "date_days", (0.0, 30.0)),
    # exact on a date (its codes decide) and on a float with NaN among them (its values do)
    Comparison("born_same", "born", "exact", ()),
    Comparison("amount_same", "amount", "exact", ()),
)


def _signatures(rows: int, seed: int) -> pl.DataFrame:
    """Signature rows drawn from small vocabularies, so values and value pairs repeat a lot, with
    missing values and empty token lists among them."""
    rng = np.random.default_rng(seed)

    def pick(values: list, p_null: float = 0.2) -> list:
        return [None if rng.random() < p_null else values[i] for i in rng.integers(0, len(values), rows)]

    cores = ["华兴电子科技", "华星电子科技", "永安塑料制品", "华兴电子", "", "恒长鼎装饰工程"]
    token_lists = [["华兴", "电子", "科技"], ["华星", "电子"], [], ["永安", "塑料"], ["电子"]]
    return pl.DataFrame(
        {
            # the column the spec's code comparison reads
            next(c.column for c in ENTERPRISE.comparisons if c.name == "code"): pick(
                ["91110000600037341L", "91110000600037341X", "91330282L07196379D"], 0.6
            ),
            "name_core": pick(cores),
            "name_legal_form": pick(["有限公司", "股份有限公司", "有限责任公司"]),
            "region": pick(["3302", "33", "330203", "11", "1101"]),
            "name_tokens": pick(token_lists),
            "legal_rep": pick(["蒋成凯", "蒋成楷", "曾宁洋"]),
            "address_tokens": pick(token_lists, 0.5),
            "phone": pick(["057487654321", "057487654320"], 0.5),
            "figures": pick(["12|4200", "12|4300", "85|6100"], 0.7),
            "amount": pick([1.0, 5.0, 25.0, 100.0, float("nan")]),
            "born": pick([0, 10, 45, 400]),
        },
        schema_overrides={"born": pl.Date},
    )


def _per_pair(sig: pl.DataFrame, pairs: pl.DataFrame, comparisons: tuple[Comparison, ...]) -> np.ndarray:
    """Every pair compared on its own values, as the engine did before it coded its columns."""
    left, right = sig[pairs["l"].to_numpy()], sig[pairs["r"].to_numpy()]
    return np.column_stack([levels_of(c, left[c.column], right[c.column]) for c in comparisons])


def test_levels_per_distinct_value_pair_are_the_levels_per_pair() -> None:
    sig = _signatures(400, seed=3)
    spec = dataclasses.replace(ENTERPRISE, comparisons=(*ENTERPRISE.comparisons, *NUMERIC))
    rng = np.random.default_rng(5)
    pairs = pl.DataFrame({"l": rng.integers(0, sig.height, 5000), "r": rng.integers(0, sig.height, 5000)})
    comparer = PairComparer(sig, spec)
    expected = _per_pair(sig, pairs, spec.comparisons)
    assert (comparer.levels(pairs) == expected).all()
    # every level occurs, the null level too, so the comparison above covers each branch
    for j, comparison in enumerate(spec.comparisons):
        assert {-1, 0, comparison.levels - 1} <= set(expected[:, j].tolist()), comparison.name
    # one comparer serves batch after batch (the engine's shards) with the same answers
    halves = [pairs.head(2500), pairs.tail(2500)]
    assert (np.vstack([comparer.levels(h) for h in halves]) == expected).all()
    assert (compare_pairs(sig, pairs.head(7), spec) == expected[:7]).all()
    assert comparer.levels(pairs.clear()).shape == (0, len(spec.comparisons))


def test_distinct_rows_spread_back_to_every_row() -> None:
    values = pl.Series("v", ["b", None, "a", "b", "a", None, "c"])
    rows, place = distinct_rows(values)
    assert rows.to_list() == [0, 2, 6]  # the first row of each value, in row order; no null
    assert place.to_list() == [0, None, 1, 0, 1, None, 2]
    assert values.gather(rows).gather(place).to_list() == values.to_list()
    nothing = pl.Series("v", [None, None], dtype=pl.String)
    assert distinct_rows(nothing)[0].len() == 0
    assert distinct_rows(nothing)[1].to_list() == [None, None]


def test_tokens_of_distinct_values_are_each_values_own_words() -> None:
    values = pl.Series("core", ["华兴电子科技", None, "永安塑料制品", "华兴电子科技", "", "ab12电子"])
    expected = [None if v is None else sorted(set(w for w in rjieba.cut(v) if w)) for v in values.to_list()]
    assert _tokens(values).to_list() == expected
