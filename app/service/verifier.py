"""The hit verifier: a cross-encoder that reads the query and a cached prompt together.

A bi-encoder cosine and the guard's lexical features see two bags of words; they cannot tell
"A faster than B" from "B faster than A" or one year from the next. The verifier is
all-MiniLM-L6-v2 fine-tuned as a pair classifier ("[CLS] query [SEP] cached [SEP]" -> one
logit) on the training parts of the dev pairs, PAWS and the dev streams (training/verifier/),
int8 weights and int8 arithmetic (onnxruntime dynamic quantization), run on a thread pool of
its own. It costs ~2 ms a pair on this 2-core machine, and runs only on candidates the
cheaper stages let through.

Its calibration file (data/<model>.json, next to the model) records the decision it was
measured in: `Calibration.screen` (cosine floor, guard floor, near-miss checks) passes the
candidate, then `Calibration.score(guard, verifier) >= threshold` serves it. Its curve maps
a decision threshold to the wrong-hit rate measured on validation pairs, so a wrong-hit budget
picks the threshold (`threshold_for`). Figures: training/verifier/results.md.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, Literal, TypedDict, Unpack

import msgspec
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from app.errors import StartupError, VerificationError
from app.providers.embedders.local import (
    InferencePool,
    load_tokenizer,
    onnx_session,
    read_verified,
)
from app.service.near_miss import Check, overlap, veto

DATA_DIR: Final = Path(__file__).parent / "data"
VERIFIER_MODEL: Final = "verifier-minilm-l6-sentinel-v1-qint8"
MODEL_SHA256: Final = {
    VERIFIER_MODEL: "3b081aba63b383446380ba8274d177b17510cd3c50f10c3d8b23649a3a9c6692",
}
NOTICE: Final = "app/service/data/NOTICE.md"

# The pair is truncated to this many word pieces, as in training (training/verifier/train.py):
# two questions rarely need more, and the cost grows with the length.
MAX_TOKENS: Final = 96
# Pairs per pool job in `probabilities` (each pair is its own ONNX run, see logits_sync):
# bounds the wait of a concurrent call.
MAX_BATCH: Final = 16
# One thread: a short pair is too little work to split, and handing it to a second thread
# (spinning off, local.py) costs more than it saves: 1.8 ms a pair on one thread, 2.7 ms on
# two (training/verifier/results.md, "Cost").
INTRA_OP_THREADS: Final = 1
WORKERS: Final = 1


class CalibrationPoint(msgspec.Struct, frozen=True, kw_only=True):
    """What serving at `threshold` did on the validation candidates."""

    threshold: float
    served: int
    wrong: int
    # wrong / served, and the upper end of its 95% Wilson interval.
    wrong_hit_rate: float
    wrong_hit_upper95: float
    # Share of the validation paraphrases (reaching the verifier or not) that were served.
    recall: float
    # Share of the validation PAWS different-meaning pairs that were served.
    paws_served_negative: float


class Calibration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The decision a verifier was calibrated in, and its threshold -> wrong-hit-rate curve."""

    model: str
    sha256: str
    # The stages before the verifier, as calibrated: cosine floor, guard floor, checks.
    min_cosine: float
    min_guard: float
    checks: list[str]
    # Both orders averaged (True) or (query, cached) only.
    symmetric: bool
    # What the threshold is compared with: "verifier" (its probability alone) or "odds" (the
    # guard's and the verifier's odds multiplied: independent evidence, both fit 50/50).
    combine: Literal["verifier", "odds"]
    # No budget maps below this: under it, more than 5% of the validation PAWS pairs that
    # differ in meaning (word swaps) were served.
    min_threshold: float
    # The default decision threshold: threshold_for(max_wrong_hit_rate).
    threshold: float
    max_wrong_hit_rate: float
    points: list[CalibrationPoint]
    provenance: str
    # VERIFIER=overlap: the guard decides, and a candidate it would serve whose words overlap
    # the question's at least this much (near_miss.overlap) must also pass the verifier. Word
    # order is what the embedder and the guard cannot read, and it matters only where the
    # words are (nearly) the same. 0: every candidate the guard serves is verified.
    overlap_gate: float = 0.0
    # VERIFIER=overlap's whole decision as a curve, so a budget reaches every hit and not only
    # the verified ones: the wrong-hit rate (same validation pairs as `points`) at each
    # threshold of Calibration.gated_score, the one number that decision thresholds: the
    # guard's probability after the checks, and on gated pairs the verifier's combined score
    # moved so that `threshold` lands on `guard_threshold` (the guard's threshold it was
    # measured at). Empty in older files: a budget then moves the verifier's threshold alone.
    gated_points: list[CalibrationPoint] = []
    guard_threshold: float = 0.8

    def threshold_for(self, max_wrong_hit_rate: float) -> float:
        """The lowest threshold at and above which the measured wrong-hit rate stays in budget.

        The curve is noisy at the top (few pairs served), so a threshold qualifies only when
        every stricter one also keeps the budget; with none, the strictest point is returned.
        Never below min_threshold.
        """
        return max(within_budget(self.points, max_wrong_hit_rate), self.min_threshold)

    def gated_thresholds(self, max_wrong_hit_rate: float) -> tuple[float, float]:
        """VERIFIER=overlap: the guard's and the gated verifier's thresholds for a budget.

        The gated curve's threshold by `threshold_for`'s rule, never below `guard_threshold`:
        a budget tightens the default decision but does not loosen it (below it more than 5%
        of the validation PAWS different-meaning pairs are served). The verifier's threshold
        is where its moved score meets the guard's: both decisions at one point of the curve.
        """
        if not self.gated_points:
            return self.guard_threshold, self.threshold_for(max_wrong_hit_rate)
        guard = max(within_budget(self.gated_points, max_wrong_hit_rate), self.guard_threshold)
        if guard == self.guard_threshold:
            return guard, self.threshold
        return guard, shifted(self.threshold, self.guard_threshold, guard)

    def score(self, guard_probability: float, verifier_probability: float) -> float:
        """The number the threshold applies to, for a candidate the cheaper stages let through."""
        return combined_score(guard_probability, verifier_probability, self.combine)

    def screen(
        self, query: str, cached: str, cosine: float, guard_probability: float
    ) -> str | None:
        """None when the verifier decides, else which cheaper stage refuses (calibrated cascade).

        The refusal is "cosine", "guard" or the near-miss check's name.
        """
        if cosine < self.min_cosine:
            return "cosine"
        if guard_probability < self.min_guard:
            return "guard"
        vetoed = veto(query, cached, [Check(c) for c in self.checks])
        return None if vetoed is None else vetoed.value

    def gated(self, query: str, cached: str) -> bool:
        """VERIFIER=overlap: whether the verifier must also pass a candidate the guard serves."""
        return overlap(query, cached) >= self.overlap_gate

    @staticmethod
    def gated_score(
        guard_probability: float, combined: float, guard_threshold: float, threshold: float
    ) -> float:
        """VERIFIER=overlap's one number for a gated candidate: the guard's probability, or
        the verifier's combined score moved so that its threshold lands on the guard's, if
        lower. It reaches `guard_threshold` exactly when the guard's probability does and the
        combined score reaches `threshold`, so one threshold sweeps both decisions."""
        return min(guard_probability, shifted(combined, threshold, guard_threshold))

    @classmethod
    def for_model(cls, model: str = VERIFIER_MODEL) -> Calibration:
        """The calibration shipped next to a verifier model."""
        path = DATA_DIR / f"{model}.json"
        try:
            return msgspec.json.decode(path.read_bytes(), type=cls)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StartupError(f"cannot load the verifier calibration {path}: {exc}") from None


