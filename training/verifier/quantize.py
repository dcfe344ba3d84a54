"""The verifier with int8 arithmetic: the shipped weight-only int8 graph, dynamically quantized.

The weight-only export (train.py export) keeps int8 weights but dequantizes them and computes
in fp32, so a pair costs what the fp32 network costs (~4.4 ms). onnxruntime's dynamic
quantization computes each MatMul in int8 (DynamicQuantizeLinear on the activations, then
MatMulInteger; fused to DynamicQuantizeMatMul, VNNI where the CPU has it).

The fp32 training outputs are not kept, so `convert` starts from the shipped file: each
MatMul weight there is `Cast(int8) * per-column scale`, which folds back into an fp32 weight
that holds exactly those values; `quantize_dynamic` with per-channel int8 weights then
reproduces the same int8 values and scales (the largest |w| of a column is 127 steps), so the
weights are unchanged and only the activations are newly quantized. The embedding tables
(Gather) keep their weight-only int8 form: a lookup does no arithmetic worth quantizing.

Activations are quantized per tensor (one uint8 range for the whole input of a MatMul), so
a few large channels cost the others their precision. The input of each feed-forward layer
(the attention block's LayerNorm output) has channels ~13x the median one, so before
quantizing, that input is divided per channel by s and the weight rows multiplied by s
(SmoothQuant, s_j = max|x_j|^a / max|w_j|^(1-a), a = 0.7, maxima from 400 training pairs):
exact in fp32, one small Mul per layer at run time. Chosen on validation fidelity to the
weight-only model (mean |probability difference| over the validation pairs and PAWS; figures in
training/verifier/results.md): plain 0.022 / 0.028, smoothed 0.019 / 0.022; smoothing the
attention inputs too, or a = 0.5 or 0.85, was no better.

The range is taken over every row of a run (padding included), so a pair's score depends on
the pairs run with it: the service runs one pair per session run
(`Verifier.probabilities_sync`), and so do the checks below.

Two steps, from the repo root:

    # in a venv with onnx and the service's onnxruntime version (training/README.md)
    var/quant-venv/bin/python -m training.verifier.quantize convert
    # in the service's venv: agreement with the shipped model on the validation pairs
    .venv/bin/python -m training.verifier.quantize check

After a retrain, name the source (train.py export's weight-only model) and the target:
`convert SOURCE NAME` writes var/verifier/quant/NAME.onnx, and `check MODEL REFERENCE`
compares it with that source instead of the one shipped before.
"""

# Two venvs run this file (onnx for convert, the service's for check): their imports stay
# inside the functions, as in train.py.
# ruff: noqa: PLC0415
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "app" / "service" / "data"
OUT = ROOT / "var" / "verifier" / "quant"
# The weight-only int8 verifier shipped before this one (train.py export, issue 13): no
# longer in the tree, so taken from the last commit that shipped it, hash-checked.
SOURCE_NAME = "verifier-minilm-l6-sentinel-v1-int8"
SOURCE_COMMIT = "16dff80"
SOURCE_SHA256 = "c128a2c0d7b435f8413fb2c5df7713c2d8b5b667363b63c46d089f333a670613"
SOURCE = OUT / f"{SOURCE_NAME}.onnx"
FOLDED = OUT / "verifier.fp32-matmul.onnx"
SMOOTHED = OUT / "verifier.fp32-smoothed.onnx"
TARGET_NAME = "verifier-minilm-l6-sentinel-v1-qint8"
# SmoothQuant on the MatMuls whose names hold this (the feed-forward inputs), strength ALPHA,
# activation maxima over CALIBRATION_PAIRS training pairs drawn with CALIBRATION_SEED.
SMOOTH_NODES = "/intermediate/dense/MatMul"
ALPHA = 0.7
CALIBRATION_PAIRS = 400
CALIBRATION_SEED = 0
MAX_TOKENS = 96  # app/service/verifier.py MAX_TOKENS


