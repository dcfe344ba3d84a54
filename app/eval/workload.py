"""`workload` mode: replay a query stream through the real service on a fresh Redis Stack index."""

from __future__ import annotations

import random
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence

import msgspec
from redis.asyncio import Redis

from app.cache.audits import AuditStore
from app.cache.metrics import MetricsStore
from app.cache.store import CacheStore, new_entry
from app.embedded_redis import EmbeddedRedis
from app.eval.stream import HeldOut, Served, StreamQuery, SweepPoint, score
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


class WorkloadResult(Served, kw_only=True):
    """The replay at the configured decision, and optionally the sweep around it."""

    n: int
    threshold: float
    # The guard's probability threshold when a guard decides (threshold is then the floor).
    guard_threshold: float | None = None
    # With the verifier: the combined score's threshold (it decides, not guard_threshold).
    verifier_threshold: float | None = None
    # After the guard: "checks", "overlap", "on" (the cascade) or "off" (VERIFIER).
    verifier: str = "off"
    expected_hits: int
    sweep: list[SweepPoint] | None = None
    verification: Verification | None = None
    held_out: HeldOut | None = None


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
    held_out: tuple[str, frozenset[int]] | None = None,
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
    `held_out` (a name, and positions from `stream.held_out_queries`) also scores the
    replay, and its sweep, on those queries alone.
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
                return await replayer.run(sweep, progress=progress, held_out=held_out)
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
        verified = settings.verifier in ("on", "overlap")
        if verified and guard is not None and verifier is None:
            raise ValueError("VERIFIER=on/overlap: the replay needs the verifier and calibration")
        cascade = verifier if verified else None
        checks = settings.verifier in ("checks", "overlap")
        self.stream = stream
        self.verify = verify
        self.embedder = embedder
        self.threshold = threshold
        self.guard = guard
        self.mode = settings.verifier if guard is not None else "off"
        self.sweeper = Sweeper(
            guard,
            threshold,
            checks=checks,
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
            near_miss_checks=checks,
            gated=settings.verifier == "overlap",
            ttl=REPLAY_TTL,
            top_k=settings.knn_top_k,
            max_prompt_chars=sys.maxsize,
        )
        if settings.verifier == "overlap" and cascade is not None:
            # The sweep lowers the gated candidates' scores around the service's threshold.
            self.sweeper.gated_at = self.service.planner.default_verify_threshold()
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

    async def run(
        self,
        sweep: Sequence[float],
        *,
        progress: bool,
        held_out: tuple[str, frozenset[int]] | None = None,
    ) -> WorkloadResult:
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
        scored = score(stream, served)
        await self.sweeper.finish()
        decided = {value: self.sweeper.decide(value) for value in sweep}
        return WorkloadResult(
            **msgspec.structs.asdict(scored),
            n=len(stream),
            threshold=self.threshold,
            guard_threshold=None if self.guard is None else self.guard.threshold,
            verifier_threshold=self.service.planner.default_verify_threshold(),
            verifier=self.mode,
            expected_hits=sum(1 for row in stream if row.expected == "hit"),
            sweep=_sweep(stream, decided) or None,
            verification=await self._verification(semantic),
            held_out=None if held_out is None else _held_out(stream, served, decided, *held_out),
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


def _sweep(
    stream: Sequence[StreamQuery],
    decided: dict[float, list[int | None]],
    only: frozenset[int] | None = None,
) -> list[SweepPoint]:
    """Each swept threshold's decisions, scored (over the positions in `only`, if given)."""
    return [
        SweepPoint(**msgspec.structs.asdict(score(stream, served, only)), threshold=value)
        for value, served in decided.items()
    ]


def _held_out(
    stream: Sequence[StreamQuery],
    served: Sequence[int | None],
    decided: dict[float, list[int | None]],
    name: str,
    only: frozenset[int],
) -> HeldOut:
    """The replay and its sweep scored on the held-out clusters' queries alone."""
    return HeldOut(
        **msgspec.structs.asdict(score(stream, served, only)),
        pairs=name,
        n=len(only),
        expected_hits=sum(1 for row in stream if row.t in only and row.expected == "hit"),
        sweep=_sweep(stream, decided, only) or None,
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
    """The result as a Markdown table, then the sweep's (and the held-out queries') if any."""
    nested = ("sweep", "verification", "held_out")
    rows = msgspec.structs.asdict(result)
    lines = ["| measure | value |", "|---|---|"]
    lines += [
        f"| {name} | {value} |"
        for name, value in rows.items()
        if value is not None and name not in nested
    ]
    for prefix, part in (("verification", result.verification), ("held out", result.held_out)):
        if part is not None:
            lines += [
                f"| {prefix}: {name} | {value} |"
                for name, value in msgspec.structs.asdict(part).items()
                if name not in nested
            ]
    lines += _sweep_table("", result.sweep)
    if result.held_out is not None:
        lines += _sweep_table(
            f"Held-out clusters ({result.held_out.pairs}):", result.held_out.sweep
        )
    return "\n".join(lines)


def _sweep_table(title: str, sweep: list[SweepPoint] | None) -> list[str]:
    if not sweep:
        return []
    lines = ["", title] if title else [""]
    lines += [
        "| threshold | served | true hits | precision | hit recall | answer precision |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p.threshold:.3f} | {p.served} | {p.true_hits} | {p.precision:.3f} | "
        f"{p.hit_recall:.3f} | "
        f"{'-' if p.answer_precision is None else f'{p.answer_precision:.3f}'} |"
        for p in sweep
    ]
    return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
