"""Answer a request: exact hit, else semantic hit, else the provider (and store its answer).

Both endpoints come here: /v1/query as a one-message chat, /v1/chat/completions as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec

from app.cache import keys
from app.cache.breaker import CacheBreaker
from app.cache.errors import CacheBypassed
from app.cache.flight import FlightTimeout, SharedFailure, SingleFlight
from app.cache.metrics import MetricsStore, Outcome
from app.cache.negative import NegativeCache, RememberedFailure
from app.cache.store import CacheStore, Entry, new_entry
from app.errors import (
    BadRequest,
    EmbeddingError,
    PromptTooLarge,
    SentinelError,
    UpstreamError,
    UpstreamNotConfigured,
)
from app.providers.embedders.base import Embedder, Vector
from app.providers.embedders.breaker import EmbedderBreaker
from app.providers.upstreams.base import ChatDelta, ChatMessage, ChatRequest, ChatResult
from app.providers.upstreams.router import ProviderRouter, is_transient
from app.service.guard import Guard
from app.service.pricing import cost_usd
from app.service.prompt import ContextMessage, Scope, normalize_prompt, normalize_text
from app.settings import DEFAULT_LOOKUP_TIMEOUT_MS, DEFAULT_WRITE_TIMEOUT_MS

log = logging.getLogger("sentinel.service")

T = TypeVar("T")

Match = Literal["exact", "semantic", "miss"]

# A cached answer is replayed as a stream in pieces of about this many characters.
REPLAY_CHUNK_CHARS = 64


class Ask(msgspec.Struct, frozen=True, kw_only=True):
    """One request to the cache: a conversation and every parameter that shapes its answer."""

    messages: list[ChatMessage]
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    # Who is asking: the API key's tenant ("" when Sentinel runs open), and a sub-scope.
    tenant: str = ""
    namespace: str = ""
    # Cache controls (None: the configured default). read_cache=False (Cache-Control:
    # no-cache) skips the lookup and refreshes the entry; write_cache=False (no-store) keeps
    # the answer out of the cache.
    similarity_threshold: float | None = None
    ttl: int | None = None
    read_cache: bool = True
    write_cache: bool = True


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt and the caller's options, as /v1/query takes them."""

    prompt: str
    similarity_threshold: float | None = None
    ttl: int | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None

    def ask(self) -> Ask:
        """The same request as a one-message chat."""
        return Ask(
            messages=[ChatMessage(role="user", content=self.prompt)],
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            similarity_threshold=self.similarity_threshold,
            ttl=self.ttl,
        )


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens of the upstream call that produced the answer."""

    prompt_tokens: int
    completion_tokens: int


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """The answer and where it came from (the body of /v1/query)."""

    response: str
    cache_hit: bool
    match: Match
    similarity: float | None
    # The guard's P(same question) for a semantic hit; None for exact hits and misses.
    guard_score: float | None = None
    # True when an identical request was in flight and this one was answered from its result.
    waited: bool = False
    # True when the cache was bypassed for this answer (Redis down, slow, or its circuit
    # breaker open): the provider answered and the answer may not have been stored.
    bypass: bool = False
    matched_prompt: str | None
    entry_id: str
    model: str
    provider: str
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] | None = None
    latency_ms: float
    usage: Usage
    cost_usd: float
    saved_usd: float


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How one request meets the cache: its routed model, scope, question and entry id."""

    model_id: str  # `provider/model`, what the scope holds
    tenant: str
    request: ChatRequest  # for the provider, model still as the client named it
    scope: str
    # The last user message, normalized: what the semantic layer embeds. None when the
    # conversation ends otherwise (e.g. a tool result): exact matches only.
    question: str | None
    entry_id: str
    threshold: float
    ttl: int
    read_cache: bool
    write_cache: bool


class StreamedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A streamed answer: what is known before the first piece, then the pieces."""

    head: Answer  # for a miss: response "" and usage 0 until the stream completes
    deltas: AsyncIterator[ChatDelta]


class _Found(NamedTuple):
    """What a lookup found: a hit, else the query's vector (for storing), whether the cache
    was bypassed (then no more cache reads for this request) and whether embedding failed
    (then it is not tried again for the store: the answer is kept for exact hits)."""

    hit: Answer | None = None
    vector: Vector | None = None
    bypass: bool = False
    embed_failed: bool = False


class QueryService:
    """The cache decision, in order: exact → semantic (guarded) → provider → store.

    Every Redis operation goes through the circuit breaker with a time budget (reads:
    `lookup_timeout`, writes: `write_timeout`, seconds); a failed or late one bypasses the
    cache for the rest of the request, which the provider answers (`Answer.bypass`). Each
    embedding goes through the embedder's breaker (`embed_breaker`, with its own budget); a
    failed or late one skips the semantic layer: exact hits still serve, and a miss's answer
    is stored for exact hits. Without `embed_breaker` (offline replays) embeddings are awaited
    as long as they take.
    """

    def __init__(
        self,
        *,
        store: CacheStore,
        metrics: MetricsStore,
        embedder: Embedder,
        providers: ProviderRouter,
        similarity_threshold: float,
        guard: Guard | None = None,
        negative: NegativeCache | None = None,
        flight: SingleFlight | None = None,
        wait_timeout: float = 30.0,
        breaker: CacheBreaker | None = None,
        embed_breaker: EmbedderBreaker | None = None,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT_MS / 1000,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_MS / 1000,
        ttl: int,
        top_k: int,
        max_prompt_chars: int,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.embedder = embedder
        self.providers = providers
        self.similarity_threshold = similarity_threshold
        self.guard = guard
        self.negative = negative
        self.flight = flight
        self.wait_timeout = wait_timeout
        self.breaker = breaker or CacheBreaker(store.recover)
        self.embed_breaker = embed_breaker
        self.lookup_timeout = lookup_timeout
        self.write_timeout = write_timeout
        # Answers given without the cache, and requests that skipped the semantic layer
        # because embedding failed, since start (this process), for /health.
        self.bypassed = 0
        self.semantic_skipped = 0
        self.ttl = ttl
        self.top_k = top_k
        self.max_prompt_chars = max_prompt_chars

    def plan(self, ask: Ask) -> Plan:
        """Route the model and compute scope, question and entry id; 4xx errors for bad input."""
        if not ask.messages:
            raise BadRequest("messages must hold at least one message")
        size = sum(len(m.content or "") for m in ask.messages)
        if size > self.max_prompt_chars:
            raise PromptTooLarge(
                f"the messages have {size} characters; the limit is "
                f"{self.max_prompt_chars} (MAX_PROMPT_CHARS)"
            )
        provider, native = self.providers.resolve(
            ask.model or self.providers.default_provider.name + "/"
        )
        model_id = f"{provider.name}/{native}"
        last = ask.messages[-1]
        question = normalize_prompt(last.content or "") if last.role == "user" else None
        context = ask.messages[:-1] if question is not None else ask.messages
        scope = Scope(
            model=model_id,
            tenant=ask.tenant,
            namespace=ask.namespace,
            context=tuple(_context(m) for m in context),
            temperature=ask.temperature,
            top_p=ask.top_p,
            max_tokens=ask.max_tokens,
            stop=None if ask.stop is None else tuple(ask.stop),
            seed=ask.seed,
            tools=ask.tools,
            tool_choice=ask.tool_choice,
            response_format=ask.response_format,
        ).tag()
        request = ChatRequest(
            model=model_id,
            messages=ask.messages,
            temperature=ask.temperature,
            top_p=ask.top_p,
            max_tokens=ask.max_tokens,
            stop=ask.stop,
            seed=ask.seed,
            tools=ask.tools,
            tool_choice=ask.tool_choice,
            response_format=ask.response_format,
            user=ask.user,
        )
        return Plan(
            model_id=model_id,
            tenant=ask.tenant,
            request=request,
            scope=scope,
            question=question,
            entry_id=keys.entry_id(scope, question or ""),
            threshold=(
                self.similarity_threshold
                if ask.similarity_threshold is None
                else ask.similarity_threshold
            ),
            ttl=ask.ttl or self.ttl,
            read_cache=ask.read_cache,
            write_cache=ask.write_cache,
        )

    async def answer(self, ask: Ask) -> Answer:
        """Answer from the cache when it can, from the provider when it must."""
        started = time.perf_counter()
        plan = self.plan(ask)
        found = await self._lookup(plan, started)
        if found.hit is not None:
            return found.hit

        async def lead() -> Answer:
            try:
                result = await self.providers.chat(plan.model_id, plan.request)
            except UpstreamError as exc:
                await self._failed(plan, exc, started)
                raise
            return await self._store(plan, result, found, started)

        if (
            self.flight is None
            or found.bypass  # Redis is failing: coalescing through it would only wait
            or self.breaker.is_open
            or not (plan.read_cache and plan.write_cache)
        ):
            return await lead()

        async def follow() -> Answer | None:
            # The leader's stored answer, or its remembered failure (raised).
            entry = await self._read("exact lookup", lambda: self.store.take_hit(plan.entry_id))
            if entry is not None:
                answer = await self._hit(entry, "exact", 1.0, started)
                return msgspec.structs.replace(answer, waited=True)
            await self._check_negative(plan, started)
            return None

        # Concurrent identical misses, here or in other instances: one provider call.
        deadline = asyncio.get_running_loop().time() + self.wait_timeout
        try:
            flown = await self.flight.run(
                plan.entry_id, lead, follow, deadline=deadline, share_errors=(SentinelError,)
            )
        except FlightTimeout:
            await self._record("error", started)
            raise
        except SharedFailure as shared:
            # The identical request led in this process failed (a 400 included): the same
            # answer for this caller, without another provider call.
            await self._record("error", started)
            raise shared.error from None
        if flown.shared:
            # The answer of the identical request led in this process (from the provider, or
            # itself a hit): for this caller an exact hit, with its own latency and count.
            return await self._shared(flown.value, plan, started)
        return flown.value

    async def lookup(self, ask: Ask) -> Answer | None:
        """Cache-aside read: the cached answer for this request, or None; never the provider."""
        started = time.perf_counter()
        plan = self.plan(msgspec.structs.replace(ask, read_cache=True))
        found = await self._find(plan, started)
        if found.hit is None and not found.bypass:
            await self._record("miss", started)
        return found.hit

    async def put(self, ask: Ask, result: ChatResult) -> Answer:
        """Cache-aside write: store an answer the caller got from its own LLM call."""
        started = time.perf_counter()
        plan = self.plan(msgspec.structs.replace(ask, write_cache=True))
        if self.breaker.is_open:  # fail fast, before embedding: the caller learns it at once
            raise CacheBypassed(f"not stored: the cache is bypassed ({self.breaker.reason})")
        # Without a vector (the embedder failed) the answer is still kept, for exact hits.
        vector = None if plan.question is None else await self._embed(plan.question)
        entry = _entry(plan, result)
        await self._write("store", lambda: self.store.put(entry, vector, ttl=plan.ttl))
        return _answer(entry, "miss", None, _elapsed_ms(started), cost=0.0, saved=0.0)

    async def stream(self, ask: Ask) -> StreamedAnswer:
        """Like `answer`, streamed: a hit is replayed in pieces; a miss is relayed as it arrives.

        A miss returns once the provider's first piece is in (so errors before it are still
        plain HTTP errors) and is stored only after the provider ended the stream properly.
        """
        started = time.perf_counter()
        plan = self.plan(ask)
        found = await self._lookup(plan, started)
        if found.hit is not None:
            return StreamedAnswer(head=found.hit, deltas=_replay(found.hit))
        deltas = self.providers.stream(plan.model_id, plan.request)
        try:
            first = await anext(deltas)
        except UpstreamError as exc:
            await self._failed(plan, exc, started)
            raise
        # Known now only if the lookup failed or the breaker is open; a store failing at the
        # end of the stream comes after the headers.
        bypass = found.bypass or (plan.write_cache and self.breaker.is_open)
        head = Answer(
            response="",
            cache_hit=False,
            match="miss",
            bypass=bypass,
            similarity=None,
            matched_prompt=None,
            entry_id=plan.entry_id,
            model=first.model or plan.request.model,
            provider=first.provider or "",
            latency_ms=_elapsed_ms(started),
            usage=Usage(prompt_tokens=0, completion_tokens=0),
            cost_usd=0.0,
            saved_usd=0.0,
        )
        relay = self._relay(plan, first, deltas, found, started)
        return StreamedAnswer(head=head, deltas=relay)

    async def _relay(
        self,
        plan: Plan,
        first: ChatDelta,
        deltas: AsyncIterator[ChatDelta],
        found: _Found,
        started: float,
    ) -> AsyncIterator[ChatDelta]:
        """Pass the provider's pieces on, assembling the answer; store it once complete."""
        assembled = _Assembler(first)
        try:
            yield first
            async for delta in deltas:
                assembled.add(delta)
                yield delta
        except UpstreamError as exc:
            # Not remembered: a stream broken midway was never retried, so the next try may
            # well succeed.
            await self._failed(plan, exc, started, remember=False)
            raise
        finally:
            # A client that went away closes this generator: close the provider's stream too.
            closer = getattr(deltas, "aclose", None)
            if closer is not None:
                await closer()
        result = assembled.result(plan.request.model)
        if result is None:
            log.warning("stream ended without an answer; nothing stored")
            return
        await self._store(plan, result, found, started)

    async def _lookup(self, plan: Plan, started: float) -> _Found:
        """An exact hit, else a guarded semantic hit, else a remembered failure (raised).

        Without a hit, the query's vector comes back too, for storing the answer later.
        """
        if not plan.read_cache:
            return _Found()
        found = await self._find(plan, started)
        if found.hit is None and not found.bypass:
            await self._check_negative(plan, started)
        return found

    async def _find(self, plan: Plan, started: float) -> _Found:
        vector: Vector | None = None
        try:
            entry = await self._read("exact lookup", lambda: self.store.take_hit(plan.entry_id))
            if entry is not None:
                return _Found(hit=await self._hit(entry, "exact", 1.0, started))
            if plan.question is None:
                return _Found()
            question = plan.question
            query = vector = await self._embed(question)
            if query is None:
                return _Found(embed_failed=True)
            candidates = await self._read(
                "semantic lookup",
                lambda: self.store.nearest(query, scope=plan.scope, k=self.top_k),
            )
            for candidate in candidates:
                if candidate.similarity < plan.threshold:
                    break
                score = None
                if self.guard is not None:
                    score = self.guard.probability(question, candidate.prompt, candidate.similarity)
                    if score < self.guard.threshold:
                        continue  # a near miss; a lower neighbour may still be the same question
                entry = await self._read(
                    "semantic lookup", partial(self.store.take_hit, candidate.entry_id)
                )
                if entry is not None:  # None: it expired between the KNN and the read
                    hit = await self._hit(
                        entry, "semantic", candidate.similarity, started, guard_score=score
                    )
                    return _Found(hit=hit, vector=vector)
        except CacheBypassed as exc:
            self._skipped(exc)
            return _Found(vector=vector, bypass=True)
        return _Found(vector=vector)

    async def _store(self, plan: Plan, result: ChatResult, found: _Found, started: float) -> Answer:
        """Keep a successful answer (if the cache can) and report the miss.

        After a bypassed lookup the store is still tried while the breaker is closed: a
        single slow read should not cost the entry. It never fails the request.
        """
        entry = _entry(plan, result)
        forget = self.negative is not None and self.negative.enabled
        bypass, vector = found.bypass, found.vector
        if self.breaker.is_open:
            bypass = bypass or plan.write_cache
        elif plan.write_cache or forget:
            wants_vector = plan.question is not None and plan.write_cache
            if vector is None and wants_vector and not found.embed_failed:
                # Paid for already: without a vector it is kept for exact hits.
                vector = await self._embed(plan.question or "")
            try:
                await self._write("store", lambda: self._keep(plan, entry, vector))
            except CacheBypassed as exc:
                # The caller paid for this answer: give it to them even if it cannot be kept.
                self._skipped(exc, "answer not stored")
                bypass = bypass or plan.write_cache
        if bypass:
            self.bypassed += 1
        spent = cost_usd(entry.model, entry.prompt_tokens, entry.completion_tokens)
        latency_ms = _elapsed_ms(started)
        await self._record("miss", started, upstream_called=True, usd_spent=spent)
        return _answer(entry, "miss", None, latency_ms, cost=spent, saved=0.0, bypass=bypass)

    async def _keep(self, plan: Plan, entry: Entry, vector: Vector | None) -> None:
        """Store the entry and drop a remembered failure for it, both at once."""
        writes: list[Awaitable[None]] = []
        if plan.write_cache:
            writes.append(self.store.put(entry, vector, ttl=plan.ttl))
        if self.negative is not None and self.negative.enabled:
            writes.append(self.negative.forget(plan.entry_id))
        for outcome in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _check_negative(self, plan: Plan, started: float) -> None:
        """Raise a failure remembered for this exact request, without calling the provider."""
        negative = self.negative
        if negative is None or not negative.enabled:
            return
        try:
            await self._read("negative cache read", lambda: negative.check(plan.entry_id))
        except RememberedFailure:
            await self._record("error", started)
            raise
        except CacheBypassed as exc:
            self._skipped(exc, "negative cache not read")

    async def _failed(
        self, plan: Plan, exc: UpstreamError, started: float, *, remember: bool = True
    ) -> None:
        """Count a provider failure; remember a transient one (429, 5xx, timeout)."""
        if isinstance(exc, UpstreamNotConfigured):
            await self._record("error", started)
            return
        await self._record("error", started, upstream_called=True, upstream_failed=True)
        negative = self.negative
        if remember and negative is not None and negative.enabled and is_transient(exc):
            try:
                await self._write(
                    "negative cache write", lambda: negative.remember(plan.entry_id, exc)
                )
            except CacheBypassed as failure:
                self._skipped(failure, "failure not remembered")

    async def _shared(self, leader: Answer, plan: Plan, started: float) -> Answer:
        """The local leader's answer as a hit that waited for it (counted as an exact hit)."""
        usage = leader.usage
        saved = cost_usd(leader.model, usage.prompt_tokens, usage.completion_tokens)
        tokens = usage.prompt_tokens + usage.completion_tokens
        await self._record("exact", started, tokens_saved=tokens, usd_saved=saved)
        return msgspec.structs.replace(
            leader,
            cache_hit=True,
            match="exact",
            similarity=1.0,
            matched_prompt=plan.question,
            waited=True,
            bypass=False,  # answered from the request in flight, whatever became of its store
            latency_ms=round(_elapsed_ms(started), 3),
            cost_usd=0.0,
            saved_usd=round(saved, 10),
        )

    async def _hit(
        self,
        entry: Entry,
        match: Match,
        similarity: float,
        started: float,
        *,
        guard_score: float | None = None,
    ) -> Answer:
        saved = cost_usd(entry.model, entry.prompt_tokens, entry.completion_tokens)
        latency_ms = _elapsed_ms(started)
        await self._record(
            "exact" if match == "exact" else "semantic",
            started,
            tokens_saved=entry.prompt_tokens + entry.completion_tokens,
            usd_saved=saved,
        )
        return _answer(
            entry, match, similarity, latency_ms, cost=0.0, saved=saved, guard_score=guard_score
        )

    async def _record(
        self,
        outcome: Outcome,
        started: float,
        *,
        upstream_called: bool = False,
        upstream_failed: bool = False,
        tokens_saved: int = 0,
        usd_saved: float = 0.0,
        usd_spent: float = 0.0,
    ) -> None:
        # Metrics are bookkeeping: losing one count must not fail (or slow) the request.
        if self.breaker.is_open:
            return
        try:
            await self._write(
                "metrics",
                lambda: self.metrics.record(
                    outcome,
                    latency_ms=_elapsed_ms(started),
                    upstream_called=upstream_called,
                    upstream_failed=upstream_failed,
                    tokens_saved=tokens_saved,
                    usd_saved=usd_saved,
                    usd_spent=usd_spent,
                ),
            )
        except CacheBypassed as exc:
            self._skipped(exc, "metrics not recorded")

    async def _embed(self, question: str) -> Vector | None:
        """The question's vector; None when the embedder failed or ran past its budget."""
        try:
            if self.embed_breaker is None:
                return await self.embedder.embed(question)
            return await self.embed_breaker.embed(question)
        except EmbeddingError as exc:
            self.semantic_skipped += 1
            # While the breaker is open every request skips: the breaker said so once.
            quiet = self.embed_breaker is not None and self.embed_breaker.is_open
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "semantic layer skipped, answer kept for exact hits only: %s",
                exc.message,
            )
            return None

    async def _read(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis read on the request path, within the lookup budget, through the breaker."""
        return await self.breaker.call(operation, budget=self.lookup_timeout, what=what)

    async def _write(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis write on the request path, within the write budget, through the breaker."""
        return await self.breaker.call(operation, budget=self.write_timeout, what=what)

    def _skipped(self, exc: CacheBypassed, what: str = "cache bypassed") -> None:
        # While the breaker is open every request skips the cache: the breaker said so once.
        level = logging.DEBUG if self.breaker.is_open else logging.WARNING
        log.log(level, "%s: %s", what, exc.message)


class _Assembler:
    """Builds the whole answer from a stream's deltas (tool-call pieces merged by index)."""

    def __init__(self, first: ChatDelta) -> None:
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage = (0, 0)
        self.model = ""
        self.provider = first.provider or ""
        self.add(first)

    def add(self, delta: ChatDelta) -> None:
        if delta.content:
            self.text.append(delta.content)
        for piece in delta.tool_calls or ():
            call = self.calls.setdefault(
                int(piece.get("index", 0)),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = piece.get("id") or call["id"]
            call["type"] = piece.get("type") or call["type"]
            function = piece.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage:
            self.usage = delta.usage
        if delta.model:
            self.model = delta.model

    def result(self, requested_model: str) -> ChatResult | None:
        """The answer, or None when the stream carried no text, no tool call or no finish."""
        text = "".join(self.text)
        calls = [self.calls[i] for i in sorted(self.calls)]
        if self.finish_reason is None or not (text or calls):
            return None
        return ChatResult(
            message=ChatMessage(role="assistant", content=text or None, tool_calls=calls or None),
            finish_reason=self.finish_reason,
            model=self.model or requested_model.partition("/")[2] or requested_model,
            prompt_tokens=self.usage[0],
            completion_tokens=self.usage[1],
            provider=self.provider,
        )


async def _replay(answer: Answer) -> AsyncIterator[ChatDelta]:
    """A cached answer as a stream: role, text in pieces, tool calls, finish, usage."""
    yield ChatDelta(role="assistant", model=answer.model, provider=answer.provider)
    text = answer.response
    for start in range(0, len(text), REPLAY_CHUNK_CHARS):
        yield ChatDelta(content=text[start : start + REPLAY_CHUNK_CHARS])
    if answer.tool_calls:
        yield ChatDelta(tool_calls=[{"index": i, **c} for i, c in enumerate(answer.tool_calls)])
    yield ChatDelta(finish_reason=answer.finish_reason)
    yield ChatDelta(usage=(answer.usage.prompt_tokens, answer.usage.completion_tokens))


def _entry(plan: Plan, result: ChatResult) -> Entry:
    """The entry that keeps a provider's answer for this plan's scope and question."""
    message = result.message
    return new_entry(
        entry_id=plan.entry_id,
        prompt=plan.question or "",
        response=message.content or "",
        model=result.model,
        scope=plan.scope,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        tool_calls=msgspec.json.encode(message.tool_calls).decode() if message.tool_calls else "",
        finish_reason=result.finish_reason,
        provider=result.provider,
        tenant=plan.tenant,
        model_id=plan.model_id,
    )


def _context(message: ChatMessage) -> ContextMessage:
    return ContextMessage(
        role=message.role,
        content=normalize_text(message.content),
        name=message.name,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
    )


def _answer(
    entry: Entry,
    match: Match,
    similarity: float | None,
    latency_ms: float,
    *,
    cost: float,
    saved: float,
    guard_score: float | None = None,
    bypass: bool = False,
) -> Answer:
    return Answer(
        response=entry.response,
        cache_hit=match != "miss",
        match=match,
        bypass=bypass,
        similarity=None if similarity is None else round(similarity, 6),
        guard_score=None if guard_score is None else round(guard_score, 4),
        matched_prompt=None if match == "miss" else entry.prompt,
        entry_id=entry.id,
        model=entry.model,
        provider=entry.provider,
        finish_reason=entry.finish_reason,
        tool_calls=msgspec.json.decode(entry.tool_calls) if entry.tool_calls else None,
        latency_ms=round(latency_ms, 3),
        usage=Usage(prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens),
        cost_usd=round(cost, 10),
        saved_usd=round(saved, 10),
    )


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
