"""`workload` mode: replay a query stream through the real service on a fresh Redis Stack index."""

from __future__ import annotations

import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from app.cache import keys
from app.cache.embedded import EmbeddedRedis
from app.cache.metrics import MetricsStore
from app.cache.store import CacheStore, new_entry
from app.lifespan import connect_redis
from app.providers.embedders.base import Embedder
from app.providers.upstreams.base import Completion
from app.service.prompt import Scope, normalize_prompt
from app.service.query import Query, QueryService
from app.settings import Settings

# Entries must outlive the replay; the stream has no notion of time.
REPLAY_TTL = 7 * 24 * 3600


class StreamQuery(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a workload stream (the data README's schema)."""

    t: int
    query: str
    source: str
    cluster: str
    expected: str
    duplicate_of: list[int] = []
    known_non_duplicate_of: list[int] = []
    answer_key: str | None = None


class WorkloadResult(msgspec.Struct, kw_only=True):
    """Served hits scored against the stream's clusters (and answers, for ComQA)."""

    n: int
    threshold: float
    expected_hits: int
    served: int
    true_hits: int
    confirmed_false_positives: int
    inferred_false_positives: int
    precision: float
    hit_recall: float
    answer_precision: float | None = None


class ReplayUpstream:
    """Answers a miss with the stream position of the query being replayed.

    The eval measures which stored question a hit comes from, so the "answer" is the
    query's own position; no LLM is involved.
    """

    name = "replay"
    configured = True
    default_model = "replay"

    def __init__(self) -> None:
        self.current = -1

    async def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """The position of the query being replayed, as the answer text."""
        return Completion(text=str(self.current), model=model, prompt_tokens=0, completion_tokens=0)


def load_stream(path: Path) -> list[StreamQuery]:
    """Read a workload JSONL file, in stream order."""
    decoder = msgspec.json.Decoder(StreamQuery)
    rows = [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return sorted(rows, key=lambda row: row.t)


async def replay(
    stream: Sequence[StreamQuery],
    embedder: Embedder,
    settings: Settings,
    *,
    threshold: float,
    progress: bool = True,
) -> WorkloadResult:
    """Replay the stream on a fresh embedded Redis Stack and score what was served."""
    with tempfile.TemporaryDirectory(prefix="sentinel-eval-") as data_dir:
        server = EmbeddedRedis(port=_free_port(), data_dir=data_dir, appendonly=False)
        await server.start()
        try:
            redis = await connect_redis(server.url)
            try:
                return await _replay(
                    stream, embedder, settings, redis, threshold=threshold, progress=progress
                )
            finally:
                await redis.aclose()
        finally:
            await server.stop()


async def _replay(
    stream: Sequence[StreamQuery],
    embedder: Embedder,
    settings: Settings,
    redis: Redis,
    *,
    threshold: float,
    progress: bool,
) -> WorkloadResult:
    store = CacheStore(
        redis,
        embedder_id=embedder.id,
        dimension=embedder.dimension,
        ef_runtime=settings.knn_ef_runtime,
    )
    await store.ensure_index()
    upstream = ReplayUpstream()
    service = QueryService(
        store=store,
        metrics=MetricsStore(redis),
        embedder=embedder,
        upstream=upstream,
        similarity_threshold=threshold,
        ttl=REPLAY_TTL,
        top_k=settings.knn_top_k,
        max_prompt_chars=sys.maxsize,
    )
    scope = Scope(model=upstream.default_model).tag()
    by_t = {row.t: row for row in stream}
    served = true_hits = confirmed = inferred = same_answer = 0
    for done, row in enumerate(stream, 1):
        upstream.current = row.t
        answer = await service.answer(Query(prompt=row.query, similarity_threshold=threshold))
        if answer.match != "miss":
            served += 1
            source = by_t[int(answer.response)]
            if source.cluster == row.cluster:
                true_hits += 1
            elif source.t in row.known_non_duplicate_of:
                confirmed += 1
            else:
                inferred += 1
            if row.answer_key is not None and source.answer_key == row.answer_key:
                same_answer += 1
            # Every query is stored after it is processed, hit or not (the data README's
            # scoring), so later paraphrases can match it too.
            prompt = normalize_prompt(row.query)
            await store.put(
                new_entry(
                    entry_id=keys.entry_id(scope, prompt),
                    prompt=prompt,
                    response=str(row.t),
                    model=upstream.default_model,
                    scope=scope,
                    prompt_tokens=0,
                    completion_tokens=0,
                ),
                await embedder.embed(prompt),
                ttl=REPLAY_TTL,
            )
        if progress and (done % 100 == 0 or done == len(stream)):
            print(f"\r  replayed {done}/{len(stream)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    expected = sum(1 for row in stream if row.expected == "hit")
    has_answers = any(row.answer_key is not None for row in stream)
    return WorkloadResult(
        n=len(stream),
        threshold=threshold,
        expected_hits=expected,
        served=served,
        true_hits=true_hits,
        confirmed_false_positives=confirmed,
        inferred_false_positives=inferred,
        precision=round(true_hits / served, 4) if served else 1.0,
        hit_recall=round(true_hits / expected, 4) if expected else 0.0,
        answer_precision=round(same_answer / served, 4) if has_answers and served else None,
    )


def table(result: WorkloadResult) -> str:
    """The result as a Markdown table."""
    rows = msgspec.structs.asdict(result)
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows.items() if value is not None]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
