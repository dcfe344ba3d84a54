"""The hit guard: decides whether a KNN neighbour is really the same question.

A plain cosine threshold serves near misses ("atomic mass of sodium" for hydrogen's) and
misses paraphrases. The guard is a logistic regression over the cosine and lexical
differences a cosine blurs: rare words that differ, numbers, negation, the question word.
Its parameters are fit by `training/guard_fit.py` on labeled dev pairs for one embedder (the
cosine's scale is the embedder's) and shipped in `data/guard-<embedder>.json`; see
bench/quality.md for what it buys on held-out data. It costs ~20 µs per candidate (less for a
cached prompt it has read before) and never runs on exact hits.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import msgspec

from app.settings import DEFAULT_SIMILARITY_THRESHOLD, Settings

DATA_DIR: Final = Path(__file__).parent / "data"

FEATURES: Final = (
    "cosine",
    "cosine^2",
    "jaccard",
    "idf_diff",
    "max_idf_unmatched",
    "numbers_differ",
    "negation_mismatch",
    "wh_mismatch",
    "abs_log_len_ratio",
)

_TOKEN = re.compile(r"\w+")
_NEGATIONS = frozenset({"not", "no", "never", "nor", "without", "cannot", "t"})  # "t": don't
_WH = frozenset({"what", "when", "where", "who", "whom", "whose", "why", "how", "which"})


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _TOKEN.findall(text.lower())


def idf_table(texts: Sequence[str]) -> dict[str, float]:
    """Smoothed inverse document frequency of each token over a set of questions."""
    df: dict[str, int] = {}
    for text in texts:
        for word in set(tokens(text)):
            df[word] = df.get(word, 0) + 1
    n = len(texts)
    return {word: math.log((n + 1) / (count + 1)) + 1 for word, count in df.items()}


class Words(NamedTuple):
    """What the features read of one text, worked out once (a cached prompt's, once per text
    while it stays in `prepared`'s cache)."""

    tokens: list[str]
    distinct: set[str]
    wh: str  # the first question word, "" for none
    digits: frozenset[str]
    negated: bool


def words_of(text: str) -> Words:
    """One text's side of the features."""
    a = tokens(text)
    sa = set(a)
    return Words(
        a,
        sa,
        next((w for w in a if w in _WH), ""),
        frozenset(w for w in sa if w.isdigit()),
        bool(sa & _NEGATIONS),
    )


# Cached prompts come back as KNN candidates again and again: their side is read once.
prepared = functools.lru_cache(maxsize=4096)(words_of)


def features(
    first: str, second: str, cosine: float, idf: Mapping[str, float], unseen: float
) -> list[float]:
    """One pair's feature row, in the order of FEATURES."""
    return pair_features(words_of(first), words_of(second), cosine, idf, unseen)


def pair_features(
    first: Words, second: Words, cosine: float, idf: Mapping[str, float], unseen: float
) -> list[float]:
    """`features` from both texts' prepared sides. The sets are built and summed in the same
    order as ever: the same floats, bit for bit, within a process."""
    sa, sb = first.distinct, second.distinct
    union, diff = sa | sb, sa ^ sb
    get = idf.get
    weight = {w: get(w, unseen) for w in union}
    total = sum(weight.values()) or 1.0
    diff_weights = [weight[w] for w in diff]
    return [
        cosine,
        cosine * cosine,
        len(sa & sb) / len(union) if union else 1.0,
        sum(diff_weights) / total,
        max(diff_weights, default=0.0) / unseen,
        float(first.digits != second.digits),
        float(first.negated != second.negated),
        float(first.wh != second.wh),
        abs(math.log((len(first.tokens) + 1) / (len(second.tokens) + 1))),
    ]


class GuardModel(msgspec.Struct, frozen=True, kw_only=True):
    """A fitted guard as shipped in data/guard-<embedder>.json (see training/guard_fit.py)."""

    embedder: str
    features: list[str]
    mean: list[float]
    std: list[float]
    # Logistic weights on standardised features, bias last.
    weights: list[float]
    idf: dict[str, float]
    # Decision defaults chosen from bench/quality.md: serve when the cosine reaches
    # min_cosine (a cheap pre-filter) and the probability reaches threshold.
    min_cosine: float
    threshold: float
    provenance: str


class Guard:
    """Scores (query, cached prompt, cosine) as the probability they are the same question."""

    def __init__(self, model: GuardModel, *, threshold: float | None = None) -> None:
        if list(model.features) != list(FEATURES):
            raise ValueError(f"guard features {model.features} do not match {list(FEATURES)}")
        n = len(FEATURES)
        if not (len(model.mean) == len(model.std) == n and len(model.weights) == n + 1):
            raise ValueError("guard parameters do not match its feature list")
        self.model = model
        self.embedder = model.embedder
        self.min_cosine = model.min_cosine
        self.threshold = model.threshold if threshold is None else threshold
        self._unseen = max(model.idf.values(), default=1.0)
        # Fold standardisation into the weights: z = sum(w_i * x_i) + b.
        self._weights = [w / s for w, s in zip(model.weights, model.std, strict=False)]
        self._bias = model.weights[-1] - sum(
            w * m / s for w, m, s in zip(model.weights, model.mean, model.std, strict=False)
        )

    @classmethod
    def for_embedder(cls, embedder: str, *, threshold: float | None = None) -> Guard | None:
        """The guard shipped for this embedder, or None when none was fit for it."""
        path = DATA_DIR / f"guard-{embedder}.json"
        if not path.exists():
            return None
        return cls(msgspec.json.decode(path.read_bytes(), type=GuardModel), threshold=threshold)

    def probability(self, query: str, cached: str, cosine: float) -> float:
        """P(same question) for a normalized query and a cached normalized prompt."""
        return self.probability_of(words_of(query), prepared(cached), cosine)

    def probability_of(self, query: Words, cached: Words, cosine: float) -> float:
        """`probability` from both texts' prepared sides (words_of, prepared)."""
        row = pair_features(query, cached, cosine, self.model.idf, self._unseen)
        z = self._bias + sum(map(operator.mul, self._weights, row))
        # Clamp: exp overflows past ~709 and the probability is 0 or 1 long before.
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def accepts(self, query: str, cached: str, cosine: float) -> bool:
        """Whether a candidate above the cosine floor may be served as a semantic hit."""
        return self.probability(query, cached, cosine) >= self.threshold


def configured_decision(settings: Settings, embedder: str) -> tuple[Guard | None, float]:
    """The guard to run (None: cosine alone) and the cosine floor, from GUARD* settings."""
    guard = None
    if settings.guard == "on":
        guard = Guard.for_embedder(embedder, threshold=settings.guard_threshold)
    if settings.similarity_threshold is not None:
        return guard, settings.similarity_threshold
    return guard, guard.min_cosine if guard else DEFAULT_SIMILARITY_THRESHOLD
