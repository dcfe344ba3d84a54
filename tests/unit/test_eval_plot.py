from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.eval.plot import plot_pairs, plot_workload

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # two panels with curves, not a blank canvas


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    scores = np.clip(0.7 + 0.15 * labels + rng.normal(0, 0.08, size=n), 0.0, 1.0)
    return scores, labels


def test_plot_pairs_writes_a_png(tmp_path: Path) -> None:
    sets = {"qqp": _synthetic(200, 1), "mqp": _synthetic(120, 2), "comqa": _synthetic(80, 3)}
    sets["overall"] = (
        np.concatenate([s for s, _ in sets.values()]),
        np.concatenate([y for _, y in sets.values()]),
    )
    out = tmp_path / "charts" / "pairs.png"
    plot_pairs(sets, out, title="pairs: synthetic", decision=0.8)
    _assert_png(out)


def test_plot_pairs_without_overall_or_decision(tmp_path: Path) -> None:
    out = tmp_path / "pairs.png"
    plot_pairs({"qqp": _synthetic(50, 4)}, out, title="one set")
    _assert_png(out)


def test_plot_workload_writes_a_png(tmp_path: Path) -> None:
    # (threshold, served, true_hits, precision, hit_recall), deliberately out of order
    rows = [
        (0.80, 180, 168, 0.933, 0.672),
        (0.70, 260, 210, 0.808, 0.840),
        (0.75, 225, 195, 0.867, 0.780),
        (0.85, 130, 125, 0.962, 0.500),
        (0.90, 70, 69, 0.986, 0.276),
    ]
    out = tmp_path / "workload.png"
    plot_workload(rows, out, title="workload: synthetic", default=0.8)
    _assert_png(out)


def test_empty_input_raises(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match="no score sets"):
        plot_pairs({}, out, title="t")
    with pytest.raises(ValueError, match="'mqp' is empty"):
        plot_pairs({"qqp": _synthetic(10, 5), "mqp": (np.array([]), np.array([]))}, out, title="t")
    with pytest.raises(ValueError, match="no workload rows"):
        plot_workload([], out, title="t")
    assert not out.exists()


def test_bad_labels_raise(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match="equal length"):
        plot_pairs({"qqp": (np.array([0.1, 0.2]), np.array([1]))}, out, title="t")
    with pytest.raises(ValueError, match="0 or 1"):
        plot_pairs({"qqp": (np.array([0.1, 0.2]), np.array([1, 2]))}, out, title="t")


def test_service_does_not_import_matplotlib() -> None:
    code = "import sys, app.main, app.eval.__main__; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
