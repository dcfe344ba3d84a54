"""`python -m bench.traced_app`: `python -m app` (one worker) with two probes for
bench/profile_semantic.py, both answered on SIGUSR1.

- The embedder's micro-batches: ONNX runs and rows since start, written to $BATCH_STATS.
- A per-request timeline while switched on (SIGUSR2 switches it on; SIGUSR1 writes it to
  $TRACE_OUT and switches it off): the time between consecutive steps (request in, exact
  lookup, embed, the ONNX run in its thread, KNN, judge, response start and body, access log,
  alias write), medians per pair of steps, for exact and semantic hits apart. Meant for c=1:
  at higher concurrency the steps of different requests interleave.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import signal
import statistics
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import app.main as app_main
from app.__main__ import main
from app.api import middleware
from app.providers.embedders import batching
from app.providers.embedders.local import LocalEmbedder
from app.service.embedding import Embedding
from app.service.judge import Judge
from app.service.query import QueryService
from app.service.request_cache import RequestCache

_events: list[tuple[str, float]] = []
_tracing = [False]  # one flag, switched by signals
_batches = [0, 0]  # ONNX runs, rows


def _mark(label: str) -> None:
    if _tracing[0]:
        _events.append((label, time.perf_counter()))


def _traced(owner: Any, name: str, label: str, *, sync: bool = False) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    if sync:

        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            _mark(label + ">")
            try:
                return original(*args, **kwargs)
            finally:
                _mark(label + "<")

        setattr(owner, name, step)
        return

    @functools.wraps(original)
    async def astep(*args: Any, **kwargs: Any) -> Any:
        _mark(label + ">")
        try:
            return await original(*args, **kwargs)
        finally:
            _mark(label + "<")

    setattr(owner, name, astep)


def _install() -> None:
    _traced(QueryService, "answer", "answer")
    _traced(RequestCache, "exact_or_alias", "exact")
    _traced(Embedding, "__call__", "embed")
    _traced(LocalEmbedder, "_embed_encodings", "onnx", sync=True)
    _traced(RequestCache, "nearest", "knn")
    _traced(RequestCache, "entry", "read")
    _traced(Judge, "decide", "judge")
    _traced(RequestCache, "alias", "alias-write")

    run_batch: Callable[..., Any] = batching.MicroBatcher._run_batch

    async def counted(self: Any, batch: list[Any]) -> None:
        _batches[0] += 1
        _batches[1] += len(batch)
        await run_batch(self, batch)

    batching.MicroBatcher._run_batch = counted  # type: ignore[method-assign]

    logged: Callable[..., Any] = middleware.request_log_middleware

    def outer(app: Any) -> Any:  # Litestar passes `app=`
        inner = logged(app)

        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope.get("method") != "POST":
                await inner(scope, receive, send)
                return

            async def sending(message: Any) -> None:
                step = "send:" + message["type"].rsplit(".", 1)[-1]
                _mark(step + ">")
                await send(message)
                _mark(step + "<")

            _mark("asgi>")
            await inner(scope, receive, sending)
            _mark("asgi<")

        return wrapped

    app_main.request_log_middleware = outer  # type: ignore[attr-defined]


def _timeline() -> str:
    requests: list[list[tuple[str, float]]] = []
    for label, at in _events:
        if label == "asgi>":
            requests.append([])
        if requests:
            requests[-1].append((label, at))
    lines = []
    for kind in ("exact", "semantic"):
        gaps: dict[str, list[float]] = collections.defaultdict(list)
        for steps in requests:
            if any(label == "embed>" for label, _ in steps) != (kind == "semantic"):
                continue
            for (first, t1), (then, t2) in itertools.pairwise(steps):
                gaps[f"{first} -> {then}"].append(1000 * (t2 - t1))
            if steps[-1][0] == "asgi<":
                gaps["asgi> -> asgi< (whole)"].append(1000 * (steps[-1][1] - steps[0][1]))
        lines.append(f"== {kind} hits")
        for pair, values in gaps.items():
            if len(values) >= 20:  # the usual order of steps, not the odd interleaving
                lines.append(
                    f"{pair:36s} n={len(values):4d} median {statistics.median(values):.3f} ms"
                )
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    # Whole or not at all: the reader polls for the file.
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)


def _switch_on(signum: int, frame: FrameType | None) -> None:
    _events.clear()
    _tracing[0] = True


def _dump(signum: int, frame: FrameType | None) -> None:
    if _tracing[0]:
        _tracing[0] = False
        _write(os.environ["TRACE_OUT"], _timeline())
        _events.clear()
    _write(os.environ["BATCH_STATS"], f"{_batches[0]} {_batches[1]}")


if __name__ == "__main__":
    os.environ["WEB_CONCURRENCY"] = "1"  # one process: the one measured
    _install()
    signal.signal(signal.SIGUSR1, _dump)
    signal.signal(signal.SIGUSR2, _switch_on)
    main()
