"""bench/throughput.md: issue 15's table, the target ratios and every repetition's numbers."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import Table, ms, verdict

NAN = float("nan")
OTHER = "alt_"  # sample-key prefix of the comparison Sentinel's measurements (other workers)
SENTINEL_KEYS = {
    f"{what}_{kind}" for what in ("exact", "first", "repeat") for kind in ("p50", "rate")
}


@dataclass(frozen=True)
class Ratio:
    """numerator ÷ denominator per repetition; a target it must reach (at least or at most)."""

    name: str
    numerator: str
    denominator: str
    target: float | None = None
    at_least: bool = True
    issue: str = "-"  # the value issue 15 measured when it was filed

    def of(self, sample: Mapping[str, float], prefix: str = "") -> float:
        """This ratio in one repetition (NaN when either side is missing); with `prefix`, of
        that Sentinel's numerator (e.g. `alt_`: the comparison Sentinel's)."""
        if prefix and self.numerator not in SENTINEL_KEYS:
            return NAN
        numerator = prefix + self.numerator
        num, den = sample.get(numerator, NAN), sample.get(self.denominator, NAN)
        return num / den if den == den and den != 0 else NAN

    def target_text(self) -> str:
        """`≥ 0.40`, `≤ 3`, or `-`."""
        if self.target is None:
            return "-"
        return f"{'≥' if self.at_least else '≤'} {self.target:g}"

    def verdict(self, value: float) -> str:
        """met / NOT met against the target; `-` without one."""
        if self.target is None or value != value:
            return "-"
        return verdict(value >= self.target if self.at_least else value <= self.target)


def median(values: Sequence[float]) -> float:
    """Median of the values that are numbers."""
    real = [v for v in values if v == v]
    return statistics.median(real) if real else NAN


def _rate(value: float) -> str:
    return "-" if value != value else f"{value:,.0f}"


def cell(samples: Sequence[Mapping[str, float]], key: str) -> str:
    """`median (min-max)` over the repetitions; ms for `_p50` keys, per second for `_rate`."""
    values = [s[key] for s in samples if key in s and s[key] == s[key]]
    if not values:
        return "-"
    fmt = ms if key.endswith("_p50") else _rate
    mid = fmt(statistics.median(values))
    if len(values) == 1:
        return mid
    return f"{mid} ({fmt(min(values))}–{fmt(max(values))})"


# (exact p50, exact/s, semantic p50, semantic/s) per system row of the issue's table.
COLUMNS: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    "trivial": ("trivial_p50", "trivial_rate", None, None),
    "inproc": (None, None, "inproc_p50", "inproc_rate"),
    "redisvl": (None, None, "redisvl_p50", "redisvl_rate"),
    "sentinel": ("exact_p50", "exact_rate", "first_p50", "first_rate"),
    "sentinel_repeat": (None, None, "repeat_p50", "repeat_rate"),
    "alt_sentinel": ("alt_exact_p50", "alt_exact_rate", "alt_first_p50", "alt_first_rate"),
    "alt_sentinel_repeat": (None, None, "alt_repeat_p50", "alt_repeat_rate"),
}
KEYS = [
    "trivial_p50", "trivial_rate", "exact_p50", "exact_rate", "first_p50", "first_rate",
    "repeat_p50", "repeat_rate", "alt_exact_p50", "alt_exact_rate", "alt_first_p50",
    "alt_first_rate", "alt_repeat_p50", "alt_repeat_rate", "inproc_p50", "inproc_rate",
    "redisvl_p50", "redisvl_rate",
]  # fmt: skip


def main_table(systems: Mapping[str, str], samples: Sequence[Mapping[str, float]]) -> Table:
    """The issue's table: median over repetitions (min-max)."""
    table = Table(
        "Issue 15's table, measured in this run (median of the repetitions, min–max)",
        ["system", "exact hit p50 ms (c=1)", "exact hits/s (c=16)",
         "semantic hit p50 ms (c=1)", "semantic hits/s (c=16)"],
    )  # fmt: skip
    for name, label in systems.items():
        keys = COLUMNS[name]
        if all(k is None or not any(k in s for s in samples) for k in keys):
            continue
        table.add(label, *("-" if k is None else cell(samples, k) for k in keys))
    return table


def ratio_table(
    ratios: Sequence[Ratio],
    samples: Sequence[Mapping[str, float]],
    workers: int = 1,
    other: int = 1,
) -> Table:
    """Each target ratio per repetition (paired: both sides from the same repetition), on the
    Sentinel `make run` serves (`workers` workers), the comparison Sentinel's (`other`) beside."""
    served = plural(workers)
    alt = plural(other)
    table = Table(
        "Target ratios (each computed within one repetition; median of the repetitions)",
        ["ratio", "target", "when the issue was filed", f"per repetition ({served})",
         f"median ({served}, `make run`)", "verdict", f"{alt}: per repetition",
         f"{alt}: median"],
    )  # fmt: skip
    for ratio in ratios:
        values = [ratio.of(s) for s in samples]
        if all(v != v for v in values):
            continue
        mid = median(values)
        solo = [ratio.of(s, OTHER) for s in samples]
        solo_text = ["-", "-"]
        if any(v == v for v in solo):
            solo_text = [_list(solo), f"{median(solo):.2f} ({ratio.verdict(median(solo))})"]
        table.add(
            ratio.name,
            ratio.target_text(),
            ratio.issue,
            _list(values),
            f"**{mid:.2f}**",
            ratio.verdict(mid),
            *solo_text,
        )
    return table


