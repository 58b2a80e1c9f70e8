"""Fuzzy firm-name search as people actually write names.

Names are normalised the way resolution normalises them (entity_resolution/names.py: full/half
width, traditional -> simplified, brackets, leading region and legal form removed), so "寧波華興電子
科技" and "华兴电子科技（宁波）有限公司" meet at the same core "华兴电子科技". Candidates come from an
inverted index of character bigrams of the core (the rarest bigrams of the query first), and are
ranked with rapidfuzz; the score (0-100) is returned with each hit.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from entity_resolution.names import normalise_names

MAX_CANDIDATES = 400
#: bigrams held by more firms than this are only used when a query has nothing rarer
COMMON_POSTINGS = 50_000


def _cores(names: pl.Series) -> pl.DataFrame:
    normalised = normalise_names(names)
    return normalised.select(
        pl.coalesce(
            pl.when(pl.col("core").str.len_chars() > 0).then(pl.col("core")),
            pl.col("name").str.normalize("NFKC"),
        )
        .fill_null("")
        .alias("core"),
        pl.col("name").fill_null("").str.normalize("NFKC").alias("full"),
    )


@lru_cache(maxsize=20_000)
def _query_core(text: str) -> str:
    """The normalised core of a query (cached: people repeat searches, and the normaliser is tuned
    for millions of names at once, not for one)."""
    return _cores(pl.Series([text]))["core"][0] or text


@dataclass
class NameIndex:
    cores: list[str]
    fulls: list[str]
    postings: dict[str, np.ndarray]

    @classmethod
    def build(cls, names: pl.Series) -> NameIndex:
        cores = _cores(names)
        grams = (
            cores.select(pl.col("core"), pl.int_range(pl.len(), dtype=pl.Int32).alias("row"))
            .with_columns(
                gram=pl.concat_list(
                    [pl.col("core").str.slice(0, 1)]  # single-character names still get a posting
                ).list.concat(
                    pl.col("core")
                    .str.split("")
                    .list.eval(pl.element() + pl.element().shift(-1))
                    .list.drop_nulls()
                )
            )
            .select("gram", "row")
            .explode("gram")
            .drop_nulls("gram")
            .unique(["gram", "row"])
            .group_by("gram")
            .agg(pl.col("row").sort())
        )
        postings = {gram: np.asarray(rows, dtype=np.int32) for gram, rows in grams.iter_rows()}
        return cls(cores["core"].to_list(), cores["full"].to_list(), postings)

    def _query_grams(self, core: str) -> list[str]:
        grams = [core[i : i + 2] for i in range(len(core) - 1)] or [core[:1]]
        return list(dict.fromkeys(g for g in grams if g in self.postings))

    def search(
        self, query: str, limit: int = 10, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """(row, score) of the best matches, best first; only rows ``allowed`` marks (when given)."""
        text = unicodedata.normalize("NFKC", query).strip()
        if not text:
            return []
        core = _query_core(text)
        grams = sorted(self._query_grams(core), key=lambda g: len(self.postings[g]))
        if not grams:
            return []
        rare = [g for g in grams if len(self.postings[g]) <= COMMON_POSTINGS] or grams[:1]
        chosen = rare[:8]
        ids, counts = np.unique(np.concatenate([self.postings[g] for g in chosen]), return_counts=True)
        need = max(1, math.ceil(len(chosen) / 3))
        keep = counts >= need
        ids, counts = ids[keep], counts[keep]
        if allowed is not None:  # rows the caller may not see are never candidates
            ids, counts = ids[allowed[ids]], counts[allowed[ids]]
        if len(ids) > MAX_CANDIDATES:
            top = np.argpartition(-counts, MAX_CANDIDATES)[:MAX_CANDIDATES]
            ids = ids[top]
        full = unicodedata.normalize("NFKC", text)
        by_core = process.cdist([core], [self.cores[i] for i in ids], scorer=fuzz.WRatio)[0]
        fulls = [self.fulls[i] for i in ids]
        # a short query may still carry its region ("北京锦宏"): compare it with the full names too
        by_full = process.cdist([full], fulls, scorer=fuzz.WRatio)[0]
        exact = process.cdist([full], fulls, scorer=fuzz.ratio)[0]
        scores = np.maximum(by_core, by_full) * 0.85 + exact * 0.15
        keep = np.flatnonzero(scores >= 50)
        ranked = sorted(
            ((int(ids[k]), float(scores[k])) for k in keep), key=lambda hit: (-hit[1], self.fulls[hit[0]])
        )
        return ranked[:limit]
