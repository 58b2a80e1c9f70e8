"""Constrained clustering: a union-find over signatures that refuses joins the spec forbids.

Two components never join when they hold different ``cannot_link_on`` values (two valid USCCs),
different ``cannot_link_unless_equal`` values (two branches), a steward's cannot-link, or two
different registry anchors (an incremental run with fixed entities) — also through chains.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Clusters:
    """Union-find over ``n`` signatures carrying each component's constraint values."""

    def __init__(
        self,
        n: int,
        value_of: dict[int, str] | None = None,
        branch_of: dict[int, Any] | None = None,
    ) -> None:
        self.parent = list(range(n))
        self.component_value: dict[int, str | None] = dict(value_of or {})
        self.branch_of = branch_of or {}
        self.component_branch: dict[int, Any] = {}
        self.separated: dict[int, set[int]] = {}  # root -> roots it must never join
        self.component_anchor: dict[int, str] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def roots(self) -> np.ndarray:
        n = len(self.parent)
        return np.fromiter((self.find(i) for i in range(n)), dtype=np.int64, count=n)

    def join_exact(self, a: int, b: int) -> None:
        """Signatures sharing an exact key, unless their components hold two different values."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        va, vb = self.component_value.get(ra), self.component_value.get(rb)
        if va and vb and va != vb:  # an org code shared by two different USCCs: keep them apart
            return
        self.parent[rb] = ra
        self.component_value[ra] = va or vb

    def start_linking(self, forbidden: set[frozenset[int]], anchor_of: dict[int, str]) -> None:
        """After the exact keys: the branch of each component, steward cannot-links and anchors."""
        if self.branch_of:
            self.component_branch = {self.find(i): self.branch_of.get(i) for i in range(len(self.parent))}
        for pair in forbidden:
            a, b = tuple(pair)
            self.separated.setdefault(self.find(a), set()).add(self.find(b))
            self.separated.setdefault(self.find(b), set()).add(self.find(a))
        self.component_anchor = {self.find(i): a for i, a in anchor_of.items()}

    def join(self, a: int, b: int, force: bool = False) -> bool:
        """Join the components of ``a`` and ``b`` unless a constraint forbids it (``force``: a
        steward's must-link or one anchored entity, which only anchors can refuse)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        va, vb = self.component_value.get(ra), self.component_value.get(rb)
        if not force:
            if va and vb and va != vb:
                return False
            if self.branch_of and self.component_branch.get(ra) != self.component_branch.get(rb):
                return False
            if rb in self.separated.get(ra, set()):
                return False
        if self.component_anchor:
            aa, ab = self.component_anchor.get(ra), self.component_anchor.get(rb)
            if aa and ab and aa != ab:
                return False
            self.component_anchor[ra] = aa or ab
        self.parent[rb] = ra
        self.component_value[ra] = va or vb
        if self.branch_of:
            self.component_branch[ra] = self.component_branch.get(ra)
        self.separated.setdefault(ra, set()).update(self.find(x) for x in self.separated.pop(rb, set()))
        for other in self.separated.get(ra, set()):
            self.separated.setdefault(other, set()).add(ra)
        return True