def plural(workers: int) -> str:
    """`1 worker`, `2 workers`."""
    return f"{workers} worker{'s' if workers != 1 else ''}"


def _list(values: Sequence[float]) -> str:
    return ", ".join("-" if v != v else f"{v:.2f}" for v in values)


def reps_table(samples: Sequence[Mapping[str, float]]) -> Table:
    """Every number of every repetition."""
    keys = [k for k in KEYS if any(k in s for s in samples)]
    table = Table(
        "Every repetition", ["measurement", *[f"rep {i + 1}" for i in range(len(samples))]]
    )
    for key in keys:
        fmt = ms if key.endswith("_p50") else _rate
        unit = "p50 ms (c=1)" if key.endswith("_p50") else "per s (c=16)"
        table.add(f"{key.rsplit('_', 1)[0]} {unit}", *(fmt(s.get(key, NAN)) for s in samples))
    return table


METHOD = """## Method

- One run, one machine: an embedded Redis Stack (`var/bench/throughput`, no persistence), the
  fake OpenAI-compatible provider (`tests/fakes/openai_server.py`, fixed delay, only misses reach
  it), Sentinel as `python -m app` with its default settings (as `make run`: WEB_CONCURRENCY
  passed through when set, else one worker per two cores), a second Sentinel with the other
  worker count for comparison (one per core, or one where that is the default; same Redis,
  semantic scopes of its own), and the floor
  (`bench/trivial_server.py`: a raw ASGI app on uvicorn, one worker, Sentinel's uvicorn options),
  each its own process; the load generator (aiohttp, keep-alive, one connection per client) and
  the in-process references run in the bench process. Everything shares the machine's cores.
- Requests are drop-in Chat Completions bodies (`/v1/chat/completions`, one user message,
  `max_tokens` set). The floor gets the same bodies, reads them unparsed and answers
  a fixed JSON.
- c=1: sequential requests, p50 of the client time to the last body byte. c=16: 16 clients,
  each sending its next request as soon as its reply is read; hits of the right kind
  (`X-Sentinel-Cache`) divided by the wall time. Each connection first sends one untimed exact
  hit.
- Exact hits: the stored questions, cycled. Semantic hits: `max_tokens` is part of Sentinel's
  cache scope, so each repetition stores the questions again in a scope of its own and asks each
  verified paraphrase there exactly once (first-time: a few at c=1, the rest at c=16; the full
  run warms three such scopes per repetition for a longer c=16 window, its rate = hits ÷ the
  summed wall time of those windows), then cycles the same paraphrases again (repeated: what a
  paraphrase alias would serve without an embedding). The targets use the first-time numbers.
- In-process reference: the service's `LocalEmbedder` (same model, threads and workers) and
  `CacheStore.nearest` on the same index and scope, from asyncio tasks in one process; an op
  counts when the top cosine reaches the service's floor. redisvl's SemanticCache gets the same
  embedder through a `CustomVectorizer`, its own FLAT index and a range query at the same floor.
- Three repetitions, interleaved (every system once per repetition; the two Sentinels take
  turns going first), so drift on the shared machine hits all systems alike; the ratios pair
  numbers from the same repetition. The target verdicts are the default Sentinel's; the
  comparison Sentinel's ratios use the same repetition's floor and in-process numbers.
"""


def write_report(
    output: Path,
    *,
    quick: bool,
    machine: Table,
    setup: Table,
    systems: Mapping[str, str],
    ratios: Sequence[Ratio],
    samples: Sequence[Mapping[str, float]],
    notes: Sequence[str],
    plan: Mapping[str, Any],
    workers: int,
    other: int,
) -> None:
    """Write and print the report."""
    table = main_table(systems, samples)
    table.notes.extend(notes)
    sizes = Table("Requests per measurement and repetition", ["measurement", "n"])
    for key, value in plan.items():
        sizes.add(key, value)
    text = "\n".join(
        [
            "# Throughput: Sentinel against a trivial server and an in-process embed + KNN",
            "",
            "Generated by `bench/throughput.py` (`make bench-throughput`; "
            f"{'`--quick`' if quick else 'full'} run). Compare ratios within one run: "
            "absolute numbers move with the machine's load.",
            "",
            table.markdown(),
            ratio_table(ratios, samples, workers, other).markdown(),
            machine.markdown(),
            setup.markdown(),
            reps_table(samples).markdown(),
            sizes.markdown(),
            METHOD,
        ]
    )
    output.write_text(text, encoding="utf-8")
    print(text, flush=True)
