"""Near-miss checks: deterministic vetoes for pairs that read alike but ask something else.

A cosine (and often a small cross-encoder) scores "population of France in 2019" against
"... in 2020", "is coffee good for you" against "... bad for you", or "is A faster than B"
against "is B faster than A" as the same question. Each check here looks for one such
difference; a hit is vetoed when a check fires. Which checks run by default, and what each one
costs in true paraphrases it wrongly vetoes, was measured on validation pairs only
(training/verifier/results.md).

The checks are pure string functions (~20 µs a pair), so they run before the verifier and
save its call when they veto.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Final, NamedTuple


class Check(StrEnum):
    """One kind of near miss."""

    NUMBER = "number"  # a number, year or quantity differs
    NEGATION = "negation"  # one side is negated, the other not
    ANTONYM = "antonym"  # a word on one side meets its opposite on the other
    SWAP = "swap"  # the same words with two roles swapped around a relation word


_WORD: Final = re.compile(r"\d+(?:[.,]\d+)*(?:st|nd|rd|th|s)?|\w+")
# A number fused to the name it numbers: "ww2", "ps5", "iphone6s", "python3", "g20", "x86".
# Only letters then digits (an ordinal or plural ending allowed) at the token's end: texting
# spellings with a digit inside a word ("l8r", "her4month") are not numbers.
_FUSED: Final = re.compile(r"[a-z]+(\d+(?:st|nd|rd|th|s)?)")
_NT: Final = re.compile(r"n[’']t\b")

_NEGATIONS: Final = frozenset(
    {"not", "no", "never", "nobody", "nothing", "none", "neither", "nor", "without", "cannot"}
)

# "one" is left out: it is a pronoun as often as a number ("should one ...", "which one").
_NUMBER_WORDS: Final = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
    if w != "one"
} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "dozen": "12",
    "half": "0.5",
    "first": "1st",
    "second": "2nd",
    "third": "3rd",
    "fourth": "4th",
    "fifth": "5th",
}

# Curated opposites, written once per pair; the lookup below makes it symmetric. Words that
# often stand for each other in real paraphrases ("big"/"large") are deliberately absent.
# fmt: off
_OPPOSITES: Final = (
    ("good", "bad"), ("better", "worse"), ("best", "worst"), ("fast", "slow"),
    ("faster", "slower"), ("fastest", "slowest"), ("more", "less"), ("more", "fewer"),
    ("most", "least"), ("increase", "decrease"), ("increases", "decreases"),
    ("increased", "decreased"), ("increasing", "decreasing"), ("before", "after"),
    ("cheap", "expensive"), ("hot", "cold"), ("high", "low"), ("higher", "lower"),
    ("highest", "lowest"), ("big", "small"), ("bigger", "smaller"), ("biggest", "smallest"),
    ("large", "small"), ("larger", "smaller"), ("largest", "smallest"), ("long", "short"),
    ("longer", "shorter"), ("longest", "shortest"), ("win", "lose"), ("won", "lost"),
    ("buy", "sell"), ("buying", "selling"), ("true", "false"), ("safe", "dangerous"),
    ("safe", "unsafe"), ("healthy", "unhealthy"), ("legal", "illegal"),
    ("possible", "impossible"), ("positive", "negative"), ("advantage", "disadvantage"),
    ("advantages", "disadvantages"), ("pros", "cons"), ("male", "female"), ("men", "women"),
    ("man", "woman"), ("boy", "girl"), ("boys", "girls"), ("north", "south"), ("east", "west"),
    ("first", "last"), ("old", "new"), ("old", "young"), ("older", "younger"),
    ("oldest", "youngest"), ("easy", "hard"), ("easy", "difficult"), ("easiest", "hardest"),
    ("rich", "poor"), ("strong", "weak"), ("heavy", "light"), ("start", "end"), ("begin", "end"),
    ("add", "remove"), ("gain", "lose"), ("minimum", "maximum"), ("min", "max"),
    ("above", "below"), ("inside", "outside"), ("import", "export"), ("input", "output"),
    ("love", "hate"), ("agree", "disagree"), ("happy", "sad"), ("early", "late"),
    ("earliest", "latest"), ("up", "down"), ("in", "out"), ("on", "off"), ("enable", "disable"),
    ("open", "close"), ("success", "failure"), ("pass", "fail"), ("accept", "reject"),
    ("allow", "forbid"), ("include", "exclude"), ("maximize", "minimize"), ("right", "wrong"),
    ("right", "left"), ("wet", "dry"), ("dark", "light"), ("thick", "thin"), ("cause", "cure"),
    ("prevent", "cause"), ("born", "died"), ("birth", "death"), ("rise", "fall"),
    ("rises", "falls"), ("rising", "falling"), ("rose", "fell"), ("like", "hate"),
    ("summer", "winter"), ("warm", "cold"), ("warmer", "colder"), ("warmest", "coldest"),
    ("hotter", "colder"), ("hottest", "coldest"), ("strength", "weakness"),
    ("strengths", "weaknesses"), ("richer", "poorer"), ("richest", "poorest"), ("push", "pull"),
    ("upload", "download"), ("send", "receive"), ("deposit", "withdraw"), ("borrow", "lend"),
    ("full", "empty"), ("clean", "dirty"), ("deep", "shallow"), ("deeper", "shallower"),
    ("deepest", "shallowest"), ("wide", "narrow"), ("loud", "quiet"), ("profit", "loss"),
    ("benefit", "drawback"), ("benefits", "drawbacks"), ("arrive", "depart"), ("enter", "exit"),
    ("past", "future"), ("sunrise", "sunset"), ("attack", "defend"), ("expand", "shrink"),
    ("inhale", "exhale"),
)
# fmt: on
_NEGATING_PREFIXES: Final = ("un", "dis", "non", "in", "im", "il", "ir")
_OPPOSITE: Final[dict[str, frozenset[str]]] = {}
for _a, _b in _OPPOSITES:
    _OPPOSITE[_a] = _OPPOSITE.get(_a, frozenset()) | {_b}
    _OPPOSITE[_b] = _OPPOSITE.get(_b, frozenset()) | {_a}

# Words that carry no role: left out when comparing which content words changed sides.
# fmt: off
_FUNCTION: Final = frozenset([
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does",
    "did", "doing", "have", "has", "had", "having", "i", "you", "he", "she", "it", "we",
    "they", "me", "my", "your", "his", "her", "its", "our", "their", "this", "that", "these",
    "those", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "can",
    "could", "should", "would", "will", "shall", "may", "might", "must", "there", "here",
    "some", "any", "much", "many", "very", "so", "just", "really", "also", "too", "of", "at",
    "by", "as", "if", "or", "and", "but",
])
# fmt: on
# Asymmetric relation words: A <w> B and B <w> A mean different things. ("and", "or", "vs",
# "versus", "with", "between" are symmetric and left out on purpose.)
# fmt: off
_PIVOTS: Final = frozenset([
    "than", "to", "from", "into", "in", "per", "over", "under", "on", "for", "cause", "causes",
    "caused", "causing", "affect", "affects", "kill", "kills", "beat", "beats", "before", "after",
    "become", "becomes", "convert", "converted",
])
# fmt: on


# Negations and swapped roles only count between texts that share at least this share of
# their words: a rewording of the same question, not a different question.
_SAME_WORDS: Final = 0.5


def words(text: str) -> list[str]:
    """Lower-cased tokens, with "n't" read as "not" and numbers kept whole ("1,000", "3.5")."""
    return _WORD.findall(_NT.sub(" not", text.lower()).replace("cannot", "can not"))


def _number(token: str) -> str | None:
    """A canonical value for a numeric token, number word or number fused to a name, else None.

    A fused number counts as its digits, so "ww2" and "world war 2" mention the same number and
    "ww1" another one.
    """
    if token[0].isdigit():
        return token.replace(",", "")
    if not token.isalpha() and (fused := _FUSED.fullmatch(token)):
        return fused.group(1)
    return _NUMBER_WORDS.get(token)


def numbers(tokens: Iterable[str]) -> frozenset[str]:
    """The set of numbers a text mentions."""
    return frozenset(v for v in map(_number, tokens) if v is not None)


@functools.lru_cache(maxsize=16384)
def _stem(word: str) -> str:
    """A light plural strip, so "pounds" and "pound", "inches" and "inch" compare equal."""
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


class Text(NamedTuple):
    """What the checks read of one text, worked out once (a cached prompt's, once per text
    while it stays in `prepared`'s cache)."""

    words: list[str]
    distinct: frozenset[str]
    numbers: frozenset[str]
    negated: bool
    content: frozenset[str]  # plural-stripped words, negations left out (for _overlap)
    stems: list[str]  # every word plural-stripped, in order (for roles_swapped)


def text_of(text: str) -> Text:
    """One text's side of the checks."""
    a = words(text)
    return Text(
        a,
        frozenset(a),
        numbers(a),
        bool(_NEGATIONS.intersection(a)),
        frozenset(_stem(w) for w in a if w not in _NEGATIONS),
        [_stem(w) for w in a],
    )


# Cached prompts come back as KNN candidates again and again: their side is read once.
prepared = functools.lru_cache(maxsize=4096)(text_of)


def _overlap_of(sa: frozenset[str], sb: frozenset[str]) -> float:
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def _overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """Jaccard overlap of the two texts' (plural-stripped) words, negations left out."""
    return _overlap_of(
        frozenset(_stem(w) for w in a if w not in _NEGATIONS),
        frozenset(_stem(w) for w in b if w not in _NEGATIONS),
    )


def number_changed(a: Sequence[str], b: Sequence[str]) -> bool:
    """Each text mentions a number the other does not: a number was replaced.

    A number only one side adds ("laptops under 60000" / "... under 60000 in 2016") is left
    to the verifier: on validation pairs such additions were as often paraphrases as not.
    """
    return _number_changed(numbers(a), numbers(b))


def _number_changed(na: frozenset[str], nb: frozenset[str]) -> bool:
    return bool(na - nb) and bool(nb - na)


def negation_differs(a: Sequence[str], b: Sequence[str]) -> bool:
    """One text is negated and the other is not, and the rest is mostly the same words.

    The overlap gate keeps long, differently worded paraphrases ("nothing helps ..." /
    "what should I do ...") from being vetoed for a negation in their context.
    """
    negated = bool(_NEGATIONS.intersection(a)) != bool(_NEGATIONS.intersection(b))
    return negated and _overlap(a, b) >= _SAME_WORDS


def antonym_flip(a: Sequence[str], b: Sequence[str]) -> bool:
    """A word only on one side has its curated opposite, or itself with a negating prefix
    ("un", "dis", "il", ...), only on the other side."""
    return _antonym_flip(frozenset(a), frozenset(b))


def _antonym_flip(sa: frozenset[str], sb: frozenset[str]) -> bool:
    only_a, only_b = sa - sb, sb - sa
    if any(_OPPOSITE.get(w, frozenset()) & only_b for w in only_a):
        return True
    # A word on one side, the same word with a negating prefix on the other ("install" /
    # "uninstall", "like" / "dislike", "legal" / "illegal").
    return any(
        w.startswith(prefix) and len(w) - len(prefix) >= 3 and w[len(prefix) :] in other
        for words, other in ((only_a, only_b), (only_b, only_a))
        for w in words
        for prefix in _NEGATING_PREFIXES
    )


def roles_swapped(a: Sequence[str], b: Sequence[str]) -> bool:
    """Two content words trade sides around a word both texts share.

    "is java faster than python" / "is python faster than java": around "than", "java" moves
    from before to after and "python" the other way. Both moves must happen, so a clause
    moved to the front ("to learn X, what is the best way") does not count. The shared word
    may be a relation word (_PIVOTS: "than", "to", "from", "cause", ...) or any content word
    ("why do dogs chase cats" / "why do cats chase dogs", in short texts); around a content
    word, two words joined by "and", "or", "vs" ("British and American English") may trade
    places freely, and a possessive ("Germany's rate" / "the rate in Germany") is no pivot.
    Every occurrence of a pivot counts ("how to send money from A to B": the second "to").
    """
    if _overlap(a, b) < _SAME_WORDS:
        return False
    return _roles_swapped([_stem(w) for w in a], [_stem(w) for w in b])


# Words that join two terms symmetrically: those may trade places around a content word.
_COORDINATORS: Final = frozenset(["and", "or", "vs", "versus", "nor", "between"])
# Content words serve as pivots only in texts of at most this many non-function words (a
# question's length): longer sentences reorder their clauses freely. 12 is the longest limit
# at which the swap check still kept the rule on validation (at most 2.5% of the served
# paraphrases vetoed: 8 of 358; at 15, 10 of 358); training/verifier/results.md.
_SHORT: Final = 12


def _positions(words: list[str], word: str) -> list[int]:
    return [i for i, w in enumerate(words) if w == word]


def _coordinated(words: list[str], x: str, y: str) -> bool:
    """x and y joined by a coordinator in `words` (one lies between some x and some y)."""
    return any(
        _COORDINATORS.intersection(words[min(i, j) + 1 : max(i, j)])
        for i in _positions(words, x)
        for j in _positions(words, y)
    )


def _possessive(words: list[str], word: str) -> bool:
    """`word` stands before a possessive "s" ("germany 's" -> "germany", "s")."""
    return any(words[i + 1 : i + 2] == ["s"] for i in _positions(words, word))


def _sides(words: list[str], at: int, pivot: str) -> tuple[set[str], set[str]]:
    """The content words before and after position `at` (the pivot itself left out)."""
    skip = _FUNCTION | _PIVOTS | {pivot}
    return {w for w in words[:at] if w not in skip}, {w for w in words[at + 1 :] if w not in skip}


def _short(words: list[str]) -> bool:
    return sum(w not in _FUNCTION for w in words) <= _SHORT


def _roles_swapped(sa: list[str], sb: list[str]) -> bool:
    shared = set(sa).intersection(sb)
    relations = _PIVOTS.intersection(shared)
    content = (
        {
            w
            for w in shared - _FUNCTION - _PIVOTS
            if not _possessive(sa, w) and not _possessive(sb, w)
        }
        if _short(sa) and _short(sb)
        else set()
    )
    for pivot in (*relations, *content):
        pa, pb = _positions(sa, pivot), _positions(sb, pivot)
        pairs = zip(pa, pb, strict=True) if len(pa) == len(pb) else itertools.product(pa, pb)
        for ia, ib in pairs:
            (left_a, right_a), (left_b, right_b) = _sides(sa, ia, pivot), _sides(sb, ib, pivot)
            moved_right = (left_a & right_b) - left_b - right_a
            moved_left = (right_a & left_b) - right_b - left_a
            if not (moved_right and moved_left):
                continue
            if pivot in relations or any(
                not _coordinated(sa, x, y) and not _coordinated(sb, x, y)
                for x in moved_right
                for y in moved_left
            ):
                return True
    return False


DEFAULT_CHECKS: Final = frozenset(Check)


def near_misses(query: str, cached: str, checks: Iterable[Check] = DEFAULT_CHECKS) -> list[Check]:
    """Every check (of those asked for) that fires on the pair, in Check order."""
    return fired(text_of(query), prepared(cached), checks)


def fired(a: Text, b: Text, checks: Iterable[Check] = DEFAULT_CHECKS) -> list[Check]:
    """`near_misses` from both texts' prepared sides (text_of, prepared)."""
    wanted = checks if isinstance(checks, frozenset) else frozenset(checks)
    out = []
    if Check.NUMBER in wanted and _number_changed(a.numbers, b.numbers):
        out.append(Check.NUMBER)
    overlap: float | None = None
    if Check.NEGATION in wanted and a.negated != b.negated:
        overlap = _overlap_of(a.content, b.content)
        if overlap >= _SAME_WORDS:
            out.append(Check.NEGATION)
    if Check.ANTONYM in wanted and _antonym_flip(a.distinct, b.distinct):
        out.append(Check.ANTONYM)
    if Check.SWAP in wanted:
        if overlap is None:
            overlap = _overlap_of(a.content, b.content)
        if overlap >= _SAME_WORDS and _roles_swapped(a.stems, b.stems):
            out.append(Check.SWAP)
    return out


def overlap(query: str, cached: str) -> float:
    """Jaccard overlap of the two texts' plural-stripped words, negations left out: near 1 for
    a pair whose words are the same and whose meaning only their order can tell apart."""
    return _overlap_of(text_of(query).content, prepared(cached).content)


def veto(query: str, cached: str, checks: Iterable[Check] = DEFAULT_CHECKS) -> Check | None:
    """The first check that vetoes serving `cached`'s answer for `query`, or None."""
    vetoes = near_misses(query, cached, checks)
    return vetoes[0] if vetoes else None
