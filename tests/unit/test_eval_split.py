from __future__ import annotations

from app.eval.split import split_by_group


def test_pairs_sharing_a_question_stay_on_one_side() -> None:
    questions = [(f"q{i}", f"q{i + 1}") for i in range(0, 40, 2)]  # 20 separate groups
    questions += [("Q0", "linked to q0"), ("q2", "other text")]  # join groups of q0 and q2
    held = split_by_group(questions, seed=3, fraction=0.5)
    side = {}
    for (first, second), is_held in zip(questions, held, strict=True):
        for text in (first.lower(), second.lower()):
            assert side.setdefault(text, bool(is_held)) == bool(is_held)
    assert 0 < held.sum() < len(questions)


def test_split_is_deterministic_and_seeded() -> None:
    questions = [(f"a{i}", f"b{i}") for i in range(100)]
    first = split_by_group(questions, seed=1)
    assert (first == split_by_group(questions, seed=1)).all()
    assert not (first == split_by_group(questions, seed=2)).all()
    assert first.sum() == 30
