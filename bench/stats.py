"""Latency summaries and Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Median, p99 and mean of latency samples in milliseconds."""

    n: int
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Summary:
        """Summarise samples; NaN everywhere when there are none."""
        if not samples_ms:
            nan = float("nan")
            return cls(0, nan, nan, nan)
        array = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            n=int(array.size),
            p50=float(np.percentile(array, 50)),
            p99=float(np.percentile(array, 99)),
            mean=float(array.mean()),
        )


def ms(value: float | None, digits: int = 2) -> str:
    """A millisecond value for a table cell ("-" when missing)."""
    if value is None or value != value:  # NaN
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def ratio(value: float) -> str:
    """A ratio like `12x` or `0.5x`."""
    if value != value or value == 0:
        return "-"
    return f"{value:.0f}x" if value >= 10 else f"{value:.1f}x"


def verdict(met: bool) -> str:
    """`met` / `NOT met`."""
    return "met" if met else "**NOT met**"


@dataclass
class Table:
    """A titled Markdown table with optional notes under it."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        """Append a row (cells converted with str)."""
        self.rows.append([str(cell) for cell in cells])

    def markdown(self) -> str:
        """The table as Markdown, title as a level-3 heading."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"
