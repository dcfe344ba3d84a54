"""`python -m app.eval pairs FILE` / `python -m app.eval workload FILE`: measure hit quality."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
import msgspec
import numpy as np
import numpy.typing as npt

from app.eval import pairs, workload
from app.providers.embedders import build_embedder
from app.service.guard import Guard, configured_decision
from app.service.verifier import Calibration, Verifier
from app.settings import Settings, SettingsError, load_settings

COSINE_SWEEP = [round(0.70 + 0.01 * i, 2) for i in range(30)]
GUARD_SWEEP = [round(0.05 * i, 2) for i in range(1, 20)]


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
        choices=["on", "checks", "off"],
        help="after the guard: the cross-encoder cascade, the near-miss checks, or nothing "
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
        help="also score other thresholds (the guard's probability, or the cosine without one)",
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
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> str:
    """Evaluate with the service's embedder, guard and settings; return the printed report."""
    settings = _settings(args)
    async with aiohttp.ClientSession() as session:
        embedder = await build_embedder(settings, session)
        try:
            guard, floor = configured_decision(settings, embedder.id)
            sweep_values = (
                (GUARD_SWEEP if guard else COSINE_SWEEP) if args.sweep or args.plot else []
            )
            name = args.file.stem
            if args.mode == "pairs":
                data = pairs.load_pairs(args.file)
                cosines = await pairs.pair_scores(data, embedder)
                scores, verify_at = await _decision(settings, data, cosines, guard, floor)
                pairs_result = pairs.evaluate(
                    data, scores, floor, None if guard is None else guard.threshold, verify_at
                )
                result: msgspec.Struct = pairs_result
                text = pairs.table(pairs_result)
                if sweep_values:
                    text += "\n\n" + pairs.sweep_table(data, scores, sweep_values)
                if args.plot:
                    from app.eval import plot  # noqa: PLC0415  (matplotlib only when asked)

                    labels = np.array([p.label for p in data])
                    sources = np.array([p.source for p in data])
                    sets = {
                        s: (scores[sources == s], labels[sources == s])
                        for s in sorted(set(sources))
                    }
                    sets["overall"] = (scores, labels)
                    plot.plot_pairs(
                        sets,
                        args.plot,
                        title=f"{name}: {_what(guard is not None, embedder.id)}",
                        decision=floor if guard is None else guard.threshold,
                    )
            else:
                stream = workload.load_stream(args.file)
                replayed = await workload.replay(
                    stream,
                    embedder,
                    settings,
                    threshold=floor,
                    guard=guard,
                    sweep=sweep_values,
                    progress=not args.quiet,
                    verify=args.verify,
                )
                result = replayed
                text = workload.table(replayed)
                if args.plot and replayed.sweep:
                    from app.eval import plot  # noqa: PLC0415  (matplotlib only when asked)

                    plot.plot_workload(
                        [
                            (p.threshold, p.served, p.true_hits, p.precision, p.hit_recall)
                            for p in replayed.sweep
                        ],
                        args.plot,
                        title=f"{name}: {_what(guard is not None, embedder.id)}",
                        default=floor if guard is None else guard.threshold,
                    )
        finally:
            await embedder.aclose()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    if args.plot:
        text += f"\n\nplot: {args.plot}"
    return text


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


async def _decision(
    settings: Settings,
    data: list[pairs.Pair],
    cosines: npt.NDArray[np.float64],
    guard: Guard | None,
    floor: float,
) -> tuple[npt.NDArray[np.float64], float | None]:
    """The scores the service thresholds, and the verifier's threshold when it decides."""
    if settings.verifier != "on" or guard is None:
        scores = pairs.decision_scores(
            data, cosines, guard, floor, checks=settings.verifier == "checks"
        )
        return scores, None
    calibration = Calibration.for_model()
    verifier = await Verifier.load()
    try:
        scores = await pairs.verified_scores(data, cosines, guard, verifier, calibration)
    finally:
        await verifier.aclose()
    budget = settings.max_wrong_hit_rate
    return scores, (calibration.threshold if budget is None else calibration.threshold_for(budget))


def _what(guarded: bool, embedder: str) -> str:
    return f"{embedder}, " + ("guard probability" if guarded else "cosine")


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
