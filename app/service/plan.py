"""How a request meets the cache, decided without I/O: its routed model, scope, question, id.

Everything here is pure: the same Ask always gives the same Plan, so the scope rules (what
makes a cached answer valid for a request) are tested without Redis, a model or a provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.cache import keys
from app.cache.store import Entry, new_entry
from app.errors import BadRequest, PromptTooLarge
from app.providers.upstreams.base import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    Sampling,
    sampling_of,
)
from app.providers.upstreams.router import ProviderRouter
from app.service.prompt import ContextMessage, Scope, normalize_prompt, normalize_text
from app.service.verifier import Calibration


class Ask(Sampling, frozen=True, kw_only=True):
    """One request to the cache: a conversation and every parameter that shapes its answer."""

    messages: list[ChatMessage]
    model: str | None = None
    # Who is asking: the API key's tenant ("" when Sentinel runs open), and a sub-scope.
    tenant: str = ""
    namespace: str = ""
    # Cache controls (None: the configured default). read_cache=False (Cache-Control:
    # no-cache) skips the lookup and refreshes the entry; write_cache=False (no-store) keeps
    # the answer out of the cache.
    similarity_threshold: float | None = None
    # The wrong-hit rate this request accepts (None: MAX_WRONG_HIT_RATE).
    max_wrong_hit_rate: float | None = None
    ttl: int | None = None
    read_cache: bool = True
    write_cache: bool = True

    @classmethod
    def of_prompt(cls, prompt: str, **fields: Any) -> Ask:
        """A one-message chat asking `prompt` (what /v1/query and the replays send)."""
        return cls(messages=[ChatMessage(role="user", content=prompt)], **fields)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How one request meets the cache: its routed model, scope, question and entry id."""

    model_id: str  # `provider/model`, what the scope holds
    tenant: str
    request: ChatRequest  # for the provider, model still as the client named it
    scope: str
    # The last user message, normalized: what the semantic layer embeds. None when the
    # conversation ends otherwise (e.g. a tool result): exact matches only.
    question: str | None
    # keys.question_digest(question) ("" without a question): how entries name the questions
    # they must not answer.
    question_digest: str
    entry_id: str
    threshold: float
    # With the verifier on: the decision threshold the request's wrong-hit budget maps to.
    verify_threshold: float | None
    ttl: int
    read_cache: bool
    write_cache: bool
    # VERIFIER=overlap with a budget set: the guard's threshold it maps to (None: the guard's
    # own). The budget then reaches every hit, not only the verified ones.
    guard_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Planner:
    """Turns an Ask into a Plan with the service's defaults (threshold, TTL, size limit)."""

    providers: ProviderRouter
    similarity_threshold: float
    ttl: int
    max_prompt_chars: int
    # The verifier's threshold <-> wrong-hit-rate curve, and the budget when a request sets
    # none (None: the calibration's own default).
    calibration: Calibration | None = None
    max_wrong_hit_rate: float | None = None
    # VERIFIER=overlap: a budget maps onto the gated decision's curve (guard and verifier).
    gated: bool = False
    # The thresholds of requests that set no budget, mapped once.
    _default: tuple[float | None, float | None] = field(init=False, default=(None, None))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_default", self._mapped(self.max_wrong_hit_rate))

    def default_verify_threshold(self) -> float | None:
        """The verifier's threshold for requests that set no budget (None without one)."""
        return self._default[1]

    def thresholds(self, max_wrong_hit_rate: float | None) -> tuple[float | None, float | None]:
        """The guard's threshold (None: its own) and the verifier's (None without a verifier)
        for a request's budget (None: MAX_WRONG_HIT_RATE, else the calibration's default)."""
        return self._default if max_wrong_hit_rate is None else self._mapped(max_wrong_hit_rate)

    def _mapped(self, budget: float | None) -> tuple[float | None, float | None]:
        if self.calibration is None:
            return None, None
        if budget is None:
            return None, self.calibration.threshold
        if self.gated:
            return self.calibration.gated_thresholds(budget)
        return None, self.calibration.threshold_for(budget)

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
        request = ChatRequest(model=model_id, messages=ask.messages, **sampling_of(ask))
        guard_threshold, verify_threshold = self.thresholds(ask.max_wrong_hit_rate)
        return Plan(
            model_id=model_id,
            tenant=ask.tenant,
            request=request,
            scope=scope,
            question=question,
            question_digest="" if question is None else keys.question_digest(question),
            entry_id=keys.entry_id(scope, question or ""),
            threshold=(
                self.similarity_threshold
                if ask.similarity_threshold is None
                else ask.similarity_threshold
            ),
            verify_threshold=verify_threshold,
            ttl=ask.ttl or self.ttl,
            read_cache=ask.read_cache,
            write_cache=ask.write_cache,
            guard_threshold=guard_threshold,
        )


def entry_for(plan: Plan, result: ChatResult) -> Entry:
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
