"""Near-miss checks: each fires on its own kind of difference and stays quiet on paraphrases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.service.near_miss import Check, near_misses, numbers, veto, words

PROBES = Path(__file__).parents[1] / "data" / "near_miss_probes.jsonl"


def test_words_read_contractions_and_keep_numbers_whole() -> None:
    assert words("Why doesn't it cost $1,000.50?") == [
        "why",
        "does",
        "not",
        "it",
        "cost",
        "1,000.50",
    ]
    assert words("I cannot go") == ["i", "can", "not", "go"]
    assert numbers(words("the 2nd of two, in 1990s")) == {"2nd", "2", "1990s"}
    # Fused to a name ("ww2", "iphone6s"), not inside a texting spelling ("l8r", "her4month"):
    assert numbers(words("ww2 and the iphone6s")) == {"2", "6s"}
    assert numbers(words("see you l8r at her4month visit")) == frozenset()


@pytest.mark.parametrize(
    ("a", "b", "check"),
    [
        ("What was the GDP of Spain in 2015?", "What was the GDP of Spain in 2016?", Check.NUMBER),
        ("Is a 3 day fast healthy?", "Is a three day fast healthy?", None),
        ("How much is 1,000 yen?", "How much is 1000 yen?", None),
        # A number fused to a name is a number; written apart it is the same one:
        ("Who led France in WW1?", "Who led France in WW2?", Check.NUMBER),
        ("Can the PS4 play Blu-ray discs?", "Can the PS5 play Blu-ray discs?", Check.NUMBER),
        ("Who led France in WW2?", "Who led France in World War 2?", None),
        ("How do I install Python3 on a Mac?", "How do I install Python 3 on a Mac?", None),
        ("Why doesn't my dog bark?", "Why does my dog bark?", Check.NEGATION),
        ("Why can't I log in?", "Why am I not able to log in?", None),
        (
            "Is it safe to swim after eating?",
            "Is it dangerous to swim after eating?",
            Check.ANTONYM,
        ),
        ("Is wine good for the brain?", "Is wine good for the heart?", None),
        # A negating prefix makes an opposite too; a prefix-like start alone does not:
        ("How do I connect my headphones?", "How do I disconnect my headphones?", Check.ANTONYM),
        ("How do I inform my landlord?", "How do I tell my landlord?", None),
        ("Why do rents rise in summer?", "Why do rents fall in summer?", Check.ANTONYM),
        ("Is tea healthier than coffee?", "Is coffee healthier than tea?", Check.SWAP),
        (
            "How do I convert Celsius to Fahrenheit?",
            "How do I convert Fahrenheit to Celsius?",
            Check.SWAP,
        ),
        ("How many grams are in a kilogram?", "How many kilograms are in a gram?", Check.SWAP),
        ("Python vs Java: which is better?", "Java vs Python: which is better?", None),
        (
            "What is the difference between a frog and a toad?",
            "What is the difference between a toad and a frog?",
            None,
        ),
        ("How can I learn to swim as an adult?", "As an adult, how can I learn to swim?", None),
        # Around a content word (a verb here), not only a relation word:
        ("Why do teachers praise students?", "Why do students praise teachers?", Check.SWAP),
        # The second "to" is the pivot ("how to" comes first):
        (
            "How to send money from Venmo to a bank account?",
            "How to send money from a bank account to Venmo?",
            Check.SWAP,
        ),
        # Coordinated words trade places freely; a fronted clause is not a swap:
        (
            "What do British and American English have in common?",
            "What do American and British English have in common?",
            None,
        ),
        (
            "Is it better to rent or buy a house in Texas?",
            "In Texas, is it better to buy or rent a house?",
            None,
        ),
        # A possessive is no pivot ("Germany's rate" is "the rate in Germany"):
        (
            "In 2012, what was Germany's unemployment rate?",
            "What was the unemployment rate in Germany in 2012?",
            None,
        ),
    ],
)
def test_each_check_fires_on_its_own_difference(a: str, b: str, check: Check | None) -> None:
    assert veto(a, b) == check
    assert veto(b, a) == check  # the checks do not care which side is cached


def test_only_the_checks_asked_for_run() -> None:
    a, b = "Is tea healthier than coffee in 2020?", "Is coffee healthier than tea in 2021?"
    assert near_misses(a, b) == [Check.NUMBER, Check.SWAP]
    assert near_misses(a, b, checks={Check.SWAP}) == [Check.SWAP]
    assert near_misses(a, b, checks=()) == []


def test_the_hand_written_probes_are_well_formed() -> None:
    rows = [json.loads(line) for line in PROBES.read_text().splitlines() if line.strip()]
    assert sum(r["label"] == 0 for r in rows) == 48
    assert sum(r["label"] == 1 for r in rows) == 32
    assert len({r["id"] for r in rows}) == len(rows)


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("name", "near_misses", "paraphrases"),
    [("b", 46, 30), ("c", 40, 20), ("d", 25, 15), ("e", 26, 15), ("f", 26, 15)],
)
def test_the_later_probe_sets_are_well_formed_and_share_no_pair(
    name: str, near_misses: int, paraphrases: int
) -> None:
    """tests/data/README.md: sets written later, each on topics of its own."""
    rows = _rows(PROBES.with_name(f"near_miss_probes_{name}.jsonl"))
    assert sum(r["label"] == 0 for r in rows) == near_misses
    assert sum(r["label"] == 1 for r in rows) == paraphrases
    assert all((r["kind"] == "paraphrase") == (r["label"] == 1) for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    others = [PROBES] + [
        PROBES.with_name(f"near_miss_probes_{o}.jsonl") for o in "bcdef" if o != name
    ]
    seen = {
        frozenset((r["question1"].lower(), r["question2"].lower()))
        for path in others
        for r in _rows(path)
    }
    assert not seen & {frozenset((r["question1"].lower(), r["question2"].lower())) for r in rows}
