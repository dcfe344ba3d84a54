"""`workload` mode: replay a query stream through the real service on a fresh Redis Stack index."""

from __future__ import annotations

import random
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from app.cache.audits import AuditStore
from app.cache.metrics import MetricsStore
from app.cache.store import CacheStore, new_entry
from app.embedded_redis import EmbeddedRedis
from app.eval.sweep import Sweeper
from app.lifespan import connect_redis
from app.observability.recorder import Recorder
from app.providers.embedders.base import Embedder, Vector
from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatRequest, ChatResult
from app.providers.upstreams.router import ProviderRouter
from app.service.audit import HitAudit
from app.service.guard import Guard
from app.service.interval import wilson
from app.service.plan import Ask, Plan
from app.service.query import QueryService
from app.service.verifier import Calibration, Verifier
from app.settings import Settings

# Entries must outlive the replay; the stream has no notion of time.
REPLAY_TTL = 7 * 24 * 3600
# Which semantic hits `--verify` samples: the same ones every run.
VERIFY_SEED = 13


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


class Served(msgspec.Struct, kw_only=True):
    """What a replay served, scored against the stream's clusters (and answers, for ComQA)."""

    served: int
    true_hits: int
    confirmed_false_positives: int
    inferred_false_positives: int
    precision: float
    hit_recall: float
    answer_precision: float | None = None


class Verification(msgspec.Struct, kw_only=True):
    """`--verify`: the live wrong-hit estimate next to the truth it estimates (answer level)."""

    sample_rate: float
    semantic_hits: int
    # Semantic hits whose served answer is not the query's own gold answer.
    wrong_semantic_hits: int
    true_rate: float | None
    checked: int
    disagreed: int
    estimate: float | None
    low: float | None
    high: float | None
    # Whether the true rate lies inside the estimate's 95% interval.
    covered: bool | None


class SweepPoint(Served, kw_only=True):
    """The same scores had the decision been taken at another threshold."""

    threshold: float


class WorkloadResult(Served, kw_only=True):
    """The replay at the configured decision, and optionally the sweep around it."""

    n: int
    threshold: float
    # The guard's probability threshold when a guard decides (threshold is then the floor).
    guard_threshold: float | None = None
    # With the verifier: the combined score's threshold (it decides, not guard_threshold).
    verifier_threshold: float | None = None
    # After the guard: "checks", "on" (the cascade) or "off" (VERIFIER).
    verifier: str = "off"
    expected_hits: int
    sweep: list[SweepPoint] | None = None
    verification: Verification | None = None


class ReplayProvider:
    """Answers a miss with the stream position of the query being replayed.

    The eval measures which stored question a hit comes from, so the "answer" is the
    query's own position; no LLM is involved.
    """

    name = "replay"
    configured = True
    default_model = "replay"

    def __init__(self) -> None:
        self.current = -1
        # The stream, by position: what a verification compares (the gold answers).
        self.answers: dict[int, str | None] = {}

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The position of the query being replayed, as the answer text."""
        return ChatResult(
            message=ChatMessage(role="assistant", content=str(self.current)),
            finish_reason="stop",
            model=request.model,
            prompt_tokens=0,
            completion_tokens=0,
            provider=self.name,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The same answer as one piece (the replay never streams)."""
        yield ChatDelta(content=str(self.current), finish_reason="stop", provider=self.name)


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
    guard: Guard | None,
    sweep: Sequence[float] = (),
    progress: bool = True,
    verify: float | None = None,
    verifier: Verifier | None = None,
    calibration: Calibration | None = None,
) -> WorkloadResult:
    """Replay the stream on a fresh embedded Redis Stack and score what was served.

    `threshold` is the cosine floor; with a guard, its probability decides above it, and
    after it what `settings.verifier` says: the near-miss checks, or with `verifier` and its
    `calibration` the cascade (MAX_WRONG_HIT_RATE from the settings). `sweep` lists other
    thresholds of the score that decides last (the cascade's combined score, the guard's
    probability, or the cosine without a guard), scored from the same replay's KNN
    candidates. `verify` (a sample rate) runs live verification on
    the semantic hits, the replay provider answering by cluster, and reports its estimate of
    the wrong-hit rate beside the true answer-level rate (streams with gold answers).
    """
    with tempfile.TemporaryDirectory(prefix="sentinel-eval-") as data_dir:
        server = EmbeddedRedis(port=_free_port(), data_dir=data_dir, appendonly=False)
        await server.start()
        try:
            redis = await connect_redis(server.url)
            try:
                replayer = _Replay(
                    stream,
                    embedder,
                    settings,
                    redis,
                    threshold=threshold,
                    guard=guard,
                    verify=verify,
                    verifier=verifier,
                    calibration=calibration,
                )
                return await replayer.run(sweep, progress=progress)
            finally:
                await redis.aclose()
        finally:
            await server.stop()


