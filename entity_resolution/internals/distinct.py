"""Each distinct value once: the kernel that the name normaliser (``entity_resolution.names``), the
spec's normalisers and the comparer share, so that none of them imports another for it."""

from __future__ import annotations

import numpy as np
import polars as pl


def first_rows(values: pl.Series) -> np.ndarray:
    """Per row the first row holding the same value (a hash grouping of the values themselves;
    nulls are one value)."""
    frame = values.to_frame("v").with_row_index("row").select(pl.col("row").min().over("v"))
    return frame.to_series().cast(pl.Int64).to_numpy()


def distinct_rows(values: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(the row where each distinct non-null value first occurs, in row order; per row the place of
    its value among those, null for a null value).

    A normaliser works on ``values.gather(rows)`` and its result is spread back with
    ``result.gather(place)``: one hash grouping and two gathers, where a join back on the value
    (a string) costs several times more."""
    first = first_rows(values)
    present = ~values.is_null().to_numpy()
    is_first = (first == np.arange(len(first))) & present
    place = pl.DataFrame({"place": (np.cumsum(is_first) - 1)[first], "present": present})
    return (
        pl.Series("row", np.flatnonzero(is_first), dtype=pl.UInt32),
        place.select(pl.when("present").then(pl.col("place").cast(pl.UInt32))).to_series(),
    )
