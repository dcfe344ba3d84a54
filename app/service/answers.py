"""What the service answers: a whole Answer or a StreamedAnswer, and an entry as an Answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec

from app.cache.store import Entry
from app.providers.upstreams.base import ChatDelta

Match = Literal["exact", "semantic", "miss"]


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
    # With the verifier on: the guard's and the verifier's evidence combined, which the
    # wrong-hit budget's threshold applied to.
    verifier_score: float | None = None
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


class StreamedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A streamed answer: what is known before the first piece, then the pieces."""

    head: Answer  # for a miss: response "" and usage 0 until the stream completes
    deltas: AsyncIterator[ChatDelta]


def answer_from(
    entry: Entry,
    match: Match,
    similarity: float | None,
    latency_ms: float,
    *,
    cost: float,
    saved: float,
    guard_score: float | None = None,
    verifier_score: float | None = None,
    bypass: bool = False,
) -> Answer:
    return Answer(
        response=entry.response,
        cache_hit=match != "miss",
        match=match,
        bypass=bypass,
        similarity=None if similarity is None else round(similarity, 6),
        guard_score=None if guard_score is None else round(guard_score, 4),
        verifier_score=None if verifier_score is None else round(verifier_score, 4),
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


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def streamed_miss(
    entry_id: str, *, model: str, provider: str, latency_ms: float, bypass: bool
) -> Answer:
    """What is known of a streamed miss before its first piece: no text, no usage yet."""
    return Answer(
        response="",
        cache_hit=False,
        match="miss",
        bypass=bypass,
        similarity=None,
        matched_prompt=None,
        entry_id=entry_id,
        model=model,
        provider=provider,
        latency_ms=latency_ms,
        usage=Usage(prompt_tokens=0, completion_tokens=0),
        cost_usd=0.0,
        saved_usd=0.0,
    )


def shared_hit(leader: Answer, question: str | None, *, latency_ms: float, saved: float) -> Answer:
    """A leader's answer as an exact hit for a caller that waited for it."""
    return msgspec.structs.replace(
        leader,
        cache_hit=True,
        match="exact",
        similarity=1.0,
        matched_prompt=question,
        waited=True,
        bypass=False,  # answered from the request in flight, whatever became of its store
        latency_ms=round(latency_ms, 3),
        cost_usd=0.0,
        saved_usd=round(saved, 10),
    )