def _sigmoid(z: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    clipped = np.clip(z.astype(np.float64), -60.0, 60.0)
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-clipped))
    return result


class LoadOptions(TypedDict, total=False):
    """`load_sync`'s options, for `load` to pass on."""

    model: str
    model_path: Path | None
    tokenizer_path: Path | None
    symmetric: bool | None
    intra_op_threads: int
    workers: int


class Verifier:
    """P(same question) for (query, cached prompt) pairs, from the shipped cross-encoder."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        *,
        model: str = VERIFIER_MODEL,
        symmetric: bool = True,
        workers: int = WORKERS,
    ) -> None:
        self._model = model
        self._session = session
        self._tokenizer = tokenizer
        self.symmetric = symmetric
        # Its own pool: verification never queues behind embeddings or other to_thread work.
        self._pool = InferencePool(
            workers=workers, name="verify", error=VerificationError, what="verifier"
        )

    @classmethod
    def load_sync(
        cls,
        *,
        model: str = VERIFIER_MODEL,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        symmetric: bool | None = None,
        intra_op_threads: int = INTRA_OP_THREADS,
        workers: int = WORKERS,
    ) -> Verifier:
        """Verify the hashes and load (blocking, ~0.5 s); raise StartupError.

        `symmetric` defaults to what the model's calibration was measured with.
        """
        if model not in MODEL_SHA256:
            raise StartupError(f"unknown verifier model {model!r}; one of {sorted(MODEL_SHA256)}")
        model_bytes = read_verified(
            model_path or DATA_DIR / f"{model}.onnx", MODEL_SHA256[model], "verifier", NOTICE
        )
        tokenizer = load_tokenizer(tokenizer_path, MAX_TOKENS)
        if symmetric is None:
            symmetric = Calibration.for_model(model).symmetric
        session = onnx_session(model_bytes, intra_op_threads, "the verifier")
        return cls(session, tokenizer, model=model, symmetric=symmetric, workers=workers)

    @classmethod
    async def load(cls, **options: Unpack[LoadOptions]) -> Verifier:
        """Load off the event loop; see `load_sync`."""
        return await asyncio.to_thread(partial(cls.load_sync, **options))

    @property
    def id(self) -> str:
        """The model's name, e.g. `verifier-minilm-l6-sentinel-v1-qint8`."""
        return self._model

    def logits_sync(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """Raw logits of (first, second) pairs in that order, shape (n,): one ONNX run a pair.

        The model quantizes its activations per tensor over a whole run, so a pair run beside
        others (and their padding) would score a little differently; run alone, a pair's
        score is its own whatever else is verified (training/verifier/quantize.py).
        """
        logits = np.empty(len(pairs), dtype=np.float32)
        for i, (first, second) in enumerate(pairs):
            encoding = self._tokenizer.encode(first, second)
            feed = {
                "input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            }
            outputs: list[Any] = self._session.run(["logits"], feed)
            logits[i] = np.asarray(outputs[0], dtype=np.float32).reshape(-1)[0]
        return logits

    def probabilities_sync(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float64]:
        """P(same question) per (query, cached) pair, blocking; both orders when symmetric."""
        if not pairs:
            return np.empty(0, dtype=np.float64)
        if not self.symmetric:
            return _sigmoid(self.logits_sync(pairs))
        both = self.logits_sync([*pairs, *((b, a) for a, b in pairs)])
        n = len(pairs)
        return _sigmoid((both[:n] + both[n:]) / 2)

    async def probability(self, query: str, cached: str) -> float:
        """P(same question) for one normalized query and cached prompt, off the event loop."""
        return float((await self._run([(query, cached)]))[0])

    async def probabilities(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float64]:
        """P(same question) for each (query, cached) pair, in runs of up to MAX_BATCH."""
        result = np.empty(len(pairs), dtype=np.float64)
        for start in range(0, len(pairs), MAX_BATCH):
            chunk = list(pairs[start : start + MAX_BATCH])
            result[start : start + len(chunk)] = await self._run(chunk)
        if not pairs:
            self._pool.check_open()
        return result

    async def aclose(self) -> None:
        """Stop the thread pool, waiting for a running batch to finish."""
        await self._pool.aclose()

    async def _run(self, pairs: list[tuple[str, str]]) -> npt.NDArray[np.float64]:
        """One batch on the pool (VerificationError if it fails or the verifier is closed)."""
        return await self._pool.run(self.probabilities_sync, pairs)


def within_budget(
    curve: Sequence[CalibrationPoint],
    max_wrong_hit_rate: float,
    measure: Callable[[CalibrationPoint], float] = attrgetter("wrong_hit_rate"),
) -> float:
    """The lowest threshold from which on every point of the curve keeps the budget (the
    strictest point when none does); `measure`: what the budget bounds."""
    points = sorted(curve, key=lambda p: p.threshold)
    chosen = points[-1].threshold
    for point in reversed(points):
        if measure(point) > max_wrong_hit_rate:
            break
        chosen = point.threshold
    return chosen


def shifted(value: float, source: float, target: float) -> float:
    """`value` moved on the logit scale by as much as `source` must move to reach `target`:
    how the gated decision puts the verifier's score and thresholds on the guard's scale."""
    moved = _logit(value) + _logit(target) - _logit(source)
    return 1.0 / (1.0 + math.exp(-moved))


def _logit(p: float, eps: float = 1e-7) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def combined_score(
    guard_probability: float, verifier_probability: float, combine: str = "odds"
) -> float:
    """The verifier's probability, or with "odds" sigmoid(logit(guard) + logit(verifier))."""
    if combine == "verifier":
        return verifier_probability
    z = _logit(guard_probability) + _logit(verifier_probability)
    return 1.0 / (1.0 + math.exp(-z))
