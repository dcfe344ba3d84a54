"""Train / held-out splits of question pairs that never share a question across the cut."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# The split every quality experiment uses, so their held-out figures are comparable.
SEED = 20261126
HELD_OUT = 0.3


def split_by_group(
    questions: Sequence[tuple[str, str]], seed: int = SEED, fraction: float = HELD_OUT
) -> npt.NDArray[np.bool_]:
    """True for held-out pairs; pairs linked by any shared (lower-cased) text stay together."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for first, second in questions:
        parent[find(first.lower())] = find(second.lower())
    roots = sorted({find(first.lower()) for first, _ in questions})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(roots, size=int(len(roots) * fraction), replace=False))
    return np.array([find(first.lower()) in held for first, _ in questions])
