"""`python -m app.eval pairs FILE` / `python -m app.eval workload FILE`: measure hit quality."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
import msgspec

from app.eval import pairs, workload
from app.providers.embedders import build_embedder
from app.settings import SettingsError, load_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: mode, data file, and how to decide."""
    parser = argparse.ArgumentParser(prog="python -m app.eval", description=__doc__)
    parser.add_argument("mode", choices=["pairs", "workload"])
    parser.add_argument("file", type=Path, help="a pairs.jsonl or workload_*.jsonl file")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument(
        "--threshold", type=float, help="decide at this cosine (default: SIMILARITY_THRESHOLD)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="pairs: precision/recall from 0.70 to 0.99"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> str:
    """Evaluate with the service's embedder and settings; return the printed report."""
    settings = load_settings()
    threshold = settings.similarity_threshold if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise SettingsError("--threshold must be within [0, 1]")
    async with aiohttp.ClientSession() as session:
        embedder = await build_embedder(settings, session)
        try:
            if args.mode == "pairs":
                data = pairs.load_pairs(args.file)
                scores = await pairs.pair_scores(data, embedder)
                pairs_result = pairs.evaluate(data, scores, threshold)
                result: msgspec.Struct = pairs_result
                text = pairs.table(pairs_result)
                if args.sweep:
                    steps = [round(0.70 + 0.01 * i, 2) for i in range(30)]
                    text += "\n\n" + pairs.sweep_table(data, scores, steps)
            else:
                stream = workload.load_stream(args.file)
                replayed = await workload.replay(
                    stream, embedder, settings, threshold=threshold, progress=not args.quiet
                )
                result = replayed
                text = workload.table(replayed)
        finally:
            await embedder.aclose()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    return text


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
