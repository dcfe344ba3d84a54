"""`python -m bench.verifier_cost`: semantic-hit latency over HTTP, VERIFIER=checks, =overlap
(the default: the verifier reads only hits with nearly the question's words) and =on.

Issue 13 allows the verifier cascade to make a semantic hit at most 1.3x slower (p50, c=1,
through HTTP) than today's. `--baseline-tree PATH` adds today's service as a third setting: a
checkout of an earlier commit (e.g. `git worktree add /tmp/before <commit>`), run with its
own defaults, so the cascade is compared with the hit users had before it in the same sitting.
Each round starts a fresh Redis and one Sentinel per setting, in alternating
order (drift on a shared machine falls on all), stores the questions, then asks each
paraphrase that came back a semantic hit on its own question. The p50s are over the
paraphrases that hit under every setting, so both sides time the same requests; the ratio is
the median of the rounds' ratios. Then the same paraphrases twice over with 16 in flight:
semantic hits/s per setting. PARAPHRASE_ALIAS is off so every hit embeds (and verifies).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from app.providers.embedders.local import LocalEmbedder
from app.service.guard import configured_decision
from app.settings import load_settings
from bench.e2e import Reply, concurrent, sequential
from bench.e2e import _session as keep_alive_session
from bench.procs import ROOT, bench_redis, fake_provider, sentinel
from bench.questions import Pair, candidate_pairs, choose_pairs

ALLOWED_RATIO = 1.3
SETTINGS = ("checks", "overlap", "on")
VERIFYING = ("overlap", "on")
BASELINE = "baseline"


class Round(NamedTuple):
    """One setting's round: c=1 latencies per paraphrase, which hit, semantic hits/s at c=16."""

    latencies: dict[str, list[float]]
    hit: set[str]
    rate: float


async def _round(
    setting: str, pairs: list[Pair], repeats: int, provider_url: str, baseline: Path | None
) -> Round:
    """One fresh Redis and Sentinel: latencies of semantic hits per paraphrase, which hit, and
    semantic hits/s with 16 in flight.

    BASELINE runs the `baseline` checkout with its own default VERIFIER."""
    extra = {"PARAPHRASE_ALIAS": "false"}
    if setting != BASELINE:
        extra["VERIFIER"] = setting
    async with (
        bench_redis(f"verifier-{setting}") as server,
        sentinel(
            f"sentinel-verifier-{setting}",
            redis_url=server.url,
            provider_url=provider_url,
            extra=extra,
            tree=baseline if setting == BASELINE and baseline is not None else ROOT,
        ) as base,
    ):
        url = f"{base}/v1/query"
        await concurrent(url, [p.original for p in pairs], 16)
        async with keep_alive_session(1) as one:
            first = await sequential(one, url, [p.paraphrase for p in pairs])
            hit = {
                p.paraphrase
                for p, r in zip(pairs, first, strict=True)
                if r.match == "semantic" and r.matched_prompt == p.original
            }
            asked = [p.paraphrase for p in pairs if p.paraphrase in hit] * repeats
            replies: list[Reply] = await sequential(one, url, asked)
        # Throughput: the same paraphrases, 16 in flight (every one embeds: no alias).
        loaded, wall = await concurrent(url, asked * 2, 16)
    latencies: dict[str, list[float]] = defaultdict(list)
    for prompt, reply in zip(asked, replies, strict=True):
        if reply.match == "semantic":
            latencies[prompt].append(reply.latency_ms)
    rate = sum(1 for r in loaded if r.match == "semantic") / wall
    return Round(latencies, hit, rate)


async def main(
    rounds: int,
    n_pairs: int,
    repeats: int,
    baseline: Path | None,
    settings_timed: tuple[str, ...] = SETTINGS,
) -> None:
    """Alternate the settings for `rounds` rounds and print the table."""
    settings = load_settings({})
    embedder = await LocalEmbedder.load()
    try:
        candidates, note = candidate_pairs()
        guard, floor = configured_decision(settings, embedder.id)
        pairs = await choose_pairs(
            embedder, candidates, want=n_pairs, threshold=floor, guard=guard, seed=0
        )
    finally:
        await embedder.aclose()
    print(f"{note}; {len(pairs)} pairs", file=sys.stderr)
    compared = (*settings_timed, BASELINE) if baseline is not None else settings_timed
    results: list[dict[str, Round]] = []
    async with fake_provider(0.3) as provider_url:
        for i in range(rounds):
            order = compared if i % 2 == 0 else compared[::-1]
            results.append(
                {s: await _round(s, pairs, repeats, provider_url, baseline) for s in order}
            )
            print(f"round {i + 1} of {rounds} done", file=sys.stderr)
    verifying = [v for v in VERIFYING if v in compared]
    against = [(v, s) for v in verifying for s in compared if s not in VERIFYING]
    print(
        f"| round | paraphrases hit ({' / '.join(compared)} / all) | "
        + " | ".join(f"{s} p50 ms" for s in compared)
        + " | "
        + " | ".join(f"{v} ÷ {s}" for v, s in against)
        + " |"
    )
    print("|---" * (3 + len(compared) + len(against) - 1) + "|")
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in against}
    for i, by_setting in enumerate(results):
        every = set.intersection(*(r.hit for r in by_setting.values()))
        p50 = {
            s: statistics.median(ms for p in every for ms in r.latencies.get(p, []))
            for s, r in by_setting.items()
        }
        for v, s in against:
            ratios[v, s].append(p50[v] / p50[s])
        counts = " / ".join(str(len(by_setting[s].hit)) for s in compared)
        print(
            f"| {i + 1} | {counts} / {len(every)} | "
            + " | ".join(f"{p50[s]:.2f}" for s in compared)
            + " | "
            + " | ".join(f"{ratios[pair][-1]:.2f}x" for pair in against)
            + " |"
        )
    print("\n| round | " + " | ".join(f"{s} hits/s (c=16)" for s in compared) + " |")
    print("|---" * (1 + len(compared)) + "|")
    for i, by_setting in enumerate(results):
        print(f"| {i + 1} | " + " | ".join(f"{by_setting[s].rate:.0f}" for s in compared) + " |")
    medians = {s: statistics.median(r[s].rate for r in results) for s in compared}
    print("| median | " + " | ".join(f"{medians[s]:.0f}" for s in compared) + " |")
    for v, s in against:
        ratio = statistics.median(ratios[v, s])
        verdict = "within" if ratio <= ALLOWED_RATIO else "over"
        print(f"\nMedian ratio {v} ÷ {s}: {ratio:.2f}x ({verdict} issue 13's {ALLOWED_RATIO}x).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="asks of each paraphrase a round")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="a checkout of an earlier commit, measured as a third setting with its defaults",
    )
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="the VERIFIER settings to time, comma-separated (default: all three)",
    )
    args = parser.parse_args()
    chosen = tuple(s for s in args.settings.split(",") if s)
    asyncio.run(main(args.rounds, args.pairs, args.repeats, args.baseline_tree, chosen))
