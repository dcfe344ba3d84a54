"""What every answering route shares: the X-Sentinel-* headers and answers as SSE streams."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from litestar.response import Stream

from app.api.errors import error_body
from app.api.openai_schemas import sse
from app.errors import SentinelError
from app.providers.upstreams.base import ChatDelta
from app.service.answers import Answer, StreamedAnswer

log = logging.getLogger("sentinel.api")

_CACHE = {"exact": "HIT-EXACT", "semantic": "HIT-SEMANTIC", "miss": "MISS"}


def cache_headers(answer: Answer) -> dict[str, str]:
    """The X-Sentinel-* facts of an answer, on every response that carries one."""
    headers = {
        # BYPASS: Redis was down, slow or its breaker open; the provider answered.
        "X-Sentinel-Cache": "BYPASS" if answer.bypass else _CACHE[answer.match],
        "X-Sentinel-Entry": answer.entry_id,
        "X-Sentinel-Provider": answer.provider,
    }
    if answer.similarity is not None:
        headers["X-Sentinel-Similarity"] = f"{answer.similarity:.6f}"
    if answer.waited:
        headers["X-Sentinel-Waited"] = "true"  # answered from an identical request in flight
    return headers


def event_stream(
    streamed: StreamedAnswer,
    encode: Callable[[ChatDelta], bytes],
    *,
    end: Callable[[], bytes],
    start: bytes = b"",
) -> Stream:
    """SSE of a streamed answer; a failure mid-stream becomes an error event (and no end)."""

    async def events() -> AsyncIterator[bytes]:
        if start:
            yield start
        try:
            async for delta in streamed.deltas:
                event = encode(delta)
                if event:
                    yield event
        except SentinelError as exc:
            # Headers are gone already: the error travels as an event, OpenAI's way. The
            # service stored nothing.
            log.warning("stream failed: %s", exc.code)
            yield sse({"error": error_body(exc.status_code, exc.code, exc.message, exc.param)})
            return
        yield end()

    return Stream(
        events(),
        media_type="text/event-stream",
        headers={**cache_headers(streamed.head), "Cache-Control": "no-cache"},
    )