class _Replay:
    """One replay: the real QueryService decides; the KNN candidates are kept for sweeps."""

    def __init__(
        self,
        stream: Sequence[StreamQuery],
        embedder: Embedder,
        settings: Settings,
        redis: Redis,
        *,
        threshold: float,
        guard: Guard | None,
        verify: float | None = None,
        verifier: Verifier | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        if settings.verifier == "on" and guard is not None and verifier is None:
            raise ValueError("VERIFIER=on: the replay needs the verifier and its calibration")
        cascade = verifier if settings.verifier == "on" else None
        self.stream = stream
        self.verify = verify
        self.embedder = embedder
        self.threshold = threshold
        self.guard = guard
        self.mode = settings.verifier if guard is not None else "off"
        self.sweeper = Sweeper(
            guard,
            threshold,
            checks=settings.verifier == "checks",
            verifier=cascade,
            calibration=None if cascade is None else calibration,
        )
        self.top_k = settings.knn_top_k
        self.store = CacheStore(
            redis,
            embedder_id=embedder.id,
            dimension=embedder.dimension,
            ef_runtime=settings.knn_ef_runtime,
            vector_dtype=settings.vector_dtype,
        )
        self.upstream = ReplayProvider()
        self.service = QueryService(
            store=self.store,
            metrics=Recorder(MetricsStore(redis)),
            embedder=embedder,
            providers=ProviderRouter({"replay": self.upstream}, "replay"),
            similarity_threshold=threshold,
            guard=guard,
            verifier=cascade,
            calibration=None if cascade is None else calibration,
            max_wrong_hit_rate=settings.max_wrong_hit_rate,
            near_miss_checks=settings.verifier == "checks",
            ttl=REPLAY_TTL,
            top_k=settings.knn_top_k,
            max_prompt_chars=sys.maxsize,
        )
        if verify is not None:
            answers = {row.t: row.answer_key for row in stream}

            async def same_gold_answer(cached: str, fresh: str) -> bool:
                # Answers are stream positions: compare what they stand for.
                return answers.get(int(cached)) == answers.get(int(fresh))

            self.service.audit = HitAudit(
                providers=self.service.providers,
                embedder=embedder,
                cache=self.service.cache,
                audits=AuditStore(redis),
                sample_rate=verify,
                agreement=1.0,
                rng=random.Random(VERIFY_SEED),
                compare=same_gold_answer,
            )

    async def run(self, sweep: Sequence[float], *, progress: bool) -> WorkloadResult:
        await self.store.ensure_index()
        stream = self.stream
        stored_at: dict[str, int] = {}  # entry id -> stream position it answers with
        served: list[int | None] = []
        semantic: list[tuple[int, int]] = []  # (query position, position answered from)
        for done, row in enumerate(stream, 1):
            ask = Ask.of_prompt(row.query)
            plan = self.service.plan(ask)
            prompt = plan.question or ""
            vector = await self.embedder.embed(prompt)
            if sweep:
                await self._candidates(plan, vector, stored_at)
            self.upstream.current = row.t
            answer = await self.service.answer(ask)
            if self.service.audit is not None:
                await self.service.audit.drain()  # the check asks the provider about row t
            served.append(None if answer.match == "miss" else int(answer.response))
            if answer.match == "semantic":
                semantic.append((row.t, int(answer.response)))
            if answer.match != "miss":
                # Every query is stored after it is processed, hit or not (the data README's
                # scoring), so later paraphrases can match it too; misses the service stored.
                await self.store.put(
                    new_entry(
                        entry_id=plan.entry_id,
                        prompt=prompt,
                        response=str(row.t),
                        model=self.upstream.default_model,
                        scope=plan.scope,
                        prompt_tokens=0,
                        completion_tokens=0,
                    ),
                    vector,
                    ttl=REPLAY_TTL,
                )
            stored_at[plan.entry_id] = row.t
            if progress:
                _progress(done, len(stream))
        scored = _score(stream, served)
        await self.sweeper.finish()
        return WorkloadResult(
            **msgspec.structs.asdict(scored),
            n=len(stream),
            threshold=self.threshold,
            guard_threshold=None if self.guard is None else self.guard.threshold,
            verifier_threshold=self.service.planner.default_verify_threshold(),
            verifier=self.mode,
            expected_hits=sum(1 for row in stream if row.expected == "hit"),
            sweep=[
                SweepPoint(
                    **msgspec.structs.asdict(_score(stream, self.sweeper.decide(value))),
                    threshold=value,
                )
                for value in sweep
            ]
            or None,
            verification=await self._verification(semantic),
        )

    async def _verification(self, semantic: list[tuple[int, int]]) -> Verification | None:
        if self.verify is None or self.service.audit is None:
            return None
        answers = {row.t: row.answer_key for row in self.stream}
        wrong = sum(1 for t, source in semantic if answers.get(t) != answers.get(source))
        rows = await self.service.audit.estimates(None)
        checked = sum(row.checked for row in rows)
        disagreed = sum(row.disagreed for row in rows)
        low, high = wilson(disagreed, checked)
        true_rate = wrong / len(semantic) if semantic else None
        return Verification(
            sample_rate=self.verify,
            semantic_hits=len(semantic),
            wrong_semantic_hits=wrong,
            true_rate=None if true_rate is None else round(true_rate, 4),
            checked=checked,
            disagreed=disagreed,
            estimate=round(disagreed / checked, 4) if checked else None,
            low=round(low, 4) if checked else None,
            high=round(high, 4) if checked else None,
            covered=None if true_rate is None or not checked else low <= true_rate <= high,
        )

    async def _candidates(self, plan: Plan, vector: Vector, stored_at: dict[str, int]) -> None:
        """Hand this query's KNN neighbours to the sweep, as the service sees them."""
        found = await self.store.nearest(vector, scope=plan.scope, k=self.top_k)
        self.sweeper.add(
            plan.question or "", [(stored_at[c.entry_id], c.prompt, c.similarity) for c in found]
        )


def _score(stream: Sequence[StreamQuery], served: Sequence[int | None]) -> Served:
    """Score served hits (the stream position each query was answered from, or None)."""
    by_t = {row.t: row for row in stream}
    hits = true_hits = confirmed = inferred = same_answer = 0
    for row, source_t in zip(stream, served, strict=True):
        if source_t is None:
            continue
        hits += 1
        source = by_t[source_t]
        if source.cluster == row.cluster:
            true_hits += 1
        elif source.t in row.known_non_duplicate_of:
            confirmed += 1
        else:
            inferred += 1
        if row.answer_key is not None and source.answer_key == row.answer_key:
            same_answer += 1
    expected = sum(1 for row in stream if row.expected == "hit")
    has_answers = any(row.answer_key is not None for row in stream)
    return Served(
        served=hits,
        true_hits=true_hits,
        confirmed_false_positives=confirmed,
        inferred_false_positives=inferred,
        precision=round(true_hits / hits, 4) if hits else 1.0,
        hit_recall=round(true_hits / expected, 4) if expected else 0.0,
        answer_precision=round(same_answer / hits, 4) if has_answers and hits else None,
    )


def _progress(done: int, total: int) -> None:
    """A one-line progress bar on stderr."""
    if done % 50 and done != total:
        return
    width = 30
    filled = width * done // total
    bar = "#" * filled + "." * (width - filled)
    print(f"\r  replay [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr)


def table(result: WorkloadResult) -> str:
    """The result as a Markdown table, then the sweep's if there is one."""
    rows = msgspec.structs.asdict(result)
    lines = ["| measure | value |", "|---|---|"]
    lines += [
        f"| {name} | {value} |"
        for name, value in rows.items()
        if value is not None and name not in ("sweep", "verification")
    ]
    if result.verification is not None:
        lines += [
            f"| verification: {name} | {value} |"
            for name, value in msgspec.structs.asdict(result.verification).items()
        ]
    if result.sweep:
        lines += [
            "",
            "| threshold | served | true hits | precision | hit recall | answer precision |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p.threshold:.3f} | {p.served} | {p.true_hits} | {p.precision:.3f} | "
            f"{p.hit_recall:.3f} | "
            f"{'-' if p.answer_precision is None else f'{p.answer_precision:.3f}'} |"
            for p in result.sweep
        ]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
