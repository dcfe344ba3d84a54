"""`python -m bench.profile_semantic --stages`: the event loop's CPU per stage of a first-time
semantic hit, in process.

Sentinel's own QueryService (built by app/lifespan.py with default settings, live verification
off: its 1% sample makes a provider call at random) answers the verified paraphrases in this
process, no HTTP, aliases dropped before every pass. The loop thread's CPU time
(`time.thread_time`, CLOCK_THREAD_CPUTIME_ID: the other core's load barely moves it) is read
at the entry and exit of every stage and charged to the innermost stage under way (self time),
one request at a time (c=1), background writes awaited between requests and charged to their
own stage (each alone: the alias window is set to 0 here). Medians per request over every
pass, per stage.

Then, without the stage wrappers, the loop thread's CPU per hit for `QueryService.answer` and
for bench/throughput.py's in-process reference (embed + KNN), at c=1 and c=16, the two
alternating: the part of Sentinel's loop cost that HTTP leaves out.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from litestar import Litestar

import app.service.judge as judge_module
import app.service.semantic as semantic_module
from app.cache import index as index_module
from app.cache.index import EntryIndex
from app.main import create_app
from app.providers.embedders.batching import MicroBatcher
from app.providers.embedders.breaker import EmbedderBreaker
from app.providers.embedders.local import LocalEmbedder
from app.service.embedding import Embedding
from app.service.guard import Guard
from app.service.judge import Judge
from app.service.plan import Ask
from app.service.query import QueryService
from app.service.request_cache import RequestCache
from app.service.semantic import SemanticLayer
from app.settings import load_settings
from bench.procs import bench_redis, fake_provider
from bench.tput_inproc import drive, embed_knn

MODEL = "llama-3.1-8b-instant"


class StageClock:
    """Self CPU time of nested stages on the loop thread, per request."""

    def __init__(self) -> None:
        self.on = False
        self._stack: list[str] = []
        self._last = 0.0
        self._spent: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.requests = 0

    def _charge(self, now: float) -> None:
        if self._stack:
            self._spent[self._stack[-1]] += now - self._last
        self._last = now

    def enter(self, label: str) -> None:
        if self.on:
            self._charge(time.thread_time())
            self._stack.append(label)

    def exit(self) -> None:
        if self.on and self._stack:
            self._charge(time.thread_time())
            self._stack.pop()

    def start(self) -> None:
        self.on = True
        self._stack = ["request (rest)"]
        self._spent = defaultdict(float)
        self._last = time.thread_time()

    def stop(self) -> None:
        self._charge(time.thread_time())
        self.on = False
        self._stack = []
        self.requests += 1
        for label, spent in self._spent.items():
            self.samples[label].append(spent)

    def table(self) -> list[str]:
        """Median (and mean) µs per request of each stage; stages absent in a request count 0."""
        n = self.requests
        rows = []
        for label, values in self.samples.items():
            padded = values + [0.0] * (n - len(values))
            rows.append((statistics.mean(padded), statistics.median(padded), label, len(values)))
        rows.sort(reverse=True)
        total_mean = sum(r[0] for r in rows)
        out = [f"{'stage':44} {'median µs':>10} {'mean µs':>9} {'share':>6} {'runs':>6}"]
        for mean, median, label, runs in rows:
            out.append(
                f"{label:44} {1e6 * median:10.1f} {1e6 * mean:9.1f} "
                f"{100 * mean / total_mean:5.1f}% {runs:6d}"
            )
        out.append(f"{'all (mean sum)':44} {'':10} {1e6 * total_mean:9.1f}")
        return out


CLOCK = StageClock()


def _wrap(owner: Any, name: str, label: str, *, sync: bool = False) -> Callable[[], None]:
    """Charge `owner.name`'s self time to `label`; returns the undo."""
    original = owner.__dict__[name]
    target = original.__func__ if isinstance(original, staticmethod) else original
    if sync:

        @functools.wraps(target)
        def step(*args: Any, **kwargs: Any) -> Any:
            CLOCK.enter(label)
            try:
                return target(*args, **kwargs)
            finally:
                CLOCK.exit()

        wrapped: Any = step
    else:

        @functools.wraps(target)
        async def astep(*args: Any, **kwargs: Any) -> Any:
            CLOCK.enter(label)
            try:
                return await target(*args, **kwargs)
            finally:
                CLOCK.exit()

        wrapped = astep
    setattr(owner, name, staticmethod(wrapped) if isinstance(original, staticmethod) else wrapped)
    return lambda: setattr(owner, name, original)


def install() -> Callable[[], None]:
    """Wrap every stage of the semantic path; returns the undo."""
    tokenizer_encode = LocalEmbedder.embed
    undo = [
        _wrap(QueryService, "answer", "answer"),
        _wrap(QueryService, "plan", "plan", sync=True),
        _wrap(RequestCache, "exact_or_alias", "exact lookup (miss)"),
        _wrap(Embedding, "__call__", "embed: Embedding + metrics"),
        _wrap(EmbedderBreaker, "embed", "embed: breaker + budget"),
        _wrap(LocalEmbedder, "embed", "embed: tokenize + hand-off + wake-up"),
        _wrap(MicroBatcher, "embed", "embed: micro-batcher + pool future"),
        _wrap(RequestCache, "nearest", "KNN: breaker + budget + layer"),
        _wrap(EntryIndex, "nearest", "KNN: FT.SEARCH send + RESP read"),
        _wrap(index_module, "_documents", "KNN: reply -> documents", sync=True),
        _wrap(index_module, "from_values", "KNN: documents -> entries", sync=True),
        _wrap(Judge, "decide", "judge: decide (metrics, near-miss record)"),
        _wrap(Guard, "probability", "judge: guard features + logit", sync=True),
        _wrap(judge_module, "veto", "judge: near-miss checks", sync=True),
        _wrap(RequestCache, "found", "found (serves, count hit)", sync=True),
        _wrap(SemanticLayer, "remember", "alias: queue + task", sync=True),
        _wrap(RequestCache, "alias", "alias: write (background task)"),
        _wrap(QueryService, "_hit", "answer object + metrics.record"),
    ]
    del tokenizer_encode

    def undo_all() -> None:
        for u in reversed(undo):
            u()

    return undo_all


