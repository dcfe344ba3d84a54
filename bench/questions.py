"""Question/paraphrase pairs for the end-to-end run: dev data if present, else a small list."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import EmptyPrompt
from app.providers.embedders.local import LocalEmbedder
from app.service.guard import Guard
from app.service.prompt import normalize_prompt
from bench.procs import ROOT

DEV_PAIRS = ROOT.parent / "shared" / "data" / "dev" / "pairs.jsonl"
# A paraphrase is kept only if the bench's own embedding scores it this far above the threshold.
MARGIN = 0.01
MAX_CHARS = 300
EMBED_CHUNK = 128

# Used only when the dev data is absent: hand-written, so far fewer than 200 pairs.
FALLBACK_PAIRS: tuple[tuple[str, str], ...] = (
    ("How do I reset my router to factory settings?", "How can I factory reset my router?"),
    ("What is the capital of Australia?", "Which city is Australia's capital?"),
    ("How many calories are in a banana?", "How many calories does a banana have?"),
    ("How do I learn to play the guitar?", "What is the best way to learn guitar?"),
    ("What causes the northern lights?", "What is the cause of the aurora borealis?"),
    ("How do I make cold brew coffee at home?", "How can I make cold brew coffee at home?"),
    ("Why is the sky blue?", "Why does the sky look blue?"),
    ("How do vaccines work?", "How does a vaccine work?"),
    ("What is the boiling point of water in Fahrenheit?", "At what Fahrenheit does water boil?"),
    ("How do I remove a stripped screw?", "How can I get a stripped screw out?"),
    ("What are the symptoms of dehydration?", "What are signs of dehydration?"),
    ("How do I improve my credit score?", "How can I raise my credit score?"),
    (
        "What is the difference between a virus and bacteria?",
        "How do viruses differ from bacteria?",
    ),
    ("How long should I boil an egg?", "How many minutes should you boil an egg?"),
    ("How do I convert Celsius to Fahrenheit?", "How to convert Celsius into Fahrenheit?"),
    ("What is machine learning?", "What does machine learning mean?"),
    ("How do I start running as a beginner?", "How should a beginner start running?"),
    ("What is the tallest mountain in the world?", "Which mountain is the highest on Earth?"),
    ("How do I get rid of fruit flies?", "How can I get rid of fruit flies in my kitchen?"),
    ("How can I fall asleep faster?", "How do I fall asleep more quickly?"),
    ("What is inflation in economics?", "What does inflation mean in economics?"),
    ("How do I write a cover letter?", "How should I write a cover letter?"),
    ("What is photosynthesis?", "How does photosynthesis work?"),
    ("How do I clean a cast iron pan?", "What is the right way to clean a cast iron skillet?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("How do I change a flat tire?", "How do you change a flat tyre?"),
    ("What is a black hole?", "What exactly is a black hole?"),
    ("How do I center a div in CSS?", "How can I center a div with CSS?"),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("What is the speed of light?", "How fast does light travel?"),
    ("How much water should I drink a day?", "How much water should a person drink daily?"),
    ("What is the best way to store fresh basil?", "How should I store fresh basil?"),
    ("How do I unclog a kitchen sink?", "How can I unclog my kitchen sink?"),
    ("What are the benefits of meditation?", "What are meditation's benefits?"),
    ("How do I tie a tie?", "How do you tie a necktie?"),
    ("What is the population of Japan?", "How many people live in Japan?"),
    ("How do I grow tomatoes in pots?", "How can I grow tomatoes in containers?"),
    ("What is compound interest?", "How does compound interest work?"),
    ("How do I stop my dog from barking at night?", "How can I stop my dog barking at night?"),
    ("What is the largest ocean on Earth?", "Which ocean is the biggest in the world?"),
)


@dataclass(frozen=True)
class Pair:
    """A stored question and a paraphrase expected to be a semantic hit on it."""

    original: str
    paraphrase: str
    source: str
    cosine: float


def candidate_pairs(path: Path = DEV_PAIRS) -> tuple[list[tuple[str, str, str]], str]:
    """(original, paraphrase, source) candidates and a line saying where they came from."""
    if not path.is_file():
        note = (
            f"dev data not found at {path}: using {len(FALLBACK_PAIRS)} built-in pairs "
            "(fewer questions than the full design)"
        )
        return [(a, b, "builtin") for a, b in FALLBACK_PAIRS], note
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("label") == 1:
                rows.append((record["question1"], record["question2"], record["source"]))
    return rows, f"label=1 pairs from {path.resolve()} ({len(rows)} candidates)"


async def choose_pairs(
    embedder: LocalEmbedder,
    candidates: list[tuple[str, str, str]],
    *,
    want: int,
    threshold: float,
    guard: Guard | None = None,
    seed: int,
) -> list[Pair]:
    """Pairs whose paraphrase should hit its own original and nothing else, greedily chosen.

    With a guard, the paraphrase must also pass it (the service serves nothing else).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(candidates))
    seen: set[str] = set()
    pool: list[tuple[str, str, str]] = []
    for i in order:
        first, second, source = candidates[int(i)]
        try:
            original, paraphrase = normalize_prompt(first), normalize_prompt(second)
        except EmptyPrompt:
            continue
        if original == paraphrase or max(len(original), len(paraphrase)) > MAX_CHARS:
            continue
        if original in seen or paraphrase in seen:
            continue
        seen.update((original, paraphrase))
        pool.append((original, paraphrase, source))

    chosen: list[Pair] = []
    originals: list[np.ndarray] = []
    paraphrases: list[np.ndarray] = []
    for start in range(0, len(pool), EMBED_CHUNK):
        chunk = pool[start : start + EMBED_CHUNK]
        vectors = await embedder.embed_many([o for o, _, _ in chunk] + [p for _, p, _ in chunk])
        for j, (original, paraphrase, source) in enumerate(chunk):
            vo, vp = vectors[j], vectors[len(chunk) + j]
            cosine = float(vo @ vp)
            if cosine < threshold + MARGIN:
                continue
            if guard is not None and not guard.accepts(paraphrase, original, cosine):
                continue
            if originals:
                o_mat, p_mat = np.stack(originals), np.stack(paraphrases)
                # No stored question may hit another one, nor a paraphrase another's original.
                crossing = max(
                    float(np.max(o_mat @ vo)), float(np.max(p_mat @ vo)), float(np.max(o_mat @ vp))
                )
                if crossing >= threshold - MARGIN:
                    continue
            chosen.append(Pair(original, paraphrase, source, cosine))
            originals.append(vo)
            paraphrases.append(vp)
            if len(chosen) == want:
                return chosen
    return chosen
