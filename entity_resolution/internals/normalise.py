"""Normalisers: the spec's ``[[normalise]]`` steps turn input columns into comparable fields."""

from __future__ import annotations

import numpy as np
import opencc
import polars as pl

from entity_resolution.internals.distinct import distinct_rows
from entity_resolution.spec import Spec


def _text(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.String).str.normalize("NFKC").str.replace_all(r"\s+", "").str.to_lowercase()


def _simplified(values: pl.Series) -> pl.Series:
    rows, place = distinct_rows(values)
    if rows.len() == 0:
        return values
    unique = values.gather(rows)
    converter = opencc.OpenCC("t2s")
    joined = converter.convert("\n".join(unique.str.replace_all("\n", " ").to_list())).split("\n")
    return pl.Series(values.name, joined, dtype=pl.String).gather(place)


_BATCH = 20_000  # values segmented by one rjieba call


def _words(values: list[str]) -> list[str]:
    """Per value its rjieba words joined by ``\x1f``, in rjieba's order. Values are segmented
    ``_BATCH`` at a time by one call over them joined by newlines: rjieba segments each run of
    characters between two separators on its own, so a value's words are those of cutting it
    alone (a value holding a separator, or a batch that does not split back into its values, is
    cut value by value)."""
    import rjieba

    out: list[str] = []
    for start in range(0, len(values), _BATCH):
        batch = values[start : start + _BATCH]
        pieces = "\x1f".join(rjieba.cut("\n".join(batch))).split("\n")
        if len(pieces) != len(batch) or any("\n" in v or "\x1f" in v for v in batch):
            pieces = ["\x1f".join(rjieba.cut(v)) for v in batch]
        out.extend(pieces)
    return out


def _tokens(values: pl.Series) -> pl.Series:
    """Per value its rjieba words, distinct and sorted (each distinct value segmented once)."""
    rows, place = distinct_rows(values)
    # one joined string per value, split by Polars: building a list column from Python lists is slow
    joined = pl.Series(_words(values.gather(rows).to_list()), dtype=pl.String)
    tokens = joined.str.split("\x1f").list.eval(
        pl.element().filter(pl.element() != "").unique().sort()
    )  # (sorted as Python sorts strings: by code point, which is UTF-8's byte order)
    return tokens.gather(place).alias(values.name)


def one_character_masked(frame: pl.DataFrame, column: str = "value", out: str = "masked") -> pl.DataFrame:
    """One row per character of ``column`` with that character masked (``out``): two strings one
    substitution apart share a masked form, so an equi-join on it finds them without comparing
    every pair."""
    return (
        frame.with_columns(pl.int_ranges(0, pl.col(column).str.len_chars()).alias("at"))
        .explode("at")
        .drop_nulls("at")
        .with_columns(
            (
                pl.col(column).str.slice(0, pl.col("at"))
                + "\x00"
                + pl.col(column).str.slice(pl.col("at") + 1)
            ).alias(out)
        )
    )


def correction_table(values: pl.Series, counts: pl.DataFrame | None = None) -> pl.DataFrame:
    """Spellings on one record only that are one character (a substitution) away from exactly one
    spelling that recurs on other records, each with that spelling (``value``, ``to``, sorted by
    ``value``).

    A typo is one-off (each record is mistyped its own way), while a sibling firm's own name recurs
    on its records; a one-off with two recurring neighbours (a firm and its sibling) is left as it
    is. Neighbours are found by joining on the spelling with each character position masked.
    ``counts`` (``value``, ``len``): how many records carry each spelling in the whole input when
    ``values`` are one part of it (an incremental night, a chunk); by default ``values``' own."""
    present = pl.DataFrame({"value": values}).drop_nulls()
    if counts is None:
        counts = present.group_by("value").len()
    counts = counts.select("value", pl.col("len").cast(pl.Int64))

    once = one_character_masked(
        counts.filter(pl.col("len") == 1).join(present.unique(), on="value", how="semi")
    )
    recurring = one_character_masked(counts.filter(pl.col("len") > 1)).select(
        pl.col("value").alias("to"), "masked"
    )
    return (
        once.select("value", "masked")
        .join(recurring, on="masked")
        .group_by("value")
        .agg(pl.col("to").unique().alias("to"))
        .filter(pl.col("to").list.len() == 1)
        .select("value", pl.col("to").list.first())
        .sort("value")
    )