async def drop_aliases(redis: Any) -> None:
    """Forget every paraphrase alias (the next pass embeds each paraphrase again)."""
    found = [key async for key in redis.scan_iter(match="sentinel:*:alias:*", count=1000)]
    if found:
        await redis.unlink(*found)


class InProcess:
    """Sentinel's app (lifespan, state) in this process against the given Redis and provider."""

    def __init__(self, redis_url: str, provider_url: str) -> None:
        settings = load_settings(
            {},
            redis_url=redis_url,
            groq_api_key="bench",
            groq_base_url=provider_url,
            verify_sample_rate=0.0,
        )
        self.app: Litestar = create_app(settings)
        self._lifespan: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> QueryService:
        from app.lifespan import lifespan  # noqa: PLC0415

        self._lifespan = lifespan(self.app)
        await self._lifespan.__aenter__()
        service: QueryService = self.app.state.service
        return service

    async def __aexit__(self, *exc: object) -> None:
        if self._lifespan is not None:
            await self._lifespan.__aexit__(None, None, None)


def ask(question: str, scope: int) -> Ask:
    """The Ask bench/tput_http.py's chat body becomes."""
    return Ask.of_prompt(question, model=MODEL, max_tokens=scope)


async def answer_all(
    service: QueryService, questions: Sequence[str], scope: int, concurrency: int
) -> list[str]:
    """Each question's match kind ("exact", "semantic", "miss"...), `concurrency` at a time."""
    out = [""] * len(questions)
    counter = iter(range(len(questions)))

    async def worker() -> None:
        for i in counter:
            answer = await service.answer(ask(questions[i], scope))
            out[i] = answer.match

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await service.semantic.drain()
    return out


async def loop_cpu(op: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    """(loop thread CPU seconds, hits) of one pass."""
    t0 = time.thread_time()
    hits = await op()
    return time.thread_time() - t0, hits


async def run(
    pairs: Sequence[tuple[str, str]],
    *,
    scope: int,
    rounds: int,
    cprofile: int = 0,
) -> None:
    """Measure and print (pairs: original, paraphrase)."""
    async with (
        bench_redis("semantic-stages") as server,
        fake_provider(0.0) as provider,
        InProcess(server.url, provider) as service,
    ):
        redis = service.cache.store._redis
        originals = [o for o, _ in pairs]
        await answer_all(service, originals, scope, 16)
        kinds = await answer_all(service, [p for _, p in pairs], scope, 1)
        texts = [p for (_, p), k in zip(pairs, kinds, strict=True) if k == "semantic"]
        print(f"{len(texts)} of {len(pairs)} paraphrases are semantic hits in process", flush=True)

        undo = install()
        # Each request's alias is written (and awaited) right after it, alone: its cost per
        # alias; a window would only add idle time between the requests.
        window = getattr(semantic_module, "ALIAS_WINDOW", None)
        if window is not None:
            semantic_module.ALIAS_WINDOW = 0.0
        try:
            for _ in range(rounds):
                await drop_aliases(redis)
                for text in texts:
                    CLOCK.start()
                    answer = await service.answer(ask(text, scope))
                    await service.semantic.drain()
                    CLOCK.stop()
                    if answer.match != "semantic":
                        raise RuntimeError(f"not a semantic hit: {text!r}")
        finally:
            undo()
            if window is not None:
                semantic_module.ALIAS_WINDOW = window
        print(f"\nloop-thread CPU per first-time semantic hit, c=1, {CLOCK.requests} requests")
        print("\n".join(CLOCK.table()), flush=True)

        async def sentinel_pass(c: int) -> int:
            await drop_aliases(redis)
            kinds = await answer_all(service, texts, scope, c)
            return kinds.count("semantic")

        # The reference on the service's own embedder (same pool threads) and store.
        store = service.cache.store
        knn = embed_knn(
            service.embedder,  # type: ignore[arg-type]
            store,
            scope=service.plan(ask(texts[0], scope)).scope,
            k=service.semantic.top_k,
            floor=service.similarity_threshold,
            texts=texts,
        )

        async def reference_pass(c: int) -> int:
            return (await drive(knn, len(texts), c)).found

        print("\nloop-thread CPU per hit, no stage wrappers (µs; medians over rounds)")
        results: dict[str, list[float]] = defaultdict(list)
        for _ in range(rounds):
            for c in (1, 16):
                spent, hits = await loop_cpu(functools.partial(sentinel_pass, c))
                results[f"QueryService.answer c={c}"].append(spent / hits)
                spent, hits = await loop_cpu(functools.partial(reference_pass, c))
                results[f"in-process embed + KNN c={c}"].append(spent / hits)
        for label, values in results.items():
            runs = " ".join(f"{1e6 * v:.0f}" for v in values)
            print(f"  {label:32} {1e6 * statistics.median(values):7.1f}  ({runs})")
        if cprofile:
            profiler = cProfile.Profile(time.thread_time)
            hits = 0
            with profiler:
                for _ in range(cprofile):
                    hits += await sentinel_pass(16)
            print(f"\ncProfile (loop thread CPU), QueryService.answer c=16, {hits} hits")
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(45)
