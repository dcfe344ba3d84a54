"""The 95% Wilson score interval: how sure a measured rate is, from small counts on up."""

from __future__ import annotations

import math

# z for a two-sided 95% interval.
_Z95 = 1.959964


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (stays inside [0, 1] for small counts)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + _Z95**2 / trials
    centre = (p + _Z95**2 / (2 * trials)) / denominator
    half = _Z95 * math.sqrt(p * (1 - p) / trials + _Z95**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
