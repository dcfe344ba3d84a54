"""`python -m app.eval pairs FILE` / `python -m app.eval workload FILE`: measure hit quality."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import NamedTuple

import aiohttp
import msgspec
import numpy as np
import numpy.typing as npt

from app.eval import pairs, sweep, workload
from app.eval.stream import held_out_queries, load_stream
from app.providers.embedders import build_embedder
from app.providers.embedders.base import Embedder
from app.service.guard import Guard, configured_decision
from app.service.verifier import Calibration, Verifier, shifted
from app.settings import Settings, SettingsError, load_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: mode, data file, and how to decide."""
    parser = argparse.ArgumentParser(prog="python -m app.eval", description=__doc__)
    parser.add_argument("mode", choices=["pairs", "workload"])
    parser.add_argument("file", type=Path, help="a pairs.jsonl or workload_*.jsonl file")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument(
        "--threshold",
        type=float,
        help="the cosine floor (default: SIMILARITY_THRESHOLD, or the guard's floor)",
    )
    parser.add_argument(
        "--guard-threshold",
        type=float,
        help="the guard's probability threshold (default: GUARD_THRESHOLD or the guard's own)",
    )
    parser.add_argument(
        "--no-guard", action="store_true", help="decide by the cosine alone (like GUARD=off)"
    )
    parser.add_argument(
        "--verifier",
        choices=["on", "overlap", "checks", "off"],
        help="after the guard: the cross-encoder cascade, the near-miss checks and the "
        "cross-encoder on high-overlap hits, the near-miss checks, or nothing "
        "(default: VERIFIER)",
    )
    parser.add_argument(
        "--max-wrong-hit-rate",
        type=float,
        help="the verifier's budget (default: MAX_WRONG_HIT_RATE or the calibration's)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also score other thresholds of what decides last: the cascade's combined score "
        "(VERIFIER=on), the guard's probability, or the cosine without a guard",
    )
    parser.add_argument(
        "--plot", type=Path, help="draw the curves into this PNG (needs matplotlib)"
    )
    parser.add_argument(
        "--verify",
        type=float,
        metavar="RATE",
        help="workload: verify this share of semantic hits live and compare the estimated "
        "wrong-hit rate with the true one (streams with gold answers, e.g. ComQA)",
    )
    parser.add_argument(
        "--held-out",
        type=Path,
        metavar="PAIRS",
        help="workload: also score the queries whose cluster holds a text of this pairs file's "
        "held-out question groups (app/eval/split.py), which nothing was fit on",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


class _Decision(NamedTuple):
    """How the service decides a candidate, as configured, and what a sweep moves."""

    guard: Guard | None
    floor: float
    # The cascade's calibration and threshold (None: no verifier decides).
    calibration: Calibration | None
    verify_at: float | None
    # The threshold of what decides last, and the sweep's values of it.
    threshold: float
    sweep: list[float]
    title: str


async def run(args: argparse.Namespace) -> str:
    """Evaluate with the service's embedder, guard and settings; return the printed report."""
    settings = _settings(args)
    async with aiohttp.ClientSession() as session:
        embedder = await build_embedder(settings, session)
        try:
            guard, floor = configured_decision(settings, embedder.id)
            verified = settings.verifier in ("on", "overlap") and guard is not None
            calibration = Calibration.for_model() if verified else None
            guard_at, verify_at = _thresholds(settings, calibration)
            cascade = settings.verifier == "on" and verify_at is not None
            threshold = floor if guard is None else guard.threshold
            if cascade and verify_at is not None:
                threshold = verify_at
            elif guard is not None and guard_at is not None:
                threshold = max(guard_at, guard.threshold)
            values = sweep.grid(guarded=guard is not None, cascade=cascade, decision=threshold)
            decision = _Decision(
                guard=guard,
                floor=floor,
                calibration=calibration,
                verify_at=verify_at,
                threshold=threshold,
                sweep=values if args.sweep or args.plot else [],
                title=f"{args.file.stem}: {_what(guard, settings.verifier, embedder.id)}",
            )
            if args.mode == "pairs":
                result, text = await _pairs(args, settings, embedder, decision)
            else:
                result, text = await _workload(args, settings, embedder, decision)
        finally:
            await embedder.aclose()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    if args.plot:
        text += f"\n\nplot: {args.plot}"
    return text


async def _pairs(
    args: argparse.Namespace, settings: Settings, embedder: Embedder, decision: _Decision
) -> tuple[msgspec.Struct, str]:
    """`pairs` mode: score every pair as the service would, then report (and plot)."""
    guard = decision.guard
    data = pairs.load_pairs(args.file)
    cosines = await pairs.pair_scores(data, embedder)
    scores = await _scores(
        data,
        cosines,
        guard,
        decision.floor,
        checks=settings.verifier in ("checks", "overlap"),
        calibration=decision.calibration,
        gated_at=_gated_anchor(settings, decision),
    )
    result = pairs.evaluate(
        data,
        scores,
        decision.floor,
        None if guard is None else decision.threshold,
        decision.verify_at if settings.verifier == "on" else None,
        gated=_gated(settings, decision),
    )
    text = pairs.table(result)
    if decision.sweep:
        text += "\n\n" + pairs.sweep_table(data, scores, decision.sweep)
    if args.plot:
        from app.eval import plot  # noqa: PLC0415  (matplotlib only when asked)

        labels = np.array([p.label for p in data])
        sources = np.array([p.source for p in data])
        sets = {s: (scores[sources == s], labels[sources == s]) for s in sorted(set(sources))}
        sets["overall"] = (scores, labels)
        plot.plot_pairs(sets, args.plot, title=decision.title, decision=decision.threshold)
    return result, text


async def _workload(
    args: argparse.Namespace, settings: Settings, embedder: Embedder, decision: _Decision
) -> tuple[msgspec.Struct, str]:
    """`workload` mode: replay the stream through the service, then report (and plot)."""
    stream = load_stream(args.file)
    held_out = None
    if args.held_out is not None:
        texts = [(p.question1, p.question2) for p in pairs.load_pairs(args.held_out)]
        held_out = (args.held_out.name, held_out_queries(stream, texts))
    verifier = None if decision.calibration is None else await Verifier.load()
    try:
        result = await workload.replay(
            stream,
            embedder,
            settings,
            threshold=decision.floor,
            guard=decision.guard,
            sweep=decision.sweep,
            progress=not args.quiet,
            verify=args.verify,
            verifier=verifier,
            calibration=decision.calibration,
            held_out=held_out,
        )
    finally:
        if verifier is not None:
            await verifier.aclose()
    text = workload.table(result)
    if args.plot and result.sweep:
        from app.eval import plot  # noqa: PLC0415  (matplotlib only when asked)

        plot.plot_workload(
            [(p.threshold, p.served, p.true_hits, p.precision, p.hit_recall) for p in result.sweep],
            args.plot,
            title=decision.title,
            default=decision.threshold,
        )
    return result, text


def _settings(args: argparse.Namespace) -> Settings:
    """The service's settings from the environment, with the command line's overrides."""
    overrides: dict[str, object] = {
        "similarity_threshold": args.threshold,
        "guard_threshold": args.guard_threshold,
        "max_wrong_hit_rate": args.max_wrong_hit_rate,
        "verifier": args.verifier,
    }
    if args.no_guard:
        overrides["guard"] = "off"
    return load_settings(None, **{k: v for k, v in overrides.items() if v is not None})


async def _scores(
    data: list[pairs.Pair],
    cosines: npt.NDArray[np.float64],
    guard: Guard | None,
    floor: float,
    *,
    checks: bool,
    calibration: Calibration | None,
    gated_at: float | None = None,
) -> npt.NDArray[np.float64]:
    """The scores the service thresholds (with the verifier on every candidate: the cascade's
    combined score; on high-overlap ones, `gated_at`: the guard's, lowered where it reads)."""
    if calibration is None or guard is None:
        return pairs.decision_scores(data, cosines, guard, floor, checks=checks)
    verifier = await Verifier.load()
    try:
        if gated_at is not None:
            return await pairs.gated_scores(
                data, cosines, guard, verifier, calibration, floor=floor, verify_at=gated_at
            )
        return await pairs.verified_scores(data, cosines, guard, verifier, calibration)
    finally:
        await verifier.aclose()


def _thresholds(
    settings: Settings, calibration: Calibration | None
) -> tuple[float | None, float | None]:
    """The guard's (VERIFIER=overlap with a budget; else None) and the verifier's thresholds
    MAX_WRONG_HIT_RATE maps to, as the service's Planner maps them (None: no verifier)."""
    if calibration is None:
        return None, None
    budget = settings.max_wrong_hit_rate
    if budget is None:
        return None, calibration.threshold
    if settings.verifier == "overlap":
        return calibration.gated_thresholds(budget)
    return None, calibration.threshold_for(budget)


def _gated_anchor(settings: Settings, decision: _Decision) -> float | None:
    """VERIFIER=overlap: the verifier threshold `pairs.gated_scores` anchors on the guard's,
    so that a gated pair's score reaches the decision's threshold exactly when its combined
    score reaches the verifier's (None in other modes)."""
    if settings.verifier != "overlap" or decision.verify_at is None or decision.guard is None:
        return None
    return shifted(decision.verify_at, decision.threshold, decision.guard.threshold)


def _gated(settings: Settings, decision: _Decision) -> tuple[float, float] | None:
    """VERIFIER=overlap's gate and threshold, for the report (None in other modes)."""
    if settings.verifier != "overlap" or decision.calibration is None:
        return None
    if decision.verify_at is None:
        return None
    return decision.calibration.overlap_gate, round(decision.verify_at, 4)


def _what(guard: Guard | None, verifier: str, embedder: str) -> str:
    if guard is not None and verifier == "on":
        return f"{embedder}, guard x verifier (cascade)"
    if guard is not None and verifier == "overlap":
        return f"{embedder}, guard probability (verifier on high-overlap pairs)"
    return f"{embedder}, " + ("guard probability" if guard is not None else "cosine")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m app.eval` and `make eval`."""
    args = parse_args(argv)
    try:
        print(asyncio.run(run(args)))
    except (SettingsError, FileNotFoundError, msgspec.DecodeError) as exc:
        print(f"sentinel eval: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
