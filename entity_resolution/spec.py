"""A linkage spec (TOML): normalisers, exact keys and constraints, blocking rules, comparisons with
levels, the Fellegi-Sunter model settings and the link and review thresholds.

See entity_resolution/specs/enterprise.toml for every option, explained.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPECS_DIR = Path(__file__).resolve().parent / "specs"
STRING_METHODS = ("exact", "levenshtein", "jaro_winkler")
LINK_TYPES = ("dedupe", "link_only")
METHODS = ("exact", "levenshtein", "jaro_winkler", "token_jaccard", "numeric", "date_days", "prefix")
# scores of the prefix method: equal, one a prefix of the other (a province and a city in it), neither
PREFIX_SCORES = (1.0, 0.5, 0.0)
NORMALISERS = ("company_name", "codes", "text", "digits", "date", "place", "coalesce")
_KEY = re.compile(r"^(\w+)(?:\[(-?\d*):(-?\d*)\])?$")


@dataclass(frozen=True)
class Comparison:
    name: str
    column: str
    method: str
    thresholds: tuple[float, ...]
    label: str = ""  # how pages name the field in a match grade (the name when not given)
    # the top (exact) level weighs by the value's own frequency: a common value is weaker evidence
    tf_adjust: bool = False
    # level 1 is "differs in exactly one character" (a sibling name or a typo: the model decides)
    one_char_level: bool = False

    @property
    def levels(self) -> int:
        """Levels 0 (no threshold met) .. top (all met), plus the one-character level when asked;
        nulls get their own level."""
        return len(self.thresholds) + 1 + int(self.one_char_level)


@dataclass(frozen=True)
class BlockKey:
    column: str
    start: int | None
    stop: int | None

    @classmethod
    def parse(cls, text: str) -> BlockKey:
        match = _KEY.match(text.strip())
        if not match:
            raise ValueError(f"blocking key {text!r}: use col, col[:n] or col[-n:]")
        column, start, stop = match.groups()
        return cls(column, int(start) if start else None, int(stop) if stop else None)


@dataclass(frozen=True)
class Spec:
    name: str
    id_column: str
    normalise: tuple[dict[str, Any], ...]
    exact_keys: tuple[str, ...]
    cannot_link_on: str | None
    cannot_link_unless_equal: tuple[str, ...]
    blocking: tuple[tuple[BlockKey, ...], ...]
    max_block_size: int
    comparisons: tuple[Comparison, ...]
    u_sample_pairs: int
    m_sample_pairs: int
    em_iterations: int
    m_from_known_matches: tuple[str, ...]
    link_threshold: float
    review_threshold: float
    # "dedupe" (any two records) or "link_only" (two inputs told apart by ``source_column``: only
    # pairs across them, each record linked to at most one record of the other input)
    link_type: str = "dedupe"
    source_column: str = "source_dataset"
    source: Path = field(default=Path("."))
    # how the work is cut ([scale]: the settings of Scale in entity_resolution/internals/partition.py);
    # never changes the result
    scale: dict[str, int] = field(default_factory=dict)

    @property
    def link_only(self) -> bool:
        return self.link_type == "link_only"


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec; a name without a folder means one of entity_resolution/specs/."""
    path = Path(path)
    if not path.exists() and (SPECS_DIR / f"{path.stem}.toml").exists():
        path = SPECS_DIR / f"{path.stem}.toml"
    raw = tomllib.loads(path.read_text("utf-8"))
    where = f"spec {path}"
    for step in raw.get("normalise", []):
        if step.get("kind") not in NORMALISERS:
            raise ValueError(
                f"{where}: normaliser kind must be one of {NORMALISERS}, not {step.get('kind')!r}"
            )
    comparisons = []
    for item in raw.get("compare", []):
        if item.get("method") not in METHODS:
            raise ValueError(f"{where}: comparison {item.get('name')!r}: method must be one of {METHODS}")
        comparisons.append(
            Comparison(
                item["name"],
                item["column"],
                item["method"],
                tuple(
                    float(t)
                    for t in item.get(
                        "thresholds", PREFIX_SCORES[:2] if item["method"] == "prefix" else [1.0]
                    )
                ),
                tf_adjust=bool(item.get("tf_adjust", False)),
                one_char_level=bool(item.get("one_char_level", False)),
                label=str(item.get("label", item["name"])),
            )
        )
        if comparisons[-1].tf_adjust and item["method"] not in (*STRING_METHODS, "prefix"):
            raise ValueError(
                f"{where}: comparison {item['name']!r}: tf_adjust needs one value per side "
                f"(one of {(*STRING_METHODS, 'prefix')}), not {item['method']!r}"
            )
        if comparisons[-1].one_char_level and item["method"] not in STRING_METHODS:
            raise ValueError(
                f"{where}: comparison {item['name']!r}: one_char_level needs one of {STRING_METHODS}"
            )
    if not comparisons:
        raise ValueError(f"{where}: at least one [[compare]] is needed")
    exact = raw.get("exact", {})
    model = raw.get("model", {})
    thresholds = raw.get("thresholds", {})
    link, review = float(thresholds.get("link", 0.9)), float(thresholds.get("review", 0.5))
    if not 0 < review <= link < 1:
        raise ValueError(f"{where}: thresholds need 0 < review <= link < 1")
    settings = raw.get("spec", {})
    if settings.get("link_type", "dedupe") not in LINK_TYPES:
        raise ValueError(f"{where}: link_type must be one of {LINK_TYPES}, not {settings.get('link_type')!r}")
    return Spec(
        name=raw.get("spec", {}).get("name", path.stem),
        id_column=raw.get("spec", {}).get("id_column", "record_id"),
        normalise=tuple(raw.get("normalise", [])),
        exact_keys=tuple(exact.get("keys", [])),
        cannot_link_on=exact.get("cannot_link_on"),
        cannot_link_unless_equal=tuple(exact.get("cannot_link_unless_equal", [])),
        blocking=tuple(tuple(BlockKey.parse(k) for k in rule["keys"]) for rule in raw.get("blocking", [])),
        max_block_size=int(raw.get("max_block_size", exact.get("max_block_size", 400))),
        comparisons=tuple(comparisons),
        u_sample_pairs=int(model.get("u_sample_pairs", 200_000)),
        m_sample_pairs=int(model.get("m_sample_pairs", 200_000)),
        em_iterations=int(model.get("em_iterations", 10)),
        m_from_known_matches=tuple(model.get("m_from_known_matches", [])),
        link_threshold=link,
        review_threshold=review,
        link_type=settings.get("link_type", "dedupe"),
        source_column=settings.get("source_column", "source_dataset"),
        source=path,
        scale=dict(raw.get("scale", {})),
    )