def corrected_names(spec: Spec) -> list[tuple[str, str]]:
    """(input column, output prefix) of each company-name normaliser that corrects one-off spellings."""
    return [
        (step["column"], step.get("out", step["column"]))
        for step in spec.normalise
        if step["kind"] == "company_name" and step.get("correct_one_offs")
    ]


def core_counts(frame: pl.DataFrame, spec: Spec) -> dict[str, pl.DataFrame]:
    """Per corrected company-name column, how many of ``frame``'s records carry each core as
    written (``value``, ``len``): a part's counts, which add up to the whole input's
    (``spelling_counts`` of all its names)."""
    return {
        column: frame.group_by(pl.col(f"{out}_core").alias("value")).len().drop_nulls("value")
        for column, out in corrected_names(spec)
        if f"{out}_core" in frame.columns
    }


def correct_spellings(frame: pl.DataFrame, spec: Spec, corrections: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Each corrected company-name column's one-off spellings (``corrections``: per input column a
    ``correction_table``) read as their neighbour: the core, the key (core and branch) and the
    words of the records carrying one; nothing else changes (the region is not read from the core)."""
    for column, out in corrected_names(spec):
        table = corrections.get(column)
        if table is None or table.height == 0 or f"{out}_core" not in frame.columns:
            continue
        core = frame[f"{out}_core"]
        fixed = core.replace(table["value"], table["to"])
        rows = np.flatnonzero((fixed != core).fill_null(False).to_numpy())
        if len(rows) == 0:
            continue
        key = frame[f"{out}_key"]
        words = pl.DataFrame({"row": pl.Series(rows, dtype=pl.UInt32), "w": _tokens(fixed.gather(rows))})
        frame = frame.with_columns(
            fixed.alias(f"{out}_core"),
            (fixed + key.str.slice(core.str.len_chars())).alias(f"{out}_key"),
            frame.select(pl.col(f"{out}_tokens").alias("w"))
            .with_row_index("row")
            .update(words, on="row")["w"]
            .alias(f"{out}_tokens"),
        )
    return frame


def spelling_counts(names: pl.DataFrame) -> pl.DataFrame:
    """Company names as written with how many records carry each (``name``, ``len``) as the
    spellings of their cores (``value``, ``len``): what ``correction_table`` counts."""
    from entity_resolution.names import normalise_names

    cores = normalise_names(names["name"].cast(pl.String))["core"]
    return (
        pl.DataFrame({"value": cores, "len": names["len"].cast(pl.Int64)})
        .drop_nulls("value")
        .group_by("value")
        .agg(pl.col("len").sum())
    )


def normalise(
    frame: pl.DataFrame,
    spec: Spec,
    spellings: dict[str, pl.DataFrame] | None = None,
    *,
    correct: bool = True,
) -> pl.DataFrame:
    """The spec's normalisers applied to the input (new columns added, inputs kept); a normaliser's
    modules are imported only when a spec uses it (a person spec loads no name or code tables).
    ``spellings``: per company-name input column, the whole input's spelling counts
    (``spelling_counts``) when ``frame`` is one part of it; ``correct_one_offs`` judges by them.
    ``correct`` False leaves one-off spellings as written: a caller cutting the input in parts
    counts the parts' cores (``core_counts``) and applies one ``correction_table`` to every part
    (``correct_spellings``), the same as correcting here with the whole input's counts."""
    for step in spec.normalise:
        kind = step["kind"]
        if kind == "company_name":
            from entity_resolution.names import normalise_names

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
            from foundation.identifiers import classify_values, compact_code_expr

            # every configured column is classified (a department may put any code in any column)
            sources = [
                step[t] for t in ("uscc", "org_code", "reg_no") if step.get(t) and step[t] in frame.columns
            ]
            # the USCC as written where it is none (a mistyped character fails the check): a near
            # miss of a firm's code is evidence for comparisons, never an identity (uscc)
            written = frame.select(
                pl.coalesce(
                    pl.when(code.str.len_chars() == 18).then(code)
                    for code in (compact_code_expr(pl.col(source).cast(pl.String)) for source in sources)
                ).alias("w")
                if sources
                else pl.lit(None, pl.String).alias("w")
            )["w"]
            found: dict[str, list[pl.Series]] = {"uscc": [], "org_code": [], "reg_no": []}
            for source in sources:  # each distinct code classified once
                values = frame[source].cast(pl.String)
                rows, place = distinct_rows(values)
                codes = classify_values(values.gather(rows)).select(pl.all().gather(place))
                for target in found:
                    found[target].append(codes[target])
            frame = frame.with_columns(
                (pl.coalesce(values) if values else pl.lit(None, pl.String)).alias(target)
                for target, values in ((t, [pl.lit(v) for v in vs]) for t, vs in found.items())
            ).with_columns(
                pl.col("uscc").str.slice(2, 4).alias("uscc_division"),
                pl.col("reg_no").str.slice(0, 4).alias("reg_no_division"),  # accuracy: codes' division
                pl.coalesce(pl.col("uscc"), pl.lit(written)).alias("uscc_written"),
            )
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
        elif kind == "place":  # the division of the last province or prefecture a text names
            column, out = step["column"], step.get("out", step["column"])
            if column not in frame.columns:
                frame = frame.with_columns(pl.lit(None, pl.String).alias(out))
            else:
                from entity_resolution.names import place_divisions

                frame = frame.with_columns(place_divisions(frame[column].cast(pl.String)).alias(out))
        elif kind == "coalesce":
            present = [pl.col(c) for c in step["columns"] if c in frame.columns]
            frame = frame.with_columns(pl.coalesce(present).alias(step["out"]))
    if correct:  # a one-off spelling reads as the one recurring neighbour
        frame = corrected(frame, spec, spellings)
    return frame