def from_history(commit: str, path: str, dest: Path, sha256: str) -> Path:
    """A file as committed at `commit`, written to `dest` once and checked against its hash."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(
            ["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        dest.write_bytes(blob)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{dest} has sha256 {digest}, expected {sha256}")
    return dest


def source() -> Path:
    """The weight-only int8 verifier, from git history into var/ (checked against its hash)."""
    return from_history(
        SOURCE_COMMIT, f"app/service/data/{SOURCE_NAME}.onnx", SOURCE, SOURCE_SHA256
    )


def fold_matmul_weights(src: Path, dst: Path) -> dict[str, int]:
    """Replace each MatMul weight `Mul(Cast(int8 initializer), scale)` by its fp32 values."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def dequantized(name: str) -> np.ndarray | None:
        mul = producer.get(name)
        if mul is None or mul.op_type != "Mul":
            return None
        cast = producer.get(mul.input[0])
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits:
            return None
        if mul.input[1] not in inits:
            return None
        q = numpy_helper.to_array(inits[cast.input[0]])
        scale = numpy_helper.to_array(inits[mul.input[1]])
        if q.dtype != np.int8:
            return None
        # What the graph computes: float(q) * scale, in fp32.
        return q.astype(np.float32) * scale.astype(np.float32)

    folded: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        name = node.input[1]
        if name not in folded:
            w = dequantized(name)
            if w is None:
                continue
            folded[name] = name.removesuffix("_dq") + "_w"
            graph.initializer.append(numpy_helper.from_array(w, folded[name]))
        node.input[1] = folded[name]
    # Drop the Cast/Mul pairs and int8 initializers nothing reads any more.
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return {"matmul_weights_folded": len(folded), "bytes": dst.stat().st_size}


