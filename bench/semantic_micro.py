"""`python -m bench.semantic_micro STAGE N`: one stage of a semantic hit's own Python work, N
times, with no Redis and no model; for `valgrind --tool=callgrind`, whose instruction counts
the other core's load does not move (bench/profile-semantic.md):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.semantic_micro S N

run with N and with 0: the difference over N is the stage's instructions per call (imports and
set-up cancel out). The stages call what the code of the tree they run in does, so the same
command A/B-compares two trees:

- `judge`: the guard's probability and the near-miss checks (Judge without a verifier) on the
  48 labeled sample pairs of tests/data, the cached side seen before (a KNN candidate's prompt
  recurs), the question new each time;
- `knn-pack`: the FT.SEARCH command's bytes for one scope and a new vector;
- `knn-reply`: a 5-document FT.SEARCH reply (RESP3, as the client reads it) to candidates (where
  the tree takes the request's threshold, 0.88: two of the five reach it);
- `lookup-pack`: the alias-aware exact lookup's EVALSHA bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from app.cache import index as index_module
from app.cache import keys
from app.cache.aliases import Aliases
from app.cache.entry import ENTRY_FIELDS, from_values, new_entry, to_hash
from app.cache.vectors import encode_vector
from app.service.guard import Guard
from app.service.judge import Judge

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SCOPE = "t:|m:groq/llama-3.1-8b-instant|max_tokens=700"
INDEX = "sentinel:idx:minilm-l6-sentinel-ft1-int8:384-float16"
PREFIX = "sentinel:minilm-l6-sentinel-ft1-int8:384-float16:entry:"


def sample_pairs() -> list[tuple[str, str, float]]:
    """The labeled sample pairs of tests/data, with cosines over 0.70-1.00."""
    lines = (DATA / "pairs_sample.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return [(r["question1"], r["question2"], 0.70 + (i % 31) / 100) for i, r in enumerate(rows)]


def judge_stage() -> Callable[[int], None]:
    # The default embedder's guard, named (importing the embedder's module loads onnxruntime).
    guard = Guard.for_embedder("minilm-l6-sentinel-ft1-int8")
    judge = Judge(guard, checks=True)
    pairs = sample_pairs()
    loop = asyncio.new_event_loop()

    async def judge_all(n: int) -> None:
        for i in range(n):
            a, b, cosine = pairs[i % len(pairs)]
            # A new question each time (a first-time paraphrase), a cached prompt seen before.
            await judge(a + " ", b, cosine, None)

    loop.run_until_complete(judge_all(len(pairs)))  # the cached sides, as a warm service has
    return lambda n: loop.run_until_complete(judge_all(n))


def _vectors() -> list[Any]:
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((16, 384)).astype(np.float32)
    return [row / np.linalg.norm(row) for row in rows]


def knn_pack_stage() -> Callable[[int], None]:
    vectors = _vectors()
    index = index_module.EntryIndex.__new__(index_module.EntryIndex)
    if hasattr(index_module, "_search_head"):
        from app.cache.wire import command  # noqa: PLC0415

        def pack_one(vector: Any) -> bytes:
            blob = encode_vector(vector, 384, dtype="float16")
            head, count = index_module._search_head(INDEX, SCOPE, 5, 64)
            return command(head, count, blob)

    else:
        connection = Connection()
        returned = index_module._RETURNED

        def pack_one(vector: Any) -> bytes:
            blob = encode_vector(vector, 384, dtype="float16")
            args = (
                "FT.SEARCH", INDEX, index_module._knn_query(SCOPE, 5, 64), "RETURN",
                len(returned), *returned, "SORTBY", index_module._DISTANCE, "ASC", "DIALECT",
                2, "LIMIT", 0, 5, "PARAMS", 2, "vector", blob,
            )  # fmt: skip
            return b"".join(connection.pack_command(*args))

    del index

    def run(n: int) -> None:
        for i in range(n):
            pack_one(vectors[i % len(vectors)])

    return run


def knn_reply_stage() -> Callable[[int], None]:
    results = []
    for i in range(5):
        entry = new_entry(
            entry_id=f"{i:064x}",
            prompt=f"what is the atomic mass of element number {i}?",
            response="about " + "x" * 300,
            model="llama-3.1-8b-instant",
            scope=SCOPE,
            prompt_tokens=12,
            completion_tokens=80,
            provider="groq",
            model_id="groq/llama-3.1-8b-instant",
        )
        fields = {b"vector_distance": str(0.05 + 0.04 * i).encode()}
        fields |= {str(k).encode(): str(v).encode() for k, v in to_hash(entry).items()}
        results.append(
            {b"id": (PREFIX + entry.id).encode(), b"extra_attributes": fields, b"values": []}
        )
    reply = {b"total_results": 5, b"results": results, b"format": b"STRING"}
    documents = index_module._documents
    floor = "floor" in inspect.signature(documents).parameters

    def run(n: int) -> None:
        for _ in range(n):
            # As EntryIndex.nearest reads it, with the request's threshold where it takes one.
            found = documents(reply, 0.88) if floor else documents(reply)
            for key, values in found:
                distance = values[len(ENTRY_FIELDS)]
                entry_id = keys.entry_id_of(PREFIX, key)
                entry = from_values(entry_id, values[: len(ENTRY_FIELDS)])
                index_module.Candidate(entry_id, 1.0 - float(distance), entry.prompt, entry)  # type: ignore[union-attr]

    return run


def lookup_pack_stage() -> Callable[[int], None]:
    redis = Redis()
    aliases = Aliases(redis, entry_prefix=PREFIX, alias_prefix=PREFIX + "alias:")
    ids = [f"{i:064x}" for i in range(16)]
    lookup: Any = aliases._lookup
    if hasattr(lookup, "_head"):
        from app.cache.wire import command, pack  # noqa: PLC0415

        def pack_one(entry_id: str) -> bytes:
            keys = [PREFIX + entry_id, PREFIX + "alias:" + entry_id]
            tail = [k.encode() for k in keys] + [PREFIX.encode()]
            return command(lookup._head + pack(len(keys)), 3, *tail)

    else:
        connection = Connection()

        def pack_one(entry_id: str) -> bytes:
            keys = [PREFIX + entry_id, PREFIX + "alias:" + entry_id]
            args = ("EVALSHA", lookup.sha, len(keys), *keys, PREFIX)
            return b"".join(connection.pack_command(*args))

    def run(n: int) -> None:
        for i in range(n):
            pack_one(ids[i % len(ids)])

    return run


STAGES = {
    "judge": judge_stage,
    "knn-pack": knn_pack_stage,
    "knn-reply": knn_reply_stage,
    "lookup-pack": lookup_pack_stage,
}


def main() -> None:
    """Set the stage up, then run it N times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("n", type=int)
    args = parser.parse_args()
    run = STAGES[args.stage]()
    run(args.n)


if __name__ == "__main__":
    main()