def correction_tables(spec: Spec, spellings: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Per corrected company-name column of ``spellings`` (the whole input's counts), the
    ``correction_table`` of every one-off spelling among them: computed once for a caller that
    corrects many parts by the same counts (``correct_spellings``), each part then corrected as
    ``corrected`` corrects it, by a lookup rather than a join of every recurring spelling's
    masked forms (about 1.3 s for a city's 1.2M spellings, each time)."""
    return {
        column: correction_table(spellings[column]["value"], spellings[column])
        for column, _ in corrected_names(spec)
        if column in spellings
    }


def corrected(
    frame: pl.DataFrame,
    spec: Spec,
    spellings: dict[str, pl.DataFrame] | None = None,
    tables: dict[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """``normalise(..., correct=False)``'s frame with its one-off spellings corrected, judged by
    ``spellings`` (by default its own): what ``normalise`` returns. ``tables``: a column's
    ``correction_tables`` made already (``spellings`` is not read for it)."""
    if not corrected_names(spec):
        return frame
    tables = tables or {}
    return correct_spellings(
        frame,
        spec,
        {
            column: tables[column]
            if column in tables
            else correction_table(frame[f"{out}_core"], (spellings or {}).get(column))
            for column, out in corrected_names(spec)
            if f"{out}_core" in frame.columns
        },
    )


def normaliser_fingerprint(spec: Spec, fields: list[str]) -> str:
    """Stands for what ``normalise`` makes of a record's ``fields`` with this spec: the spec's
    normalisers, the code that runs them (this module, the name and code parsers and their tables)
    and the versions of the libraries they call. A record stored normalised (the registry's
    representatives) is used as it is only while its fingerprint is the current one."""
    import hashlib
    import importlib.metadata
    import json
    import sys
    from pathlib import Path

    from entity_resolution import names
    from entity_resolution.internals import distinct
    from foundation import divisions, identifiers

    digest = hashlib.sha1(json.dumps([spec.normalise, fields], sort_keys=True, default=str).encode())
    for module in (sys.modules[__name__], names, distinct, divisions, identifiers):
        digest.update(Path(module.__file__).read_bytes())
    for package in ("polars", "OpenCC", "python-stdnum"):
        digest.update(f"{package}=={importlib.metadata.version(package)}".encode())
    return digest.hexdigest()[:16]