def _feeds(pairs: list[tuple[str, str]]) -> list[dict[str, np.ndarray]]:
    """One feed per pair, tokenized as the service does (vendored tokenizer, 96 pieces)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / "app/providers/embedders/data/tokenizer.json"))
    tok.enable_truncation(max_length=MAX_TOKENS)
    tok.no_padding()
    feeds = []
    for first, second in pairs:
        e = tok.encode(first, second)
        feeds.append(
            {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
        )
    return feeds


def _calibration_pairs() -> list[tuple[str, str]]:
    """Training pairs only (training/verifier/data.py): nothing validated or held out."""
    import random

    from app.service.prompt import normalize_prompt
    from training.verifier.data import pairs_parts

    rows = random.Random(CALIBRATION_SEED).sample(
        list(pairs_parts().select("train")), CALIBRATION_PAIRS
    )
    return [(normalize_prompt(r.question2), normalize_prompt(r.question1)) for r in rows]


def smooth(
    src: Path,
    dst: Path,
    *,
    feeds: list[dict[str, np.ndarray]] | None = None,
    nodes: str = SMOOTH_NODES,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """SmoothQuant the MatMuls whose names hold `nodes`: x / s before them, weight rows * s.

    Activation maxima come from running `feeds` (default: the verifier's calibration pairs).
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    targets = [
        n for n in graph.node if n.op_type == "MatMul" and nodes in n.name and n.input[1] in inits
    ]
    inputs = sorted({n.input[0] for n in targets})
    # Per-channel activation maxima: expose the inputs as outputs of an unoptimized copy.
    probe = onnx.load(str(src))
    for name in inputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    amax = {name: np.zeros(0, np.float32) for name in inputs}
    for feed in feeds if feeds is not None else _feeds(_calibration_pairs()):
        for name, value in zip(inputs, session.run(inputs, feed), strict=True):
            top = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            amax[name] = top if amax[name].size == 0 else np.maximum(amax[name], top)
    report: dict[str, Any] = {"smoothed_matmuls": len(targets), "alpha": alpha, "outliers": {}}
    smoothed = []
    for name in inputs:
        users = [n for n in targets if n.input[0] == name]
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in users]
        wmax = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
        s = np.maximum(amax[name], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)
        s = (s / np.exp(np.log(s).mean())).astype(np.float32)  # geometric mean 1
        report["outliers"][name] = round(float(amax[name].max() / np.median(amax[name])), 1)
        inv, out = name + "_smooth_inv", name + "_smooth"
        graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), inv))
        smoothed.append(helper.make_node("Mul", [name, inv], [out], name=out))
        for node, w in zip(users, weights, strict=True):
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1])
            )
            node.input[0] = out
    # Each Mul goes right before the first node that reads it (the graph stays sorted).
    nodes = list(graph.node)
    del graph.node[:]
    pending = {m.output[0]: m for m in smoothed}
    for node in nodes:
        for i in node.input:
            if i in pending:
                graph.node.append(pending.pop(i))
        graph.node.append(node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return report


def quantize_matmuls(src: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization of every MatMul with a constant weight: per-channel
    int8 weights, activations quantized per run (uint8, per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        target,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )


def convert(src: Path | None = None, target: Path | None = None) -> dict[str, Any]:
    """Fold, then quantize_dynamic (MatMul only, per-channel int8 weights) -> target.

    `src`: a weight-only int8 export (train.py export's verifier.int8.onnx); by default the
    one shipped before.
    """
    import onnxruntime

    OUT.mkdir(parents=True, exist_ok=True)
    src = src or source()
    target = target or OUT / f"{TARGET_NAME}.onnx"
    report: dict[str, Any] = {"onnxruntime": onnxruntime.__version__, "source": src.name}
    report["fold"] = fold_matmul_weights(src, FOLDED)
    report["smooth"] = smooth(FOLDED, SMOOTHED)
    quantize_matmuls(SMOOTHED, target)
    report["target"] = str(target.relative_to(ROOT))
    report["bytes"] = target.stat().st_size
    report["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (OUT / f"convert-{target.stem}.json").write_text(json.dumps(report, indent=1))
    return report


def check(candidate: Path | None = None, reference: Path | None = None) -> dict[str, Any]:
    """The int8-arithmetic model against the weight-only one on the validation parts only.

    Both run one pair per session run, as the service does. Also measured: how far a pair's
    score moves when the new model runs it in a batch of 16 (padded), which the service
    never does.
    """
    from app.eval.scoring import roc_auc
    from app.providers.embedders.local import load_tokenizer, onnx_session
    from app.service.prompt import normalize_prompt
    from app.service.verifier import MAX_TOKENS
    from training.verifier.data import pairs_parts, paws_parts

    candidate = candidate or OUT / f"{TARGET_NAME}.onnx"
    reference = reference or source()
    tok = load_tokenizer(None, MAX_TOKENS)
    sets = {"pairs": pairs_parts().select("val"), "paws": paws_parts().select("val")}

    def feed(batch: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        enc = tok.encode_batch(batch)
        return {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }

    def run(path: Path, pairs: list[tuple[str, str]], batch: int = 1) -> np.ndarray:
        session = onnx_session(path.read_bytes(), 1, path.name)
        out = np.empty(len(pairs), np.float64)
        for s in range(0, len(pairs), batch):
            out[s : s + batch] = session.run(["logits"], feed(pairs[s : s + batch]))[0]
        return out

    def prob(z: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-z))

    report: dict[str, Any] = {"candidate": candidate.name, "reference": str(reference)}
    for name, rows in sets.items():
        pairs = [(normalize_prompt(r.question2), normalize_prompt(r.question1)) for r in rows]
        y = [r.label for r in rows]
        ref, new = run(reference, pairs), run(candidate, pairs)
        batched = run(candidate, pairs, 16)
        report[name] = {
            "n": len(pairs),
            "auc_reference": round(roc_auc(ref, y), 4),
            "auc_candidate": round(roc_auc(new, y), 4),
            "prob_abs_diff_mean": round(float(np.abs(prob(new) - prob(ref)).mean()), 4),
            "prob_abs_diff_max": round(float(np.abs(prob(new) - prob(ref)).max()), 4),
            "batch16_vs_alone_prob_abs_diff_max": round(
                float(np.abs(prob(batched) - prob(new)).max()), 4
            ),
        }
    (OUT / f"check-{candidate.stem}.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str]) -> None:
    cmd = argv[0] if argv else "convert"
    started = time.perf_counter()
    if cmd == "convert":
        report = convert(
            Path(argv[1]) if len(argv) > 1 else None,
            OUT / f"{argv[2]}.onnx" if len(argv) > 2 else None,
        )
    elif cmd == "check":
        report = check(
            Path(argv[1]) if len(argv) > 1 else None, Path(argv[2]) if len(argv) > 2 else None
        )
    else:
        raise SystemExit(
            f"unknown command {cmd!r}: convert [SOURCE [NAME]] or check [MODEL [REFERENCE]]"
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
