"""The tuned embedder with int8 arithmetic: a weight-only export -> ft1-qint8, ft2-qint8.

The weight-only export (train.py export) keeps int8 weights but dequantizes them and computes
in fp32. This builds the same network computing each MatMul in int8, the way
training/verifier/quantize.py built the verifier (and with its functions): each weight
`Cast(int8) * per-column scale` is folded back to the fp32 values it stands for, SmoothQuant
moves the activations' outlier channels into the weights (exact in fp32), and onnxruntime's
`quantize_dynamic` quantizes every MatMul with per-channel int8 weights (which reproduces the
same int8 weights) and activations quantized per run. The embedding tables (Gather) keep their
weight-only form.

Smoothing every MatMul input at alpha 0.85 was the most faithful of the variants tried (mean
self-cosine with the weight-only model over 300 dev questions: plain 0.9956, feed-forward
inputs only at 0.7 0.9971, every input at 0.5 / 0.7 / 0.85: 0.9906 / 0.9985 / 0.9988).
Activation maxima come from CALIBRATION_TEXTS questions of the embedder's training groups.

An activation's range is taken over the whole run, so a text's vector would depend on the
texts run with it: the service embeds one text per run with this model
(app/providers/embedders/local.py), and so does `check` below.

From the repository root (the onnx venv of training/README.md for `convert`):

    var/quant-venv/bin/python -m training.finetune.quantize convert  # ft1 (from git) -> ft1-qint8
    .venv/bin/python -m training.finetune.quantize check
    # the shipped ft2 (train.py export occs first):
    var/quant-venv/bin/python -m training.finetune.quantize convert \
        var/finetune/onnx/occs/model.int8.onnx minilm-l6-sentinel-ft2-qint8
"""

# Two venvs run this file (onnx for convert, the service's for check): imports stay inside
# the functions, as in the verifier's quantize.py.
from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.verifier import quantize as verifier_quantize

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "finetune" / "quant"
# The weight-only int8 build shipped before this one, taken from the commit that shipped it.
SOURCE_NAME = "minilm-l6-sentinel-ft1-int8"
SOURCE_COMMIT = "2e80823"
SOURCE_SHA256 = "5897f8394e41269bcbbfa4b73930c6f4d1483d8c03214c9e1a807ce0ccfd3e9c"
TARGET_NAME = "minilm-l6-sentinel-ft1-qint8"
SMOOTH_NODES = "MatMul"  # every MatMul with a constant weight
ALPHA = 0.85
CALIBRATION_TEXTS = 400
CALIBRATION_SEED = 0
MAX_TOKENS = 256  # app/providers/embedders/local.py MAX_TOKENS


def source() -> Path:
    """The weight-only build, from git history into var/ (checked against its hash)."""
    return verifier_quantize.from_history(
        SOURCE_COMMIT,
        f"app/providers/embedders/data/{SOURCE_NAME}.onnx",
        OUT / f"{SOURCE_NAME}.onnx",
        SOURCE_SHA256,
    )


def _calibration_texts() -> list[str]:
    """Questions of the training groups only (nothing validated or held out)."""
    from app.service.prompt import normalize_prompt
    from training.verifier.data import pairs_parts

    rows = random.Random(CALIBRATION_SEED).sample(
        list(pairs_parts().select("train")), CALIBRATION_TEXTS
    )
    return [normalize_prompt(r.question1) for r in rows]


def _feeds(texts: list[str]) -> list[dict[str, np.ndarray]]:
    """One feed per text, tokenized as the service does."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / "app/providers/embedders/data/tokenizer.json"))
    tok.enable_truncation(max_length=MAX_TOKENS)
    tok.no_padding()
    feeds = []
    for text in texts:
        e = tok.encode(text)
        feeds.append(
            {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
        )
    return feeds


def convert(weight_only: Path | None = None, target_name: str = TARGET_NAME) -> dict[str, Any]:
    """Fold, smooth, quantize -> var/finetune/quant/<target_name>.onnx.

    weight_only: a weight-only export (train.py export: var/finetune/onnx/NAME/model.int8.onnx);
    default the ft1 build from git history."""
    import onnxruntime

    src = weight_only or source()
    folded = OUT / f"{target_name}.fp32-matmul.onnx"
    smoothed = OUT / f"{target_name}.fp32-smoothed.onnx"
    target = OUT / f"{target_name}.onnx"
    report: dict[str, Any] = {"onnxruntime": onnxruntime.__version__, "source": str(src)}
    report["fold"] = verifier_quantize.fold_matmul_weights(src, folded)
    report["smooth"] = verifier_quantize.smooth(
        folded, smoothed, feeds=_feeds(_calibration_texts()), nodes=SMOOTH_NODES, alpha=ALPHA
    )
    verifier_quantize.quantize_matmuls(smoothed, target)
    report["bytes"] = target.stat().st_size
    report["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    return report


def check(weight_only: Path | None = None, target_name: str = TARGET_NAME) -> dict[str, Any]:
    """The new build against the weight-only one on the validation questions: self-cosine,
    the cosine of each validation pair under both, and time per text (one per run)."""
    from app.providers.embedders.local import load_tokenizer, onnx_session
    from app.service.prompt import normalize_prompt
    from training.verifier.data import pairs_parts

    rows = pairs_parts().select("val")
    first = [normalize_prompt(r.question2) for r in rows]
    second = [normalize_prompt(r.question1) for r in rows]
    tok = load_tokenizer(None, MAX_TOKENS)

    def embed(path: Path, texts: list[str]) -> tuple[np.ndarray, float]:
        session = onnx_session(path.read_bytes(), 2, path.name)
        vectors, times = [], []
        for text in texts:
            e = tok.encode(text)
            feed = {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
            started = time.perf_counter()
            hidden = session.run(["last_hidden_state"], feed)[0][0]
            times.append(time.perf_counter() - started)
            pooled = hidden.mean(axis=0)
            vectors.append(pooled / np.linalg.norm(pooled))
        return np.array(vectors), float(np.median(times)) * 1000

    candidate = OUT / f"{target_name}.onnx"
    src = weight_only or source()
    old_a, old_ms = embed(src, first)
    new_a, new_ms = embed(candidate, first)
    old_b, _ = embed(src, second)
    new_b, _ = embed(candidate, second)
    self_cos = np.concatenate([(old_a * new_a).sum(1), (old_b * new_b).sum(1)])
    drift = np.abs((old_a * old_b).sum(1) - (new_a * new_b).sum(1))
    return {
        "validation_pairs": len(rows),
        "self_cosine_mean": round(float(self_cos.mean()), 5),
        "self_cosine_min": round(float(self_cos.min()), 5),
        "pair_cosine_abs_change_mean": round(float(drift.mean()), 5),
        "pair_cosine_abs_change_max": round(float(drift.max()), 5),
        "ms_per_text_p50_weight_only": round(old_ms, 2),
        "ms_per_text_p50_int8": round(new_ms, 2),
    }


def main(argv: list[str]) -> None:
    """convert|check [WEIGHT_ONLY_ONNX TARGET_NAME] (default: ft1 from history -> ft1-qint8)."""
    cmd = argv[0] if argv else "convert"
    weight_only = Path(argv[1]) if len(argv) > 1 else None
    target_name = argv[2] if len(argv) > 2 else TARGET_NAME
    started = time.perf_counter()
    if cmd == "convert":
        report = convert(weight_only, target_name)
    elif cmd == "check":
        report = check(weight_only, target_name)
    else:
        raise SystemExit(f"unknown command {cmd!r}: convert or check")
    report["seconds"] = round(time.perf_counter() - started, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{cmd}-{target_name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
